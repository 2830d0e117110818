//! One naming of a model's tensors for both sources, and the check that a checkpoint holds
//! them all with the right shapes.
//!
//! | [`WeightId`] | Hugging Face | GGUF |
//! | --- | --- | --- |
//! | `Embedding` | `model.embed_tokens.weight` | `token_embd.weight` |
//! | `OutputNorm` | `model.norm.weight` | `output_norm.weight` |
//! | `Output` | `lm_head.weight` | `output.weight` |
//! | `RopeFreqs` | — | `rope_freqs.weight` (Llama 3.1 scaling, optional) |
//! | `Layer(n, AttnNorm)` | `model.layers.n.input_layernorm.weight` | `blk.n.attn_norm.weight` |
//! | `Layer(n, Q/K/V/O)` | `….self_attn.{q,k,v,o}_proj.weight` | `blk.n.attn_{q,k,v,output}.weight` |
//! | `Layer(n, QBias/KBias/VBias)` | `….self_attn.{q,k,v}_proj.bias` | `blk.n.attn_{q,k,v}.bias` |
//! | `Layer(n, QNorm/KNorm)` | `….self_attn.{q,k}_norm.weight` | `blk.n.attn_{q,k}_norm.weight` |
//! | `Layer(n, FfnNorm)` | `….post_attention_layernorm.weight` | `blk.n.ffn_norm.weight` |
//! | `Layer(n, PostAttnNorm)` (hybrid models in GGUF) | `….post_attention_layernorm.weight` | `blk.n.post_attention_norm.weight` |
//! | `Layer(n, Gate/Up/Down)` | `….mlp.{gate,up,down}_proj.weight` | `blk.n.ffn_{gate,up,down}.weight` |
//! | `Layer(n, Router(s))` | `….mlp.gate.weight` (Mixtral: `….block_sparse_moe.gate.weight`) | `blk.n.ffn_gate_inp.weight` |
//! | `Layer(n, Expert(s, e, p))` | `….mlp.experts.e.{gate,up,down}_proj.weight` (Mixtral: `….block_sparse_moe.experts.e.w{1,3,2}.weight`) | (`blk.n.ffn_{gate,up,down}.e.weight`: not read) |
//! | `Layer(n, Experts(p))` | — | `blk.n.ffn_{gate,up,down}_exps.weight` |
//! | `Layer(n, SharedGate/SharedUp/SharedDown)` | `….mlp.shared_expert.{gate,up,down}_proj.weight` | `blk.n.ffn_{gate,up,down}_shexp.weight` |
//! | `Layer(n, SharedExpertGate)` | `….mlp.shared_expert_gate.weight` | `blk.n.ffn_gate_inp_shexp.weight` |
//!
//! | `Layer(n, LinearQkvz)` | `….linear_attn.in_proj_qkvz.weight` (Qwen3-Next) | — (split by the converter) |
//! | `Layer(n, LinearBa)` | `….linear_attn.in_proj_ba.weight` (Qwen3-Next) | `blk.n.ssm_ba.weight` (`qwen3next`) |
//! | `Layer(n, LinearQkv/LinearZ)` | `….linear_attn.in_proj_{qkv,z}.weight` (Qwen3.5) | `blk.n.attn_{qkv,gate}.weight` |
//! | `Layer(n, LinearB/LinearA)` | `….linear_attn.in_proj_{b,a}.weight` (Qwen3.5) | `blk.n.ssm_{beta,alpha}.weight` (`qwen35moe`) |
//! | `Layer(n, Conv1d/ALog/DtBias)` | `….linear_attn.{conv1d.weight,A_log,dt_bias}` | `blk.n.{ssm_conv1d.weight,ssm_a,ssm_dt.bias}` (`ssm_a` holds `-exp(A_log)`) |
//! | `Layer(n, LinearNorm/LinearOut)` | `….linear_attn.{norm,out_proj}.weight` | `blk.n.ssm_{norm,out}.weight` |
//!
//! Hybrid linear-attention models ([`ModelConfig::linear`]: Qwen3-Next, Qwen3.5-MoE; Hugging
//! Face checkpoints, and llama.cpp's `qwen3next`/`qwen35moe` GGUF files, whose layouts
//! [`DeltaLayout`] names) have the `Linear*`/`Conv1d`/`ALog`/`DtBias` tensors in their DeltaNet
//! layers in place of `Q/K/V/O` and the q/k norms, and a query projection twice as wide in
//! their full-attention layers (query and output gate per head). A Qwen3.5-MoE checkpoint with
//! a vision tower holds its language model under `model.language_model.` ([`WeightMap::name`]
//! applies the prefix); its `model.visual.*` tensors and any multi-token-prediction `mtp.*`
//! tensors are not part of the model and are never looked up.
//!
//! Mixture-of-experts tensors exist only in the sparse layers of a model with
//! [`ModelConfig::moe`]; the others keep `Gate/Up/Down`. The two sources store experts
//! differently, so [`LayerTensor::for_layer`] lists different tensors for each:
//!
//! - Hugging Face checkpoints hold one tensor per expert and projection: `Expert(s, e, p)`,
//!   `[expert_intermediate, hidden]` (down: `[hidden, expert_intermediate]`).
//! - Current llama.cpp GGUF files stack every expert of a projection in one tensor:
//!   `Experts(p)`, `[experts, expert_intermediate, hidden]` (down:
//!   `[experts, hidden, expert_intermediate]`). ggml quantizes along the innermost dimension,
//!   so every row is whole blocks and expert `e`'s matrix is one contiguous byte range,
//!   `e × rows × row bytes` from the tensor's start: [`ExpertSlice`] and
//!   [`WeightMap::expert_slice`] say where. llama.cpp's early per-expert GGUF names are kept
//!   for the error that says such a file must be converted again.
//!
//! Shapes are outermost-first in both (the format crate reverses GGUF's order), so a projection
//! is `[out_features, in_features]` either way. GGUF shapes match as ggml matches them: missing
//! outer dimensions count as 1 (llama.cpp's converter writes the shared expert's gate
//! `[1, hidden]`, as Hugging Face holds it; ggml's own shape for it is `[hidden]`). Rotary
//! layout: llama.cpp permutes the q and k rows of `llama` GGUF files; see [`crate::RopeStyle`]
//! for how the forward pass accounts for it.

use std::collections::HashMap;
use std::path::PathBuf;

use hoist_format::{DType, FileFormat, TensorInfo, TensorTable};

use crate::config::{ArchFamily, DeltaLayout, ModelConfig};
use crate::quant::affine::{self, AffineError, AffineSpec};

