//! Helpers shared by this crate's integration tests.

use std::path::{Path, PathBuf};

use hoist_format::DType;
use hoist_synth::{fill_random, write_safetensors, TensorSpec};

/// Writes `dir/name`: one U8 tensor per entry of `sizes` (named `t00`, `t01`, …), filled with
/// random bytes keyed by `seed`.
pub fn u8_checkpoint(dir: &Path, name: &str, sizes: &[u64], seed: u64) -> PathBuf {
    let specs: Vec<TensorSpec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| TensorSpec {
            name: format!("t{i:02}"),
            dtype: DType::U8,
            shape: vec![n],
        })
        .collect();
    let path = dir.join(name);
    write_safetensors(&path, &specs, &[], |i, off, buf| {
        fill_random(buf, seed, i as u64, off)
    })
    .unwrap();
    path
}

/// Log capture, shared with the engine's unit tests (`src/engine/tests.rs` includes it by path).
#[path = "capture.rs"]
mod capture;
#[allow(unused_imports)] // not every test binary logs
pub use capture::capture_logs;
