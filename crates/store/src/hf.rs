//! The Hugging Face hub's cache layout (`models--ORG--NAME/{blobs,refs,snapshots}`), read in
//! the hub's cache and in hoist's store, written in hoist's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::files::{checkpoint_in, modified, names_in, size_of, write_atomic};
use crate::name::{check_blob_id, check_commit, ModelName};
use crate::{ModelEntry, Source, StoreError};

/// hoist's own hub-layout directory under its root (`HF_HUB_CACHE=$HOIST_MODELS/hub` makes
/// transformers find hoist's pulls).
pub(crate) const HUB_DIR: &str = "hub";

/// A repository's directory in a hub cache.
pub(crate) fn repo_dir(cache: &Path, org: &str, name: &str) -> PathBuf {
    cache.join(format!("models--{org}--{name}"))
}

fn parts(name: &ModelName) -> Option<(&str, &str, &str)> {
    match name {
        ModelName::HuggingFace {
            org,
            name,
            revision,
        } => Some((org, name, revision)),
        ModelName::Ollama { .. } => None,
    }
}

/// The commit a revision names in a repository directory: itself when it is a commit with a
/// snapshot, else the commit its ref file holds (checked).
fn commit_of(repo: &Path, revision: &str) -> Result<Option<String>, StoreError> {
    if check_commit(revision).is_ok() && repo.join("snapshots").join(revision).is_dir() {
        return Ok(Some(revision.to_string()));
    }
    let ref_path = repo.join("refs").join(revision);
    if !ref_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&ref_path).map_err(io_err(&ref_path))?;
    let commit = text.trim();
    check_commit(commit)?;
    Ok(Some(commit.to_string()))
}

fn entry(repo: &Path, source: Source, name: &ModelName, commit: &str) -> Option<ModelEntry> {
    let snapshot = repo.join("snapshots").join(commit);
    let (path, format) = checkpoint_in(&snapshot)?;
    Some(ModelEntry {
        name: name.to_string(),
        size_bytes: size_of(&path),
        path,
        source,
        modified: modified(&snapshot),
        digest: None,
        format,
    })
}

/// The model `name` (`ORG/NAME[@REVISION]`) means in the hub cache at `cache`.
pub(crate) fn find(
    cache: &Path,
    source: Source,
    name: &ModelName,
) -> Result<Option<ModelEntry>, StoreError> {
    let Some((org, repo_name, revision)) = parts(name) else {
        return Ok(None);
    };
    let repo = repo_dir(cache, org, repo_name);
    Ok(commit_of(&repo, revision)?.and_then(|c| entry(&repo, source, name, &c)))
}

/// Every model in the hub cache at `cache`: one per ref, and one per snapshot no ref names
/// (as `ORG/NAME@COMMIT`). Directories and refs with invalid names are passed over.
pub(crate) fn discover(cache: &Path, source: Source) -> Result<Vec<ModelEntry>, StoreError> {
    let mut out = Vec::new();
    for dir_name in names_in(cache)? {
        let Some(rest) = dir_name.strip_prefix("models--") else {
            continue;
        };
        let Some((org, repo_name)) = rest.split_once("--") else {
            continue;
        };
        let repo = cache.join(&dir_name);
        let mut named = BTreeSet::new();
        for revision in names_in(&repo.join("refs"))? {
            let Ok(name) = ModelName::parse(&format!("{org}/{repo_name}@{revision}")) else {
                continue;
            };
            if let Ok(Some(commit)) = commit_of(&repo, &revision) {
                named.insert(commit.clone());
                out.extend(entry(&repo, source, &name, &commit));
            }
        }
        for commit in names_in(&repo.join("snapshots"))? {
            if named.contains(&commit) || check_commit(&commit).is_err() {
                continue;
            }
            if let Ok(name) = ModelName::parse(&format!("{org}/{repo_name}@{commit}")) {
                out.extend(entry(&repo, source, &name, &commit));
            }
        }
    }
    Ok(out)
}

/// Links `file` of snapshot `commit` to its blob, as the hub's cache does (a relative symlink
/// `snapshots/COMMIT/FILE` → `../../blobs/BLOB_ID`, one `..` more per directory level).
/// `file` and `blob_id` must have been checked.
pub(crate) fn link_file(
    repo: &Path,
    commit: &str,
    file: &str,
    blob_id: &str,
) -> Result<(), StoreError> {
    check_commit(commit)?;
    check_blob_id(blob_id)?;
    let link = repo.join("snapshots").join(commit).join(file);
    let depth = file.split('/').count() + 1;
    let target = PathBuf::from("../".repeat(depth))
        .join("blobs")
        .join(blob_id);
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&link)(e)),
        _ => {}
    }
    std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))
}

