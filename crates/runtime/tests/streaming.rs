//! Layer streaming on the GPU: whatever the placement (layers streamed through 1 to 3 slots,
//! from pinned host memory or from the file, with and without decode graphs), a model gives
//! the resident path's logits bit for bit and decodes the same tokens. Skipped, with a
//! message, where no CUDA GPU exists.

mod common;

use common::{fixtures, gpu_or_skip};
use std::path::{Path, PathBuf};

use hoist_runtime::cpu::model::open_checkpoint;
use hoist_runtime::gpu::{GpuModel, GpuOptions, HostFfn};
use hoist_runtime::placement::{Budget, Placement, Residency, Tier};
use hoist_runtime::sampler::argmax;

const PROMPT: [u32; 11] = [1, 15, 27, 3, 99, 4, 250, 8, 31, 77, 5];
const STEPS: usize = 16;

/// What a run produced: every logit's bits (prefill rows, then each decode step's), the
/// tokens the host loop chose, the tokens device greedy decoding chose.
#[derive(PartialEq, Debug)]
struct Run {
    logits: Vec<u32>,
    host_tokens: Vec<u32>,
    device_tokens: Vec<u32>,
}

fn run(model: &Path, placement: Placement, graphs: bool) -> (Run, hoist_runtime::gpu::LoadStats) {
    let (runs, stats) = run_prompts(model, placement, graphs, &[&PROMPT]);
    (runs.into_iter().next().unwrap(), stats)
}

/// Loads `model` placed as `placement`, every streamed layer computed on the GPU (hybrid
/// layers compute on the host: close, not bitwise; see `hybrid_layers_…`).
fn load(
    model: &Path,
    placement: Placement,
    graphs: bool,
    host_ffn: HostFfn,
    q4_tiles: bool,
) -> GpuModel {
    let (table, config) = open_checkpoint(model).unwrap();
    let mut options = GpuOptions::default().with_env_overrides().unwrap();
    options.placement = placement;
    options.tuning.graphs = graphs;
    options.tuning.host_ffn = host_ffn;
    options.tuning.q4_tiles &= q4_tiles;
    GpuModel::from_table(&table, config, &options).unwrap()
}

/// [`Run`]s of `prompts` on one load of `model`.
fn run_prompts(
    model: &Path,
    placement: Placement,
    graphs: bool,
    prompts: &[&[u32]],
) -> (Vec<Run>, hoist_runtime::gpu::LoadStats) {
    let m = load(model, placement, graphs, HostFfn::Off, true);
    let runs = prompts.iter().map(|p| run_one(&m, p)).collect();
    (runs, m.stats().clone())
}

fn run_one(m: &GpuModel, prompt: &[u32]) -> Run {
    let vocab = m.config().vocab_size as u32;
    let prompt: Vec<u32> = prompt.iter().map(|t| t % vocab).collect();
    let mut s = m.session(prompt.len() + STEPS + 2).unwrap();
    let cut = prompt.len() / 3;
    let mut logits = s.forward(&prompt[..cut], true).unwrap();
    logits.extend(s.forward(&prompt[cut..], true).unwrap());
    let first = argmax(&logits[logits.len() - vocab as usize..]);
    let mut host_tokens = vec![first];
    for _ in 0..STEPS {
        let step = s.forward(&[*host_tokens.last().unwrap()], false).unwrap();
        host_tokens.push(argmax(&step));
        logits.extend(step);
    }
    s.clear();
    s.forward(&prompt, false).unwrap();
    let mut device_tokens = vec![first];
    s.decode_greedy(first, STEPS, &mut |t| {
        device_tokens.push(t);
        true
    })
    .unwrap();
    assert!(logits.iter().all(|v| v.is_finite()), "non-finite logits");
    Run {
        logits: logits.iter().map(|v| v.to_bits()).collect(),
        host_tokens,
        device_tokens,
    }
}

