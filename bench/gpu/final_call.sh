#!/usr/bin/env bash
# The recorded run: correctness matrix, one cold sanity load, then the side-by-side benchmark
# (Llama-2-7B cold in two passes, Qwen3-0.6B, Mixtral-mini).
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
timeout 100 bash bench/gpu/correctness.sh 2>&1 | tee $OUT/selftest.log | grep -v '^ok'
D=/var/tmp/hoist-bench; mkdir -p $D
Q=$(.carry/bin/make_checkpoint qwen3-0.6b $D/qwen3-0.6b)
sync; echo 3 > /proc/sys/vm/drop_caches; timeout 30 .carry/bin/gpu_load $Q | cut -c1-200
HOIST_DATA=$D OUT=$OUT BENCH_ARGS="--cufile --python --timeout 90 --cold-reps llama-7b=2 --deadline 470" timeout 530 bash bench/gpu/run.sh 2>&1