/// A checkpoint lacks a tensor the configuration implies, or holds one the runtime cannot use.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// A required tensor is absent.
    #[error("{}: missing tensor '{name}' ({what})", path.display())]
    Missing {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor's name in this checkpoint's naming.
        name: String,
        /// What the runtime needs it for.
        what: String,
    },
    /// A tensor's shape differs from the one the configuration implies.
    #[error("{}: tensor '{name}' has shape {found:?}, expected {expected:?} from the model configuration", path.display())]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<u64>,
        /// Shape in the checkpoint.
        found: Vec<u64>,
    },
    /// A tensor's element type is not one the runtime reads (on any device).
    #[error("{}: tensor '{name}' has dtype {dtype}, which hoist cannot read; supported: {}", path.display(), crate::quant::supported_names())]
    Dtype {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its element type.
        dtype: DType,
    },
    /// An MLX affine-quantized tensor's parts do not fit together or the config's spec.
    #[error("{}: {source}", path.display())]
    Affine {
        /// The checkpoint.
        path: PathBuf,
        /// What is wrong, naming the tensor.
        source: AffineError,
    },
    /// An MLX affine-quantized tensor's bytes could not be dequantized.
    #[error(transparent)]
    AffineData(#[from] AffineError),
    /// The tensor's element type has no conversion to f32 here.
    #[error("tensor '{name}': cannot convert {dtype} to f32")]
    Convert {
        /// The tensor.
        name: String,
        /// Its element type.
        dtype: DType,
    },
    /// The tensor's bytes do not match its dtype and shape (a loader bug or a torn file).
    #[error("tensor '{name}': {len} bytes do not hold {elements} elements of {dtype}")]
    Bytes {
        /// The tensor.
        name: String,
        /// Bytes present.
        len: usize,
        /// Elements expected.
        elements: u64,
        /// Element type.
        dtype: DType,
    },
}

/// A per-layer tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    /// RMS norm before attention.
    AttnNorm,
    /// Query projection `[heads*head_dim, hidden]`.
    Q,
    /// Key projection `[kv_heads*head_dim, hidden]`.
    K,
    /// Value projection `[kv_heads*head_dim, hidden]`.
    V,
    /// Attention output projection `[hidden, heads*head_dim]`.
    O,
    /// Query bias (Qwen2).
    QBias,
    /// Key bias (Qwen2).
    KBias,
    /// Value bias (Qwen2).
    VBias,
    /// Per-head RMS norm of queries (Qwen3).
    QNorm,
    /// Per-head RMS norm of keys (Qwen3).
    KNorm,
    /// RMS norm before the feed-forward block.
    FfnNorm,
    /// The same norm under llama.cpp's name for the hybrid models
    /// (`blk.N.post_attention_norm.weight` in `qwen3next`/`qwen35moe` GGUF files);
    /// [`LayerTensor::ffn_norm`] picks.
    PostAttnNorm,
    /// SwiGLU gate projection `[intermediate, hidden]`.
    Gate,
    /// SwiGLU up projection `[intermediate, hidden]`.
    Up,
    /// Down projection `[hidden, intermediate]`.
    Down,
    /// Mixture-of-experts router `[experts, hidden]` (named after the checkpoint's family).
    Router(MoeNaming),
    /// Projection `p` of expert `e` (`[expert_intermediate, hidden]`, down
    /// `[hidden, expert_intermediate]`): Hugging Face checkpoints.
    Expert(MoeNaming, usize, ExpertProj),
    /// Projection `p` of every expert, stacked (`[experts, expert_intermediate, hidden]`, down
    /// `[experts, hidden, expert_intermediate]`): GGUF files, and mlx-lm's Hugging Face-style
    /// checkpoints (`mlp.switch_mlp.*`). [`WeightMap::expert_slice`] finds one expert's matrix
    /// in it.
    Experts(ExpertProj),
    /// The shared expert's gate projection `[shared_intermediate, hidden]` (Qwen2-MoE).
    SharedGate,
    /// The shared expert's up projection `[shared_intermediate, hidden]` (Qwen2-MoE).
    SharedUp,
    /// The shared expert's down projection `[hidden, shared_intermediate]` (Qwen2-MoE).
    SharedDown,
    /// The shared expert's sigmoid gate `[1, hidden]` (Qwen2-MoE; GGUF files may hold it as
    /// `[hidden]`).
    SharedExpertGate,
    /// DeltaNet queries, keys, values, output gate, b and a, interleaved per key-head group
    /// `[2·key_dim + 2·value_dim, hidden]` (Qwen3-Next's `in_proj_qkvz`).
    LinearQkvz,
    /// DeltaNet b and a, interleaved per key-head group `[2·v_heads, hidden]` (Qwen3-Next's
    /// `in_proj_ba`).
    LinearBa,
    /// DeltaNet queries, keys and values `[2·key_dim + value_dim, hidden]` (Qwen3.5).
    LinearQkv,
    /// DeltaNet output gate `[value_dim, hidden]` (Qwen3.5).
    LinearZ,
    /// DeltaNet write strength (before the sigmoid) `[v_heads, hidden]` (Qwen3.5).
    LinearB,
    /// DeltaNet time step (before `dt_bias` and the softplus) `[v_heads, hidden]` (Qwen3.5).
    LinearA,
    /// DeltaNet causal depthwise convolution `[2·key_dim + value_dim, 1, kernel]`.
    Conv1d,
    /// DeltaNet log decay rates `[v_heads]`.
    ALog,
    /// DeltaNet time-step bias `[v_heads]`.
    DtBias,
    /// DeltaNet gated output norm `[v_head_dim]`.
    LinearNorm,
    /// DeltaNet output projection `[hidden, value_dim]`.
    LinearOut,
}

/// How a family names its mixture-of-experts tensors in Hugging Face checkpoints: part of the
/// tensor's id because the same tensor has different names in Mixtral and Qwen checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoeNaming {
    /// `block_sparse_moe.gate`, `block_sparse_moe.experts.e.w1/w3/w2` (Mixtral).
    Mixtral,
    /// `mlp.gate`, `mlp.experts.e.gate_proj/up_proj/down_proj` (Qwen2-MoE, Qwen3-MoE).
    Qwen,
}

/// One of an expert's three SwiGLU projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpertProj {
    /// Gate projection (Mixtral's `w1`).
    Gate,
    /// Up projection (Mixtral's `w3`).
    Up,
    /// Down projection (Mixtral's `w2`).
    Down,
}

impl ExpertProj {
    /// The projection's word in llama.cpp's tensor names (`ffn_gate_exps`).
    fn gguf_word(self) -> &'static str {
        match self {
            ExpertProj::Gate => "gate",
            ExpertProj::Up => "up",
            ExpertProj::Down => "down",
        }
    }
}

