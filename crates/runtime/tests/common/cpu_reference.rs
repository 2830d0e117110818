//! The CPU reference against a fixture's transformers logits (`reference.json`, `logits.f32`):
//! shared by `reference.rs` and `qwen3_next.rs`.

use std::path::Path;

use hoist_runtime::cpu::CpuModel;

use super::fixtures;

pub struct Reference {
    pub prompt: Vec<u32>,
    pub greedy: Vec<u32>,
    /// Rows from position `from` on, `[rows, vocab]`.
    pub logits: Vec<f32>,
    pub from: usize,
    pub vocab: usize,
}

pub fn reference(dir: &Path) -> Reference {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let ids = |k: &str| -> Vec<u32> {
        meta[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let shape = ids("logits_shape");
    let bytes = std::fs::read(dir.join("logits.f32")).unwrap();
    let logits: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(logits.len(), (shape[0] * shape[1]) as usize);
    Reference {
        prompt: ids("prompt"),
        greedy: ids("greedy"),
        logits,
        from: meta["logits_from"].as_u64().unwrap() as usize,
        vocab: shape[1] as usize,
    }
}

/// Max |a − b| over max |b|: relative to the logits' scale (element-wise relative error is
/// meaningless for logits near zero).
pub fn rel_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Runs prefill over the prompt then greedy decode with the KV cache, comparing every logits
/// row the reference has and the greedy tokens; returns the largest relative error.
pub fn check(model: &CpuModel, r: &Reference, tolerance: f32, label: &str) -> f32 {
    let v = r.vocab;
    assert_eq!(model.config.vocab_size, v);
    let mut cache = model.new_cache(r.prompt.len() + r.greedy.len()).unwrap();
    let prefill = model.forward(&r.prompt, &mut cache).unwrap();
    let mut rows = prefill[r.from * v..].to_vec();
    let mut greedy = vec![hoist_runtime::sampler::argmax(
        &prefill[prefill.len() - v..],
    )];
    for _ in 1..r.greedy.len() {
        let step = model
            .forward(&[*greedy.last().unwrap()], &mut cache)
            .unwrap();
        greedy.push(hoist_runtime::sampler::argmax(&step));
        rows.extend(step);
    }
    let err = rel_error(&rows, &r.logits);
    eprintln!(
        "{label}: max relative logits error {err:.2e} over {} rows",
        rows.len() / v
    );
    assert!(
        err <= tolerance,
        "{label}: logits differ by {err:e} > {tolerance:e}"
    );
    assert_eq!(greedy, r.greedy, "{label}: greedy tokens differ");
    err
}

pub fn hf(name: &str) -> f32 {
    let dir = fixtures().join(name);
    let model = CpuModel::load(&dir).unwrap();
    check(&model, &reference(&dir), 1e-4, name)
}
