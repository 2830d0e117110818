#!/usr/bin/env bash
# First check of the GPU runtime on the GPU machine: the kernel tests and model tests (against
# the committed transformers fixtures), then the speed report on a Llama-2-7B-shaped synthetic
# checkpoint (random bytes: speed only), a per-kernel profile, ncu on the decode kernels, and the
# cuBLAS-decode comparison. Carries: .carry/bin/{rt_unit,rt_gpu,gpu_speed,hoist,
# make_checkpoint}.
cd "$(dirname "$0")/../.."
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib HOIST_KERNEL_CACHE=/var/tmp/hoist-kernels
export PATH=$PATH:/usr/local/cuda/bin
OUT=${OUT:-/tmp/hoist-out}
mkdir -p "$OUT"
# The test binaries find their fixtures at the path they were built in.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.mem --format=csv | tee $OUT/gpu.txt
echo "== kernel tests"; timeout 120 .carry/bin/rt_unit --test-threads=1 gpu:: 2>&1 | tee $OUT/rt_unit.log | tail -25
echo "== model tests"; timeout 120 .carry/bin/rt_gpu --test-threads=1 --nocapture 2>&1 | tee $OUT/rt_gpu.log | tail -25
echo "== model tests without CUDA graphs"; HOIST_NO_GRAPHS=1 timeout 120 .carry/bin/rt_gpu --test-threads=1 2>&1 | tail -3
echo "== model tests, decode products through cuBLAS"; HOIST_DECODE_GEMV=cublas timeout 120 .carry/bin/rt_gpu --test-threads=1 2>&1 | tail -3
L=$(bash bench/gpu/synthetic_llama7b.sh) || exit 1
echo "== speed (synthetic llama-7b, $L)"
echo "== profile (each launch synchronized)"
HOIST_PROFILE=1 timeout 200 .carry/bin/gpu_speed $L 512 32 2>&1 | tee $OUT/profile.txt | grep -A30 HOIST_PROFILE
timeout 200 .carry/bin/gpu_speed $L 512 128 > $OUT/speed.json 2>&1; grep -E "fraction|tokens_per_s|gbps" $OUT/speed.json
echo "== decode products through cuBLAS"
HOIST_DECODE_GEMV=cublas timeout 200 .carry/bin/gpu_speed $L 512 128 > $OUT/speed_cublas.json 2>&1; grep -E "fraction|tokens_per_s" $OUT/speed_cublas.json
HOIST_DECODE_GEMV=cublas HOIST_NO_GRAPHS=1 timeout 200 .carry/bin/gpu_speed $L 512 128 2>&1 | grep -E "decode_tokens_per_s"
HOIST_NO_GRAPHS=1 timeout 200 .carry/bin/gpu_speed $L 512 128 2>&1 | grep -E "decode_tokens_per_s"
echo "== hoist run --benchmark"
timeout 200 .carry/bin/hoist run $L --benchmark 2>&1 | tail -20
echo "== ncu: decode kernels"
# Two decode steps (the first 1500 of our kernels are the prefills); ncu serializes kernels,
# flushes caches and locks clocks, so its times are for comparing kernels, not for totals.
timeout 300 ncu --csv --metrics gpu__time_duration.sum,dram__bytes_read.sum -k regex:"gemv|attention|rms_norm|rope|embed" -s 1500 -c 454 .carry/bin/gpu_speed $L 16 8 > $OUT/ncu.csv 2> $OUT/ncu.err
python3 bench/gpu/ncu_summary.py $OUT/ncu.csv
