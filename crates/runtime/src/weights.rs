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
//! | `Layer(n, Gate/Up/Down)` | `….mlp.{gate,up,down}_proj.weight` | `blk.n.ffn_{gate,up,down}.weight` |
//! | `Layer(n, Router(s))` | `….mlp.gate.weight` (Mixtral: `….block_sparse_moe.gate.weight`) | `blk.n.ffn_gate_inp.weight` |
//! | `Layer(n, Expert(s, e, p))` | `….mlp.experts.e.{gate,up,down}_proj.weight` (Mixtral: `….block_sparse_moe.experts.e.w{1,3,2}.weight`) | `blk.n.ffn_{gate,up,down}.e.weight` |
//! | `Layer(n, SharedGate/SharedUp/SharedDown)` | `….mlp.shared_expert.{gate,up,down}_proj.weight` | `blk.n.ffn_{gate,up,down}_shexp.weight` |
//! | `Layer(n, SharedExpertGate)` | `….mlp.shared_expert_gate.weight` | `blk.n.ffn_gate_inp_shexp.weight` |
//!
//! Mixture-of-experts tensors exist only in the sparse layers of a model with
//! [`ModelConfig::moe`]; the others keep `Gate/Up/Down`. The GGUF names of experts are
//! llama.cpp's early per-expert ones, for error messages only: GGUF MoE files are refused when
//! their configuration is read.
//!
//! Shapes are outermost-first in both (the format crate reverses GGUF's order), so a projection
//! is `[out_features, in_features]` either way. Rotary layout: llama.cpp permutes the q and k
//! rows of `llama` GGUF files; see [`crate::RopeStyle`] for how the forward pass accounts for it.

use std::path::PathBuf;

use hoist_format::{DType, FileFormat, TensorTable};

use crate::config::{ArchFamily, ModelConfig};

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
    /// SwiGLU gate projection `[intermediate, hidden]`.
    Gate,
    /// SwiGLU up projection `[intermediate, hidden]`.
    Up,
    /// Down projection `[hidden, intermediate]`.
    Down,
    /// Mixture-of-experts router `[experts, hidden]` (named after the checkpoint's family).
    Router(MoeNaming),
    /// Projection `p` of expert `e` (`[expert_intermediate, hidden]`, down
    /// `[hidden, expert_intermediate]`).
    Expert(MoeNaming, usize, ExpertProj),
    /// The shared expert's gate projection `[shared_intermediate, hidden]` (Qwen2-MoE).
    SharedGate,
    /// The shared expert's up projection `[shared_intermediate, hidden]` (Qwen2-MoE).
    SharedUp,
    /// The shared expert's down projection `[hidden, shared_intermediate]` (Qwen2-MoE).
    SharedDown,
    /// The shared expert's sigmoid gate `[1, hidden]` (Qwen2-MoE).
    SharedExpertGate,
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
            LayerTensor::FfnNorm => "post_attention_layernorm.weight",
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
            LayerTensor::SharedGate => "mlp.shared_expert.gate_proj.weight",
            LayerTensor::SharedUp => "mlp.shared_expert.up_proj.weight",
            LayerTensor::SharedDown => "mlp.shared_expert.down_proj.weight",
            LayerTensor::SharedExpertGate => "mlp.shared_expert_gate.weight",
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
            LayerTensor::Gate => "ffn_gate.weight",
            LayerTensor::Up => "ffn_up.weight",
            LayerTensor::Down => "ffn_down.weight",
            LayerTensor::Router(_) => "ffn_gate_inp.weight",
            LayerTensor::Expert(_, e, p) => {
                let proj = match p {
                    ExpertProj::Gate => "gate",
                    ExpertProj::Up => "up",
                    ExpertProj::Down => "down",
                };
                return format!("ffn_{proj}.{e}.weight");
            }
            LayerTensor::SharedGate => "ffn_gate_shexp.weight",
            LayerTensor::SharedUp => "ffn_up_shexp.weight",
            LayerTensor::SharedDown => "ffn_down_shexp.weight",
            LayerTensor::SharedExpertGate => "ffn_gate_inp_shexp.weight",
        };
        name.into()
    }

    /// The tensors of one layer of a dense model of `config`'s architecture (every layer is
    /// alike), in the order they are used; [`LayerTensor::for_layer`] for any model.
    pub fn for_config(config: &ModelConfig) -> Vec<LayerTensor> {
        LayerTensor::for_layer(config, 0)
    }

    /// The tensors of layer `layer` of `config`'s model, in the order they are used: a
    /// mixture-of-experts model's sparse layers have a router and experts in place of
    /// `Gate/Up/Down`.
    pub fn for_layer(config: &ModelConfig, layer: usize) -> Vec<LayerTensor> {
        use LayerTensor::*;
        let mut out = vec![AttnNorm, Q, K, V];
        if config.attention_bias {
            out.extend([QBias, KBias, VBias]);
        }
        if config.qk_norm {
            out.extend([QNorm, KNorm]);
        }
        out.extend([O, FfnNorm]);
        match &config.moe {
            Some(moe) if moe.is_sparse(layer) => {
                let naming = match config.arch {
                    ArchFamily::Mixtral => MoeNaming::Mixtral,
                    _ => MoeNaming::Qwen,
                };
                out.push(Router(naming));
                for e in 0..moe.num_experts {
                    for p in [ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down] {
                        out.push(Expert(naming, e, p));
                    }
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
        match self {
            LayerTensor::AttnNorm | LayerTensor::FfnNorm => vec![h],
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
            LayerTensor::SharedGate | LayerTensor::SharedUp => vec![si, h],
            LayerTensor::SharedDown => vec![h, si],
            LayerTensor::SharedExpertGate => vec![1, h],
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
}

impl WeightMap {
    /// Finds every tensor `config` implies in `table` and checks shapes and dtypes. The output
    /// projection is looked up only when embeddings are not tied; `RopeFreqs` only if present.
    pub fn resolve(table: &TensorTable, config: &ModelConfig) -> Result<WeightMap, WeightError> {
        let source = WeightSource::of(table);
        let path = &table.root;
        let c = config;
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
            for t in LayerTensor::for_layer(c, n) {
                let what = format!("layer {n} of {} ({:?})", c.num_layers, c.arch);
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
        for (id, expected, what) in wanted {
            let name = source.name(id);
            let index = table.index_of(&name).ok_or_else(|| WeightError::Missing {
                path: path.clone(),
                name: name.clone(),
                what,
            })?;
            let info = &table.tensors[index];
            if info.shape != expected {
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
        Ok(WeightMap { source, entries })
    }

    /// The table index of `id`, if the model has it.
    pub fn index(&self, id: WeightId) -> Option<usize> {
        self.entries.iter().find(|e| e.0 == id).map(|e| e.1)
    }

    /// The table indices of every tensor, for a load.
    pub fn selection(&self) -> Vec<usize> {
        self.entries.iter().map(|e| e.1).collect()
    }
}

/// Whether the architecture's GGUF files permute q/k rows (llama.cpp does it for `llama`).
pub fn gguf_permutes_qk(arch: ArchFamily) -> bool {
    matches!(arch, ArchFamily::Llama | ArchFamily::Mistral)
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
}
