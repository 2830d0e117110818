#!/usr/bin/env bash
# Suite `stream`: hoist's layer streaming (a model larger than its GPU budget: the first layers
# resident, the rest copied each step into 2 GPU slots from pinned host memory or the file)
# against llama.cpp's partial offload (`llama-bench -ngl N`: N layers on the GPU, the rest
# computed on the CPU), on the same GGUF with the same GPU weight bytes, in one call.
#  1. A Llama-2-7B-shaped F16 GGUF with random weights (lib/random_gguf.sh; 13.5 GB in
#     STREAM_DIR, reused).
#  2. From its tensor table (suites/stream.py plan), for each N of STREAM_NGL: hoist's
#     --gpu-memory = fixed weights + the first N layers' matrices + 16 MiB, so hoist keeps N-2
#     layers resident and streams 34-N through 2 slots; llama-bench gets -ngl N (the last N
#     layers on the GPU; it keeps token_embd and output.weight on the CPU, so hoist's budget is
#     the fixed 0.53 GB above llama.cpp's GPU weights; the summary shows both). Plus the
#     all-resident reference (hoist without --gpu-memory, llama-bench -ngl 99).
#  3. For each N: `hoist run FILE --device cuda:0 --benchmark --json --gpu-memory B
#     --prompt-tokens P --max-tokens 32` for each P of STREAM_PROMPTS under `time -v` (peak
#     RSS), then `llama-bench -m FILE -ngl N -p P,... -n 32 -r STREAM_REPS -o json` (N below
#     STREAM_LB_FULL_NGL: the shortest prompt only; llama.cpp at -ngl 3 prefills ~300 tok/s).
#  4. The host budget: N=STREAM_HOST_NGL with --host-memory = half the streamed layers' bytes
#     (from hoist's own placement of the run without it), the rest read from the file each
#     step; the summary checks peak RSS <= budget + 512 MiB.
#  5. STREAM_70B=1: a Llama-2-70B-shaped Q4_0 GGUF (38.8 GB, random), hoist with --gpu-memory
#     24 GiB against llama-bench with the -ngl of the same weight bytes; the file is deleted at
#     the end (unless STREAM_70B_GGUF named it or STREAM_KEEP_70B=1).
#  6. suites/stream.py summary: $OUT/summary.md (a table per shape, a row per N) and summary.json.
# Warm by default (the page cache holds the file); STREAM_COLD=1 drops it before each run.
# A run that fails or times out is recorded and the suite goes on; a run that would start past
# STREAM_DEADLINE seconds is skipped and recorded as such.
# Usage: bench/gpu/run.sh stream     STREAM_NGL ("24 16 3"), STREAM_PROMPTS ("512 2048"; with
#        8192 the file is made with a longer context, a second 13.5 GB, and hoist gets --context
#        P+32), STREAM_GEN (32), STREAM_REPS (llama-bench -r, 3), STREAM_LB_FULL_NGL (8),
#        STREAM_HOST_NGL (16; empty: no host-budget run), STREAM_SLACK (16 MiB, bytes),
#        STREAM_DEADLINE (520 s), STREAM_HOIST_TIMEOUT (150 s), STREAM_LB_TIMEOUT (240 s),
#        STREAM_COLD=1, STREAM_DIR (/var/tmp/hoist-stream), STREAM_GGUF (another F16 file),
#        STREAM_SHAPE (7b; e.g. "small,layers=8" for a dry run with stand-in binaries),
#        STREAM_7B=0 (no 7B), STREAM_70B=1 (STREAM_70B_PROMPTS "512", STREAM_70B_GPU_MEMORY bytes,
#        STREAM_70B_GGUF, STREAM_70B_SHAPE, STREAM_KEEP_70B=1, STREAM_70B_MIN_LEFT: 200 s, the
#        least time before the deadline to start making the file).
# Carries: .carry/bin/hoist, .carry/llama-bench-sm90a.tar.xz, .whl/gguf-*.whl.
# Results: $OUT/summary.{md,json}, $OUT/stream.log, $OUT/runs.tsv (every run and its exit status),
# $OUT/plan_<shape>.json, $OUT/raw/ (each run's stdout JSON, stderr log and time -v report).
# shellcheck source=../lib/env.sh
source "$(dirname "$0")/../lib/env.sh"
exec > >(tee "$OUT/stream.log") 2>&1
T0=$(date +%s)
PY=bench/gpu/suites/stream.py
DIR=${STREAM_DIR:-/var/tmp/hoist-stream}
NGLS=${STREAM_NGL-24 16 3}
# shellcheck disable=SC2086  # a list of numbers
PROMPTS=$(printf '%s\n' ${STREAM_PROMPTS:-512 2048} | sort -n | xargs)
GEN=${STREAM_GEN:-32}
REPS=${STREAM_REPS:-3}
LB_FULL_NGL=${STREAM_LB_FULL_NGL:-8}
HOST_NGL=${STREAM_HOST_NGL-16}
DEADLINE=${STREAM_DEADLINE:-520}
HOIST_LIMIT=${STREAM_HOIST_TIMEOUT:-150}
LB_LIMIT=${STREAM_LB_TIMEOUT:-240}
COLD=${STREAM_COLD:-0}
SLACK=${STREAM_SLACK:-$((16 << 20))}
RAW=$OUT/raw
rm -rf "$RAW" "$OUT"/plan_*.json "$OUT"/summary.md "$OUT"/summary.json
mkdir -p "$RAW" "$DIR" || exit 1
MANIFEST=$OUT/runs.tsv
printf 'kind\tshape\tlabel\tngl\tprompts\tgpu_memory\thost_memory\trc\tseconds\tstem\tnote\n' > "$MANIFEST"

