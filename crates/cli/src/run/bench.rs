//! `hoist run MODEL --benchmark`: prefill and decode speed against the limits of the same GPU,
//! measured in the same run (`hoist_runtime::gpu::bench`, run by [`hoist_engine::benchmark`]).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use hoist_engine::{Device, Weights};
use hoist_runtime::gpu::bench::SpeedReport;
use hoist_runtime::gpu::LoadStats;

use super::{cli_error, gpu_load_details, Settings, DEFAULT_BENCH_PROMPT_TOKENS};
use crate::util::{human_bytes, Progress};

/// Loads the model onto `cuda:ordinal` and measures it. The load's details are in the report
/// (the `load` row), so `--verbose` adds nothing to it.
pub fn run(s: &Settings, ordinal: usize) -> anyhow::Result<()> {
    let a = &s.args;
    let device = Device::Cuda(ordinal);
    eprintln!("loading {} onto {device} …", a.model.display());
    let weights = Weights::open(&a.model, device).map_err(cli_error)?;
    let counter = Arc::new(AtomicU64::new(0));
    let mut bar = Some(Progress::start(
        counter.clone(),
        weights.weight_bytes(),
        "loading",
        true,
    ));
    let prompt_tokens = a.prompt_tokens.unwrap_or(DEFAULT_BENCH_PROMPT_TOKENS);
    let bench = hoist_engine::benchmark(
        weights,
        ordinal,
        a.memory.placement(),
        (Some(counter), a.memory.cache()),
        (prompt_tokens, s.max_tokens),
        &mut || {
            // Cleared before the next line or an error is printed.
            bar = None;
            eprintln!(
                "measuring a prefill of {prompt_tokens} tokens and {} decode steps …",
                s.max_tokens
            );
        },
    )
    .map_err(cli_error)?;
    let device = a.device.to_string();
    if a.json {
        let mut doc = serde_json::to_value(&bench.report)?;
        doc["model"] = serde_json::to_value(&a.model)?;
        doc["device"] = device.into();
        doc["load"] = serde_json::to_value(&bench.load)?;
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(());
    }
    for (k, v) in table(
        &a.model.display().to_string(),
        &device,
        bench.load_seconds,
        &bench.load,
        &bench.report,
    ) {
        println!("{k:<9} {v}");
    }
    Ok(())
}

/// The human report: `(row, text)`.
fn table(
    model: &str,
    device: &str,
    load_seconds: f64,
    load: &LoadStats,
    r: &SpeedReport,
) -> Vec<(&'static str, String)> {
    let pct = |f: f64| format!("{:.1}%", f * 100.0);
    let mut rows = vec![
        ("model", model.to_string()),
        ("device", format!("{device} ({})", load.device)),
        (
            "load",
            format!("{load_seconds:.2} s: {}", gpu_load_details(load)),
        ),
        (
            "decode",
            format!(
                "{:.1} tok/s over {} greedy tokens: {} of the {:.1} tok/s the memory bandwidth \
                 allows ({:.0} GB/s device copy, {} read per token)",
                r.decode_tokens_per_s,
                r.decode_tokens,
                pct(r.decode_fraction_of_bound),
                r.decode_bound_tokens_per_s,
                r.d2d_gbps,
                human_bytes(r.weight_bytes_per_token)
            ),
        ),
        (
            "sampling",
            format!(
                "{:.1} tok/s ({}) with each step's logits on the host, as sampling at \
                 temperature > 0 decodes{}",
                r.decode_host_tokens_per_s,
                pct(r.decode_host_fraction_of_bound),
                if r.decode_paths_agree {
                    ""
                } else {
                    "; WARNING: the two paths chose different tokens"
                }
            ),
        ),
        (
            "prefill",
            format!(
                "{} tokens in {:.4} s ({:.0} tok/s): {} of cuBLAS alone on the same products \
                 ({:.4} s, {:.1} TFLOP/s)",
                r.prefill_tokens,
                r.prefill_seconds,
                r.prefill_tokens_per_s,
                pct(r.prefill_fraction_of_cublas),
                r.cublas_gemm_seconds,
                r.gemm_flops / r.cublas_gemm_seconds.max(1e-12) / 1e12
            ),
        ),
    ];
    if let Some(st) = &r.streaming {
        let gbps = |g: Option<f64>| g.map_or("n/a".to_string(), |g| format!("{g:.1} GB/s"));
        rows.push(("placement", load.placement.summary()));
        rows.push((
            "streaming",
            format!(
                "decode {} of its {:.2} tok/s bound (compute {:.2} ms a token{}, {} copied at {}{}); prefill {} of its {:.0} tok/s bound",
                pct(st.decode_fraction_of_bound),
                st.decode_bound_tokens_per_s,
                st.decode_compute_seconds * 1e3,
                match st.host_ffn_layers {
                    0 => String::new(),
                    n => format!(" with {n} layers' FFN on the CPU at {}", gbps(st.host_gbps)),
                },
                human_bytes(st.decode_copied_bytes_per_token),
                gbps(st.h2d_gbps),
                match st.file_layers {
                    0 => String::new(),
                    n => format!(
                        ", {} of {n} layers read from the file at {}",
                        human_bytes(st.file_bytes_per_token),
                        gbps(st.file_gbps)
                    ),
                },
                pct(st.prefill_fraction_of_bound),
                st.prefill_bound_tokens_per_s,
            ),
        ));
    }
    rows
}
