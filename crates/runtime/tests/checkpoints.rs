//! Configurations and weight maps from real checkpoint files: GGUF metadata, and the errors a
//! checkpoint that does not fit its configuration gets.

use std::path::{Path, PathBuf};

use hoist_format::TensorTable;
use hoist_runtime::config::ConfigError;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::weights::{ExpertProj, WeightError};
use hoist_runtime::{ArchFamily, ModelConfig, RopeStyle, RuntimeError, WeightMap};
use hoist_synth::gguf::{write_gguf, GgufTensor, GgufValue};

mod common;

use common::fixtures;
use common::gguf_edit::Gguf;

#[test]
fn gguf_configs_match_the_hf_ones() {
    for (gguf, hf) in [("llama-q8_0", "llama"), ("qwen3-q4_0", "qwen3")] {
        let table = TensorTable::open(fixtures().join(format!("gguf/{gguf}.gguf"))).unwrap();
        let g = ModelConfig::from_gguf(&table).unwrap();
        let h = ModelConfig::from_hf_file(&fixtures().join(hf).join("config.json")).unwrap();
        assert_eq!(
            (
                g.vocab_size,
                g.hidden_size,
                g.num_layers,
                g.num_heads,
                g.num_kv_heads
            ),
            (
                h.vocab_size,
                h.hidden_size,
                h.num_layers,
                h.num_heads,
                h.num_kv_heads
            ),
            "{gguf}"
        );
        assert_eq!(
            (g.head_dim, g.intermediate_size),
            (h.head_dim, h.intermediate_size)
        );
        assert_eq!(
            (g.rms_norm_eps, g.rope_theta),
            (h.rms_norm_eps, h.rope_theta)
        );
        assert_eq!(
            (g.tie_word_embeddings, g.qk_norm),
            (h.tie_word_embeddings, h.qk_norm)
        );
        assert_eq!(g.max_position_embeddings, h.max_position_embeddings);
    }
    let table = TensorTable::open(fixtures().join("gguf/llama-q8_0.gguf")).unwrap();
    let c = ModelConfig::from_gguf(&table).unwrap();
    assert_eq!(
        (c.arch, c.rope_style),
        (ArchFamily::Llama, RopeStyle::Interleaved)
    );
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
}

fn small_gguf(dir: &Path, drop_key: Option<&str>, arch: &str) -> PathBuf {
    let mut kvs: Vec<(String, GgufValue)> = vec![
        (
            "general.architecture".into(),
            GgufValue::String(arch.into()),
        ),
        (format!("{arch}.embedding_length"), GgufValue::U32(64)),
        (format!("{arch}.block_count"), GgufValue::U32(1)),
        (format!("{arch}.feed_forward_length"), GgufValue::U32(128)),
        (format!("{arch}.attention.head_count"), GgufValue::U32(4)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            GgufValue::F32(1e-5),
        ),
        (format!("{arch}.context_length"), GgufValue::U32(2048)),
        (format!("{arch}.vocab_size"), GgufValue::U32(100)),
    ];
    if let Some(k) = drop_key {
        kvs.retain(|(key, _)| key != k);
    }
    let data = vec![0u8; 100 * 64 * 4];
    let t = GgufTensor {
        name: "token_embd.weight",
        shape: &[100, 64],
        ggml_type: 0,
        data: &data,
    };
    let path = dir.join("m.gguf");
    write_gguf(&path, &kvs, &[t], 32).unwrap();
    path
}

#[test]
fn gguf_config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = small_gguf(dir.path(), None, "llama");
    let c = ModelConfig::from_gguf(&TensorTable::open(&path).unwrap()).unwrap();
    assert_eq!(
        (c.num_kv_heads, c.head_dim, c.rope_theta),
        (4, 16, 10000.0),
        "defaults"
    );
    assert!(c.tie_word_embeddings, "no output.weight: tied");

    let path = small_gguf(dir.path(), Some("llama.feed_forward_length"), "llama");
    let e = ModelConfig::from_gguf(&TensorTable::open(&path).unwrap()).unwrap_err();
    assert!(matches!(&e, ConfigError::Missing { key, .. } if key == "llama.feed_forward_length"));
    assert!(e.to_string().contains("m.gguf"), "{e}");

    let path = small_gguf(dir.path(), None, "falcon");
    let e = ModelConfig::from_gguf(&TensorTable::open(&path).unwrap()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("general.architecture") && msg.contains("falcon"),
        "{msg}"
    );

    // The config parses, but the weights are not all there: the error names the first missing.
    let path = small_gguf(dir.path(), None, "llama");
    let e = CpuModel::load(&path).unwrap_err().to_string();
    assert!(e.contains("output_norm.weight"), "{e}");
}

