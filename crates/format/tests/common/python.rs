//! The Python that the agreement tests compare against. Shared by the tests of the format,
//! runtime and CLI crates, which include this file by path (as `gguf_writer` is included), so
//! that all of them skip, or fail under CI, the same way.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

/// `python3` when it imports every one of `packages`, or None: a skip, said on stderr, unless
/// HOIST_REQUIRE_PYTHON is set (as CI sets it), where a missing package fails the test.
pub fn python_with(packages: &[&str]) -> Option<&'static str> {
    let ok = Command::new("python3")
        .arg("-c")
        .arg(format!("import {}", packages.join(", ")))
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some("python3");
    }
    let names = packages.join(" ");
    assert!(
        std::env::var_os("HOIST_REQUIRE_PYTHON").is_none(),
        "HOIST_REQUIRE_PYTHON is set but python3 cannot import {names}"
    );
    eprintln!("skipping: python3 lacks the reference packages (pip install {names})");
    None
}

/// Runs `py script args…` and returns its stdout, after checking that it succeeded.
pub fn run_script<S: AsRef<OsStr>>(py: &str, script: &Path, args: &[S]) -> Vec<u8> {
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{py} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
