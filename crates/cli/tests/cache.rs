//! `--cache auto|keep|bypass` end to end: the report names the policy that ran and why, bad
//! values are clear errors, and a keep load of an evicted checkpoint leaves it cached for the
//! next load (a bypass one does not). Self-contained: the shared helpers are being reworked.

use std::path::PathBuf;
use std::process::Output;

/// Runs the built binary with `args`.
fn hoist(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_hoist"))
        .args(args)
        .output()
        .expect("the hoist binary runs")
}

/// Its stdout as JSON, after checking that it succeeded.
fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "hoist failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// The tiny synthetic checkpoint (2 shards, ~2 MB) on the disk that holds the target
/// directory (not tmpfs, where eviction is a no-op).
fn checkpoint(seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), seed).unwrap();
    (dir, root)
}

#[test]
fn the_report_names_the_policy_and_why() {
    let (_dir, root) = checkpoint(21);
    let path = root.to_str().unwrap();
    for (args, policy, reason) in [
        (&["--cache", "keep"][..], "keep", "asked"),
        (&["--cache", "bypass"], "bypass", "asked"),
        (
            &["--cache", "bypass", "--backend", "pread"],
            "keep",
            "bypass asked, but backend pread reads through the page cache",
        ),
        (&["--cache-headroom-gib", "0"], "keep", "auto: "),
        (&["--cache-headroom-gib", "1048576"], "bypass", "auto: "),
    ] {
        let mut all = vec!["load", path, "--json"];
        all.extend_from_slice(args);
        let doc = json(&hoist(&all));
        let cache = &doc["cache"];
        assert_eq!(cache["policy"], policy, "{args:?}: {cache}");
        let why = cache["reason"].as_str().unwrap();
        assert!(why.starts_with(reason), "{args:?}: {cache}");
        let asked = args
            .iter()
            .position(|a| *a == "--cache")
            .map_or("auto", |i| args[i + 1]);
        assert_eq!(cache["asked"], asked, "{args:?}: {cache}");
        if asked == "auto" {
            let verdict = if policy == "keep" {
                " fits in "
            } else {
                " does not fit in "
            };
            assert!(
                why.contains(verdict)
                    && why.contains(" available minus ")
                    && why.ends_with(" headroom"),
                "{why}"
            );
        }
    }
    // The text report: one line, policy first, then why.
    let out = hoist(&["load", path, "--cache", "keep"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l == "cache: keep (asked)"), "{text}");
    let out = hoist(&["load", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("cache: keep (auto: ")
            || l.starts_with("cache: bypass (auto: ")),
        "{text}"
    );
}

#[test]
fn bad_cache_values_are_clear_errors() {
    let (_dir, root) = checkpoint(22);
    let path = root.to_str().unwrap();
    let out = hoist(&["load", path, "--cache", "sometimes"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid value 'sometimes' for '--cache <POLICY>'")
            && err.contains("auto, keep, bypass"),
        "{err}"
    );
    for bad in ["-1", "inf", "NaN", "2000000"] {
        let flag = format!("--cache-headroom-gib={bad}");
        let out = hoist(&["load", path, &flag]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(
            err.contains("--cache-headroom-gib must be between 0 and"),
            "{bad}: {err}"
        );
    }
    let out = hoist(&["bench", "--synthetic", "tiny", "--cache", "never"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'--cache <POLICY>'"));
}

/// The methods a warm load of `path` used after a cold one with `policy`, or None (a skip)
/// where eviction did not take.
fn methods_after_a_cold_load(path: &str, policy: &str) -> Option<Vec<String>> {
    let first = hoist(&["load", path, "--cold", "--cache", policy, "--json"]);
    let doc = json(&first);
    if String::from_utf8_lossy(&first.stderr).contains("not fully cold") {
        eprintln!("skipping: eviction from the page cache does not take here");
        return None;
    }
    if policy == "bypass"
        && !doc["methods"]
            .as_object()
            .unwrap()
            .keys()
            .any(|m| m.ends_with("-direct"))
    {
        eprintln!(
            "skipping: this filesystem refuses O_DIRECT ({})",
            doc["notes"]
        );
        return None;
    }
    // The second load bypasses too, so that it changes nothing the check below looks at.
    let doc = json(&hoist(&["load", path, "--cache", "bypass", "--json"]));
    Some(
        doc["methods"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect(),
    )
}

#[test]
fn keep_makes_the_next_load_warm_and_bypass_does_not() {
    let (_dir, root) = checkpoint(23);
    let path = root.to_str().unwrap();
    let Some(after_keep) = methods_after_a_cold_load(path, "keep") else {
        return;
    };
    // auto found every chunk cached: copies out of the page cache only, nothing read direct.
    assert!(
        !after_keep.is_empty()
            && after_keep
                .iter()
                .all(|m| m == "pread-buffered" || m == "mmap"),
        "after a keep load: {after_keep:?}"
    );
    let Some(after_bypass) = methods_after_a_cold_load(path, "bypass") else {
        return;
    };
    assert!(
        after_bypass
            .iter()
            .any(|m| m == "uring-direct" || m == "pread-direct"),
        "after a bypass load the data is still cold: {after_bypass:?}"
    );
}

#[test]
fn bench_rows_say_which_policy_ran() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let synth = dir.path().join("tiny");
    let out = hoist(&[
        "bench",
        "--synthetic",
        "tiny",
        "--dir",
        synth.to_str().unwrap(),
        "--repeat",
        "1",
        "--cache",
        "bypass",
        "--json",
    ]);
    let doc = json(&out);
    let methods = |loader: &str| {
        let rows = doc["results"].as_array().unwrap();
        let row = rows.iter().find(|r| r["loader"] == loader).unwrap();
        row["methods"].as_str().unwrap().to_string()
    };
    assert!(methods("hoist uring").ends_with("; cache bypass"), "{doc}");
    // pread cannot bypass the page cache: the row says what ran.
    assert!(methods("hoist pread").ends_with("; cache keep"), "{doc}");
}
