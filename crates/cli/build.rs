//! Sets `HOIST_GIT_COMMIT` for `hoist --version`: the short hash of the commit the binary is
//! built from, or "unknown" where there is no git or no repository (a source tarball, a
//! `cargo install` from a copy). The build never fails for want of git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    // Without this, cargo reruns the script whenever any file of the package changes.
    println!("cargo:rerun-if-changed=build.rs");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = match git_dir(&manifest_dir) {
        Some(git_dir) => {
            watch_head(&git_dir);
            short_head(&manifest_dir).unwrap_or_else(|| "unknown".into())
        }
        None => "unknown".into(),
    };
    println!("cargo:rustc-env=HOIST_GIT_COMMIT={commit}");
}

/// The repository's git directory: `.git` in this directory or an ancestor, followed when it
/// is a file (`gitdir: …`, as in worktrees and submodules).
fn git_dir(start: &Path) -> Option<PathBuf> {
    for dir in start.ancestors() {
        let dot_git = dir.join(".git");
        if dot_git.is_dir() {
            return Some(dot_git);
        }
        if dot_git.is_file() {
            let text = std::fs::read_to_string(&dot_git).ok()?;
            let target = text.strip_prefix("gitdir:")?.trim();
            return Some(dir.join(target));
        }
    }
    None
}

/// Reruns this script when HEAD moves: HEAD itself (a checkout), the branch ref it names (a
/// commit), and packed-refs (where a ref lives once packed; the loose file may not exist, and
/// a path that does not exist would make cargo rerun the script on every build).
fn watch_head(git_dir: &Path) {
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    let Ok(text) = std::fs::read_to_string(&head) else {
        return;
    };
    let mut packed = vec![git_dir.join("packed-refs")];
    let mut refs = Vec::new();
    if let Some(reference) = text.strip_prefix("ref:") {
        refs.push(git_dir.join(reference.trim()));
        // A worktree's branch refs live in the common directory.
        if let Ok(common) = std::fs::read_to_string(git_dir.join("commondir")) {
            let common = git_dir.join(common.trim());
            refs.push(common.join(reference.trim()));
            packed.push(common.join("packed-refs"));
        }
    }
    for path in packed.into_iter().filter(|p| p.is_file()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for path in refs {
        // A packed ref has no loose file until the next commit writes one into its directory.
        let watched = match path.parent() {
            Some(dir) if !path.is_file() => dir.to_path_buf(),
            _ => path,
        };
        if watched.exists() {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
}

/// `git rev-parse --short HEAD`, or `None` where git is missing or fails.
fn short_head(dir: &Path) -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(dir)
        .output()
        .ok()?;
    let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    let is_hash = !hash.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit());
    (out.status.success() && is_hash).then_some(hash)
}
