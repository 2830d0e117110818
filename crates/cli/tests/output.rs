//! End-to-end tests of what `hoist` prints: closed pipes, non-regular files, names of types and
//! formats, error lines, flags that do not apply, `--verbose`, `--version` and `--help`.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hoist_format::DType;
use hoist_synth::gguf::GgufTensor;
use hoist_synth::TensorSpec;

use common::{stderr, stdout_json};

fn hoist() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hoist"));
    // The default filter is part of what these tests check.
    c.env_remove("HOIST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    hoist().args(args).output().expect("the hoist binary runs")
}

/// Starts `hoist args` with stdout and stderr piped.
fn spawn(args: &[&str]) -> Child {
    hoist()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the hoist binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A safetensors file of `n` four-byte U8 tensors: its table and checksums run to far more
/// than a pipe buffer (64 KiB), so a reader that leaves early is always noticed by the writer.
fn many_tensors(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("many.safetensors");
    let tensors: Vec<TensorSpec> = (0..n)
        .map(|i| TensorSpec {
            name: format!("model.layers.{i:06}.weight"),
            dtype: DType::U8,
            shape: vec![4],
        })
        .collect();
    hoist_synth::write_safetensors(&path, &tensors, &[], |_, _, buf| buf.fill(7)).unwrap();
    path
}

/// A GGUF v3 file with an F32 and a Q4_0 tensor, data bytes 0xee.
fn small_gguf() -> Vec<u8> {
    let f32_data = [0xeeu8; 4 * 64];
    let q4_data = [0xeeu8; 2 * 18];
    let tensors = [
        GgufTensor {
            name: "a",
            shape: &[64],
            ggml_type: 0,
            data: &f32_data,
        },
        GgufTensor {
            name: "b",
            shape: &[2, 32],
            ggml_type: 2,
            data: &q4_data,
        },
    ];
    hoist_synth::gguf::gguf_bytes(&[], &tensors, 32).0
}

/// [`small_gguf`], changed by `edit`, written as `dir/m.gguf`.
fn gguf_file(dir: &Path, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let path = dir.join("m.gguf");
    let mut bytes = small_gguf();
    edit(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `hoist args`, reads one line of its stdout, then closes the pipe while it still has
/// more to write; returns the exit status and stderr.
fn first_line_then_close(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = spawn(args);
    let mut line = String::new();
    {
        let mut r = BufReader::new(child.stdout.take().unwrap());
        r.read_line(&mut line).unwrap();
    }
    assert!(!line.is_empty(), "hoist {args:?} printed nothing");
    let out = child.wait_with_output().unwrap();
    (out.status, stderr(&out))
}

fn assert_quiet_pipe_end(args: &[&str]) {
    let (status, err) = first_line_then_close(args);
    assert!(!err.contains("panicked"), "hoist {args:?}: {err}");
    assert_ne!(status.code(), Some(101), "hoist {args:?}: {err}");
    // As `cat` or `seq`: ended by SIGPIPE, which shells report as 141 and do not print.
    assert_eq!(
        status.signal(),
        Some(libc::SIGPIPE),
        "hoist {args:?}: {status:?} {err}"
    );
    assert!(err.is_empty(), "hoist {args:?} printed on stderr: {err}");
}

#[test]
fn closed_stdout_ends_inspect_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let p = many_tensors(dir.path(), 5000);
    assert_quiet_pipe_end(&["inspect", s(&p)]);
    assert_quiet_pipe_end(&["inspect", s(&p), "--json"]);
}

#[test]
fn closed_stdout_ends_load_checksum_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let p = many_tensors(dir.path(), 5000);
    assert_quiet_pipe_end(&["load", s(&p), "--checksum", "--backend", "pread"]);
}

#[test]
fn closed_stdout_ends_bench_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let synth = dir.path().join("synth");
    // The first line comes before any run; the table after them, into the closed pipe.
    let (status, err) = first_line_then_close(&[
        "bench",
        "--synthetic",
        "tiny",
        "--dir",
        s(&synth),
        "--repeat",
        "1",
    ]);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(status.code(), Some(101), "{err}");
    assert_eq!(status.signal(), Some(libc::SIGPIPE), "{status:?} {err}");
}

