"""Times ``hoist.load_file(PATH, device=...)`` in this process and prints one JSON line per run,
in the format of bench/gpu/suites/peer.py (loader, seconds, bytes, tensors, gbps, not_on_cuda0), so that
bench/gpu/suites/bench.py can run it as one more loader. Seconds run from just before the call to
after ``torch.cuda.synchronize()``, the CUDA context already up (torch's and hoist's: the same
primary context).

    python3 python/tests/gpu/bench_hoist.py PATH                      # one load, as peer.py
    python3 python/tests/gpu/bench_hoist.py PATH --mode cold --repeat 3
    python3 python/tests/gpu/bench_hoist.py PATH --mode warm --repeat 3 \\
        --cli '.carry/bin/gpu_load {path}'      # also the CLI, alternating, same cache state

``--mode cold`` drops the page cache before each run (``/proc/sys/vm/drop_caches`` as root,
else ``posix_fadvise(DONTNEED)`` on each file); ``--mode warm`` reads the files first. With
``--cli CMD`` (``{path}`` is replaced; the command prints JSON with ``gbps`` on its last
``{``-line) each round runs the CLI in a fresh process then hoist.load_file here, and a final
line gives both medians and their ratio: the issue asks for python >= 0.9 x CLI.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import statistics
import subprocess
import sys
import time


def files_of(path):
    import hoist

    return sorted({i.file for i in hoist.tensor_infos(path)})


def drop_cache(files):
    subprocess.run(["sync"], check=False)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    except OSError:
        pass
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files):
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def run_cli(cmd, path):
    p = subprocess.run(shlex.split(cmd.replace("{path}", path)), capture_output=True, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        return {"loader": "cli", "error": (p.stderr.strip().splitlines() or ["rc %d" % p.returncode])[-1][:300]}
    r = json.loads(lines[-1])
    return {"loader": "cli", "gbps": r.get("gbps"), "seconds": r.get("seconds")}


def load_once(path, device, backend):
    import torch

    import hoist

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    tensors = hoist.load_file(path, device=device, backend=backend)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    dev = torch.device(device)
    off = sum(1 for t in tensors.values() if t.device != dev)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    out = {"loader": "hoist-python", "seconds": seconds, "bytes": nbytes, "tensors": len(tensors),
           "gbps": nbytes / seconds / 1e9, "not_on_cuda0": off}
    del tensors
    gc.collect()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--mode", choices=["asis", "cold", "warm"], default="asis")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--cli", help="CLI command to compare with, {path} replaced")
    a = ap.parse_args()

    import torch

    import hoist

    torch.zeros(1, device=a.device)
    torch.cuda.synchronize()
    if not hoist.cuda_available(a.device):  # also opens hoist's context outside the timing
        print(json.dumps({"loader": "hoist-python", "error": "hoist cannot use " + a.device}))
        return 1
    files = files_of(a.path)
    py, cli = [], []
    for _ in range(a.repeat):
        if a.cli:
            (drop_cache if a.mode == "cold" else warm if a.mode == "warm" else (lambda f: None))(files)
            r = run_cli(a.cli, a.path)
            r["mode"] = a.mode
            print(json.dumps(r), flush=True)
            if "gbps" in r and r["gbps"]:
                cli.append(r["gbps"])
        (drop_cache if a.mode == "cold" else warm if a.mode == "warm" else (lambda f: None))(files)
        r = load_once(a.path, a.device, a.backend)
        r["mode"] = a.mode
        print(json.dumps(r), flush=True)
        py.append(r["gbps"])
    if cli:
        mp, mc = statistics.median(py), statistics.median(cli)
        print(json.dumps({"summary": a.mode, "python_gbps": mp, "cli_gbps": mc, "ratio": mp / mc,
                          "within_10pct": mp >= 0.9 * mc}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