#[test]
fn streamed_layers_give_the_resident_logits_bitwise() {
    if !gpu_or_skip("streamed_layers_give_the_resident_logits_bitwise") {
        return;
    }
    let g = fixtures().join("gguf");
    for model in [
        fixtures().join("llama"),
        fixtures().join("qwen2"),
        g.join("qwen3-q4_0.gguf"),
        g.join("llama-q8_0.gguf"),
    ] {
        let name = model.display().to_string();
        let (resident, stats) = run(&model, Placement::resident(), true);
        assert!(!stats.placement.streams(), "{name}");
        let untiled = run_one(
            &load(&model, Placement::resident(), true, HostFfn::Off, false),
            &PROMPT,
        );
        assert_eq!(resident.host_tokens, resident.device_tokens, "{name}");
        let p = &stats.placement;
        let n = p.layers.len();
        assert!(n >= 2, "{name}: the fixture has {n} layers");
        let largest = *p.layer_bytes.iter().max().unwrap();
        let mut first_streamed = vec![Residency::Resident; n];
        first_streamed[0] = Residency::Streamed { slots: 1 };
        let budgets = |gpu: u64, host: u64| {
            Placement::auto(Budget {
                gpu_bytes: Some(gpu),
                host_bytes: Some(host),
            })
        };
        // (placement, resident layers, pinned layers, file layers)
        let mut cases = vec![
            (
                Placement::uniform(Residency::Streamed { slots: 1 }),
                0,
                n,
                0,
            ),
            (
                Placement::uniform(Residency::Streamed { slots: 3 }),
                0,
                n,
                0,
            ),
            (Placement::per_layer(first_streamed), n - 1, 1, 0),
            // Host memory for the staging of one slot only: every layer read from the file.
            (
                Placement::uniform(Residency::Streamed { slots: 1 }).with_budget(Budget {
                    gpu_bytes: None,
                    host_bytes: Some(largest),
                }),
                0,
                0,
                n,
            ),
            // Staging of one slot and one more layer: with 3 layers or more, the first streamed
            // layer pinned and the rest from the file (with 2, the budget holds both layers'
            // worth, and pinned wins).
            (
                Placement::uniform(Residency::Streamed { slots: 1 }).with_budget(Budget {
                    gpu_bytes: None,
                    host_bytes: Some(largest + p.layer_bytes[0]),
                }),
                0,
                if n >= 3 { 1 } else { n },
                if n >= 3 { n - 1 } else { 0 },
            ),
        ];
        // One resident layer beside two slots, the rest pinned (3 layers or more: with 2, one
        // resident layer and two slots take more than both layers resident).
        if n >= 3 {
            cases.push((
                budgets(p.fixed_bytes + p.layer_bytes[0] + 2 * largest, u64::MAX),
                1,
                n - 1,
                0,
            ));
        }
        for (placement, resident_layers, pinned, file) in cases {
            for graphs in [true, false] {
                let what = format!("{name}: {placement:?}, graphs {graphs}");
                let (got, stats) = run(&model, placement.clone(), graphs);
                let p = &stats.placement;
                assert_eq!(
                    (p.resident_layers(), p.pinned_layers(), p.file_layers()),
                    (resident_layers, pinned, file),
                    "{what}: {}",
                    p.summary()
                );
                assert_eq!(
                    p.layers
                        .iter()
                        .filter(|l| **l == hoist_runtime::placement::Placed::Streamed(Tier::File))
                        .count(),
                    file
                );
                // Q4_0 layers read from the file keep the file's layout (no tiling at load):
                // they equal the resident run without tiles.
                let want = match file == n && name.contains("q4_0") {
                    true => &untiled,
                    false => &resident,
                };
                assert!(
                    got == *want,
                    "{what}: logits or tokens differ from the resident run"
                );
            }
        }
        eprintln!("{name}: every placement matches the resident logits bitwise");
    }
}

/// Largest difference over the largest magnitude.
fn rel_error(a: &[u32], b: &[u32]) -> f32 {
    let (a, b): (Vec<f32>, Vec<f32>) = (
        a.iter().map(|&v| f32::from_bits(v)).collect(),
        b.iter().map(|&v| f32::from_bits(v)).collect(),
    );
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Hybrid layers (decode's feed-forward on the host, from pinned memory): the prefill is the
/// streamed path's, bit for bit; decode logits agree within the f32 models' tolerance and the
/// greedy tokens are the resident run's.
#[test]
fn hybrid_layers_match_the_resident_logits() {
    if !gpu_or_skip("hybrid_layers_match_the_resident_logits") {
        return;
    }
    for name in ["llama", "qwen2", "qwen3"] {
        let model = fixtures().join(name);
        let (resident, _) = run(&model, Placement::resident(), true);
        let m = load(
            &model,
            Placement::uniform(Residency::Streamed { slots: 2 }),
            true,
            HostFfn::Layers(usize::MAX),
            true,
        );
        let stats = m.stats();
        assert_eq!(stats.host_ffn_layers, m.config().num_layers, "{name}");
        assert!(stats.decode_streamed_bytes_per_token < stats.placement.streamed_bytes_per_step);
        let got = run_one(&m, &PROMPT);
        let prefill = PROMPT.len() * m.config().vocab_size;
        assert!(
            got.logits[..prefill] == resident.logits[..prefill],
            "{name}: prefill"
        );
        let err = rel_error(&got.logits[prefill..], &resident.logits[prefill..]);
        eprintln!("{name}: hybrid decode, max relative error {err:.2e}");
        assert!(err <= 1e-4, "{name}: {err}");
        assert_eq!(got.host_tokens, resident.host_tokens, "{name}");
        assert_eq!(got.device_tokens, resident.device_tokens, "{name}");
    }
}

#[test]
fn budgets_too_small_are_refused_before_loading() {
    if !gpu_or_skip("budgets_too_small_are_refused_before_loading") {
        return;
    }
    let (table, config) = open_checkpoint(&fixtures().join("llama")).unwrap();
    let mut options = GpuOptions {
        placement: Placement::auto(Budget {
            gpu_bytes: Some(1),
            host_bytes: None,
        }),
        ..GpuOptions::default()
    };
    let err = GpuModel::from_table(&table, config.clone(), &options)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("--gpu-memory"), "{err}");
    options.placement = Placement::uniform(Residency::Streamed { slots: 2 }).with_budget(Budget {
        gpu_bytes: None,
        host_bytes: Some(1),
    });
    let err = GpuModel::from_table(&table, config, &options)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("--host-memory"), "{err}");
}