impl LayerTensor {
    fn hf_suffix(self) -> String {
        let name = match self {
            LayerTensor::AttnNorm => "input_layernorm.weight",
            LayerTensor::Q => "self_attn.q_proj.weight",
            LayerTensor::K => "self_attn.k_proj.weight",
            LayerTensor::V => "self_attn.v_proj.weight",
            LayerTensor::O => "self_attn.o_proj.weight",
            LayerTensor::QBias => "self_attn.q_proj.bias",
            LayerTensor::KBias => "self_attn.k_proj.bias",
            LayerTensor::VBias => "self_attn.v_proj.bias",
            LayerTensor::QNorm => "self_attn.q_norm.weight",
            LayerTensor::KNorm => "self_attn.k_norm.weight",
            LayerTensor::FfnNorm | LayerTensor::PostAttnNorm => "post_attention_layernorm.weight",
            LayerTensor::Gate => "mlp.gate_proj.weight",
            LayerTensor::Up => "mlp.up_proj.weight",
            LayerTensor::Down => "mlp.down_proj.weight",
            LayerTensor::Router(MoeNaming::Mixtral) => "block_sparse_moe.gate.weight",
            LayerTensor::Router(MoeNaming::Qwen) => "mlp.gate.weight",
            LayerTensor::Expert(naming, e, p) => {
                let (block, proj) = match (naming, p) {
                    (MoeNaming::Mixtral, ExpertProj::Gate) => ("block_sparse_moe", "w1"),
                    (MoeNaming::Mixtral, ExpertProj::Up) => ("block_sparse_moe", "w3"),
                    (MoeNaming::Mixtral, ExpertProj::Down) => ("block_sparse_moe", "w2"),
                    (MoeNaming::Qwen, ExpertProj::Gate) => ("mlp", "gate_proj"),
                    (MoeNaming::Qwen, ExpertProj::Up) => ("mlp", "up_proj"),
                    (MoeNaming::Qwen, ExpertProj::Down) => ("mlp", "down_proj"),
                };
                return format!("{block}.experts.{e}.{proj}.weight");
            }
            // mlx-lm's stacked experts (`SwitchGLU`), which [`WeightMap::resolve`] looks for
            // in place of the per-expert tensors.
            LayerTensor::Experts(p) => {
                return format!("mlp.switch_mlp.{}_proj.weight", p.gguf_word());
            }
            LayerTensor::SharedGate => "mlp.shared_expert.gate_proj.weight",
            LayerTensor::SharedUp => "mlp.shared_expert.up_proj.weight",
            LayerTensor::SharedDown => "mlp.shared_expert.down_proj.weight",
            LayerTensor::SharedExpertGate => "mlp.shared_expert_gate.weight",
            LayerTensor::LinearQkvz => "linear_attn.in_proj_qkvz.weight",
            LayerTensor::LinearBa => "linear_attn.in_proj_ba.weight",
            LayerTensor::LinearQkv => "linear_attn.in_proj_qkv.weight",
            LayerTensor::LinearZ => "linear_attn.in_proj_z.weight",
            LayerTensor::LinearB => "linear_attn.in_proj_b.weight",
            LayerTensor::LinearA => "linear_attn.in_proj_a.weight",
            LayerTensor::Conv1d => "linear_attn.conv1d.weight",
            LayerTensor::ALog => "linear_attn.A_log",
            LayerTensor::DtBias => "linear_attn.dt_bias",
            LayerTensor::LinearNorm => "linear_attn.norm.weight",
            LayerTensor::LinearOut => "linear_attn.out_proj.weight",
        };
        name.into()
    }

    fn gguf_suffix(self) -> String {
        let name = match self {
            LayerTensor::AttnNorm => "attn_norm.weight",
            LayerTensor::Q => "attn_q.weight",
            LayerTensor::K => "attn_k.weight",
            LayerTensor::V => "attn_v.weight",
            LayerTensor::O => "attn_output.weight",
            LayerTensor::QBias => "attn_q.bias",
            LayerTensor::KBias => "attn_k.bias",
            LayerTensor::VBias => "attn_v.bias",
            LayerTensor::QNorm => "attn_q_norm.weight",
            LayerTensor::KNorm => "attn_k_norm.weight",
            LayerTensor::FfnNorm => "ffn_norm.weight",
            LayerTensor::PostAttnNorm => "post_attention_norm.weight",
            LayerTensor::Gate => "ffn_gate.weight",
            LayerTensor::Up => "ffn_up.weight",
            LayerTensor::Down => "ffn_down.weight",
            LayerTensor::Router(_) => "ffn_gate_inp.weight",
            LayerTensor::Expert(_, e, p) => return format!("ffn_{}.{e}.weight", p.gguf_word()),
            LayerTensor::Experts(p) => return format!("ffn_{}_exps.weight", p.gguf_word()),
            LayerTensor::SharedGate => "ffn_gate_shexp.weight",
            LayerTensor::SharedUp => "ffn_up_shexp.weight",
            LayerTensor::SharedDown => "ffn_down_shexp.weight",
            LayerTensor::SharedExpertGate => "ffn_gate_inp_shexp.weight",
            // llama.cpp's converter splits `in_proj_qkvz` into `attn_qkv` and `attn_gate`
            // ([`LayerTensor::for_layer`] never asks for this one in a GGUF file).
            LayerTensor::LinearQkvz => "ssm_in.weight",
            LayerTensor::LinearBa => "ssm_ba.weight",
            LayerTensor::LinearQkv => "attn_qkv.weight",
            LayerTensor::LinearZ => "attn_gate.weight",
            LayerTensor::LinearB => "ssm_beta.weight",
            LayerTensor::LinearA => "ssm_alpha.weight",
            LayerTensor::Conv1d => "ssm_conv1d.weight",
            LayerTensor::ALog => "ssm_a",
            LayerTensor::DtBias => "ssm_dt.bias",
            LayerTensor::LinearNorm => "ssm_norm.weight",
            LayerTensor::LinearOut => "ssm_out.weight",
        };
        name.into()
    }

    /// The norm before a layer's feed-forward block: [`LayerTensor::PostAttnNorm`] in a hybrid
    /// model's GGUF file, [`LayerTensor::FfnNorm`] everywhere else.
    pub fn ffn_norm(config: &ModelConfig, source: WeightSource) -> LayerTensor {
        match (source, &config.linear) {
            (WeightSource::Gguf, Some(_)) => LayerTensor::PostAttnNorm,
            _ => LayerTensor::FfnNorm,
        }
    }

    /// The tensors of one layer of a dense model of `config`'s architecture (every layer is
    /// alike) stored in `source`, in the order they are used; [`LayerTensor::for_layer`] for any
    /// model.
    pub fn for_config(config: &ModelConfig, source: WeightSource) -> Vec<LayerTensor> {
        LayerTensor::for_layer(config, 0, source)
    }

