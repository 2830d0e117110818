"""Side-by-side GPU load benchmark (the `load` suite: bench/gpu/run.sh load, on the GPU machine).

For each checkpoint, cold (page cache dropped before every loader) and warm (files read into
the page cache first): hoist (the carried `gpu_load` binary, fresh process each run), the peer
loaders (peer.py beside this file, fresh process each), and the raw limits (limits.py beside it).
Every loader ends with every tensor on cuda:0 and synchronized, and times itself from just
before its load call to after synchronization, the CUDA context already up. Prints a markdown
table per checkpoint and writes everything to OUT/bench.json as it goes.
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = ["safetensors", "fastsafetensors", "runai", "instanttensor"]


def log(*a):
    print(*a, flush=True)


def drop_caches():
    subprocess.run(["sync"], check=False)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def warm(files):
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(64 << 20):
                pass


def run_json(cmd, timeout, env=None):
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, **(env or {})))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 and not lines:
        return {"error": (p.stderr.strip().splitlines() or ["rc %d" % p.returncode])[-1][:300], "rc": p.returncode}
    try:
        r = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": "no JSON: " + (p.stderr.strip()[-300:])}
    r["process_seconds"] = time.time() - t
    if p.returncode != 0:
        r["rc"] = p.returncode
    return r


def shards(path):
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".safetensors"))
    return [path]


def fmt(r):
    if not r:
        return "-"
    if "error" in r:
        return "error"
    return "%.2f" % r["gbps"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--hoist-args", default="")
    ap.add_argument("--cufile", action="store_true", help="also run hoist --path cufile")
    ap.add_argument("--python", action="store_true",
                    help="also run hoist.load_file from the Python package (python/tests/gpu/bench_hoist.py)")
    ap.add_argument("--timeout", type=int, default=240)
    ap.add_argument("--deadline", type=int, default=480, help="seconds after which remaining runs are skipped")
    ap.add_argument("--cold-reps", action="append", default=[], help="NAME=N: cold passes for that checkpoint "
                    "(each later pass in reverse order, so no loader always runs first after the host's own "
                    "cache; the best pass per loader is reported, all are kept in bench.json)")
    a = ap.parse_args()
    started = time.time()
    peers = [p for p in a.peers.split(",") if p]
    gpu_load = os.path.join(a.bin, "gpu_load")
    hoist_extra = a.hoist_args.split()
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "checkpoints": {}}
    h2d = run_json([sys.executable, os.path.join(HERE, "limits.py"), "h2d"], a.timeout)
    results["h2d"] = h2d
    log("pinned H2D copy:", fmt(h2d), "GB/s")
    tables = []
    cold_reps = dict((k, int(v)) for k, v in (r.split("=", 1) for r in a.cold_reps))
    for spec in a.ckpt:
        name, path = spec.split("=", 1)
        files = shards(path)
        res = {"path": path, "bytes": sum(os.path.getsize(f) for f in files), "cold": {}, "warm": {},
               "cold_reps": cold_reps.get(name, 1)}
        results["checkpoints"][name] = res
        hoists = {
            "hoist": [gpu_load, path, "--verify"] + hoist_extra,
            "hoist (pread, no O_DIRECT)": [gpu_load, path, "--verify", "--backend", "pread"] + hoist_extra,
        }
        if a.python:
            bench_hoist = os.path.join(HERE, "..", "..", "..", "python", "tests", "gpu", "bench_hoist.py")
            hoists["hoist (python)"] = [sys.executable, bench_hoist, path]
        if a.cufile:
            # cuFile reads whole chunks at their file offsets: only the regions layout takes that.
            hoists["hoist (cuFile compat)"] = [gpu_load, path, "--verify", "--path", "cufile", "--dest", "regions"] + hoist_extra
        for mode in ["cold", "warm"]:
            runs = list(hoists.items()) + [(p, [sys.executable, os.path.join(HERE, "peer.py"), p, path]) for p in peers]
            if mode == "warm" and "instanttensor" in peers:
                runs.append(("instanttensor-buffered", [sys.executable, os.path.join(HERE, "peer.py"), "instanttensor-buffered", path]))
            lim = os.path.join(HERE, "limits.py")
            if mode == "cold":
                runs.append(("limit: O_DIRECT 16x16MiB", [sys.executable, lim, "odirect"] + files))
            else:
                runs.append(("limit: page cache -> GPU", [sys.executable, lim, "warm2gpu"] + files))
                runs.append(("limit: page cache -> host", [sys.executable, lim, "warm2host"] + files))
            reps = cold_reps.get(name, 1) if mode == "cold" else 1
            passes = []
            for rep in range(reps):
                passes += runs if rep % 2 == 0 else list(reversed(runs))
            res[mode + "_all"] = {}
            warmed = False
            for label, cmd in passes:
                if time.time() - started > a.deadline:
                    log("deadline of %d s reached: skipping %s %s" % (a.deadline, mode, label))
                    continue
                if mode == "cold":
                    drop_caches()
                elif not warmed:
                    # Nothing here evicts (125 GiB of RAM): one pass warms the whole phase.
                    warm(files)
                    warmed = True
                # Without nvidia-fs, cuFile serves reads only in its compatibility mode.
                env = {"CUFILE_FORCE_COMPAT_MODE": "true"} if "cuFile" in label else None
                r = run_json(cmd, a.timeout, env)
                res[mode + "_all"].setdefault(label, []).append(r)
                prev = res[mode].get(label)
                if prev is None or r.get("gbps", -1) > prev.get("gbps", -1):
                    res[mode][label] = r
                extra = ""
                if label.startswith("hoist") and "error" not in r:
                    extra = " methods=%s rss+%.0fMiB verify=%s" % (r.get("methods"), r.get("rss_growth_mib", -1), r.get("verify", {}).get("exact"))
                log("%-14s %-5s %-30s %s GB/s%s%s" % (name, mode, label, fmt(r), extra, (" " + r["error"]) if "error" in r else ""))
                with open(os.path.join(a.out, "bench.json"), "w") as f:
                    json.dump(results, f, indent=1)
        tables.append(table(name, res, peers, h2d))
    text = "\n".join(tables)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(text)
    log(text)


def table(name, res, peers, h2d):
    cold, warm_ = res["cold"], res["warm"]
    # Ratios are to the best peer in its default configuration (as shipped and documented);
    # instanttensor's opt-in BUFFERED backend is listed and compared separately.
    peer_labels = list(peers)

    def best(mode):
        vals = [(res[mode][p]["gbps"], p) for p in peer_labels if p in res[mode] and "gbps" in res[mode][p]]
        return max(vals) if vals else (None, None)

    bc, bw = best("cold"), best("warm")
    out = ["### %s (%.2f GB)" % (name, res["bytes"] / 1e9), "",
           "| loader | cold GB/s | warm GB/s | cold vs best peer (default config) | warm vs best peer (default config) |", "| --- | --- | --- | --- | --- |"]
    labels = [l for l in list(cold) + [l for l in warm_ if l not in cold] if not l.startswith("limit")]
    for l in labels:
        c, w = cold.get(l), warm_.get(l)
        rc = "%.2fx" % (c["gbps"] / bc[0]) if c and "gbps" in c and bc[0] else "-"
        rw = "%.2fx" % (w["gbps"] / bw[0]) if w and "gbps" in w and bw[0] else "-"
        out.append("| %s | %s | %s | %s | %s |" % (l, fmt(c), fmt(w), rc, rw))
    if res.get("cold_reps", 1) > 1:
        out.append("")
        out.append("Cold: best of %d passes per loader (every other pass in reverse order); every pass is in bench.json." % res["cold_reps"])
    out.append("")
    lim_c = cold.get("limit: O_DIRECT 16x16MiB", {})
    lim_w = warm_.get("limit: page cache -> GPU", {})
    lim_h = warm_.get("limit: page cache -> host", {})
    out.append("Limits, same run: O_DIRECT read (16 threads x 16 MiB) %s GB/s; page cache -> GPU through pinned buffers (16 threads) %s GB/s; page cache -> host %s GB/s; pinned H2D copy %s GB/s." % (fmt(lim_c), fmt(lim_w), fmt(lim_h), fmt(h2d)))
    hc, hw = cold.get("hoist", {}), warm_.get("hoist", {})
    if "gbps" in hc and "gbps" in lim_c:
        out.append("hoist cold = %.0f%% of the O_DIRECT limit; best peer cold: %s (%.2f GB/s)." % (100 * hc["gbps"] / lim_c["gbps"], bc[1], bc[0] or 0))
    if "gbps" in hw and "gbps" in lim_w:
        out.append("hoist warm = %.0f%% of the page cache -> GPU limit; %.1fx the best peer warm, %s (%.2f GB/s)." % (100 * hw["gbps"] / lim_w["gbps"], hw["gbps"] / (bw[0] or 1e-9), bw[1], bw[0] or 0))
    ib = warm_.get("instanttensor-buffered", {})
    if "gbps" in hw and "gbps" in ib:
        out.append("instanttensor with its opt-in BUFFERED backend (not its default): warm %.2f GB/s; hoist warm = %.2fx that." % (ib["gbps"], hw["gbps"] / ib["gbps"]))
    for mode, h in (("cold", hc), ("warm", hw)):
        if "gbps" in h:
            out.append("hoist %s: %s; peak host RSS growth %.0f MiB; GPU memory used %.2f GB; byte-exact: %s." % (
                mode, h.get("methods"), h.get("rss_growth_mib", -1), h["report"]["gpu_used_bytes"] / 1e9, h.get("verify", {}).get("exact")))
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
