#!/usr/bin/env bash
# Makes (or reuses) a Llama-2-7B-shaped Q4_0 GGUF (default /var/tmp/l7-q4_0.gguf) from a random
# transformers model, with bench_speed.py's writer, and prints its path. For speed measurements
# only. Needs torch on the GPU machine and the gguf wheel in .whl/; run from the repository root.
Q=${1:-/var/tmp/l7-q4_0.gguf}
if [ ! -s "$Q" ]; then
  if ls .whl/gguf-*.whl >/dev/null 2>&1; then
    rm -rf /tmp/sq4-py && python3 -m pip install -q --no-index --no-deps --target /tmp/sq4-py .whl/gguf-*.whl >&2
    export PYTHONPATH=/tmp/sq4-py${PYTHONPATH:+:$PYTHONPATH}
  fi
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
