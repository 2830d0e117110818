//! The CPU reference forward pass against logits made by Hugging Face `transformers`
//! (fixtures from `tests/fixtures/make_reference.py`): tiny random Llama (GQA, Llama 3.1
//! rotary scaling), Mistral (sliding window), Qwen2 (q/k/v biases, tied) and Qwen3 (q/k norms,
//! head_dim ≠ hidden/heads, tied) checkpoints loaded through hoist; and the same Llama and Qwen3
//! as Q8_0 / Q4_0 GGUF files written the way llama.cpp writes them; and the mixture-of-experts
//! Mixtral (8 experts, top-2, sliding window), Qwen2-MoE (shared expert, top-k weights not
//! renormalised, a dense middle layer) and Qwen3-MoE (top-k renormalised, q/k norms); and those
//! three as GGUF files written the way llama.cpp writes them (stacked experts, Mixtral as
//! `llama` with permuted q/k rows; F32, and Qwen2-MoE as Q8_0 too;
//! `tests/fixtures/make_gguf_moe.py`).

mod common;

use common::cpu_reference::{check, hf, reference, rel_error};
use common::fixtures;
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::ModelConfig;

#[test]
fn llama_gqa_llama3_rope_untied() {
    hf("llama");
}

#[test]
fn mistral_sliding_window() {
    hf("mistral");
}

#[test]
fn qwen2_qkv_bias_tied() {
    hf("qwen2");
}

#[test]
fn qwen3_qk_norm_tied() {
    hf("qwen3");
}

#[test]
fn mixtral_moe_top2_sliding_window() {
    hf("mixtral");
}

#[test]
fn qwen2_moe_shared_expert_dense_layer() {
    let err = hf("qwen2_moe");
    assert!(err <= 1e-4);
}

#[test]
fn qwen3_moe_norm_topk_qk_norm_tied() {
    hf("qwen3_moe");
}

/// The MoE fixtures are sensitive to the routing: flipping `norm_topk_prob`, or making the
/// middle layer of Qwen2-MoE sparse, moves the logits.
#[test]
fn moe_fixtures_exercise_routing() {
    for (name, tweak) in [
        (
            "qwen3_moe",
            (|c: &mut ModelConfig| {
                if let Some(m) = c.moe.as_mut() {
                    m.norm_topk_prob = false;
                }
            }) as fn(&mut ModelConfig),
        ),
        ("qwen2_moe", |c: &mut ModelConfig| {
            if let Some(m) = c.moe.as_mut() {
                m.norm_topk_prob = true;
            }
        }),
        ("mixtral", |c: &mut ModelConfig| {
            if let Some(m) = c.moe.as_mut() {
                m.experts_per_token = 1;
            }
        }),
    ] {
        let err = tweaked_error(name, |c| {
            assert!(c.moe.is_some(), "{name} is a mixture of experts");
            tweak(c)
        });
        assert!(err > 1e-3, "{name}: the tweak did not matter ({err:e})");
    }
    // The dense middle layer of Qwen2-MoE: the sparse layers' tensors are all there is.
    let dir = fixtures().join("qwen2_moe");
    let mut config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    if let Some(m) = config.moe.as_mut() {
        m.mlp_only_layers.clear();
    }
    let table = hoist_format::TensorTable::open(&dir).unwrap();
    let e = CpuModel::from_table(&table, config)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.gate.weight") && e.contains("missing"),
        "{e}"
    );
}

/// The fixtures are sensitive to what they test: without the sliding window, or without the
/// Llama 3.1 scaling, the logits no longer match.
#[test]
fn fixtures_exercise_window_and_scaling() {
    for (name, tweak) in [
        (
            "mistral",
            (|c: &mut ModelConfig| c.sliding_window = None) as fn(&mut ModelConfig),
        ),
        ("llama", |c: &mut ModelConfig| c.rope_scaling = None),
    ] {
        let err = tweaked_error(name, tweak);
        assert!(err > 1e-3, "{name}: the tweak did not matter ({err:e})");
    }
}