/// Points ref `revision` at `commit` (nothing to do when the revision is the commit).
pub(crate) fn write_ref(repo: &Path, revision: &str, commit: &str) -> Result<(), StoreError> {
    if revision == commit {
        return Ok(());
    }
    write_atomic(&repo.join("refs").join(revision), commit.as_bytes())
}

/// Removes `name` from hoist's hub directory: its ref (or its snapshot, for a commit), the
/// snapshot no other ref names, the blobs no remaining snapshot links, and the repository
/// directory once empty.
pub(crate) fn remove(hub: &Path, name: &ModelName) -> Result<(), StoreError> {
    let Some((org, repo_name, revision)) = parts(name) else {
        return Ok(());
    };
    let repo = repo_dir(hub, org, repo_name);
    let commit = commit_of(&repo, revision)?.ok_or_else(|| StoreError::NotFound {
        name: name.to_string(),
    })?;
    let ref_path = repo.join("refs").join(revision);
    if ref_path.is_file() {
        std::fs::remove_file(&ref_path).map_err(io_err(&ref_path))?;
    }
    let still_named = names_in(&repo.join("refs"))?
        .iter()
        .any(|r| commit_of(&repo, r).ok().flatten().as_deref() == Some(commit.as_str()));
    if !still_named {
        // Only the links hoist made into `blobs/`, and the directories they leave empty:
        // anything else someone put there stays (and keeps its directory).
        remove_blob_links(&repo.join("snapshots").join(&commit))?;
    }
    let mut linked = BTreeSet::new();
    for commit in names_in(&repo.join("snapshots"))? {
        collect_links(&repo.join("snapshots").join(commit), &mut linked)?;
    }
    for blob in names_in(&repo.join("blobs"))? {
        // Unfinished downloads (`.partial`) are kept for a resumed pull.
        if check_blob_id(&blob).is_ok() && !linked.contains(&blob) {
            let path = repo.join("blobs").join(&blob);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    // The repository's directories go when empty (`.partial` downloads keep `blobs/`).
    for dir in ["refs", "snapshots", "blobs"] {
        let _ = std::fs::remove_dir(repo.join(dir));
    }
    let _ = std::fs::remove_dir(&repo);
    Ok(())
}

/// Removes, under `dir`, the symbolic links into a `blobs/` directory (the snapshot links
/// [`link_file`] makes), then every directory that leaves empty, `dir` included.
fn remove_blob_links(dir: &Path) -> Result<(), StoreError> {
    for e in crate::files::read_dir(dir)? {
        let path = e.path();
        let ty = e.file_type().map_err(io_err(&path))?;
        if ty.is_dir() {
            remove_blob_links(&path)?;
        } else if ty.is_symlink()
            && std::fs::read_link(&path)
                .is_ok_and(|t| t.components().any(|c| c.as_os_str() == "blobs"))
        {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    // Fails on a directory that still holds something: then it stays.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// The blob ids the symlinks under `dir` point at.
fn collect_links(dir: &Path, linked: &mut BTreeSet<String>) -> Result<(), StoreError> {
    for e in crate::files::read_dir(dir)? {
        let path = e.path();
        let ty = e.file_type().map_err(io_err(&path))?;
        if ty.is_dir() {
            collect_links(&path, linked)?;
        } else if let Ok(target) = std::fs::read_link(&path) {
            if let Some(id) = target.file_name().and_then(|n| n.to_str()) {
                linked.insert(id.to_string());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_a_snapshot_takes_only_hoists_links_into_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let snap = tmp.path().join("snapshots/c");
        std::fs::create_dir_all(snap.join("sub")).unwrap();
        std::os::unix::fs::symlink("../../blobs/a", snap.join("model.safetensors")).unwrap();
        std::os::unix::fs::symlink("../../../blobs/b", snap.join("sub/x.json")).unwrap();
        // Someone else's file (and a link elsewhere) beside hoist's links.
        std::fs::write(snap.join("NOTES.txt"), "mine").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", snap.join("other")).unwrap();
        remove_blob_links(&snap).unwrap();
        assert!(!snap.join("model.safetensors").exists());
        assert!(!snap.join("sub").exists(), "emptied directories go");
        assert_eq!(
            std::fs::read_to_string(snap.join("NOTES.txt")).unwrap(),
            "mine"
        );
        assert!(std::fs::symlink_metadata(snap.join("other")).is_ok());
        // Nothing but hoist's links: the snapshot directory goes too.
        let only = tmp.path().join("snapshots/d");
        std::fs::create_dir_all(&only).unwrap();
        std::os::unix::fs::symlink("../../blobs/a", only.join("m")).unwrap();
        remove_blob_links(&only).unwrap();
        assert!(!only.exists());
    }
}