    /// The tensors of layer `layer` of `config`'s model stored in `source`, in the order they
    /// are used: a mixture-of-experts model's sparse layers have a router and experts in place
    /// of `Gate/Up/Down`, one tensor per expert and projection from a Hugging Face checkpoint
    /// ([`LayerTensor::Expert`]), one stacked tensor per projection from a GGUF file
    /// ([`LayerTensor::Experts`]).
    ///
    /// A hybrid model's DeltaNet layers have their linear-attention tensors in place of the
    /// attention ones.
    pub fn for_layer(config: &ModelConfig, layer: usize, source: WeightSource) -> Vec<LayerTensor> {
        use LayerTensor::*;
        let mut out = vec![AttnNorm];
        match &config.linear {
            Some(lin) if lin.is_linear(layer) => {
                match lin.layout {
                    DeltaLayout::Fused => out.extend([LinearQkvz, LinearBa]),
                    DeltaLayout::Split | DeltaLayout::GgufTiled => {
                        out.extend([LinearQkv, LinearZ, LinearB, LinearA])
                    }
                    DeltaLayout::GgufFusedBa => out.extend([LinearQkv, LinearZ, LinearBa]),
                }
                out.extend([Conv1d, ALog, DtBias, LinearNorm, LinearOut]);
            }
            _ => {
                out.extend([Q, K, V]);
                if config.attention_bias {
                    out.extend([QBias, KBias, VBias]);
                }
                if config.qk_norm {
                    out.extend([QNorm, KNorm]);
                }
                out.push(O);
            }
        }
        out.push(LayerTensor::ffn_norm(config, source));
        match &config.moe {
            Some(moe) if moe.is_sparse(layer) => {
                let naming = match config.arch {
                    ArchFamily::Mixtral => MoeNaming::Mixtral,
                    _ => MoeNaming::Qwen,
                };
                out.push(Router(naming));
                let projs = [ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down];
                match source {
                    WeightSource::HuggingFace => {
                        for e in 0..moe.num_experts {
                            out.extend(projs.map(|p| Expert(naming, e, p)));
                        }
                    }
                    WeightSource::Gguf => out.extend(projs.map(Experts)),
                }
                if moe.shared_expert_intermediate_size.is_some() {
                    out.extend([SharedGate, SharedUp, SharedDown, SharedExpertGate]);
                }
            }
            _ => out.extend([Gate, Up, Down]),
        }
        out
    }

    /// The shape `config` implies, outermost first.
    pub fn shape(self, c: &ModelConfig) -> Vec<u64> {
        let (h, q, kv, i) = (
            c.hidden_size as u64,
            (c.num_heads * c.head_dim) as u64,
            (c.num_kv_heads * c.head_dim) as u64,
            c.intermediate_size as u64,
        );
        // Zero for a dense model, which has no such tensors.
        let moe = c.moe.as_ref();
        let experts = moe.map_or(0, |m| m.num_experts) as u64;
        let ei = moe.map_or(0, |m| m.expert_intermediate_size) as u64;
        let si = moe
            .and_then(|m| m.shared_expert_intermediate_size)
            .unwrap_or(0) as u64;
        // Zero for a model without linear-attention layers, which has no such tensors.
        let lin = c.linear.as_ref();
        let dim = |f: fn(&crate::config::LinearAttnConfig) -> usize| lin.map_or(0, f) as u64;
        let v_heads = dim(|l| l.num_v_heads);
        let key_dim = dim(|l| l.num_k_heads * l.k_head_dim);
        let value_dim = dim(|l| l.num_v_heads * l.v_head_dim);
        match self {
            LayerTensor::AttnNorm | LayerTensor::FfnNorm | LayerTensor::PostAttnNorm => vec![h],
            // Hybrid models' gated attention: a query and an output gate per head.
            LayerTensor::Q if lin.is_some() => vec![2 * q, h],
            LayerTensor::Q => vec![q, h],
            LayerTensor::K | LayerTensor::V => vec![kv, h],
            LayerTensor::O => vec![h, q],
            LayerTensor::QBias => vec![q],
            LayerTensor::KBias | LayerTensor::VBias => vec![kv],
            LayerTensor::QNorm | LayerTensor::KNorm => vec![c.head_dim as u64],
            LayerTensor::Gate | LayerTensor::Up => vec![i, h],
            LayerTensor::Down => vec![h, i],
            LayerTensor::Router(_) => vec![experts, h],
            LayerTensor::Expert(_, _, ExpertProj::Gate | ExpertProj::Up) => vec![ei, h],
            LayerTensor::Expert(_, _, ExpertProj::Down) => vec![h, ei],
            LayerTensor::Experts(ExpertProj::Gate | ExpertProj::Up) => vec![experts, ei, h],
            LayerTensor::Experts(ExpertProj::Down) => vec![experts, h, ei],
            LayerTensor::SharedGate | LayerTensor::SharedUp => vec![si, h],
            LayerTensor::SharedDown => vec![h, si],
            LayerTensor::SharedExpertGate => vec![1, h],
            LayerTensor::LinearQkvz => vec![2 * key_dim + 2 * value_dim, h],
            LayerTensor::LinearBa => vec![2 * v_heads, h],
            LayerTensor::LinearQkv => vec![2 * key_dim + value_dim, h],
            LayerTensor::LinearZ => vec![value_dim, h],
            LayerTensor::LinearB | LayerTensor::LinearA => vec![v_heads, h],
            LayerTensor::Conv1d => vec![2 * key_dim + value_dim, 1, dim(|l| l.conv_kernel)],
            LayerTensor::ALog | LayerTensor::DtBias => vec![v_heads],
            LayerTensor::LinearNorm => vec![dim(|l| l.v_head_dim)],
            LayerTensor::LinearOut => vec![h, value_dim],
        }
    }
}

/// A tensor of the model, named independently of the checkpoint format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightId {
    /// Token embedding `[vocab, hidden]`.
    Embedding,
    /// Final RMS norm `[hidden]`.
    OutputNorm,
    /// Output projection `[vocab, hidden]` (absent when tied to the embedding).
    Output,
    /// Per-dimension rotary frequency divisors `[head_dim/2]` (GGUF Llama 3.1 scaling).
    RopeFreqs,
    /// A tensor of layer `n`.
    Layer(usize, LayerTensor),
}

/// Where a checkpoint comes from: it decides the tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightSource {
    /// A Hugging Face checkpoint (safetensors).
    HuggingFace,
    /// A llama.cpp GGUF file.
    Gguf,
}

impl WeightSource {
    /// The source of an opened table (GGUF if its first file is GGUF).
    pub fn of(table: &TensorTable) -> WeightSource {
        match table.files.first().map(|f| f.format) {
            Some(FileFormat::Gguf { .. }) => WeightSource::Gguf,
            _ => WeightSource::HuggingFace,
        }
    }

    /// Whether a tensor of shape `found` is one of shape `expected`: equal for Hugging Face
    /// checkpoints; for GGUF files as ggml compares them, outer dimensions of 1 dropped (a
    /// `[1, hidden]` row is a `[hidden]` vector).
    fn same_shape(self, found: &[u64], expected: &[u64]) -> bool {
        match self {
            WeightSource::HuggingFace => found == expected,
            WeightSource::Gguf => {
                let inner = |s: &[u64]| {
                    let ones = s.iter().take_while(|&&d| d == 1).count();
                    // Keep one dimension: `[1]` and `[1, 1]` are both the scalar `[1]`.
                    s[ones.min(s.len().saturating_sub(1))..].to_vec()
                };
                inner(found) == inner(expected)
            }
        }
    }

