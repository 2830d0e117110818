//! The CPU reference forward pass of the hybrid linear-attention models against logits made by
//! Hugging Face `transformers` (fixtures from `tests/fixtures/make_next_reference.py`): a tiny
//! random Qwen3-Next (Gated DeltaNet and gated full-attention layers alternating, grouped value
//! heads, partial rotary 0.5, experts with a shared expert, one dense layer) and a tiny random
//! Qwen3.5-MoE saved as the multimodal checkpoint the Hub holds (text settings under
//! `text_config`, the language model under `model.language_model.`, a vision tower that must be
//! skipped). Prefill runs the chunked delta rule over 64 tokens, decode the recurrent one.

mod common;

use std::path::Path;

use common::cpu_reference::{hf, reference, rel_error};
use common::fixtures;
use hoist_runtime::config::LayerKind;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::{ArchFamily, ModelConfig};

#[test]
fn qwen3_next_matches_transformers() {
    hf("qwen3_next");
}

#[test]
fn qwen3_5_moe_matches_transformers() {
    hf("qwen3_5_moe");
}

#[test]
fn configs_read_the_hybrid_layout() {
    let next = ModelConfig::from_hf_file(&fixtures().join("qwen3_next/config.json")).unwrap();
    assert_eq!(next.arch, ArchFamily::Qwen3Next);
    let lin = next.linear.as_ref().unwrap();
    use LayerKind::{Full, Linear};
    assert_eq!(lin.layer_types, [Linear, Full, Linear, Full]);
    assert_eq!(
        (lin.num_k_heads, lin.num_v_heads, lin.rotary_dim),
        (2, 4, 8)
    );
    let moe = next.moe.as_ref().unwrap();
    assert!(moe.norm_topk_prob && !moe.is_sparse(2) && moe.is_sparse(3));

    let q35 = ModelConfig::from_hf_file(&fixtures().join("qwen3_5_moe/config.json")).unwrap();
    assert_eq!(q35.arch, ArchFamily::Qwen35Moe);
    assert_eq!(q35.hidden_size, 64, "read from text_config");
    let lin = q35.linear.as_ref().unwrap();
    assert_eq!(
        (lin.rotary_dim, lin.hf_prefix.as_str()),
        (4, "model.language_model.")
    );
    assert!((0..4).all(|l| q35.moe.as_ref().unwrap().is_sparse(l)));
}

