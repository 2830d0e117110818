//! Configurations and weight maps from real checkpoint files: GGUF metadata, and the errors a
//! checkpoint that does not fit its configuration gets.

use std::path::{Path, PathBuf};

use hoist_format::TensorTable;
use hoist_runtime::config::ConfigError;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::{ArchFamily, ModelConfig, RopeStyle, RuntimeError, WeightMap};
use hoist_synth::gguf::{write_gguf, GgufTensor, GgufValue};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

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