    /// The name of `id` in this source.
    pub fn name(self, id: WeightId) -> String {
        match (self, id) {
            (WeightSource::HuggingFace, WeightId::Embedding) => "model.embed_tokens.weight".into(),
            (WeightSource::HuggingFace, WeightId::OutputNorm) => "model.norm.weight".into(),
            (WeightSource::HuggingFace, WeightId::Output) => "lm_head.weight".into(),
            (WeightSource::HuggingFace, WeightId::RopeFreqs) => "rope_freqs.weight".into(),
            (WeightSource::HuggingFace, WeightId::Layer(n, t)) => {
                format!("model.layers.{n}.{}", t.hf_suffix())
            }
            (WeightSource::Gguf, WeightId::Embedding) => "token_embd.weight".into(),
            (WeightSource::Gguf, WeightId::OutputNorm) => "output_norm.weight".into(),
            (WeightSource::Gguf, WeightId::Output) => "output.weight".into(),
            (WeightSource::Gguf, WeightId::RopeFreqs) => "rope_freqs.weight".into(),
            (WeightSource::Gguf, WeightId::Layer(n, t)) => format!("blk.{n}.{}", t.gguf_suffix()),
        }
    }
}

/// Where mlx-lm keeps a multimodal checkpoint's language model (`language_model.model.*`, its
/// output projection `language_model.lm_head.weight`).
const MLX_NESTED_PREFIX: &str = "language_model.model.";

/// `source`'s name of `id`, its leading `model.` replaced by `prefix` if any (the output
/// projection `lm_head.weight` stays at the top level, but in mlx-lm's nesting).
fn prefixed(source: WeightSource, prefix: Option<&str>, id: WeightId) -> String {
    let name = source.name(id);
    if id == WeightId::Output && prefix == Some(MLX_NESTED_PREFIX) {
        return format!("language_model.{name}");
    }
    match (prefix, name.strip_prefix("model.")) {
        (Some(p), Some(rest)) => format!("{p}{rest}"),
        _ => name,
    }
}

/// The element types the runtime reads: every one the CPU reference converts to f32 (the GPU
/// runtime reads a subset and checks it itself).
pub fn supported_dtype(d: DType) -> bool {
    match d {
        DType::F32 | DType::F16 | DType::BF16 => true,
        DType::Ggml(g) => crate::quant::supports(g),
        _ => false,
    }
}

/// Every tensor a model needs, resolved to its index in a [`TensorTable`].
#[derive(Clone, Debug)]
pub struct WeightMap {
    /// The source the names come from.
    pub source: WeightSource,
    /// `(id, index into table.tensors)` for every tensor the forward pass reads.
    pub entries: Vec<(WeightId, usize)>,
    /// `entries` by id: a mixture-of-experts model has tens of thousands of tensors, looked up
    /// one by one at load.
    by_id: HashMap<WeightId, usize>,
    /// Where a Hugging Face checkpoint keeps the language model instead of `model.`
    /// (`model.language_model.` beside a vision tower, mlx-lm's `language_model.model.`);
    /// `None`: the usual names.
    prefix: Option<String>,
    /// The MLX affine-quantized tensors, by the table index of their packed weight.
    affine: HashMap<usize, AffineParts>,
    /// Whether the checkpoint's zero-centred norms already hold `1 + weight` (mlx-lm's
    /// conversion of Qwen3-Next/Qwen3.5 adds the 1 once, and moves the conv1d kernel to
    /// `[channels, kernel, 1]`, by which it is told apart; llama.cpp's `qwen3next`/`qwen35moe`
    /// GGUF files always hold it): the loader must not add it again.
    pub norms_folded: bool,
}

/// The scales and biases beside an MLX affine-quantized weight `X.weight` (U32, packed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AffineParts {
    /// Bits and group size of the module.
    pub spec: AffineSpec,
    /// Table index of `X.scales`.
    pub scales: usize,
    /// Table index of `X.biases`.
    pub biases: usize,
    /// `X.scales`, by name (the loaded tensors are found by name).
    pub scales_name: String,
    /// `X.biases`, by name.
    pub biases_name: String,
    /// Shape of the unpacked matrix (`[..., out, in]`).
    pub shape: Vec<u64>,
}

impl WeightMap {
    /// Finds every tensor `config` implies in `table` and checks shapes and dtypes. The output
    /// projection is looked up only when embeddings are not tied; `RopeFreqs` only if present.
    pub fn resolve(table: &TensorTable, config: &ModelConfig) -> Result<WeightMap, WeightError> {
        let source = WeightSource::of(table);
        let path = &table.root;
        let c = config;
        let mlx_nested = format!("{MLX_NESTED_PREFIX}embed_tokens.weight");
        let prefix = match (source, &c.linear) {
            (WeightSource::HuggingFace, _) if table.get(&mlx_nested).is_some() => {
                Some(MLX_NESTED_PREFIX.to_string())
            }
            (WeightSource::HuggingFace, Some(lin)) if lin.hf_prefix != "model." => {
                Some(lin.hf_prefix.clone())
            }
            _ => None,
        };
        let name_of = |id| prefixed(source, prefix.as_deref(), id);
        let (v, h) = (c.vocab_size as u64, c.hidden_size as u64);
        let mut wanted: Vec<(WeightId, Vec<u64>, String)> = vec![
            (WeightId::Embedding, vec![v, h], "token embedding".into()),
            (WeightId::OutputNorm, vec![h], "final norm".into()),
        ];
        if !c.tie_word_embeddings {
            wanted.push((
                WeightId::Output,
                vec![v, h],
                "output projection; the config says embeddings are not tied".into(),
            ));
        }
        for n in 0..c.num_layers {
            let mut tensors = LayerTensor::for_layer(c, n, source);
            let switch_mlp = name_of(WeightId::Layer(n, LayerTensor::Experts(ExpertProj::Gate)));
            if source == WeightSource::HuggingFace && table.get(&switch_mlp).is_some() {
                // mlx-lm stacks each projection's experts in one tensor.
                stack_experts(&mut tensors);
            }
            for t in tensors {
                let mut what = format!("layer {n} of {} ({:?})", c.num_layers, c.arch);
                if let (LayerTensor::Experts(p), WeightSource::Gguf) = (t, source) {
                    // llama.cpp's first MoE files held one tensor per expert; say so rather
                    // than only that the stacked one is missing.
                    let old = source.name(WeightId::Layer(
                        n,
                        LayerTensor::Expert(MoeNaming::Qwen, 0, p),
                    ));
                    if table.get(&old).is_some() {
                        what.push_str(&format!(
                            "; the file holds llama.cpp's older per-expert tensors ('{old}', …), \
                             which hoist does not read: convert the checkpoint again with a \
                             current llama.cpp"
                        ));
                    }
                }
                wanted.push((WeightId::Layer(n, t), t.shape(c), what));
            }
        }
        if table.get(&source.name(WeightId::RopeFreqs)).is_some() {
            wanted.push((
                WeightId::RopeFreqs,
                vec![(c.head_dim / 2) as u64],
                "rotary frequency factors".into(),
            ));
        }
        let mut entries = Vec::with_capacity(wanted.len());
        let mut affine = HashMap::new();
        let mut norms_folded = false;
        for (id, expected, what) in wanted {
            let name = name_of(id);
            let index = table.index_of(&name).ok_or_else(|| WeightError::Missing {
                path: path.clone(),
                name: name.clone(),
                what,
            })?;
            let info = &table.tensors[index];
            if let Some(parts) = affine_parts(table, c, index)? {
                if parts.shape != expected {
                    return Err(WeightError::Shape {
                        path: path.clone(),
                        name,
                        expected,
                        found: parts.shape,
                    });
                }
                affine.insert(index, parts);
                entries.push((id, index));
                continue;
            }
            // mlx-lm's conv kernel `[channels, kernel, 1]`, llama.cpp's squeezed `[channels,
            // kernel]`: the same values in the same order.
            let (mlx_conv, gguf_conv) = match (id, &expected[..]) {
                (WeightId::Layer(_, LayerTensor::Conv1d), &[ch, 1, k]) => (
                    source == WeightSource::HuggingFace && k != 1 && info.shape == [ch, k, 1],
                    source == WeightSource::Gguf && info.shape == [ch, k],
                ),
                _ => (false, false),
            };
            norms_folded |= mlx_conv;
            if !mlx_conv && !gguf_conv && !source.same_shape(&info.shape, &expected) {
                return Err(WeightError::Shape {
                    path: path.clone(),
                    name,
                    expected,
                    found: info.shape.clone(),
                });
            }
            if !supported_dtype(info.dtype) {
                return Err(WeightError::Dtype {
                    path: path.clone(),
                    name,
                    dtype: info.dtype,
                });
            }
            entries.push((id, index));
        }
        // llama.cpp's converter adds the 1 to the hybrid models' zero-centred norms too
        // (`Qwen3NextModel.modify_tensors`, every `norm.weight` but the DeltaNet one).
        norms_folded |= source == WeightSource::Gguf && c.linear.is_some();
        let by_id = entries.iter().copied().collect();
        Ok(WeightMap {
            source,
            entries,
            by_id,
            prefix,
            affine,
            norms_folded,
        })
    }

