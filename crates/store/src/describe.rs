//! [`describe`]: what `hoist show` prints about a model.

use std::collections::BTreeMap;
use std::path::Path;

use hoist_format::{MetaValue, TensorTable};
use hoist_runtime::ModelConfig;

use crate::{ModelEntry, ModelFormat, StoreError};

/// A model's details, from its GGUF metadata or its config.json and tokenizer files.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelDetails {
    /// The entry described.
    #[serde(flatten)]
    pub entry: ModelEntry,
    /// `general.architecture` (GGUF) or `architectures[0]` (config.json).
    pub architecture: Option<String>,
    /// Parameters (elements of all tensors).
    pub parameters: u64,
    /// The tensors' element types, each with its share of the weight bytes, largest first
    /// (`Q4_0 93.1%`, `F32 6.9%`).
    pub dtypes: Vec<(String, f64)>,
    /// The context length the model was trained for, where hoist can read its configuration.
    pub context_length: Option<usize>,
    /// The chat template (Jinja), where present.
    pub chat_template: Option<String>,
    /// The license (its name or text), where present.
    pub license: Option<String>,
    /// Why the configuration could not be read (an architecture hoist does not run), if so.
    pub config_error: Option<String>,
}

/// Reads a model's details (headers and small files only, never the weights).
pub fn describe(entry: &ModelEntry) -> Result<ModelDetails, StoreError> {
    let table = TensorTable::open(&entry.path)?;
    let mut bytes_by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for t in &table.tensors {
        *bytes_by_dtype.entry(format!("{:?}", t.dtype)).or_default() += t.len;
    }
    let total_bytes = bytes_by_dtype.values().sum::<u64>().max(1) as f64;
    let mut dtypes: Vec<(String, f64)> = bytes_by_dtype
        .into_iter()
        .map(|(d, b)| (d, 100.0 * b as f64 / total_bytes))
        .collect();
    dtypes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let details = match entry.format {
        ModelFormat::Gguf => gguf_details(&table),
        ModelFormat::Safetensors => hf_details(&entry.path),
    };
    let parameters = match entry.format {
        ModelFormat::Gguf => table.parameters(),
        ModelFormat::Safetensors => hf_parameters(&table, &entry.path),
    };
    Ok(ModelDetails {
        entry: entry.clone(),
        parameters,
        dtypes,
        ..details
    })
}

fn meta_str(table: &TensorTable, key: &str) -> Option<String> {
    match table.metadata.get(key) {
        Some(MetaValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

fn empty_details() -> ModelDetails {
    ModelDetails {
        entry: ModelEntry {
            name: String::new(),
            path: Default::default(),
            source: crate::Source::Hoist,
            size_bytes: 0,
            modified: std::time::SystemTime::UNIX_EPOCH,
            digest: None,
            format: ModelFormat::Gguf,
        },
        architecture: None,
        parameters: 0,
        dtypes: Vec::new(),
        context_length: None,
        chat_template: None,
        license: None,
        config_error: None,
    }
}

fn gguf_details(table: &TensorTable) -> ModelDetails {
    let architecture = meta_str(table, "general.architecture");
    let config = ModelConfig::from_gguf(table);
    let trained = architecture.as_ref().and_then(|a| {
        match table.metadata.get(&format!("{a}.context_length")) {
            Some(MetaValue::U64(n)) => usize::try_from(*n).ok(),
            _ => None,
        }
    });
    ModelDetails {
        context_length: config
            .as_ref()
            .ok()
            .map(|c| c.max_position_embeddings)
            .or(trained),
        chat_template: meta_str(table, "tokenizer.chat_template"),
        license: meta_str(table, "general.license"),
        config_error: config.err().map(|e| e.to_string()),
        architecture,
        ..empty_details()
    }
}

/// An MLX affine-quantized checkpoint's parameters unpacked (its config says how); every
/// other's, the tensors' elements.
fn hf_parameters(table: &TensorTable, dir: &Path) -> u64 {
    let config = ModelConfig::from_hf_file(&dir.join("config.json"));
    match config.ok().and_then(|c| c.quantization) {
        Some(q) => hoist_runtime::quant::affine::table_parameters(table, &q),
        None => table.parameters(),
    }
}

fn hf_details(dir: &Path) -> ModelDetails {
    let config_path = dir.join("config.json");
    let raw: Option<serde_json::Value> = std::fs::read(&config_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let architecture = raw
        .as_ref()
        .and_then(|j| j.get("architectures")?.get(0)?.as_str().map(str::to_string));
    let config = ModelConfig::from_hf_file(&config_path);
    ModelDetails {
        architecture,
        context_length: config.as_ref().ok().map(|c| c.max_position_embeddings),
        chat_template: hf_chat_template(dir),
        license: readme_license(dir),
        config_error: config.err().map(|e| e.to_string()),
        ..empty_details()
    }
}

/// `chat_template` of tokenizer_config.json (a string, or the `default` of a named list), else
/// chat_template.jinja.
fn hf_chat_template(dir: &Path) -> Option<String> {
    let json: Option<serde_json::Value> = std::fs::read(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let from_config = json.as_ref().and_then(|j| match j.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    });
    from_config.or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok())
}

/// The `license:` of README.md's YAML front matter (the model card).
fn readme_license(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let front = text.strip_prefix("---")?.split("\n---").next()?;
    front.lines().find_map(|l| {
        l.strip_prefix("license:")
            .map(|v| v.trim().trim_matches(['"', '\'']).to_string())
            .filter(|v| !v.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &str) -> ModelEntry {
        ModelEntry {
            path: Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../runtime/tests/fixtures")
                .join(dir),
            format: ModelFormat::Safetensors,
            ..empty_details().entry
        }
    }

    /// An MLX affine-quantized checkpoint counts its weights unpacked (and not its scales and
    /// biases): the same parameters as the checkpoint it was quantized from.
    #[test]
    fn affine_checkpoints_count_unpacked_parameters() {
        let quantized = describe(&entry("affine_qwen3")).unwrap();
        let plain = describe(&entry("qwen3")).unwrap();
        assert_eq!(quantized.parameters, plain.parameters);
        assert!(quantized.dtypes.iter().any(|(t, _)| t == "U32"));
    }
}
