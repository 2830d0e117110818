//! The GPU runtime against the logits `transformers` made (the fixtures of `reference.rs`):
//! prefill (in one step and split in two), then greedy decode through the KV cache. Also the
//! errors a user meets: a context that cannot hold the tokens, a context too large for the
//! GPU's memory. Skipped, with a message, where no CUDA GPU exists.

mod common;

use common::{fixtures, gpu_or_skip};
use std::path::Path;

use hoist_runtime::cpu::model::open_checkpoint;
use hoist_runtime::gpu::{GpuError, GpuModel, GpuOptions, GpuSession};
use hoist_runtime::sampler::argmax;
use hoist_runtime::RuntimeError;
use hoist_runtime::{Placement, PlacementError, Residency};

/// The default options with the environment's overrides, so that the bench scripts'
/// `HOIST_*` switches (e.g. `HOIST_NO_GRAPHS=1`) reach these tests.
fn options() -> GpuOptions {
    GpuOptions::default()
        .with_env_overrides()
        .expect("valid HOIST_* overrides")
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn ids(meta: &serde_json::Value, key: &str) -> Vec<u32> {
    meta[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn rel_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    // f32::max passes NaN over: a non-finite value must fail on its own.
    assert!(a.iter().all(|v| v.is_finite()), "non-finite logits");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Loads `model` (a fixture directory or GGUF file) with its reference in `reference` and
/// checks logits rows and greedy tokens; `split` prefills the prompt in two steps.
fn check(model: &Path, reference: &Path, logits: &Path, tolerance: f32, split: bool) {
    check_with(model, reference, logits, tolerance, split, &options());
}

/// [`check`] with these options.
fn check_with(
    model: &Path,
    reference: &Path,
    logits: &Path,
    tolerance: f32,
    split: bool,
    options: &GpuOptions,
) {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
    let (prompt, want_greedy) = (ids(&meta, "prompt"), ids(&meta, "greedy"));
    let from = meta["logits_from"].as_u64().unwrap() as usize;
    let want = read_f32(logits);
    let m = GpuModel::load(model, options).unwrap();
    let v = m.config().vocab_size;
    let mut s = m.session(prompt.len() + want_greedy.len()).unwrap();
    let mut rows = if split {
        let cut = prompt.len() / 3;
        let mut a = s.forward(&prompt[..cut], true).unwrap();
        a.extend(s.forward(&prompt[cut..], true).unwrap());
        a
    } else {
        s.forward(&prompt, true).unwrap()
    };
    assert_eq!(rows.len(), prompt.len() * v);
    let mut greedy = vec![argmax(&rows[rows.len() - v..])];
    rows.drain(..from * v);
    for _ in 1..want_greedy.len() {
        let step = s.forward(&[*greedy.last().unwrap()], false).unwrap();
        greedy.push(argmax(&step));
        rows.extend(step);
    }
    let err = rel_error(&rows, &want);
    eprintln!(
        "{}: max relative error {err:.2e} (split {split}, MoE prefill batched {})",
        model.display(),
        options.tuning.moe_batched
    );
    assert!(err <= tolerance, "{}: {err} > {tolerance}", model.display());
    assert_eq!(greedy, want_greedy, "{}: greedy tokens", model.display());
    assert_eq!(s.len(), prompt.len() + want_greedy.len() - 1);
}

#[test]
fn hf_models_match_transformers() {
    if !gpu_or_skip("hf_models_match_transformers") {
        return;
    }
    for name in ["llama", "mistral", "qwen2", "qwen3"] {
        let dir = fixtures().join(name);
        for split in [false, true] {
            check(
                &dir,
                &dir.join("reference.json"),
                &dir.join("logits.f32"),
                1e-4,
                split,
            );
        }
    }
}

#[test]
fn gguf_models_match_transformers_on_dequantized_weights() {
    if !gpu_or_skip("gguf_models_match_transformers_on_dequantized_weights") {
        return;
    }
    for name in ["llama-q8_0", "qwen3-q4_0"] {
        let g = fixtures().join("gguf");
        let r = g.join(format!("{name}.ref"));
        // f16 activations for quantized weights: looser than the f32 models.
        check(
            &g.join(format!("{name}.gguf")),
            &r.join("reference.json"),
            &r.join("logits.f32"),
            5e-3,
            false,
        );
    }
}

#[test]
fn context_errors_are_clear() {
    if !gpu_or_skip("context_errors_are_clear") {
        return;
    }
    let m = GpuModel::load(&fixtures().join("llama"), &options()).unwrap();
    let mut s = m.session(4).unwrap();
    let err = s.forward(&[1, 2, 3, 4, 5], false).unwrap_err();
    assert!(err.to_string().contains("context full"), "{err}");
    let err = s.forward(&[1_000_000], false).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    // Too long for the runtime, and (2^29 positions, 256 GiB of cache) too large for the GPU's
    // memory: both say --context.
    for context in [hoist_runtime::gpu::MAX_CONTEXT + 1, 1 << 29] {
        match m.session(context) {
            Err(RuntimeError::Gpu(e)) => assert!(e.to_string().contains("--context"), "{e}"),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a {context}-position context cannot be had"),
        }
    }
}

/// Greedy decoding on the device chooses what the host's arg-max over each step's logits
/// chooses, feeds exactly the tokens it accepted (the steps queued past a stop leave no trace),
/// and stops with a clear error at a full cache.
#[test]
fn device_greedy_decoding_matches_the_host_loop() {
    if !gpu_or_skip("device_greedy_decoding_matches_the_host_loop") {
        return;
    }
    let steps = 24;
    let g = fixtures().join("gguf");
    for (model, reference) in [
        (
            fixtures().join("llama"),
            fixtures().join("llama/reference.json"),
        ),
        (
            g.join("qwen3-q4_0.gguf"),
            g.join("qwen3-q4_0.ref/reference.json"),
        ),
        // Decode's expert kernels captured in the graph.
        (
            fixtures().join("qwen2_moe"),
            fixtures().join("qwen2_moe/reference.json"),
        ),
    ] {
        let m = GpuModel::load(&model, &options()).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(reference).unwrap()).unwrap();
        let prompt = ids(&meta, "prompt");
        let name = model.display();

        // The host loop: logits back every step, arg-max there.
        let mut s = m.session(prompt.len() + steps + 1).unwrap();
        let first = argmax(&s.forward(&prompt, false).unwrap());
        let mut host = vec![first];
        for _ in 0..steps {
            let l = s.forward(&[*host.last().unwrap()], false).unwrap();
            host.push(argmax(&l));
        }

        // All steps on the device.
        s.clear();
        s.forward(&prompt, false).unwrap();
        let mut device = vec![first];
        let fed = s
            .decode_greedy(first, steps, &mut |t| {
                device.push(t);
                true
            })
            .unwrap();
        assert_eq!(fed, steps, "{name}");
        assert_eq!(device, host, "{name}: tokens");
        assert_eq!(s.len(), prompt.len() + steps, "{name}");

        // A stop after 5 tokens: 5 fed, though more steps were queued; the next step on the
        // host path sees exactly the host loop's state (fed another token than the one chosen,
        // so that a step queued past the stop could not have written the same cache entry).
        let other = (host[5] + 1) % m.config().vocab_size as u32;
        let mut r = m.session(prompt.len() + steps + 1).unwrap();
        r.forward(&prompt, false).unwrap();
        for &t in &host[..5] {
            r.forward(&[t], false).unwrap();
        }
        let want = r.forward(&[other], false).unwrap();
        drop(r);
        s.clear();
        s.forward(&prompt, false).unwrap();
        let mut seen = 0;
        let fed = s
            .decode_greedy(first, steps, &mut |_| {
                seen += 1;
                seen < 5
            })
            .unwrap();
        assert_eq!((fed, seen), (5, 5), "{name}");
        assert_eq!(s.len(), prompt.len() + 5, "{name}");
        let l = s.forward(&[other], false).unwrap();
        assert_eq!(l, want, "{name}: logits after a stop");

        // A cache with room for 3 more tokens: they are fed, then the error.
        let mut s = m.session(prompt.len() + 3).unwrap();
        s.forward(&prompt, false).unwrap();
        let mut got = Vec::new();
        let err = s
            .decode_greedy(first, steps, &mut |t| {
                got.push(t);
                true
            })
            .unwrap_err();
        assert!(err.to_string().contains("context full"), "{name}: {err}");
        assert_eq!(got, host[1..4], "{name}");
        assert_eq!(s.len(), prompt.len() + 3, "{name}");
        let err = s.decode_greedy(u32::MAX, 1, &mut |_| true).unwrap_err();
        assert!(
            err.to_string().contains("outside the vocabulary"),
            "{name}: {err}"
        );
    }
}

/// Why `from_table` refuses the llama fixture placed as `placement`.
fn placement_refusal(placement: Placement) -> RuntimeError {
    let (table, config) = open_checkpoint(&fixtures().join("llama")).unwrap();
    let options = GpuOptions {
        placement,
        ..GpuOptions::default()
    };
    GpuModel::from_table(&table, config, &options)
        .err()
        .expect("refused")
}

#[test]
fn placements_for_another_model_are_refused_before_any_device_work() {
    // Runs without a GPU: the plan's shape is checked before a device is opened.
    let (_, config) = open_checkpoint(&fixtures().join("llama")).unwrap();
    let layers = config.num_layers;
    let mut plan = vec![Residency::Resident; layers];
    plan[layers - 1] = Residency::Streamed { slots: 0 };
    match placement_refusal(Placement::per_layer(plan)) {
        RuntimeError::Gpu(GpuError::Placement(PlacementError::NoSlots { layer })) => {
            assert_eq!(layer, layers - 1);
        }
        e => panic!("unexpected error: {e}"),
    }
    let msg =
        placement_refusal(Placement::per_layer(vec![Residency::Resident; layers + 1])).to_string();
    assert!(msg.contains(&format!("the model has {layers}")), "{msg}");
}

#[test]
fn moe_models_match_transformers() {
    if !gpu_or_skip("moe_models_match_transformers") {
        return;
    }
    // Mixtral (top-2, renormalised), Qwen2-MoE (a shared expert with its gate, a dense layer
    // among the sparse ones, unnormalised top-k), Qwen3-MoE (q/k norms, normalised top-k).
    for name in ["mixtral", "qwen2_moe", "qwen3_moe"] {
        let dir = fixtures().join(name);
        // Prefill's experts batched, then one at a time.
        for (split, batched) in [(false, true), (true, true), (false, false)] {
            check_with(
                &dir,
                &dir.join("reference.json"),
                &dir.join("logits.f32"),
                1e-4,
                split,
                &moe_options(batched),
            );
        }
    }
}

/// The default options, prefill's experts batched or one at a time.
fn moe_options(batched: bool) -> GpuOptions {
    let mut o = options();
    o.tuning.moe_batched = batched;
    o
}

/// `dir`'s f32 safetensors checkpoint stored as bf16 in `out` (config.json copied).
fn bf16_copy(dir: &Path, out: &Path) {
    use hoist_format::DType;
    use hoist_synth::TensorSpec;
    let (table, _) = open_checkpoint(dir).unwrap();
    let mut specs = Vec::new();
    let mut data = Vec::new();
    for t in &table.tensors {
        assert_eq!(t.dtype, DType::F32, "{}", t.name);
        let file = std::fs::read(&table.files[t.file].path).unwrap();
        let bytes = &file[t.offset as usize..(t.offset + t.len) as usize];
        let bf16: Vec<u8> = bytes
            .chunks_exact(4)
            .flat_map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                half::bf16::from_f32(v).to_le_bytes()
            })
            .collect();
        specs.push(TensorSpec {
            name: t.name.clone(),
            dtype: DType::BF16,
            shape: t.shape.clone(),
        });
        data.push(bf16);
    }
    hoist_synth::write_safetensors(
        &out.join("model.safetensors"),
        &specs,
        &[("format", "pt")],
        |i, offset, buf| {
            let at = offset as usize;
            buf.copy_from_slice(&data[i][at..at + buf.len()]);
        },
    )
    .unwrap();
    std::fs::copy(dir.join("config.json"), out.join("config.json")).unwrap();
}