#[test]
fn a_full_stdout_is_an_error_not_a_panic() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipping: no /dev/full");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = many_tensors(dir.path(), 10);
    for args in [vec!["inspect", s(&p)], vec!["load", s(&p), "--checksum"]] {
        let out = hoist()
            .args(&args)
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.starts_with("error: cannot write to stdout") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

/// Runs `hoist args`, output captured; kills it and fails when it takes longer than 20 s (as it
/// would, waiting on a FIFO).
fn run_unless_hung(args: &[&str]) -> Output {
    let limit = Duration::from_secs(20);
    let mut child = spawn(args);
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hoist {args:?} still running after {limit:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

#[test]
fn a_fifo_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["x.safetensors", "x.gguf", "model.safetensors.index.json"] {
        let fifo = dir.path().join(name);
        mkfifo(&fifo);
        for cmd in ["inspect", "load"] {
            let out = run_unless_hung(&[cmd, s(&fifo)]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{cmd} {name}: {err}");
            assert!(
                err.contains(s(&fifo)) && err.contains("not a regular file"),
                "{cmd} {name}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        std::fs::remove_file(&fifo).unwrap();
    }
}

#[test]
fn a_fifo_shard_is_refused_not_waited_on() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"w": "a.safetensors"}}"#,
    )
    .unwrap();
    let shard = dir.path().join("a.safetensors");
    mkfifo(&shard);
    let out = run_unless_hung(&["inspect", s(dir.path())]);
    let err = stderr(&out);
    assert!(
        err.contains(s(&shard)) && err.contains("not a regular file"),
        "{err}"
    );
}

#[test]
fn json_dtypes_are_type_names() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = gguf_file(dir.path(), |_| {});
    let st = dir.path().join("m.safetensors");
    let specs =
        [("e4m3", "F8_E4M3"), ("bf", "BF16"), ("e8m0", "F8_E8M0")].map(|(n, d)| TensorSpec {
            name: n.into(),
            dtype: DType::from_safetensors(d).unwrap(),
            shape: vec![2, 2],
        });
    hoist_synth::write_safetensors(&st, &specs, &[], |_, _, b| b.fill(0)).unwrap();

    for (path, want) in [
        (&gguf, vec![("a", "F32"), ("b", "Q4_0")]),
        (
            &st,
            vec![("e4m3", "F8_E4M3"), ("bf", "BF16"), ("e8m0", "F8_E8M0")],
        ),
    ] {
        let doc = stdout_json(&run(&["inspect", s(path), "--json"]));
        for (name, dtype) in want {
            let t = doc["tensors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .unwrap();
            assert_eq!(t["dtype"], dtype, "{}: {t}", path.display());
        }
    }
}

#[test]
fn file_formats_are_printed_for_people() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = gguf_file(dir.path(), |_| {});
    let out = run(&["inspect", s(&gguf)]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("GGUF v3, alignment 32"), "{text}");
    assert!(!text.contains("Gguf {"), "{text}");

    let st = many_tensors(dir.path(), 1);
    let text = stdout(&run(&["inspect", s(&st)]));
    let file_line = text.lines().find(|l| l.starts_with("file 0:")).unwrap();
    assert!(file_line.ends_with(", safetensors)"), "{file_line}");
}

