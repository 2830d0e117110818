//! `HOIST_LOG=debug` through the built binary: the I/O engine's plan and backend decisions reach
//! stderr, and stdout (the report) stays as it was.

use std::process::{Command, Output};

/// Runs `hoist args` with `HOIST_LOG` set to `log` (unset for `None`), colours off.
fn hoist_logged(args: &[&str], log: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoist"));
    cmd.args(args).env("NO_COLOR", "1").env_remove("HOIST_LOG");
    if let Some(filter) = log {
        cmd.env("HOIST_LOG", filter);
    }
    cmd.output().expect("the hoist binary runs")
}

/// `s` without ANSI escape sequences (`ESC [ … letter`), should a formatter colour anyway.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn hoist_log_debug_prints_the_plan_and_the_backend_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hoist_synth::preset("tiny").unwrap().spec;
    let root = hoist_synth::write_checkpoint(&spec, dir.path(), 21).unwrap();
    let root = root.to_str().unwrap();

    let out = hoist_logged(&["load", root, "--json"], Some("debug"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("logs stay off stdout: it is one JSON document");
    let line = |message: &str| err.lines().find(|l| l.contains(message)).map(str::to_owned);

    let plan = line("read plan").unwrap_or_else(|| panic!("no plan line: {err}"));
    assert!(plan.contains("DEBUG") && plan.contains("chunks=") && plan.contains("regions="));
    let route = line("route").unwrap_or_else(|| panic!("no route line: {err}"));
    assert!(
        route.contains("backend=auto") && route.contains("method=") && route.contains("reason="),
        "{err}"
    );
    let done = line("load finished").unwrap_or_else(|| panic!("no finish line: {err}"));
    assert!(
        done.contains(&format!("read_bytes={}", doc["read_bytes"])) && done.contains("gbps="),
        "{err}"
    );

    // Without HOIST_LOG a plain load says nothing on stderr.
    let quiet = hoist_logged(&["load", root], None);
    assert!(quiet.status.success());
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("read plan"),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );
}
