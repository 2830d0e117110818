//! Mixture-of-experts settings: which layers route each token to a few of many expert
//! feed-forward blocks, and how the router's weights are formed.
//!
//! The three Hugging Face families spell the same things differently:
//!
//! | | Mixtral | Qwen3-MoE | Qwen2-MoE |
//! | --- | --- | --- | --- |
//! | experts | `num_local_experts` | `num_experts` | `num_experts` |
//! | (alias, as transformers' `attribute_map`) | `num_experts` | `num_local_experts` | — |
//! | experts per token | `num_experts_per_tok` | `num_experts_per_tok` | `num_experts_per_tok` |
//! | expert width | `intermediate_size` | `moe_intermediate_size` | `moe_intermediate_size` |
//! | renormalised top-k | always | `norm_topk_prob` | `norm_topk_prob` |
//! | shared expert | — | — | `shared_expert_intermediate_size` |
//! | sparse layers | all | `decoder_sparse_step`, `mlp_only_layers` | same as Qwen3-MoE |
//!
//! Layers that are not sparse keep the dense SwiGLU block of width `intermediate_size`.

use serde_json::Value;

use super::{ArchFamily, ConfigError, Json};

/// How a mixture-of-experts model routes tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoeConfig {
    /// Experts of each sparse layer.
    pub num_experts: usize,
    /// Experts each token goes through (the router's top-k).
    pub experts_per_token: usize,
    /// Width of one expert's SwiGLU block.
    pub expert_intermediate_size: usize,
    /// Whether the top-k router weights are divided by their sum (else they stay softmax
    /// probabilities over all experts).
    pub norm_topk_prob: bool,
    /// Width of the shared expert every token goes through, gated by a sigmoid (Qwen2-MoE).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layer `l` is sparse when `(l + 1)` is a multiple of this (and `l` is not listed in
    /// `mlp_only_layers`).
    pub decoder_sparse_step: usize,
    /// Layers that keep the dense feed-forward block.
    pub mlp_only_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether layer `layer` routes through experts (transformers' rule for Qwen2/3-MoE; every
    /// layer for Mixtral, whose step is 1 and list empty).
    pub fn is_sparse(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }
}

/// Reads the mixture-of-experts keys of a Hugging Face `config.json` for `arch`; `None` for
/// dense architectures.
pub(super) fn hf_moe(
    j: &Json<'_>,
    arch: ArchFamily,
    num_layers: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    let moe = match arch {
        ArchFamily::Llama | ArchFamily::Mistral | ArchFamily::Qwen2 | ArchFamily::Qwen3 => {
            return Ok(None)
        }
        // Mixtral renormalises the top-k weights unconditionally and has no dense layers.
        ArchFamily::Mixtral => MoeConfig {
            num_experts: experts(j, "num_local_experts", "num_experts")?,
            experts_per_token: j.usize("num_experts_per_tok")?,
            expert_intermediate_size: j.usize("intermediate_size")?,
            norm_topk_prob: true,
            shared_expert_intermediate_size: None,
            decoder_sparse_step: 1,
            mlp_only_layers: Vec::new(),
        },
        ArchFamily::Qwen2Moe | ArchFamily::Qwen3Moe => MoeConfig {
            num_experts: match arch {
                ArchFamily::Qwen3Moe => experts(j, "num_experts", "num_local_experts")?,
                _ => j.usize("num_experts")?,
            },
            experts_per_token: j.usize("num_experts_per_tok")?,
            expert_intermediate_size: j.usize("moe_intermediate_size")?,
            // transformers' default for both configuration classes.
            norm_topk_prob: match j.json.get("norm_topk_prob") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(j.invalid("norm_topk_prob", "is not a boolean")),
            },
            shared_expert_intermediate_size: match arch {
                ArchFamily::Qwen2Moe => Some(j.usize("shared_expert_intermediate_size")?),
                _ => None,
            },
            decoder_sparse_step: j.opt_usize("decoder_sparse_step")?.unwrap_or(1),
            mlp_only_layers: mlp_only_layers(j)?,
        },
    };
    check(j, moe, num_layers).map(Some)
}

/// The expert count under its usual key or its alias (transformers 5 writes Qwen3-MoE's as
/// `num_local_experts`, the Hub's checkpoints as `num_experts`); errors name the usual key.
fn experts(j: &Json<'_>, key: &str, alias: &str) -> Result<usize, ConfigError> {
    match j.opt_usize(key)? {
        Some(n) => Ok(n),
        None => j.opt_usize(alias)?.ok_or_else(|| j.missing(key)),
    }
}

fn mlp_only_layers(j: &Json<'_>) -> Result<Vec<usize>, ConfigError> {
    match j.json.get("mlp_only_layers") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| j.invalid("mlp_only_layers", "is not a list of layer indices")),
        Some(_) => Err(j.invalid("mlp_only_layers", "is not a list of layer indices")),
    }
}