/// The checkpoint with `f` applied to the f32 tensor `tensor` (its flat index and value), in a
/// temporary copy of fixture `name`.
fn patched(name: &str, tensor: &str, f: impl Fn(usize, &mut f32)) -> tempfile::TempDir {
    let src = fixtures().join(name);
    let tmp = tempfile::tempdir().unwrap();
    for file in ["config.json", "reference.json", "logits.f32"] {
        std::fs::copy(src.join(file), tmp.path().join(file)).unwrap();
    }
    let mut bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = &header[tensor];
    assert_eq!(entry["dtype"], "F32", "{tensor}");
    let [start, end] = [0, 1].map(|i| entry["data_offsets"][i].as_u64().unwrap() as usize);
    for (i, c) in bytes[8 + n + start..8 + n + end]
        .chunks_exact_mut(4)
        .enumerate()
    {
        let mut v = f32::from_le_bytes(c.try_into().unwrap());
        f(i, &mut v);
        c.copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(tmp.path().join("model.safetensors"), bytes).unwrap();
    tmp
}

/// Relative error of the prompt's logits of a checkpoint directory (or of `config`, when
/// given, over it) against fixture `name`'s reference.
fn error_of(dir: &Path, name: &str, config: Option<ModelConfig>) -> f32 {
    let model = match config {
        Some(c) => {
            let table = hoist_format::TensorTable::open(dir).unwrap();
            CpuModel::from_table(&table, c).unwrap()
        }
        None => CpuModel::load(dir).unwrap(),
    };
    let r = reference(&fixtures().join(name));
    let mut cache = model.new_cache(r.prompt.len()).unwrap();
    let logits = model.forward(&r.prompt, &mut cache).unwrap();
    let rows = r.prompt.len() - r.from;
    rel_error(&logits[r.from * r.vocab..], &r.logits[..rows * r.vocab])
}

/// The fixtures catch what an implementation could get wrong: with the convolution reduced to
/// its current tap (no conv), without decay (A_log → −∞: no gating), with β fixed at ½, with
/// the attention output gate made constant, or with rotary over whole heads, the logits move
/// far.
#[test]
fn fixtures_exercise_conv_gating_and_partial_rotary() {
    for (name, prefix) in [
        ("qwen3_next", "model."),
        ("qwen3_5_moe", "model.language_model."),
    ] {
        let c = ModelConfig::from_hf_file(&fixtures().join(name).join("config.json")).unwrap();
        let lin = c.linear.as_ref().expect("a hybrid model");
        let (kernel, hidden, hd) = (lin.conv_kernel, c.hidden_size, c.head_dim);
        // Qwen3-Next's `in_proj_ba` holds, per key head, its value heads' b rows then their a
        // rows: only the b rows are zeroed, so that β alone changes.
        let group = lin.num_v_heads / lin.num_k_heads;
        let t = |s: &str| format!("{prefix}layers.0.linear_attn.{s}");
        let tweaks: Vec<(&str, tempfile::TempDir)> = vec![
            (
                "no conv",
                patched(name, &t("conv1d.weight"), |i, v| {
                    *v = if i % kernel == kernel - 1 { 1.0 } else { 0.0 }
                }),
            ),
            ("no decay", patched(name, &t("A_log"), |_, v| *v = -80.0)),
            (
                "constant beta",
                patched(
                    name,
                    &t(if name == "qwen3_next" {
                        "in_proj_ba.weight"
                    } else {
                        "in_proj_b.weight"
                    }),
                    |i, v| {
                        if name != "qwen3_next" || (i / hidden) % (2 * group) < group {
                            *v = 0.0
                        }
                    },
                ),
            ),
            (
                "constant attention gate",
                // The gate half of each head's query rows (`[heads, 2, head_dim, hidden]`)
                // zeroed: a constant gate of ½ for the learned one.
                patched(
                    name,
                    &format!("{prefix}layers.1.self_attn.q_proj.weight"),
                    |i, v| {
                        if (i / hidden / hd) % 2 == 1 {
                            *v = 0.0
                        }
                    },
                ),
            ),
        ];
        for (what, dir) in tweaks {
            let err = error_of(dir.path(), name, None);
            eprintln!("{name}, {what}: {err:.2e}");
            assert!(err > 1e-2, "{name}: '{what}' did not matter ({err:e})");
        }
        let dir = fixtures().join(name);
        let mut config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        if let Some(l) = config.linear.as_mut() {
            l.rotary_dim = config.head_dim;
        }
        let err = error_of(&dir, name, Some(config));
        assert!(err > 1e-2, "{name}: full rotary did not matter ({err:e})");
    }
}

/// A layer whose kind the configuration gets wrong is missing its tensors, and the error says
/// which; vision and MTP tensors beside the language model are never asked for.
#[test]
fn wrong_layer_kind_names_the_missing_tensor() {
    let dir = fixtures().join("qwen3_5_moe");
    let mut config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    if let Some(l) = config.linear.as_mut() {
        l.layer_types[1] = LayerKind::Linear;
    }
    let table = hoist_format::TensorTable::open(&dir).unwrap();
    assert!(table
        .tensors
        .iter()
        .any(|t| t.name.starts_with("model.visual.")));
    let e = CpuModel::from_table(&table, config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.language_model.layers.1.linear_attn.in_proj_qkv.weight")
            && e.contains("missing"),
        "{e}"
    );
}

#[test]
fn config_errors_name_the_key() {
    let text = std::fs::read_to_string(fixtures().join("qwen3_next/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let err = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut v = base.clone();
        edit(&mut v);
        ModelConfig::from_hf_json(&v, Path::new("config.json"))
            .unwrap_err()
            .to_string()
    };
    let e = err(&|v| {
        v.as_object_mut().unwrap().remove("linear_key_head_dim");
    });
    assert!(
        e.contains("'linear_key_head_dim'") && e.contains("missing"),
        "{e}"
    );
    let e = err(&|v| {
        v["layer_types"] = serde_json::json!([
            "linear_attention",
            "mamba",
            "linear_attention",
            "full_attention"
        ])
    });
    assert!(e.contains("'layer_types'") && e.contains("mamba"), "{e}");
    let e = err(&|v| v["layer_types"] = serde_json::json!(["full_attention"]));
    assert!(
        e.contains("'layer_types'") && e.contains("1 entries"),
        "{e}"
    );
    let e = err(&|v| v["linear_num_value_heads"] = serde_json::json!(3));
    assert!(
        e.contains("'linear_num_value_heads'") && e.contains("multiple"),
        "{e}"
    );
    let e = err(&|v| v["rope_parameters"]["partial_rotary_factor"] = serde_json::json!(0.1));
    assert!(e.contains("partial_rotary_factor"), "{e}");

    // Qwen3.5-MoE's nested text settings.
    let text = std::fs::read_to_string(fixtures().join("qwen3_5_moe/config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["text_config"]
        .as_object_mut()
        .unwrap()
        .remove("num_experts");
    let e = ModelConfig::from_hf_json(&v, Path::new("config.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("'num_experts'") && e.contains("missing"), "{e}");
    // Without `layer_types`: every `full_attention_interval`-th layer is full attention.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let t = v["text_config"].as_object_mut().unwrap();
    t.remove("layer_types");
    t.insert("full_attention_interval".into(), serde_json::json!(4));
    let c = ModelConfig::from_hf_json(&v, Path::new("config.json")).unwrap();
    use LayerKind::{Full, Linear};
    assert_eq!(
        c.linear.unwrap().layer_types,
        [Linear, Linear, Linear, Full]
    );
}

/// The GPU runtime does not run linear-attention layers: it refuses these models, from
/// Hugging Face directories and llama.cpp's GGUF files alike, before it opens a device (so
/// this runs anywhere), pointing at the CPU.
#[test]
fn gpu_refuses_hybrid_models_before_touching_the_device() {
    for name in ["qwen3_next", "qwen3_5_moe"] {
        let dir = fixtures().join(name);
        let hf = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        let hf = (hoist_format::TensorTable::open(&dir).unwrap(), hf);
        let file = fixtures().join(format!("gguf/{name}-f32.gguf"));
        let gguf = hoist_format::TensorTable::open(file).unwrap();
        let gguf = (ModelConfig::from_gguf(&gguf).unwrap(), gguf);
        for (table, config) in [hf, (gguf.1, gguf.0)] {
            let options = hoist_runtime::gpu::GpuOptions::default();
            let e = match hoist_runtime::gpu::GpuModel::from_table(&table, config, &options) {
                Ok(_) => panic!("{name} loaded on the GPU"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.contains("linear-attention") && e.contains("--device cpu"),
                "{name}: {e}"
            );
        }
    }
}

#[test]
fn one_prefill_across_chunks_matches_transformers() {
    // The prompt then the greedy tokens in one call (79 positions): the chunked delta rule
    // carries its state from the first 64-token chunk into the second, as transformers' one
    // forward pass over the same tokens did when it made the reference rows.
    for name in ["qwen3_next", "qwen3_5_moe"] {
        let dir = fixtures().join(name);
        let r = reference(&dir);
        let model = CpuModel::load(&dir).unwrap();
        let mut tokens = r.prompt.clone();
        tokens.extend(&r.greedy[..r.greedy.len() - 1]);
        assert!(
            tokens.len() > hoist_runtime::cpu::deltanet::CHUNK,
            "{name}: one chunk only"
        );
        let mut cache = model.new_cache(tokens.len()).unwrap();
        let logits = model.forward(&tokens, &mut cache).unwrap();
        let err = rel_error(&logits[r.from * r.vocab..], &r.logits);
        eprintln!(
            "{name}: one call over {} positions: {err:.2e}",
            tokens.len()
        );
        assert!(err <= 1e-4, "{name}: {err}");
    }
}

#[test]
fn a_cache_of_another_shape_is_an_error() {
    let model = CpuModel::load(&fixtures().join("qwen3_next")).unwrap();
    let c = &model.config;
    // Keys and values for every layer, no DeltaNet state: made by hand, not by new_cache.
    let mut cache =
        hoist_runtime::cpu::KvCache::new(c.num_layers, c.num_kv_heads, c.head_dim, 8).unwrap();
    let e = model.forward(&[1, 2], &mut cache).unwrap_err().to_string();
    assert!(e.contains("new_cache"), "{e}");
}