#[test]
fn bad_magic_is_shown_as_text_and_hex() {
    let dir = tempfile::tempdir().unwrap();
    let p = gguf_file(dir.path(), |bytes| bytes[3] = b'X');
    let err = stderr(&run(&["inspect", s(&p)]));
    assert!(err.contains(r#"bad magic "GGUX" (47 47 55 58)"#), "{err}");

    // Not text at all: escaped, never raw bytes on the terminal.
    std::fs::write(&p, [0u8, 0x01, 0xff, b'G', 0, 0, 0, 0]).unwrap();
    let err = stderr(&run(&["inspect", s(&p)]));
    assert!(
        err.contains(r#"bad magic "\x00\x01\xffG" (00 01 ff 47)"#),
        "{err}"
    );
}

#[test]
fn error_lines_name_the_path_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.safetensors");
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUXxxxxxxxxxxxxxxxxxxxxxx").unwrap();
    for p in [&missing, &bad] {
        for cmd in ["inspect", "load"] {
            let out = run(&[cmd, s(p)]);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{err}");
            assert_eq!(err.matches(s(p)).count(), 1, "{cmd}: {err}");
        }
    }
    let err = stderr(&run(&["load", s(&missing)]));
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn a_lying_tensor_count_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Two tensor infos are there; the header claims five, so the parser reads on into the
    // padding and the 0xee data bytes.
    let p = gguf_file(dir.path(), |bytes| {
        bytes[8..16].copy_from_slice(&5u64.to_le_bytes())
    });
    for cmd in ["inspect", "load"] {
        let err = stderr(&run(&[cmd, s(&p)]));
        assert!(
            err.contains("tensor count 5 is larger than the file can hold"),
            "{cmd}: {err}"
        );
        let longest_number = err
            .split(|c: char| !c.is_ascii_digit())
            .map(str::len)
            .max()
            .unwrap_or(0);
        assert!(longest_number < 10, "{cmd}: absurd figure in: {err}");
    }
}

#[test]
fn gpu_flags_are_refused_for_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let p = many_tensors(dir.path(), 3);
    for flag in [
        ["--gpu-path", "cufile"],
        ["--gpu-layout", "regions"],
        ["--ring-mib", "64"],
    ] {
        let out = run(&["load", s(&p), flag[0], flag[1]]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flag:?} was accepted");
        assert!(stdout(&out).is_empty(), "{flag:?}: it loaded");
        assert!(
            err.contains(flag[0]) && err.contains("--device cuda"),
            "{flag:?}: {err}"
        );
    }
    // Before any work: no synthetic checkpoint is written.
    let synth = dir.path().join("synth");
    let out = run(&[
        "bench",
        "--device",
        "cpu",
        "--gpu-path",
        "cufile",
        "--dir",
        s(&synth),
    ]);
    assert!(
        !out.status.success(),
        "bench accepted --gpu-path on the CPU"
    );
    assert!(!synth.exists(), "bench wrote a checkpoint first");
    assert!(stderr(&out).contains("--gpu-path"), "{}", stderr(&out));
    // The CPU load itself still works.
    let out = run(&["load", s(&p)]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn verbose_enables_debug_logs_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let p = many_tensors(dir.path(), 3);
    for args in [
        vec!["inspect", s(&p), "-v"],
        vec!["load", s(&p), "--verbose"],
        vec!["-v", "inspect", s(&p)],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains("DEBUG"), "{args:?}: {}", stderr(&out));
    }
    let out = run(&["inspect", s(&p)]);
    assert!(!stderr(&out).contains("DEBUG"), "{}", stderr(&out));
    // HOIST_LOG wins over -v.
    let out = hoist()
        .args(["inspect", s(&p), "-v"])
        .env("HOIST_LOG", "error")
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("DEBUG"), "{}", stderr(&out));

    // `run` keeps its own --verbose, which also turns the logs on (it fails later: no model).
    let missing = dir.path().join("no-model");
    for v in ["-v", "--verbose"] {
        let out = run(&["run", s(&missing), "--device", "cpu", "--prompt", "hi", v]);
        let err = stderr(&out);
        assert_ne!(out.status.code(), Some(2), "a usage error: {err}");
        assert!(err.contains("DEBUG"), "run {v}: {err}");
    }
    let help = stdout(&run(&["bench", "--help"]));
    assert!(help.contains("-v, --verbose"), "{help}");
}

#[test]
fn version_names_the_commit() {
    let out = run(&["--version"]);
    let text = stdout(&out);
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    assert!(
        text.starts_with(&format!("hoist {} ({commit})", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
}

#[test]
fn help_summary_names_every_subcommand() {
    let out = run(&["--help"]);
    let text = stdout(&out);
    let summary = text.lines().next().unwrap_or_default().to_lowercase();
    for cmd in ["inspect", "load", "bench", "run"] {
        assert!(summary.contains(cmd), "'{summary}' omits {cmd}");
    }
}
