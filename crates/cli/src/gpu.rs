//! The CLI's GPU side: `load --device cuda:N` and `bench --device cuda:N` through `hoist-cuda`.

use std::time::Instant;

use anyhow::Context;
use hoist_format::TensorTable;
use hoist_io::{EngineConfig, PlanConfig};

use crate::load::Outcome;
use crate::util::human_bytes;

/// Loads `selection` onto the GPU of `gpu`; with `checksum`, hashes every tensor's device bytes
/// (copied back, outside the timed load).
pub fn load(
    table: &TensorTable,
    selection: &[usize],
    plan: PlanConfig,
    engine: &EngineConfig,
    gpu: &hoist_cuda::GpuConfig,
    checksum: bool,
) -> anyhow::Result<Outcome> {
    let info = hoist_cuda::probe(gpu.ordinal)
        .with_context(|| format!("{} is not usable", crate::Device::Cuda(gpu.ordinal)))?;
    let (tensors, report) = hoist_cuda::load_to_gpu(table, selection, plan, engine, gpu, None)?;
    let checksums = if checksum {
        let threads = engine.threads.max(1);
        let sums = tensors.xxh3(threads)?;
        tensors
            .tensors()
            .iter()
            .zip(sums)
            .map(|(t, h)| (t.info.name.clone(), format!("{h:016x}")))
            .collect()
    } else {
        Vec::new()
    };
    let extra = vec![
        (
            "gpu",
            serde_json::json!(info.name),
            format!(
                "device {} ({} free of {})",
                info.name,
                human_bytes(info.free_bytes),
                human_bytes(info.total_bytes)
            ),
        ),
        (
            "gpu_path",
            serde_json::json!(report.path),
            format!("GPU path {}: {}", report.path, report.path_reason),
        ),
        (
            "gpu_used_bytes",
            serde_json::json!(report.gpu_used_bytes),
            format!(
                "GPU memory {} for {} (allocated {}, layout {}); ring {} pinned in {} slots",
                human_bytes(report.gpu_used_bytes),
                human_bytes(report.tensor_bytes),
                human_bytes(report.gpu_allocated_bytes),
                report.dest.name(),
                human_bytes(report.ring_bytes as u64),
                report.ring_slots
            ),
        ),
        (
            "setup_seconds",
            serde_json::json!(report.setup_seconds),
            String::new(),
        ),
        (
            "context_seconds",
            serde_json::json!(report.context_seconds),
            String::new(),
        ),
        ("gpu_report", serde_json::to_value(&report)?, String::new()),
    ];
    Ok(Outcome {
        device: crate::Device::Cuda(gpu.ordinal).to_string(),
        bytes: report.tensor_bytes,
        tensors: tensors.tensors().len(),
        seconds: report.seconds,
        io: report.io.clone(),
        checksums,
        extra,
    })
}

/// One timed GPU load for `bench`: seconds, an order-independent digest of every tensor's
/// device bytes (copied back after timing), and the methods summary.
pub fn bench_once(
    table: &TensorTable,
    selection: &[usize],
    plan: PlanConfig,
    engine: &EngineConfig,
    gpu: &hoist_cuda::GpuConfig,
) -> anyhow::Result<crate::bench::Timed> {
    let t = Instant::now();
    let (tensors, report) = hoist_cuda::load_to_gpu(table, selection, plan, engine, gpu, None)?;
    let seconds = t.elapsed().as_secs_f64();
    let sums = tensors.xxh3(engine.threads.max(1))?;
    let named = tensors
        .tensors()
        .iter()
        .zip(sums)
        .map(|(t, h)| (t.info.name.clone(), h))
        .collect();
    Ok((
        seconds,
        named,
        format!("{}: {}", report.path, report.io.methods_summary()),
    ))
}
