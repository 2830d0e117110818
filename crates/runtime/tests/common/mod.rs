//! Shared by the runtime's test files: the fixtures' directory, the skip where no GPU exists,
//! the CPU reference against a fixture's transformers logits.

// Each test file uses a part of this module.
#![allow(dead_code)]

pub mod cpu_reference;
pub mod gguf_edit;

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
