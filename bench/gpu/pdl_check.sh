#!/usr/bin/env bash
# Decode speed on a synthetic Llama-2-7B-shaped checkpoint (random bytes: speed only) with and
# without programmatic dependent launch (HOIST_NO_PDL=1), twice with it. Carries:
# .carry/bin/{gpu_speed,make_checkpoint}. Run from the repository root on the GPU machine.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib HOIST_KERNEL_CACHE=/var/tmp/hoist-kernels
D=$(bash bench/gpu/synthetic_llama7b.sh) || exit 1
for e in "A=1" "HOIST_NO_PDL=1" "A=2"; do echo "== $e"; env $e timeout 120 .carry/bin/gpu_speed $D 512 128 2>&1 | grep -E "decode_tokens_per_s|decode_fraction|prefill_fraction"; done
