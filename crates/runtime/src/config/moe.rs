//! Mixture-of-experts settings: which layers route each token to a few of many expert
//! feed-forward blocks, and how the router's weights are formed.
//!
//! The three Hugging Face families spell the same things differently, and llama.cpp's GGUF
//! files (`{arch}` = `llama` for Mixtral, `qwen2moe`, `qwen3moe`, and the hybrid `qwen3next`,
//! `qwen35moe`) differently again:
//!
//! | | Mixtral | Qwen3-MoE | Qwen2-MoE | GGUF |
//! | --- | --- | --- | --- | --- |
//! | experts | `num_local_experts` | `num_experts` | `num_experts` | `{arch}.expert_count` |
//! | (alias, as transformers' `attribute_map`) | `num_experts` | `num_local_experts` | — | — |
//! | experts per token | `num_experts_per_tok` | `num_experts_per_tok` | `num_experts_per_tok` | `{arch}.expert_used_count` |
//! | expert width | `intermediate_size` | `moe_intermediate_size` | `moe_intermediate_size` | `{arch}.expert_feed_forward_length` (Mixtral: `llama.feed_forward_length`) |
//! | renormalised top-k | always | `norm_topk_prob` | `norm_topk_prob` | `{arch}.expert_weights_norm`, else llama.cpp's choice per architecture |
//! | shared expert | — | — | `shared_expert_intermediate_size` | `{arch}.expert_shared_feed_forward_length` (`qwen2moe`, `qwen3next`, `qwen35moe`) |
//! | sparse layers | all | `decoder_sparse_step`, `mlp_only_layers` | same as Qwen3-MoE | those with a router tensor |
//!
//! Layers that are not sparse keep the dense SwiGLU block of width `intermediate_size`
//! (GGUF: `{arch}.feed_forward_length`).
//!
//! GGUF metadata has no `mlp_only_layers`: llama.cpp builds every layer of these architectures
//! sparse. Its converter still writes a dense layer's `blk.N.ffn_{gate,up,down}.weight` in
//! place of the router and experts, so a layer whose file holds those and no
//! `blk.N.ffn_gate_inp.weight` is read as dense (llama.cpp itself cannot load such a file; real
//! checkpoints have none).

use hoist_format::TensorTable;
use serde_json::Value;

use super::{ArchFamily, ConfigError, Json, Meta};
use crate::weights::{LayerTensor, MoeNaming, WeightId, WeightSource};

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

/// The keys a [`MoeConfig`]'s numbers were read from, to name them in errors.
struct Keys<'a> {
    experts: &'a str,
    used: &'a str,
    width: &'a str,
    shared: &'a str,
    step: &'a str,
    mlp_only: &'a str,
}

/// The Qwen MoE families' keys (Qwen2-MoE, Qwen3-MoE, Qwen3-Next, Qwen3.5-MoE).
const QWEN_KEYS: Keys<'static> = Keys {
    experts: "num_experts",
    used: "num_experts_per_tok",
    width: "moe_intermediate_size",
    shared: "shared_expert_intermediate_size",
    step: "decoder_sparse_step",
    mlp_only: "mlp_only_layers",
};

