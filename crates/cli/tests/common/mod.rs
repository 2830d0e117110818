//! Helpers shared by the `hoist run` test files: the tiny runnable model directory and running
//! the built binary with piped standard streams.

// Each test file uses its own subset of these.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The runtime's test fixtures (tiny models, the fixture tokenizer).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime/tests/fixtures")
}

/// The Llama fixture (weights and config) with the fixture tokenizer beside it: its 288 tokens
/// are exactly the model's vocabulary. `with_config` false leaves out tokenizer_config.json
/// (no chat template, no BOS).
pub fn model_dir(with_config: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let f = fixtures();
    let mut files = vec![
        f.join("llama/config.json"),
        f.join("llama/model.safetensors"),
        f.join("tokenizer/tokenizer.json"),
    ];
    if with_config {
        files.push(f.join("tokenizer/tokenizer_config.json"));
    }
    for src in files {
        std::fs::copy(&src, dir.path().join(src.file_name().unwrap())).unwrap();
    }
    dir
}

/// Runs the binary with `args`, `stdin` written to its standard input, output captured.
pub fn hoist_with_stdin<S: AsRef<OsStr>>(args: &[S], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hoist binary runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Its stderr, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Its stdout, after checking that it succeeded.
pub fn success(out: &Output) -> String {
    assert!(out.status.success(), "hoist failed: {}", stderr(out));
    String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout")
}
