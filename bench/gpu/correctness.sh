#!/usr/bin/env bash
# GPU correctness on the GPU machine: the fixture matrix (odd sizes, unaligned offsets, uneven
# shards, GGUF alignments; every road) through the carried gpu_selftest binary. Skips with one
# line where there is no GPU. Byte-exactness of the large checkpoints is checked by run.sh
# (every hoist run there verifies every tensor).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${HOIST_BIN:-.carry/bin}
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
DIR=${1:-/var/tmp/hoist-fixtures}
rm -rf "$DIR"
"$BIN/gpu_selftest" "$DIR" 0
