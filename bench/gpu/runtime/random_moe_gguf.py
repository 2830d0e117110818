#!/usr/bin/env python3
"""A Qwen3-30B-A3B-shaped mixture-of-experts GGUF with random weights, and llama-quantize's
files made from it, for hoist against llama-bench on the same files (gguf_peer.py).

    python3 bench/gpu/runtime/random_moe_gguf.py OUTDIR --quantize PATH [--layers N]
        [--types Q4_K_M,Q8_0] [--threads T] [--small]

OUTDIR/f16.gguf: `qwen3moe` as llama.cpp's converter writes it (hidden 2048, 32 heads of 128
with 4 KV heads and q/k norms, 128 experts of width 768 stacked in `ffn_{gate,up,down}_exps`, 8
per token, an F32-kept router `ffn_gate_inp`, vocabulary 151936 with the runtime fixtures'
tokenizer padded), N decoder layers (default 16: 11.5 GB; all 48 would be 61 GB, beyond the GPU
machine's 64 GB disk). Weights are random F16 bit patterns of magnitude 2^-7..2^-6 and random
sign (written directly, no model: fast, little memory), norms near 1: random routers route
nearly uniformly. Then each type of --types by `llama-quantize f16.gguf TYPE.gguf TYPE`, and
OUTDIR/files.json as make_quantized.py writes it (gguf_peer.py's input). Files that exist are
kept; each is written aside and renamed when complete. Needs numpy and gguf.
"""

import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_meta import add_gguf_tokenizer  # noqa: E402
from make_quantized import TOKENIZER, log, write_files  # noqa: E402

SHAPE = dict(hidden=2048, heads=32, kv_heads=4, head_dim=128, experts=128, top_k=8, width=768,
             ffn=6144, vocab=151936, context=40960)
# --small: the plumbing on any machine (a few MB).
SMALL = dict(hidden=256, heads=4, kv_heads=2, head_dim=64, experts=8, top_k=2, width=256, ffn=512,
             vocab=1024, context=1024)


def tensors(layers):
    """(name, shape) of every tensor in file order; 1-D ones are F32 norms."""
    s = SHAPE
    h, hd, e, w = s["hidden"], s["head_dim"], s["experts"], s["width"]
    out = [("token_embd.weight", (s["vocab"], h))]
    for i in range(layers):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (h,)), (b + "attn_q.weight", (s["heads"] * hd, h)),
                (b + "attn_k.weight", (s["kv_heads"] * hd, h)), (b + "attn_v.weight", (s["kv_heads"] * hd, h)),
                (b + "attn_output.weight", (h, s["heads"] * hd)), (b + "attn_q_norm.weight", (hd,)),
                (b + "attn_k_norm.weight", (hd,)), (b + "ffn_norm.weight", (h,)),
                (b + "ffn_gate_inp.weight", (e, h)), (b + "ffn_gate_exps.weight", (e, w, h)),
                (b + "ffn_up_exps.weight", (e, w, h)), (b + "ffn_down_exps.weight", (e, h, w))]
    return out + [("output_norm.weight", (h,)), ("output.weight", (s["vocab"], h))]


def write_f16(path, layers, seed):
    import gguf

    s = SHAPE
    specs = tensors(layers)
    nbytes = lambda shape: int(np.prod(shape)) * (4 if len(shape) == 1 else 2)  # noqa: E731
    total = sum(nbytes(shape) for _, shape in specs)
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < total + (1 << 30):
        raise SystemExit(f"{path}: {total / 1e9:.1f} GB of tensors, only {free / 1e9:.1f} GB free")
    rng = np.random.default_rng(seed)
    tmp = path + ".tmp"
    w = gguf.GGUFWriter(tmp, "qwen3moe")
    w.add_name(f"random-qwen3moe-30b-a3b-L{layers}-f16")
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_block_count(layers)
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1000000.0)
    w.add_expert_count(s["experts"])
    w.add_expert_used_count(s["top_k"])
    w.add_expert_feed_forward_length(s["width"])
    w.add_vocab_size(s["vocab"])
    w.add_file_type(int(gguf.LlamaFileType.MOSTLY_F16))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    add_gguf_tokenizer(w, TOKENIZER, s["vocab"])
    for name, shape in specs:
        dtype = np.dtype(np.float32) if len(shape) == 1 else np.dtype(np.float16)
        w.add_tensor_info(name, shape, dtype, nbytes(shape))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, shape in specs:
        if len(shape) == 1:
            data = (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
        else:
            # Random sign and mantissa, exponent 2^-7: |w| in [2^-7, 2^-6), never inf or NaN.
            r = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
            np.bitwise_and(r, 0x83FF, out=r)
            np.bitwise_or(r, 0x2000, out=r)
            data = r.view(np.float16)
        w.write_tensor_data(data)
    w.close()
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--quantize", required=True, help="path of llama.cpp's llama-quantize")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--types", default="Q4_K_M")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--small", action="store_true", help="a tiny shape (checks the plumbing)")
    a = ap.parse_args()
    if a.small:
        SHAPE.update(SMALL)
    os.makedirs(a.outdir, exist_ok=True)
    seed = a.seed if a.seed is not None else int(time.time())
    src = os.path.join(a.outdir, "f16.gguf")
    if not os.path.exists(src):
        t = time.time()
        write_f16(src, a.layers, seed)
        log(f"wrote {src} (qwen3moe, {a.layers} layers, seed {seed}) in {time.time() - t:.1f} s")
    write_files(a.outdir, src, a.types, a.quantize, a.threads,
                dict(shape=f"qwen3moe-30b-a3b-L{a.layers}", seed=seed))

if __name__ == "__main__":
    main()
