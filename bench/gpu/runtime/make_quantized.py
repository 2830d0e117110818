"""GGUF files as people download them: llama.cpp's own `llama-quantize` applied to a random F16
Llama model, so that hoist and llama.cpp are measured on the same, really mixed-type files
(llama-quantize's Q4_0 keeps `output.weight` in Q6_K; Q4_K_M mixes Q4_K and Q6_K).

    python3 bench/gpu/runtime/make_quantized.py OUTDIR --quantize PATH/llama-quantize \\
        [--shape 7b|small] [--types F16,Q8_0,Q4_0:pure,Q4_0,Q4_K_M,Q5_K_M,Q6_K] [--seed N]

Writes OUTDIR/f16.gguf (weights N(0, 0.02) in F16, norms near 1 in F32, llama arch, the runtime
fixtures' byte-level BPE tokenizer padded to the vocabulary), then OUTDIR/<type>.gguf for each
type with `llama-quantize` (`TYPE:pure` adds `--pure`: every tensor in TYPE, no mixing), and
OUTDIR/files.json: each file's llama-quantize type, size and the ggml types of its tensors
(counted). A file that exists is kept (delete OUTDIR to start over); each is written aside and
renamed when complete. Needs numpy and gguf only (no torch): it runs on the development machine
too, where `--shape small` checks the plumbing.
"""

import argparse
import collections
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_meta import add_gguf_tokenizer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER = os.path.join(HERE, "..", "..", "..", "crates", "runtime", "tests", "fixtures", "tokenizer",
                         "tokenizer.json")

# Llama-2-7B's shape (speed), and a small one (correctness, plumbing). Every K-quant needs rows
# of whole 256-value super-blocks, so widths are multiples of 256.
SHAPES = {
    "7b": dict(hidden=4096, ffn=11008, layers=32, heads=32, kv_heads=32, vocab=32000, context=4096),
    "small": dict(hidden=512, ffn=1536, layers=2, heads=8, kv_heads=4, vocab=1024, context=1024),
}
DEFAULT_TYPES = "F16,Q8_0,Q4_0:pure,Q4_0,Q4_K_M,Q5_K_M,Q6_K"


def log(*args):
    print(*args, flush=True)


def write_f16(path, shape, seed):
    """A random F16 Llama GGUF at path (written aside, renamed when complete)."""
    import gguf

    s = SHAPES[shape]
    rng = np.random.default_rng(seed)
    head_dim = s["hidden"] // s["heads"]
    kv_dim = head_dim * s["kv_heads"]
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name(f"random-llama-{shape}-f16")
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(s["vocab"])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    add_gguf_tokenizer(w, TOKENIZER, s["vocab"])

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)).astype(np.float32)

    h, f = s["hidden"], s["ffn"]
    w.add_tensor("token_embd.weight", mat(s["vocab"], h))
    for i in range(s["layers"]):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", norm(h))
        w.add_tensor(b + "attn_q.weight", mat(h, h))
        w.add_tensor(b + "attn_k.weight", mat(kv_dim, h))
        w.add_tensor(b + "attn_v.weight", mat(kv_dim, h))
        w.add_tensor(b + "attn_output.weight", mat(h, h))
        w.add_tensor(b + "ffn_norm.weight", norm(h))
        w.add_tensor(b + "ffn_gate.weight", mat(f, h))
        w.add_tensor(b + "ffn_up.weight", mat(f, h))
        w.add_tensor(b + "ffn_down.weight", mat(h, f))
    w.add_tensor("output_norm.weight", norm(h))
    w.add_tensor("output.weight", mat(s["vocab"], h))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, path)


def quantize(quantizer, src, dst, spec, threads):
    """llama-quantize [--pure] src dst TYPE threads, into dst (aside, renamed when complete)."""
    qtype, _, flag = spec.partition(":")
    if flag not in ("", "pure"):
        raise SystemExit(f"unknown flag in type {spec!r}: only TYPE:pure is understood")
    argv = [quantizer] + (["--pure"] if flag else []) + [src, dst + ".tmp", qtype, str(threads)]
    log("$ " + " ".join(argv))
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"llama-quantize failed (exit {r.returncode}) for {spec}:\n{r.stderr[-2000:]}")
    os.replace(dst + ".tmp", dst)


def tensor_types(path):
    """{ggml type name: tensor count} of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(path)
    return dict(collections.Counter(t.tensor_type.name for t in r.tensors))


def file_name(spec):
    return spec.replace(":", "-").lower() + ".gguf"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--quantize", required=True, help="path of llama.cpp's llama-quantize")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--types", default=DEFAULT_TYPES, help=f"comma-separated (default {DEFAULT_TYPES})")
    ap.add_argument("--seed", type=int, default=None, help="default: from the clock (fresh data each run)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    os.makedirs(a.outdir, exist_ok=True)
    seed = a.seed if a.seed is not None else int(time.time())
    src = os.path.join(a.outdir, "f16.gguf")
    if not os.path.exists(src):
        t = time.time()
        write_f16(src, a.shape, seed)
        log(f"wrote {src} ({a.shape}, seed {seed}) in {time.time() - t:.1f} s")
    write_files(a.outdir, src, a.types, a.quantize, a.threads, dict(shape=a.shape, seed=seed))


def write_files(outdir, src, types, quantizer, threads, about):
    """Each type of `types` (comma-separated; F16: src itself) made from src by llama-quantize
    (kept when it exists), then OUTDIR/files.json: `about` and each file's type, path, size and
    tensor types (gguf_peer.py's input)."""
    files = []
    for spec in [t.strip() for t in types.split(",") if t.strip()]:
        path = src if spec.upper() == "F16" else os.path.join(outdir, file_name(spec))
        if not os.path.exists(path):
            t = time.time()
            quantize(quantizer, src, path, spec, threads)
            log(f"  {spec}: {time.time() - t:.1f} s")
        types_of = tensor_types(path)
        log(f"{spec}: {path}, {os.path.getsize(path) / 1e9:.2f} GB, tensor types {types_of}")
        files.append(dict(type=spec, path=path, bytes=os.path.getsize(path), tensor_types=types_of))
    with open(os.path.join(outdir, "files.json"), "w") as f:
        json.dump(dict(about, files=files), f, indent=1)


if __name__ == "__main__":
    main()
