#!/usr/bin/env bash
# The recorded run for the Python package and the CLI's GPU path, on the GPU machine:
#  1. python/tests/gpu/check_gpu.py: hoist.load_file(..., device="cuda:0") == safetensors.torch
#  2. python/tests/gpu/check_transformers.py: same logits through hoist and through safetensors
#  3. `hoist load --device cuda:0 --checksum` == `hoist load --checksum` (host) on Qwen3-0.6B shape
#  4. hoist.load_file vs the hoist CLI, GB/s, warm and cold, Llama-2-7B shape (13.5 GB)
#  5. `hoist bench` to host memory and to cuda:0 on the Qwen3-0.6B shape (16 cores there)
# Carries: .carry/bin/{hoist,make_checkpoint}, .whl/hoist-*.whl.
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib
OUT=${OUT:-/tmp/hoist-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/hs .whl/hoist-*.whl || exit 1
export PYTHONPATH=/tmp/hs
D=/var/tmp/hoist-bench
mkdir -p $D
.carry/bin/make_checkpoint llama-7b $D/llama-7b > $D/llama.path &
maker=$!
echo "== 1. check_gpu"; timeout 150 python3 python/tests/gpu/check_gpu.py 2>&1 | tee $OUT/check_gpu.log | tail -12
echo "== 2. check_transformers"; timeout 150 python3 python/tests/gpu/check_transformers.py 2>&1 | tee $OUT/check_transformers.log | tail -12
Q=$(.carry/bin/make_checkpoint qwen3-0.6b $D/qwen3-0.6b)
echo "== 3. CLI GPU bytes vs host bytes"
.carry/bin/hoist load "$Q" --device cuda:0 --checksum --json > $OUT/q_gpu.json
.carry/bin/hoist load "$Q" --checksum --json > $OUT/q_host.json
python3 - "$OUT/q_gpu.json" "$OUT/q_host.json" <<'PY'
import json, sys
g, h = (json.load(open(p)) for p in sys.argv[1:])
same = g["checksums"] == h["checksums"] and len(g["checksums"]) == g["tensors"] > 0
print(f"cli gpu vs host: {len(g['checksums'])} tensors, {'identical' if same else 'DIFFERENT'}; gpu {g['gbps']:.2f} GB/s path {g.get('gpu_path')}")
print(("1 passed, 0 failed" if same else "0 passed, 1 failed"))
PY
wait $maker
L=$(cat $D/llama.path)
echo "== 4. python vs CLI, llama-7b ($L)"
timeout 120 python3 python/tests/gpu/bench_hoist.py "$L" --mode warm --repeat 3 --cli '.carry/bin/hoist load {path} --device cuda:0 --json' 2>&1 | tee $OUT/py_warm.log | tail -2
timeout 160 python3 python/tests/gpu/bench_hoist.py "$L" --mode cold --repeat 2 --cli '.carry/bin/hoist load {path} --device cuda:0 --json' 2>&1 | tee $OUT/py_cold.log | tail -2
echo "== 5. hoist bench, qwen3-0.6b"
timeout 90 .carry/bin/hoist bench "$Q" --repeat 3 2>&1 | tee $OUT/host_bench_qwen.txt
timeout 90 .carry/bin/hoist bench "$Q" --device cuda:0 --repeat 3 2>&1 | tee $OUT/gpu_bench_qwen.txt
