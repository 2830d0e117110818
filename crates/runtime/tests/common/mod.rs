//! Shared by the GPU test files: the fixtures' directory and the skip where no GPU exists.

use std::path::{Path, PathBuf};

/// The runtime's test fixtures.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Whether a CUDA GPU is here; without one, says `test` is skipped and why.
pub fn gpu_or_skip(test: &str) -> bool {
    match hoist_runtime::cuda_available() {
        Ok(_) => true,
        Err(why) => {
            eprintln!("skipped {test}: no CUDA GPU ({why})");
            false
        }
    }
}
