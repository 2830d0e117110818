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

echo "== cargo test (workspace, release profile)"
cargo test --workspace --release --locked
