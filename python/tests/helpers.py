"""Checkpoint writers and readers for the tests, independent of hoist (numpy only).

safetensors.numpy cannot write bf16 or float8, so a small writer of the format is here; it
also reads a tensor's raw bytes straight from a file for byte-for-byte comparisons.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, List, Optional, Tuple

import numpy as np

# dtype name -> (numpy dtype of the bit pattern, element size)
RAW = {
    "BOOL": np.uint8,
    "U8": np.uint8,
    "I8": np.int8,
    "U16": np.uint16,
    "I16": np.int16,
    "U32": np.uint32,
    "I32": np.int32,
    "U64": np.uint64,
    "I64": np.int64,
    "F16": np.float16,
    "BF16": np.uint16,
    "F32": np.float32,
    "F64": np.float64,
    "F8_E4M3": np.uint8,
    "F8_E5M2": np.uint8,
    "C64": np.complex64,
}


def random_bytes(rng: np.random.Generator, dtype: str, shape: Tuple[int, ...]) -> bytes:
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if dtype == "BOOL":
        return rng.integers(0, 2, n, dtype=np.uint8).tobytes()
    if dtype in ("F16", "F32", "F64", "C64"):
        a = rng.standard_normal(n * (2 if dtype == "C64" else 1)).astype(
            {"F16": np.float16, "F32": np.float32, "F64": np.float64, "C64": np.float32}[dtype]
        )
        return a.tobytes()
    size = np.dtype(RAW[dtype]).itemsize
    return rng.integers(0, 256, n * size, dtype=np.uint8).tobytes()


def write_safetensors(
    path: str,
    tensors: List[Tuple[str, str, Tuple[int, ...], bytes]],
    metadata: Optional[Dict[str, str]] = None,
) -> None:
    """Writes (name, dtype, shape, bytes) in the given order."""
    header: Dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, _, _, data in tensors:
            f.write(data)


def read_raw(path: str) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    """name -> (dtype, shape, bytes), straight from a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, e in header.items():
            if name == "__metadata__":
                continue
            a, b = e["data_offsets"]
            f.seek(base + a)
            out[name] = (e["dtype"], tuple(e["shape"]), f.read(b - a))
    return out


def write_index(dirpath: str, weight_map: Dict[str, str], total: int) -> str:
    p = os.path.join(dirpath, "model.safetensors.index.json")
    with open(p, "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    return p


def write_gguf(path: str, tensors: List[Tuple[str, int, Tuple[int, ...], bytes]], kv: Dict[str, object]) -> None:
    """A GGUF v3 file: tensors as (name, ggml type id, shape outermost-first, bytes)."""

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack("<Q", len(b)) + b

    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", 3, len(tensors), len(kv))
    for k, v in kv.items():
        out += s(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + s(v)
        elif isinstance(v, bool):
            out += struct.pack("<I?", 7, v)
        elif isinstance(v, int):
            out += struct.pack("<II", 4, v)  # uint32
        elif isinstance(v, float):
            out += struct.pack("<If", 6, v)
        else:
            raise TypeError(v)
    align = 32
    off = 0
    offsets = []
    for name, gtype, shape, data in tensors:
        off += -off % align
        offsets.append(off)
        off += len(data)
    for (name, gtype, shape, data), o in zip(tensors, offsets):
        out += s(name) + struct.pack("<I", len(shape))
        for d in reversed(shape):  # GGUF stores innermost first
            out += struct.pack("<Q", d)
        out += struct.pack("<IQ", gtype, o)
    out += b"\0" * (-len(out) % align)
    base = len(out)
    for (name, gtype, shape, data), o in zip(tensors, offsets):
        out += b"\0" * (base + o - len(out))
        out += data
    with open(path, "wb") as f:
        f.write(out)