    /// The scales and biases of `id`'s tensor when it is MLX affine-quantized.
    pub fn affine(&self, id: WeightId) -> Option<&AffineParts> {
        self.affine.get(&self.index(id)?)
    }

    /// What in this checkpoint is laid out as mlx-lm writes it and only the CPU reference
    /// reads (an affine-quantized tensor, stacked `switch_mlp` experts), named for a message;
    /// `None` for a plain checkpoint.
    pub fn mlx_only(&self, table: &TensorTable) -> Option<String> {
        let name = |i: usize| table.tensors.get(i).map_or("?", |t| t.name.as_str());
        if let Some((_, i)) = self.entries.iter().find(|e| self.affine.contains_key(&e.1)) {
            let spec = self.affine[i].spec;
            return Some(format!(
                "tensor '{}' is MLX affine-quantized ({}-bit, groups of {}, U32-packed with \
                 scales and biases)",
                name(*i),
                spec.bits,
                spec.group_size
            ));
        }
        let stacked = self.entries.iter().find(|(id, _)| {
            self.source == WeightSource::HuggingFace
                && matches!(id, WeightId::Layer(_, LayerTensor::Experts(_)))
        });
        stacked.map(|(_, i)| format!("tensor '{}' holds mlx-lm's stacked experts", name(*i)))
    }

    /// Parameters of the model's matrices (every tensor but vectors: norms, biases), counting
    /// an affine-quantized one's unpacked values, not its packed words.
    pub fn matrix_parameters(&self, table: &TensorTable) -> u64 {
        self.entries
            .iter()
            .filter_map(|&(_, i)| {
                let shape = match self.affine.get(&i) {
                    Some(parts) => &parts.shape,
                    None => &table.tensors.get(i)?.shape,
                };
                (shape.len() >= 2).then(|| shape.iter().product::<u64>())
            })
            .sum()
    }

    /// The name of `id` in the checkpoint this map was resolved from: [`WeightSource::name`],
    /// with the language model's prefix of a checkpoint that nests it.
    pub fn name(&self, id: WeightId) -> String {
        prefixed(self.source, self.prefix.as_deref(), id)
    }

    /// The table index of `id`, if the model has it.
    pub fn index(&self, id: WeightId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Where expert `expert`'s `proj` matrix of layer `layer` lies in `table` (the table this
    /// map was resolved from): the whole of its own tensor in a Hugging Face checkpoint, one
    /// expert's byte range of the stacked tensor in a GGUF file. `None` when the map has no
    /// such expert (a dense layer, an expert past the count).
    pub fn expert_slice(
        &self,
        table: &TensorTable,
        layer: usize,
        expert: usize,
        proj: ExpertProj,
    ) -> Option<ExpertSlice> {
        use LayerTensor::{Expert, Experts};
        if let Some(index) = self.index(WeightId::Layer(layer, Experts(proj))) {
            if self.affine.contains_key(&index) {
                // Packed words: no byte range of the file is one expert's matrix alone.
                return None;
            }
            return ExpertSlice::of_stacked(index, table.tensors.get(index)?, expert);
        }
        [MoeNaming::Mixtral, MoeNaming::Qwen]
            .into_iter()
            .find_map(|naming| self.index(WeightId::Layer(layer, Expert(naming, expert, proj))))
            .and_then(|index| ExpertSlice::whole(index, table.tensors.get(index)?))
    }

    /// The table indices of every tensor, for a load (an affine-quantized tensor's scales and
    /// biases after its packed weight).
    pub fn selection(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.entries.len() + 2 * self.affine.len());
        for &(_, i) in &self.entries {
            out.push(i);
            if let Some(parts) = self.affine.get(&i) {
                out.extend([parts.scales, parts.biases]);
            }
        }
        out
    }
}

/// A Hugging Face layer's per-expert tensors replaced by the stacked ones (one per
/// projection, where the first expert's stood), as mlx-lm writes them.
fn stack_experts(tensors: &mut Vec<LayerTensor>) {
    let mut out = Vec::with_capacity(tensors.len());
    for &t in tensors.iter() {
        match t {
            LayerTensor::Expert(_, 0, p) => out.push(LayerTensor::Experts(p)),
            LayerTensor::Expert(..) => {}
            other => out.push(other),
        }
    }
    *tensors = out;
}

