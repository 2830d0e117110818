#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, integration, property and end-to-end
# tests through the CLI) and the independent-reader checks, which need Python's reference
# packages. README.md gives this command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing the reference Python packages (safetensors, numpy, gguf, xxhash)"
python3 -m pip install --quiet --disable-pip-version-check safetensors numpy gguf xxhash
# With this set, tests that compare against the Python readers fail instead of skipping.
export HOIST_REQUIRE_PYTHON=1

echo "== installing NVRTC (nvidia-cuda-nvrtc wheel): the GPU kernels must compile, GPU or not"
# CUDA 13's: the cudarc build the runtime uses loads libnvrtc.so.13 and older, not 14.
python3 -m pip install --quiet --disable-pip-version-check 'nvidia-cuda-nvrtc>=13,<14'
NVRTC_LIB=$(python3 - <<'PY'
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
hits = sorted(p for r in roots for p in glob.glob(os.path.join(r, "nvidia", "cu13", "lib", "libnvrtc.so*")))
print(os.path.dirname(hits[0]) if hits else "", end="")
PY
)
if [ -z "$NVRTC_LIB" ]; then
  echo "error: libnvrtc not found under nvidia/cu13/lib after installing nvidia-cuda-nvrtc" >&2
  exit 1
fi
export LD_LIBRARY_PATH="$NVRTC_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HOIST_REQUIRE_NVRTC=1

echo "== cargo test (workspace, release profile)"
cargo test --workspace --release --locked

echo "== Python package: pip install ./python in a fresh venv, then pytest python/tests"
# The package builds with maturin (fetched by pip) against the workspace crates; its own
# Cargo workspace keeps the extension out of `cargo test --workspace`.
PY_TMP=$(mktemp -d)
trap 'rm -rf "$PY_TMP"' EXIT
python3 -m venv "$PY_TMP/venv"
export CARGO_TARGET_DIR="${HOIST_PY_TARGET_DIR:-$PWD/target/python-ext}"
"$PY_TMP/venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python numpy safetensors pytest
unset CARGO_TARGET_DIR
py_rc=0
"$PY_TMP/venv/bin/python" -m pytest -q python/tests || py_rc=$?
if [ "$py_rc" -eq 5 ]; then
  echo "pytest collected no tests"; py_rc=0
fi
exit "$py_rc"
