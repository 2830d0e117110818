//! GGUF files whose tensors have different types, as llama.cpp's `llama-quantize` makes them
//! (Q4_K_M: Q4_K with Q6_K for some tensors and f32 norms; Q4_0 with a Q6_K output; Q8_0 with
//! f16 norms): the CPU reference loads each tensor in its own type and gives exactly the logits
//! of the same model stored as f32; a type nothing reads is one error naming the tensor; the GPU
//! runs a mixed file with every tensor in its own type.

use std::path::{Path, PathBuf};

use hoist_format::{GgmlType, TensorTable};
use hoist_runtime::cpu::CpuModel;
use hoist_runtime::gpu::{GpuError, GpuModel, GpuOptions};
use hoist_runtime::weights::WeightError;
use hoist_runtime::{quant, ModelConfig, RuntimeError};
use hoist_synth::gguf::{write_gguf, GgufTensor, GgufValue};

const VOCAB: u64 = 64;
const HIDDEN: u64 = 256;
const FFN: u64 = 512;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const LAYERS: u64 = 2;
const KV_DIM: u64 = HIDDEN / HEADS * KV_HEADS;

fn metadata() -> Vec<(String, GgufValue)> {
    [
        ("general.architecture", GgufValue::String("llama".into())),
        ("llama.embedding_length", GgufValue::U32(HIDDEN as u32)),
        ("llama.block_count", GgufValue::U32(LAYERS as u32)),
        ("llama.feed_forward_length", GgufValue::U32(FFN as u32)),
        ("llama.attention.head_count", GgufValue::U32(HEADS as u32)),
        (
            "llama.attention.head_count_kv",
            GgufValue::U32(KV_HEADS as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("llama.context_length", GgufValue::U32(256)),
        ("llama.vocab_size", GgufValue::U32(VOCAB as u32)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Every tensor of the tiny Llama: (name, shape, is a norm).
fn layout() -> Vec<(String, Vec<u64>, bool)> {
    let mut t = vec![
        ("token_embd.weight".to_string(), vec![VOCAB, HIDDEN], false),
        ("output_norm.weight".into(), vec![HIDDEN], true),
        ("output.weight".into(), vec![VOCAB, HIDDEN], false),
    ];
    for n in 0..LAYERS {
        for (suffix, shape, norm) in [
            ("attn_norm", vec![HIDDEN], true),
            ("attn_q", vec![HIDDEN, HIDDEN], false),
            ("attn_k", vec![KV_DIM, HIDDEN], false),
            ("attn_v", vec![KV_DIM, HIDDEN], false),
            ("attn_output", vec![HIDDEN, HIDDEN], false),
            ("ffn_norm", vec![HIDDEN], true),
            ("ffn_gate", vec![FFN, HIDDEN], false),
            ("ffn_up", vec![FFN, HIDDEN], false),
            ("ffn_down", vec![HIDDEN, FFN], false),
        ] {
            t.push((format!("blk.{n}.{suffix}.weight"), shape, norm));
        }
    }
    t
}

fn ty(name: &str) -> GgmlType {
    GgmlType::from_name(name).unwrap_or_else(|| panic!("no ggml type {name}"))
}

/// The f16 fields of each block type (byte offset, value): scales sized so that weights come
/// out around ±0.05, and offsets (`m`, `dmin`) about as large.
fn scale_fields(t: &str) -> Vec<(usize, f32)> {
    match t {
        "Q4_0" => vec![(0, 0.05 / 8.0)],
        "Q4_1" => vec![(0, 0.1 / 15.0), (2, -0.05)],
        "Q5_0" => vec![(0, 0.05 / 16.0)],
        "Q5_1" => vec![(0, 0.1 / 31.0), (2, -0.05)],
        "Q8_0" => vec![(0, 0.05 / 127.0)],
        "Q2_K" => vec![(80, 0.1 / 45.0), (82, 0.05 / 15.0)],
        "Q3_K" => vec![(108, 0.05 / 128.0)],
        "Q4_K" => vec![(0, 0.1 / 945.0), (2, 0.05 / 63.0)],
        "Q5_K" => vec![(0, 0.1 / 1953.0), (2, 0.05 / 63.0)],
        "Q6_K" => vec![(208, 0.05 / 4096.0)],
        "IQ4_NL" => vec![(0, 0.05 / 127.0)],
        "IQ4_XS" => vec![(0, 0.05 / 4064.0)],
        other => panic!("no scale fields for {other}"),
    }
}

/// Bytes of `elems` values of type `t`: random values for the plain types (norms near 1),
/// random blocks with sane scales for the quantized ones.
fn tensor_bytes(t: &str, elems: u64, norm: bool, seed: u64) -> Vec<u8> {
    let values = || -> Vec<f32> {
        let mut raw = vec![0u8; elems as usize * 4];
        hoist_synth::fill_random(&mut raw, 16, seed, 0);
        raw.chunks_exact(4)
            .map(|c| {
                let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32 / u32::MAX as f32;
                if norm {
                    0.5 + u
                } else {
                    (u - 0.5) * 0.1
                }
            })
            .collect()
    };
    match t {
        "F32" => values().iter().flat_map(|v| v.to_le_bytes()).collect(),
        "F16" => values()
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        "BF16" => values()
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => {
            let (block_elems, block_bytes) = ty(t).block().unwrap();
            let mut bytes = vec![0u8; (elems / block_elems * block_bytes) as usize];
            hoist_synth::fill_random(&mut bytes, 16, seed, 0);
            for block in bytes.chunks_exact_mut(block_bytes as usize) {
                for (at, v) in scale_fields(t) {
                    block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
                }
            }
            bytes
        }
    }
}

/// A tensor to write: name, shape, ggml type id, data.
type Tensor = (String, Vec<u64>, u32, Vec<u8>);

/// Writes `tensors` as the tiny Llama's GGUF file `dir/file`; returns its path.
fn write_model(dir: &Path, file: &str, tensors: &[Tensor]) -> PathBuf {
    let specs: Vec<GgufTensor<'_>> = tensors
        .iter()
        .map(|(name, shape, ggml_type, data)| GgufTensor {
            name,
            shape,
            ggml_type: *ggml_type,
            data,
        })
        .collect();
    let path = dir.join(file);
    write_gguf(&path, &metadata(), &specs, 32).unwrap();
    path
}

/// Writes the tiny Llama with each tensor in the type `type_of(name, is_norm)` gives, and the
/// same model with every tensor in F32 holding the dequantized values. Returns both paths.
fn write_pair(dir: &Path, type_of: impl Fn(&str, bool) -> &'static str) -> (PathBuf, PathBuf) {
    let mut mixed = Vec::new();
    let mut reference = Vec::new();
    for (i, (name, shape, norm)) in layout().into_iter().enumerate() {
        let t = type_of(&name, norm);
        let elems: u64 = shape.iter().product();
        let bytes = tensor_bytes(t, elems, norm, i as u64);
        let f32s = quant::dequantize(ty(t), &bytes, elems as usize)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let f32_bytes: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        mixed.push((name.clone(), shape.clone(), ty(t).0, bytes));
        reference.push((name, shape, GgmlType::F32.0, f32_bytes));
    }
    (
        write_model(dir, "mixed.gguf", &mixed),
        write_model(dir, "f32.gguf", &reference),
    )
}

const PROMPT: [u32; 7] = [1, 5, 9, 33, 2, 60, 17];

fn logits(path: &Path) -> Vec<f32> {
    let model = CpuModel::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut cache = model.new_cache(PROMPT.len()).unwrap();
    model.forward(&PROMPT, &mut cache).unwrap()
}

/// Loads both files of a pair and checks that their logits are the same bits (both run the
/// same f32 code on the same values) and not degenerate.
fn check_mix(label: &str, type_of: impl Fn(&str, bool) -> &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let (mixed, reference) = write_pair(dir.path(), type_of);
    let (got, want) = (logits(&mixed), logits(&reference));
    assert_eq!(got.len(), PROMPT.len() * VOCAB as usize, "{label}");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{label}: logit {i} (position {}, token {}): mixed {g}, f32 {w}",
            i / VOCAB as usize,
            i % VOCAB as usize
        );
    }
    let (lo, hi) = got.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| {
        assert!(v.is_finite(), "{label}: {v}");
        (lo.min(v), hi.max(v))
    });
    assert!(
        hi - lo > 1e-3,
        "{label}: logits all near {lo}: the model is degenerate"
    );
}

/// Why the GPU refuses the model at `path`; it must refuse (before opening a device).
fn gpu_refusal(path: &Path) -> RuntimeError {
    let table = TensorTable::open(path).unwrap();
    let config = ModelConfig::from_gguf(&table).unwrap();
    GpuModel::from_table(&table, config, &GpuOptions::default())
        .err()
        .expect("refused")
}

fn is_one_of(name: &str, suffixes: &[&str]) -> bool {
    suffixes.iter().any(|s| name.ends_with(s))
}

#[test]
fn q4_k_m_mix_matches_its_f32_twin() {
    // llama-quantize's Q4_K_M: Q6_K for the output, attn_v and ffn_down, Q4_K elsewhere.
    check_mix("Q4_K_M", |name, norm| match () {
        _ if norm => "F32",
        _ if name == "output.weight" => "Q6_K",
        _ if is_one_of(name, &["attn_v.weight", "ffn_down.weight"]) => "Q6_K",
        _ => "Q4_K",
    });
}

#[test]
fn q4_0_with_a_q6_k_output_matches_its_f32_twin() {
    check_mix("Q4_0", |name, norm| match () {
        _ if norm => "F32",
        _ if name == "output.weight" => "Q6_K",
        _ => "Q4_0",
    });
}

#[test]
fn q8_0_with_f16_norms_matches_its_f32_twin() {
    check_mix("Q8_0", |_, norm| if norm { "F16" } else { "Q8_0" });
}

#[test]
fn every_cpu_type_in_one_file_matches_its_f32_twin() {
    const MATRICES: [&str; 15] = [
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL",
        "IQ4_XS", "BF16", "F16", "F32",
    ];
    const NORMS: [&str; 3] = ["F32", "F16", "BF16"];
    // The n-th matrix (norm) of the layout takes the n-th type, round robin.
    let (mut matrices, mut norms) = (0, 0);
    let types: Vec<(String, &'static str)> = layout()
        .into_iter()
        .map(|(name, _, norm)| {
            let (list, n): (&[&'static str], &mut usize) = if norm {
                (&NORMS, &mut norms)
            } else {
                (&MATRICES, &mut matrices)
            };
            *n += 1;
            (name, list[(*n - 1) % list.len()])
        })
        .collect();
    for t in quant::QUANTIZED {
        assert!(
            types.iter().any(|(_, used)| *used == t.name()),
            "{} is not in the mix",
            t.name()
        );
    }
    check_mix("every type", |name, _| {
        types
            .iter()
            .find(|(n, _)| n == name)
            .map_or("F32", |(_, t)| *t)
    });
}

#[test]
fn a_type_nothing_reads_is_one_error_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    // IQ2_XXS (random blocks) in the last layer's down projection; Q4_K elsewhere.
    let iq2 = GgmlType::from_name("IQ2_XXS").unwrap();
    let mut tensors = Vec::new();
    for (i, (name, shape, norm)) in layout().into_iter().enumerate() {
        let elems: u64 = shape.iter().product();
        let (t, bytes) = if name == "blk.1.ffn_down.weight" {
            let (be, bb) = iq2.block().unwrap();
            (iq2, vec![0x5a; (elems / be * bb) as usize])
        } else {
            let t = if norm { "F32" } else { "Q4_K" };
            (ty(t), tensor_bytes(t, elems, norm, i as u64))
        };
        tensors.push((name, shape, t.0, bytes));
    }
    let path = write_model(dir.path(), "iq2.gguf", &tensors);

    // Refused while resolving the weights, before anything is loaded.
    let e = CpuModel::load(&path).unwrap_err();
    let RuntimeError::Weights(WeightError::Dtype { name, dtype, .. }) = &e else {
        panic!("expected a dtype error, got {e:?}");
    };
    assert_eq!(
        (name.as_str(), dtype.name()),
        ("blk.1.ffn_down.weight", "IQ2_XXS")
    );
    let msg = e.to_string();
    println!("CPU: {msg}");
    assert!(
        msg.contains("iq2.gguf") && msg.contains("IQ2_XXS") && msg.contains("Q6_K"),
        "{msg}"
    );
    assert_eq!(msg.lines().count(), 1, "{msg}");

    // The GPU path gives the same error (checked before any device is opened).
    let e = gpu_refusal(&path);
    assert!(
        matches!(&e, RuntimeError::Weights(WeightError::Dtype { name, .. }) if name == "blk.1.ffn_down.weight"),
        "{e:?}"
    );
}

#[test]
fn the_gpu_runs_mixed_files_in_their_own_types() {
    let dir = tempfile::tempdir().unwrap();
    let (mixed, reference) = write_pair(dir.path(), |name, norm| match () {
        _ if norm => "F32",
        _ if name == "output.weight" => "Q6_K",
        _ if name.ends_with("attn_q.weight") => "Q4_K",
        _ => "Q4_0",
    });
    let table = TensorTable::open(&mixed).unwrap();
    let config = ModelConfig::from_gguf(&table).unwrap();
    let loaded = GpuModel::from_table(&table, config, &GpuOptions::default());
    if let Err(why) = hoist_runtime::cuda_available() {
        // The types pass the GPU's check: what stops the load is the missing GPU.
        let e = loaded.err().expect("no GPU here");
        assert!(
            !matches!(
                e,
                RuntimeError::Gpu(GpuError::Unsupported(_)) | RuntimeError::Weights(_)
            ),
            "a mixed file is refused for its types: {e}"
        );
        println!("skipped the GPU half: {why}");
        return;
    }
    let model = loaded.unwrap_or_else(|e| panic!("{}: {e}", mixed.display()));
    // Every tensor went onto the GPU as it is in the file: nothing was converted on the host.
    let file_bytes: u64 = table.tensors.iter().map(|t| t.len).sum();
    assert_eq!(
        model.stats().weight_bytes,
        file_bytes,
        "bytes loaded onto the GPU"
    );
    let mut session = model.session(PROMPT.len()).unwrap();
    let got = session.forward(&PROMPT, true).unwrap();
    let want = logits(&reference);
    assert_eq!(got.len(), want.len());
    // f16 weights and activations against the f32 reference: within a few percent of the
    // logits' range.
    let (lo, hi) = want
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 0.03 * (hi - lo),
        "largest difference {worst} against a range of {}",
        hi - lo
    );
}
