"""hoist against llama.cpp on the same GGUF files, in the same call: `llama-bench -p P -n N -ngl 99
-r R -o json` and `hoist run FILE --benchmark --prompt-tokens P --max-tokens N --json` on each
file of make_quantized.py's files.json, alternating per file; a table of tokens/s and ratios.

    python3 bench/gpu/runtime/gguf_peer.py FILES_JSON --hoist PATH --llama-bench PATH \\
        [--prompt 512] [--gen 128] [--reps 3] [--out DIR]

A file hoist refuses (an unsupported tensor type) is a row with hoist's error, not a failure of
the run; the exit status is 1 only when llama-bench fails or hoist fails otherwise.
Writes DIR/gguf_peer.json and DIR/gguf_peer.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def log(*args):
    print(*args, flush=True)


def last_json(stdout):
    """The last JSON value printed on stdout (llama-bench and hoist may print other lines)."""
    dec = json.JSONDecoder()
    found = None
    for i, ch in enumerate(stdout):
        if ch in "[{" and (i == 0 or stdout[i - 1] == "\n"):
            try:
                found, _ = dec.raw_decode(stdout, i)
            except ValueError:
                continue
    if found is None:
        raise ValueError("no JSON on stdout")
    return found


def run(argv, timeout):
    log("$ " + " ".join(argv))
    t = time.time()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s", time.time() - t
    if r.returncode != 0:
        return None, f"exit {r.returncode}: {(r.stderr or r.stdout)[-1500:]}", time.time() - t
    try:
        return last_json(r.stdout), None, time.time() - t
    except ValueError as e:
        return None, f"{e}: {r.stdout[-500:]!r}", time.time() - t


def llama_bench(binary, path, a):
    doc, err, secs = run([binary, "-m", path, "-p", str(a.prompt), "-n", str(a.gen), "-ngl", "99",
                          "-r", str(a.reps), "-o", "json"], a.timeout)
    if err:
        return dict(error=err, seconds=secs)
    out = dict(seconds=secs)
    for rec in doc:
        if rec.get("n_prompt") == a.prompt and rec.get("n_gen") == 0:
            out["prefill_tokens_per_s"] = rec["avg_ts"]
        elif rec.get("n_gen") == a.gen and rec.get("n_prompt") == 0:
            out["decode_tokens_per_s"] = rec["avg_ts"]
    return out


def hoist_bench(binary, path, a):
    doc, err, secs = run([binary, "run", path, "--benchmark", "--prompt-tokens", str(a.prompt),
                          "--max-tokens", str(a.gen), "--json"], a.timeout)
    if err:
        refused = "supported" in err or "unsupported" in err
        return dict(error=err.strip().splitlines()[-1][:300], refused=refused, seconds=secs)
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_fraction_of_bound",
            "decode_bound_tokens_per_s", "prefill_fraction_of_cublas")
    return dict(seconds=secs, **{k: doc.get(k) for k in keys})


def ratio(a, b):
    return a / b if a and b else None


def fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files_json")
    ap.add_argument("--hoist", required=True)
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--timeout", type=int, default=300)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    files = json.load(open(a.files_json))["files"]
    rows, failed = [], False
    for f in files:
        peer = llama_bench(a.llama_bench, f["path"], a)
        ours = hoist_bench(a.hoist, f["path"], a)
        failed |= "error" in peer or ("error" in ours and not ours.get("refused"))
        row = dict(type=f["type"], path=f["path"], bytes=f["bytes"], tensor_types=f["tensor_types"],
                   llama_cpp=peer, hoist=ours,
                   decode_ratio=ratio(ours.get("decode_tokens_per_s"), peer.get("decode_tokens_per_s")),
                   prefill_ratio=ratio(ours.get("prefill_tokens_per_s"), peer.get("prefill_tokens_per_s")))
        rows.append(row)
        log(f"{f['type']}: decode hoist {fmt(ours.get('decode_tokens_per_s'))} / llama.cpp "
            f"{fmt(peer.get('decode_tokens_per_s'))}, prefill {fmt(ours.get('prefill_tokens_per_s'), 0)} / "
            f"{fmt(peer.get('prefill_tokens_per_s'), 0)}" + (f"; hoist: {ours['error']}" if "error" in ours else ""))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "gguf_peer.json"), "w") as fh:
        json.dump(dict(prompt=a.prompt, gen=a.gen, reps=a.reps, rows=rows), fh, indent=1)
    lines = [f"| file (tensor types) | decode hoist / llama.cpp | prefill {a.prompt} hoist / llama.cpp | "
             "hoist decode, fraction of its bound |", "| --- | --- | --- | --- |"]
    for r in rows:
        h, p = r["hoist"], r["llama_cpp"]
        types = ", ".join(f"{k} {v}" for k, v in sorted(r["tensor_types"].items()))
        if "error" in h:
            dec = f"{'refused' if h.get('refused') else 'failed'} / {fmt(p.get('decode_tokens_per_s'))}"
            pre = f"— / {fmt(p.get('prefill_tokens_per_s'), 0)}"
            frac = h["error"].replace("|", "/")
        else:
            dec = (f"{fmt(h.get('decode_tokens_per_s'))} / {fmt(p.get('decode_tokens_per_s'))} = "
                   f"{fmt(r['decode_ratio'], 2)}x")
            pre = (f"{fmt(h.get('prefill_tokens_per_s'), 0)} / {fmt(p.get('prefill_tokens_per_s'), 0)} = "
                   f"{fmt(r['prefill_ratio'], 2)}x")
            frac = fmt(h.get("decode_fraction_of_bound"), 2)
        lines.append(f"| {r['type']} ({types}) | {dec} | {pre} | {frac} |")
    table = "\n".join(lines) + "\n"
    open(os.path.join(a.out, "gguf_peer.md"), "w").write(table)
    print(table)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
