"""Raw limits of the machine, measured independently of hoist, printed as one JSON line.

  limits.py odirect FILE...    parallel O_DIRECT reads (16 threads x 16 MiB) into host memory
  limits.py warm2host FILE...  buffered reads from the page cache (16 threads x 16 MiB)
  limits.py warm2gpu FILE...   buffered reads into pinned buffers, each copied to the GPU on the
                               reading thread's own stream (16 threads x 16 MiB, double-buffered)
  limits.py h2d                pinned host -> device copy of 1 GiB, best of 10

The caller drops or warms the page cache first. Threads: HOIST_LIMIT_THREADS (16).
"""
import json
import mmap
import os
import sys
import threading
import time

THREADS = int(os.environ.get("HOIST_LIMIT_THREADS", "16"))
BLOCK = 16 << 20


def jobs_of(files):
    jobs = []
    for f in files:
        size = os.path.getsize(f)
        for off in range(0, size, BLOCK):
            jobs.append((f, off, min(BLOCK, size - off)))
    return jobs


def run_threads(jobs, worker):
    lock = threading.Lock()
    it = iter(jobs)

    def next_job():
        with lock:
            return next(it, None)

    threads = [threading.Thread(target=worker, args=(next_job, i)) for i in range(THREADS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def read_limit(files, direct):
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    fds = {f: os.open(f, flags) for f in files}
    jobs = jobs_of(files)
    total = [0] * THREADS

    def worker(next_job, i):
        buf = mmap.mmap(-1, BLOCK)  # page aligned, as O_DIRECT needs
        mv = memoryview(buf)
        while (j := next_job()) is not None:
            f, off, n = j
            aligned = (n + 4095) // 4096 * 4096
            total[i] += os.preadv(fds[f], [mv[:aligned]], off)

    secs = run_threads(jobs, worker)
    nbytes = sum(os.path.getsize(f) for f in files)
    return {"seconds": secs, "bytes": nbytes, "gbps": nbytes / secs / 1e9, "threads": THREADS}


def warm2gpu(files):
    import torch
    nbytes = sum(os.path.getsize(f) for f in files)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
    base = {}
    acc = 0
    for f in files:
        base[f] = acc
        acc += os.path.getsize(f)
    fds = {f: os.open(f, os.O_RDONLY) for f in files}
    jobs = jobs_of(files)
    torch.cuda.synchronize()

    # Pinned buffers and streams exist before the clock starts.
    per_thread = [(torch.cuda.Stream(), [torch.empty(BLOCK, dtype=torch.uint8).pin_memory() for _ in range(2)])
                  for _ in range(THREADS)]

    def worker(next_job, i):
        stream, bufs = per_thread[i]
        views = [memoryview(b.numpy()) for b in bufs]
        events = [None, None]
        k = 0
        while (j := next_job()) is not None:
            f, off, n = j
            if events[k] is not None:
                events[k].synchronize()
            got = os.preadv(fds[f], [views[k][:n]], off)
            with torch.cuda.stream(stream):
                d = base[f] + off
                dst[d:d + got].copy_(bufs[k][:got], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(stream)
                events[k] = ev
            k ^= 1
        stream.synchronize()

    secs = run_threads(jobs, worker)
    torch.cuda.synchronize()
    return {"seconds": secs, "bytes": nbytes, "gbps": nbytes / secs / 1e9, "threads": THREADS}


def h2d():
    import torch
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8).pin_memory()
    src.fill_(7)
    dst = torch.empty(n, dtype=torch.uint8, device="cuda:0")
    best = 1e9
    for _ in range(10):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "bytes": n, "gbps": n / best / 1e9}


def main():
    what, files = sys.argv[1], sys.argv[2:]
    if what == "odirect":
        r = read_limit(files, True)
    elif what == "warm2host":
        r = read_limit(files, False)
    elif what == "warm2gpu":
        r = warm2gpu(files)
    elif what == "h2d":
        r = h2d()
    else:
        sys.exit(__doc__)
    r["limit"] = what
    print(json.dumps(r))


if __name__ == "__main__":
    main()
