//! Hybrid linear-attention settings (Qwen3-Next, Qwen3.5-MoE): which layers are Gated DeltaNet
//! layers and which gated full attention, and the DeltaNet layers' shape.
//!
//! | | Qwen3-Next (`qwen3_next`) | Qwen3.5-MoE (`qwen3_5_moe`) |
//! | --- | --- | --- |
//! | text settings | top level of `config.json` | under `text_config` (a `Qwen3_5MoeForCausalLM` checkpoint: top level) |
//! | layer kinds | `layer_types`, else every `full_attention_interval`-th (default 4) layer full | same |
//! | DeltaNet projections | `in_proj_qkvz`, `in_proj_ba`, interleaved per key-head group | `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a` |
//! | tensor prefix | `model.` | `model.language_model.` (text-only checkpoint: `model.`) |
//! | sparse layers | `decoder_sparse_step`, `mlp_only_layers` (as Qwen2-MoE) | every layer |
//! | GGUF (llama.cpp) | `qwen3next`: `attn_qkv`, `attn_gate`, `ssm_ba` | `qwen35moe`: `attn_qkv`, `attn_gate`, `ssm_beta`, `ssm_alpha`, value heads tiled |
//!
//! llama.cpp's converter (`conversion/qwen.py`, `Qwen3NextModel`) splits Qwen3-Next's
//! `in_proj_qkvz` into `attn_qkv` (all queries, all keys, all values) and `attn_gate` but keeps
//! `in_proj_ba` as `ssm_ba`; for Qwen3.5 (`_LinearAttentionVReorderBase`) it reorders the value
//! heads from grouped by key head to tiled (`[g0v0, g1v0, …, g0v1, …]`) wherever they appear. It
//! also stores `-exp(A_log)` as `ssm_a`, the conv kernel squeezed to `[channels, kernel]`, and
//! the zero-centred norms with their 1 added; GGUF metadata (`{arch}.ssm.*`,
//! `{arch}.attention.recurrent_layers`, `{arch}.rope.dimension_count`) gives the shape.
//!
//! Both have, unlike the rest of the family: RMS norms that scale by `1 + weight`
//! (zero-centred; the DeltaNet output norm excepted), a query projection twice as wide whose
//! second half per head gates the attention output through a sigmoid, and rotary embedding on
//! the first `partial_rotary_factor · head_dim` dimensions of a head only (default 0.25).

use serde_json::Value;

use hoist_format::MetaValue;

use super::{ArchFamily, ConfigError, Json, Meta};

/// What a layer mixes tokens with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// Gated DeltaNet (`"linear_attention"`).
    Linear,
    /// Gated softmax attention over a KV cache (`"full_attention"`).
    Full,
}

/// How a checkpoint stores a DeltaNet layer's input projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaLayout {
    /// `in_proj_qkvz` and `in_proj_ba`, interleaved per key-head group (Qwen3-Next).
    Fused,
    /// `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a` (Qwen3.5).
    Split,
    /// llama.cpp's `qwen3next`: `attn_qkv` and `attn_gate` (as [`DeltaLayout::Split`]), b and
    /// a still interleaved per key-head group in `ssm_ba` (as [`DeltaLayout::Fused`]).
    GgufFusedBa,
    /// llama.cpp's `qwen35moe`: the tensors of [`DeltaLayout::Split`] with the value heads
    /// tiled (`[g0v0, g1v0, …, g0v1, g1v1, …]`, `g` the key head) instead of grouped.
    GgufTiled,
}

/// The hybrid linear-attention part of a Qwen3-Next / Qwen3.5 configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearAttnConfig {
    /// Kind of each layer.
    pub layer_types: Vec<LayerKind>,
    /// DeltaNet query/key heads (`linear_num_key_heads`).
    pub num_k_heads: usize,
    /// DeltaNet value heads (`linear_num_value_heads`), a multiple of `num_k_heads`.
    pub num_v_heads: usize,
    /// Width of a DeltaNet query/key head (`linear_key_head_dim`).
    pub k_head_dim: usize,
    /// Width of a DeltaNet value head (`linear_value_head_dim`).
    pub v_head_dim: usize,
    /// Length of the causal convolution (`linear_conv_kernel_dim`).
    pub conv_kernel: usize,
    /// Dimensions of each attention head that rotary embedding turns
    /// (`head_dim · partial_rotary_factor`, even).
    pub rotary_dim: usize,
    /// How the DeltaNet input projections are stored.
    pub layout: DeltaLayout,
    /// Prefix of the language model's tensor names in a Hugging Face checkpoint (`"model."`,
    /// or `"model.language_model."` beside a vision tower).
    pub hf_prefix: String,
}

