#!/usr/bin/env python3
"""Checks hoist's GPU logits and greedy decoding against transformers, case by case.

    python3 bench/gpu/runtime/check_logits.py OUTDIR [--gpu-logits PATH] [--only SUBSTR,...]

OUTDIR is make_models.py's output (OUTDIR/models.json). Each case's 3 prompts (64, 77 and 100
random token ids, drawn afresh by every make_models run and kept only where greedy decoding is
unambiguous: see make_models.py; --random-prompts draws unselected ones instead):

1. `gpu_logits MODEL --prompts P.json --steps 16 --out DIR` (a subprocess, with a timeout) gives
   the logits of every prompt position (one prefill) and of 15 decode steps fed with its own
   greedy tokens, [n + 15, vocab] per prompt, plus the 16 greedy tokens.
2. The reference: transformers, one teacher-forced forward pass over prompt + greedy[:-1] (no
   cache, eager attention) in the case's dtype: fp32 (TF32 off) for hf-f32 and GGUF cases (the
   GGUF reference holds the dequantized weights: of gguf-py's Q8_0/Q4_0 files, or of the files
   llama.cpp's llama-quantize made, read back tensor by tensor in their mixed ggml types), bf16
   for hf-bf16, f16 for hf-f16.
3. Metrics: rel = max|hoist - ref| / max|ref| over all rows (and the worst row, and the worst
   prefill / decode rows); greedy agreement: hoist greedy[j] == argmax(ref row n-1+j).
   For bf16 cases also transformers' own generate() (greedy, KV cache) vs hoist's tokens.
   Also hoist's greedy decoding with the arg-max on the GPU (`device_greedy`, what
   `hoist run --temperature 0` runs) vs its host loop's tokens: the same kernels, so identical.

Pass: hf-f32 rel <= 1e-3 and greedy identical; hf-bf16 rel <= 2e-2 and greedy identical on
all 3 prompts; every GGUF kind (`gguf-<type>`: gguf-q8_0, gguf-q4_0 and the llama-quantize
ones, gguf-q4_k_m, gguf-q5_k_m, gguf-q6_k, gguf-q3_k_m, gguf-q2_k, gguf-q4_1, gguf-q5_0,
gguf-q5_1, gguf-iq4_nl, ...) rel <= 2e-2 (greedy agreement reported, not required); every case:
device greedy identical to the host loop's. GGUF lines end with the file's ggml tensor types
and counts (`tensors Q4_K x12 F32 x9 Q6_K x3`, plus llama-quantize's fallbacks if any); the
JSON entry carries them with `vs_original_fp32` (make_models' sanity numbers). The last line is
`N passed, N failed`; exit status 1 when any case failed. JSON summary: $OUT/logits.json
(or OUTDIR/logits.json when $OUT is unset). `--only lq` selects the llama-quantize cases.
"""

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import log, np, torch  # noqa: E402

TOL = {"hf-f32": 1e-3, "hf-bf16": 2e-2, "hf-f16": 2e-2}
GREEDY_REQUIRED = {"hf-f32": True, "hf-bf16": True, "hf-f16": True}
GGUF_TOL = 2e-2  # every `gguf-<type>` kind (gguf-q8_0, gguf-q4_k_m, gguf-iq4_nl, ...)
LOW_PRECISION = ("hf-bf16", "hf-f16")  # kinds whose transformers `generate` is compared too


def tolerance(kind):
    """(rel tolerance, greedy required) of a case kind; KeyError for an unknown kind."""
    if kind in TOL:
        return TOL[kind], GREEDY_REQUIRED[kind]
    if kind.startswith("gguf-") and len(kind) > len("gguf-"):
        return GGUF_TOL, False
    raise KeyError(f"unknown case kind {kind!r}")


def types_text(case):
    """A GGUF case's ggml tensor types as `Q4_K x12 Q6_K x3 F32 x9` (and llama-quantize's
    fallbacks, when it could not give some tensors the type asked for); "" for other cases."""
    types = case.get("tensor_types")
    if not types:
        return ""
    text = " ".join(f"{t} x{n}" for t, n in types.items())
    fb = (case.get("llama_quantize") or {}).get("fallbacks")
    if fb:
        text += f", {len(fb)} llama-quantize fallbacks"
    return text


