//! `hoist bench` never destroys a user's data: it writes synthetic checkpoints only into a new or
//! empty directory or one it made, removes only the files it wrote, validates every argument
//! before writing anything, and draws progress bars only on a terminal. End to end through the
//! binary.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_error_line, bench_tiny, hoist, stderr, success};

/// A refusal: exit status 1, and the last stderr line is one `error:` line naming `dir`.
fn assert_refused(out: &Output, dir: &Path, why: &str) {
    let dir = dir.to_str().expect("temp paths are UTF-8");
    assert_error_line(out, "bench", &[dir, why]);
}

/// Every file under `dir` (relative name → bytes), to prove a directory was left untouched.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        out.insert(name, std::fs::read(e.path()).unwrap());
    }
    out
}

fn names(dir: &Path) -> Vec<String> {
    snapshot(dir).into_keys().collect()
}

#[test]
fn clean_never_removes_a_users_files() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory of the user's own, not a checkpoint at all.
    let dir = tmp.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"my notes").unwrap();
    let before = snapshot(&dir);
    let out = bench_tiny(&dir, &["--clean"]);
    assert_refused(&out, &dir, "did not make");
    assert_eq!(snapshot(&dir), before, "the user's directory changed");

    // A file the user adds to a hoist-made checkpoint directory survives --clean, and so does
    // the directory holding it.
    let made = tmp.path().join("made");
    success(&bench_tiny(&made, &[]));
    std::fs::write(made.join("config.json"), b"{}").unwrap();
    let out = bench_tiny(&made, &["--clean"]);
    success(&out);
    assert_eq!(names(&made), ["config.json"]);
    assert_eq!(std::fs::read(made.join("config.json")).unwrap(), b"{}");
}

#[test]
fn a_real_checkpoint_is_refused_and_left_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("Llama-real");
    std::fs::create_dir(&dir).unwrap();
    // What a hub checkpoint directory holds: the same shard and index names `--synthetic tiny`
    // writes, plus the model's config; no hoist marker.
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let tensors = spec.tensors();
    let (a, b) = tensors.split_at(tensors.len() / 2);
    let shard_names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut map = serde_json::Map::new();
    for (name, part) in shard_names.iter().zip([a, b]) {
        hoist_synth::write_safetensors(&dir.join(name), part, &[], |i, off, buf| {
            hoist_synth::fill_random(buf, 99, i as u64, off)
        })
        .unwrap();
        for t in part {
            map.insert(t.name.clone(), (*name).into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type": "llama"}"#).unwrap();
    let before = snapshot(&dir);

    for extra in [&[][..], &["--clean"][..]] {
        let out = bench_tiny(&dir, extra);
        assert_refused(&out, &dir, "did not make");
        assert_eq!(snapshot(&dir), before, "the checkpoint changed ({extra:?})");
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let bad_args: [&[&str]; 5] = [
        &["--threads", "0"],
        &["--chunk-mib", "0"],
        &["--queue-depth", "0"],
        &["--repeat", "0"],
        // Checked before the GPU is looked for, so this holds on machines without one too.
        &["--device", "cuda:0", "--ring-mib", "0"],
    ];
    for bad in bad_args {
        let d = dir.to_str().unwrap();
        let mut args = vec!["bench", "--synthetic", "tiny", "--json", "--dir", d];
        args.extend_from_slice(bad);
        let out = hoist(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{bad:?}: {err}");
        let flag = bad[bad.len() - 2];
        assert!(err.contains(flag), "{bad:?}: the error names {flag}: {err}");
        assert!(
            !dir.exists(),
            "{bad:?} wrote {} before failing",
            dir.display()
        );
    }
}

#[test]
fn a_hoist_made_directory_is_reused_and_clean_removes_exactly_its_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    success(&bench_tiny(&dir, &[]));
    let made = snapshot(&dir);
    let mut expected: Vec<&str> = vec![
        ".hoist-synthetic.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ];
    expected.sort();
    assert_eq!(names(&dir), expected, "what hoist wrote, marker last");
    let marker: serde_json::Value = serde_json::from_slice(&made[".hoist-synthetic.json"]).unwrap();
    assert_eq!(marker["preset"], "tiny");
    let listed: Vec<&str> = marker["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{marker}");

    // Reused, not rewritten: every file keeps its modification time.
    let mtimes = |d: &Path| -> Vec<_> {
        expected
            .iter()
            .map(|n| std::fs::metadata(d.join(n)).unwrap().modified().unwrap())
            .collect()
    };
    let first = mtimes(&dir);
    success(&bench_tiny(&dir, &[]));
    assert_eq!(mtimes(&dir), first, "the checkpoint was rewritten");
    assert_eq!(snapshot(&dir), made);

    // hoist created the directory, so --clean removes it once it holds nothing else.
    success(&bench_tiny(&dir, &["--clean"]));
    assert!(!dir.exists(), "{:?}", dir.exists().then(|| names(&dir)));

    // An empty directory the user made is kept, empty.
    std::fs::create_dir(&dir).unwrap();
    success(&bench_tiny(&dir, &["--clean"]));
    assert!(dir.is_dir());
    assert!(names(&dir).is_empty(), "{:?}", names(&dir));
}

/// Runs `hoist args` with stderr on a pseudo-terminal (stdout piped); returns what the terminal
/// showed.
fn stderr_on_a_terminal(args: &[&str]) -> String {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors into the given ints; name and termios may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            OwnedFd::from_raw_fd(slave),
        )
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .env("TERM", "xterm")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("the hoist binary runs");
    // The Command's copy of the slave end is gone with the spawn; reading the master ends (EIO)
    // once the child exits.
    let reader = std::thread::spawn(move || {
        let mut master = master;
        let mut seen = Vec::new();
        let _ = master.read_to_end(&mut seen);
        seen
    });
    let status = child.wait().unwrap();
    let seen = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(status.success(), "{seen}");
    seen
}

#[test]
fn progress_bars_draw_on_a_terminal_and_nothing_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("synth");
    let args = [
        "bench",
        "--synthetic",
        "tiny",
        "--repeat",
        "1",
        "--dir",
        dir.to_str().unwrap(),
        "--clean",
    ];
    let shown = stderr_on_a_terminal(&args);
    assert!(
        shown.contains("writing synthetic checkpoint"),
        "no bar while writing: {shown:?}"
    );
    assert!(
        shown.contains("baseline: per-tensor mmap"),
        "no bar while benchmarking: {shown:?}"
    );

    // stderr piped: the same run draws no bar (no carriage returns, no escape sequences).
    let out = hoist(&args);
    success(&out);
    let err = stderr(&out);
    assert!(
        !err.contains('\r') && !err.contains('\x1b') && !err.contains("writing synthetic"),
        "{err:?}"
    );
}
