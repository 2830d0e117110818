#!/usr/bin/env bash
# Suite `q4-diag`: where Q4_0 decode time goes: decode speed of a synthetic Llama-2-7B-shaped
# Q4_0 GGUF, the per-kernel profile (HOIST_PROFILE), then ncu's full report on the four GEMVs of
# one decode layer (q/k/v, o, gate/up, down) with caches and clocks left as they run
# (occupancy, registers, stall reasons, achieved DRAM bandwidth).
#   bench/gpu/run.sh q4-diag   Q4_GGUF=path uses (or makes) that file (default
#                              $HOIST_DATA/l7-q4_0.gguf); RUNS lists NAME[,VAR=VALUE...] runs to
#                              compare (default "as_built"); GPU_SPEED=path runs another build;
#                              NCU_SKIP: GEMV launches before the profiled ones (default 400).
# Carries: .carry/bin/gpu_speed, .whl/gguf-*.whl (to make the GGUF). Results: $OUT/speed.log,
# $OUT/profile.log, $OUT/ncu_full.txt.
source "$(dirname "$0")/../lib/env.sh"
Q=$(bash bench/gpu/lib/synthetic_q4.sh ${Q4_GGUF:-}) || exit 1
BIN=${GPU_SPEED:-$HOIST_BIN/gpu_speed}
FAILED=()
for s in ${RUNS:-"as_built"}; do  # RUNS: NAME[,VAR=VALUE...] items
  IFS=, read -r name vars <<< "$s"
  echo "== speed $name ($vars)"
  echo "== speed $name ($vars)" >> "$OUT/speed.log"
  env ${vars//,/ } timeout 120 $BIN "$Q" 512 128 > "$OUT/speed_last.log" 2>&1 || FAILED+=("speed_$name")
  cat "$OUT/speed_last.log" >> "$OUT/speed.log"
  grep -E "decode_tokens_per_s|decode_fraction" "$OUT/speed_last.log"
done
echo "== profile"
HOIST_PROFILE=1 timeout 200 $BIN "$Q" 512 32 > "$OUT/profile.log" 2>&1 || FAILED+=(profile)
grep -A30 HOIST_PROFILE "$OUT/profile.log"
echo "== ncu (one decode layer's GEMVs)"
# The prefills run no `gemv` kernel but the output row; 400 GEMV launches in, decode is running.
timeout 300 ncu --set full --cache-control none --clock-control none -k regex:"^gemv" -s ${NCU_SKIP:-400} -c 4 \
  $BIN "$Q" 16 8 > "$OUT/ncu_full.txt" 2>&1 || FAILED+=(ncu)
grep -E "gemv|Duration|DRAM Throughput|Memory Throughput|Registers Per|Achieved Occupancy|Theoretical Occupancy|Block Limit|Issue Slots Busy|Warp Cycles Per Issued|Executed Ipc A|Grid Size|Block Size|Dynamic Shared" "$OUT/ncu_full.txt"
grep -iE "stall|bottleneck" "$OUT/ncu_full.txt" | head -40
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
