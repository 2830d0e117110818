//! Writing safetensors files and sharded checkpoints.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{io_err, SynthError};
use crate::marker::{inspect_dir, remove_own_files, DirState, MarkedFile, Marker};
use crate::{fill_random, ModelSpec, TensorSpec};

/// Bytes handed to the writer at a time.
const WRITE_CHUNK_BYTES: usize = 8 << 20;

/// Suffix of a file being written; it is renamed to its name once complete, so an interrupted
/// write never leaves a file that looks finished.
pub(crate) const PARTIAL_SUFFIX: &str = ".partial";

/// Where `path` is written before it is complete.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// Writes `bytes` to `path` through its temporary and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    let tmp = partial_path(path);
    let result = std::fs::write(&tmp, bytes)
        .map_err(io_err(&tmp, "write"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err(path, "write")));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes one safetensors file of `(name, dtype, shape)` tensors filled with random bytes of
/// `seed` ([`crate::fill_random`], one stream per tensor): the small files of tests.
pub fn write_random_safetensors(
    path: &Path,
    tensors: &[(&str, hoist_format::DType, Vec<u64>)],
    seed: u64,
) -> Result<(), SynthError> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|(name, dtype, shape)| TensorSpec {
            name: (*name).into(),
            dtype: *dtype,
            shape: shape.clone(),
        })
        .collect();
    write_safetensors(path, &specs, &[], |i, off, buf| {
        crate::fill_random(buf, seed, i as u64, off)
    })
}

/// Writes one safetensors file holding `tensors` in the given order, their bytes produced by
/// `fill(index, offset_in_tensor, buf)`. The file appears under `path` only once complete.
pub fn write_safetensors(
    path: &Path,
    tensors: &[TensorSpec],
    metadata: &[(&str, &str)],
    mut fill: impl FnMut(usize, u64, &mut [u8]),
) -> Result<(), SynthError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        let m = metadata
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), serde_json::Value::Object(m));
    }
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.byte_len();
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let tmp = partial_path(path);
    let result = (|| {
        let mut w = BufWriter::with_capacity(
            WRITE_CHUNK_BYTES,
            File::create(&tmp).map_err(io_err(&tmp, "write"))?,
        );
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp, "write"))?;
        w.write_all(&json).map_err(io_err(&tmp, "write"))?;
        let mut buf = vec![0u8; WRITE_CHUNK_BYTES];
        for (i, t) in tensors.iter().enumerate() {
            let len = t.byte_len();
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(WRITE_CHUNK_BYTES as u64) as usize;
                fill(i, done, &mut buf[..n]);
                w.write_all(&buf[..n]).map_err(io_err(&tmp, "write"))?;
                done += n as u64;
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| io_err(&tmp, "write")(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp, "write"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "write"))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A synthetic checkpoint ready to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prepared {
    /// Path to open: `model.safetensors`, or the directory for shards.
    pub root: PathBuf,
    /// Whether a finished checkpoint of the same layout and seed was there already.
    pub reused: bool,
}

