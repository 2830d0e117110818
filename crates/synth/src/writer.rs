//! Writing safetensors files and sharded checkpoints.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{fill_random, ModelSpec, TensorSpec};

/// File that marks a directory as a finished synthetic checkpoint (and records its layout), so a
/// benchmark can reuse it instead of writing gigabytes again.
pub const MARKER_FILE_NAME: &str = "hoist-synth.json";

/// Bytes handed to the writer at a time.
const WRITE_CHUNK_BYTES: usize = 8 << 20;

/// Writing a synthetic checkpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// Creating or writing a file failed.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
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
    while json.len() % 8 != 0 {
        json.push(b' ');
    }
    let tmp = path.with_extension("partial");
    let result = (|| {
        let mut w =
            BufWriter::with_capacity(WRITE_CHUNK_BYTES, File::create(&tmp).map_err(io_err(&tmp))?);
        w.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io_err(&tmp))?;
        w.write_all(&json).map_err(io_err(&tmp))?;
        let mut buf = vec![0u8; WRITE_CHUNK_BYTES];
        for (i, t) in tensors.iter().enumerate() {
            let len = t.byte_len();
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(WRITE_CHUNK_BYTES as u64) as usize;
                fill(i, done, &mut buf[..n]);
                w.write_all(&buf[..n]).map_err(io_err(&tmp))?;
                done += n as u64;
            }
        }
        let f = w.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `spec` into `dir` with random contents keyed by `seed`, as `model.safetensors` or as
/// hub-style shards with `model.safetensors.index.json`. Returns the path to open (the file, or
/// the directory for shards). Reuses a finished checkpoint of the same layout and seed.
pub fn write_checkpoint(spec: &ModelSpec, dir: &Path, seed: u64) -> Result<PathBuf, SynthError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let marker_path = dir.join(MARKER_FILE_NAME);
    let marker = format!("{{\"layout\":\"{spec:?}\",\"seed\":{seed}}}");
    let tensors = spec.tensors();
    let shards = split_shards(&tensors, spec.max_shard_bytes);
    let root = if shards.len() == 1 {
        dir.join("model.safetensors")
    } else {
        dir.to_path_buf()
    };
    if std::fs::read_to_string(&marker_path).is_ok_and(|m| m == marker) {
        return Ok(root);
    }
    let _ = std::fs::remove_file(&marker_path);
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (s, range) in shards.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, n)
        };
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
            &dir.join(&name),
            &part,
            &[("format", "pt")],
            |i, off, buf| fill_random(buf, seed, stream_of[i], off),
        )?;
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": { "total_size": spec.total_bytes() },
            "weight_map": weight_map,
        });
        let p = dir.join(hoist_format::INDEX_FILE_NAME);
        std::fs::write(&p, serde_json::to_vec_pretty(&index).unwrap_or_default())
            .map_err(io_err(&p))?;
    }
    std::fs::write(&marker_path, marker).map_err(io_err(&marker_path))?;
    Ok(root)
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
