#!/usr/bin/env bash
# Makes (or reuses) a Llama-2-7B-shaped Q4_0 GGUF (default $HOIST_DATA/l7-q4_0.gguf) from a random
# transformers model, with bench_speed.py's writer, and prints its path. For speed measurements
# only. Needs torch on the GPU machine and the gguf wheel in .whl/ (or an installed gguf).
source "$(dirname "$0")/env.sh"
Q=${1:-$HOIST_DATA/l7-q4_0.gguf}
if [ ! -s "$Q" ]; then
  mkdir -p "$(dirname "$Q")"
  use_wheels 'gguf-*' || true
  # Written aside and renamed once complete: a failed run leaves no file to reuse.
  python3 - "$Q.tmp" >&2 <<'PY' && mv "$Q.tmp" "$Q" || exit 1
import sys
sys.path.insert(0, "bench/gpu/runtime")
import bench_speed as b
model = b.build_model("7b", "cuda")
b.write_q4_0_gguf(model, sys.argv[1])
PY
fi
echo "$Q"