def load_reference(case, outdir, device):
    from transformers import AutoModelForCausalLM

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[case["ref"]["dtype"]]
    path = os.path.join(outdir, case["ref"]["hf_dir"])
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    except TypeError:  # transformers 4.x spells it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, attn_implementation="eager")
    model = model.to(device).eval()
    got = next(model.parameters()).dtype
    if got != dtype:
        raise RuntimeError(f"reference loaded as {got}, wanted {dtype}")
    return model


@torch.no_grad()
def teacher_forced(model, ids, device):
    x = torch.tensor([ids], device=device)
    return model(input_ids=x, use_cache=False).logits[0].float().cpu().numpy()


@torch.no_grad()
def hf_generate(model, prompt, steps, device):
    """transformers' own greedy generate (KV cache), never stopping at EOS."""
    from transformers import GenerationConfig

    gc_ = GenerationConfig(
        max_new_tokens=steps, min_new_tokens=steps, do_sample=False, num_beams=1,
        eos_token_id=None, pad_token_id=0, bos_token_id=None,
    )
    saved = model.generation_config
    model.generation_config = GenerationConfig(eos_token_id=None, pad_token_id=0, bos_token_id=None)
    try:
        x = torch.tensor([prompt], device=device)
        out = model.generate(x, attention_mask=torch.ones_like(x), generation_config=gc_)
    finally:
        model.generation_config = saved
    return out[0, len(prompt):].tolist()


def run_hoist(binary, case, outdir, work, steps, timeout):
    """Runs gpu_logits for one case; returns (result dict, logits list) or raises RuntimeError."""
    model = os.path.join(outdir, case["path"])
    prompts = [p["ids"] for p in case["prompts"]]
    pj = os.path.join(work, "prompts.json")
    with open(pj, "w") as f:
        json.dump(prompts, f)
    res_dir = os.path.join(work, "out")
    shutil.rmtree(res_dir, ignore_errors=True)
    os.makedirs(res_dir)
    argv = [binary, model, "--prompts", pj, "--steps", str(steps), "--out", res_dir]
    r = common.run_cmd(argv, timeout)
    if r["timed_out"]:
        raise RuntimeError(f"gpu_logits timed out after {timeout} s{common.tail(r['stderr'])}")
    if r["rc"] != 0:
        raise RuntimeError(f"gpu_logits exit {r['rc']}{common.tail(r['stderr'] + r['stdout'], 12)}")
    rpath = os.path.join(res_dir, "result.json")
    if not os.path.exists(rpath):
        raise RuntimeError(f"gpu_logits wrote no result.json (exit 0){common.tail(r['stderr'] + r['stdout'])}")
    with open(rpath) as f:
        result = json.load(f)
    vocab = result.get("vocab")
    if vocab != case["config"]["vocab_size"]:
        raise RuntimeError(f"result.json vocab {vocab} != config vocab_size {case['config']['vocab_size']}")
    if len(result.get("prompts", [])) != len(prompts):
        raise RuntimeError(f"result.json has {len(result.get('prompts', []))} prompts, sent {len(prompts)}")
    logits = []
    for i, (p, rp) in enumerate(zip(prompts, result["prompts"])):
        if rp.get("n") != len(p):
            raise RuntimeError(f"prompt {i}: n = {rp.get('n')}, sent {len(p)} tokens")
        g = rp.get("greedy")
        if not isinstance(g, list) or len(g) != steps or not all(isinstance(t, int) and 0 <= t < vocab for t in g):
            raise RuntimeError(f"prompt {i}: greedy must be {steps} token ids in [0, {vocab}), got {g!r:.200}")
        fpath = os.path.join(res_dir, rp.get("file", f"p{i}.f32"))
        rows = len(p) + steps - 1
        want = rows * vocab * 4
        size = os.path.getsize(fpath) if os.path.exists(fpath) else -1
        if size != want:
            raise RuntimeError(f"prompt {i}: {fpath} has {size} bytes, expected {want} ([{rows}, {vocab}] f32)")
        a = np.fromfile(fpath, dtype="<f4").reshape(rows, vocab)
        if not np.isfinite(a).all():
            bad = np.argwhere(~np.isfinite(a))[0]
            raise RuntimeError(f"prompt {i}: non-finite logits (first at row {bad[0]}, column {bad[1]})")
        logits.append(a)
    return result, logits, r["seconds"]


