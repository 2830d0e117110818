#!/usr/bin/env bash
# Suite `serve`: `hoist serve` under several clients on a random Llama-2-7B-shaped GGUF
# (lib/random_gguf.sh; SERVE_TYPE F16 default, or Q4_0): for each `--parallel` of
# SERVE_PARALLEL (default "1,8") the request that loads the model (its time to first token),
# then waves of SERVE_STREAMS (default "1,8") concurrent streaming /api/generate requests of
# SERVE_TOKENS (128) tokens, and `hoist run --json`'s time to first token for comparison
# (suites/serve_load.py; issue 19's targets: 8 streams >= 4x one stream's aggregate tok/s, the
# loading request's TTFT <= hoist run's + 10%).
#   bench/gpu/run.sh serve [MODEL]   MODEL: default the random 7B GGUF in $HOIST_DATA.
#   SERVE_HOIST_ARGS: more options for hoist serve and hoist run (e.g. "--gpu-memory 8GiB": layers
#   streamed each step, which a batch copies once for all its rows).
# The loading request's TTFT and hoist run's are medians of SERVE_LOADS (3) fresh processes, after
# one untimed hoist run (warm page cache and kernels for all). The official `openai` client
# streams a completion and a chat from the last server where its wheels are carried.
# Carries: .carry/bin/hoist; .whl/gguf-*.whl (to make the file); for the client check, openai
# and its dependencies as wheels for the machine's Python (bench/gpu/README.md says how).
# Results: $OUT/serve_load.json, $OUT/serve_load.md; ~1 min a type once the file exists (making
# the 13.5 GB F16 file ~30 s).
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist || exit 1
M=${1:-$(bash bench/gpu/lib/random_gguf.sh 7b "${SERVE_TYPE:-F16}")} || exit 1
use_wheels 'openai-*' 'pydantic*' 'jiter-*' 'httpx*' 'httpcore*' 'anyio-*' 'h11-*' 'idna-*' \
  'sniffio-*' 'typing_*' 'annotated_types-*' 'truststore-*' 'distro-*' 'tqdm-*' 'certifi-*' || true
python3 bench/gpu/suites/serve_load.py "$HOIST_BIN/hoist" "$M" --device cuda:0 \
  --parallel "${SERVE_PARALLEL:-1,8}" --streams "${SERVE_STREAMS:-1,8}" \
  --tokens "${SERVE_TOKENS:-128}" --loads "${SERVE_LOADS:-3}" --hoist-args "${SERVE_HOIST_ARGS:-}" \
  --out "$OUT"
