#!/usr/bin/env python3
"""Decode / prefill speed and time-to-first-token of hoist on a Llama-2-7B-shaped model.

    python3 bench/gpu/runtime/bench_speed.py WORKDIR [--small] [--hoist PATH] [--budget S]

1. Builds a Llama-2-7B-shaped LlamaForCausalLM (hidden 4096, intermediate 11008, 32 layers,
   32 heads, vocab 32000) directly on the GPU in bf16, random weights (std 0.02).
2. transformers baseline, batch 1, greedy: a 512-token random prompt, 128 new tokens
   (min_new_tokens = max_new_tokens, EOS off). decode tok/s = 127 / (t_total - t_prefill),
   t_prefill = a generate() with 1 new token (medians; one warm-up). Default (dynamic) cache
   here; cache_implementation="static" (which transformers compiles) later, in a subprocess
   with a time limit. The better of the two is the baseline; both are printed.
3. save_pretrained -> WORKDIR/llama-7b (safetensors, 5GB shards) + the fixture tokenizer.
4. WORKDIR/llama-7b-q4_0.gguf: Q4_0 quantized on the GPU with torch (ggml's reference rule,
   checked bit-identical against gguf.quants.quantize first; one tensor of the file is
   re-checked after writing), llama arch metadata, q/k rows permuted like llama.cpp, norms F32.
5. Frees the torch model; `hoist run --benchmark --prompt-tokens 512 --max-tokens 128 --json`
   on both files; TTFT = wall time of `hoist run DIR --prompt TEXT --max-tokens 1
   --temperature 0 --verbose` (one untimed warm-up, then 3 timed; min and median).

Targets (PASS/MISS): bf16 decode >= 0.70 of its bound and >= 3x transformers generate (its
default, dynamic cache; the compiled static cache is printed beside it); Q4_0 decode >= 0.50 of
its bound; bf16 prefill >= 0.50 of cuBLAS; TTFT (median) <= 2.5 s.
JSON: $OUT/speed.json (or WORKDIR/speed.json), rewritten after every phase.

--small: a tiny shape (CPU dry run of the plumbing); hoist parts are skipped when the binary is
missing. --skip-torch: reuse the files and transformers numbers of an earlier run in WORKDIR.
"""

import argparse
import gc
import json
import os
import shlex
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import log, mr, np, torch  # noqa: E402

T_START = time.time()
TTFT_PROMPT = "The quick brown fox jumps over the lazy dog. Hello, world!"

SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096),
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=1000, max_position_embeddings=1024),
}


def elapsed():
    return time.time() - T_START


def make_config(shape):
    from transformers import LlamaConfig

    c = LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02)
    try:
        c.dtype = torch.bfloat16
    except Exception:  # noqa: BLE001
        pass
    return c


def build_model(shape, device):
    from transformers import LlamaForCausalLM

    cfg = make_config(shape)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(prev)
    model.eval()
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.bfloat16}:
        raise RuntimeError(f"model parameters are {dtypes}, wanted bfloat16 only")
    common.sync(device)
    return model


@torch.no_grad()
def time_generate(model, device, prompt_tokens, new_tokens, repeat, cache, log_fn=log):
    """Median seconds of generate() with 1 and with new_tokens new tokens; decode tok/s."""
    from transformers import GenerationConfig

    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, vocab, (1, prompt_tokens), generator=g).to(device)
    mask = torch.ones_like(ids)
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0, bos_token_id=None)

    def gen(n):
        kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1,
                  eos_token_id=None, pad_token_id=0)
        if cache:
            kw["cache_implementation"] = cache
        cfg = GenerationConfig(**kw)
        common.sync(device)
        t = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, generation_config=cfg)
        common.sync(device)
        dt = time.perf_counter() - t
        if out.shape[1] != prompt_tokens + n:
            raise RuntimeError(f"generate returned {out.shape[1] - prompt_tokens} new tokens, asked {n}")
        return dt

    t = time.perf_counter()
    gen(new_tokens)  # warm-up (and, for the static cache, compilation)
    warm = time.perf_counter() - t
    pre = [gen(1) for _ in range(max(repeat, 3))]
    tot = [gen(new_tokens) for _ in range(repeat)]
    tp, tt = statistics.median(pre), statistics.median(tot)
    r = dict(cache=cache or "dynamic", warmup_seconds=warm, prefill_seconds=tp, total_seconds=tt,
             prefill_runs=pre, total_runs=tot, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
             decode_tokens_per_s=(new_tokens - 1) / (tt - tp) if tt > tp else float("nan"))
    log_fn(f"transformers generate ({r['cache']} cache): prefill {tp * 1e3:.1f} ms, {new_tokens} tokens "
           f"{tt:.2f} s, decode {r['decode_tokens_per_s']:.1f} tok/s (warm-up {warm:.1f} s)")
    return r


