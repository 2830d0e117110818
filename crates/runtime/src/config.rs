//! Model hyper-parameters, from a Hugging Face `config.json` or from GGUF metadata.
//!
//! Both sources land in one [`ModelConfig`]. What differs between the Llama-family
//! architectures (Llama 2/3/3.1, Mistral, Qwen2, Qwen3) is a handful of flags: q/k/v biases
//! (Qwen2), RMS norms on q and k per head (Qwen3), and the rotary frequencies (Llama 3.1's
//! scaling). Everything else is the same block, so one configuration type covers them.
//! Mixture-of-experts variants (Mixtral, Qwen2-MoE, Qwen3-MoE) replace the feed-forward block of
//! some layers by routed experts; [`MoeConfig`] (in `config/moe.rs`) says how. The hybrid
//! Qwen3-Next and Qwen3.5-MoE mix Gated DeltaNet (linear-attention) layers with gated
//! full-attention layers; [`LinearAttnConfig`] (in `config/linear.rs`) says which and how.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hoist_format::{MetaValue, TensorTable};
use serde_json::Value;

mod linear;
mod moe;

pub use linear::{DeltaLayout, LayerKind, LinearAttnConfig};
pub use moe::MoeConfig;

use crate::quant::affine::AffineConfig;

/// A configuration could not be read, or describes a model this runtime cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the model configuration: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{}: not valid JSON: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        source: serde_json::Error,
    },
    /// A required key is absent.
    #[error("{}: missing key '{key}'", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
    },
    /// A key holds a value of the wrong type or out of range.
    #[error("{}: key '{key}' {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A valid value this runtime does not support (another architecture, activation, scaling).
    #[error("{}: key '{key}' = {value}: not supported ({supported})", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// The value found.
        value: String,
        /// What is supported.
        supported: String,
    },
}

/// The architecture family: the block is the Llama decoder block in all of them; the family
/// decides the flags and the tensor set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchFamily {
    /// Llama 2, 3, 3.1 (`LlamaForCausalLM`, GGUF `llama`).
    Llama,
    /// Mistral (`MistralForCausalLM`; GGUF files call it `llama`).
    Mistral,
    /// Qwen2 / Qwen2.5: biases on q, k and v (`Qwen2ForCausalLM`, GGUF `qwen2`).
    Qwen2,
    /// Qwen3: RMS norm on q and k per head, no biases (`Qwen3ForCausalLM`, GGUF `qwen3`).
    Qwen3,
    /// Mixtral: Mistral attention, every feed-forward block a mixture of experts
    /// (`MixtralForCausalLM`; GGUF files call it `llama` and give it `llama.expert_count`).
    Mixtral,
    /// Qwen2-MoE: Qwen2 attention (q/k/v biases), experts plus a sigmoid-gated shared expert
    /// (`Qwen2MoeForCausalLM`, GGUF `qwen2moe`).
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3 attention (q/k norms), experts (`Qwen3MoeForCausalLM`, GGUF
    /// `qwen3moe`).
    Qwen3Moe,
    /// Qwen3-Next: Gated DeltaNet layers between gated full-attention layers, experts plus a
    /// sigmoid-gated shared expert (`Qwen3NextForCausalLM`, GGUF `qwen3next`; CPU reference
    /// only).
    Qwen3Next,
    /// Qwen3.5-MoE, its language model: Qwen3-Next's blocks, every layer sparse
    /// (`Qwen3_5MoeForConditionalGeneration`, `Qwen3_5MoeForCausalLM`, GGUF `qwen35moe`; CPU
    /// reference only).
    Qwen35Moe,
}

impl ArchFamily {
    /// Whether the attention's queries and keys are RMS-normed per head (Qwen3 and its MoE
    /// and hybrid successors).
    pub fn has_qk_norm(self) -> bool {
        matches!(
            self,
            ArchFamily::Qwen3
                | ArchFamily::Qwen3Moe
                | ArchFamily::Qwen3Next
                | ArchFamily::Qwen35Moe
        )
    }

