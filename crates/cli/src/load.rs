//! `hoist load`: load a checkpoint into memory and report the rate, the methods that ran and
//! the memory it took.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hoist_format::TensorTable;
use xxhash_rust::xxh3::xxh3_64;

use crate::util::{gbps, human_bytes, peak_rss_bytes, Progress};
use crate::{BackendArg, Device, Tuning};

/// Arguments of `hoist load`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A .safetensors or .gguf file, a model.safetensors.index.json, or a directory.
    path: PathBuf,
    /// Where the tensors go: cpu, or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// How to read.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Load only tensors whose names match this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    filter: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Print each tensor's xxh3-64 of the loaded bytes.
    #[arg(long)]
    checksum: bool,
    /// Evict the checkpoint's files from the page cache first (a cold load).
    #[arg(long)]
    cold: bool,
    #[command(flatten)]
    tuning: Tuning,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let table =
        TensorTable::open(&a.path).with_context(|| format!("cannot load {}", a.path.display()))?;
    let selection = table.select(&a.filter)?;
    let parse_seconds = t0.elapsed().as_secs_f64();
    if a.cold {
        for f in &table.files {
            let e = hoist_io::residency::evict(&f.path)
                .with_context(|| format!("cannot evict {}", f.path.display()))?;
            if e.resident_after_bytes > 0 {
                eprintln!("warning: {} still has {} in the page cache after eviction; this load is not fully cold", f.path.display(), human_bytes(e.resident_after_bytes));
            }
        }
    }
    let plan_config = a.tuning.plan_config()?;
    let progress = Arc::new(AtomicU64::new(0));
    let mut engine_config = a.tuning.engine_config(a.backend)?;
    engine_config.progress = Some(progress.clone());
    let bytes: u64 = selection.iter().map(|&i| table.tensors[i].len).sum();

    match a.device {
        Device::Cpu => {}
        Device::Cuda(n) => anyhow::bail!("cuda:{n}: GPU loading is not available in this build"),
    }
    let bar = Progress::start(progress.clone(), bytes, "loading", !a.json);
    let t1 = Instant::now();
    let (tensors, report) =
        hoist_io::load_host(&table, &selection, plan_config, &engine_config, None)
            .with_context(|| format!("loading {} failed", a.path.display()))?;
    let seconds = t1.elapsed().as_secs_f64();
    drop(bar);
    let peak_rss = peak_rss_bytes();
    let checksums: Vec<(String, String)> = if a.checksum {
        tensors
            .iter()
            .map(|t| (t.info.name.clone(), format!("{:016x}", xxh3_64(t.bytes()))))
            .collect()
    } else {
        Vec::new()
    };

    if a.json {
        let methods: serde_json::Map<String, serde_json::Value> = report
            .bytes_by_method
            .iter()
            .map(|(m, b)| (m.to_string(), (*b).into()))
            .collect();
        let mut doc = serde_json::json!({
            "path": a.path,
            "device": "cpu",
            "bytes": bytes,
            "read_bytes": report.read_bytes,
            "tensors": tensors.len(),
            "seconds": seconds,
            "parse_seconds": parse_seconds,
            "gbps": gbps(bytes, seconds),
            "backend": hoist_io::Backend::from(a.backend).name(),
            "methods": methods,
            "notes": report.notes,
            "peak_rss_bytes": peak_rss,
            "cold": a.cold,
        });
        if a.checksum {
            doc["checksums"] = checksums
                .iter()
                .map(|(n, c)| (n.clone(), serde_json::Value::from(c.clone())))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(());
    }
    for (n, c) in &checksums {
        println!("{c}  {n}");
    }
    println!(
        "loaded {} tensors, {} in {:.3} s: {:.2} GB/s (header parse {:.1} ms)",
        tensors.len(),
        human_bytes(bytes),
        seconds,
        gbps(bytes, seconds),
        parse_seconds * 1e3
    );
    println!(
        "backend {}: {}",
        hoist_io::Backend::from(a.backend).name(),
        report.methods_summary()
    );
    for n in &report.notes {
        println!("note: {n}");
    }
    if let Some(p) = peak_rss {
        println!(
            "peak RSS {} (tensors {})",
            human_bytes(p),
            human_bytes(bytes)
        );
    }
    Ok(())
}
