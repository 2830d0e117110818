#!/usr/bin/env bash
# Suite `cache`: the page-cache policy (`--cache auto|keep|bypass`) onto cuda:0 on a synthetic
# Llama-2-7B-shaped checkpoint (13.48 GB, 2 shards): cold bypass and cold keep loads, the load
# after each, a primed-warm load, auto with a headroom larger than the machine, and how much the
# page cache grew during each (suites/cache_policy.py; its docstring gives the targets).
#   bench/gpu/run.sh cache [CHECKPOINT]   CHECKPOINT: default the synthetic one in $HOIST_DATA/l7.
#                                         CACHE_ARGS: more arguments (default "--repeat 2").
# Carries: .carry/bin/{hoist,make_checkpoint}. Results: $OUT/cache_policy.txt (one JSON line per
# load, the summary last). With --repeat 2 it fits one 10-minute device call (as recorded
# 2026-12-02); as root it also drops the whole page cache before each cold load.
source "$(dirname "$0")/../lib/env.sh"
need_bin hoist make_checkpoint || true
D=${1:-$(bash bench/gpu/lib/synthetic_llama7b.sh)} || exit 1
# shellcheck disable=SC2086  # CACHE_ARGS is a list of words
python3 bench/gpu/suites/cache_policy.py "$HOIST_BIN/hoist" "$D" ${CACHE_ARGS:---repeat 2} | tee "$OUT/cache_policy.txt"
exit "${PIPESTATUS[0]}"