/// The scales and biases of tensor `name` when it is MLX affine-quantized (its module
/// `X.weight` has `X.scales` beside it, the test mlx-lm's loader makes), checked against the
/// config's spec for the module; `None` for a plain tensor.
fn affine_parts(
    table: &TensorTable,
    config: &ModelConfig,
    index: usize,
) -> Result<Option<AffineParts>, WeightError> {
    let name = table.tensors[index].name.as_str();
    let path = &table.root;
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let (scales_name, biases_name) = (format!("{module}.scales"), format!("{module}.biases"));
    let Some(scales) = table.index_of(&scales_name) else {
        let packed = table.tensors[index].dtype == DType::U32;
        if packed && config.quantization.is_some() {
            return Err(WeightError::Missing {
                path: path.clone(),
                name: scales_name,
                what: format!(
                    "the scales of the MLX-packed U32 tensor '{name}'; the checkpoint is \
                     incomplete: download or convert it again"
                ),
            });
        }
        return Ok(None);
    };
    let Some(quant) = &config.quantization else {
        return Err(WeightError::Affine {
            path: path.clone(),
            source: AffineError::Tensor {
                name: name.into(),
                reason: format!(
                    "has '{scales_name}' beside it, but config.json has no 'quantization' entry \
                     saying its bits and group size; restore the config mlx-lm wrote"
                ),
            },
        });
    };
    let Some(spec) = quant.spec_for(module) else {
        return Err(WeightError::Affine {
            path: path.clone(),
            source: AffineError::Tensor {
                name: name.into(),
                reason: format!(
                    "has '{scales_name}' beside it, but config.json's quantization says \
                     '{module}' is not quantized"
                ),
            },
        });
    };
    let biases = table
        .index_of(&biases_name)
        .ok_or_else(|| WeightError::Missing {
            path: path.clone(),
            name: biases_name.clone(),
            what: format!(
            "the biases of the MLX affine-quantized '{name}' (hoist reads the \"affine\" mode, \
             which has scales and biases); the checkpoint is incomplete"
        ),
        })?;
    let t = |i: usize| &table.tensors[i];
    let shape = affine::logical_shape(spec, t(index), t(scales), t(biases)).map_err(|source| {
        WeightError::Affine {
            path: path.clone(),
            source,
        }
    })?;
    Ok(Some(AffineParts {
        spec,
        scales,
        biases,
        scales_name,
        biases_name,
        shape,
    }))
}

/// Bytes from one expert's `[rows, cols]` matrix to the next in a stacked expert tensor of
/// `dtype` (`[experts, rows, cols]`): `rows` rows of `cols` elements, each row whole blocks
/// for a block-quantized type (ggml quantizes along the innermost dimension, and GGUF files
/// are checked for it when opened). `None` when `cols` is not whole blocks, the type's size is
/// unknown, or the count overflows.
pub fn expert_stride(dtype: DType, rows: u64, cols: u64) -> Option<u64> {
    rows.checked_mul(dtype.byte_len(cols)?)
}

/// Where one expert's projection matrix lies: bytes `offset..offset + len` of the data of
/// tensor `index` of the table (see [`WeightMap::expert_slice`]). The bytes are the matrix in
/// the tensor's own element type, `[rows, cols]` row-major, so a kernel that reads a whole
/// `[rows, cols]` tensor of that type reads this slice the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertSlice {
    /// Index into [`TensorTable::tensors`] of the tensor that holds the matrix.
    pub index: usize,
    /// Byte offset of the matrix from the first byte of that tensor's data (0 for a
    /// per-expert tensor; a multiple of the block size for a quantized stacked one).
    pub offset: u64,
    /// Bytes of the matrix.
    pub len: u64,
    /// Rows of the matrix (output features).
    pub rows: usize,
    /// Columns of the matrix (input features).
    pub cols: usize,
}

impl ExpertSlice {
    /// The whole of a per-expert tensor `[rows, cols]`.
    fn whole(index: usize, info: &TensorInfo) -> Option<ExpertSlice> {
        let [rows, cols] = info.shape[..] else {
            return None;
        };
        Some(ExpertSlice {
            index,
            offset: 0,
            len: info.len,
            rows: usize::try_from(rows).ok()?,
            cols: usize::try_from(cols).ok()?,
        })
    }

    /// Expert `expert` of the stacked tensor `info` (`[experts, rows, cols]`), tensor `index`
    /// of its table; `None` when `info` is not 3-D, holds fewer experts, or its bytes are not
    /// `experts` matrices of [`expert_stride`] bytes.
    pub fn of_stacked(index: usize, info: &TensorInfo, expert: usize) -> Option<ExpertSlice> {
        let [experts, rows, cols] = info.shape[..] else {
            return None;
        };
        let e = u64::try_from(expert).ok().filter(|&e| e < experts)?;
        let stride = expert_stride(info.dtype, rows, cols)?;
        if stride.checked_mul(experts)? != info.len {
            return None;
        }
        Some(ExpertSlice {
            index,
            offset: e * stride,
            len: stride,
            rows: usize::try_from(rows).ok()?,
            cols: usize::try_from(cols).ok()?,
        })
    }
}