    /// The Hugging Face `architectures` entries this runtime runs.
    pub const HF_NAMES: &'static str = "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
        Qwen3ForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, \
        Qwen3NextForCausalLM, Qwen3_5MoeForConditionalGeneration, Qwen3_5MoeForCausalLM";
    /// The GGUF `general.architecture` values this runtime runs.
    pub const GGUF_NAMES: &'static str =
        "llama, qwen2, qwen3, qwen2moe, qwen3moe, qwen3next, qwen35moe";

    /// From a Hugging Face `architectures` entry.
    pub fn from_hf(name: &str) -> Option<ArchFamily> {
        Some(match name {
            "LlamaForCausalLM" => ArchFamily::Llama,
            "MistralForCausalLM" => ArchFamily::Mistral,
            "Qwen2ForCausalLM" => ArchFamily::Qwen2,
            "Qwen3ForCausalLM" => ArchFamily::Qwen3,
            "MixtralForCausalLM" => ArchFamily::Mixtral,
            "Qwen2MoeForCausalLM" => ArchFamily::Qwen2Moe,
            "Qwen3MoeForCausalLM" => ArchFamily::Qwen3Moe,
            "Qwen3NextForCausalLM" => ArchFamily::Qwen3Next,
            "Qwen3_5MoeForConditionalGeneration" | "Qwen3_5MoeForCausalLM" => ArchFamily::Qwen35Moe,
            _ => return None,
        })
    }

    /// From GGUF `general.architecture`. `llama` gives [`ArchFamily::Llama`]: whether the file
    /// is Mixtral depends on its `llama.expert_count`, which [`ModelConfig::from_gguf`] reads.
    pub fn from_gguf(name: &str) -> Option<ArchFamily> {
        Some(match name {
            "llama" => ArchFamily::Llama,
            "qwen2" => ArchFamily::Qwen2,
            "qwen3" => ArchFamily::Qwen3,
            "qwen2moe" => ArchFamily::Qwen2Moe,
            "qwen3moe" => ArchFamily::Qwen3Moe,
            "qwen3next" => ArchFamily::Qwen3Next,
            "qwen35moe" => ArchFamily::Qwen35Moe,
            _ => return None,
        })
    }
}

/// How rotary embedding pairs the dimensions of a head.
///
/// Hugging Face checkpoints (every family) and llama.cpp's `qwen2`/`qwen3` GGUF files use
/// [`RopeStyle::Neox`]. llama.cpp's converter permutes the q and k projection rows of `llama`
/// GGUF files (HF's `rotate_half` layout back to Meta's original one), so those files need
/// [`RopeStyle::Interleaved`]; with it, the permuted weights give exactly the HF model's output.
/// Keeping each file's own layout means weights go to the GPU untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` rotates with `i + head_dim/2` (HF `rotate_half`, ggml `NEOX`).
    Neox,
    /// Dimension `2i` rotates with `2i + 1` (Meta's original layout, ggml `NORM`).
    Interleaved,
}

/// Rotary frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// Llama 3.1's (`rope_type: "llama3"`): low frequencies divided by `factor`, high ones
    /// kept, a smooth blend between.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f32,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are scaled.
        low_freq_factor: f32,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f32,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f32,
    },
}

/// Hyper-parameters of a Llama-family decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Architecture family.
    pub arch: ArchFamily,
    /// Vocabulary size (rows of the embedding and of the output projection).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder blocks.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (fewer than `num_heads` with grouped-query attention).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Width of the dense feed-forward block (of every layer of a dense model, of the layers a
    /// mixture-of-experts model keeps dense; Mixtral's equals its experts' width).
    pub intermediate_size: usize,
    /// RMS norm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base.
    pub rope_theta: f32,
    /// Rotary frequency scaling, if any.
    pub rope_scaling: Option<RopeScaling>,
    /// How rotary pairs dimensions (depends on the source, see [`RopeStyle`]).
    pub rope_style: RopeStyle,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (Qwen2).
    pub attention_bias: bool,
    /// RMS norm on q and k per head before rotary (Qwen3).
    pub qk_norm: bool,
    /// Keys further back than this many positions are masked (Mistral v0.1); `None`: none.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (Llama 3 lists several).
    pub eos_token_ids: Vec<u32>,
    /// Routed experts in place of the feed-forward block (Mixtral, Qwen2-MoE, Qwen3-MoE);
    /// `None`: a dense model.
    pub moe: Option<MoeConfig>,
    /// The hybrid linear-attention layout (Qwen3-Next, Qwen3.5-MoE): DeltaNet layers, gated
    /// attention with partial rotary, zero-centred norms; `None` for every other family.
    pub linear: Option<LinearAttnConfig>,
    /// MLX affine quantization of a Hugging Face checkpoint (mlx-lm's `quantization` entry):
    /// which modules' weights are packed, in how many bits and groups; `None`: none is.
    pub quantization: Option<AffineConfig>,
}

