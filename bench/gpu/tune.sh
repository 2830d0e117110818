#!/usr/bin/env bash
# Quick configuration sweep of hoist's GPU path on one checkpoint, cold and warm (one line
# each: GB/s, methods, RSS growth): bench/gpu/tune.sh PATH. Used to pick defaults.
cd "$(dirname "$0")/../.."
BIN=${HOIST_BIN:-.carry/bin}
P=$1; shift
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
files=$(if [ -d "$P" ]; then ls "$P"/*.safetensors; else echo "$P"; fi)
one() {
  local mode=$1; shift
  if [ "$mode" = cold ]; then sync; echo 3 > /proc/sys/vm/drop_caches; else cat $files > /dev/null; fi
  "$BIN/gpu_load" "$P" "$@" | python3 -c 'import json,sys
r=json.loads(sys.stdin.read()); rp=r["report"]
print("%-5s %6.2f GB/s %6.2f s  rss+%4.0f MiB  %s  slots=%d %s %s" % (sys.argv[1], r["gbps"], r["seconds"], r["rss_growth_mib"], r["methods"], rp["ring_slots"], rp["path"], " ".join(sys.argv[2:])))' "$mode" "$@"
}
while read -r mode args; do
  [ -z "$mode" ] && continue
  one "$mode" $args
done