/// The largest relative logit error of fixture `name` run with its configuration changed by
/// `tweak`, against its reference.
fn tweaked_error(name: &str, tweak: impl FnOnce(&mut ModelConfig)) -> f32 {
    let dir = fixtures().join(name);
    let mut config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    tweak(&mut config);
    let table = hoist_format::TensorTable::open(&dir).unwrap();
    let model = CpuModel::from_table(&table, config).unwrap();
    let r = reference(&dir);
    let mut cache = model.new_cache(r.prompt.len()).unwrap();
    let logits = model.forward(&r.prompt, &mut cache).unwrap();
    let rows = r.prompt.len() - r.from;
    rel_error(&logits[r.from * r.vocab..], &r.logits[..rows * r.vocab])
}

/// Quantized GGUF files: the reference is the HF model with the dequantized weights, so the
/// only differences left are the layouts (llama-arch q/k permutation, `rope_freqs.weight`).
#[test]
fn gguf_llama_q8_0_permuted_qk_and_rope_freqs() {
    let path = fixtures().join("gguf/llama-q8_0.gguf");
    let model = CpuModel::load(&path).unwrap();
    assert_eq!(
        model.config.rope_style,
        hoist_runtime::RopeStyle::Interleaved
    );
    check(
        &model,
        &reference(&fixtures().join("gguf/llama-q8_0.ref")),
        1e-4,
        "llama-q8_0.gguf",
    );
}

#[test]
fn gguf_qwen3_q4_0_tied() {
    let path = fixtures().join("gguf/qwen3-q4_0.gguf");
    let model = CpuModel::load(&path).unwrap();
    assert!(model.config.tie_word_embeddings && model.config.qk_norm);
    check(
        &model,
        &reference(&fixtures().join("gguf/qwen3-q4_0.ref")),
        1e-4,
        "qwen3-q4_0.gguf",
    );
}

/// GGUF and safetensors of one model agree within quantization error (Q8_0 here).
#[test]
fn gguf_q8_0_is_close_to_the_f32_model() {
    let q = CpuModel::load(&fixtures().join("gguf/llama-q8_0.gguf")).unwrap();
    let r = reference(&fixtures().join("llama"));
    let mut cache = q.new_cache(r.prompt.len()).unwrap();
    let logits = q.forward(&r.prompt, &mut cache).unwrap();
    let rows = r.prompt.len() - r.from;
    let err = rel_error(&logits[r.from * r.vocab..], &r.logits[..rows * r.vocab]);
    eprintln!("llama-q8_0.gguf vs f32 model: {err:.2e}");
    assert!(err < 5e-2, "Q8_0 drifted {err:e} from the f32 model");
}

/// Mixtral as llama.cpp writes it: architecture `llama` with `llama.expert_count`, stacked
/// experts, permuted q/k rows. The file carries no sliding window (llama.cpp's `llama` graph has
/// none), so its reference is transformers' output of the same model without the window
/// (`gguf/mixtral-f32.ref`).
#[test]
fn gguf_mixtral_f32_stacked_experts_permuted_qk() {
    let model = CpuModel::load(&fixtures().join("gguf/mixtral-f32.gguf")).unwrap();
    let c = &model.config;
    assert_eq!(c.arch, hoist_runtime::ArchFamily::Mixtral);
    assert_eq!(c.rope_style, hoist_runtime::RopeStyle::Interleaved);
    assert_eq!(c.sliding_window, None);
    check(
        &model,
        &reference(&fixtures().join("gguf/mixtral-f32.ref")),
        1e-4,
        "mixtral-f32.gguf",
    );
}

/// The same file with the Hugging Face fixture's window put back is the Hugging Face model:
/// the window is the only difference, and the windowless reference is not a weaker check.
#[test]
fn gguf_mixtral_with_the_window_is_the_hf_fixture() {
    let table = hoist_format::TensorTable::open(fixtures().join("gguf/mixtral-f32.gguf")).unwrap();
    let mut config = ModelConfig::from_gguf(&table).unwrap();
    config.sliding_window = Some(24);
    let model = CpuModel::from_table(&table, config).unwrap();
    check(
        &model,
        &reference(&fixtures().join("mixtral")),
        1e-4,
        "mixtral-f32.gguf, window 24",
    );
}