impl ModelConfig {
    /// Query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Checks relations between the numbers (all positive, heads divide, even head width).
    fn check(self, path: &Path) -> Result<ModelConfig, ConfigError> {
        let invalid = |key: &str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason,
        };
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("intermediate_size", self.intermediate_size),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be positive".into()));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(invalid(
                "num_key_value_heads",
                format!(
                    "= {} does not divide num_attention_heads = {}",
                    self.num_kv_heads, self.num_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                "head_dim",
                format!("= {} must be even for rotary embedding", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err(invalid(
                "rms_norm_eps/rope_theta",
                "must be positive".into(),
            ));
        }
        Ok(self)
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<ModelConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        ModelConfig::from_hf_json(&json, path)
    }

    /// Reads a parsed Hugging Face `config.json` (`path` only names it in errors).
    pub fn from_hf_json(json: &Value, path: &Path) -> Result<ModelConfig, ConfigError> {
        let j = Json { json, path };
        let arch_name = match json.get("architectures") {
            Some(Value::Array(a)) => a.first().and_then(Value::as_str).unwrap_or(""),
            Some(_) => return Err(j.invalid("architectures", "is not a list of strings")),
            None => return Err(j.missing("architectures")),
        };
        let arch = ArchFamily::from_hf(arch_name)
            .ok_or_else(|| j.unsupported("architectures", arch_name, ArchFamily::HF_NAMES))?;
        // Qwen3.5-MoE's multimodal checkpoints keep the language model's settings under
        // `text_config`; everything below reads them there (the vision tower is not run).
        let top = json;
        let (json, nested) = match (arch, json.get("text_config")) {
            (ArchFamily::Qwen35Moe, Some(t)) if t.is_object() => (t, true),
            (ArchFamily::Qwen35Moe, Some(_)) => {
                return Err(j.invalid("text_config", "is not an object"))
            }
            _ => (json, false),
        };
        let j = Json { json, path };
        if let Some(act) = json.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(j.unsupported("hidden_act", act, "silu"));
            }
        }
        let hidden_size = j.usize("hidden_size")?;
        let num_heads = j.usize("num_attention_heads")?;
        let head_dim = match j.opt_usize("head_dim")? {
            Some(d) => d,
            None => hidden_size / num_heads.max(1),
        };
        // transformers 5 moved the rotary settings into `rope_parameters`.
        let rope = json
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .map(|v| ("rope_parameters", v))
            .or_else(|| json.get("rope_scaling").map(|v| ("rope_scaling", v)));
        let rope_theta = match rope.and_then(|(_, r)| r.get("rope_theta")) {
            Some(v) => num_f32(v).ok_or_else(|| j.invalid("rope_theta", "is not a number"))?,
            None => j.opt_f32("rope_theta")?.unwrap_or(10000.0),
        };
        let rope_scaling = match rope {
            Some((key, r)) if r.is_object() => hf_rope_scaling(&j, key, r)?,
            _ => None,
        };
        let sliding_window = match arch {
            ArchFamily::Mistral | ArchFamily::Mixtral => j.opt_usize("sliding_window")?,
            ArchFamily::Qwen2
            | ArchFamily::Qwen3
            | ArchFamily::Qwen2Moe
            | ArchFamily::Qwen3Moe
            | ArchFamily::Qwen3Next
            | ArchFamily::Qwen35Moe => {
                if json.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
                    return Err(j.unsupported("use_sliding_window", "true", "false"));
                }
                None
            }
            ArchFamily::Llama => None,
        };
        let attention_bias = match arch {
            ArchFamily::Qwen2 => true,
            // transformers' `Qwen2MoeConfig.qkv_bias`, true unless turned off.
            ArchFamily::Qwen2Moe => json.get("qkv_bias").and_then(Value::as_bool) != Some(false),
            _ => json.get("attention_bias").and_then(Value::as_bool) == Some(true),
        };
        let eos_token_ids = match json.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| j.invalid("eos_token_id", "is not a list of token ids"))?,
            Some(v) => vec![v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| j.invalid("eos_token_id", "is not a token id"))?],
        };
        let bos_token_id = match j.opt_usize("bos_token_id")? {
            Some(b) => Some(u32::try_from(b).map_err(|_| j.invalid("bos_token_id", "too large"))?),
            None => None,
        };
        let num_layers = j.usize("num_hidden_layers")?;
        let moe = moe::hf_moe(&j, arch, num_layers)?;
        let linear = linear::hf_linear(&j, arch, num_layers, head_dim, nested)?;
        // Qwen3.5-MoE has no dense layer and no `intermediate_size`; the experts' width stands
        // in (nothing reads it).
        let intermediate_size = match (arch, &moe) {
            (ArchFamily::Qwen35Moe, Some(m)) => j
                .opt_usize("intermediate_size")?
                .unwrap_or(m.expert_intermediate_size),
            _ => j.usize("intermediate_size")?,
        };
        // A multimodal checkpoint states the tie at its top level.
        let tie = top
            .get("tie_word_embeddings")
            .or_else(|| json.get("tie_word_embeddings"));
        ModelConfig {
            arch,
            vocab_size: j.usize("vocab_size")?,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads: j.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
            head_dim,
            intermediate_size,
            rms_norm_eps: j.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            rope_style: RopeStyle::Neox,
            max_position_embeddings: j.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: tie.and_then(Value::as_bool) == Some(true),
            attention_bias,
            qk_norm: arch.has_qk_norm(),
            sliding_window,
            bos_token_id,
            eos_token_ids,
            moe,
            linear,
            quantization: hf_quantization(&Json { json: top, path })?,
        }
        .check(path)
    }

    /// Reads the configuration of a GGUF checkpoint from its metadata (and, where metadata is
    /// silent, from its tensors: the vocabulary size, whether the output projection is tied).
    pub fn from_gguf(table: &TensorTable) -> Result<ModelConfig, ConfigError> {
        let path = table.files.first().map_or(&table.root, |f| &f.path);
        let m = Meta {
            meta: &table.metadata,
            path,
        };
        let arch_name = m.str("general.architecture")?;
        let family = ArchFamily::from_gguf(arch_name).ok_or_else(|| {
            m.unsupported("general.architecture", arch_name, ArchFamily::GGUF_NAMES)
        })?;
        let k = |suffix: &str| format!("{arch_name}.{suffix}");
        let blocks = m.usize(&k("block_count"))?;
        // llama.cpp counts a checkpoint's multi-token-prediction layers in `block_count` (the
        // last `nextn_predict_layers` blocks, `blk.N.nextn.*`); hoist does not run them.
        let nextn_key = k("nextn_predict_layers");
        let nextn = m.opt_usize(&nextn_key)?.unwrap_or(0);
        let num_layers = blocks.checked_sub(nextn).ok_or_else(|| {
            m.invalid(
                &nextn_key,
                &format!("= {nextn} is more than block_count = {blocks}"),
            )
        })?;
        let feed_forward_length = m.opt_usize(&k("feed_forward_length"))?;
        // llama.cpp writes Mixtral as `llama` with an expert count.
        let (arch, moe) = moe::gguf_moe(
            &m,
            table,
            arch_name,
            family,
            num_layers,
            feed_forward_length,
        )?;
        // The dense block's width; a model whose every layer is sparse has none, and llama.cpp
        // does not need the key then.
        let intermediate_size = match (feed_forward_length, &moe) {
            (Some(ff), _) => ff,
            (None, Some(moe)) if moe.mlp_only_layers.is_empty() => moe.expert_intermediate_size,
            (None, _) => return Err(m.missing(&k("feed_forward_length"))),
        };
        let hidden_size = m.usize(&k("embedding_length"))?;
        let num_heads = m.usize(&k("attention.head_count"))?;
        let head_dim = match m.opt_usize(&k("attention.key_length"))? {
            Some(d) => d,
            None => hidden_size / num_heads.max(1),
        };
        if let Some(v) = m.opt_usize(&k("attention.value_length"))? {
            if v != head_dim {
                return Err(m.unsupported(
                    &k("attention.value_length"),
                    &v.to_string(),
                    "equal to the key length",
                ));
            }
        }
        let linear = linear::gguf_linear(&m, arch_name, arch, num_layers, head_dim)?;
        // Hybrid models turn part of each head (`LinearAttnConfig::rotary_dim`).
        if let (Some(r), None) = (m.opt_usize(&k("rope.dimension_count"))?, &linear) {
            if r != head_dim {
                return Err(m.unsupported(
                    &k("rope.dimension_count"),
                    &r.to_string(),
                    "rotary over the whole head (= key length)",
                ));
            }
        }
        if let Some(MetaValue::String(t)) = table.metadata.get(&k("rope.scaling.type")) {
            if t != "none" {
                return Err(m.unsupported(&k("rope.scaling.type"), t, "none"));
            }
        }
        let vocab_size = match m.opt_usize(&k("vocab_size"))? {
            Some(v) => v,
            None => match table.metadata.get("tokenizer.ggml.tokens") {
                Some(MetaValue::Array(tokens)) => tokens.len(),
                _ => match table.get("token_embd.weight") {
                    Some(t) if t.shape.len() == 2 => t.shape[0] as usize,
                    _ => return Err(m.missing(&k("vocab_size"))),
                },
            },
        };
        let bos_token_id = m.opt_u32("tokenizer.ggml.bos_token_id")?;
        let eos_token_ids = m
            .opt_u32("tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect();
        ModelConfig {
            arch,
            vocab_size,
            hidden_size,
            num_layers,
            num_heads,
            num_kv_heads: m
                .opt_usize(&k("attention.head_count_kv"))?
                .unwrap_or(num_heads),
            head_dim,
            intermediate_size,
            rms_norm_eps: m.f32(&k("attention.layer_norm_rms_epsilon"))?,
            rope_theta: m.opt_f32(&k("rope.freq_base"))?.unwrap_or(10000.0),
            // Llama 3.1 GGUF files carry the scaling as the `rope_freqs.weight` tensor.
            rope_scaling: None,
            rope_style: match arch {
                ArchFamily::Llama | ArchFamily::Mistral | ArchFamily::Mixtral => {
                    RopeStyle::Interleaved
                }
                _ => RopeStyle::Neox,
            },
            max_position_embeddings: m.usize(&k("context_length"))?,
            tie_word_embeddings: table.get("output.weight").is_none(),
            // llama.cpp's q/k/v biases are optional tensors; Qwen2-MoE checkpoints may turn them
            // off (transformers' `qkv_bias`), so the file decides.
            attention_bias: match arch {
                ArchFamily::Qwen2 => true,
                ArchFamily::Qwen2Moe => table.get("blk.0.attn_q.bias").is_some(),
                _ => false,
            },
            qk_norm: arch.has_qk_norm(),
            // llama.cpp's converter writes no sliding window for these architectures and its
            // `llama` graph attends over the whole context (Mistral's and Mixtral's GGUF files
            // run without the window the Hugging Face checkpoint may have).
            sliding_window: None,
            bos_token_id,
            eos_token_ids,
            moe,
            linear,
            // GGUF files carry their quantization in each tensor's type.
            quantization: None,
        }
        .check(path)
    }
}