def compare(h, ref, n, greedy, steps):
    """Metrics of hoist logits h against ref ([n+steps-1, vocab] each) for one prompt."""
    diff = np.abs(h.astype(np.float64) - ref.astype(np.float64))
    scale = float(np.abs(ref).max())
    row_err = diff.max(axis=1) / max(scale, 1e-30)
    worst = int(row_err.argmax())
    ref_arg = ref[n - 1:].argmax(axis=1)
    own_arg = h[n - 1:].argmax(axis=1)
    agree = [int(g) == int(a) for g, a in zip(greedy, ref_arg)]
    mism = []
    for j, ok in enumerate(agree):
        if not ok:
            row = ref[n - 1 + j]
            mism.append(dict(step=j, hoist=int(greedy[j]), ref=int(ref_arg[j]),
                             ref_gap=float(row[ref_arg[j]] - row[greedy[j]])))
    return dict(
        n=n,
        rel=float(row_err.max()),
        worst_row=worst,
        worst_row_is=("prefill" if worst < n else f"decode step {worst - n + 1}"),
        rel_prefill=float(row_err[:n].max()),
        rel_decode=float(row_err[n:].max()) if steps > 1 else 0.0,
        max_abs_ref=scale,
        greedy_agree=sum(agree),
        greedy_steps=len(agree),
        first_mismatch=mism[0] if mism else None,
        own_argmax_consistent=bool((own_arg == np.asarray(greedy)).all()),
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--gpu-logits", default=os.path.join(common.BIN, "gpu_logits"))
    ap.add_argument("--device", default=None, help="reference device (default: cuda if available, else cpu)")
    ap.add_argument("--only", default=None, help="comma-separated substrings of case names")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per gpu_logits run")
    ap.add_argument("--random-prompts", action="store_true",
                    help="ignore the manifest's selected prompts; draw 3 fresh ones (64, 77, 100 tokens)")
    ap.add_argument("--no-generate", action="store_true", help="skip transformers generate() for bf16 cases")
    args = ap.parse_args()

    t0 = time.time()
    outdir = os.path.abspath(args.outdir)
    man_path = os.path.join(outdir, "models.json")
    if not os.path.exists(man_path):
        log(f"check_logits: {man_path} not found (run make_models.py first)")
        log("0 passed, 1 failed")
        return 1
    with open(man_path) as f:
        manifest = json.load(f)
    device = common.pick_device(args.device)
    common.strict_fp32()
    binary = os.path.abspath(args.gpu_logits)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        log(f"check_logits: {binary} is missing or not executable")
    steps = int(manifest.get("steps", 16))
    log(f"check_logits: {len(manifest['cases'])} cases, {steps} steps, reference on {device}, "
        f"binary {binary}, {common.versions()}")
    summary_dir = common.out_dir(outdir)
    rng = np.random.default_rng(time.time_ns() % 2**32)

    results = []
    passed = failed = 0
    work_root = tempfile.mkdtemp(prefix="hoist-logits-")
    for case in manifest["cases"]:
        name = case["name"]
        if args.only and not any(s in name for s in args.only.split(",")):
            continue
        kind = case["kind"]
        if args.random_prompts:
            vocab = case["config"]["vocab_size"]
            case = dict(case, prompts=[dict(ids=rng.integers(3, vocab, n).tolist()) for n in (64, 77, 100)])
        entry = dict(name=name, kind=kind, path=case["path"], prompts=[])
        for k in ("made_by", "llama_quantize_type", "tensor_types", "vs_original_fp32"):
            if k in case:
                entry[k] = case[k]
        work = os.path.join(work_root, name)
        os.makedirs(work, exist_ok=True)
        try:
            tol, greedy_required = tolerance(kind)
            entry["tol"] = tol
            result, hl, secs = run_hoist(binary, case, outdir, work, steps, args.timeout)
            entry["hoist_seconds"] = round(secs, 3)
            entry["load_seconds"] = result.get("load_seconds")
            model = load_reference(case, outdir, device)
            for p, rp, h in zip(case["prompts"], result["prompts"], hl):
                ids, greedy = p["ids"], rp["greedy"]
                ref = teacher_forced(model, ids + greedy[:-1], device)
                m = compare(h, ref, len(ids), greedy, steps)
                m["hoist_greedy"] = greedy
                m["device_greedy_equal"] = rp.get("device_greedy") == greedy
                if p.get("greedy_fp32") is not None:
                    m["selection_fp32_greedy_equal"] = p["greedy_fp32"] == greedy
                if kind in LOW_PRECISION and not args.no_generate:
                    try:
                        gen = hf_generate(model, ids, steps, device)
                        m["hf_generate_equal"] = gen == greedy
                        if gen != greedy:
                            j = next((i for i, (a, b) in enumerate(zip(gen, greedy)) if a != b), len(gen))
                            m["hf_generate_first_difference"] = j
                            m["hf_generate"] = gen
                    except Exception as e:  # noqa: BLE001
                        m["hf_generate_error"] = f"{e.__class__.__name__}: {e}"
                entry["prompts"].append(m)
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{e.__class__.__name__}: {e}"

        if "error" in entry:
            ok = False
            line = f"FAIL {name:18s} {kind:12s} ERROR {entry['error']}"
        else:
            ps = entry["prompts"]
            rel = max(m["rel"] for m in ps)
            worst = max(ps, key=lambda m: m["rel"])
            agree = sum(m["greedy_agree"] for m in ps)
            total = sum(m["greedy_steps"] for m in ps)
            rel_ok = rel <= tol
            greedy_ok = agree == total
            device_ok = all(m["device_greedy_equal"] for m in ps)
            ok = rel_ok and (greedy_ok or not greedy_required) and device_ok
            entry.update(rel=rel, greedy_agree=agree, greedy_steps=total, rel_ok=rel_ok, greedy_ok=greedy_ok)
            line = (f"{'PASS' if ok else 'FAIL'} {name:18s} {kind:12s} rel {rel:.2e} (tol {tol:.0e}; "
                    f"worst: prompt {ps.index(worst)} row {worst['worst_row']} = {worst['worst_row_is']}; "
                    f"prefill {max(m['rel_prefill'] for m in ps):.1e} decode {max(m['rel_decode'] for m in ps):.1e}) "
                    f"greedy {agree}/{total}{'' if greedy_required else ' (info)'}")
            if kind in LOW_PRECISION and not args.no_generate:
                gens = [m.get("hf_generate_equal") for m in ps]
                line += f", hf generate equal {sum(bool(g) for g in gens)}/{len(gens)}"
            if not device_ok:
                line += ", FAIL: device greedy != host loop greedy"
            if not all(m["own_argmax_consistent"] for m in ps):
                line += ", NOTE: hoist greedy != argmax of its own logits"
            mism = [m["first_mismatch"] for m in ps if m["first_mismatch"]]
            if mism:
                mm_ = mism[0]
                line += (f"; first greedy mismatch: step {mm_['step']} hoist {mm_['hoist']} ref {mm_['ref']} "
                         f"(ref gap {mm_['ref_gap']:.3g})")
        if types_text(case):
            line += f"; tensors {types_text(case)}"
        entry["passed"] = ok
        passed += ok
        failed += not ok
        results.append(entry)
        log(line)
        common.write_json(os.path.join(summary_dir, "logits.json"),
                          dict(results=results, passed=passed, failed=failed, versions=common.versions(),
                               seed=manifest.get("seed"), device=str(device)))
    shutil.rmtree(work_root, ignore_errors=True)
    if not results:
        log("check_logits: no case selected")
        failed = 1
    log(f"check_logits: {time.time() - t0:.1f} s, summary in {os.path.join(summary_dir, 'logits.json')}")
    log(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
