#!/usr/bin/env bash
# Suite `tune`: a configuration sweep of hoist's GPU path on one checkpoint, cold and warm, one
# line each (GB/s, seconds, RSS growth, methods, ring slots, path). Used to pick defaults.
#   bench/gpu/run.sh tune PATH < LINES    each line: MODE [gpu_load ARGS...], MODE cold or warm,
#                                         e.g. "warm --threads 32" or "cold --chunk-mib 16"
# Carries: .carry/bin/gpu_load. Results: $OUT/tune.txt.
source "$(dirname "$0")/../lib/env.sh"
need_bin gpu_load || true
P=${1:?usage: bench/gpu/run.sh tune PATH < lines of MODE [ARGS...]}
shift
files=$(if [ -d "$P" ]; then ls "$P"/*.safetensors; else echo "$P"; fi)
one() {
  local mode=$1; shift
  # shellcheck disable=SC2086  # files is a list of paths without spaces
  if [ "$mode" = cold ]; then drop_caches; else cat $files > /dev/null; fi
  "$HOIST_BIN/gpu_load" "$P" "$@" | python3 -c 'import json,sys
r=json.loads(sys.stdin.read()); rp=r["report"]
print("%-5s %6.2f GB/s %6.2f s  rss+%4.0f MiB  %s  slots=%d %s %s" % (sys.argv[1], r["gbps"], r["seconds"], r["rss_growth_mib"], r["methods"], rp["ring_slots"], rp["path"], " ".join(sys.argv[2:])))' "$mode" "$@"
}
while read -r mode args; do
  [ -z "$mode" ] && continue
  # shellcheck disable=SC2086  # args is a list of words
  one "$mode" $args
done | tee "$OUT/tune.txt"