fn copy_fixture(name: &str, to: &Path) {
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures().join(name).join(f), to.join(f)).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

#[test]
fn weight_errors_name_the_tensor_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    copy_fixture("qwen2", dir.path());
    let config = ModelConfig::from_hf_file(&dir.path().join("config.json")).unwrap();
    let table = TensorTable::open(dir.path()).unwrap();
    let map = WeightMap::resolve(&table, &config).unwrap();
    // Qwen2, tied: embedding and final norm, then 12 per layer (3 biases included).
    assert_eq!(map.entries.len(), 2 + 2 * 12);

    edit_config(dir.path(), |v| v["intermediate_size"] = 96.into());
    let e = CpuModel::load(dir.path()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, RuntimeError::Weights(_)));
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight")
            && msg.contains("[64, 64]")
            && msg.contains("[96, 64]"),
        "{msg}"
    );

    edit_config(dir.path(), |v| {
        v["intermediate_size"] = 64.into();
        v["num_hidden_layers"] = 3.into();
    });
    let msg = CpuModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("model.layers.2.input_layernorm.weight"),
        "{msg}"
    );

    edit_config(dir.path(), |v| {
        v["num_hidden_layers"] = 2.into();
        v["tie_word_embeddings"] = false.into();
    });
    let msg = CpuModel::load(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("lm_head.weight") && msg.contains("not tied"),
        "{msg}"
    );
}

#[test]
fn forward_errors() {
    let model = CpuModel::load(&fixtures().join("qwen3")).unwrap();
    let mut cache = model.new_cache(4).unwrap();
    let e = model
        .forward(&[1, 2, 3, 4, 5], &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("5 positions") && e.contains("holds 4"), "{e}");
    let e = model
        .forward(&[1, 9999], &mut cache)
        .unwrap_err()
        .to_string();
    assert!(e.contains("9999"), "{e}");
    assert!(cache.is_empty(), "failed calls leave the cache untouched");
}

#[test]
fn gguf_moe_configs_match_the_hf_ones() {
    for (gguf, hf) in [
        ("mixtral-f32", "mixtral"),
        ("qwen2_moe-f32", "qwen2_moe"),
        ("qwen3_moe-f32", "qwen3_moe"),
    ] {
        let table = TensorTable::open(fixtures().join(format!("gguf/{gguf}.gguf"))).unwrap();
        let g = ModelConfig::from_gguf(&table).unwrap();
        let h = ModelConfig::from_hf_file(&fixtures().join(hf).join("config.json")).unwrap();
        assert_eq!(g.arch, h.arch, "{gguf}");
        assert_eq!(g.moe, h.moe, "{gguf}: routing, widths and sparse layers");
        assert_eq!(
            (g.vocab_size, g.hidden_size, g.num_layers, g.head_dim),
            (h.vocab_size, h.hidden_size, h.num_layers, h.head_dim),
            "{gguf}"
        );
        assert_eq!(g.intermediate_size, h.intermediate_size, "{gguf}");
        assert_eq!(
            (g.attention_bias, g.qk_norm, g.tie_word_embeddings),
            (h.attention_bias, h.qk_norm, h.tie_word_embeddings),
            "{gguf}"
        );
        assert_eq!(
            (g.rms_norm_eps, g.rope_theta),
            (h.rms_norm_eps, h.rope_theta)
        );
    }
}

