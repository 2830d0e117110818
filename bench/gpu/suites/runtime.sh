#!/usr/bin/env bash
# Suites `logits` and `speed`: the GPU runtime's model checks (see bench/gpu/runtime/README.md):
#  logits: make_models.py (fresh random small models: HF f32/bf16/f16, GGUF Q8_0/Q4_0, and when
#          $HOIST_BIN/llama-quantize is carried, GGUF files llama-quantize makes: K-quants and
#          the other types of RT_QTYPES) -> check_logits.py (hoist's gpu_logits vs transformers;
#          "N passed, N failed")
#  speed:  bench_speed.py (Llama-2-7B shape: hoist run --benchmark, bf16 and Q4_0, vs transformers
#          generate; time to first token)
# Usage: bench/gpu/run.sh logits | bench/gpu/run.sh speed   (~2-3 and ~5-7 min: one device call
#        each; `bash bench/gpu/suites/runtime.sh all` runs both, which may pass a 10-minute limit)
# Carries: .carry/bin/{gpu_logits,hoist}, .carry/bin/llama-quantize (optional: the llama-quantize
# cases), .whl/gguf-*.whl. Results: $OUT/*.log, $OUT/logits.json, $OUT/speed.json.
# Exit status: 0 when every step ran and passed, else 1 (steps keep going).
# Overrides (for dry runs elsewhere): PYTHON, GPU_LOGITS, HOIST, LLAMA_QUANTIZE (default
# $HOIST_BIN/llama-quantize; "none": no llama-quantize cases), RT_QTYPES (its types, default
# make_models.py's), RT_MODELS_ARGS / RT_CHECK_ARGS (more arguments, e.g. "--only llama31,qwen3" /
# "--only lq"), RT_MODELS_LIMIT / RT_CHECK_LIMIT (seconds, default 300 / 420), RT_WORK,
# RT_SPEED_ARGS (e.g. "--small"), RT_KEEP=1 keeps the 18 GB speed checkpoints for
# `bench_speed.py --skip-torch`.
source "$(dirname "$0")/../lib/env.sh"
PART=${1:-all}
case "$PART" in all|logits|speed) ;; *) echo "usage: $0 [all|logits|speed]"; exit 2 ;; esac
W=${RT_WORK:-/var/tmp/hoist-rt}          # models and checkpoints (~18 GB for speed)
PY=${PYTHON:-python3}
GPU_LOGITS=${GPU_LOGITS:-$HOIST_BIN/gpu_logits}
HOIST=${HOIST:-$HOIST_BIN/hoist}
LLAMA_QUANTIZE=${LLAMA_QUANTIZE:-$HOIST_BIN/llama-quantize}
mkdir -p "$W"
T0=$(date +%s)

echo "== setup ($PART) in $PWD, OUT=$OUT, work $W"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
for b in "$GPU_LOGITS" "$HOIST"; do
  [ -x "$b" ] || echo "WARNING: $b is missing (its steps will fail)"
done
# gguf: the carried wheel (pure Python; needs numpy and pyyaml, which transformers brings).
use_wheels 'gguf-*' || echo "WARNING: no usable .whl/gguf-*.whl; relying on an installed gguf"
"$PY" - <<'PY' 2>&1 | tee "$OUT/python.txt"
import importlib, sys
print("python", sys.version.split()[0])
for m in ("torch", "transformers", "numpy", "yaml", "safetensors", "gguf"):
    try:
        mod = importlib.import_module(m)
        print(f"{m} {getattr(mod, '__version__', '?')} ({getattr(mod, '__file__', '?')})")
    except Exception as e:
        print(f"MISSING {m}: {e.__class__.__name__}: {e}")
import torch
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

FAILED=()
SUMMARY=()
step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  echo
  echo "== $name (limit ${limit} s): $*"
  local t=$(date +%s)
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local dt=$(( $(date +%s) - t ))
  [ "$rc" = 124 ] && echo "== $name: TIMED OUT after ${limit} s"
  echo "== $name: exit $rc, ${dt} s"
  SUMMARY+=("$name: exit $rc, ${dt} s")
  [ "$rc" = 0 ] || FAILED+=("$name")
  return "$rc"
}

if [ "$PART" = all ] || [ "$PART" = logits ]; then
  rm -rf "$W/models"
  # llama-quantize cases when the binary is carried (make_models.py --quantize; README there).
  LQ=()
  if [ "$LLAMA_QUANTIZE" != none ] && [ -x "$LLAMA_QUANTIZE" ]; then
    LQ=(--quantize "$LLAMA_QUANTIZE")
    [ -n "${RT_QTYPES:-}" ] && LQ+=(--qtypes "$RT_QTYPES")
  else
    echo "note: no llama-quantize at $LLAMA_QUANTIZE: only the gguf-py GGUF cases (Q8_0, Q4_0)"
  fi
  # shellcheck disable=SC2086  # RT_MODELS_ARGS and RT_CHECK_ARGS are lists of words
  if step make_models "${RT_MODELS_LIMIT:-300}" "$PY" bench/gpu/runtime/make_models.py "$W/models" "${LQ[@]}" ${RT_MODELS_ARGS:-}; then
    # shellcheck disable=SC2086
    step check_logits "${RT_CHECK_LIMIT:-420}" "$PY" bench/gpu/runtime/check_logits.py "$W/models" --gpu-logits "$GPU_LOGITS" ${RT_CHECK_ARGS:-}
  else
    echo "== check_logits: skipped (make_models failed)"; FAILED+=("check_logits"); SUMMARY+=("check_logits: skipped")
  fi
  cp "$W/models/models.json" "$OUT/models.json" 2>/dev/null
fi

if [ "$PART" = all ] || [ "$PART" = speed ]; then
  case " $RT_SPEED_ARGS " in *" --skip-torch "*) ;; *) rm -rf "$W/speed" ;; esac
  # shellcheck disable=SC2086  # RT_SPEED_ARGS is a list of words
  step bench_speed 420 "$PY" bench/gpu/runtime/bench_speed.py "$W/speed" --hoist "$HOIST" --budget 400 $RT_SPEED_ARGS
  [ -n "$RT_KEEP" ] || rm -rf "$W/speed"   # 18 GB
fi

echo
echo "== summary ($PART, $(( $(date +%s) - T0 )) s)"
for s in "${SUMMARY[@]}"; do echo "   $s"; done
grep -h -E "^[0-9]+ passed, [0-9]+ failed$" "$OUT/check_logits.log" 2>/dev/null | tail -1 | sed 's/^/   check_logits: /'
grep -h -E "^  (PASS|MISS|SKIP) " "$OUT/bench_speed.log" 2>/dev/null | sed 's/^/   speed:/'
if [ ${#FAILED[@]} -gt 0 ]; then echo "   failed steps: ${FAILED[*]}"; exit 1; fi
exit 0
