//! Where model names come from: the [`Models`] trait the server asks, and [`StaticModels`], a
//! fixed map of names to checkpoint paths (tests, `hoist serve --model NAME=PATH`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use hoist_engine::{Device, Weights};
use serde_json::{json, Map, Value};

/// A model the server can load.
#[derive(Clone, Debug)]
pub struct ModelRecord {
    /// Its name, as clients use it (`name:tag`).
    pub name: String,
    /// The checkpoint: a GGUF file or a Hugging Face directory.
    pub path: PathBuf,
    /// Bytes on disk.
    pub size_bytes: u64,
    /// When it was last changed.
    pub modified: SystemTime,
    /// A content digest, where known.
    pub digest: Option<String>,
    /// `gguf` or `safetensors`.
    pub format: String,
}

/// What `/api/show` tells about a model.
#[derive(Clone, Debug, Default)]
pub struct ModelDetails {
    /// `gguf` or `safetensors`.
    pub format: String,
    /// The architecture family (`llama`, `qwen2`, …).
    pub family: String,
    /// Parameters, human-readable (`1.2B`).
    pub parameter_size: String,
    /// The weights' number format, where known (`F16`, `Q4_K_M`).
    pub quantization_level: String,
    /// Ollama's `model_info`: `general.architecture`, `{arch}.context_length`, …
    pub model_info: Map<String, Value>,
    /// The chat template (Jinja), where known.
    pub template: String,
    /// The license, where known.
    pub license: String,
}

/// Progress of a pull.
#[derive(Clone, Debug)]
pub struct PullProgress {
    /// What is happening (`pulling manifest`, `success`).
    pub status: String,
    /// The blob being fetched.
    pub digest: Option<String>,
    /// Its bytes.
    pub total: Option<u64>,
    /// Bytes fetched so far.
    pub completed: Option<u64>,
}

/// Why a model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// No model by that name.
    #[error("model '{name}' not found")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The request is wrong (a bad name, a copy onto an existing name).
    #[error("{message}")]
    Invalid {
        /// What is wrong and what to do.
        message: String,
    },
    /// The model source cannot do this (pulls without a store).
    #[error("{message}")]
    Unsupported {
        /// What cannot be done and what to do instead.
        message: String,
    },
    /// Anything else (I/O, a broken checkpoint).
    #[error("{message}")]
    Other {
        /// What went wrong.
        message: String,
    },
}

/// The model names a server knows; blocking calls (the server runs them off its async threads).
pub trait Models: Send + Sync + 'static {
    /// Every model there is.
    fn list(&self) -> Result<Vec<ModelRecord>, ModelsError>;
    /// The model called `name`.
    fn resolve(&self, name: &str) -> Result<ModelRecord, ModelsError>;
    /// Forgets (deletes) the model called `name`.
    fn remove(&self, name: &str) -> Result<(), ModelsError>;
    /// Makes `dst` another name for `src`.
    fn copy(&self, src: &str, dst: &str) -> Result<(), ModelsError>;
    /// Fetches `name`, reporting progress.
    fn pull(
        &self,
        name: &str,
        progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<ModelRecord, ModelsError>;
    /// What `/api/show` tells about `record`.
    fn describe(&self, record: &ModelRecord) -> Result<ModelDetails, ModelsError>;
}

