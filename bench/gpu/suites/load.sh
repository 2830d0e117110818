#!/usr/bin/env bash
# Suite `load`: hoist's GPU load against the peer loaders (safetensors, fastsafetensors,
# runai-model-streamer, instanttensor) and the machine's own limits (limits.py), cold and warm,
# on synthetic checkpoints; every hoist run verifies every tensor byte for byte (bench.py).
#
#   bench/gpu/run.sh load [CHECKPOINT...]   CHECKPOINT: llama-7b, qwen3-0.6b, mixtral-mini (all
#                                           three by default). BENCH_ARGS: more arguments to
#                                           bench.py, e.g. "--cufile --python --cold-reps llama-7b=2".
# Carries: .carry/bin/{gpu_load,make_checkpoint}; .whl/ with the peer wheels (and the hoist wheel
# for --python). Results: $OUT/bench.json (rewritten as it goes), $OUT/table.md.
set -euo pipefail
source "$(dirname "$0")/../lib/env.sh"
need_bin gpu_load make_checkpoint || true
mkdir -p "$HOIST_DATA"
use_wheels '*' || true
ckpts=("$@")
[ ${#ckpts[@]} -eq 0 ] && ckpts=(llama-7b qwen3-0.6b mixtral-mini)
args=()
for c in "${ckpts[@]}"; do
  p=$("$HOIST_BIN/make_checkpoint" "$c" "$HOIST_DATA/$c")
  args+=(--ckpt "$c=$p")
done
sync
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
python3 bench/gpu/suites/bench.py --bin "$HOIST_BIN" --out "$OUT" "${args[@]}" ${BENCH_ARGS:-}
