#!/usr/bin/env bash
# GEMV shape sweep (HOIST_GEMV_WARPS x HOIST_GEMV_UNROLL) on a synthetic Llama-2-7B-shaped
# checkpoint (random bytes: speed only): decode tok/s and fraction of the copy bound for each.
# Carries: .carry/bin/{gpu_speed,make_checkpoint}. Run from the repository root on the GPU machine.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib HOIST_KERNEL_CACHE=/var/tmp/hoist-kernels
D=$(bash bench/gpu/synthetic_llama7b.sh) || exit 1
for w in 4 8 2; do for u in 4 8 2 16; do
  r=$(HOIST_GEMV_WARPS=$w HOIST_GEMV_UNROLL=$u timeout 60 .carry/bin/gpu_speed $D 512 128 2>&1 | python3 -c 'import json,sys; d=json.load(sys.stdin)["speed"]; print(f"{d["decode_tokens_per_s"]:.1f} tok/s {d["decode_fraction_of_bound"]:.3f}")' 2>&1 | tail -1)
  echo "warps $w unroll $u: $r"
done; done
