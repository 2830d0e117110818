#!/usr/bin/env python3
"""`hoist serve` under several clients: aggregate decode throughput by concurrency, and the time
to first token of the request that loads the model against `hoist run`'s.

For each `--parallel` value P it starts `hoist serve --parallel P` on one model, then:

1. **loading TTFT**: one streaming `/api/generate` request that loads the model, timed from the
   request to its first non-empty token line (the server's `load_duration` beside it);
2. **waves**: for each concurrency C of `--streams` (each run `--waves` times), C clients at
   once, each a streaming `/api/generate` of `--tokens` tokens (greedy, its own prompt), timed
   from the first request to the last byte. Aggregate tok/s = Σ eval_count / wave seconds;
   per-stream tok/s = eval_count / eval_duration (the server's).

Then `hoist run MODEL --prompt ... --max-tokens 8 --json` (`--no-run` skips it) gives the CLI's
time to first token from process start, the figure the server's loading TTFT is held against
(issue 19: <= the CLI's + 10%; aggregate tok/s at 8 streams >= 4x one stream). One untimed
`hoist run` comes first, so that every load meets a warm page cache and compiled kernels.

Standard library only (the GPU machine has no registry). Writes `serve_load.json` and
`serve_load.md` under `--out`; exits 1 when any request failed. Works on `--device cpu` with a
tiny model (the repository's CPU smoke test of this script).

    python3 bench/gpu/suites/serve_load.py HOIST MODEL [--device cuda:0] [--parallel 1,8]
        [--streams 1,8] [--tokens 128] [--waves 2] [--loads 3] [--hoist-args '...'] [--out DIR]
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time
import urllib.request


def parse_list(s):
    return [int(x) for x in s.split(",") if x]


def start_server(hoist, model, device, parallel, queue, context, extra=()):
    cmd = [hoist, "serve", "--device", device, "--port", "0", "--parallel", str(parallel),
           "--queue", str(queue), "--keep-alive", "-1", "--model", f"m={model}", *extra]
    if context:
        cmd += ["--context", str(context)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline().strip()
    prefix = "hoist serve: listening on "
    if not line.startswith(prefix):
        proc.kill()
        rest = proc.stderr.read()
        raise SystemExit(f"serve_load: hoist serve did not start: {line}\n{rest}")
    # Keep draining stderr so that the server never blocks on a full pipe.
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, line[len(prefix):]


def generate(base, prompt, tokens, seed):
    """One streaming /api/generate; returns its timings and the server's counts."""
    body = json.dumps({"model": "m", "prompt": prompt, "stream": True,
                       "options": {"num_predict": tokens, "temperature": 0, "seed": seed}})
    req = urllib.request.Request(f"{base}/api/generate", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    last = None
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            for raw in r:
                line = json.loads(raw)
                if first is None and line.get("response"):
                    first = time.perf_counter()
                last = line
    except Exception as e:  # noqa: BLE001 - reported, the run goes on
        return {"error": str(e)}
    end = time.perf_counter()
    if not last or not last.get("done"):
        return {"error": f"stream ended without done: {last}"}
    return {
        "start": t0, "end": end,
        "ttft_s": (first or end) - t0,
        "eval_count": last.get("eval_count", 0),
        "eval_s": last.get("eval_duration", 0) / 1e9,
        "load_s": last.get("load_duration", 0) / 1e9,
        "prompt_eval_s": last.get("prompt_eval_duration", 0) / 1e9,
    }


def wave(base, concurrency, tokens, tag):
    results = [None] * concurrency

    def client(i):
        prompt = f"Stream {tag}-{i}: tell a long story about the number {i * 7919 % 1000}."
        results[i] = generate(base, prompt, tokens, seed=i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return {"concurrency": concurrency, "errors": errors}
    seconds = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["eval_count"] for r in results)
    per_stream = [r["eval_count"] / r["eval_s"] for r in results if r["eval_s"] > 0]
    ttfts = sorted(r["ttft_s"] for r in results)
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "tokens": total,
        "aggregate_tok_s": total / seconds,
        "per_stream_tok_s_mean": sum(per_stream) / max(len(per_stream), 1),
        "ttft_s_median": ttfts[len(ttfts) // 2],
        "ttft_s_max": ttfts[-1],
    }


def openai_check(base):
    """The official `openai` client against the server: a streaming completion and a streaming
    chat (the chat needs the model's template; its failure is reported, not fatal). Returns
    what each gave, or why the client is missing."""
    try:
        import openai  # noqa: PLC0415 - optional: carried as a wheel to the GPU machine
    except ImportError as e:
        return {"error": f"openai not installed: {e}"}
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
    out = {"version": openai.__version__}
    try:
        pieces, finish = [], None
        for chunk in client.completions.create(model="m", prompt="Once upon a time",
                                               max_tokens=16, temperature=0, stream=True):
            for c in chunk.choices:
                pieces.append(c.text or "")
                finish = c.finish_reason or finish
        out["completion"] = {"chunks": len(pieces), "text": "".join(pieces), "finish": finish}
    except Exception as e:  # noqa: BLE001 - reported
        out["completion"] = {"error": str(e)}
    try:
        pieces, finish = [], None
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16,
            temperature=0, stream=True, stream_options={"include_usage": True})
        usage = None
        for chunk in stream:
            usage = chunk.usage or usage
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
                finish = c.finish_reason or finish
        out["chat"] = {"chunks": len(pieces), "text": "".join(pieces), "finish": finish,
                       "completion_tokens": usage.completion_tokens if usage else None}
    except Exception as e:  # noqa: BLE001 - reported
        out["chat"] = {"error": str(e)}
    return out


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def cli_ttft(hoist, model, device, context, extra=()):
    cmd = [hoist, "run", str(model), "--device", device, "--prompt", "Hello there",
           "--max-tokens", "8", "--temperature", "0", "--json", *extra]
    if context:
        cmd += ["--context", str(context)]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:]}
    report = json.loads(out.stdout.strip().splitlines()[-1])
    timings = report.get("timings", {})
    return {"first_token_seconds": timings.get("first_token_seconds"),
            "load_seconds": timings.get("load_seconds"), "wall_s": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("hoist")
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--parallel", type=parse_list, default=[1, 8])
    ap.add_argument("--streams", type=parse_list, default=[1, 8])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--hoist-args", default="",
                    help="more options for hoist serve and hoist run, e.g. '--gpu-memory 8GiB'")
    ap.add_argument("--loads", type=int, default=3,
                    help="loading requests (fresh servers) and hoist runs, medians reported")
    ap.add_argument("--no-run", action="store_true", help="skip hoist run's TTFT")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/hoist-out/serve"))
    a = ap.parse_args()
    a.extra = shlex.split(a.hoist_args)
    os.makedirs(a.out, exist_ok=True)
    report = {"model": a.model, "device": a.device, "tokens": a.tokens,
              "hoist_args": a.hoist_args, "servers": []}
    failed = False
    if not a.no_run:
        # Untimed: every load below (servers' and the timed `hoist run`) then meets the same
        # page cache and compiled-kernel cache, whatever ran before the suite.
        report["hoist_run_warmup"] = cli_ttft(a.hoist, a.model, a.device, a.context, a.extra)
    for i, p in enumerate(a.parallel):
        queue = max(a.streams) + 1
        # The request that loads the model, on --loads fresh servers (loads vary run to run).
        loads = []
        for _ in range(a.loads - 1):
            proc, addr = start_server(a.hoist, a.model, a.device, p, queue, a.context, a.extra)
            base = addr if addr.startswith("http://") else f"http://{addr}"
            try:
                loads.append(generate(base, "Hello there", 8, seed=0))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        proc, addr = start_server(a.hoist, a.model, a.device, p, queue, a.context, a.extra)
        base = addr if addr.startswith("http://") else f"http://{addr}"
        try:
            loads.append(generate(base, "Hello there", 8, seed=0))
            ok = [x for x in loads if "error" not in x]
            cold = loads[-1] if len(ok) < len(loads) else {
                "ttft_s": median([x["ttft_s"] for x in ok]),
                "load_s": median([x["load_s"] for x in ok]),
                "ttft_s_each": [x["ttft_s"] for x in ok]}
            server = {"parallel": p, "cold": cold, "waves": []}
            failed |= "error" in cold
            if i == len(a.parallel) - 1:
                report["openai"] = openai_check(base)
            for c in a.streams:
                for w in range(a.waves):
                    r = wave(base, c, a.tokens, f"p{p}w{w}")
                    r["wave"] = w
                    failed |= "errors" in r
                    server["waves"].append(r)
                    print(json.dumps({"parallel": p, **r}), flush=True)
            report["servers"].append(server)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not a.no_run:
        runs = [cli_ttft(a.hoist, a.model, a.device, a.context, a.extra) for _ in range(a.loads)]
        ok = [r for r in runs if "error" not in r]
        report["hoist_run"] = runs[-1] if len(ok) < len(runs) else {
            key: median([r[key] for r in ok]) for key in ("first_token_seconds", "load_seconds",
                                                          "wall_s")}
        report["hoist_run"]["first_token_seconds_each"] = [
            r.get("first_token_seconds") for r in runs]
        failed |= "error" in report["hoist_run"]
    with open(os.path.join(a.out, "serve_load.json"), "w") as f:
        json.dump(report, f, indent=1)
    md = summary(report)
    with open(os.path.join(a.out, "serve_load.md"), "w") as f:
        f.write(md)
    print(md)
    return 1 if failed else 0


