"""Independent writer and reader for hoist's end-to-end tests.

  independent.py make DIR   writes checkpoints with the reference libraries:
                            DIR/single.safetensors, DIR/sharded/ (two shards + index),
                            DIR/model.gguf (F32, F16, Q8_0, Q4_0; alignment 64)
  independent.py sums PATH  prints {tensor: xxh3-64 hex} of every tensor, read by the
                            reference library (safetensors.numpy / gguf.GGUFReader)

Fresh random data every run (numpy's default generator, unseeded).
"""
import json
import os
import sys

import numpy as np
import xxhash


def make(out):
    from safetensors.numpy import save_file
    import gguf

    rng = np.random.default_rng()
    os.makedirs(out, exist_ok=True)
    tensors = {
        "a.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "b.f16": rng.standard_normal((7,)).astype(np.float16),
        "c.one_byte": rng.integers(0, 255, (1,), dtype=np.uint8),
        "d.i64": rng.integers(-(2**40), 2**40, (4, 3), dtype=np.int64),
        "e.bool": rng.integers(0, 2, (9,)).astype(np.bool_),
        "f.empty": np.zeros((0, 4), dtype=np.float32),
        "g.big": rng.standard_normal((1000, 1037)).astype(np.float32),
        "h.i8": rng.integers(-128, 127, (13, 1), dtype=np.int8),
    }
    save_file(tensors, os.path.join(out, "single.safetensors"), metadata={"format": "np", "source": "independent.py"})

    sharded = os.path.join(out, "sharded")
    os.makedirs(sharded, exist_ok=True)
    names = sorted(tensors)
    parts = [names[:3], names[3:]]
    weight_map = {}
    for i, part in enumerate(parts):
        fname = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(sharded, fname), metadata={"format": "np"})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(sharded, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))}, "weight_map": weight_map}, f)

    w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), arch="llama")
    w.add_custom_alignment(64)
    w.add_uint32("llama.block_count", 2)
    w.add_string("general.name", "independent test model")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "wörld"])
    w.add_tensor("token_embd.weight", rng.standard_normal((8, 64)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal((33,)).astype(np.float16))
    for name, qtype in [("blk.0.ffn_up.weight", gguf.GGMLQuantizationType.Q8_0), ("blk.0.ffn_down.weight", gguf.GGMLQuantizationType.Q4_0)]:
        x = rng.standard_normal((16, 96)).astype(np.float32)
        q = gguf.quants.quantize(x, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def sums(path):
    out = {}
    if path.endswith(".gguf"):
        import gguf

        for t in gguf.GGUFReader(path).tensors:
            out[t.name] = xxhash.xxh3_64_hexdigest(np.ascontiguousarray(t.data).tobytes())
    else:
        from safetensors.numpy import load_file

        files = [path]
        if os.path.isdir(path):
            with open(os.path.join(path, "model.safetensors.index.json")) as f:
                files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
        for p in files:
            for name, arr in load_file(p).items():
                out[name] = xxhash.xxh3_64_hexdigest(np.ascontiguousarray(arr).tobytes())
    print(json.dumps(out))


if __name__ == "__main__":
    {"make": make, "sums": sums}[sys.argv[1]](sys.argv[2])
