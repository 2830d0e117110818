//! End-to-end tests through the `hoist` binary.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::python::{python_with, run_script};
use common::{bench_tiny, hoist, stdout_json};

/// Python with the packages tests/independent.py uses, or None (a skip).
fn python() -> Option<&'static str> {
    python_with(&["safetensors", "numpy", "gguf", "xxhash"])
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/independent.py")
}

/// Checkpoints written by the reference libraries (tests/independent.py make), fresh random data.
fn independent_checkpoints(py: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    run_script(py, &script(), &[OsStr::new("make"), dir.path().as_os_str()]);
    dir
}

#[test]
fn load_and_inspect_agree_with_independent_readers() {
    let Some(py) = python() else { return };
    let dir = independent_checkpoints(py);
    let cases = [
        ("single.safetensors", "single.safetensors"),
        ("sharded", "sharded"),
        ("sharded/model.safetensors.index.json", "sharded"),
        ("model.gguf", "model.gguf"),
    ];
    for (path, reference) in cases {
        let p = dir.path().join(path);
        let reference = dir.path().join(reference);
        let sums = run_script(py, &script(), &[OsStr::new("sums"), reference.as_os_str()]);
        let want: BTreeMap<String, String> = serde_json::from_slice(&sums).unwrap();
        for backend in ["auto", "uring", "pread", "mmap"] {
            let doc = stdout_json(&hoist(&[
                "load",
                p.to_str().unwrap(),
                "--checksum",
                "--json",
                "--backend",
                backend,
            ]));
            let got: BTreeMap<String, String> =
                serde_json::from_value(doc["checksums"].clone()).unwrap();
            assert_eq!(got, want, "{path} with --backend {backend}");
            assert_eq!(doc["tensors"].as_u64(), Some(want.len() as u64));
        }
        let doc = stdout_json(&hoist(&["inspect", p.to_str().unwrap(), "--json"]));
        let names: Vec<&str> = doc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        let mut names_sorted = names.clone();
        names_sorted.sort();
        assert_eq!(
            names_sorted,
            want.keys().map(String::as_str).collect::<Vec<_>>(),
            "{path}"
        );
    }
}

