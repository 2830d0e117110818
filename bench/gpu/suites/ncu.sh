#!/usr/bin/env bash
# Suite `ncu`: per-kernel times of decode under Nsight Compute, for comparing kernels (ncu
# serializes kernels, flushes caches and locks clocks, so its times are not totals):
#  - two decode steps of the synthetic Llama-2-7B shape in bf16 and in Q4_0, every gemv,
#    attention, rms_norm, rope and embed launch, summed by kernel and grid (ncu_summary.py);
#  - Q4_0 decode attention at ~600 positions: its time and DRAM bytes, then ncu's full report
#    with caches and clocks left as they run.
#   bench/gpu/run.sh ncu   NCU_MODELS: "bf16 q4" (default) or one of them, or "gguf" with
#                          NCU_GGUF=path: any GGUF file of the 7B shape (e.g. gguf-peer's
#                          llama-quantize files: a Q4_K_M's block-quantized GEMVs); Q4_GGUF=path
#                          reuses (or makes) the Q4_0 file.
# Carries: .carry/bin/{gpu_speed,make_checkpoint}, .whl/gguf-*.whl (q4). Results: $OUT/ncu_<model>.csv
# and .txt (the summary), $OUT/attention.txt, $OUT/attention_full.txt.
source "$(dirname "$0")/../lib/env.sh"
need_bin gpu_speed make_checkpoint || true
B=$HOIST_BIN/gpu_speed
FAILED=()
METRICS=gpu__time_duration.sum,dram__bytes_read.sum
for m in ${NCU_MODELS:-bf16 q4}; do
  case $m in
    # Skip the prefills (the first 1500 of these kernels); count two decode steps' launches.
    bf16) model=$(bash bench/gpu/lib/synthetic_llama7b.sh) || { FAILED+=(bf16); continue; }; count=454 ;;
    q4) model=$(bash bench/gpu/lib/synthetic_q4.sh ${Q4_GGUF:-}) || { FAILED+=(q4); continue; }; count=518 ;;
    # Untiled GGUF types launch as bf16 does (gemv_q/gemv_swiglu_q in place of gemv/gemv_swiglu).
    gguf) model=${NCU_GGUF:?NCU_MODELS=gguf needs NCU_GGUF=path}; [ -s "$model" ] || { FAILED+=(gguf); continue; }; count=454 ;;
    *) echo "unknown NCU_MODELS entry '$m' (bf16, q4, gguf)"; FAILED+=("$m"); continue ;;
  esac
  echo "== $m: two decode steps ($model)"
  timeout 300 ncu --csv --metrics $METRICS -k regex:"gemv|attention|rms_norm|rope|embed" -s 1500 -c $count \
    "$B" "$model" 16 8 > "$OUT/ncu_$m.csv" 2>&1 || FAILED+=("ncu_$m")
  python3 bench/gpu/suites/ncu_summary.py "$OUT/ncu_$m.csv" | tee "$OUT/ncu_$m.txt" || FAILED+=("summary_$m")
  if [ "$m" = q4 ]; then
    echo "== q4: decode attention at ~600 positions"
    timeout 300 ncu --metrics $METRICS -k regex:attention_split -s 700 -c 1 "$B" "$model" 600 40 \
      > "$OUT/attention.txt" 2>&1 || FAILED+=(attention)
    grep -E "attention_split|gpu__time_duration|dram__bytes_read" "$OUT/attention.txt"
    timeout 300 ncu --set full --cache-control none --clock-control none -k regex:"^attention_split" -s 96 -c 1 \
      "$B" "$model" 600 8 > "$OUT/attention_full.txt" 2>&1 || FAILED+=(attention_full)
    grep -E "Duration|DRAM Throughput|Achieved Occupancy|Eligible Warps|SM Active Cycles|Elapsed Cycles" "$OUT/attention_full.txt"
  fi
done
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; exit 1; fi
echo "all steps passed"