/// `name` with Ollama's default tag: `tiny` is `tiny:latest`.
pub fn normalize_name(name: &str) -> String {
    let name = name.trim();
    // A tag follows the last ':' of the last path segment (`host:port/ns/m` has none).
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// A model's details from its checkpoint's headers (no weights are read).
pub fn details_from_checkpoint(path: &Path) -> Result<ModelDetails, ModelsError> {
    let weights = Weights::open(path, Device::Cpu).map_err(|e| ModelsError::Other {
        message: crate::error::chain(&e),
    })?;
    let c = weights.config();
    let arch = format!("{:?}", c.arch).to_lowercase();
    // Parameters from the bytes read at 2 bytes each is wrong for quantized files; count the
    // values of every weight the model reads that is not a vector (norms, biases): matrices,
    // stacked experts, DeltaNet's convolution; an MLX-packed matrix's unpacked values.
    let params = weights.map().matrix_parameters(weights.table());
    let mut info = Map::new();
    info.insert("general.architecture".into(), json!(arch));
    info.insert("general.parameter_count".into(), json!(params));
    if let Some(m) = &c.moe {
        info.insert(format!("{arch}.expert_count"), json!(m.num_experts));
        info.insert(
            format!("{arch}.expert_used_count"),
            json!(m.experts_per_token),
        );
        info.insert(
            format!("{arch}.expert_feed_forward_length"),
            json!(m.expert_intermediate_size),
        );
    }
    for (key, value) in [
        ("context_length", c.max_position_embeddings),
        ("embedding_length", c.hidden_size),
        ("block_count", c.num_layers),
        ("feed_forward_length", c.intermediate_size),
        ("attention.head_count", c.num_heads),
        ("attention.head_count_kv", c.num_kv_heads),
        ("vocab_size", c.vocab_size),
    ] {
        info.insert(format!("{arch}.{key}"), json!(value));
    }
    info.insert(format!("{arch}.rope.freq_base"), json!(c.rope_theta));
    let format = if path.extension().is_some_and(|e| e == "gguf") {
        "gguf"
    } else {
        "safetensors"
    };
    Ok(ModelDetails {
        format: format.into(),
        family: arch,
        parameter_size: human_count(params),
        quantization_level: String::new(),
        model_info: info,
        ..ModelDetails::default()
    })
}

/// `1.2B`, `350M`, `12K`, `800`.
pub(crate) fn human_count(n: u64) -> String {
    for (unit, scale) in [("B", 1e9), ("M", 1e6), ("K", 1e3)] {
        if n as f64 >= scale {
            return format!("{:.1}{unit}", n as f64 / scale);
        }
    }
    n.to_string()
}

/// Bytes of the file at `path`, or of the files in the directory at `path`.
fn size_on_disk(path: &Path) -> u64 {
    match std::fs::read_dir(path) {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum(),
        Err(_) => std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

/// A fixed set of names for checkpoint paths, kept in memory: copies and deletes change the
/// map, never the files; pulls are refused.
#[derive(Debug, Default)]
pub struct StaticModels {
    names: Mutex<BTreeMap<String, PathBuf>>,
}

impl StaticModels {
    /// Serves `models`: (name, checkpoint path) pairs; names get `:latest` when they have no
    /// tag.
    pub fn new(models: impl IntoIterator<Item = (String, PathBuf)>) -> StaticModels {
        let names = models
            .into_iter()
            .map(|(n, p)| (normalize_name(&n), p))
            .collect();
        StaticModels {
            names: Mutex::new(names),
        }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, PathBuf>> {
        // The map is valid after any panic (each change is one insert or remove).
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(name: &str, path: &Path) -> ModelRecord {
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        ModelRecord {
            name: name.to_string(),
            path: path.to_path_buf(),
            size_bytes: size_on_disk(path),
            modified,
            digest: None,
            format: if path.extension().is_some_and(|e| e == "gguf") {
                "gguf".into()
            } else {
                "safetensors".into()
            },
        }
    }
}

impl Models for StaticModels {
    fn list(&self) -> Result<Vec<ModelRecord>, ModelsError> {
        Ok(self
            .names()
            .iter()
            .map(|(n, p)| StaticModels::record(n, p))
            .collect())
    }

    fn resolve(&self, name: &str) -> Result<ModelRecord, ModelsError> {
        let name = normalize_name(name);
        let names = self.names();
        let path = names
            .get(&name)
            .ok_or_else(|| ModelsError::NotFound { name: name.clone() })?;
        Ok(StaticModels::record(&name, path))
    }

    fn remove(&self, name: &str) -> Result<(), ModelsError> {
        let name = normalize_name(name);
        match self.names().remove(&name) {
            Some(_) => Ok(()),
            None => Err(ModelsError::NotFound { name }),
        }
    }

    fn copy(&self, src: &str, dst: &str) -> Result<(), ModelsError> {
        let (src, dst) = (normalize_name(src), normalize_name(dst));
        let mut names = self.names();
        let path = names
            .get(&src)
            .cloned()
            .ok_or(ModelsError::NotFound { name: src })?;
        names.insert(dst, path);
        Ok(())
    }

    fn pull(
        &self,
        name: &str,
        _progress: &mut dyn FnMut(&PullProgress),
    ) -> Result<ModelRecord, ModelsError> {
        Err(ModelsError::Unsupported {
            message: format!(
                "cannot pull '{name}': this server serves a fixed set of models (--model); \
                 run it over the model store to pull"
            ),
        })
    }

    fn describe(&self, record: &ModelRecord) -> Result<ModelDetails, ModelsError> {
        details_from_checkpoint(&record.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_counts_cover_every_matrix_experts_included() {
        // The fixtures' 2-D tensors are the truth (the hybrid ones: and DeltaNet's 3-D
        // convolutions; never the vision tower beside Qwen3.5's language model).
        for name in [
            "llama",
            "mixtral",
            "qwen2_moe",
            "qwen3_moe",
            "qwen3_next",
            "qwen3_5_moe",
        ] {
            let dir = hoist_testkit::models::runtime_fixtures().join(name);
            let d = details_from_checkpoint(&dir).unwrap();
            let table = hoist_format::TensorTable::open(&dir).unwrap();
            let matrices: u64 = table
                .tensors
                .iter()
                .filter(|t| t.shape.len() == 2 || t.name.contains("conv1d"))
                .filter(|t| !t.name.contains("visual") && !t.name.starts_with("mtp."))
                .map(|t| t.elements())
                .sum();
            assert_eq!(
                d.model_info["general.parameter_count"],
                json!(matrices),
                "{name}"
            );
        }
    }

    #[test]
    fn names_get_the_latest_tag() {
        assert_eq!(normalize_name("tiny"), "tiny:latest");
        assert_eq!(normalize_name("tiny:q4"), "tiny:q4");
        assert_eq!(normalize_name("host:5000/ns/m"), "host:5000/ns/m:latest");
    }

    #[test]
    fn static_models_copy_and_remove_names_only() {
        let m = StaticModels::new([("a".to_string(), PathBuf::from("/nowhere/a.gguf"))]);
        m.copy("a", "b:v1").unwrap();
        assert_eq!(
            m.resolve("b:v1").unwrap().path,
            PathBuf::from("/nowhere/a.gguf")
        );
        m.remove("a:latest").unwrap();
        assert!(matches!(m.resolve("a"), Err(ModelsError::NotFound { .. })));
        assert!(matches!(
            m.copy("a", "c"),
            Err(ModelsError::NotFound { .. })
        ));
        assert!(matches!(
            m.pull("a", &mut |_| {}),
            Err(ModelsError::Unsupported { .. })
        ));
        assert_eq!(human_count(1_234_000_000), "1.2B");
        assert_eq!(human_count(999), "999");
    }
}