#[test]
fn gguf_metadata_and_alignment_are_reported() {
    let Some(py) = python() else { return };
    let dir = independent_checkpoints(py);
    let doc = stdout_json(&hoist(&[
        "inspect",
        dir.path().join("model.gguf").to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(doc["metadata"]["general.name"], "independent test model");
    assert_eq!(doc["metadata"]["tokenizer.ggml.tokens"][3], "wörld");
    assert_eq!(doc["files"][0]["format"]["alignment"], 64);
    let q8 = doc["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "blk.0.ffn_up.weight")
        .unwrap();
    assert_eq!(q8["len"], 16 * 96 / 32 * 34);
    let text = hoist(&["inspect", dir.path().join("model.gguf").to_str().unwrap()]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("Q4_0"));
}

#[test]
fn malformed_files_fail_with_one_clear_line() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/tests/corpus");
    let mut checked = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        for cmd in ["inspect", "load"] {
            let out = hoist(&[cmd, p.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{cmd} {name} succeeded");
            assert_eq!(out.status.code(), Some(1), "{cmd} {name}: {err}");
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{cmd} {name}: one line, got: {err}"
            );
            assert!(err.starts_with("error: "), "{cmd} {name}: {err}");
            assert!(
                !err.contains("panicked") && !err.contains("backtrace"),
                "{cmd} {name}: {err}"
            );
            // A directory case names a file inside it or the directory itself.
            let stem = name.split('.').next().unwrap();
            assert!(
                err.contains(stem),
                "{cmd} {name}: message does not name the file: {err}"
            );
        }
        checked += 1;
    }
    assert!(checked >= 20, "the malformed corpus has {checked} cases");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = hoist(&["load", "/nonexistent/model.safetensors"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/model.safetensors") && err.contains("No such file"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 3).unwrap();
    let out = hoist(&["load", root.to_str().unwrap(), "--filter", "no.such.*"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no.such.*") && err.contains("matches no tensor"),
        "{err}"
    );

    let out = hoist(&["load", root.to_str().unwrap(), "--chunk-mib", "0"]);
    assert!(!out.status.success());
    let out = hoist(&["load", root.to_str().unwrap(), "--device", "tpu"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a device"));
}

#[test]
fn filters_load_a_layer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 4).unwrap();
    let doc = stdout_json(&hoist(&[
        "load",
        root.to_str().unwrap(),
        "--filter",
        "model.layers.1.*",
        "--json",
        "--checksum",
    ]));
    let sums = doc["checksums"].as_object().unwrap();
    assert_eq!(sums.len(), 9);
    assert!(sums.keys().all(|k| k.starts_with("model.layers.1.")));
}

#[test]
fn bench_runs_every_loader_on_a_synthetic_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for cold in [false, true] {
        let extra: &[&str] = if cold { &["--cold"] } else { &[] };
        let doc = stdout_json(&bench_tiny(dir.path(), extra));
        let rows = doc["results"].as_array().unwrap();
        assert_eq!(rows.len(), 6);
        assert!(rows
            .iter()
            .all(|r| r["gbps_median"].as_f64().unwrap() > 0.0));
        assert_eq!(doc["cold"], cold);
    }
    let out = hoist(&["bench", "--synthetic", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("choose one of"));
}

/// The memory bound: loading a 2 GB checkpoint to host memory peaks at most 128 MiB
/// above the checkpoint's size.
#[test]
fn peak_rss_of_a_2gb_load_stays_within_128mib_of_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = hoist_synth::preset("small").unwrap().spec;
    spec.layers = 90;
    let bytes = spec.total_bytes();
    assert!(bytes > 2_000_000_000);
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 6).unwrap();
    for backend in ["auto", "uring", "pread"] {
        let doc = stdout_json(&hoist(&[
            "load",
            root.to_str().unwrap(),
            "--json",
            "--backend",
            backend,
        ]));
        let peak = doc["peak_rss_bytes"].as_u64().unwrap();
        assert_eq!(doc["bytes"].as_u64(), Some(bytes));
        assert!(
            peak <= bytes + (128 << 20),
            "{backend}: peak RSS {peak} for {bytes} bytes"
        );
    }
}

/// Without a CUDA driver, GPU devices are one clear error line, not a panic.
#[test]
fn cuda_without_a_driver_is_a_clear_error() {
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if has_driver {
        eprintln!("skipping: this machine has a CUDA driver; the GPU path is tested by bench/gpu");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 8).unwrap();
    for args in [
        vec!["load", root.to_str().unwrap(), "--device", "cuda:0"],
        vec![
            "bench",
            "--synthetic",
            "tiny",
            "--device",
            "cuda:0",
            "--dir",
            dir.path().to_str().unwrap(),
        ],
    ] {
        let out = hoist(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        let last = err.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ") && last.contains("cuda:0") && last.contains("driver"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A GGUF tensor of a ggml type hoist does not know is an error only for that tensor: the rest
/// load, the report names it, and asking for it by name is a clear error.
#[test]
fn unknown_ggml_types_are_skipped_and_reported() {
    use hoist_synth::gguf::{write_gguf, GgufTensor};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("odd.gguf");
    let known = vec![7u8; 4 * 8];
    let unknown = vec![9u8; 64];
    let tensors = [
        GgufTensor {
            name: "known",
            shape: &[8],
            ggml_type: 0,
            data: &known,
        },
        GgufTensor {
            name: "future",
            shape: &[64],
            ggml_type: 9999,
            data: &unknown,
        },
    ];
    write_gguf(&path, &[], &tensors, 32).unwrap();
    let p = path.to_str().unwrap();
    let doc = stdout_json(&hoist(&["load", p, "--json", "--checksum"]));
    assert_eq!(doc["tensors"], 1);
    assert_eq!(doc["skipped"][0]["name"], "future");
    let text = hoist(&["load", p]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("skipped: tensor 'future'"));
    let out = hoist(&["load", p, "--filter", "future"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("future") && err.contains("odd.gguf"),
        "{err}"
    );
}

#[test]
fn run_help_lists_every_environment_override() {
    let out = hoist(&["run", "--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8_lossy(&out.stdout);
    let footer = help
        .split_once("Environment overrides")
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no environment footer in:\n{help}"));
    for (name, what) in hoist_runtime::gpu::ENV_OVERRIDES {
        let line = footer
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} missing from the footer:\n{footer}"));
        assert!(line.ends_with(what), "{line:?} does not say {what:?}");
    }
}

#[test]
fn memory_budgets_are_sizes_and_nonsense_is_refused_before_loading() {
    let out = hoist(&["run", "no-such-model", "--gpu-memory", "lots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("--gpu-memory") && err.contains("24GiB"),
        "{err}"
    );
    let out = hoist(&["serve", "--host-memory=-3G"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--host-memory"),
        "{err}"
    );
    let help = String::from_utf8_lossy(&hoist(&["run", "--help"]).stdout).into_owned();
    assert!(help.contains("--gpu-memory <SIZE>") && help.contains("--host-memory <SIZE>"));
}