/// Reads the mixture-of-experts keys of a Hugging Face `config.json` for `arch`; `None` for
/// dense architectures.
pub(super) fn hf_moe(
    j: &Json<'_>,
    arch: ArchFamily,
    num_layers: usize,
) -> Result<Option<MoeConfig>, ConfigError> {
    let (moe, keys) = match arch {
        ArchFamily::Llama | ArchFamily::Mistral | ArchFamily::Qwen2 | ArchFamily::Qwen3 => {
            return Ok(None)
        }
        // Mixtral renormalises the top-k weights unconditionally and has no dense layers.
        ArchFamily::Mixtral => (
            MoeConfig {
                num_experts: experts(j, "num_local_experts", "num_experts")?,
                experts_per_token: j.usize("num_experts_per_tok")?,
                expert_intermediate_size: j.usize("intermediate_size")?,
                norm_topk_prob: true,
                shared_expert_intermediate_size: None,
                decoder_sparse_step: 1,
                mlp_only_layers: Vec::new(),
            },
            Keys {
                experts: "num_local_experts",
                width: "intermediate_size",
                ..QWEN_KEYS
            },
        ),
        // Qwen3-Next: Qwen2-MoE's keys, the top-k weights renormalised unless turned off
        // (its configuration class defaults `norm_topk_prob` to true); no experts at all (a
        // count of 0) makes every layer dense, as transformers builds it.
        ArchFamily::Qwen3Next if j.opt_usize("num_experts")? == Some(0) => return Ok(None),
        ArchFamily::Qwen3Next | ArchFamily::Qwen35Moe => {
            let next = arch == ArchFamily::Qwen3Next;
            (
                MoeConfig {
                    num_experts: j.usize("num_experts")?,
                    experts_per_token: j.usize("num_experts_per_tok")?,
                    expert_intermediate_size: j.usize("moe_intermediate_size")?,
                    // Qwen3.5-MoE's router always renormalises (its config has no such key).
                    norm_topk_prob: match j.json.get("norm_topk_prob") {
                        Some(Value::Bool(b)) if next => *b,
                        None | Some(Value::Null) => true,
                        Some(_) if next => {
                            return Err(j.invalid("norm_topk_prob", "is not a boolean"))
                        }
                        Some(_) => true,
                    },
                    shared_expert_intermediate_size: Some(
                        j.usize("shared_expert_intermediate_size")?,
                    ),
                    // Every Qwen3.5-MoE layer is sparse.
                    decoder_sparse_step: if next {
                        j.opt_usize("decoder_sparse_step")?.unwrap_or(1)
                    } else {
                        1
                    },
                    mlp_only_layers: if next {
                        mlp_only_layers(j)?
                    } else {
                        Vec::new()
                    },
                },
                QWEN_KEYS,
            )
        }
        ArchFamily::Qwen2Moe | ArchFamily::Qwen3Moe => (
            MoeConfig {
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
            QWEN_KEYS,
        ),
    };
    check(moe, num_layers, &keys, |key, reason| j.invalid(key, reason)).map(Some)
}

/// Reads the mixture-of-experts keys of a GGUF file whose `general.architecture` is
/// `arch_name` (read as `family`), with the layers that keep a dense block found from its
/// tensors (see the module documentation). Returns the architecture, which is
/// [`ArchFamily::Mixtral`] for a `llama` file with experts, and its routing (`None` for a dense
/// model).
///
/// Where a key is absent, the value is llama.cpp's (`llama-model.cpp`, `models/*.cpp`): the
/// `llama` architecture takes `feed_forward_length` as the experts' width and renormalises the
/// top-k weights; `qwen2moe` and `qwen3moe` fall back to `feed_forward_length /
/// expert_used_count` for the experts' width (what files converted before the key existed
/// need), `qwen2moe`'s shared expert to `feed_forward_length`; `qwen3moe` renormalises,
/// `qwen2moe` does not.
pub(super) fn gguf_moe(
    m: &Meta<'_>,
    table: &TensorTable,
    arch_name: &str,
    family: ArchFamily,
    num_layers: usize,
    feed_forward_length: Option<usize>,
) -> Result<(ArchFamily, Option<MoeConfig>), ConfigError> {
    let k = |suffix: &str| format!("{arch_name}.{suffix}");
    let expert_count = m.opt_usize(&k("expert_count"))?;
    let arch = match family {
        ArchFamily::Llama if expert_count.is_some_and(|n| n > 0) => ArchFamily::Mixtral,
        ArchFamily::Qwen2Moe
        | ArchFamily::Qwen3Moe
        | ArchFamily::Qwen3Next
        | ArchFamily::Qwen35Moe => family,
        // Dense architectures: llama.cpp's `qwen2`/`qwen3` graphs have no experts either.
        _ => {
            return match expert_count.filter(|&n| n > 0) {
                Some(n) => Err(m.unsupported(
                    &k("expert_count"),
                    &n.to_string(),
                    &format!(
                        "0 for a dense '{arch_name}' model; mixture-of-experts GGUF files are \
                         'llama' (Mixtral), 'qwen2moe', 'qwen3moe', 'qwen3next' or 'qwen35moe'"
                    ),
                )),
                None => Ok((family, None)),
            };
        }
    };
    let (experts_key, used_key) = (k("expert_count"), k("expert_used_count"));
    let num_experts = expert_count.ok_or_else(|| m.missing(&experts_key))?;
    let experts_per_token = m.usize(&used_key)?;
    let ffl_key = k("feed_forward_length");
    let (width_key, expert_intermediate_size) = match arch {
        // llama.cpp's `llama` graph sizes the experts by `feed_forward_length` and never reads
        // `expert_feed_forward_length`.
        ArchFamily::Mixtral => (
            ffl_key.clone(),
            feed_forward_length.ok_or_else(|| m.missing(&ffl_key))?,
        ),
        _ => {
            let key = k("expert_feed_forward_length");
            let width = match m.opt_usize(&key)? {
                Some(w) => w,
                // llama.cpp's fallback, `n_ff / n_expert_used`, for files older than the key;
                // only where it divides evenly (else the file does not say).
                None => match feed_forward_length {
                    // No width without a count; `check` names the count.
                    Some(_) if experts_per_token == 0 => 0,
                    Some(ff) if ff.is_multiple_of(experts_per_token) => ff / experts_per_token,
                    _ => return Err(m.missing(&key)),
                },
            };
            (key, width)
        }
    };
    let shared_key = k("expert_shared_feed_forward_length");
    let shared_expert_intermediate_size = match arch {
        ArchFamily::Qwen2Moe => Some(match m.opt_usize(&shared_key)? {
            Some(s) => s,
            None => feed_forward_length.ok_or_else(|| m.missing(&shared_key))?,
        }),
        // llama.cpp reads the hybrid models' shared expert width from the key only.
        ArchFamily::Qwen3Next | ArchFamily::Qwen35Moe => Some(m.usize(&shared_key)?),
        _ => None,
    };
    // llama.cpp's graphs for these architectures fix the choice; a file that states it anyway
    // says what its checkpoint does.
    let norm_topk_prob = match m.opt_bool(&k("expert_weights_norm"))? {
        Some(b) => b,
        None => !matches!(arch, ArchFamily::Qwen2Moe),
    };
    let has = |l: usize, t: LayerTensor| {
        let name = WeightSource::Gguf.name(WeightId::Layer(l, t));
        table.get(&name).is_some()
    };
    let mlp_only_layers = (0..num_layers)
        .filter(|&l| {
            !has(l, LayerTensor::Router(MoeNaming::Qwen))
                && [LayerTensor::Gate, LayerTensor::Up, LayerTensor::Down]
                    .into_iter()
                    .any(|t| has(l, t))
        })
        .collect();
    let moe = MoeConfig {
        num_experts,
        experts_per_token,
        expert_intermediate_size,
        norm_topk_prob,
        shared_expert_intermediate_size,
        decoder_sparse_step: 1,
        mlp_only_layers,
    };
    let keys = Keys {
        experts: &experts_key,
        used: &used_key,
        width: &width_key,
        shared: &shared_key,
        // Neither is read from a GGUF file: every layer is sparse unless its tensors say not.
        step: "decoder_sparse_step",
        mlp_only: "mlp_only_layers",
    };
    let moe = check(moe, num_layers, &keys, |key, reason| m.invalid(key, reason))?;
    Ok((arch, Some(moe)))
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

/// Relations between the numbers: all positive, and a router needs at least as many experts as
/// it picks. `invalid(key, reason)` makes the error of the source the numbers came from.
fn check(
    moe: MoeConfig,
    num_layers: usize,
    keys: &Keys<'_>,
    invalid: impl Fn(&str, &str) -> ConfigError,
) -> Result<MoeConfig, ConfigError> {
    for (key, v) in [
        (keys.experts, moe.num_experts),
        (keys.used, moe.experts_per_token),
        (keys.width, moe.expert_intermediate_size),
        (keys.step, moe.decoder_sparse_step),
        (
            keys.shared,
            moe.shared_expert_intermediate_size.unwrap_or(1),
        ),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be positive"));
        }
    }
    if moe.experts_per_token > moe.num_experts {
        return Err(invalid(
            keys.used,
            &format!(
                "= {} exceeds the number of experts ({})",
                moe.experts_per_token, moe.num_experts
            ),
        ));
    }
    if let Some(&l) = moe.mlp_only_layers.iter().find(|&&l| l >= num_layers) {
        return Err(invalid(
            keys.mlp_only,
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
