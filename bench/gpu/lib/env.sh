# Shared setup of the GPU suites, sourced by bench/gpu/run.sh before a suite runs (and by a suite
# run on its own). Every path here is a variable with a default, so a suite runs on another
# machine by setting the variable, not by editing the script.
#
#   REPO                the repository root (the suites run from it)
#   HOIST_BIN           carried binaries (default .carry/bin; bench/gpu/README.md says how to build them)
#   OUT                 results (default /tmp/hoist-out; run.sh makes it $OUT/<suite>)
#   HOIST_DATA          synthetic checkpoints, on the disk under test (default /var/tmp/hoist-bench)
#   CUDA_LIB            the toolkit's libraries: NVRTC, cuBLAS, cuFile (default: CUDA 13.0's, else /usr/local/cuda's)
#   HOIST_KERNEL_CACHE  compiled kernels, kept between suites (default /var/tmp/hoist-kernels)
#   WHEEL_SITE          where carried wheels (.whl/) are installed (default /tmp/hoist-site)
# shellcheck shell=bash

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$REPO" || exit 2
export HOIST_BIN=${HOIST_BIN:-.carry/bin}
export OUT=${OUT:-/tmp/hoist-out}
export HOIST_DATA=${HOIST_DATA:-/var/tmp/hoist-bench}
if [ -z "${CUDA_LIB:-}" ]; then
  CUDA_LIB=/usr/local/cuda-13.0/targets/x86_64-linux/lib
  # Another toolkit version: the unversioned link, where the pinned one is absent.
  [ -d "$CUDA_LIB" ] || CUDA_LIB=/usr/local/cuda/targets/x86_64-linux/lib
fi
export CUDA_LIB
# NVRTC, cuBLAS and cuFile live in the toolkit, off the default library path.
case ":${LD_LIBRARY_PATH:-}:" in *":$CUDA_LIB:"*) ;; *) export LD_LIBRARY_PATH=$CUDA_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;; esac
export HOIST_KERNEL_CACHE=${HOIST_KERNEL_CACHE:-/var/tmp/hoist-kernels}
export WHEEL_SITE=${WHEEL_SITE:-/tmp/hoist-site}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# ncu and nvidia-smi, where the image keeps them off PATH.
case ":$PATH:" in *":/usr/local/cuda/bin:"*) ;; *) export PATH=$PATH:/usr/local/cuda/bin ;; esac
mkdir -p "$OUT" "$HOIST_KERNEL_CACHE"

# use_wheels PATTERN...: installs the carried wheels in .whl/ whose names match (e.g. 'gguf-*',
# 'hoist-*', '*') into $WHEEL_SITE, first on PYTHONPATH. Nothing can be fetched on the GPU
# machine, hence --no-index --no-deps. Returns 1 when no wheel matched (a suite may go on with
# what the image has installed).
use_wheels() {
  local wheels=() p w
  for p in "$@"; do
    for w in .whl/$p.whl; do [ -e "$w" ] && wheels+=("$w"); done
  done
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "note: no .whl/{$*}.whl carried; using the installed packages" >&2
    return 1
  fi
  "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WHEEL_SITE" "${wheels[@]}" >&2 || { echo "WARNING: pip install of ${wheels[*]} failed" >&2; return 1; }
  case ":${PYTHONPATH:-}:" in *":$WHEEL_SITE:"*) ;; *) export PYTHONPATH=$WHEEL_SITE${PYTHONPATH:+:$PYTHONPATH} ;; esac
}

# need_bin NAME...: says which carried binaries are missing (the steps that need them fail).
need_bin() {
  local b missing=0
  for b in "$@"; do
    [ -x "$HOIST_BIN/$b" ] || { echo "WARNING: $HOIST_BIN/$b is missing (bench/gpu/README.md: build and carry)" >&2; missing=1; }
  done
  return $missing
}

# drop_caches: the whole page cache, where allowed (root on the GPU machine).
drop_caches() {
  sync
  { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null || echo "note: cannot drop the page cache (not root)" >&2
}