#[test]
fn bf16_moe_models_match_the_cpu_reference() {
    if !gpu_or_skip("bf16_moe_models_match_the_cpu_reference") {
        return;
    }
    // bf16 weights: activations rounded to bf16 between the GEMMs, against the f32 reference on
    // the same (bf16) weights, row by row: the rows' mean within the bf16 tolerance
    // (2e-2), none far off (a token whose router has a near tie may take another expert under
    // bf16 rounding, as transformers in bf16 may), and the same arg-max wherever the reference's
    // top-2 margin is clear. The dense Qwen3 beside them: its q/k norms make the tiny fixtures'
    // bf16 rows ~1e-2 off with or without experts (measured on the H200).
    for name in ["mixtral", "qwen2_moe", "qwen3_moe", "qwen3"] {
        let tmp = tempfile::tempdir().unwrap();
        bf16_copy(&fixtures().join(name), tmp.path());
        let cpu = hoist_runtime::cpu::CpuModel::load(tmp.path()).unwrap();
        let gpu = GpuModel::load(tmp.path(), &options()).unwrap();
        let prompt: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 250).collect();
        let mut cache = cpu.new_cache(prompt.len() + 8).unwrap();
        let mut s = gpu.session(prompt.len() + 8).unwrap();
        let mut want = cpu.forward(&prompt, &mut cache).unwrap();
        let mut got = s.forward(&prompt, true).unwrap();
        // Then decode steps, each fed the reference's greedy token.
        let v = gpu.config().vocab_size;
        for _ in 0..8 {
            let next = argmax(&want[want.len() - v..]);
            want.extend(cpu.forward(&[next], &mut cache).unwrap());
            got.extend(s.forward(&[next], true).unwrap());
        }
        let rows: Vec<f32> = got
            .chunks(v)
            .zip(want.chunks(v))
            .map(|(g, w)| rel_error(g, w))
            .collect();
        let mean = rows.iter().sum::<f32>() / rows.len() as f32;
        let worst = rows.iter().fold(0f32, |m, &e| m.max(e));
        eprintln!(
            "{name} bf16: row errors mean {mean:.2e}, worst {worst:.2e}; rows over 1e-2: {:?}",
            rows.iter()
                .enumerate()
                .filter(|(_, &e)| e > 1e-2)
                .map(|(i, e)| format!("{i}:{e:.1e}"))
                .collect::<Vec<_>>()
        );
        assert!(mean <= 2e-2 && worst <= 0.1, "{name} bf16: {rows:?}");
        for (i, (g, w)) in got.chunks(v).zip(want.chunks(v)).enumerate() {
            let mut sorted = w.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] > 0.05 * sorted[0].abs().max(1.0) {
                assert_eq!(argmax(g), argmax(w), "{name} bf16: row {i}'s arg-max");
            }
        }
    }
}

