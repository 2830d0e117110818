"""Writes ggml blocks of every quantized type hoist dequantizes on the CPU, with what gguf-py's
`gguf.quants.dequantize` makes of them, for tests/quant.rs.

    python3 quant_ref.py OUT_DIR

prints one JSON list: {"type", "blocks" (path of the raw blocks), "values" (path of the
little-endian f32 values), "count" (blocks)} per type. Needs numpy and gguf
(pip install numpy gguf).

Blocks are random bytes whose f16 scale fields are set to finite values (random bit patterns,
realistic small scales, and the extremes: largest/smallest normal, subnormals, zeros, negatives)
over quant bytes that are random, all 0x00 or all 0xFF. NaN/inf scales are left out: they make a
bitwise comparison meaningless (tests/quant.rs checks only that they do not panic).
"""
import itertools
import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

# Byte offsets of each type's f16 fields (d, and dmin/m where the type has one), from ggml's
# block layouts (ggml-common.h).
F16_FIELDS = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ4_NL": [0], "IQ4_XS": [0],
}
# Largest normal (±), smallest normal (±), smallest and largest subnormal, ±0, ±1.
EXTREMES = [0x7BFF, 0xFBFF, 0x0400, 0x8400, 0x0001, 0x8001, 0x03FF, 0x0000, 0x8000, 0x3C00, 0xBC00]

out = sys.argv[1]
rng = np.random.default_rng(16)


def finite_f16_bits(n):
    """Random f16 bit patterns with an exponent below 31 (no NaN, no inf)."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32)
    exponent = rng.integers(0, 31, n, dtype=np.uint32)
    return ((bits & ~np.uint32(0x7C00)) | (exponent << 10)).astype(np.uint16)


def set_field(blocks, offset, values):
    blocks[:, offset:offset + 2] = np.asarray(values, dtype="<u2").reshape(-1, 1).view(np.uint8)


report = []
for name, fields in F16_FIELDS.items():
    qtype = T[name]
    _, block_bytes = GGML_QUANT_SIZES[qtype]
    parts = []

    random_scales = rng.integers(0, 256, (2000, block_bytes), dtype=np.uint8)
    for f in fields:
        set_field(random_scales, f, finite_f16_bits(len(random_scales)))
    parts.append(random_scales)

    realistic = rng.integers(0, 256, (1000, block_bytes), dtype=np.uint8)
    for f in fields:
        scales = (rng.standard_normal(len(realistic)) * 0.01).astype(np.float16)
        set_field(realistic, f, scales.view(np.uint16))
    parts.append(realistic)

    combos = list(itertools.product(EXTREMES, repeat=len(fields)))
    for fill in ["zeros", "ones", "random"]:
        if fill == "random":
            b = rng.integers(0, 256, (len(combos), block_bytes), dtype=np.uint8)
        else:
            b = np.full((len(combos), block_bytes), 0 if fill == "zeros" else 0xFF, dtype=np.uint8)
        for i, f in enumerate(fields):
            set_field(b, f, [c[i] for c in combos])
        parts.append(b)

    blocks = np.ascontiguousarray(np.concatenate(parts))
    with np.errstate(all="ignore"):
        values = dequantize(blocks, qtype).astype("<f4", copy=False)
    blocks_path = os.path.join(out, f"{name}.blocks")
    values_path = os.path.join(out, f"{name}.f32")
    blocks.tofile(blocks_path)
    values.tofile(values_path)
    report.append({"type": name, "blocks": blocks_path, "values": values_path, "count": len(blocks)})

print(json.dumps(report))