# record KIND SHAPE LABEL NGL PROMPTS GPU_MEMORY HOST_MEMORY RC SECONDS STEM NOTE: one line of runs.tsv.
record() { local IFS=$'\t'; echo "$*" >> "$MANIFEST"; }
# limit_for MAX: the seconds the next run may take (MAX, or what is left before STREAM_DEADLINE);
# fails when under 20 s are left.
limit_for() {
  local left=$(( DEADLINE - ($(date +%s) - T0) ))
  [ "$left" -ge 20 ] || return 1
  echo $(( left < $1 ? left : $1 ))
}
# Peak RSS: GNU time -v, else the same report from wait4 (suites/stream.py timev).
if /usr/bin/time -v -o /dev/null true 2>/dev/null; then TIMEV=(/usr/bin/time -v -o); else TIMEV=(python3 "$PY" timev); fi

# run_hoist SHAPE LABEL NGL PROMPT GPU_MEMORY|- HOST_MEMORY|- MODEL
run_hoist() {
  local shape=$1 label=$2 ngl=$3 p=$4 gpu=$5 host=$6 model=$7 stem limit t rc
  stem=$RAW/hoist_${shape}_${label}_p$p
  local args=(run "$model" --device cuda:0 --benchmark --json --prompt-tokens "$p" --max-tokens "$GEN")
  [ "$gpu" != - ] && args+=(--gpu-memory "$gpu")
  [ "$host" != - ] && args+=(--host-memory "$host")
  # hoist's default context is at most 4096 positions
  [ $((p + GEN)) -gt 4096 ] && args+=(--context $((p + GEN)))
  if ! limit=$(limit_for "$HOIST_LIMIT"); then
    echo "-- skipped (past STREAM_DEADLINE=$DEADLINE s): hoist ${args[*]}"
    record hoist "$shape" "$label" "$ngl" "$p" "$gpu" "$host" skipped 0 "$stem" "skipped: past STREAM_DEADLINE"
    return 1
  fi
  [ "$COLD" = 1 ] && drop_caches
  echo "\$ hoist ${args[*]}   (limit $limit s, $(( $(date +%s) - T0 )) s in)"
  t=$(date +%s)
  "${TIMEV[@]}" "$stem.time" timeout -k 10 "$limit" "$HOIST_BIN/hoist" "${args[@]}" \
    > "$stem.json" 2> "$stem.log" < /dev/null
  rc=$?
  record hoist "$shape" "$label" "$ngl" "$p" "$gpu" "$host" "$rc" $(( $(date +%s) - t )) "$stem" ""
  if [ "$rc" = 0 ]; then
    python3 "$PY" brief hoist "$stem.json"
  else
    echo "  hoist FAILED (exit $rc, $(( $(date +%s) - t )) s):"; tail -n 5 "$stem.log" | sed 's/^/    /'
  fi
  return "$rc"
}

