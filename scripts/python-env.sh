#!/usr/bin/env bash
# The virtualenv that every Python step of scripts/test.sh uses: the reference packages the Rust
# tests compare against (safetensors, numpy, gguf, xxhash), NVRTC (the nvidia-cuda-nvrtc wheel),
# and later the hoist package and pytest. Its own venv because the first `python3` on PATH may be
# a distribution's, which refuses pip installs (Debian: externally-managed-environment).
#
# Sourced (scripts/test.sh): `hoist_python_env DIR` makes the venv and exports PATH (the venv's
# bin first: the Rust tests run `python3`), LD_LIBRARY_PATH (NVRTC) and HOIST_REQUIRE_*.
# Alone: `bash scripts/python-env.sh DIR` does the same and checks what the tests will find.
# HOIST_BASE_PYTHON picks the interpreter the venv is made from (default: python3 on PATH).

# Installs what `python3 -m venv` needs where the interpreter lacks it (Debian's python3 without
# python3-venv: no ensurepip): Debian's own package, through apt, as root (CI runs as root). $1 is
# the interpreter.
hoist_install_venv_support() {
  local base=$1 minor
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "error: $base cannot make a virtualenv (no ensurepip); install python3-venv (Debian," \
      "Ubuntu) or set HOIST_BASE_PYTHON to an interpreter that has it" >&2
    return 1
  fi
  minor=$("$base" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  echo "   installing python3-venv and python$minor-venv with apt-get"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python$minor-venv" python3-venv >/dev/null
}

# Makes the venv at $1 with pip in it.
hoist_make_venv() {
  local venv=$1 base=${HOIST_BASE_PYTHON:-python3}
  if ! command -v "$base" >/dev/null; then
    echo "error: $base not found: install Python 3.9 or newer (or set HOIST_BASE_PYTHON)" >&2
    return 1
  fi
  if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 9))'; then
    echo "error: $base is Python $("$base" -V 2>&1); the tests need 3.9 or newer (set HOIST_BASE_PYTHON)" >&2
    return 1
  fi
  # Tried rather than predicted: venv fails whenever ensurepip cannot run, for whatever reason.
  local venv_log
  if ! venv_log=$("$base" -m venv "$venv" 2>&1); then
    echo "   $base -m venv failed (${venv_log%%$'\n'*}...)"
    rm -rf "$venv"
    hoist_install_venv_support "$base"
    "$base" -m venv "$venv"
  fi
}

# Prints the directory holding libnvrtc.so* from the nvidia-cuda-nvrtc wheel in the venv at $1.
hoist_nvrtc_dir() {
  "$1/bin/python" - <<'PY'
import glob, os, sysconfig
hits = sorted(glob.glob(os.path.join(sysconfig.get_paths()["purelib"], "nvidia", "cu13", "lib", "libnvrtc.so*")))
print(os.path.dirname(hits[0]) if hits else "", end="")
PY
}

# Makes the venv at $1, installs what the tests need, and exports the environment they use.
hoist_python_env() {
  local venv=$1 nvrtc_lib
  echo "== Python: virtualenv at $venv"
  hoist_make_venv "$venv"
  echo "== installing the reference Python packages (safetensors, numpy, gguf, xxhash)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    safetensors numpy gguf xxhash
  echo "== installing the official API clients hoist serve is tested with (pinned)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    ollama==0.6.3 openai==3.57.0
  echo "== installing NVRTC (nvidia-cuda-nvrtc wheel): the GPU kernels must compile, GPU or not"
  # CUDA 13's: the cudarc build the runtime uses loads libnvrtc.so.13 and older, not 14.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'nvidia-cuda-nvrtc>=13,<14'
  nvrtc_lib=$(hoist_nvrtc_dir "$venv")
  if [ -z "$nvrtc_lib" ]; then
    echo "error: libnvrtc not found under nvidia/cu13/lib in $venv after installing nvidia-cuda-nvrtc" >&2
    return 1
  fi
  # The Rust tests run `python3` from PATH: the venv's comes first.
  export VIRTUAL_ENV="$venv"
  export PATH="$venv/bin:$PATH"
  export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # With these set, tests that compare against Python or compile kernels fail instead of skipping.
  export HOIST_REQUIRE_PYTHON=1
  export HOIST_REQUIRE_NVRTC=1
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  if [ $# -ne 1 ]; then
    echo "usage: bash scripts/python-env.sh DIR   (makes the test virtualenv at DIR)" >&2
    exit 2
  fi
  hoist_python_env "$1"
  echo "== check: python3 on PATH is $(command -v python3)"
  python3 -c 'import safetensors, numpy, gguf, xxhash, sys; print("   reference packages import in", sys.prefix)'
  echo "   NVRTC: $(ls "${LD_LIBRARY_PATH%%:*}"/libnvrtc.so*)"
fi
