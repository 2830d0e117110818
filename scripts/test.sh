#!/usr/bin/env bash
# Runs every test of the project: the Rust workspace (unit, integration, property and end-to-end
# tests through the CLI), the independent-reader checks, which need Python's reference packages,
# and the Python package's tests; and checks that the oldest Rust the project claims still builds
# it. README.md gives this command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything Python happens in one throwaway virtualenv (scripts/python-env.sh says why); the
# Rust tests find its python3 first on PATH.
source scripts/python-env.sh
VENV_TMP=$(mktemp -d)
trap 'rm -rf "$VENV_TMP"' EXIT
hoist_python_env "$VENV_TMP/venv"

bash scripts/msrv.sh

echo "== cargo test (workspace, release profile)"
cargo test --workspace --release --locked

echo "== Python package: pip install ./python into the venv, then pytest python/tests"
# The package builds with maturin (fetched by pip) against the workspace crates; its own
# Cargo workspace keeps the extension out of `cargo test --workspace`.
CARGO_TARGET_DIR="${HOIST_PY_TARGET_DIR:-$PWD/target/python-ext}" \
  python3 -m pip install --quiet --disable-pip-version-check ./python pytest
py_rc=0
python3 -m pytest -q python/tests || py_rc=$?
if [ "$py_rc" -eq 5 ]; then
  echo "pytest collected no tests"; py_rc=0
fi
exit "$py_rc"