#[test]
fn gguf_moe_models_match_transformers() {
    if !gpu_or_skip("gguf_moe_models_match_transformers") {
        return;
    }
    // Stacked expert tensors (each expert a byte range of `ffn_*_exps`), as llama.cpp writes
    // them (tests/fixtures/make_gguf_moe.py): f32 against transformers' logits of the same
    // model; Q8_0 experts (with llama.cpp's F16 fallback for rows that are not whole blocks)
    // against transformers on the dequantized weights, f16 activations.
    let g = fixtures().join("gguf");
    for (file, reference, tolerance) in [
        ("mixtral-f32.gguf", g.join("mixtral-f32.ref"), 1e-4),
        ("qwen2_moe-f32.gguf", fixtures().join("qwen2_moe"), 1e-4),
        ("qwen3_moe-f32.gguf", fixtures().join("qwen3_moe"), 1e-4),
        ("qwen2_moe-q8_0.gguf", g.join("qwen2_moe-q8_0.ref"), 5e-3),
    ] {
        for (split, batched) in [(false, true), (true, true), (false, false)] {
            check_with(
                &g.join(file),
                &reference.join("reference.json"),
                &reference.join("logits.f32"),
                tolerance,
                split,
                &moe_options(batched),
            );
        }
    }
}

#[test]
fn moe_prefill_with_one_expert_taking_every_token() {
    if !gpu_or_skip("moe_prefill_with_one_expert_taking_every_token") {
        return;
    }
    // One token repeated: the first layer routes every position alike, so its k experts hold
    // every token, more than a batched block holds: they run on their own rows beside the
    // blocks. Against the CPU reference and the one-expert-at-a-time prefill.
    for name in ["mixtral", "qwen2_moe", "qwen3_moe"] {
        let dir = fixtures().join(name);
        let prompt = vec![7u32; 48];
        let cpu = hoist_runtime::cpu::CpuModel::load(&dir).unwrap();
        let mut cache = cpu.new_cache(prompt.len()).unwrap();
        let want = cpu.forward(&prompt, &mut cache).unwrap();
        for batched in [true, false] {
            let gpu = GpuModel::load(&dir, &moe_options(batched)).unwrap();
            let mut s = gpu.session(prompt.len()).unwrap();
            let got = s.forward(&prompt, true).unwrap();
            let err = rel_error(&got, &want);
            eprintln!("{name}, one token repeated, batched {batched}: {err:.2e}");
            assert!(err <= 1e-4, "{name} (batched {batched}): {err}");
        }
    }
}

