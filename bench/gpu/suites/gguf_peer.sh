#!/usr/bin/env bash
# Suite `gguf-peer`: hoist against llama.cpp on the GGUF files people download. Makes a random F16
# Llama model of GGUF_SHAPE (default 7b: Llama-2-7B's shape) and quantizes it with llama.cpp's own
# llama-quantize into GGUF_TYPES (bench/gpu/runtime/make_quantized.py; real files carry mixed
# types: Q4_0 keeps output.weight in Q6_K, Q4_K_M mixes Q4_K and Q6_K), then runs `llama-bench -p
# 512 -n 128 -ngl 99 -r 3` and `hoist run --benchmark` on each file, in the same call
# (bench/gpu/runtime/gguf_peer.py): tokens/s and hoist/llama.cpp ratios.
# GGUF_SHAPE=qwen3moe: a Qwen3-30B-A3B-shaped mixture-of-experts model instead (128 experts, 8 a
# token; GGUF_LAYERS of its 48 layers, default 16: bench/gpu/runtime/random_moe_gguf.py).
# Usage: bench/gpu/run.sh gguf-peer        GGUF_SHAPE=7b|small|qwen3moe, GGUF_TYPES="F16,Q8_0,Q4_0:pure,...",
#        GGUF_DIR (default $HOIST_DATA/gguf-$GGUF_SHAPE; files there are reused), PEER_ARGS (more
#        gguf_peer.py options, e.g. "--reps 5").
# Carries: .carry/bin/{hoist,llama-quantize}, .carry/llama-bench-sm90a.tar.xz (from
# shared/vendor/llama.cpp/; extracted here), .whl/gguf-*.whl.
# Results: $OUT/make_quantized.log, $OUT/gguf_peer.{json,md,log}. The 7b files take ~40 GB of disk
# and about 5 minutes to make on 16 cores; the comparison about 4 minutes: one device call each
# when the machine stays warm between them (the files are reused), else pass GGUF_TYPES in parts.
source "$(dirname "$0")/../lib/env.sh"
SHAPE=${GGUF_SHAPE:-7b}
DIR=${GGUF_DIR:-$HOIST_DATA/gguf-$SHAPE}
need_bin hoist llama-quantize || exit 1
use_wheels 'gguf-*' || echo "WARNING: no .whl/gguf-*.whl; relying on an installed gguf"
# llama-bench, unpacked once from .carry/llama-bench-sm90a.tar.xz (LLAMA_BENCH_DIR).
LB=$(bash bench/gpu/lib/llama_bench.sh) || exit 1
case "$SHAPE" in
  qwen3moe) MAKE=(bench/gpu/runtime/random_moe_gguf.py --layers "${GGUF_LAYERS:-16}") ;;
  *) MAKE=(bench/gpu/runtime/make_quantized.py --shape "$SHAPE") ;;
esac
python3 "${MAKE[@]}" "$DIR" --quantize "$HOIST_BIN/llama-quantize" \
  ${GGUF_TYPES:+--types "$GGUF_TYPES"} 2>&1 | tee "$OUT/make_quantized.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
# shellcheck disable=SC2086  # PEER_ARGS is a list of words
python3 bench/gpu/runtime/gguf_peer.py "$DIR/files.json" --hoist "$HOIST_BIN/hoist" \
  --llama-bench "$LB" --out "$OUT" $PEER_ARGS 2>&1 | tee "$OUT/gguf_peer.log"
exit "${PIPESTATUS[0]}"
