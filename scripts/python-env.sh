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

# Installs pip into the venv at $1 from the pip wheel on PyPI, checked against PyPI's sha256.
# For interpreters whose ensurepip is missing (Debian's python3 without python3-venv): this
# needs neither root nor apt, only PyPI, which the pip installs below need anyway.
hoist_bootstrap_pip() {
  local venv=$1 wheel
  wheel=$("$venv/bin/python" - "$venv" <<'PY'
import hashlib, json, os, sys, urllib.parse, urllib.request
index = "https://pypi.org/pypi/pip/json"
with urllib.request.urlopen(index, timeout=60) as reply:
    files = json.load(reply)["urls"]
wheel = next((f for f in files if f["packagetype"] == "bdist_wheel"), None)
if wheel is None:
    sys.exit("error: PyPI lists no wheel for pip's latest release; install python3-venv instead")
# Mirrors may answer with URLs relative to the index.
with urllib.request.urlopen(urllib.parse.urljoin(index, wheel["url"]), timeout=120) as reply:
    data = reply.read()
if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
    sys.exit(f"error: {wheel['filename']} from PyPI does not match its sha256; run again")
path = os.path.join(sys.argv[1], wheel["filename"])
with open(path, "wb") as out:
    out.write(data)
print(path, end="")
PY
  )
  # pip runs from its own wheel (zipimport), as ensurepip runs it, to install itself.
  PYTHONPATH="$wheel" "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-index "$wheel"
  rm -f "$wheel"
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
    echo "   so: a venv without pip, then pip's wheel from PyPI"
    rm -rf "$venv"
    "$base" -m venv --without-pip "$venv"
    hoist_bootstrap_pip "$venv"
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
