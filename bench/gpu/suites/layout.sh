#!/usr/bin/env bash
# Suite `layout`: warm GB/s of the CLI's GPU load by `--gpu-layout` (packed, regions, each twice,
# alternating) on the Llama-2-7B shape (13.48 GB), against the page cache -> GPU limit measured in
# the same run (limits.py warm2gpu). The packed layout's bytes against the host's are the
# `python` suite's step 3; its logits against safetensors' its step 2.
# Carries: .carry/bin/{hoist,make_checkpoint}. Results: $OUT/limit_warm2gpu.json, $OUT/layouts.txt.
set -o pipefail
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist make_checkpoint || true
mkdir -p "$HOIST_DATA"
L=$("$HOIST_BIN/make_checkpoint" llama-7b "$HOIST_DATA/llama-7b") || exit 1
cat "$L"/*.safetensors > /dev/null
echo "== warm limit, page cache -> GPU"
python3 bench/gpu/suites/limits.py warm2gpu "$L"/*.safetensors | tee "$OUT/limit_warm2gpu.json" || exit 1
echo "== CLI by layout, warm"
for layout in packed regions packed regions; do
  "$HOIST_BIN/hoist" load "$L" --device cuda:0 --gpu-layout $layout --json |
    python3 -c "import json,sys; d=json.load(sys.stdin); print('$layout', round(d['gbps'],2), d['gpu_path'], d['methods'])" || exit 1
done | tee "$OUT/layouts.txt"
