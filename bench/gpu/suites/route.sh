#!/usr/bin/env bash
# Suite `route`: which read method `auto` should take for cached chunks into host memory, by
# reader threads (the 2026-12-02 decision in docs/BENCHMARKS.md): per synthetic checkpoint,
# `hoist bench --repeat 9 --json` (every backend, warm, median and range), then the paired
# comparison `host_route DIR ROUNDS THREADS` (crates/io/examples/host_route.rs: one warm host load
# per backend per round, order rotating; per-round pread/mmap ratios) at each thread count.
#   bench/gpu/run.sh route   ROUTE_CKPTS (default "small qwen3-0.6b"), ROUTE_THREADS (default
#                            "2 4 8 16"), ROUTE_ROUNDS (default 30).
# Carries: .carry/bin/{hoist,host_route}. No GPU needed: it runs on any machine (the dev box's
# figures came from `cargo run --release -p hoist-io --example host_route`). Results:
# $OUT/bench_<ckpt>.json, $OUT/host_route_<ckpt>_<threads>.txt.
set -o pipefail
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist host_route || true
FAILED=()
for c in ${ROUTE_CKPTS:-small qwen3-0.6b}; do
  D=$HOIST_DATA/route-$c   # new, or one hoist made: `hoist bench --dir` refuses anything else
  echo "== hoist bench, $c ($D)"
  "$HOIST_BIN/hoist" bench --synthetic "$c" --dir "$D" --repeat 9 --json > "$OUT/bench_$c.json" || FAILED+=("bench_$c")
  python3 - "$OUT/bench_$c.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
for r in d["results"]:
    rates = sorted(d["bytes"] / s / 1e9 for s in r["seconds"])
    print(f"   {r['loader']:<36} {r['gbps_median']:6.2f} GB/s ({rates[0]:.2f}-{rates[-1]:.2f})  {r['methods']}")
PY
  for t in ${ROUTE_THREADS:-2 4 8 16}; do
    echo "== host_route $c, $t threads"
    "$HOIST_BIN/host_route" "$D" "${ROUTE_ROUNDS:-30}" "$t" 2>&1 | tee "$OUT/host_route_${c}_$t.txt" || FAILED+=("host_route_${c}_$t")
  done
done
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; exit 1; fi
echo "all steps passed"
