//! Test harness stays out of what ships: no library crate of the workspace, and nothing the
//! Python package builds, depends on `hoist-synth` or `hoist-testkit` except as a
//! dev-dependency (the `hoist` binary may: `hoist bench` writes synthetic checkpoints).
//! And `hoist-cuda` is the only crate that calls CUDA: no other names `cudarc`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Crates that are test harness.
const HARNESS: [&str; 2] = ["hoist-synth", "hoist-testkit"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn metadata(manifest: &Path, extra: &[&str]) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata {}: {}",
        manifest.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn library_crates_have_no_normal_dependency_on_the_harness() {
    let meta = metadata(&repo_root().join("Cargo.toml"), &["--no-deps"]);
    let mut offending = Vec::new();
    let mut libraries = 0;
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let is_library = package["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "lib"));
        if !is_library || HARNESS.contains(&name) {
            continue;
        }
        libraries += 1;
        for dep in package["dependencies"].as_array().unwrap() {
            // `kind` is null for normal dependencies (optional ones included), "build" or "dev".
            let shipped = dep["kind"].is_null() || dep["kind"] == "build";
            let dep_name = dep["name"].as_str().unwrap();
            if shipped && HARNESS.contains(&dep_name) {
                offending.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    // hoist-format, hoist-io, hoist-cuda, hoist-runtime at least: the check looked at something.
    assert!(libraries >= 4, "only {libraries} library crates found");
    assert!(
        offending.is_empty(),
        "normal dependencies on test harness: {offending:?}"
    );
}

#[test]
fn python_package_builds_no_harness() {
    let meta = metadata(
        &repo_root().join("python/Cargo.toml"),
        &["--locked", "--all-features"],
    );
    let resolved: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(resolved.contains(&"hoist-io"), "{resolved:?}");
    let harness: Vec<_> = resolved.iter().filter(|n| HARNESS.contains(n)).collect();
    assert!(
        harness.is_empty(),
        "the Python package resolves {harness:?}"
    );
}

/// The one crate that may depend on cudarc: everything CUDA goes through its wrappers.
const CUDA_CRATE: &str = "hoist-cuda";

/// `package -> dependency` for every dependency, of any kind, named `dependency` of the
/// packages in `meta` other than [`CUDA_CRATE`].
fn direct_users(meta: &Value, dependency: &str) -> Vec<String> {
    let mut users = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        if name == CUDA_CRATE {
            continue;
        }
        for dep in package["dependencies"].as_array().unwrap() {
            if dep["name"] == dependency {
                users.push(format!("{name} -> {dependency} ({})", dep["kind"]));
            }
        }
    }
    users
}

#[test]
fn only_hoist_cuda_depends_on_cudarc() {
    let meta = metadata(&repo_root().join("Cargo.toml"), &["--no-deps"]);
    let names: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // The runtime and the crates built on it are what this guards; make sure they were seen.
    for crate_name in [CUDA_CRATE, "hoist-runtime", "hoist-cli"] {
        assert!(names.contains(&crate_name), "{crate_name} not in {names:?}");
    }
    let users = direct_users(&meta, "cudarc");
    assert!(
        users.is_empty(),
        "only {CUDA_CRATE} may call CUDA (add a wrapper there instead): {users:?}"
    );
    let python = metadata(&repo_root().join("python/Cargo.toml"), &["--no-deps"]);
    let users = direct_users(&python, "cudarc");
    assert!(users.is_empty(), "the Python package: {users:?}");
}