/// The check on a large model the GPU suite names (`HOIST_STREAM_MODEL=PATH`, e.g. the
/// Llama-2-7B-shaped file of `bench/gpu/run.sh stream`): three prompts, prefill and 16 greedy
/// steps, with GPU budgets that stream about 25%, 50% and 90% of the layers, against the
/// resident run, bit for bit. Skipped without the variable.
#[test]
fn a_large_model_streams_bitwise_when_named() {
    let Some(model) = std::env::var_os("HOIST_STREAM_MODEL") else {
        eprintln!("skipped a_large_model_streams_bitwise_when_named: set HOIST_STREAM_MODEL=PATH");
        return;
    };
    if !gpu_or_skip("a_large_model_streams_bitwise_when_named") {
        return;
    }
    let model = PathBuf::from(model);
    let long: Vec<u32> = (0..300u32).map(|i| (i * 7919 + 13) % 30000 + 3).collect();
    let prompts: [&[u32]; 3] = [&PROMPT, &[1, 450, 4996, 17354, 1701, 432], &long];
    let (resident, stats) = run_prompts(&model, Placement::resident(), true, &prompts);
    let p = &stats.placement;
    let n = p.layers.len();
    for streamed_percent in [25, 50, 90] {
        let kept = n - (n * streamed_percent).div_ceil(100);
        let gpu = p.fixed_bytes + p.layer_bytes[..kept + 2].iter().sum::<u64>();
        let placement = Placement::auto(Budget {
            gpu_bytes: Some(gpu),
            host_bytes: None,
        });
        let (got, stats) = run_prompts(&model, placement, true, &prompts);
        let plan = &stats.placement;
        assert_eq!(plan.resident_layers(), kept, "{}", plan.summary());
        for (i, (g, r)) in got.iter().zip(&resident).enumerate() {
            assert!(
                g == r,
                "{streamed_percent}% streamed, prompt {i}: differs from the resident run"
            );
        }
        eprintln!(
            "{}: {streamed_percent}% streamed ({}): 3 prompts bitwise equal",
            model.display(),
            plan.summary()
        );
    }
    // Half the layers streamed, three from pinned memory and the rest from the file.
    let kept = n / 2;
    let largest = *p.layer_bytes.iter().max().unwrap();
    let budget = Budget {
        gpu_bytes: Some(p.fixed_bytes + p.layer_bytes[..kept + 2].iter().sum::<u64>()),
        host_bytes: Some(2 * largest + 3 * largest),
    };
    let (got, stats) = run_prompts(&model, Placement::auto(budget), true, &prompts);
    let plan = &stats.placement;
    assert_eq!(
        (plan.pinned_layers(), plan.file_layers()),
        (3, n - kept - 3),
        "{}",
        plan.summary()
    );
    assert!(
        got == resident,
        "pinned and file tiers: differs from the resident run"
    );
    eprintln!(
        "{}: {}: 3 prompts bitwise equal",
        model.display(),
        plan.summary()
    );
    // Half the layers streamed, every one of them hybrid: decode close to the resident run.
    let gpu = p.fixed_bytes + p.layer_bytes[..kept + 2].iter().sum::<u64>();
    let budget = Budget {
        gpu_bytes: Some(gpu),
        host_bytes: None,
    };
    let m = load(
        &model,
        Placement::auto(budget),
        true,
        HostFfn::Layers(usize::MAX),
        true,
    );
    assert_eq!(m.stats().host_ffn_layers, n - kept);
    for (i, (prompt, r)) in prompts.iter().zip(&resident).enumerate() {
        let got = run_one(&m, prompt);
        let err = rel_error(&got.logits, &r.logits);
        eprintln!(
            "{}: hybrid, prompt {i}: max relative error {err:.2e}",
            model.display()
        );
        assert!(err <= 1e-2, "prompt {i}: {err}");
    }
}
