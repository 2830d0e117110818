//! The hybrid linear-attention models as llama.cpp's converter writes them (GGUF `qwen3next`,
//! `qwen35moe`; fixtures from `tests/fixtures/make_gguf_next.py`, F32) on the CPU reference,
//! against the same transformers logits as their Hugging Face fixtures (`qwen3_next/`,
//! `qwen3_5_moe/`): the converter's layout changes (split `in_proj_qkvz`, `-exp(A_log)`, folded
//! norms, squeezed conv kernel, Qwen3.5's tiled value heads) must all be undone exactly.

mod common;

use std::path::PathBuf;

use common::cpu_reference::{check, reference};
use common::fixtures;
use common::gguf_edit::Gguf;
use hoist_format::TensorTable;
use hoist_runtime::config::{ConfigError, DeltaLayout, LayerKind};
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::weights::WeightError;
use hoist_runtime::{ArchFamily, ModelConfig, RuntimeError};
use hoist_synth::gguf::GgufValue;

fn gguf(name: &str) -> PathBuf {
    fixtures().join(format!("gguf/{name}-f32.gguf"))
}

/// F32 files: the same tolerance as the Hugging Face fixtures' tests.
fn matches_transformers(name: &str) {
    let model = CpuModel::load(&gguf(name)).unwrap();
    check(
        &model,
        &reference(&fixtures().join(name)),
        1e-4,
        &format!("{name}-f32.gguf"),
    );
}

#[test]
fn gguf_qwen3_next_matches_transformers() {
    matches_transformers("qwen3_next");
}

#[test]
fn gguf_qwen3_5_moe_matches_transformers() {
    matches_transformers("qwen3_5_moe");
}

/// The GGUF configurations are the Hugging Face ones but for where the layouts differ.
#[test]
fn gguf_configs_read_the_hybrid_layout() {
    use LayerKind::{Full, Linear};
    for (name, layout, rotary) in [
        ("qwen3_next", DeltaLayout::GgufFusedBa, 8),
        ("qwen3_5_moe", DeltaLayout::GgufTiled, 4),
    ] {
        let table = TensorTable::open(gguf(name)).unwrap();
        let g = ModelConfig::from_gguf(&table).unwrap();
        let dir = fixtures().join(name);
        let hf = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        assert_eq!(g.arch, hf.arch, "{name}");
        let lin = g.linear.as_ref().unwrap();
        // `recurrent_layers`, not `full_attention_interval` (written as 4 for Qwen3-Next's
        // fixture, whose layers alternate).
        assert_eq!(lin.layer_types, [Linear, Full, Linear, Full], "{name}");
        assert_eq!(lin.layout, layout, "{name}");
        assert_eq!(lin.rotary_dim, rotary, "{name}");
        let hl = hf.linear.as_ref().unwrap();
        assert_eq!(
            (
                lin.num_k_heads,
                lin.num_v_heads,
                lin.k_head_dim,
                lin.v_head_dim
            ),
            (hl.num_k_heads, hl.num_v_heads, hl.k_head_dim, hl.v_head_dim),
            "{name}"
        );
        assert_eq!(lin.conv_kernel, hl.conv_kernel, "{name}");
        assert!(g.qk_norm && !g.tie_word_embeddings, "{name}");
        assert_eq!(
            g.moe, hf.moe,
            "{name}: experts, shared expert, dense layers"
        );
        assert_eq!(
            (g.hidden_size, g.num_heads, g.num_kv_heads, g.head_dim),
            (hf.hidden_size, hf.num_heads, hf.num_kv_heads, hf.head_dim),
            "{name}"
        );
    }
    let table = TensorTable::open(gguf("qwen3_next")).unwrap();
    assert_eq!(
        ModelConfig::from_gguf(&table).unwrap().arch,
        ArchFamily::Qwen3Next
    );
}

#[test]
fn gguf_missing_ssm_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (name, tensor) in [
        ("qwen3_next", "blk.2.ssm_ba.weight"),
        ("qwen3_5_moe", "blk.0.ssm_alpha.weight"),
        ("qwen3_5_moe", "blk.2.ssm_a"),
    ] {
        let path = Gguf::read(&format!("{name}-f32"))
            .edited(|g| g.drop_tensor(tensor))
            .write(dir.path());
        let e = match CpuModel::load(&path) {
            Ok(_) => panic!("{name} without {tensor} loaded"),
            Err(e) => e,
        };
        let msg = e.to_string();
        assert!(
            matches!(e, RuntimeError::Weights(WeightError::Missing { .. })),
            "{msg}"
        );
        assert!(msg.contains(&format!("'{tensor}'")), "{msg}");
    }
}

#[test]
fn gguf_hybrid_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q35, next) = (Gguf::read("qwen3_5_moe-f32"), Gguf::read("qwen3_next-f32"));
    for key in [
        "qwen35moe.ssm.group_count",
        "qwen35moe.ssm.time_step_rank",
        "qwen35moe.ssm.state_size",
        "qwen35moe.ssm.inner_size",
        "qwen35moe.ssm.conv_kernel",
        "qwen35moe.expert_shared_feed_forward_length",
    ] {
        let e = q35.edited(|g| g.remove(key)).config(d).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Missing { key: k, .. } if k == key),
            "{key}: {e}"
        );
    }
    let e = q35
        .edited(|g| g.set("qwen35moe.ssm.time_step_rank", GgufValue::U32(3)))
        .config(d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'qwen35moe.ssm.inner_size'"), "{e}");
    let e = next
        .edited(|g| g.set("qwen3next.rope.dimension_count", GgufValue::U32(7)))
        .config(d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'qwen3next.rope.dimension_count'"), "{e}");
    // Without `recurrent_layers`: every `full_attention_interval`-th layer is full attention.
    let c = next
        .edited(|g| {
            g.remove("qwen3next.attention.recurrent_layers")
                .set("qwen3next.full_attention_interval", GgufValue::U32(2))
        })
        .config(d)
        .unwrap();
    use LayerKind::{Full, Linear};
    assert_eq!(c.linear.unwrap().layer_types, [Linear, Full, Linear, Full]);
    let e = next
        .edited(|g| g.set("qwen3next.nextn_predict_layers", GgufValue::U32(5)))
        .config(d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'qwen3next.nextn_predict_layers'"), "{e}");
}

/// A file with a multi-token-prediction block, as the converter writes one without `--no-mtp`:
/// counted in `block_count`, listed last in `recurrent_layers`, its `blk.4.nextn.*` tensors
/// never read.
#[test]
fn gguf_mtp_blocks_are_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::read("qwen3_next-f32").edited(|g| {
        g.set("qwen3next.block_count", GgufValue::U32(5))
            .set("qwen3next.nextn_predict_layers", GgufValue::U32(1))
            .set(
                "qwen3next.attention.recurrent_layers",
                GgufValue::Array(
                    [true, false, true, false, false]
                        .map(GgufValue::Bool)
                        .to_vec(),
                ),
            )
    });
    g.tensors.push((
        "blk.4.nextn.eh_proj.weight".into(),
        vec![64, 128],
        0,
        vec![0; 64 * 128 * 4],
    ));
    let c = g.config(dir.path()).unwrap();
    assert_eq!(c.num_layers, 4);
    assert_eq!(c.linear.as_ref().unwrap().layer_types.len(), 4);
    let model = CpuModel::load(&g.write(dir.path())).unwrap();
    check(
        &model,
        &reference(&fixtures().join("qwen3_next")),
        1e-4,
        "qwen3_next with an MTP block",
    );
}
