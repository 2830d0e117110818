#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum` log by kernel and
grid: calls, time, DRAM read bandwidth and share of the kernel time. Usage: ncu_summary.py LOG"""
import collections
import csv
import sys

TIME = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
BYTES = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9}

lines = [l for l in open(sys.argv[1]) if l.startswith('"')]
rows = list(csv.reader(lines))
h = rows[0]
col = {name: h.index(name) for name in ("ID", "Kernel Name", "Grid Size", "Metric Name", "Metric Unit", "Metric Value")}
per = collections.defaultdict(dict)
for r in rows[1:]:
    key = (r[col["Kernel Name"]].split("(")[0], r[col["Grid Size"]])
    value = float(r[col["Metric Value"]].replace(",", ""))
    per[(r[col["ID"]], key)][r[col["Metric Name"]]] = (value, r[col["Metric Unit"]])
agg = collections.defaultdict(lambda: [0, 0.0, 0.0])
for (_, key), m in per.items():
    t, tu = m["gpu__time_duration.sum"]
    b, bu = m.get("dram__bytes_read.sum", (0.0, "byte"))
    a = agg[key]
    a[0] += 1
    a[1] += t * TIME[tu]
    a[2] += b * BYTES[bu]
total = sum(a[1] for a in agg.values())
print(f"{'kernel':<18}{'grid':>16}{'calls':>6}{'us/call':>9}{'GB/s':>7}{'%':>6}")
for (name, grid), (n, t, b) in sorted(agg.items(), key=lambda x: -x[1][1]):
    print(f"{name:<18}{grid:>16}{n:>6}{t / n:>9.2f}{b / t / 1e3:>7.0f}{100 * t / total:>6.1f}")
print(f"kernel time {total:.0f} us over {sum(a[0] for a in agg.values())} kernels")
