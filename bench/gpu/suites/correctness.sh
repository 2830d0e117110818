#!/usr/bin/env bash
# Suite `correctness`: the GPU fixture matrix (odd sizes, unaligned offsets, uneven shards, GGUF
# alignments; every road: ring x every backend x regions/per-tensor/packed, mapped, cuFile)
# through the carried gpu_selftest binary. Skips with one line where there is no GPU.
# Byte-exactness of the large checkpoints is checked by the `load` suite (every hoist run there
# verifies every tensor).
#   bench/gpu/run.sh correctness [DIR]   DIR: fixture directory (default /var/tmp/hoist-fixtures)
# Carries: .carry/bin/gpu_selftest. Results: $OUT/selftest.log (one line per case, JSON summary last).
source "$(dirname "$0")/../lib/env.sh"
need_bin gpu_selftest || true
DIR=${1:-/var/tmp/hoist-fixtures}
rm -rf "$DIR"
"$HOIST_BIN/gpu_selftest" "$DIR" 0 > "$OUT/selftest.log" 2>&1
rc=$?
grep -v '^ok' "$OUT/selftest.log"   # the failures, skips and the summary
exit $rc