def save_hf(model, path):
    import inspect

    shutil.rmtree(path, ignore_errors=True)
    kw = dict(max_shard_size="5GB")
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kw["safe_serialization"] = True
    model.save_pretrained(path, **kw)
    tok = os.path.join(common.FIXTURES, "tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok, f), os.path.join(path, f))
    files = sorted(os.listdir(path))
    size = sum(os.path.getsize(os.path.join(path, f)) for f in files if f.endswith(".safetensors"))
    if size == 0:
        raise RuntimeError(f"{path}: no safetensors written ({files})")
    return files, size


@torch.no_grad()
def write_q4_0_gguf(model, path):
    """Q4_0 GGUF of model (llama arch, q/k permuted, norms F32), quantized on model's device."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    cfg = model.config
    w = gguf.GGUFWriter(path, "llama")
    common.gguf_header(w, cfg, gguf.LlamaFileType.MOSTLY_Q4_0, "llama-7b-shape-q4_0")
    common.add_gguf_tokenizer(w, os.path.join(common.FIXTURES, "tokenizer", "tokenizer.json"), cfg.vocab_size)
    check = None
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for hf_name, t in model.state_dict().items():
        if cfg.tie_word_embeddings and hf_name == "lm_head.weight":
            continue
        name = common.gguf_tensor_name(hf_name)
        data = t.float()
        if hf_name.endswith("q_proj.weight"):
            data = mr.permute(data, n_q)
        elif hf_name.endswith("k_proj.weight"):
            data = mr.permute(data, n_q, n_kv)
        if data.dim() == 2:
            q = common.q4_0_quantize_torch(data.contiguous()).cpu().numpy()
            w.add_tensor(name, q, raw_dtype=Q.Q4_0)
            if check is None and hf_name.endswith("k_proj.weight"):
                check = (name, data.cpu().numpy(), q)
        else:
            w.add_tensor(name, data.cpu().numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # Re-check one tensor of the written file against gguf.quants.quantize (bit-identical).
    r = gguf.GGUFReader(path)
    by = {t.name: t for t in r.tensors}
    name, orig, ours = check
    ref = gguf.quants.quantize(orig, Q.Q4_0)
    stored = np.asarray(by[name].data).reshape(ref.shape)
    if not (np.array_equal(ref, ours) and np.array_equal(ref, stored)):
        raise RuntimeError(f"{path}: {name} differs from gguf.quants.quantize")
    return len(r.tensors)


def hoist_json(stdout):
    """The (last) JSON object hoist printed on stdout, which may hold other lines too."""
    s = stdout.strip()
    try:
        return json.loads(s)
    except ValueError:
        pass
    dec = json.JSONDecoder()
    found = None
    starts = [0] if s.startswith("{") else []
    starts += [i + 1 for i in range(len(s) - 1) if s[i] == "\n" and s[i + 1] == "{"]
    for i in starts:
        try:
            obj, _ = dec.raw_decode(s, i)
            if isinstance(obj, dict):
                found = obj
        except ValueError:
            continue
    if found is None:
        raise ValueError("no JSON object on stdout")
    return found


SPEED_KEYS = ["d2d_gbps", "weight_bytes_per_token", "decode_bound_tokens_per_s", "decode_tokens_per_s",
              "decode_fraction_of_bound", "decode_host_tokens_per_s", "decode_host_fraction_of_bound",
              "decode_paths_agree", "prefill_tokens", "prefill_seconds", "prefill_tokens_per_s",
              "cublas_gemm_seconds", "gemm_flops", "prefill_fraction_of_cublas"]


def hoist_bench(hoist, model_path, prompt_tokens, new_tokens, timeout, extra=()):
    argv = [hoist, "run", model_path, "--benchmark", "--prompt-tokens", str(prompt_tokens),
            "--max-tokens", str(new_tokens), "--json", *extra]
    log(f"$ {' '.join(argv)}")
    r = common.run_cmd(argv, timeout)
    out = dict(argv=argv, rc=r["rc"], wall_seconds=r["seconds"], stderr_tail=r["stderr"][-3000:])
    if r["timed_out"]:
        out["error"] = f"timed out after {timeout} s"
    elif r["rc"] != 0:
        out["error"] = f"exit {r['rc']}"
    else:
        try:
            rep = hoist_json(r["stdout"])
            out["report"] = rep
            missing = [k for k in SPEED_KEYS if k not in rep]
            if missing:
                out["warning"] = f"missing keys {missing}"
        except ValueError as e:
            out["error"] = f"{e}; stdout: {r['stdout'][-500:]!r}"
    if "error" in out:
        log(f"  hoist FAILED: {out['error']}{common.tail(r['stderr'] + r['stdout'], 12)}")
    else:
        rep = out["report"]
        log(f"  decode {fmt(rep.get('decode_tokens_per_s'))} tok/s of bound {fmt(rep.get('decode_bound_tokens_per_s'))} "
            f"({fmt(rep.get('decode_fraction_of_bound'), 3)}; logits to the host each step: "
            f"{fmt(rep.get('decode_host_tokens_per_s'))}, {fmt(rep.get('decode_host_fraction_of_bound'), 3)}; "
            f"same tokens: {rep.get('decode_paths_agree')}), prefill {fmt(rep.get('prefill_tokens_per_s'))} tok/s "
            f"({fmt(rep.get('prefill_fraction_of_cublas'), 3)} of cuBLAS), load {json.dumps(rep.get('load'))}"
            + (f"  WARNING {out['warning']}" if "warning" in out else ""))
    return out


def ttft(hoist, model_dir, runs, timeout, extra=()):
    import re

    argv = [hoist, "run", model_dir, "--prompt", TTFT_PROMPT, "--max-tokens", "1", "--temperature", "0",
            "--verbose", *extra]
    log(f"$ {' '.join(argv[:3])} --prompt '...' --max-tokens 1 --temperature 0 --verbose  (1 warm-up + {runs} timed)")
    res = dict(argv=argv, runs=[])
    for i in range(runs + 1):
        r = common.run_cmd(argv, timeout)
        if r["rc"] != 0:
            res["error"] = f"run {i}: {'timed out' if r['timed_out'] else 'exit ' + str(r['rc'])}"
            log(f"  TTFT run FAILED: {res['error']}{common.tail(r['stderr'] + r['stdout'], 12)}")
            return res
        if i == 0:
            res["warmup_seconds"] = r["seconds"]
            res["stdout"] = r["stdout"][-500:]
            res["stderr_tail"] = r["stderr"][-2000:]
        else:
            res["runs"].append(r["seconds"])
            # hoist's own figure (--verbose: "first token X s after start"), for comparison
            m = re.search(r"first token ([0-9.]+) s after start", r["stderr"])
            if m:
                res.setdefault("hoist_reported_seconds", []).append(float(m.group(1)))
    res["min_seconds"] = min(res["runs"])
    res["median_seconds"] = statistics.median(res["runs"])
    log(f"  TTFT (process wall time): runs {[round(x, 3) for x in res['runs']]}, min {res['min_seconds']:.3f} s, "
        f"median {res['median_seconds']:.3f} s (warm-up {res['warmup_seconds']:.2f} s; hoist's own first-token times "
        f"{res.get('hoist_reported_seconds', '-')}); output {res['stdout'].strip()[:80]!r}"
        f"{common.tail(res['stderr_tail'], 6)}")
    return res


def fmt(x, digits=1):
    if isinstance(x, (int, float)) and x == x:
        return f"{x:.{digits}f}"
    return "-"


def static_subprocess(args, remaining):
    """transformers with cache_implementation="static" in a child process (compilation can take
    minutes; a child can be killed)."""
    timeout = min(args.static_timeout, remaining)
    if timeout < 45:
        log(f"transformers static cache: skipped ({remaining:.0f} s of the budget left)")
        return dict(skipped=f"{remaining:.0f} s of the budget left")
    argv = [sys.executable, os.path.abspath(__file__), args.workdir, "--hf-static-only",
            "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
            "--repeat", str(args.repeat)] + (["--small"] if args.small else []) + \
           (["--device", args.device] if args.device else [])
    log(f"transformers static cache: child process, limit {timeout:.0f} s")
    r = common.run_cmd(argv, timeout)
    for line in r["stdout"].splitlines():
        if line.startswith("STATIC_JSON "):
            res = json.loads(line[len("STATIC_JSON "):])
            if "error" in res:
                log(f"  static cache FAILED: {res['error']}")
            else:
                log(f"  static: prefill {res['prefill_seconds'] * 1e3:.1f} ms, decode {res['decode_tokens_per_s']:.1f} tok/s "
                    f"(warm-up incl. compile {res['warmup_seconds']:.1f} s)")
            return res
    why = f"timed out after {timeout:.0f} s" if r["timed_out"] else f"exit {r['rc']}"
    log(f"  static cache: no result ({why}){common.tail(r['stderr'], 6)}")
    return dict(error=why)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir")
    ap.add_argument("--small", action="store_true", help="tiny shape (dry run)")
    ap.add_argument("--hoist", default=os.path.join(common.BIN, "hoist"))
    ap.add_argument("--device", default=None)
    ap.add_argument("--prompt-tokens", type=int, default=None, help="default 512 (--small: 64)")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 128 (--small: 16)")
    ap.add_argument("--repeat", type=int, default=2, help="timed generate() runs of each length")
    ap.add_argument("--ttft-runs", type=int, default=3)
    ap.add_argument("--hoist-timeout", type=float, default=300)
    ap.add_argument("--hoist-extra", default="", help="extra arguments for every hoist run (dry runs: '--device cpu')")
    ap.add_argument("--static", choices=["auto", "off"], default="auto")
    ap.add_argument("--static-timeout", type=float, default=240)
    ap.add_argument("--budget", type=float, default=400, help="seconds this script may take in all")
    ap.add_argument("--skip-torch", action="store_true", help="reuse WORKDIR's files and transformers numbers")
    ap.add_argument("--hf-static-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prompt_tokens is None:
        args.prompt_tokens = 64 if args.small else 512
    if args.new_tokens is None:
        args.new_tokens = 16 if args.small else 128
    shape = "small" if args.small else "7b"
    device = common.pick_device(args.device)
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)

    if args.hf_static_only:  # child process of static_subprocess
        try:
            model = build_model(shape, device)
            r = time_generate(model, device, args.prompt_tokens, args.new_tokens, args.repeat, "static",
                              log_fn=lambda *a: print(*a, file=sys.stderr, flush=True))
        except Exception as e:  # noqa: BLE001
            r = dict(error=f"{e.__class__.__name__}: {str(e)[:1000]}")
        print("STATIC_JSON " + json.dumps(r), flush=True)
        return 0

    name = "llama-7b" if shape == "7b" else "llama-small"
    hf_dir = os.path.join(args.workdir, name)
    gguf_path = os.path.join(args.workdir, f"{name}-q4_0.gguf")
    tjson = os.path.join(args.workdir, "transformers.json")
    out_path = os.path.join(common.out_dir(args.workdir), "speed.json")
    speed = dict(shape=shape, config=SHAPES[shape], prompt_tokens=args.prompt_tokens,
                 new_tokens=args.new_tokens, device=str(device), versions=common.versions(),
                 hf_dir=hf_dir, gguf=gguf_path)
    log(f"bench_speed: {shape} shape on {device}, workdir {args.workdir}, budget {args.budget:.0f} s, {speed['versions']}")

    # ---- 1-4: transformers baseline and the two files
    if args.skip_torch:
        if not os.path.isdir(hf_dir):
            log(f"--skip-torch: {hf_dir} missing")
            return 1
        speed["transformers"] = json.load(open(tjson)) if os.path.exists(tjson) else {}
        log(f"--skip-torch: reusing {hf_dir}, {gguf_path}")
    else:
        t = time.time()
        model = build_model(shape, device)
        n_params = sum(p.numel() for p in model.parameters())
        log(f"model: {n_params / 1e6:.1f} M parameters, bf16, on {device}, built in {time.time() - t:.1f} s")
        speed["transformers"] = dict(parameters=n_params)
        try:
            speed["transformers"]["dynamic"] = time_generate(model, device, args.prompt_tokens, args.new_tokens,
                                                             args.repeat, None)
        except Exception as e:  # noqa: BLE001
            speed["transformers"]["dynamic"] = dict(error=f"{e.__class__.__name__}: {e}")
            log(f"transformers generate FAILED: {e}")
        common.write_json(out_path, speed)
        t = time.time()
        files, size = save_hf(model, hf_dir)
        log(f"saved {hf_dir}: {size / 1e9:.2f} GB in {len([f for f in files if f.endswith('.safetensors')])} "
            f"shards, {time.time() - t:.1f} s")
        t = time.time()
        try:
            common.check_q4_0_quantizer(device)
            n = write_q4_0_gguf(model, gguf_path)
            log(f"wrote {gguf_path}: {os.path.getsize(gguf_path) / 1e9:.2f} GB, {n} tensors, {time.time() - t:.1f} s")
        except Exception as e:  # noqa: BLE001  (the bf16 measurements can still run)
            speed["gguf_error"] = f"{e.__class__.__name__}: {e}"
            log(f"Q4_0 GGUF FAILED: {speed['gguf_error']}")
            if os.path.exists(gguf_path):
                os.remove(gguf_path)
        common.write_json(tjson, speed["transformers"])
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            log(f"torch model freed; cuda memory allocated {torch.cuda.memory_allocated() / 1e9:.2f} GB")
    common.write_json(out_path, speed)

    # ---- 5: hoist
    hoist = os.path.abspath(args.hoist)
    have_hoist = os.path.isfile(hoist) and os.access(hoist, os.X_OK)
    speed["hoist"] = {}
    extra = shlex.split(args.hoist_extra)
    if not have_hoist:
        log(f"hoist binary {hoist} not found: skipping the hoist measurements")
        if not args.small:
            speed["hoist"]["binary"] = dict(error=f"{hoist} not found")
    else:
        for label, path in (("bf16", hf_dir), ("q4_0", gguf_path)):
            if not os.path.exists(path):
                speed["hoist"][label] = dict(error=f"{path} missing")
                log(f"hoist {label}: skipped, {path} missing")
                continue
            log(f"hoist {label}: {path}")
            speed["hoist"][label] = hoist_bench(hoist, path, args.prompt_tokens, args.new_tokens,
                                                min(args.hoist_timeout, max(30.0, args.budget - elapsed())), extra)
            common.write_json(out_path, speed)
        speed["ttft"] = ttft(hoist, hf_dir, args.ttft_runs, min(120.0, max(30.0, args.budget - elapsed())), extra)
        common.write_json(out_path, speed)

    # ---- static-cache baseline (last: its compilation may eat the rest of the budget)
    if args.static == "off":
        speed["transformers"]["static"] = dict(skipped="--static off")
    elif "static" not in speed["transformers"] or not args.skip_torch:
        speed["transformers"]["static"] = static_subprocess(args, args.budget - elapsed() - 10)
        if not args.skip_torch:
            common.write_json(tjson, speed["transformers"])
    common.write_json(out_path, speed)

    summarize(speed)
    errors = [f"hoist {k}" for k, v in speed["hoist"].items() if "error" in v]
    errors += ["ttft"] if "error" in speed.get("ttft", {}) else []
    errors += ["gguf"] if "gguf_error" in speed else []
    errors += ["transformers dynamic"] if "error" in speed["transformers"].get("dynamic", {}) else []
    speed["errors"] = errors
    common.write_json(out_path, speed)
    log(f"bench_speed: {elapsed():.0f} s; {out_path}" + (f"; FAILED: {', '.join(errors)}" if errors else ""))
    return 1 if errors else 0


def summarize(speed):
    tr = speed.get("transformers", {})
    base = {k: v.get("decode_tokens_per_s") for k, v in tr.items()
            if isinstance(v, dict) and isinstance(v.get("decode_tokens_per_s"), float) and v["decode_tokens_per_s"] == v["decode_tokens_per_s"]}
    # The yardstick is `generate` as it comes (its default, dynamic cache); the static
    # cache transformers compiles is reported beside it.
    best_cache = "dynamic" if "dynamic" in base else None
    best = base.get(best_cache)
    speed["baseline"] = dict(cache=best_cache, decode_tokens_per_s=best, all=base)
    h = speed.get("hoist", {})
    rows = []
    for label in ("bf16", "q4_0"):
        rep = h.get(label, {}).get("report", {})
        d = rep.get("decode_tokens_per_s")
        rows.append((label, d, rep.get("decode_bound_tokens_per_s"), rep.get("decode_fraction_of_bound"),
                     d / best if isinstance(d, (int, float)) and best else None,
                     rep.get("prefill_tokens_per_s"), rep.get("prefill_fraction_of_cublas"),
                     (rep.get("load") or {}).get("seconds")))
    log("")
    log("transformers generate decode tok/s: " + ", ".join(f"{k} {v:.1f}" for k, v in base.items())
        + (f" (baseline: {best_cache})" if best_cache else " (none)"))
    log(f"{'model':6s} {'decode tok/s':>12s} {'bound':>8s} {'fraction':>8s} {'x transformers':>14s} "
        f"{'prefill tok/s':>13s} {'of cuBLAS':>9s} {'load s':>7s}")
    for label, d, b, f, x, p, pc, ls in rows:
        log(f"{label:6s} {fmt(d):>12s} {fmt(b):>8s} {fmt(f, 3):>8s} {fmt(x, 2):>14s} {fmt(p):>13s} {fmt(pc, 3):>9s} {fmt(ls, 2):>7s}")
    if base.get("static") and rows[0][1]:
        bound = rows[0][2]
        log(f"bf16 vs transformers static cache (compiled): {rows[0][1] / base['static']:.2f}x "
            f"(the memory bound allows at most {fmt(bound / base['static'] if bound else None, 2)}x)")
    tt = speed.get("ttft", {})
    if "median_seconds" in tt:
        log(f"TTFT (hoist run, whole process, warm page cache): min {tt['min_seconds']:.3f} s, median {tt['median_seconds']:.3f} s")

    def target(label, value, op, limit):
        if not isinstance(value, (int, float)) or value != value:
            status = "SKIP"
        else:
            status = "PASS" if (value >= limit if op == ">=" else value <= limit) else "MISS"
        return dict(target=label, value=value, op=op, limit=limit, status=status)

    bf, q4 = rows[0], rows[1]
    targets = [
        target("bf16 decode fraction of bound", bf[3], ">=", 0.70),
        target("bf16 decode x transformers generate", bf[4], ">=", 3.0),
        target("q4_0 decode fraction of bound", q4[3], ">=", 0.50),
        target("bf16 prefill fraction of cuBLAS", bf[6], ">=", 0.50),
        target("TTFT median seconds", tt.get("median_seconds"), "<=", 2.5),
    ]
    speed["targets"] = targets
    log("targets:")
    for t in targets:
        v = t["value"]
        vs = f"{v:.3f}" if isinstance(v, (int, float)) else "-"
        log(f"  {t['status']:4s} {t['target']:45s} {vs:>8s} {t['op']} {t['limit']}")
    log(f"  info q4_0 prefill fraction of cuBLAS: {fmt(q4[6], 3)}")
    for label in ("bf16", "q4_0"):
        rep = h.get(label, {}).get("report", {})
        log(f"  info {label} decode with the logits on the host each step (sampling's path): "
            f"{fmt(rep.get('decode_host_fraction_of_bound'), 3)} of bound; "
            f"greedy tokens of both paths equal: {rep.get('decode_paths_agree')}")


if __name__ == "__main__":
    sys.exit(main())
