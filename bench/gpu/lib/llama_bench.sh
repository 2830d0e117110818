#!/usr/bin/env bash
# Unpacks (once) the carried llama.cpp `llama-bench` and prints its path: from
# .carry/llama-bench-sm90a.tar.xz (copied there from shared/vendor/llama.cpp/) into LLAMA_BENCH_DIR
# (default /var/tmp/llama-bench), reused while it is there. llama-bench links the toolkit's
# libcudart/libcublas (lib/env.sh puts CUDA_LIB on the library path).
# Usage: LB=$(bash bench/gpu/lib/llama_bench.sh) || exit 1
# shellcheck source=env.sh
source "$(dirname "$0")/env.sh"
LB_DIR=${LLAMA_BENCH_DIR:-/var/tmp/llama-bench}
if [ ! -x "$LB_DIR/llama-bench" ]; then
  [ -f .carry/llama-bench-sm90a.tar.xz ] || { echo "llama_bench.sh: carry .carry/llama-bench-sm90a.tar.xz" >&2; exit 1; }
  mkdir -p "$LB_DIR" && tar -xJf .carry/llama-bench-sm90a.tar.xz -C "$LB_DIR" >&2 || exit 1
  found=$(find "$LB_DIR" -name llama-bench -type f | head -1)
  [ -n "$found" ] && [ "$found" != "$LB_DIR/llama-bench" ] && ln -sf "$found" "$LB_DIR/llama-bench"
fi
echo "$LB_DIR/llama-bench"
