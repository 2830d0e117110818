#!/usr/bin/env bash
# Suite `python`: the Python package and the CLI's GPU path, on the GPU machine:
#  1. python/tests/gpu/check_gpu.py: hoist.load_file(..., device="cuda:0") == safetensors.torch
#  2. python/tests/gpu/check_transformers.py: same logits through hoist and through safetensors
#  3. `hoist load --device cuda:0 --checksum` == `hoist load --checksum` (host) on the Qwen3-0.6B
#     and Llama-2-7B shapes
#  4. hoist.load_file vs the hoist CLI, GB/s, warm and cold, Llama-2-7B shape (13.5 GB)
#  5. `hoist bench` to host memory and to cuda:0 on the Qwen3-0.6B shape
# Carries: .carry/bin/{hoist,make_checkpoint}, .whl/hoist-*.whl. Results: $OUT/*.log, *.json,
# *.txt. Exit status 1 when a step failed (the steps keep going).
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist make_checkpoint || true
use_wheels 'hoist-*' || exit 1
H=$HOIST_BIN/hoist
mkdir -p "$HOIST_DATA"
"$HOIST_BIN/make_checkpoint" llama-7b "$HOIST_DATA/llama-7b" > "$OUT/llama.path" &
maker=$!
FAILED=()
# step NAME LIMIT_SECONDS COMMAND...: output to $OUT/NAME.log, its tail shown; a failure recorded.
step() {
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1 || FAILED+=("$name")
  tail -"${TAIL:-12}" "$OUT/$name.log"
}
step check_gpu 150 python3 python/tests/gpu/check_gpu.py
step check_transformers 150 python3 python/tests/gpu/check_transformers.py
Q=$("$HOIST_BIN/make_checkpoint" qwen3-0.6b "$HOIST_DATA/qwen3-0.6b") || FAILED+=(make_qwen)
wait $maker || FAILED+=(make_llama)
L=$(cat "$OUT/llama.path")
# same_bytes NAME CHECKPOINT: the CLI's GPU load and its host load give the same checksums.
same_bytes() {
  "$H" load "$2" --device cuda:0 --checksum --json > "$OUT/$1_gpu.json" &&
  "$H" load "$2" --checksum --json > "$OUT/$1_host.json" &&
  python3 - "$OUT/$1_gpu.json" "$OUT/$1_host.json" <<'PY'
import json, sys
g, h = (json.load(open(p)) for p in sys.argv[1:])
same = g["checksums"] == h["checksums"] and len(g["checksums"]) == g["tensors"] > 0
print(f"cli gpu vs host: {len(g['checksums'])} tensors, {'identical' if same else 'DIFFERENT'}; gpu {g['gbps']:.2f} GB/s path {g.get('gpu_path')}")
sys.exit(0 if same else 1)
PY
}
export -f same_bytes   # run under timeout, through bash -c
export H
TAIL=1 step same_bytes_qwen 120 bash -c 'same_bytes "$@"' _ qwen "$Q"
TAIL=1 step same_bytes_llama 300 bash -c 'same_bytes "$@"' _ llama "$L"
CLI="$H load {path} --device cuda:0 --json"
TAIL=2 step py_warm 120 python3 python/tests/gpu/bench_hoist.py "$L" --mode warm --repeat 3 --cli "$CLI"
TAIL=2 step py_cold 160 python3 python/tests/gpu/bench_hoist.py "$L" --mode cold --repeat 2 --cli "$CLI"
TAIL=14 step host_bench_qwen 90 "$H" bench "$Q" --repeat 3
TAIL=14 step gpu_bench_qwen 90 "$H" bench "$Q" --device cuda:0 --repeat 3
if [ ${#FAILED[@]} -gt 0 ]; then echo "FAILED: ${FAILED[*]}"; exit 1; fi
echo "all steps passed"
