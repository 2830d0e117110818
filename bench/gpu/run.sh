#!/usr/bin/env bash
# The one entry point of the GPU machine's suites: bench/gpu/run.sh SUITE [ARGS...]
# (bench/gpu/README.md: what each suite checks, what it carries, how long it runs).
# Results go to $OUT/SUITE (OUT defaults to /tmp/hoist-out); the exit status is the suite's.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

# suite -> script under suites/ and the arguments it is given first.
declare -A SCRIPT=(
  [probe]=probe.sh
  [correctness]=correctness.sh
  [load]=load.sh
  [cache]=cache.sh
  [route]=route.sh
  [python]=python.sh
  [layout]=layout.sh
  [tune]=tune.sh
  [runtime-smoke]=runtime_smoke.sh
  [logits]="runtime.sh logits"
  [speed]="runtime.sh speed"
  [q4-diag]=q4_diag.sh
  [decode-switches]=decode_switches.sh
  [ncu]=ncu.sh
  [ab]=ab.sh
  [gguf-peer]=gguf_peer.sh
  [stream]=stream.sh
  [serve]=serve.sh
)
ORDER="probe correctness load cache route python layout tune runtime-smoke logits speed q4-diag decode-switches ncu ab gguf-peer stream serve"

usage() {
  echo "usage: bench/gpu/run.sh SUITE [ARGS...]   (see bench/gpu/README.md)"
  echo "suites: $ORDER"
}

suite=${1:-}
if [ -z "$suite" ] || [ "$suite" = -h ] || [ "$suite" = --help ]; then usage; exit 0; fi
if [ -z "${SCRIPT[$suite]:-}" ]; then
  echo "bench/gpu/run.sh: unknown suite '$suite'" >&2
  usage >&2
  exit 2
fi
shift
read -r -a cmd <<< "${SCRIPT[$suite]}"
export OUT="${OUT:-/tmp/hoist-out}/$suite"
mkdir -p "$OUT"
t0=$(date +%s)
bash "$HERE/suites/${cmd[0]}" "${cmd[@]:1}" "$@"
rc=$?
echo "== suite $suite: exit $rc, $(( $(date +%s) - t0 )) s; results in $OUT"
exit $rc
