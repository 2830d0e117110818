//! Small file-system helpers shared by the layouts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::error::io_err;
use crate::name::Digest;
use crate::{ModelFormat, StoreError};

/// Writes `bytes` to `path` through a temporary file beside it (`.NAME.partial`, never a valid
/// name) renamed over it, so `path` is never seen half-written.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().ok_or_else(|| StoreError::Malformed {
        what: path.display().to_string(),
        reason: "has no parent directory".into(),
    })?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.partial"));
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// `sha256:HEX` of `bytes`.
pub(crate) fn sha256_of(bytes: &[u8]) -> Digest {
    let hex = hex(&Sha256::digest(bytes));
    // 32 bytes always make 64 lowercase hex digits.
    Digest::from_hex(&hex).expect("sha256 output is 64 hex digits")
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When `path` was last modified (the epoch where the file system cannot say).
pub(crate) fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Bytes of the regular files under `path` (symlinks followed), or of `path` itself.
pub(crate) fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    let Ok(dir) = std::fs::read_dir(path) else {
        return 0;
    };
    dir.flatten().map(|e| size_of(&e.path())).sum()
}

/// The entries of a directory (an empty list when it does not exist).
pub(crate) fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, StoreError> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>().map_err(io_err(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// The names of a directory's entries, sorted, skipping names that are not UTF-8.
pub(crate) fn names_in(dir: &Path) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = read_dir(dir)?
        .into_iter()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// What a checkpoint path holds, as hoist opens it: a directory with safetensors files, or a
/// GGUF file (a directory holding exactly one `.gguf` is that file). `None`: neither.
pub(crate) fn checkpoint_in(path: &Path) -> Option<(PathBuf, ModelFormat)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return Some((path.to_path_buf(), ModelFormat::Gguf));
    }
    let names = names_in(path).ok()?;
    if names.iter().any(|n| n.ends_with(".safetensors")) {
        return Some((path.to_path_buf(), ModelFormat::Safetensors));
    }
    let ggufs: Vec<&String> = names.iter().filter(|n| n.ends_with(".gguf")).collect();
    match ggufs.as_slice() {
        [one] => Some((path.join(one), ModelFormat::Gguf)),
        _ => None,
    }
}

/// Removes the empty directories from `dir` up to (not including) `stop`.
pub(crate) fn prune_empty(mut dir: &Path, stop: &Path) {
    while dir.starts_with(stop) && dir != stop {
        // Fails on a directory that is not empty: that is where pruning ends.
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(p) => dir = p,
            None => return,
        }
    }
}
