#!/usr/bin/env bash
# Side-by-side GPU benchmark, for the GPU machine (root, no Rust there): uses binaries built
# elsewhere and carried in $HOIST_BIN (default .carry/bin: gpu_load, make_checkpoint,
# gpu_selftest) and peer wheels in .whl/ (see docs/BENCHMARKS.md, section GPU).
#
#   bench/gpu/run.sh [CHECKPOINT...]    CHECKPOINT: llama-7b, qwen3-0.6b, mixtral-mini (all three
#                                        by default). Env: HOIST_DATA (checkpoint folder, on the
#                                        disk under test), OUT (results), BENCH_ARGS (more
#                                        arguments to bench.py, e.g. --cufile).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HOIST_BIN:-.carry/bin}
DATA=${HOIST_DATA:-/var/tmp/hoist-bench}
OUT=${OUT:-/tmp/hoist-bench-out}
mkdir -p "$DATA" "$OUT"
export PYTHONUNBUFFERED=1
# cuFile (libcufile.so) lives in the toolkit, off the default library path.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
ckpts=("$@")
[ ${#ckpts[@]} -eq 0 ] && ckpts=(llama-7b qwen3-0.6b mixtral-mini)
args=()
for c in "${ckpts[@]}"; do
  p=$("$BIN/make_checkpoint" "$c" "$DATA/$c")
  args+=(--ckpt "$c=$p")
done
sync
python3 bench/gpu/bench.py --bin "$BIN" --out "$OUT" "${args[@]}" ${BENCH_ARGS:-}
