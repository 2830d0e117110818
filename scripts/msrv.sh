#!/usr/bin/env bash
# Checks that the workspace and the Python package's workspace build with the oldest Rust they
# claim: `rust-version` in Cargo.toml (README's "Install" states the same). It installs that
# toolchain with rustup (minimal profile) and runs `cargo check --locked` on every target (tests
# and benches too, so a new dev-dependency that needs a newer Rust shows up here). Check, not
# build: a few minutes on 2 cores. scripts/test.sh runs it; it also runs alone.
set -euo pipefail
cd "$(dirname "$0")/.."

msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
py_msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' python/Cargo.toml)
if [ -z "$msrv" ]; then
  echo "error: no rust-version line in Cargo.toml's [workspace.package]" >&2
  exit 1
fi
if [ "$py_msrv" != "$msrv" ]; then
  echo "error: python/Cargo.toml says rust-version \"$py_msrv\", Cargo.toml \"$msrv\": make them the same" >&2
  exit 1
fi
if ! command -v rustup >/dev/null; then
  echo "error: rustup not found: the MSRV check installs Rust $msrv with it (https://rustup.rs)" >&2
  exit 1
fi

echo "== MSRV: cargo +$msrv check --locked (workspace and python/, all targets)"
rustup toolchain install "$msrv" --profile minimal --no-self-update
# Its own target directories: a different compiler, so nothing to share with the main build.
CARGO_TARGET_DIR="$PWD/target/msrv" cargo "+$msrv" check --locked --workspace --all-targets
(cd python && CARGO_TARGET_DIR="$PWD/../target/msrv-python" cargo "+$msrv" check --locked --all-targets)
