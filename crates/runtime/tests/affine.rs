//! MLX affine-quantized checkpoints (mlx-lm's layout; fixtures from
//! `tests/fixtures/make_affine_reference.py`) on the CPU reference, against transformers run on
//! the dequantized weights: a dense Qwen3 (4-bit groups of 32, bf16 scales, one module in 8
//! bits and one left in floats by per-module overrides), a Llama in 6 bits (its untied output
//! projection in 8) and a Qwen2 in 3 (f16 scales), a Qwen3-MoE (8-bit, stacked
//! `switch_mlp` experts), a Qwen3-Next and a Qwen3.5-MoE (4-bit, routers in 8 bits, folded
//! norms, `[channels, kernel, 1]` conv kernels, unquantized stacked down projections; Qwen3.5
//! nested under `language_model.`).
//!
//! Tolerance: the reference's weights are the dequantized ones, computed in f32 as the loader
//! computes them (`scale · q + bias`), so only the forward pass's own f32 differences remain:
//! the 1e-4 (relative to the largest logit) of the unquantized fixtures, and the same greedy
//! tokens. Malformed checkpoints are in `checkpoints.rs`.

mod common;

use common::cpu_reference::hf;
use common::fixtures;
use hoist_format::TensorTable;
use hoist_runtime::quant::affine::{table_parameters, AffineSpec};
use hoist_runtime::weights::{LayerTensor, WeightId};
use hoist_runtime::{ModelConfig, WeightMap};

#[test]
fn dense_qwen3_matches_transformers() {
    hf("affine_qwen3");
}

/// 6 and 3 bits: elements straddle bytes (and words); Qwen2's q/k/v biases stay floats.
#[test]
fn llama_6_bit_and_qwen2_3_bit_match_transformers() {
    hf("affine_llama");
    hf("affine_qwen2");
}

#[test]
fn qwen3_moe_stacked_experts_match_transformers() {
    hf("affine_qwen3_moe");
}

#[test]
fn qwen3_next_matches_transformers() {
    hf("affine_qwen3_next");
}

#[test]
fn qwen3_5_moe_matches_transformers() {
    hf("affine_qwen3_5_moe");
}

fn open(name: &str) -> (TensorTable, ModelConfig, WeightMap) {
    let dir = fixtures().join(name);
    let config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let table = TensorTable::open(&dir).unwrap();
    let map = WeightMap::resolve(&table, &config).unwrap();
    (table, config, map)
}

#[test]
fn the_config_reads_the_spec_and_its_overrides() {
    let (_, config, map) = open("affine_qwen3");
    let q = config.quantization.as_ref().unwrap();
    let spec = |bits, group_size| Some(AffineSpec { bits, group_size });
    assert_eq!(Some(q.default), spec(4, 32));
    assert_eq!(q.spec_for("model.layers.1.mlp.down_proj"), spec(8, 64));
    assert_eq!(q.spec_for("model.layers.0.self_attn.v_proj"), None);
    let layer = |n, t| WeightId::Layer(n, t);
    assert_eq!(
        map.affine(layer(1, LayerTensor::Down)).map(|p| p.spec),
        spec(8, 64)
    );
    assert!(
        map.affine(layer(0, LayerTensor::V)).is_none(),
        "left in floats"
    );
    assert!(map.affine(WeightId::Embedding).is_some());
}

#[test]
fn parameters_count_the_unpacked_weights() {
    for (affine, plain) in [
        ("affine_qwen3", "qwen3"),
        ("affine_llama", "llama"),
        ("affine_qwen2", "qwen2"),
        ("affine_qwen3_moe", "qwen3_moe"),
        ("affine_qwen3_next", "qwen3_next"),
        ("affine_qwen3_5_moe", "qwen3_5_moe"),
    ] {
        let (a_table, _, a_map) = open(affine);
        let (p_table, _, p_map) = open(plain);
        assert_eq!(
            a_map.matrix_parameters(&a_table),
            p_map.matrix_parameters(&p_table),
            "{affine}"
        );
        // `hoist show`'s count over the whole table (Qwen3.5's source has a vision tower).
        if affine != "affine_qwen3_5_moe" {
            let q = ModelConfig::from_hf_file(&fixtures().join(affine).join("config.json"))
                .unwrap()
                .quantization
                .unwrap();
            assert_eq!(
                table_parameters(&a_table, &q),
                p_table.parameters(),
                "{affine}"
            );
        }
        // Every packed weight's scales and biases are read with it.
        let scales = a_table
            .tensors
            .iter()
            .filter(|t| t.name.ends_with(".scales"))
            .count();
        assert_eq!(a_map.selection().len(), a_map.entries.len() + 2 * scales);
    }
}

#[test]
fn mlx_layouts_are_recognised() {
    let (table, _, map) = open("affine_qwen3_next");
    assert!(map.norms_folded, "[channels, kernel, 1] conv kernels");
    let what = map.mlx_only(&table).unwrap();
    assert!(
        what.contains("model.embed_tokens.weight") && what.contains("4-bit"),
        "{what}"
    );
    let (_, _, map) = open("affine_qwen3_5_moe");
    assert_eq!(map.name(WeightId::Output), "language_model.lm_head.weight");
    assert_eq!(
        map.name(WeightId::Embedding),
        "language_model.model.embed_tokens.weight"
    );
    let (_, _, plain) = open("qwen3_next");
    assert!(!plain.norms_folded);
}

/// The GPU runtime has no kernels for MLX's packing: it refuses such a checkpoint before it
/// opens a device (so this runs anywhere), naming the tensor and pointing at the CPU.
#[test]
fn gpu_refuses_affine_checkpoints_before_touching_the_device() {
    for name in ["affine_qwen3", "affine_qwen3_moe"] {
        let (table, config, _) = open(name);
        let options = hoist_runtime::gpu::GpuOptions::default();
        let e = match hoist_runtime::gpu::GpuModel::from_table(&table, config, &options) {
            Ok(_) => panic!("{name} loaded on the GPU"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("affine") && e.contains("--device cpu") && e.contains(".weight'"),
            "{name}: {e}"
        );
    }
}