/// mlx-lm's quantization entry, at the top level of `config.json` (a multimodal one's too):
/// `quantization`, or the same under `quantization_config` where that is not another method's
/// (those name a `quant_method`: GPTQ, AWQ, FP8…, which hoist does not read).
fn hf_quantization(j: &Json<'_>) -> Result<Option<AffineConfig>, ConfigError> {
    let entry = match (
        j.json.get("quantization"),
        j.json.get("quantization_config"),
    ) {
        (Some(v), _) => Some(("quantization", v)),
        (None, Some(v)) if v.get("quant_method").is_none() => Some(("quantization_config", v)),
        _ => None,
    };
    let Some((key, v)) = entry else {
        return Ok(None);
    };
    AffineConfig::from_json(v, key)
        .map(Some)
        .map_err(|e| match e {
            crate::quant::affine::AffineError::Spec { key, reason } => ConfigError::Invalid {
                path: j.path.to_path_buf(),
                key,
                reason,
            },
            other => j.invalid(key, &other.to_string()),
        })
}

fn hf_rope_scaling(j: &Json<'_>, key: &str, r: &Value) -> Result<Option<RopeScaling>, ConfigError> {
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => Ok(None),
        "llama3" => {
            let f = |name: &str| {
                r.get(name).and_then(num_f32).ok_or_else(|| {
                    j.invalid(&format!("{key}.{name}"), "is missing or not a number")
                })
            };
            Ok(Some(RopeScaling::Llama3 {
                factor: f("factor")?,
                low_freq_factor: f("low_freq_factor")?,
                high_freq_factor: f("high_freq_factor")?,
                original_max_position_embeddings: f("original_max_position_embeddings")?,
            }))
        }
        other => Err(j.unsupported(&format!("{key}.rope_type"), other, "default, llama3")),
    }
}