/// Relations between the numbers: a router needs at least as many experts as it picks.
fn check(j: &Json<'_>, moe: MoeConfig, num_layers: usize) -> Result<MoeConfig, ConfigError> {
    for (key, v) in [
        ("num_experts", moe.num_experts),
        ("num_experts_per_tok", moe.experts_per_token),
        ("moe_intermediate_size", moe.expert_intermediate_size),
        ("decoder_sparse_step", moe.decoder_sparse_step),
        (
            "shared_expert_intermediate_size",
            moe.shared_expert_intermediate_size.unwrap_or(1),
        ),
    ] {
        if v == 0 {
            return Err(j.invalid(key, "must be positive"));
        }
    }
    if moe.experts_per_token > moe.num_experts {
        return Err(j.invalid(
            "num_experts_per_tok",
            &format!(
                "= {} exceeds the number of experts ({})",
                moe.experts_per_token, moe.num_experts
            ),
        ));
    }
    if let Some(&l) = moe.mlp_only_layers.iter().find(|&&l| l >= num_layers) {
        return Err(j.invalid(
            "mlp_only_layers",
            &format!("names layer {l}, but the model has {num_layers}"),
        ));
    }
    Ok(moe)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::json;

    use crate::config::{ArchFamily, ModelConfig};

    fn hf(v: &serde_json::Value) -> Result<ModelConfig, String> {
        ModelConfig::from_hf_json(v, Path::new("config.json")).map_err(|e| e.to_string())
    }

    fn base(arch: &str) -> serde_json::Value {
        json!({
            "architectures": [arch], "hidden_act": "silu", "vocab_size": 288,
            "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 96, "rms_norm_eps": 1e-6,
        })
    }

    fn qwen2_moe() -> serde_json::Value {
        let mut v = base("Qwen2MoeForCausalLM");
        v["num_experts"] = json!(8);
        v["num_experts_per_tok"] = json!(2);
        v["moe_intermediate_size"] = json!(32);
        v["shared_expert_intermediate_size"] = json!(48);
        v
    }

    #[test]
    fn mixtral() {
        let mut v = base("MixtralForCausalLM");
        v["num_local_experts"] = json!(8);
        v["num_experts_per_tok"] = json!(2);
        v["sliding_window"] = json!(24);
        let c = hf(&v).unwrap();
        assert_eq!(c.arch, ArchFamily::Mixtral);
        assert_eq!(c.sliding_window, Some(24));
        let m = c.moe.unwrap();
        assert_eq!((m.num_experts, m.experts_per_token), (8, 2));
        assert_eq!(m.expert_intermediate_size, 96);
        assert!(m.norm_topk_prob && m.shared_expert_intermediate_size.is_none());
        assert!((0..4).all(|l| m.is_sparse(l)));
    }

    #[test]
    fn qwen_moe_flags_and_sparse_layers() {
        let mut v = qwen2_moe();
        v["decoder_sparse_step"] = json!(2);
        v["mlp_only_layers"] = json!([3]);
        let c = hf(&v).unwrap();
        assert!(c.attention_bias && !c.qk_norm);
        let m = c.moe.unwrap();
        assert_eq!(m.shared_expert_intermediate_size, Some(48));
        assert!(!m.norm_topk_prob, "transformers' default");
        let sparse: Vec<bool> = (0..4).map(|l| m.is_sparse(l)).collect();
        assert_eq!(sparse, [false, true, false, false]);

        let mut v = qwen2_moe();
        v["architectures"] = json!(["Qwen3MoeForCausalLM"]);
        v["norm_topk_prob"] = json!(true);
        let c = hf(&v).unwrap();
        assert!(!c.attention_bias && c.qk_norm);
        let m = c.moe.unwrap();
        assert!(m.norm_topk_prob && m.shared_expert_intermediate_size.is_none());
        // transformers 5 writes the alias.
        let obj = v.as_object_mut().unwrap();
        let n = obj.remove("num_experts").unwrap();
        obj.insert("num_local_experts".into(), n);
        assert_eq!(hf(&v).unwrap().moe.unwrap().num_experts, 8);
        assert!(hf(&base("LlamaForCausalLM")).unwrap().moe.is_none());
    }

    #[test]
    fn bad_configs_are_errors() {
        let cases: [(&str, serde_json::Value, &str); 6] = [
            ("num_experts_per_tok", json!(9), "exceeds"),
            ("num_experts", json!(0), "positive"),
            ("decoder_sparse_step", json!(0), "positive"),
            ("mlp_only_layers", json!([7]), "layer 7"),
            ("mlp_only_layers", json!("all"), "list"),
            ("norm_topk_prob", json!(1), "boolean"),
        ];
        for (key, value, says) in cases {
            let mut v = qwen2_moe();
            v[key] = value;
            let e = hf(&v).unwrap_err();
            assert!(e.contains(&format!("'{key}'")) && e.contains(says), "{e}");
        }
        for key in [
            "num_experts",
            "num_experts_per_tok",
            "moe_intermediate_size",
            "shared_expert_intermediate_size",
        ] {
            let mut v = qwen2_moe();
            v.as_object_mut().unwrap().remove(key);
            let e = hf(&v).unwrap_err();
            assert!(e.contains("missing") && e.contains(key), "{e}");
        }
        let e = hf(&base("MixtralForCausalLM")).unwrap_err();
        assert!(e.contains("num_local_experts"), "{e}");
    }
}
