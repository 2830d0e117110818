#!/usr/bin/env bash
# Suite `ab`: two builds of the runtime side by side in one call: decode tok/s and prefill
# (fraction of cuBLAS) of a synthetic Llama-2-7B-shaped bf16 checkpoint and its Q4_0 GGUF twin,
# `gpu_speed` of the base build (BASE, default $HOIST_BIN/gpu_speed_base) and of this build
# ($HOIST_BIN/gpu_speed) alternating ROUNDS times (default 3), so that clock and thermal drift
# fall on both alike; then each build's medians and new/base ratios. The yardstick of a
# refactor that must not change speed ("within 3%").
# Usage: bench/gpu/run.sh ab            MODELS="bf16 q4" (default both), ROUNDS, PROMPT/DECODE
#        tokens (default 512/128).
# Carries: .carry/bin/{gpu_speed,gpu_speed_base,make_checkpoint}, .whl/gguf-*.whl (q4).
# Results: $OUT/ab.txt, $OUT/ab.json.
source "$(dirname "$0")/../lib/env.sh"
exec > >(tee "$OUT/ab.txt") 2>&1
BASE=${BASE:-$HOIST_BIN/gpu_speed_base}
NEW=$HOIST_BIN/gpu_speed
ROUNDS=${ROUNDS:-3}
need_bin gpu_speed || exit 1
[ -x "$BASE" ] || { echo "ab: no base build at $BASE"; exit 1; }
RAW=$OUT/ab_raw.jsonl
: > "$RAW"
run_one() {  # run_one MODEL_LABEL BUILD_LABEL BINARY PATH
  timeout 180 "$3" "$4" "${PROMPT:-512}" "${DECODE:-128}" > "$OUT/ab_last.txt" 2>&1
  python3 - "$1" "$2" "$RAW" "$OUT/ab_last.txt" <<'PY'
import json, sys
model, build, raw, last = sys.argv[1:5]
text = open(last).read()
try:
    d = json.loads(text[text.index("{"):])["speed"]
except Exception:
    print(f"{model} {build}: failed: {text[-400:]}")
    sys.exit(1)
row = {"model": model, "build": build, "decode_tok_s": d["decode_tokens_per_s"],
       "decode_fraction_of_bound": d["decode_fraction_of_bound"],
       "prefill_fraction_of_cublas": d["prefill_fraction_of_cublas"],
       "prefill_tok_s": d["prefill_tokens_per_s"], "cublas_gemm_seconds": d["cublas_gemm_seconds"]}
open(raw, "a").write(json.dumps(row) + "\n")
print(f"{model} {build}: decode {row['decode_tok_s']:.1f} tok/s ({row['decode_fraction_of_bound']:.3f} of bound), prefill {row['prefill_tok_s']:.0f} tok/s = {row['prefill_fraction_of_cublas']:.3f} of cuBLAS ({row['cublas_gemm_seconds'] * 1e3:.2f} ms)")
PY
}
rc=0
for m in ${MODELS:-bf16 q4}; do
  case $m in
    bf16) P=$(bash bench/gpu/lib/synthetic_llama7b.sh) || exit 1 ;;
    q4) P=$(bash bench/gpu/lib/synthetic_q4.sh) || exit 1 ;;
    *) echo "ab: unknown model '$m' (bf16, q4)"; exit 2 ;;
  esac
  echo "== $m ($P), $ROUNDS rounds, base then new, alternating"
  for r in $(seq "$ROUNDS"); do
    run_one "$m" base "$BASE" "$P" || rc=1
    run_one "$m" new "$NEW" "$P" || rc=1
  done
done
python3 - "$RAW" "$OUT/ab.json" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
out = {}
print("\n== medians (new/base)")
for m in sorted({r["model"] for r in rows}):
    med = {b: {k: statistics.median(r[k] for r in rows if r["model"] == m and r["build"] == b)
               for k in ("decode_tok_s", "prefill_tok_s", "prefill_fraction_of_cublas")}
           for b in ("base", "new") if any(r["model"] == m and r["build"] == b for r in rows)}
    if len(med) == 2:
        ratio = {k: med["new"][k] / med["base"][k] for k in med["new"]}
        med["ratio"] = ratio
        print(f"{m}: decode {med['base']['decode_tok_s']:.1f} -> {med['new']['decode_tok_s']:.1f} tok/s "
              f"(x{ratio['decode_tok_s']:.3f}); prefill {med['base']['prefill_fraction_of_cublas']:.3f} -> "
              f"{med['new']['prefill_fraction_of_cublas']:.3f} of cuBLAS (x{ratio['prefill_fraction_of_cublas']:.3f}); "
              f"prefill {med['base']['prefill_tok_s']:.0f} -> {med['new']['prefill_tok_s']:.0f} tok/s (x{ratio['prefill_tok_s']:.3f})")
    out[m] = med
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
exit $rc
