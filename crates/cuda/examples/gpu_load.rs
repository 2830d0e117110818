//! Loads a checkpoint onto a GPU and prints one JSON object (bytes, seconds, GB/s, methods,
//! path, GPU memory, peak host RSS growth, optional byte-exact verification).
//!
//! `gpu_load PATH [--device N] [--path auto|ring|cufile] [--backend auto|uring|pread|mmap]
//!  [--ring-mib N] [--chunk-mib N] [--threads N] [--qd N] [--uring-threads N] [--streams N]
//!  [--pinned mmap-register|host-alloc] [--dest regions|per-tensor] [--no-fixed] [--verify]
//!  [--hash] [--filter GLOB]...`
//!
//! A stand-in for `hoist load --device cuda:N` until the CLI is wired to this crate.

use hoist_cuda::{DestLayout, GpuConfig, GpuPath, PinnedAlloc};
use hoist_io::{Backend, PlanConfig};

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("gpu_load: {msg}");
    std::process::exit(1);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut gpu = GpuConfig::default();
    let mut engine = hoist_cuda::recommended_engine_config();
    let mut plan = PlanConfig {
        chunk_bytes: hoist_cuda::DEFAULT_GPU_CHUNK_BYTES,
        ..PlanConfig::default()
    };
    let (mut verify, mut hash) = (false, false);
    let mut filters = Vec::new();
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| fail(format!("{a} needs a value")))
        };
        let num = |s: String| {
            s.parse::<usize>()
                .unwrap_or_else(|_| fail(format!("{s}: not a number")))
        };
        match a.as_str() {
            "--device" => gpu.ordinal = num(val().trim_start_matches("cuda:").to_string()),
            "--path" => {
                gpu.path = GpuPath::from_name(&val())
                    .unwrap_or_else(|| fail("--path auto|ring|cufile|mapped"))
            }
            "--backend" => {
                let v = val();
                engine.backend = Backend::ALL
                    .into_iter()
                    .find(|b| b.name() == v)
                    .unwrap_or_else(|| fail("--backend auto|uring|pread|mmap"))
            }
            "--ring-mib" => gpu.ring_bytes = num(val()) << 20,
            "--chunk-mib" => plan.chunk_bytes = (num(val()) as u64) << 20,
            "--threads" => engine.threads = num(val()),
            "--qd" => engine.queue_depth = num(val()),
            "--uring-threads" => engine.uring_threads = num(val()),
            "--streams" => gpu.streams = num(val()),
            "--pinned" => {
                gpu.pinned = match val().as_str() {
                    "mmap-register" => PinnedAlloc::MmapRegister,
                    "host-alloc" => PinnedAlloc::HostAlloc,
                    _ => fail("--pinned mmap-register|host-alloc"),
                }
            }
            "--dest" => {
                gpu.dest = match val().as_str() {
                    "regions" => DestLayout::Regions,
                    "per-tensor" => DestLayout::PerTensor,
                    "packed" => DestLayout::Packed,
                    _ => fail("--dest regions|per-tensor"),
                }
            }
            "--no-fixed" => gpu.fixed_buffers = false,
            "--verify" => verify = true,
            "--hash" => hash = true,
            "--filter" => filters.push(val()),
            _ if path.is_none() && !a.starts_with("--") => path = Some(a),
            _ => fail(format!("unknown argument {a}")),
        }
    }
    let path = path.unwrap_or_else(|| fail("usage: gpu_load PATH [options]"));
    let info = hoist_cuda::probe(gpu.ordinal).unwrap_or_else(|e| fail(e));
    let table = hoist_format::TensorTable::open(&path).unwrap_or_else(|e| fail(e));
    let selection = table.select(&filters).unwrap_or_else(|e| fail(e));
    let rss_before_kib = status_kib("VmRSS:");
    // Reset the peak-RSS mark so VmHWM below is the peak of the load alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (tensors, report) = hoist_cuda::load_to_gpu(&table, &selection, plan, &engine, &gpu, None)
        .unwrap_or_else(|e| fail(e));
    let hwm_kib = status_kib("VmHWM:");
    let mut out = serde_json::json!({
        "path": path,
        "device": info.name,
        "tensors": tensors.tensors().len(),
        "bytes": report.tensor_bytes,
        "seconds": report.seconds,
        "gbps": report.gbps(),
        "gpu_path": report.path,
        "methods": report.io.methods_summary(),
        "rss_before_mib": rss_before_kib as f64 / 1024.0,
        "peak_rss_mib": hwm_kib as f64 / 1024.0,
        "rss_growth_mib": hwm_kib.saturating_sub(rss_before_kib) as f64 / 1024.0,
        "report": report,
    });
    if verify {
        let t = std::time::Instant::now();
        let v = tensors
            .verify_against_files(&table, 16)
            .unwrap_or_else(|e| fail(e));
        out["verify"] = serde_json::json!({ "exact": v.mismatches.is_empty(), "tensors": v.tensors, "bytes": v.bytes, "mismatches": v.mismatches, "seconds": t.elapsed().as_secs_f64() });
    }
    if hash {
        let h = tensors.xxh3(16).unwrap_or_else(|e| fail(e));
        let m: serde_json::Map<String, serde_json::Value> = tensors
            .tensors()
            .iter()
            .zip(h)
            .map(|(t, h)| (t.info.name.clone(), format!("{h:016x}").into()))
            .collect();
        out["xxh3"] = m.into();
    }
    println!("{out}");
    if out["verify"]["exact"] == false {
        std::process::exit(3);
    }
}