#[test]
fn gguf_moe_config_errors_name_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = Gguf::read("qwen3_moe-f32");
    let err = |g: &Gguf| g.config(d).unwrap_err().to_string();

    let e = err(&base.edited(|g| g.set("qwen3moe.expert_used_count", GgufValue::U32(9))));
    assert!(
        e.contains("edited.gguf")
            && e.contains("'qwen3moe.expert_used_count'")
            && e.contains("exceeds the number of experts (8)"),
        "{e}"
    );
    let e = err(&base.edited(|g| g.set("qwen3moe.expert_used_count", GgufValue::U32(0))));
    assert!(
        e.contains("'qwen3moe.expert_used_count' must be positive"),
        "{e}"
    );
    let e = err(&base.edited(|g| g.set("qwen3moe.expert_count", GgufValue::U32(0))));
    assert!(
        e.contains("'qwen3moe.expert_count' must be positive"),
        "{e}"
    );
    for key in ["qwen3moe.expert_count", "qwen3moe.expert_used_count"] {
        let e = base.edited(|g| g.remove(key)).config(d).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Missing { key: k, .. } if k == key),
            "{key}: {e}"
        );
    }
    let e = err(&base.edited(|g| {
        g.set(
            "qwen3moe.expert_weights_norm",
            GgufValue::String("yes".into()),
        )
    }));
    assert!(
        e.contains("'qwen3moe.expert_weights_norm' is not a boolean"),
        "{e}"
    );

    // Without the expert width, llama.cpp's fallback: feed_forward_length / expert_used_count
    // (64 / 2 = 32, the fixture's width); without both, the width is missing.
    let c = base
        .edited(|g| g.remove("qwen3moe.expert_feed_forward_length"))
        .config(d)
        .unwrap();
    assert_eq!(c.moe.unwrap().expert_intermediate_size, 32);
    let e = base
        .edited(|g| {
            g.remove("qwen3moe.expert_feed_forward_length")
                .remove("qwen3moe.feed_forward_length")
        })
        .config(d)
        .unwrap_err();
    assert!(
        matches!(&e, ConfigError::Missing { key, .. } if key == "qwen3moe.expert_feed_forward_length"),
        "{e}"
    );
    // `expert_weights_norm`, where a file has it, overrides the architecture's choice.
    let c = base
        .edited(|g| g.set("qwen3moe.expert_weights_norm", GgufValue::Bool(false)))
        .config(d)
        .unwrap();
    assert!(!c.moe.unwrap().norm_topk_prob);

    // Mixtral is `llama` with experts; without them it is a dense Llama.
    let mixtral = Gguf::read("mixtral-f32");
    let c = mixtral.config(d).unwrap();
    assert_eq!(
        (c.arch, c.rope_style),
        (ArchFamily::Mixtral, RopeStyle::Interleaved)
    );
    let e = err(&mixtral.edited(|g| g.set("llama.expert_used_count", GgufValue::U32(9))));
    assert!(
        e.contains("'llama.expert_used_count'") && e.contains("exceeds"),
        "{e}"
    );
    let c = mixtral
        .edited(|g| g.set("llama.expert_count", GgufValue::U32(0)))
        .config(d)
        .unwrap();
    assert_eq!((c.arch, c.moe), (ArchFamily::Llama, None));

    // A dense architecture with experts is not one llama.cpp runs either.
    let e =
        err(&Gguf::read("qwen3-q4_0").edited(|g| g.set("qwen3.expert_count", GgufValue::U32(4))));
    assert!(
        e.contains("'qwen3.expert_count' = 4") && e.contains("qwen3moe"),
        "{e}"
    );
}