# run_llama SHAPE LABEL NGL PROMPTS(comma-separated) MODEL
run_llama() {
  local shape=$1 label=$2 ngl=$3 ps=$4 model=$5 stem limit t rc
  stem=$RAW/llama_${shape}_${label}
  local args=(-m "$model" -ngl "$ngl" -p "$ps" -n "$GEN" -r "$REPS" -o json)
  if [ -z "$LB" ]; then
    record llama "$shape" "$label" "$ngl" "$ps" - - missing 0 "$stem" "no llama-bench (carry .carry/llama-bench-sm90a.tar.xz)"
    return 1
  fi
  if ! limit=$(limit_for "$LB_LIMIT"); then
    echo "-- skipped (past STREAM_DEADLINE=$DEADLINE s): llama-bench ${args[*]}"
    record llama "$shape" "$label" "$ngl" "$ps" - - skipped 0 "$stem" "skipped: past STREAM_DEADLINE"
    return 1
  fi
  [ "$COLD" = 1 ] && drop_caches
  echo "\$ llama-bench ${args[*]}   (limit $limit s, $(( $(date +%s) - T0 )) s in)"
  t=$(date +%s)
  timeout -k 10 "$limit" "$LB" "${args[@]}" > "$stem.json" 2> "$stem.log" < /dev/null
  rc=$?
  record llama "$shape" "$label" "$ngl" "$ps" - - "$rc" $(( $(date +%s) - t )) "$stem" ""
  if [ "$rc" = 0 ]; then
    python3 "$PY" brief llama "$stem.json"
  else
    echo "  llama-bench FAILED (exit $rc, $(( $(date +%s) - t )) s):"; tail -n 5 "$stem.log" | sed 's/^/    /'
  fi
  return "$rc"
}

# make_gguf SHAPE_LABEL SHAPE TYPE FILE: makes (or reuses) FILE, warms the page cache with it;
# records the step; prints nothing (the path is FILE).
make_gguf() {
  local label=$1 shape=$2 type=$3 file=$4 t rc existed=0
  [ -s "$file" ] && existed=1
  echo "== $label: $file ($([ $existed = 1 ] && echo reused || echo making it))"
  t=$(date +%s)
  bash bench/gpu/lib/random_gguf.sh "$shape" "$type" "$file" > /dev/null 2> >(tee "$RAW/make_$label.log" >&2)
  rc=$?
  if [ "$rc" = 0 ] && [ "$existed" = 0 ]; then sync; fi  # its writeback would disturb the first runs
  if [ "$rc" = 0 ] && [ "$COLD" != 1 ]; then cat "$file" > /dev/null; fi  # warm: the page cache holds it
  record make "$label" file - - - - "$rc" $(( $(date +%s) - t )) "$RAW/make_$label" ""
  echo "   $(( $(date +%s) - t )) s"
  return "$rc"
}

echo "== stream: $(date -u +%FT%TZ); $(nvidia-smi --query-gpu=name,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv,noheader 2>/dev/null | head -1); $(nproc) CPUs; $(free -g | awk '/^Mem:/ {print $2 " GiB RAM, " $7 " available"}')"
echo "   hoist: $("$HOIST_BIN/hoist" --version 2>&1 | head -1); disk: $(df -h "$DIR" | awk 'NR==2 {print $4 " free on " $6}')"
echo "   N: ${NGLS:-none}; prompts: $PROMPTS; decode tokens: $GEN; llama-bench -r $REPS; deadline $DEADLINE s; page cache: $([ "$COLD" = 1 ] && echo cold || echo warm)"
need_bin hoist || exit 1
use_wheels 'gguf-*' || echo "WARNING: no .whl/gguf-*.whl; relying on an installed gguf"
LB=$(bash bench/gpu/lib/llama_bench.sh) && [ -x "$LB" ] || { echo "WARNING: no llama-bench: the llama.cpp columns will be n/a"; LB=; }

