//! Model layouts: the tensor names and shapes that Hugging Face checkpoints of these families
//! have, in the order `save_pretrained` assigns them to shards.

use hoist_format::DType;

/// One tensor of a synthetic checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape, outermost first.
    pub shape: Vec<u64>,
}

impl TensorSpec {
    /// Byte length of the tensor's data.
    pub fn byte_len(&self) -> u64 {
        let elems: u64 = self.shape.iter().product();
        self.dtype
            .byte_len(elems)
            .expect("synthetic shapes are whole bytes")
    }
}

/// A decoder-only transformer's layout.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// Vocabulary size.
    pub vocab: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Decoder layers.
    pub layers: u64,
    /// MLP intermediate size (per expert for MoE).
    pub intermediate: u64,
    /// Attention heads.
    pub heads: u64,
    /// Key/value heads (GQA).
    pub kv_heads: u64,
    /// Head dimension.
    pub head_dim: u64,
    /// MoE experts per layer (0: dense MLP).
    pub experts: u64,
    /// Per-head q/k RMSNorm weights (Qwen3).
    pub qk_norm: bool,
    /// q/k/v projection biases (Qwen2).
    pub qkv_bias: bool,
    /// Weight dtype.
    pub dtype: DType,
    /// Largest shard in bytes; `None` writes one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
}

impl ModelSpec {
    /// Tensors in module order (embedding, layers, final norm, head).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let t = |name: String, shape: Vec<u64>| TensorSpec {
            name,
            dtype: self.dtype,
            shape,
        };
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        let mut out = vec![t("model.embed_tokens.weight".into(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            out.push(t(format!("{p}.input_layernorm.weight"), vec![h]));
            out.push(t(format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
            out.push(t(format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
            out.push(t(format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
            if self.qkv_bias {
                out.push(t(format!("{p}.self_attn.q_proj.bias"), vec![q]));
                out.push(t(format!("{p}.self_attn.k_proj.bias"), vec![kv]));
                out.push(t(format!("{p}.self_attn.v_proj.bias"), vec![kv]));
            }
            if self.qk_norm {
                out.push(t(
                    format!("{p}.self_attn.q_norm.weight"),
                    vec![self.head_dim],
                ));
                out.push(t(
                    format!("{p}.self_attn.k_norm.weight"),
                    vec![self.head_dim],
                ));
            }
            out.push(t(format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
            out.push(t(format!("{p}.post_attention_layernorm.weight"), vec![h]));
            let i = self.intermediate;
            if self.experts == 0 {
                out.push(t(format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
                out.push(t(format!("{p}.mlp.up_proj.weight"), vec![i, h]));
                out.push(t(format!("{p}.mlp.down_proj.weight"), vec![h, i]));
            } else {
                out.push(t(
                    format!("{p}.block_sparse_moe.gate.weight"),
                    vec![self.experts, h],
                ));
                for e in 0..self.experts {
                    let x = format!("{p}.block_sparse_moe.experts.{e}");
                    out.push(t(format!("{x}.w1.weight"), vec![i, h]));
                    out.push(t(format!("{x}.w2.weight"), vec![h, i]));
                    out.push(t(format!("{x}.w3.weight"), vec![i, h]));
                }
            }
        }
        out.push(t("model.norm.weight".into(), vec![h]));
        out.push(t("lm_head.weight".into(), vec![self.vocab, h]));
        out
    }

    /// Sum of all tensors' bytes.
    pub fn total_bytes(&self) -> u64 {
        self.tensors().iter().map(TensorSpec::byte_len).sum()
    }
}

/// A named layout.
#[derive(Clone, Debug)]
pub struct Preset {
    /// Name used on the command line.
    pub name: &'static str,
    /// One line for `--help` and reports.
    pub description: &'static str,
    /// The layout.
    pub spec: ModelSpec,
}

const GB: u64 = 1_000_000_000;

/// Every preset, smallest first.
pub fn presets() -> Vec<Preset> {
    let llama = |vocab, hidden, layers, intermediate, heads, kv_heads| ModelSpec {
        vocab,
        hidden,
        layers,
        intermediate,
        heads,
        kv_heads,
        head_dim: hidden / heads,
        experts: 0,
        qk_norm: false,
        qkv_bias: false,
        dtype: DType::BF16,
        max_shard_bytes: None,
    };
    vec![
        Preset {
            name: "tiny",
            description: "Llama-shaped, 2 layers, ~2 MB, 2 shards (tests)",
            spec: ModelSpec {
                max_shard_bytes: Some(1_000_000),
                ..llama(1000, 128, 2, 344, 4, 2)
            },
        },
        Preset {
            name: "small",
            description: "Llama-shaped, 8 layers, ~0.31 GB, one file (the default)",
            spec: llama(32000, 1024, 8, 2816, 16, 4),
        },
        Preset {
            name: "qwen3-0.6b",
            description: "Qwen3-0.6B layout: 311 tensors, ~1.5 GB, one file",
            spec: ModelSpec {
                qk_norm: true,
                head_dim: 128,
                ..llama(151_936, 1024, 28, 3072, 16, 8)
            },
        },
        Preset {
            name: "mixtral-mini",
            description: "Mixtral-shaped MoE, 8 layers x 8 experts, ~1.0 GB, 2 shards",
            spec: ModelSpec {
                experts: 8,
                max_shard_bytes: Some(GB / 2),
                ..llama(32000, 1024, 8, 2560, 16, 4)
            },
        },
        Preset {
            name: "llama-7b",
            description: "Llama-2-7B layout: 291 tensors, 13.5 GB, 2 shards",
            spec: ModelSpec {
                max_shard_bytes: Some(10 * GB),
                ..llama(32000, 4096, 32, 11008, 32, 32)
            },
        },
    ]
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_layouts() {
        let l7 = preset("llama-7b").unwrap().spec;
        assert_eq!(l7.tensors().len(), 291);
        assert_eq!(l7.total_bytes(), 13_476_831_232);
        let q = preset("qwen3-0.6b").unwrap().spec;
        assert_eq!(q.tensors().len(), 311);
        let m = preset("mixtral-mini").unwrap().spec;
        assert!(m.tensors().len() > 200);
    }
}
