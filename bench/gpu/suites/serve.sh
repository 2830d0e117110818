#!/usr/bin/env bash
# Suite `serve`: `hoist serve` under several clients on a random Llama-2-7B-shaped GGUF
# (lib/random_gguf.sh; SERVE_TYPE F16 default, or Q4_0): for each `--parallel` of
# SERVE_PARALLEL (default "1,8") the request that loads the model (its time to first token),
# then waves of SERVE_STREAMS (default "1,8") concurrent streaming /api/generate requests of
# SERVE_TOKENS (128) tokens, and `hoist run --json`'s time to first token for comparison
# (suites/serve_load.py; issue 19's targets: 8 streams >= 4x one stream's aggregate tok/s, the
# loading request's TTFT <= hoist run's + 10%).
#   bench/gpu/run.sh serve [MODEL]   MODEL: default the random 7B GGUF in $HOIST_DATA.
# Carries: .carry/bin/hoist; .whl/gguf-*.whl (to make the file). Results: $OUT/serve_load.json,
# $OUT/serve_load.md. Not yet recorded: budget one device call (making the 13.5 GB F16 file
# ~30 s, each server's waves ~1 min).
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist || exit 1
M=${1:-$(bash bench/gpu/lib/random_gguf.sh 7b "${SERVE_TYPE:-F16}")} || exit 1
python3 bench/gpu/suites/serve_load.py "$HOIST_BIN/hoist" "$M" --device cuda:0 \
  --parallel "${SERVE_PARALLEL:-1,8}" --streams "${SERVE_STREAMS:-1,8}" \
  --tokens "${SERVE_TOKENS:-128}" --out "$OUT"