/// Whether the architecture's GGUF files permute q/k rows (llama.cpp does it for `llama`,
/// Mixtral's included).
pub fn gguf_permutes_qk(arch: ArchFamily) -> bool {
    matches!(
        arch,
        ArchFamily::Llama | ArchFamily::Mistral | ArchFamily::Mixtral
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_format::GgmlType;

    #[test]
    fn names() {
        let hf = WeightSource::HuggingFace;
        let gg = WeightSource::Gguf;
        let id = WeightId::Layer(3, LayerTensor::O);
        assert_eq!(hf.name(id), "model.layers.3.self_attn.o_proj.weight");
        assert_eq!(gg.name(id), "blk.3.attn_output.weight");
        let id = WeightId::Layer(0, LayerTensor::KNorm);
        assert_eq!(gg.name(id), "blk.0.attn_k_norm.weight");
        assert_eq!(hf.name(WeightId::Output), "lm_head.weight");
        assert_eq!(gg.name(WeightId::Embedding), "token_embd.weight");
        let e = |n, p| WeightId::Layer(1, LayerTensor::Expert(n, 5, p));
        assert_eq!(
            hf.name(e(MoeNaming::Mixtral, ExpertProj::Up)),
            "model.layers.1.block_sparse_moe.experts.5.w3.weight"
        );
        assert_eq!(
            hf.name(e(MoeNaming::Qwen, ExpertProj::Down)),
            "model.layers.1.mlp.experts.5.down_proj.weight"
        );
        assert_eq!(
            hf.name(WeightId::Layer(0, LayerTensor::Router(MoeNaming::Mixtral))),
            "model.layers.0.block_sparse_moe.gate.weight"
        );
        assert_eq!(
            hf.name(WeightId::Layer(0, LayerTensor::SharedExpertGate)),
            "model.layers.0.mlp.shared_expert_gate.weight"
        );
    }

    #[test]
    fn dtypes() {
        assert!(supported_dtype(DType::BF16));
        assert!(supported_dtype(DType::Ggml(GgmlType::Q4_0)));
        assert!(supported_dtype(DType::Ggml(GgmlType::Q4_K)), "Q4_K");
        assert!(supported_dtype(DType::Ggml(GgmlType::Q6_K)), "Q6_K");
        assert!(!supported_dtype(DType::Ggml(GgmlType(16))), "IQ2_XXS");
        assert!(!supported_dtype(DType::Ggml(GgmlType(9999))), "unknown");
        assert!(!supported_dtype(DType::I64));
    }

    #[test]
    fn stacked_expert_names() {
        let gg = WeightSource::Gguf;
        let id = |p| WeightId::Layer(2, LayerTensor::Experts(p));
        assert_eq!(gg.name(id(ExpertProj::Gate)), "blk.2.ffn_gate_exps.weight");
        assert_eq!(gg.name(id(ExpertProj::Up)), "blk.2.ffn_up_exps.weight");
        assert_eq!(gg.name(id(ExpertProj::Down)), "blk.2.ffn_down_exps.weight");
        let old = WeightId::Layer(2, LayerTensor::Expert(MoeNaming::Qwen, 7, ExpertProj::Down));
        assert_eq!(gg.name(old), "blk.2.ffn_down.7.weight");
    }

    fn qwen2_moe() -> ModelConfig {
        let json = serde_json::json!({
            "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 288, "hidden_size": 64,
            "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 96, "num_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 32, "shared_expert_intermediate_size": 48,
            "mlp_only_layers": [1],
        });
        ModelConfig::from_hf_json(&json, std::path::Path::new("config.json")).unwrap()
    }

    #[test]
    fn each_source_lists_its_expert_tensors() {
        let c = qwen2_moe();
        let hf = LayerTensor::for_layer(&c, 0, WeightSource::HuggingFace);
        let gg = LayerTensor::for_layer(&c, 0, WeightSource::Gguf);
        let per_expert = |v: &[LayerTensor]| {
            v.iter()
                .filter(|t| matches!(t, LayerTensor::Expert(..)))
                .count()
        };
        let stacked: Vec<_> = gg
            .iter()
            .filter(|t| matches!(t, LayerTensor::Experts(_)))
            .collect();
        assert_eq!((per_expert(&hf), per_expert(&gg)), (4 * 3, 0));
        assert_eq!(stacked.len(), 3);
        assert!(!hf.iter().any(|t| matches!(t, LayerTensor::Experts(_))));
        // Everything else is the same list, in the same order.
        let rest = |v: &[LayerTensor]| -> Vec<LayerTensor> {
            v.iter()
                .copied()
                .filter(|t| !matches!(t, LayerTensor::Expert(..) | LayerTensor::Experts(_)))
                .collect()
        };
        assert_eq!(rest(&hf), rest(&gg));
        assert!(gg.contains(&LayerTensor::SharedExpertGate));
        // The dense layer is dense in both.
        for source in [WeightSource::HuggingFace, WeightSource::Gguf] {
            let dense = LayerTensor::for_layer(&c, 1, source);
            assert!(
                dense.contains(&LayerTensor::Gate)
                    && !dense.iter().any(|t| matches!(t, LayerTensor::Router(_)))
            );
        }
        let shape = |p| LayerTensor::Experts(p).shape(&c);
        assert_eq!(shape(ExpertProj::Gate), [4, 32, 64]);
        assert_eq!(shape(ExpertProj::Up), [4, 32, 64]);
        assert_eq!(shape(ExpertProj::Down), [4, 64, 32]);
    }

    #[test]
    fn gguf_shapes_match_as_ggml_matches_them() {
        let (hf, gg) = (WeightSource::HuggingFace, WeightSource::Gguf);
        assert!(gg.same_shape(&[64], &[1, 64]) && gg.same_shape(&[1, 64], &[64]));
        assert!(gg.same_shape(&[1, 1, 8], &[8]) && gg.same_shape(&[1], &[1, 1]));
        assert!(
            !gg.same_shape(&[64, 1], &[64]),
            "inner dimensions of 1 are dimensions"
        );
        assert!(!gg.same_shape(&[2, 64], &[64]) && !gg.same_shape(&[], &[64]));
        assert!(!hf.same_shape(&[64], &[1, 64]) && hf.same_shape(&[1, 64], &[1, 64]));
    }

    /// Types with different block shapes: plain, 32-value legacy blocks, 256-value k-quant and
    /// IQ4_XS blocks.
    const STACKED_TYPES: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ];

    #[test]
    fn expert_stride_by_hand() {
        let q = |g| DType::Ggml(g);
        // Q8_0: 64 columns are 2 blocks of 34 bytes; 32 rows of them.
        assert_eq!(expert_stride(q(GgmlType::Q8_0), 32, 64), Some(32 * 68));
        assert_eq!(expert_stride(q(GgmlType::Q4_K), 3, 512), Some(3 * 2 * 144));
        assert_eq!(expert_stride(DType::BF16, 5, 7), Some(70));
        assert_eq!(
            expert_stride(q(GgmlType::Q8_0), 32, 48),
            None,
            "a partial block"
        );
        assert_eq!(
            expert_stride(q(GgmlType(9999)), 1, 32),
            None,
            "an unknown type"
        );
        assert_eq!(expert_stride(DType::F32, u64::MAX, 2), None, "overflow");
        let info = |shape: Vec<u64>, len| TensorInfo {
            name: "blk.0.ffn_up_exps.weight".into(),
            dtype: q(GgmlType::Q8_0),
            shape,
            file: 0,
            offset: 4096,
            len,
        };
        let s = ExpertSlice::of_stacked(7, &info(vec![4, 32, 64], 4 * 32 * 68), 3).unwrap();
        assert_eq!(
            s,
            ExpertSlice {
                index: 7,
                offset: 3 * 32 * 68,
                len: 32 * 68,
                rows: 32,
                cols: 64
            }
        );
        assert_eq!(
            ExpertSlice::of_stacked(7, &info(vec![4, 32, 64], 4 * 32 * 68), 4),
            None
        );
        assert_eq!(
            ExpertSlice::of_stacked(7, &info(vec![32, 64], 32 * 68), 0),
            None
        );
        assert_eq!(
            ExpertSlice::of_stacked(7, &info(vec![4, 32, 64], 100), 0),
            None
        );
    }

    proptest::proptest! {
        /// Expert `e`'s slice of a stacked tensor holds exactly its matrix: dequantized alone,
        /// it is rows `e·rows..(e+1)·rows` of the whole tensor dequantized, bit for bit (random
        /// bytes, NaN scales included), and the slices tile the tensor.
        #[test]
        fn expert_slices_tile_the_stacked_tensor(
            ty in proptest::sample::select(STACKED_TYPES.to_vec()),
            experts in 1u64..5,
            rows in 1u64..4,
            blocks in 1u64..3,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let dtype = DType::Ggml(ty);
            let (block_elems, _) = ty.block().unwrap();
            let cols = blocks * block_elems;
            let elements = experts * rows * cols;
            let len = dtype.byte_len(elements).unwrap();
            let mut state = seed | 1;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let info = TensorInfo {
                name: "stacked".into(),
                dtype,
                shape: vec![experts, rows, cols],
                file: 0,
                offset: 0,
                len,
            };
            let whole = crate::quant::dequantize(ty, &bytes, elements as usize).unwrap();
            let per = (rows * cols) as usize;
            let mut end = 0;
            for e in 0..experts as usize {
                let s = ExpertSlice::of_stacked(0, &info, e).unwrap();
                proptest::prop_assert_eq!(s.offset, end);
                proptest::prop_assert_eq!(s.len, expert_stride(dtype, rows, cols).unwrap());
                end = s.offset + s.len;
                let part = &bytes[s.offset as usize..end as usize];
                let alone = crate::quant::dequantize(ty, part, per).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                proptest::prop_assert_eq!(bits(&alone), bits(&whole[e * per..(e + 1) * per]));
            }
            proptest::prop_assert_eq!(end, len);
            proptest::prop_assert!(ExpertSlice::of_stacked(0, &info, experts as usize).is_none());
        }
    }
}
