//! Parsers run on bytes in memory, for fuzzers and property tests.
//!
//! Each function parses exactly what [`TensorTable::open`] would parse had `bytes` been the
//! file at `path`; `path` only appears in messages and in [`crate::SourceFile::path`]. These are
//! a testing aid, not part of the loading API.

use std::path::Path;

use crate::{FormatError, TensorTable};

/// Parses `bytes` as a safetensors file.
pub fn safetensors(path: &Path, bytes: &[u8]) -> Result<TensorTable, FormatError> {
    let (file, tensors, metadata) =
        crate::safetensors::parse_safetensors_from(path, 0, bytes, bytes.len() as u64)?;
    TensorTable::from_parts(
        path.to_path_buf(),
        vec![file],
        tensors,
        metadata,
        Vec::new(),
    )
}

/// Parses `bytes` as a GGUF file.
pub fn gguf(path: &Path, bytes: &[u8]) -> Result<TensorTable, FormatError> {
    crate::gguf::parse_gguf_from(path, bytes, bytes.len() as u64)
}

/// Parses `bytes` as a sharded index whose shards are the in-memory safetensors files
/// `shards` (`(file name, bytes)`), resolved relative to `path`'s directory; a shard not in
/// `shards` is missing.
pub fn index(
    path: &Path,
    bytes: &[u8],
    shards: &[(&str, &[u8])],
) -> Result<TensorTable, FormatError> {
    let index = crate::index::parse_index_bytes(path, bytes)?;
    let dir = path.parent().unwrap_or(Path::new(""));
    crate::index::resolve(path, &index, |name, i| {
        let p = dir.join(name);
        let Some((_, b)) = shards.iter().find(|(n, _)| *n == name) else {
            return Err(FormatError::MissingShard {
                index: path.to_path_buf(),
                shard: name.to_owned(),
                expected: p,
            });
        };
        crate::safetensors::parse_safetensors_from(&p, i, *b, b.len() as u64)
    })
}