impl LinearAttnConfig {
    /// The kind of layer `layer` (full attention past the list, which `check` rules out).
    pub fn kind(&self, layer: usize) -> LayerKind {
        self.layer_types
            .get(layer)
            .copied()
            .unwrap_or(LayerKind::Full)
    }

    /// Whether layer `layer` is a DeltaNet layer.
    pub fn is_linear(&self, layer: usize) -> bool {
        self.kind(layer) == LayerKind::Linear
    }
}

/// Reads the linear-attention keys of the text settings `j` for `arch` (`None` for the other
/// architectures). `nested` says the settings came from `text_config`, so the language model's
/// tensors are under `model.language_model.`.
pub(super) fn hf_linear(
    j: &Json<'_>,
    arch: ArchFamily,
    num_layers: usize,
    head_dim: usize,
    nested: bool,
) -> Result<Option<LinearAttnConfig>, ConfigError> {
    let layout = match arch {
        ArchFamily::Qwen3Next => DeltaLayout::Fused,
        ArchFamily::Qwen35Moe => DeltaLayout::Split,
        _ => return Ok(None),
    };
    let layer_types = match j.json.get("layer_types") {
        None | Some(Value::Null) => {
            let interval = j.opt_usize("full_attention_interval")?.unwrap_or(4);
            every_nth_full(num_layers, interval)
                .ok_or_else(|| j.invalid("full_attention_interval", "must be positive"))?
        }
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| match v.as_str() {
                Some("linear_attention") => Ok(LayerKind::Linear),
                Some("full_attention") => Ok(LayerKind::Full),
                Some(other) => {
                    Err(j.unsupported("layer_types", other, "linear_attention, full_attention"))
                }
                None => Err(j.invalid("layer_types", "is not a list of strings")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(j.invalid("layer_types", "is not a list of strings")),
    };
    if layer_types.len() != num_layers {
        return Err(j.invalid(
            "layer_types",
            &format!(
                "has {} entries for num_hidden_layers = {num_layers}",
                layer_types.len()
            ),
        ));
    }
    // transformers 5 keeps it in `rope_parameters`; older configs at the top level.
    let factor = match j
        .json
        .get("rope_parameters")
        .and_then(|r| r.get("partial_rotary_factor"))
    {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| j.invalid("rope_parameters.partial_rotary_factor", "is not a number"))?,
        None => j.opt_f32("partial_rotary_factor")?.map_or(0.25, f64::from),
    };
    // transformers' `int(head_dim * partial_rotary_factor)`.
    let rotary_dim = (head_dim as f64 * factor) as usize;
    if !(factor > 0.0 && factor <= 1.0) || rotary_dim == 0 || !rotary_dim.is_multiple_of(2) {
        return Err(j.invalid(
            "partial_rotary_factor",
            &format!(
                "= {factor} gives {rotary_dim} rotary dimensions of head_dim {head_dim}; \
                 they must be even and positive"
            ),
        ));
    }
    let c = LinearAttnConfig {
        layer_types,
        num_k_heads: j.usize("linear_num_key_heads")?,
        num_v_heads: j.usize("linear_num_value_heads")?,
        k_head_dim: j.usize("linear_key_head_dim")?,
        v_head_dim: j.usize("linear_value_head_dim")?,
        conv_kernel: j.usize("linear_conv_kernel_dim")?,
        rotary_dim,
        layout,
        hf_prefix: if nested {
            "model.language_model.".into()
        } else {
            "model.".into()
        },
    };
    for (key, v) in [
        ("linear_num_key_heads", c.num_k_heads),
        ("linear_num_value_heads", c.num_v_heads),
        ("linear_key_head_dim", c.k_head_dim),
        ("linear_value_head_dim", c.v_head_dim),
        ("linear_conv_kernel_dim", c.conv_kernel),
    ] {
        if v == 0 {
            return Err(j.invalid(key, "must be positive"));
        }
    }
    if !c.num_v_heads.is_multiple_of(c.num_k_heads) {
        return Err(j.invalid(
            "linear_num_value_heads",
            &format!(
                "= {} is not a multiple of linear_num_key_heads = {}",
                c.num_v_heads, c.num_k_heads
            ),
        ));
    }
    Ok(Some(c))
}

/// Reads the linear-attention keys of a GGUF file's metadata for `arch` (`None` for the other
/// architectures), as llama.cpp's converter writes them: `ssm.group_count` key heads,
/// `ssm.time_step_rank` value heads, `ssm.state_size` the key head width, `ssm.inner_size` all
/// value heads' width, `ssm.conv_kernel`; `attention.recurrent_layers` which layers are DeltaNet
/// ones (else every `full_attention_interval`-th, default 4, is full attention);
/// `rope.dimension_count` the rotary dimensions (else the whole head, as llama.cpp).
/// Qwen3.5's `rope.dimension_sections` (interleaved MRoPE) is not read: text gives every section
/// the same position, which is plain rotary embedding, as for the Hugging Face checkpoints.
pub(super) fn gguf_linear(
    m: &Meta<'_>,
    arch_name: &str,
    arch: ArchFamily,
    num_layers: usize,
    head_dim: usize,
) -> Result<Option<LinearAttnConfig>, ConfigError> {
    let layout = match arch {
        ArchFamily::Qwen3Next => DeltaLayout::GgufFusedBa,
        ArchFamily::Qwen35Moe => DeltaLayout::GgufTiled,
        _ => return Ok(None),
    };
    let k = |suffix: &str| format!("{arch_name}.{suffix}");
    let recurrent_key = k("attention.recurrent_layers");
    let layer_types: Vec<LayerKind> = match m.meta.get(&recurrent_key) {
        Some(MetaValue::Array(a)) => a
            .iter()
            .map(|v| match v {
                MetaValue::Bool(true) => Ok(LayerKind::Linear),
                MetaValue::Bool(false) => Ok(LayerKind::Full),
                _ => Err(m.invalid(&recurrent_key, "is not a list of booleans")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(m.invalid(&recurrent_key, "is not a list of booleans")),
        None => {
            let interval_key = k("full_attention_interval");
            let interval = m.opt_usize(&interval_key)?.unwrap_or(4);
            every_nth_full(num_layers, interval)
                .ok_or_else(|| m.invalid(&interval_key, "must be positive"))?
        }
    };
    // The list covers `block_count` blocks, multi-token-prediction ones (written last, as
    // full attention) included; only the first `num_layers` are run.
    if layer_types.len() < num_layers {
        return Err(m.invalid(
            &recurrent_key,
            &format!("has {} entries for {num_layers} layers", layer_types.len()),
        ));
    }
    let layer_types = layer_types[..num_layers].to_vec();
    let rotary_key = k("rope.dimension_count");
    let rotary_dim = m.opt_usize(&rotary_key)?.unwrap_or(head_dim);
    if rotary_dim == 0 || rotary_dim > head_dim || !rotary_dim.is_multiple_of(2) {
        return Err(m.invalid(
            &rotary_key,
            &format!("= {rotary_dim} must be even, positive and at most the key length {head_dim}"),
        ));
    }
    let (kernel_key, state_key, group_key, rank_key, inner_key) = (
        k("ssm.conv_kernel"),
        k("ssm.state_size"),
        k("ssm.group_count"),
        k("ssm.time_step_rank"),
        k("ssm.inner_size"),
    );
    let num_k_heads = m.usize(&group_key)?;
    let num_v_heads = m.usize(&rank_key)?;
    let inner = m.usize(&inner_key)?;
    for (key, v) in [(&group_key, num_k_heads), (&rank_key, num_v_heads)] {
        if v == 0 {
            return Err(m.invalid(key, "must be positive"));
        }
    }
    if !inner.is_multiple_of(num_v_heads) {
        return Err(m.invalid(
            &inner_key,
            &format!("= {inner} is not a multiple of {rank_key} = {num_v_heads}"),
        ));
    }
    let c = LinearAttnConfig {
        layer_types,
        num_k_heads,
        num_v_heads,
        k_head_dim: m.usize(&state_key)?,
        v_head_dim: inner / num_v_heads,
        conv_kernel: m.usize(&kernel_key)?,
        rotary_dim,
        layout,
        // Not read: GGUF names have no prefix.
        hf_prefix: "model.".into(),
    };
    for (key, v) in [
        (&state_key, c.k_head_dim),
        (&inner_key, c.v_head_dim),
        (&kernel_key, c.conv_kernel),
    ] {
        if v == 0 {
            return Err(m.invalid(key, "must be positive"));
        }
    }
    if !c.num_v_heads.is_multiple_of(c.num_k_heads) {
        return Err(m.invalid(
            &rank_key,
            &format!(
                "= {} is not a multiple of {group_key} = {}",
                c.num_v_heads, c.num_k_heads
            ),
        ));
    }
    Ok(Some(c))
}

/// The layer kinds when every `interval`-th layer is full attention and the rest DeltaNet
/// (`full_attention_interval`, default 4 in both formats); `None` for an interval of 0.
fn every_nth_full(num_layers: usize, interval: usize) -> Option<Vec<LayerKind>> {
    (interval > 0).then(|| {
        (0..num_layers)
            .map(|i| match (i + 1).is_multiple_of(interval) {
                true => LayerKind::Full,
                false => LayerKind::Linear,
            })
            .collect()
    })
}
