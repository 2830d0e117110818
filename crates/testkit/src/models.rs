//! The runtime's tiny model fixtures (`crates/runtime/tests/fixtures/`, made by its
//! `make_reference.py`), for the tests of the crates built on the runtime: the engine, the
//! server, the CLI.

use std::path::{Path, PathBuf};

/// The files of a chat-ready model, relative to [`runtime_fixtures`]: the Llama fixture's
/// configuration and weights with the fixture tokenizer and its chat template.
pub const CHAT_MODEL_FILES: [&str; 4] = [
    "llama/config.json",
    "llama/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
];

/// The runtime's fixture directory.
pub fn runtime_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures")
}

/// Copies [`CHAT_MODEL_FILES`] into `dir` (side by side, as a Hugging Face model directory).
pub fn copy_chat_model(dir: &Path) -> std::io::Result<()> {
    let from = runtime_fixtures();
    for file in CHAT_MODEL_FILES {
        let src = from.join(file);
        let name = src.file_name().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{file}: no file name"),
            )
        })?;
        std::fs::copy(&src, dir.join(name))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    }
    Ok(())
}

/// A temporary directory holding a copy of the chat-ready model ([`copy_chat_model`]).
///
/// # Panics
/// When the fixtures cannot be copied (a test helper: the test fails there).
pub fn chat_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    copy_chat_model(dir.path()).expect("the runtime's fixtures");
    dir
}
