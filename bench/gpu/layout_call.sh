#!/usr/bin/env bash
# The recorded run after the packed layout became the default: the correctness matrix (packed
# cases included), the Python GPU checks (transformers logits bit-identical needs aligned
# tensors), and warm/cold GB/s of the CLI by layout and of Python vs CLI on the Llama-2-7B shape,
# with the warm page-cache -> GPU limit of limits.py in the same run.
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
echo "== correctness matrix"; timeout 100 bash bench/gpu/correctness.sh 2>&1 | tee $OUT/selftest.log | grep -v '^ok' | tail -5
echo "== check_transformers"; timeout 150 python3 python/tests/gpu/check_transformers.py 2>&1 | tee $OUT/check_transformers.log | grep -E "^(ok|FAIL)|passed"
echo "== check_gpu"; timeout 150 python3 python/tests/gpu/check_gpu.py 2>&1 | tee $OUT/check_gpu.log | tail -1
wait $maker
L=$(cat $D/llama.path)
echo "== warm limit and CLI by layout, llama-7b"
cat $L/*.safetensors > /dev/null
python3 bench/gpu/limits.py warm2gpu $L/*.safetensors | tee $OUT/limit_warm2gpu.json
for layout in packed regions packed regions; do
  .carry/bin/hoist load $L --device cuda:0 --gpu-layout $layout --json | python3 -c "import json,sys; d=json.load(sys.stdin); print('$layout', round(d['gbps'],2), d['gpu_path'], d['methods'])"
done | tee $OUT/layouts.txt
.carry/bin/hoist load $L --device cuda:0 --checksum --json > $OUT/l_gpu.json
.carry/bin/hoist load $L --checksum --json > $OUT/l_host.json
python3 -c "import json; g,h=(json.load(open(p)) for p in ['$OUT/l_gpu.json','$OUT/l_host.json']); print('llama-7b cli gpu(packed) vs host checksums:', 'identical' if g['checksums']==h['checksums'] and len(g['checksums'])==291 else 'DIFFERENT')"
echo "== python vs CLI (packed), llama-7b"
timeout 120 python3 python/tests/gpu/bench_hoist.py "$L" --mode warm --repeat 3 --cli '.carry/bin/hoist load {path} --device cuda:0 --json' 2>&1 | tee $OUT/py_warm.log | tail -1
timeout 160 python3 python/tests/gpu/bench_hoist.py "$L" --mode cold --repeat 2 --cli '.carry/bin/hoist load {path} --device cuda:0 --json' 2>&1 | tee $OUT/py_cold.log | tail -1