/// `--parallel`'s batched decode: sequences at different positions, with caches of different
/// sizes, decoding together get the logits each gets alone, within the products' rounding
/// (cuBLAS sums in another order than the GEMV kernels; the batched tiled Q4_0 GEMV in the
/// same). A sequence leaves the batch midway and goes on alone; the others go on together.
/// Sparse models too (each row through its own experts), and streamed layers.
#[test]
fn batched_decode_matches_each_sequence_alone() {
    if !gpu_or_skip("batched_decode_matches_each_sequence_alone") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    bf16_copy(&fixtures().join("llama"), tmp.path());
    let g = fixtures().join("gguf");
    // (model, tolerance of each row; bf16: of the rows' mean, as bf16 rounding amplifies).
    let plain = options();
    // Every layer streamed through one slot from pinned memory (the batched step captured with
    // its copies), and the same with hybrid layers (alone, decode computes their feed-forward on
    // the host; a batch streams them whole): the resident rows' tolerance.
    let mut streamed = options();
    streamed.placement = Placement::uniform(Residency::Streamed { slots: 1 });
    let mut hybrid = streamed.clone();
    hybrid.tuning.host_ffn = hoist_runtime::gpu::HostFfn::Layers(usize::MAX);
    let llama = fixtures().join("llama");
    // (model, options, tolerance of each row; bf16: of the rows' mean, as bf16 rounding
    // amplifies).
    let cases = [
        (llama.clone(), &plain, 1e-4),
        (fixtures().join("mistral"), &plain, 1e-4),
        (fixtures().join("qwen2"), &plain, 1e-4),
        (fixtures().join("qwen3"), &plain, 1e-4),
        (g.join("qwen3-q4_0.gguf"), &plain, 1e-3),
        (g.join("llama-q8_0.gguf"), &plain, 1e-3),
        (fixtures().join("qwen2_moe"), &plain, 1e-4),
        (fixtures().join("qwen3_moe"), &plain, 1e-4),
        (tmp.path().to_path_buf(), &plain, 2e-2),
        (llama.clone(), &streamed, 1e-4),
        (llama, &hybrid, 1e-4),
    ];
    let (count, steps, leaves_at) = (5, 6, 3);
    for (model, opts, tolerance) in cases {
        let name = format!("{} ({:?})", model.display(), opts.placement);
        let bf16 = tolerance == 2e-2;
        let m = GpuModel::load(&model, opts).unwrap();
        let vocab = m.config().vocab_size;
        let prompts: Vec<Vec<u32>> = (0..count)
            .map(|i| {
                (0..3 + 5 * i)
                    .map(|j| ((j * 7 + i * 13 + 1) % vocab) as u32)
                    .collect()
            })
            .collect();
        // Caches of different sizes, the smallest just long enough.
        let context = |i: usize| prompts[i].len() + steps + 16 * i;
        // Alone: each sequence's greedy tokens and the logits after each.
        let mut fed = Vec::new();
        let mut want = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut s = m.session(context(i)).unwrap();
            let mut l = s.forward(p, false).unwrap();
            let (mut tokens, mut rows) = (Vec::new(), Vec::new());
            for _ in 0..steps {
                tokens.push(argmax(&l));
                l = s.forward(&[*tokens.last().unwrap()], false).unwrap();
                rows.push(l.clone());
            }
            fed.push(tokens);
            want.push(rows);
        }
        // Together.
        let mut sessions: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut s = m.session(context(i)).unwrap();
                s.forward(p, false).unwrap();
                s
            })
            .collect();
        let mut errors = Vec::new();
        for step in 0..steps {
            let first = if step < leaves_at { 0 } else { 1 };
            if first == 1 {
                let (s, t) = (&mut sessions[0], fed[0][step]);
                let got = GpuSession::next_logits_batch(&mut [s], &[t]).unwrap();
                errors.push(rel_error(&got[0], &want[0][step]));
            }
            let tokens: Vec<u32> = fed[first..].iter().map(|f| f[step]).collect();
            let mut batch: Vec<&mut GpuSession<'_>> = sessions[first..].iter_mut().collect();
            let on = opts.tuning.batch_decode;
            assert_eq!(GpuSession::batchable(&batch), on, "{name}: batched");
            let got = GpuSession::next_logits_batch(&mut batch, &tokens).unwrap();
            for (i, row) in got.iter().enumerate() {
                let e = rel_error(row, &want[first + i][step]);
                errors.push(e);
                assert!(
                    bf16 && e <= 0.1 || e <= tolerance,
                    "{name}: sequence {}, step {step}: {e} > {tolerance}",
                    first + i
                );
            }
        }
        let mean = errors.iter().sum::<f32>() / errors.len() as f32;
        let worst = errors.iter().fold(0f32, |m, &e| m.max(e));
        eprintln!("{name}: batched decode, row errors mean {mean:.2e}, worst {worst:.2e}");
        assert!(mean <= tolerance, "{name}: mean {mean}");
        for (i, s) in sessions.iter().enumerate() {
            assert_eq!(s.len(), prompts[i].len() + steps, "{name}: sequence {i}");
        }
        // A full cache anywhere in the batch: a clear error before any work.
        let mut full = m.session(1).unwrap();
        full.forward(&[1], false).unwrap();
        let mut batch = vec![&mut sessions[1], &mut full];
        let err = GpuSession::next_logits_batch(&mut batch, &[1, 1]).unwrap_err();
        assert!(err.to_string().contains("context full"), "{name}: {err}");
        assert_eq!(sessions[1].len(), prompts[1].len() + steps, "{name}");
    }
}