# ---- Llama-2-7B shape, F16 (STREAM_SHAPE: another shape of lib/random_gguf.sh, for dry runs)
if [ "${STREAM_7B:-1}" = 1 ]; then
  SHAPE=${STREAM_SHAPE:-7b}
  S=${SHAPE%%,*}
  max_p=${PROMPTS##* }
  ctx=4096
  [ $((max_p + GEN)) -gt 4096 ] && ctx=$(( (max_p + GEN + 4095) / 4096 * 4096 ))
  F7=${STREAM_GGUF:-$DIR/llama${SHAPE//[,=]/-}-f16$([ "$ctx" = 4096 ] || echo "-ctx$ctx").gguf}
  if make_gguf "$S" "$SHAPE,context=$ctx" F16 "$F7" &&
     mapfile -t PLAN < <(python3 "$PY" plan "$F7" --shape "$S" --json "$OUT/plan_$S.json" --ngl "$NGLS" \
                           --host-ngl "${HOST_NGL:-0}" --slack "$SLACK") && [ -s "$OUT/plan_$S.json" ]; then
    host_line=
    for line in "${PLAN[@]}"; do [ "${line%% *}" = HOST ] && host_line=$line; done
    run_host() {
      local label ngl gpu predicted p=${PROMPTS%% *} budget
      read -r _ label ngl gpu predicted <<< "$host_line"
      # half of what hoist streamed at this N without a host budget (its own placement)
      budget=$(python3 "$PY" host-budget "$OUT/plan_$S.json" "$RAW/hoist_${S}_ngl${ngl}_p$p.json") || budget=$predicted
      echo "== $S host budget: N=$ngl, --host-memory $budget"
      run_hoist "$S" "$label" "$ngl" "$p" "$gpu" "$budget" "$F7"
    }
    host_done=0
    for line in "${PLAN[@]}"; do
      read -r kind label ngl gpu _ <<< "$line"
      [ "$kind" = ROW ] || continue
      echo "== $S $label: llama.cpp -ngl $ngl, hoist --gpu-memory $gpu"
      for p in $PROMPTS; do run_hoist "$S" "$label" "$ngl" "$p" "$gpu" - "$F7"; done
      lb_prompts=${PROMPTS// /,}
      [ "$ngl" -lt "$LB_FULL_NGL" ] && lb_prompts=${PROMPTS%% *}
      run_llama "$S" "$label" "$ngl" "$lb_prompts" "$F7"
      if [ -n "$host_line" ] && [ "$host_done" = 0 ] && [ "$ngl" = "$HOST_NGL" ]; then run_host; host_done=1; fi
    done
    if [ -n "$host_line" ] && [ "$host_done" = 0 ]; then run_host; fi
  else
    record plan "$S" plan - - - - 1 0 "$RAW/plan_$S" "no $S file or plan (see stream.log)"
  fi
fi

# ---- Llama-2-70B shape, Q4_0, 24 GiB of GPU weights (optional)
if [ "${STREAM_70B:-0}" = 1 ]; then
  SHAPE70=${STREAM_70B_SHAPE:-70b}
  S70=70b
  [ "$SHAPE70" = 70b ] || S70=${SHAPE70%%,*}-q4_0
  F70=${STREAM_70B_GGUF:-$DIR/llama${SHAPE70//[,=]/-}-q4_0.gguf}
  ours=0
  if [ -z "${STREAM_70B_GGUF:-}" ] && [ "${STREAM_KEEP_70B:-0}" != 1 ]; then
    ours=1
    # the 38.8 GB file goes even when the suite is stopped
    trap 'rm -f "$F70" "$F70.tmp"' EXIT
    trap 'exit 143' TERM
    trap 'exit 130' INT
  fi
  GPU70=${STREAM_70B_GPU_MEMORY:-$((24 << 30))}
  # shellcheck disable=SC2086  # a list of numbers
  P70=$(printf '%s\n' ${STREAM_70B_PROMPTS:-512} | sort -n | xargs)
  left=$(( DEADLINE - ($(date +%s) - T0) ))
  if [ "$left" -lt "${STREAM_70B_MIN_LEFT:-200}" ] && [ ! -s "$F70" ]; then
    echo "== $S70: skipped, $left s left before STREAM_DEADLINE (making the file takes minutes); run it alone: STREAM_7B=0 STREAM_70B=1"
    record make "$S70" file - - - - skipped 0 "$RAW/make_$S70" "skipped: $left s left before STREAM_DEADLINE"
  elif make_gguf "$S70" "$SHAPE70" Q4_0 "$F70" &&
       mapfile -t PLAN < <(python3 "$PY" plan "$F70" --shape "$S70" --json "$OUT/plan_$S70.json" --gpu-memory "$GPU70" \
                             --slack "$SLACK") && [ -s "$OUT/plan_$S70.json" ]; then
    for line in "${PLAN[@]}"; do
      read -r kind label ngl gpu _ <<< "$line"
      [ "$kind" = ROW ] || continue
      echo "== $S70 $label: hoist --gpu-memory $gpu, llama.cpp -ngl $ngl (the same weight bytes)"
      for p in $P70; do run_hoist "$S70" "$label" "$ngl" "$p" "$gpu" - "$F70"; done
      run_llama "$S70" "$label" "$ngl" "${P70// /,}" "$F70"
    done
  else
    record plan "$S70" plan - - - - 1 0 "$RAW/plan_$S70" "no $S70 file or plan (see stream.log)"
  fi
  if [ "$ours" = 1 ]; then rm -f "$F70" "$F70.tmp" && echo "== $S70: deleted $F70"; fi
fi

echo "== summary ($(( $(date +%s) - T0 )) s in)"
python3 "$PY" summary "$OUT" --gen "$GEN" --page-cache "$([ "$COLD" = 1 ] && echo cold || echo warm)"
rc=$?
echo "== stream: $(( $(date +%s) - T0 )) s"
exit "$rc"