fn num_f32(v: &Value) -> Option<f32> {
    v.as_f64().map(|x| x as f32)
}

/// Typed look-ups in a JSON object, with errors naming the file and key.
struct Json<'a> {
    json: &'a Value,
    path: &'a Path,
}

impl Json<'_> {
    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            key: key.into(),
        }
    }

    fn invalid(&self, key: &str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn unsupported(&self, key: &str, value: &str, supported: &str) -> ConfigError {
        ConfigError::Unsupported {
            path: self.path.to_path_buf(),
            key: key.into(),
            value: value.into(),
            supported: supported.into(),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(key, "is not a non-negative integer")),
        }
    }

    fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ConfigError> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => num_f32(v)
                .map(Some)
                .ok_or_else(|| self.invalid(key, "is not a number")),
        }
    }
}

/// Typed look-ups in GGUF metadata, with errors naming the file and key.
struct Meta<'a> {
    meta: &'a BTreeMap<String, MetaValue>,
    path: &'a Path,
}

impl Meta<'_> {
    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::Missing {
            path: self.path.to_path_buf(),
            key: key.into(),
        }
    }

    fn unsupported(&self, key: &str, value: &str, supported: &str) -> ConfigError {
        ConfigError::Unsupported {
            path: self.path.to_path_buf(),
            key: key.into(),
            value: value.into(),
            supported: supported.into(),
        }
    }

    fn invalid(&self, key: &str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn str(&self, key: &str) -> Result<&str, ConfigError> {
        match self.meta.get(key) {
            Some(MetaValue::String(s)) => Ok(s),
            Some(_) => Err(self.invalid(key, "is not a string")),
            None => Err(self.missing(key)),
        }
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        let n = match self.meta.get(key) {
            None => return Ok(None),
            Some(MetaValue::U64(n)) => Some(*n),
            Some(MetaValue::I64(n)) => u64::try_from(*n).ok(),
            Some(_) => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.invalid(key, "is not a non-negative integer"))
    }

    fn usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_u32(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        match self.opt_usize(key)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| self.invalid(key, "is too large for a token id")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.invalid(key, "is not a boolean")),
        }
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ConfigError> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(MetaValue::F64(x)) => Ok(Some(*x as f32)),
            Some(MetaValue::U64(x)) => Ok(Some(*x as f32)),
            Some(MetaValue::I64(x)) => Ok(Some(*x as f32)),
            Some(_) => Err(self.invalid(key, "is not a number")),
        }
    }

    fn f32(&self, key: &str) -> Result<f32, ConfigError> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hf(v: Value) -> Result<ModelConfig, ConfigError> {
        ModelConfig::from_hf_json(&v, Path::new("config.json"))
    }

    fn llama31() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
            "vocab_size": 128256, "hidden_size": 4096, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
            "tie_word_embeddings": false
        })
    }

    #[test]
    fn llama_3_1_config() {
        let c = hf(llama31()).unwrap();
        assert_eq!(c.arch, ArchFamily::Llama);
        assert_eq!((c.head_dim, c.group_size()), (128, 4));
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(
            c.rope_scaling,
            Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0
            })
        );
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
        assert_eq!(c.bos_token_id, Some(128000));
        assert!(!c.attention_bias && !c.qk_norm && !c.tie_word_embeddings);
    }

    #[test]
    fn transformers_5_rope_parameters() {
        let mut v = llama31();
        let obj = v.as_object_mut().unwrap();
        obj.remove("rope_theta");
        let mut params = obj.remove("rope_scaling").unwrap();
        params["rope_theta"] = json!(250000.0);
        obj.insert("rope_parameters".into(), params);
        let c = hf(v).unwrap();
        assert_eq!(c.rope_theta, 250000.0);
        assert!(
            matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0)
        );
    }

    #[test]
    fn qwen_flags() {
        let mut v = llama31();
        v["architectures"] = json!(["Qwen2ForCausalLM"]);
        v["rope_scaling"] = Value::Null;
        let c = hf(v.clone()).unwrap();
        assert!(c.attention_bias && !c.qk_norm && c.rope_scaling.is_none());
        v["architectures"] = json!(["Qwen3ForCausalLM"]);
        v["head_dim"] = json!(64);
        let c = hf(v).unwrap();
        assert!(!c.attention_bias && c.qk_norm);
        assert_eq!(c.head_dim, 64, "explicit head_dim wins over hidden/heads");
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = llama31();
        v.as_object_mut().unwrap().remove("hidden_size");
        let e = hf(v).unwrap_err().to_string();
        assert!(
            e.contains("config.json") && e.contains("'hidden_size'"),
            "{e}"
        );

        let mut v = llama31();
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let e = hf(v).unwrap_err().to_string();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("LlamaForCausalLM"),
            "{e}"
        );

        let mut v = llama31();
        v["rope_scaling"] = json!({"rope_type": "yarn", "factor": 4.0});
        let e = hf(v).unwrap_err().to_string();
        assert!(
            e.contains("rope_scaling.rope_type") && e.contains("yarn"),
            "{e}"
        );

        let mut v = llama31();
        v["num_key_value_heads"] = json!(5);
        let e = hf(v).unwrap_err().to_string();
        assert!(e.contains("does not divide"), "{e}");

        let mut v = llama31();
        v["hidden_act"] = json!("gelu");
        assert!(hf(v).unwrap_err().to_string().contains("gelu"));

        let mut v = llama31();
        v["vocab_size"] = json!("many");
        let e = hf(v).unwrap_err().to_string();
        assert!(e.contains("'vocab_size'") && e.contains("integer"), "{e}");
    }

    #[test]
    fn mlx_quantization_entries() {
        use crate::quant::affine::AffineSpec;
        let with = |key: &str, q: Value| {
            let mut v = llama31();
            v[key] = q;
            hf(v)
        };
        let spec = |bits, group_size| AffineSpec { bits, group_size };
        assert_eq!(hf(llama31()).unwrap().quantization, None);
        let q = json!({"group_size": 64, "bits": 4, "mode": "affine", "lm_head": {"group_size": 32, "bits": 8}});
        let c = with("quantization", q.clone())
            .unwrap()
            .quantization
            .unwrap();
        assert_eq!(c.default, spec(4, 64));
        assert_eq!(c.spec_for("lm_head"), Some(spec(8, 32)));
        // mlx-lm's copy under `quantization_config` reads the same; another method's does not.
        let c2 = with("quantization_config", q)
            .unwrap()
            .quantization
            .unwrap();
        assert_eq!(c, c2);
        let gptq = json!({"quant_method": "gptq", "bits": 4, "group_size": 128});
        assert_eq!(
            with("quantization_config", gptq).unwrap().quantization,
            None
        );
        let e = with("quantization", json!({"group_size": 64, "bits": 16}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.json") && e.contains("'quantization'") && e.contains("bits = 16"),
            "{e}"
        );
    }
}