/// `base` changed by `edit`.
#[test]
fn gguf_moe_weight_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let load_err = |g: &Gguf| match CpuModel::load(&g.write(d)) {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    };

    let e = load_err(
        &Gguf::read("mixtral-f32").edited(|g| g.drop_tensor("blk.0.ffn_down_exps.weight")),
    );
    let msg = e.to_string();
    assert!(matches!(
        e,
        RuntimeError::Weights(WeightError::Missing { .. })
    ));
    assert!(
        msg.contains("'blk.0.ffn_down_exps.weight'") && msg.contains("layer 0 of 2 (Mixtral)"),
        "{msg}"
    );

    // The experts' width disagrees with the stacked tensors' shapes.
    let e = load_err(
        &Gguf::read("qwen3_moe-f32")
            .edited(|g| g.set("qwen3moe.expert_feed_forward_length", GgufValue::U32(16))),
    )
    .to_string();
    assert!(
        e.contains("'blk.0.ffn_gate_exps.weight'")
            && e.contains("[8, 32, 64]")
            && e.contains("[8, 16, 64]"),
        "{e}"
    );

    // llama.cpp's older per-expert layout (`blk.N.ffn_gate.E.weight`): refused, saying so.
    let old = Gguf::read("qwen3_moe-f32").edited(|g| {
        let mut per_expert = Vec::new();
        for (name, shape, ty, data) in &g.tensors {
            let Some(p) = name
                .strip_prefix("blk.0.ffn_")
                .and_then(|n| n.strip_suffix("_exps.weight"))
            else {
                continue;
            };
            let stride = data.len() / shape[0] as usize;
            for (e, chunk) in data.chunks(stride).enumerate() {
                let n = format!("blk.0.ffn_{p}.{e}.weight");
                per_expert.push((n, shape[1..].to_vec(), *ty, chunk.to_vec()));
            }
        }
        g.tensors
            .retain(|t| !t.0.starts_with("blk.0.") || !t.0.ends_with("_exps.weight"));
        g.tensors.extend(per_expert);
        g
    });
    let e = load_err(&old).to_string();
    assert!(
        e.contains("'blk.0.ffn_gate_exps.weight'")
            && e.contains("per-expert tensors ('blk.0.ffn_gate.0.weight'")
            && e.contains("convert the checkpoint again"),
        "{e}"
    );

    // ggml's shape for the shared expert's gate is `[hidden]`; llama.cpp's converter writes
    // `[1, hidden]`. Both load, to the same model.
    let vector = Gguf::read("qwen2_moe-f32").edited(|g| {
        for t in &mut g.tensors {
            if t.0.ends_with("ffn_gate_inp_shexp.weight") {
                assert_eq!(t.1, [1, 64]);
                t.1 = vec![64];
            }
        }
        g
    });
    let a = CpuModel::load(&vector.write(d)).unwrap();
    let b = CpuModel::load(&fixtures().join("gguf/qwen2_moe-f32.gguf")).unwrap();
    let run = |m: &CpuModel| {
        let mut cache = m.new_cache(8).unwrap();
        m.forward(&[5, 6, 7, 8, 9, 10, 11, 12], &mut cache).unwrap()
    };
    assert_eq!(run(&a), run(&b));
}

/// The bytes of each expert's matrix, as `WeightMap::expert_slice` places them: in their own
/// tensor of the Hugging Face checkpoint, in the stacked tensor of the F32 GGUF file made from
/// it; the same floats either way.
#[test]
fn expert_slices_are_the_hf_experts() {
    let read = |table: &TensorTable, s: hoist_runtime::weights::ExpertSlice| -> Vec<u8> {
        let info = &table.tensors[s.index];
        let bytes = std::fs::read(&table.files[info.file].path).unwrap();
        assert!(s.offset + s.len <= info.len);
        let start = (info.offset + s.offset) as usize;
        bytes[start..start + s.len as usize].to_vec()
    };
    for name in ["qwen3_moe", "qwen2_moe"] {
        let hf = TensorTable::open(fixtures().join(name)).unwrap();
        let hf_config =
            ModelConfig::from_hf_file(&fixtures().join(name).join("config.json")).unwrap();
        let hf_map = WeightMap::resolve(&hf, &hf_config).unwrap();
        let gg = TensorTable::open(fixtures().join(format!("gguf/{name}-f32.gguf"))).unwrap();
        let gg_config = ModelConfig::from_gguf(&gg).unwrap();
        let gg_map = WeightMap::resolve(&gg, &gg_config).unwrap();
        let moe = gg_config.moe.as_ref().unwrap();
        let (h, ei) = (gg_config.hidden_size, moe.expert_intermediate_size);
        for layer in 0..gg_config.num_layers {
            for proj in [ExpertProj::Gate, ExpertProj::Up, ExpertProj::Down] {
                if !moe.is_sparse(layer) {
                    assert_eq!(
                        gg_map.expert_slice(&gg, layer, 0, proj),
                        None,
                        "dense layer"
                    );
                    continue;
                }
                for e in 0..moe.num_experts {
                    let a = hf_map.expert_slice(&hf, layer, e, proj).unwrap();
                    let b = gg_map.expert_slice(&gg, layer, e, proj).unwrap();
                    let dims = if proj == ExpertProj::Down {
                        (h, ei)
                    } else {
                        (ei, h)
                    };
                    assert_eq!(((a.rows, a.cols), (b.rows, b.cols)), (dims, dims));
                    assert_eq!((a.offset, b.offset), (0, e as u64 * b.len));
                    assert_eq!(
                        read(&hf, a),
                        read(&gg, b),
                        "{name} layer {layer} expert {e} {proj:?}"
                    );
                }
                let past = moe.num_experts;
                assert_eq!(gg_map.expert_slice(&gg, layer, past, proj), None);
                assert_eq!(hf_map.expert_slice(&hf, layer, past, proj), None);
            }
        }
    }
}