def best(waves, c):
    ok = [w for w in waves if w["concurrency"] == c and "errors" not in w]
    return max(ok, key=lambda w: w["aggregate_tok_s"]) if ok else None


def summary(report):
    args = f" {report['hoist_args']}" if report.get("hoist_args") else ""
    lines = [f"`hoist serve{args}` on {report['model']} ({report['device']}), {report['tokens']} "
             "tokens a stream, best wave of each concurrency", "",
             "| --parallel | streams | aggregate tok/s | per-stream tok/s | vs 1 stream | "
             "TTFT median / max s |", "| --- | --- | --- | --- | --- | --- |"]
    for s in report["servers"]:
        one = best(s["waves"], 1)
        for c in sorted({w["concurrency"] for w in s["waves"]}):
            w = best(s["waves"], c)
            if w is None:
                lines.append(f"| {s['parallel']} | {c} | failed | | | |")
                continue
            ratio = f"{w['aggregate_tok_s'] / one['aggregate_tok_s']:.2f}x" if one else ""
            lines.append(f"| {s['parallel']} | {c} | {w['aggregate_tok_s']:.1f} | "
                         f"{w['per_stream_tok_s_mean']:.1f} | {ratio} | "
                         f"{w['ttft_s_median']:.3f} / {w['ttft_s_max']:.3f} |")
    lines.append("")
    for s in report["servers"]:
        c = s["cold"]
        if "error" in c:
            lines.append(f"- --parallel {s['parallel']}: the loading request failed: {c['error']}")
        else:
            lines.append(f"- --parallel {s['parallel']}: the request that loads the model: first "
                         f"token after {c['ttft_s']:.3f} s (load {c['load_s']:.3f} s; median of "
                         f"{len(c.get('ttft_s_each', [0]))})")
    run = report.get("hoist_run")
    if run:
        if "error" in run:
            lines.append(f"- hoist run failed: {run['error']}")
        else:
            lines.append(f"- hoist run: first token {run['first_token_seconds']:.3f} s after the "
                         f"process started (load {run['load_seconds']:.3f} s, wall "
                         f"{run['wall_s']:.3f} s; median of "
                         f"{len(run.get('first_token_seconds_each', [0]))})")
            loading = [s["cold"]["ttft_s"] for s in report["servers"] if "error" not in s["cold"]]
            if loading and run["first_token_seconds"]:
                worst = max(loading) / run["first_token_seconds"]
                lines.append(f"- loading request vs hoist run: {worst:.2f}x at worst "
                             "(issue 19: <= 1.10x)")
    oa = report.get("openai")
    if oa:
        lines.append(f"- openai client: {json.dumps(oa)}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