/// Qwen2-MoE as `qwen2moe`: stacked experts, the shared expert and its `[1, hidden]` gate,
/// q/k/v biases, top-k weights not renormalised (llama.cpp's choice for the architecture), and
/// the fixture's dense middle layer read from its tensors. Same logits as transformers.
#[test]
fn gguf_qwen2_moe_f32_shared_expert_dense_layer() {
    let model = CpuModel::load(&fixtures().join("gguf/qwen2_moe-f32.gguf")).unwrap();
    let moe = model.config.moe.as_ref().unwrap();
    assert!(!moe.norm_topk_prob && moe.mlp_only_layers == [1]);
    check(
        &model,
        &reference(&fixtures().join("qwen2_moe")),
        1e-4,
        "qwen2_moe-f32.gguf",
    );
}

/// Qwen3-MoE as `qwen3moe`: q/k norms, tied embeddings (no `output.weight`), top-k weights
/// renormalised (llama.cpp's choice for the architecture).
#[test]
fn gguf_qwen3_moe_f32_tied() {
    let model = CpuModel::load(&fixtures().join("gguf/qwen3_moe-f32.gguf")).unwrap();
    assert!(model.config.tie_word_embeddings && model.config.moe.as_ref().unwrap().norm_topk_prob);
    check(
        &model,
        &reference(&fixtures().join("qwen3_moe")),
        1e-4,
        "qwen3_moe-f32.gguf",
    );
}

/// Qwen2-MoE as llama.cpp's converter writes it with `--outtype q8_0`: stacked Q8_0 experts
/// read one expert's blocks at a time, routers F32, the 48-wide shared down projection F16.
/// Against transformers with the file's dequantized weights: as tight as F32 (and the same
/// greedy tokens as the f32 model). Against the f32 model: within quantization error, 5e-2 of
/// the logits' scale as for the dense Q8_0 file (measured: 1.6e-2).
#[test]
fn gguf_qwen2_moe_q8_0() {
    let model = CpuModel::load(&fixtures().join("gguf/qwen2_moe-q8_0.gguf")).unwrap();
    check(
        &model,
        &reference(&fixtures().join("gguf/qwen2_moe-q8_0.ref")),
        1e-4,
        "qwen2_moe-q8_0.gguf",
    );
    let r = reference(&fixtures().join("qwen2_moe"));
    let mut cache = model.new_cache(r.prompt.len()).unwrap();
    let logits = model.forward(&r.prompt, &mut cache).unwrap();
    let rows = r.prompt.len() - r.from;
    let err = rel_error(&logits[r.from * r.vocab..], &r.logits[..rows * r.vocab]);
    eprintln!("qwen2_moe-q8_0.gguf vs f32 model: {err:.2e}");
    assert!(err < 5e-2, "Q8_0 drifted {err:e} from the f32 model");
}

/// The GPU runtime runs MoE models with every layer resident (tests/gpu.rs); a placement that
/// streams their layers is refused before a device is opened (so this runs anywhere), pointing
/// at what runs.
#[test]
fn gpu_refuses_streamed_moe_before_touching_the_device() {
    let dir = fixtures().join("qwen2_moe");
    let config = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
    let table = hoist_format::TensorTable::open(&dir).unwrap();
    let options = hoist_runtime::gpu::GpuOptions {
        placement: hoist_runtime::Placement::uniform(hoist_runtime::Residency::Streamed {
            slots: 2,
        }),
        ..Default::default()
    };
    let e = match hoist_runtime::gpu::GpuModel::from_table(&table, config, &options) {
        Ok(_) => panic!("a streamed MoE model loaded on the GPU"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("mixture-of-experts") && e.contains("resident") && e.contains("--device cpu"),
        "{e}"
    );
}
