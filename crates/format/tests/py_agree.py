"""Writes checkpoints with the reference Python writers and prints, as JSON, what they hold.

Used by tests/python_agreement.rs: `python3 py_agree.py OUT_DIR`. Needs safetensors, numpy and
gguf (pip install safetensors numpy gguf). Every tensor's bytes are printed in hex (as the
writer was given them), so the Rust side checks its byte ranges against the file's contents.
"""
import json
import os
import sys

import numpy as np
import gguf
from gguf.quants import quantize
from safetensors.numpy import save_file

out = sys.argv[1]
rng = np.random.default_rng(7)
ST_NAMES = {np.float32: "F32", np.float16: "F16", np.int8: "I8", np.int64: "I64", np.bool_: "BOOL",
            np.uint16: "U16", np.float64: "F64"}


def st_entry(name, arr):
    return {"name": name, "dtype": ST_NAMES[arr.dtype.type], "shape": list(arr.shape),
            "hex": np.ascontiguousarray(arr).tobytes().hex()}


report = []

# One safetensors file with metadata and several dtypes, a scalar and an empty tensor.
single = {
    "model.embed.weight": rng.standard_normal((5, 3)).astype(np.float32),
    "model.norm.weight": rng.standard_normal((7,)).astype(np.float16),
    "ids": rng.integers(-100, 100, (2, 2, 2)).astype(np.int64),
    "mask": rng.integers(0, 2, (3,)).astype(np.bool_),
    "q": rng.integers(-128, 127, (4, 4)).astype(np.int8),
    "scalar": np.array(3.5, dtype=np.float64),
    "empty": np.zeros((0, 4), dtype=np.uint16),
}
path = os.path.join(out, "single.safetensors")
save_file(single, path, metadata={"format": "pt", "note": "agreement"})
report.append({"kind": "safetensors", "path": path, "meta": {"format": "pt", "note": "agreement"},
               "tensors": [st_entry(k, v) for k, v in single.items()]})

# A sharded checkpoint: two shards and an index written the way transformers writes it.
shard_dir = os.path.join(out, "sharded")
os.makedirs(shard_dir, exist_ok=True)
shards = {
    "model-00001-of-00002.safetensors": {f"layers.{i}.w": rng.standard_normal((3, 2)).astype(np.float32) for i in range(3)},
    "model-00002-of-00002.safetensors": {f"layers.{i}.w": rng.standard_normal((2, 2)).astype(np.float16) for i in range(3, 5)},
}
weight_map, tensors, total = {}, [], 0
for fname, ts in shards.items():
    save_file(ts, os.path.join(shard_dir, fname), metadata={"format": "pt"})
    for k, v in ts.items():
        weight_map[k] = fname
        total += v.nbytes
        tensors.append(st_entry(k, v))
with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
report.append({"kind": "index", "path": shard_dir, "meta": {"total_size": total, "format": "pt"}, "tensors": tensors})

# GGUF with a non-default alignment, plain and Q8_0/Q4_0-quantized tensors, a vocabulary.
path = os.path.join(out, "model.gguf")
w = gguf.GGUFWriter(path, "llama")
w.add_custom_alignment(64)
tokens = [f"tok{i}" for i in range(300)]
w.add_token_list(tokens)
w.add_uint32("llama.block_count", 2)
w.add_float32("llama.rope.freq_base", 10000.0)
w.add_name("agreement")
gg = []
plain = {
    "token_embd.weight": rng.standard_normal((6, 8)).astype(np.float32),
    "output_norm.weight": rng.standard_normal((8,)).astype(np.float16),
}
for name, arr in plain.items():
    w.add_tensor(name, arr)
    kind = gguf.GGMLQuantizationType.F32 if arr.dtype == np.float32 else gguf.GGMLQuantizationType.F16
    gg.append({"name": name, "dtype": kind.name, "shape": list(arr.shape), "hex": arr.tobytes().hex()})
for name, kind, shape in [("blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q8_0, (4, 64)),
                          ("blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q4_0, (3, 96)),
                          ("blk.1.attn_q.weight", gguf.GGMLQuantizationType.Q8_0, (2, 32))]:
    q = quantize(rng.standard_normal(shape).astype(np.float32), kind)
    w.add_tensor(name, q, raw_dtype=kind)
    gg.append({"name": name, "dtype": kind.name, "shape": list(shape), "hex": q.tobytes().hex()})
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
# What gguf's own reader says about offsets, to compare independently of the bytes.
reader = gguf.GGUFReader(path)
offsets = {t.name: [int(t.data_offset), int(t.n_bytes)] for t in reader.tensors}
for t in gg:
    t["reader_range"] = offsets[t["name"]]
report.append({"kind": "gguf", "path": path, "alignment": 64, "n_tokens": len(tokens), "tensors": gg})

print(json.dumps(report))
