#!/usr/bin/env bash
# Suite `runtime-smoke`: first check of the GPU runtime: the kernel tests (rt_unit gpu::) and the
# model tests against the committed transformers fixtures (rt_gpu: with CUDA graphs, without, and
# with cuBLAS decode), then on a Llama-2-7B-shaped synthetic checkpoint (random bytes: speed only)
# a per-kernel profile (HOIST_PROFILE), gpu_speed with and without graphs and cuBLAS decode,
# `hoist run --benchmark`, and ncu over two decode steps summed by ncu_summary.py.
# Carries: .carry/bin/{rt_unit,rt_gpu,gpu_speed,hoist,make_checkpoint}. Results: $OUT/<step>.log.
# Exit status 1 when a step failed (the steps keep going).
source "$(dirname "$0")/../lib/env.sh"
need_bin rt_unit rt_gpu gpu_speed hoist make_checkpoint || true
B=$HOIST_BIN
# The test binaries find their fixtures at the path they were built in (HOIST_BUILD_ROOT, the
# workspace root of the build machine): link it to this checkout when it is absent.
BUILD_ROOT=${HOIST_BUILD_ROOT:-/work/main}
[ -e "$BUILD_ROOT" ] || { mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$PWD" "$BUILD_ROOT"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
FAILED=()
# check NAME COMMAND...: runs the command, its output to $OUT/NAME.log (tail shown), and records a
# non-zero exit.
check() {
  local name=$1; shift
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1 || FAILED+=("$name")
  tail -"${TAIL:-25}" "$OUT/$name.log"
}
check rt_unit timeout 120 "$B/rt_unit" --test-threads=1 gpu::
check rt_gpu timeout 120 "$B/rt_gpu" --test-threads=1 --nocapture
TAIL=3 check rt_gpu_no_graphs env HOIST_NO_GRAPHS=1 timeout 120 "$B/rt_gpu" --test-threads=1
TAIL=3 check rt_gpu_cublas_decode env HOIST_DECODE_GEMV=cublas timeout 120 "$B/rt_gpu" --test-threads=1
L=$(bash bench/gpu/lib/synthetic_llama7b.sh) || exit 1
echo "== speed (synthetic llama-7b, $L)"
TAIL=0 check profile env HOIST_PROFILE=1 timeout 200 "$B/gpu_speed" "$L" 512 32
grep -A30 HOIST_PROFILE "$OUT/profile.log"
for s in speed "speed_cublas HOIST_DECODE_GEMV=cublas" "speed_cublas_no_graphs HOIST_DECODE_GEMV=cublas HOIST_NO_GRAPHS=1" \
         "speed_no_graphs HOIST_NO_GRAPHS=1"; do
  # shellcheck disable=SC2086  # s is a name and VAR=VALUE words
  set -- $s
  name=$1; shift
  TAIL=0 check "$name" env "$@" timeout 200 "$B/gpu_speed" "$L" 512 128
  grep -E "fraction|tokens_per_s|gbps" "$OUT/$name.log"
done
TAIL=20 check hoist_run_benchmark timeout 200 "$B/hoist" run "$L" --benchmark
# Two decode steps (the first 1500 of our kernels are the prefills); ncu serializes kernels,
# flushes caches and locks clocks, so its times are for comparing kernels, not for totals.
TAIL=0 check ncu timeout 300 ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum -k regex:"gemv|attention|rms_norm|rope|embed" -s 1500 -c 454 "$B/gpu_speed" "$L" 16 8
python3 bench/gpu/suites/ncu_summary.py "$OUT/ncu.log" || FAILED+=(ncu_summary)
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
echo "all steps passed"