/// Rewrites the safetensors header of `dir/model.safetensors` with `edit` (the data stay as
/// they are: an entry may be dropped or made to cover fewer bytes).
fn edit_header(dir: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(&mut header);
    let text = serde_json::to_string(&header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text.as_bytes());
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

/// An MLX affine-quantized checkpoint whose parts do not fit together, or do not fit its
/// config, is refused at load with the tensor named and what to do.
#[test]
fn affine_errors_name_the_tensor() {
    let load_err = |dir: &Path| CpuModel::load(dir).unwrap_err().to_string();
    let fresh = || {
        let dir = tempfile::tempdir().unwrap();
        copy_fixture("affine_qwen3", dir.path());
        dir
    };

    // Truncated scales: first alone, then with their biases (one group a row where the
    // packed words hold two).
    let dir = fresh();
    let truncate = |h: &mut serde_json::Map<String, serde_json::Value>, part: &str| {
        let s = &mut h[&format!("model.embed_tokens.{part}")];
        let start = s["data_offsets"][0].as_u64().unwrap();
        s["shape"] = serde_json::json!([288, 1]);
        s["data_offsets"] = serde_json::json!([start, start + 288 * 2]);
    };
    edit_header(dir.path(), |h| truncate(h, "scales"));
    let e = load_err(dir.path());
    assert!(
        e.contains("'model.embed_tokens.weight'") && e.contains("differ in shape"),
        "{e}"
    );
    edit_header(dir.path(), |h| truncate(h, "biases"));
    let e = load_err(dir.path());
    assert!(
        e.contains("'model.embed_tokens.weight'")
            && e.contains("scales have 1 a row")
            && e.contains("group_size"),
        "{e}"
    );

    // The config's group size is not the checkpoint's.
    let dir = fresh();
    edit_config(dir.path(), |v| {
        v["quantization"]["group_size"] = 64.into();
        v["quantization_config"]["group_size"] = 64.into();
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("groups of 64"),
        "{e}"
    );

    // Missing biases, then missing scales beside a packed weight.
    let q = "model.layers.0.self_attn.q_proj";
    let dir = fresh();
    edit_header(dir.path(), |h| {
        h.remove(&format!("{q}.biases"));
    });
    let e = load_err(dir.path());
    assert!(
        e.contains(&format!("missing tensor '{q}.biases'")) && e.contains("affine"),
        "{e}"
    );
    edit_header(dir.path(), |h| {
        h.remove(&format!("{q}.scales"));
    });
    let e = load_err(dir.path());
    assert!(
        e.contains(&format!("missing tensor '{q}.scales'")) && e.contains("U32"),
        "{e}"
    );

    // Scales without a quantization entry, and a module the config says is not quantized.
    let dir = fresh();
    edit_config(dir.path(), |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("quantization");
        o.remove("quantization_config");
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("model.embed_tokens.weight") && e.contains("no 'quantization' entry"),
        "{e}"
    );
    let dir = fresh();
    edit_config(dir.path(), |v| {
        v["quantization"]["model.embed_tokens"] = false.into();
    });
    let e = load_err(dir.path());
    assert!(e.contains("'model.embed_tokens' is not quantized"), "{e}");

    // Bits MLX does not have are a config error naming the key.
    let dir = fresh();
    edit_config(dir.path(), |v| v["quantization"]["bits"] = 7.into());
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json") && e.contains("bits = 7") && e.contains("quantization"),
        "{e}"
    );
}
