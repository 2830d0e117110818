//! Helpers shared by the CLI's test files: running the built binary and checking what it
//! printed, the arguments of `hoist run` and `hoist bench`, the tiny runnable model directory,
//! and the reference Python.

// Each test file uses its own subset of these.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// The format crate's tests hold the one copy of the reference-Python helpers.
#[path = "../../../format/tests/common/python.rs"]
pub mod python;

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

/// Runs the binary with `args` and an empty standard input, output captured.
pub fn hoist<S: AsRef<OsStr>>(args: &[S]) -> Output {
    hoist_with_stdin(args, "")
}

/// Its stdout as one JSON document, after checking that it succeeded.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&success(out)).expect("stdout is one JSON document")
}

/// A failure as a user should see it: exit status 1, and a last stderr line that is one
/// `error:` line containing every one of `needles`; `what` names the run in messages.
pub fn assert_error_line(out: &Output, what: &str, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{what}: {err}");
    for n in needles {
        assert!(last.contains(n), "{what}: {n:?} not in {err}");
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
}

/// `run MODEL --device cpu` then `extra`.
pub fn cpu_args(model: &str, extra: &[&str]) -> Vec<String> {
    ["run", model, "--device", "cpu"]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
}

/// A greedy CPU run of at most `max_tokens` tokens: `run MODEL --device cpu --temperature 0
/// --max-tokens N` then `extra`.
pub fn greedy_args(model: &str, max_tokens: usize, extra: &[&str]) -> Vec<String> {
    let n = max_tokens.to_string();
    let greedy = ["--temperature", "0", "--max-tokens", n.as_str()];
    cpu_args(model, &[&greedy[..], extra].concat())
}

/// `bench --synthetic tiny --repeat 1 --json --dir DIR` plus `extra`.
pub fn bench_tiny(dir: &Path, extra: &[&str]) -> Output {
    let dir = dir.to_str().expect("temp paths are UTF-8");
    let tiny = ["bench", "--synthetic", "tiny", "--repeat", "1", "--json"];
    hoist(&[&tiny[..], &["--dir", dir], extra].concat())
}
