#!/usr/bin/env bash
# Makes (or reuses) a Llama GGUF of any shape with random weights, written directly tensor by
# tensor (no model, no torch, little memory), and prints its path. For speed measurements only.
#   SHAPE  a shape of bench/gpu/runtime/make_quantized.py (7b: Llama-2-7B, small) or 70b
#          (Llama-2-70B: hidden 8192, intermediate 28672, 80 layers, 64 heads / 8 kv heads,
#          vocabulary 32000), then optional ,KEY=VALUE overrides of hidden, ffn, layers, heads,
#          kv_heads, vocab, context (e.g. 7b,context=12288)
#   TYPE   F16 or Q4_0: every 2-D tensor in it (token_embd and output too; random F16 values of
#          magnitude 2^-7..2^-6, random Q4_0 blocks with scales near 0.002), norms F32 near 1;
#          llama arch metadata and the runtime fixtures' tokenizer, as make_quantized.py writes them
#   FILE   default $HOIST_DATA/random-SHAPE-TYPE.gguf; written aside and renamed when complete;
#          refused before writing when its file system lacks the room (size + 1 GiB)
# Usage: bench/gpu/lib/random_gguf.sh SHAPE TYPE [FILE]   (7b F16: 13.5 GB; 70b Q4_0: 38.8 GB)
# Needs numpy and gguf (.whl/gguf-*.whl).
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
SHAPE=${1:?usage: random_gguf.sh SHAPE TYPE [FILE]}
TYPE=${2:?usage: random_gguf.sh SHAPE TYPE [FILE]}
tag=${SHAPE//[,=]/-}
F=${3:-$HOIST_DATA/random-$tag-${TYPE,,}.gguf}
if [ ! -s "$F" ]; then
  mkdir -p "$(dirname "$F")" || exit 1
  use_wheels 'gguf-*' || true
  # Written aside and renamed once complete: a failed run leaves no file to reuse.
  if ! python3 - "$SHAPE" "$TYPE" "$F.tmp" >&2 <<'PY'; then rm -f "$F.tmp"; exit 1; fi
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, "bench/gpu/runtime")
import gguf  # noqa: E402
from gguf_meta import add_gguf_tokenizer  # noqa: E402
from make_quantized import SHAPES, TOKENIZER  # noqa: E402

SHAPES = dict(SHAPES)
SHAPES["70b"] = dict(hidden=8192, ffn=28672, layers=80, heads=64, kv_heads=8, vocab=32000, context=4096)
spec, typ, path = sys.argv[1], sys.argv[2].upper(), sys.argv[3]
name, *overrides = spec.split(",")
if name not in SHAPES:
    raise SystemExit(f"random_gguf: unknown shape {name!r} (known: {', '.join(sorted(SHAPES))})")
s = dict(SHAPES[name])
for kv in overrides:
    k, _, v = kv.partition("=")
    if k not in s or not v.isdigit():
        raise SystemExit(f"random_gguf: bad override {kv!r} (KEY=INTEGER, KEY one of {', '.join(s)})")
    s[k] = int(v)
Q = gguf.GGMLQuantizationType
if typ == "F16":
    qtype, ftype = Q.F16, gguf.LlamaFileType.MOSTLY_F16
elif typ == "Q4_0":
    qtype, ftype = Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0
else:
    raise SystemExit(f"random_gguf: type {typ!r}: F16 or Q4_0")
h, f, heads, kvh = s["hidden"], s["ffn"], s["heads"], s["kv_heads"]
head_dim = h // heads
kv_dim = head_dim * kvh
if typ == "Q4_0" and (h % 32 or f % 32):
    raise SystemExit("random_gguf: Q4_0 rows need widths that are multiples of 32")

# (name, rows, cols) of the matrices, (name, n) of the norms, in make_quantized.py's order.
tensors = [("token_embd.weight", s["vocab"], h)]
for i in range(s["layers"]):
    b = f"blk.{i}."
    tensors += [(b + "attn_norm.weight", h), (b + "attn_q.weight", h, h), (b + "attn_k.weight", kv_dim, h),
                (b + "attn_v.weight", kv_dim, h), (b + "attn_output.weight", h, h), (b + "ffn_norm.weight", h),
                (b + "ffn_gate.weight", f, h), (b + "ffn_up.weight", f, h), (b + "ffn_down.weight", h, f)]
tensors += [("output_norm.weight", h), ("output.weight", s["vocab"], h)]


def row_bytes(cols):
    return cols * 2 if typ == "F16" else cols // 32 * 18


def nbytes(t):
    return t[1] * 4 if len(t) == 2 else t[1] * row_bytes(t[2])


total = sum(nbytes(t) for t in tensors)
free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
if free < total + (1 << 30):
    raise SystemExit(f"random_gguf: {path}: {total / 1e9:.1f} GB of tensors, but only {free / 1e9:.1f} GB free there")

rng = np.random.default_rng(int(time.time()))


def data(t):
    if len(t) == 2:
        return (1.0 + 0.1 * rng.standard_normal(t[1], dtype=np.float32)).astype(np.float32)
    rows, cols = t[1], t[2]
    if typ == "F16":
        # Random sign and mantissa, exponent 2^-7: |w| in [2^-7, 2^-6), never inf or NaN.
        r = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
        np.bitwise_and(r, 0x83FF, out=r)
        np.bitwise_or(r, 0x2000, out=r)
        return r.view(np.float16)
    # Q4_0 blocks of 32 values: an f16 scale, then 16 bytes of 4-bit quants.
    blocks = rng.integers(0, 256, size=(rows * (cols // 32), 18), dtype=np.uint8)
    scales = (0.0015 + 0.001 * rng.random(blocks.shape[0], dtype=np.float32)).astype(np.float16)
    blocks[:, :2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, row_bytes(cols))


t0 = time.time()
w = gguf.GGUFWriter(path, "llama")
w.add_name(f"random-llama-{spec}-{typ.lower()}")
w.add_context_length(s["context"])
w.add_embedding_length(h)
w.add_block_count(s["layers"])
w.add_feed_forward_length(f)
w.add_head_count(heads)
w.add_head_count_kv(kvh)
w.add_layer_norm_rms_eps(1e-5)
w.add_rope_freq_base(10000.0)
w.add_rope_dimension_count(head_dim)
w.add_vocab_size(s["vocab"])
w.add_file_type(int(ftype))
w.add_bos_token_id(1)
w.add_eos_token_id(2)
add_gguf_tokenizer(w, TOKENIZER, s["vocab"])
for t in tensors:
    if len(t) == 2:
        w.add_tensor_info(t[0], (t[1],), np.dtype(np.float32), nbytes(t))
    elif typ == "F16":
        w.add_tensor_info(t[0], (t[1], t[2]), np.dtype(np.float16), nbytes(t))
    else:
        w.add_tensor_info(t[0], (t[1], row_bytes(t[2])), np.dtype(np.uint8), nbytes(t), raw_dtype=qtype)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_ti_data_to_file()
for i, t in enumerate(tensors):
    w.write_tensor_data(data(t))
    if t[0].endswith("ffn_down.weight") and (int(t[0].split(".")[1]) + 1) % 10 == 0:
        print(f"random_gguf: {t[0].split('.')[1]} layers, {time.time() - t0:.0f} s", flush=True)
w.close()
print(f"random_gguf: wrote {path.removesuffix('.tmp')} ({spec}, {typ}, {len(tensors)} tensors, {os.path.getsize(path) / 1e9:.2f} GB) "
      f"in {time.time() - t0:.1f} s", flush=True)
PY
  mv "$F.tmp" "$F" || exit 1
fi
echo "$F"
