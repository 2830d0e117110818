//! Deciding what a path is (file, index, directory) and dispatching to the format parser.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{FormatError, TensorTable};

/// The name Hugging Face gives a sharded checkpoint's index.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> FormatError {
    FormatError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn open(path: &Path) -> Result<TensorTable, FormatError> {
    let meta = std::fs::metadata(path).map_err(|e| io_err(path, e))?;
    if meta.is_dir() {
        return open_dir(path);
    }
    if path.extension().is_some_and(|e| e == "json") {
        return crate::index::parse_index(path);
    }
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|e| io_err(path, e))?;
    let got = read_up_to(&mut f, &mut magic).map_err(|e| io_err(path, e))?;
    if got == 4 && &magic == b"GGUF" {
        return crate::gguf::parse_gguf(path);
    }
    if path.extension().is_some_and(|e| e == "gguf") {
        return Err(FormatError::InvalidHeader {
            path: path.to_path_buf(),
            reason: format!("bad magic {:02x?}, expected \"GGUF\"", &magic[..got]),
        });
    }
    let (file, tensors, metadata) = crate::safetensors::parse_safetensors(path, 0)?;
    TensorTable::from_parts(
        path.to_path_buf(),
        vec![file],
        tensors,
        metadata,
        Vec::new(),
    )
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A directory: its index if present, else all its `.safetensors` files (as one checkpoint),
/// else its single `.gguf` file.
fn open_dir(dir: &Path) -> Result<TensorTable, FormatError> {
    let index = dir.join(INDEX_FILE_NAME);
    if index.is_file() {
        return crate::index::parse_index(&index);
    }
    let mut safetensors = Vec::new();
    let mut gguf = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let p = entry.path();
        if !p.is_file() {
            continue;
        }
        match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => safetensors.push(p),
            Some("gguf") => gguf.push(p),
            _ => {}
        }
    }
    safetensors.sort();
    gguf.sort();
    if !safetensors.is_empty() {
        return open_files(dir.to_path_buf(), &safetensors);
    }
    match gguf.len() {
        0 => Err(FormatError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: format!("directory holds no {INDEX_FILE_NAME}, .safetensors or .gguf file"),
        }),
        1 => crate::gguf::parse_gguf(&gguf[0]),
        n => Err(FormatError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: format!("directory holds {n} .gguf files; name the one to load"),
        }),
    }
}

/// Several safetensors files taken together as one checkpoint; names must be unique across them.
pub fn open_files(root: PathBuf, paths: &[PathBuf]) -> Result<TensorTable, FormatError> {
    let mut files = Vec::with_capacity(paths.len());
    let mut tensors = Vec::new();
    let mut metadata = BTreeMap::new();
    for (i, p) in paths.iter().enumerate() {
        let (file, ts, meta) = crate::safetensors::parse_safetensors(p, i)?;
        files.push(file);
        tensors.extend(ts);
        for (k, v) in meta {
            metadata.entry(k).or_insert(v);
        }
    }
    TensorTable::from_parts(root, files, tensors, metadata, Vec::new())
}