/// Writes `spec` into `dir` with random contents keyed by `seed`, as `model.safetensors` or as
/// hub-style shards with `model.safetensors.index.json`, and marks it as hoist's
/// ([`crate::MARKER_FILE_NAME`], written last, listing the files). `on_bytes` is told the bytes
/// of tensor data produced as it goes, for progress displays.
///
/// `dir` must be missing, empty, or a checkpoint written here: a finished one of the same layout
/// and seed is reused; another (or an interrupted one) has exactly its own files replaced.
/// Anything else is refused before a byte is written ([`SynthError::NotOurs`],
/// [`SynthError::Changed`]); files others added to a marked directory are left alone.
pub fn prepare_checkpoint(
    spec: &ModelSpec,
    dir: &Path,
    seed: u64,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<Prepared, SynthError> {
    let tensors = spec.tensors();
    let shards = split_shards(&tensors, spec.max_shard_bytes);
    let n = shards.len();
    let shard_names: Vec<String> = (0..n)
        .map(|s| match n {
            1 => "model.safetensors".to_string(),
            _ => format!("model-{:05}-of-{:05}.safetensors", s + 1, n),
        })
        .collect();
    let mut names = shard_names.clone();
    if n > 1 {
        names.push(hoist_format::INDEX_FILE_NAME.to_string());
    }
    let root = match n {
        1 => dir.join(&shard_names[0]),
        _ => dir.to_path_buf(),
    };
    let layout = format!("{spec:?}");

    let created_dir = match inspect_dir(dir)? {
        DirState::Missing => true,
        DirState::Empty => false,
        DirState::Synthetic { marker, others } => {
            let same = marker.complete && marker.layout == layout && marker.seed == seed;
            if same && intact(dir, &marker)? {
                return Ok(Prepared { root, reused: true });
            }
            // The new layout's files must not land on files someone else put here.
            let clash: Vec<&str> = names
                .iter()
                .filter(|n| others.contains(n))
                .map(String::as_str)
                .collect();
            if !clash.is_empty() {
                return Err(SynthError::NotOurs {
                    dir: dir.to_path_buf(),
                    entries: clash.join(", "),
                });
            }
            remove_own_files(dir, &marker, false)?;
            marker.created_dir
        }
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir, "write"))?;
    // First an incomplete marker naming the files to come, so an interrupted write is known to
    // be hoist's (and redone); the complete one, with sizes, goes last.
    let mut marker = Marker {
        preset: crate::presets()
            .into_iter()
            .find(|p| &p.spec == spec)
            .map(|p| p.name.to_string()),
        layout,
        seed,
        complete: false,
        created_dir,
        files: names
            .iter()
            .map(|name| MarkedFile {
                name: name.clone(),
                bytes: None,
            })
            .collect(),
    };
    marker.write(dir)?;

    let mut weight_map = serde_json::Map::new();
    for (range, name) in shards.iter().zip(&shard_names) {
        let mut part: Vec<TensorSpec> = tensors[range.clone()].to_vec();
        // safetensors' writer orders a file's tensors by name.
        part.sort_by(|a, b| a.name.cmp(&b.name));
        for t in &part {
            weight_map.insert(t.name.clone(), name.clone().into());
        }
        let stream_of: Vec<u64> = part
            .iter()
            .map(|t| tensors.iter().position(|x| x.name == t.name).unwrap_or(0) as u64)
            .collect();
        write_safetensors(
            &dir.join(name),
            &part,
            &[("format", "pt")],
            |i, off, buf| {
                fill_random(buf, seed, stream_of[i], off);
                on_bytes(buf.len() as u64);
            },
        )?;
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": spec.total_bytes() },
            "weight_map": weight_map,
        });
        let p = dir.join(hoist_format::INDEX_FILE_NAME);
        write_atomic(&p, index.to_string().as_bytes())?;
    }
    for f in &mut marker.files {
        let p = dir.join(&f.name);
        f.bytes = Some(std::fs::metadata(&p).map_err(io_err(&p, "read"))?.len());
    }
    marker.complete = true;
    marker.write(dir)?;
    Ok(Prepared {
        root,
        reused: false,
    })
}

/// Whether every file `marker` lists is in `dir` as hoist wrote it; [`SynthError::Changed`]
/// where one was replaced.
fn intact(dir: &Path, marker: &Marker) -> Result<bool, SynthError> {
    for f in &marker.files {
        if !crate::marker::still_ours(dir, f)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// [`prepare_checkpoint`] without progress; returns the path to open.
pub fn write_checkpoint(spec: &ModelSpec, dir: &Path, seed: u64) -> Result<PathBuf, SynthError> {
    prepare_checkpoint(spec, dir, seed, &mut |_| {}).map(|p| p.root)
}

/// Splits tensors (in module order) into shards of at most `max_bytes`, as `save_pretrained`
/// does: a tensor that would overflow the current shard starts the next one.
#[allow(clippy::single_range_in_vec_init)] // one shard holding every tensor is one range
fn split_shards(tensors: &[TensorSpec], max_bytes: Option<u64>) -> Vec<std::ops::Range<usize>> {
    let Some(max) = max_bytes else {
        return vec![0..tensors.len()];
    };
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, t) in tensors.iter().enumerate() {
        if bytes > 0 && bytes + t.byte_len() > max {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += t.byte_len();
    }
    out.push(start..tensors.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MARKER_FILE_NAME;

    #[test]
    fn tiny_checkpoint_round_trips_through_the_parser() {
        let dir = std::env::temp_dir().join(format!("hoist-synth-test-{}", std::process::id()));
        let spec = crate::preset("tiny").unwrap().spec;
        let root = write_checkpoint(&spec, &dir, 1).unwrap();
        assert_eq!(root, dir);
        let table = hoist_format::TensorTable::open(&root).unwrap();
        assert_eq!(table.files.len(), 2, "two shards through the index");
        assert_eq!(table.tensors.len(), spec.tensors().len());
        assert_eq!(table.total_bytes(), spec.total_bytes());
        // A second call reuses the finished checkpoint.
        let before = std::fs::metadata(dir.join(MARKER_FILE_NAME))
            .unwrap()
            .modified()
            .unwrap();
        write_checkpoint(&spec, &dir, 1).unwrap();
        let after = std::fs::metadata(dir.join(MARKER_FILE_NAME))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
