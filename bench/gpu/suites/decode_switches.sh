#!/usr/bin/env bash
# Suite `decode-switches`: what each decode design switch is worth: decode tok/s and fraction of
# the copy bound on a synthetic Llama-2-7B-shaped bf16 checkpoint (random bytes: speed only) with
# each switch in turn off, then any settings in SWEEP (VAR=VALUE, one run each). With Q4=1 also
# on a Q4_0 GGUF of the same shape (bench/gpu/lib/synthetic_q4.sh: bench_speed.py's writer, from
# a random transformers model; needs torch and the gguf wheel; Q4_GGUF=path reuses a file), with
# Q4_SWEEP's settings (default: the tiled GEMVs' warps per block and tiles per load).
# BASE=path runs another gpu_speed build (say, the last commit's) first, for comparison.
# Carries: .carry/bin/{gpu_speed,make_checkpoint}, .whl/gguf-*.whl (Q4=1).
# Results: $OUT/decode_switches.txt.
source "$(dirname "$0")/../lib/env.sh"
exec > >(tee "$OUT/decode_switches.txt") 2>&1
D=$(bash bench/gpu/lib/synthetic_llama7b.sh) || exit 1
FAILED=()
speed() {  # speed LABEL BINARY MODEL [VAR=VALUE...]
  local label=$1 bin=$2 model=$3; shift 3
  env "$@" timeout 120 "$bin" "$model" 512 128 2>&1 | python3 -c '
import json, sys
text = sys.stdin.read()
try:
    d = json.loads(text[text.index("{"):])["speed"]
    rate, frac = d["decode_tokens_per_s"], d["decode_fraction_of_bound"]
    print("%7.1f tok/s  %.3f of bound  prefill %.3f of cuBLAS" % (rate, frac, d["prefill_fraction_of_cublas"]))
except Exception:
    print("failed:", text[-400:])
    sys.exit(1)
' | sed "s|^|$label: |"
  [ "${PIPESTATUS[1]}" = 0 ] || FAILED+=("$label")
}
run_set() {  # run_set MODEL SWITCHES: each VAR=VALUE turns one design choice off, or tunes it
  local bin=$HOIST_BIN/gpu_speed
  [ -n "${BASE:-}" ] && speed "base build ($BASE)" "$BASE" "$1" A=0
  speed "as built" $bin "$1" A=1
  for s in $2; do speed "$s" $bin "$1" "$s"; done
  speed "as built, again" $bin "$1" A=2
}
echo "== bf16 ($D)"
run_set "$D" "HOIST_NO_FUSED_ROPE=1 HOIST_NO_PDL=1 HOIST_NO_GRAPHS=1 ${SWEEP:-}"
if [ "${Q4:-0}" = 1 ]; then
  Q=$(bash bench/gpu/lib/synthetic_q4.sh ${Q4_GGUF:-}) || exit 1
  echo "== Q4_0 ($Q)"
  # Q4_0 runs as tiles on tensor cores (q4_tiles.cu); HOIST_NO_Q4_TILES=1 keeps the file's
  # layout and the CUDA-core GEMVs of every block type (kernels/quant.cuh). The sweep: the tiled
  # GEMVs' warps per block and tiles per load.
  run_set "$Q" "HOIST_NO_Q4_TILES=1 HOIST_NO_FUSED_ROPE=1 HOIST_NO_PDL=1 HOIST_NO_GRAPHS=1 ${Q4_SWEEP-HOIST_Q4T_WARPS=4 HOIST_Q4T_WARPS=16 HOIST_Q4T_BATCH=2 HOIST_Q4T_BATCH=8}"
fi
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED: ${FAILED[*]}"
  exit 1
fi
