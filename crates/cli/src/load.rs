//! `hoist load`: load a checkpoint into host or GPU memory and report the rate, the methods
//! that ran and the memory it took.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use hoist_format::TensorTable;
use hoist_io::shard::{Shard, ShardConfig, ShardPlan};
use hoist_io::LoadReport;
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
    /// Print each tensor's xxh3-64 of the loaded bytes (GPU tensors are copied back to hash).
    #[arg(long)]
    checksum: bool,
    /// Evict the checkpoint's files from the page cache first (a cold load).
    #[arg(long)]
    cold: bool,
    /// Load only this tensor-parallel rank's slice of each tensor: split dimension DIM
    /// (0: rows, 1: columns; outermost first) into WORLD equal parts and keep part RANK, e.g.
    /// 0:1/4. Every loaded tensor is sliced unless --shard-only names which; one that cannot
    /// be split evenly (or, for GGUF quantized types, on block boundaries) is an error. CPU only.
    #[arg(long, value_name = "DIM:RANK/WORLD")]
    shard: Option<Shard>,
    /// With --shard: slice only tensors whose names match this glob (repeatable); the others
    /// load whole (replicated on every rank).
    #[arg(long, value_name = "GLOB", requires = "shard")]
    shard_only: Vec<String>,
    #[command(flatten)]
    tuning: Tuning,
}

/// What one load did, whatever the device.
pub struct Outcome {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Bytes of the loaded tensors.
    pub bytes: u64,
    /// Tensors loaded.
    pub tensors: usize,
    /// Seconds from planning to the last byte in place.
    pub seconds: f64,
    /// The engine's report.
    pub io: LoadReport,
    /// `(name, xxh3 hex)` when asked for.
    pub checksums: Vec<(String, String)>,
    /// Device-specific fields for JSON, and their text lines.
    pub extra: Vec<(&'static str, serde_json::Value, String)>,
}

/// Runs `hoist load`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let table =
        TensorTable::open(&a.path).with_context(|| format!("cannot load {}", a.path.display()))?;
    let selection = table.select(&a.filter)?;
    let plan_config = a.tuning.plan_config(&a.device)?;
    // Planned before any I/O, so that a bad split is reported before the load starts.
    let shard_plan = match (a.shard, &a.device) {
        (None, _) => None,
        (Some(_), Device::Cuda(_)) => anyhow::bail!(
            "--shard is not yet supported for GPU loads (--device {}); load the shard with --device cpu",
            a.device
        ),
        (Some(shard), Device::Cpu) => {
            let only = match a.shard_only.is_empty() {
                true => None,
                false => Some(table.select(&a.shard_only)?),
            };
            let config = ShardConfig::for_chunk_bytes(plan_config.chunk_bytes);
            Some(
                ShardPlan::new(&table, &selection, shard, only.as_deref(), config)
                    .with_context(|| format!("cannot shard {}", a.path.display()))?,
            )
        }
    };
    let parse_seconds = t0.elapsed().as_secs_f64();
    if a.cold {
        evict(&table, true)?;
    }
    let progress = Arc::new(AtomicU64::new(0));
    let mut engine_config = a.tuning.engine_config(a.backend, &a.device)?;
    engine_config.progress = Some(progress.clone());
    let bytes: u64 = match &shard_plan {
        Some(p) => p.loaded_bytes(&table),
        None => selection.iter().map(|&i| table.tensors[i].len).sum(),
    };

    let bar = Progress::start(progress.clone(), bytes, "loading", !a.json);
    let outcome = match a.device {
        Device::Cpu => {
            let t1 = Instant::now();
            let (tensors, io) = match &shard_plan {
                Some(p) => hoist_io::load_host_sharded(&table, p, plan_config, &engine_config),
                None => hoist_io::load_host(&table, &selection, plan_config, &engine_config, None),
            }
            .with_context(|| format!("loading {} failed", a.path.display()))?;
            let seconds = t1.elapsed().as_secs_f64();
            drop(bar);
            let checksums = match a.checksum {
                true => tensors
                    .iter()
                    .map(|t| (t.info.name.clone(), format!("{:016x}", xxh3_64(t.bytes()))))
                    .collect(),
                false => Vec::new(),
            };
            let extra = match &shard_plan {
                Some(p) => vec![shard_summary(&table, p, &io)],
                None => Vec::new(),
            };
            Outcome {
                device: "cpu".into(),
                bytes,
                tensors: tensors.len(),
                seconds,
                io,
                checksums,
                extra,
            }
        }
        Device::Cuda(n) => {
            let gpu_config = a.tuning.gpu_config(n)?;
            let o = crate::gpu::load(
                &table,
                &selection,
                plan_config,
                &engine_config,
                &gpu_config,
                a.checksum,
            )
            .with_context(|| format!("loading {} onto {} failed", a.path.display(), a.device));
            drop(bar);
            o?
        }
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    print(&mut out, &a, &outcome, parse_seconds, &table.skipped)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// The `shard` entry of a sharded load's report: what was sliced, and the bytes read against
/// the whole tensors'.
fn shard_summary(
    table: &TensorTable,
    p: &ShardPlan,
    io: &LoadReport,
) -> (&'static str, serde_json::Value, String) {
    let (loaded, full) = (p.loaded_bytes(table), p.full_bytes(table));
    let json = serde_json::json!({
        "spec": p.shard.to_string(),
        "dim": p.shard.dim,
        "rank": p.shard.rank,
        "world": p.shard.world,
        "sharded_tensors": p.sharded(),
        "whole_tensors": p.parts.len() - p.sharded(),
        "bytes": loaded,
        "full_bytes": full,
    });
    let line = format!(
        "shard {}: {} of {} tensors sliced; {} of {} whole, read {}",
        p.shard,
        p.sharded(),
        p.parts.len(),
        human_bytes(loaded),
        human_bytes(full),
        human_bytes(io.read_bytes)
    );
    ("shard", json, line)
}

/// Evicts every file of `table` from the page cache; says so when some stayed (returns whether).
pub fn evict(table: &TensorTable, warn: bool) -> anyhow::Result<bool> {
    let mut stayed = false;
    for f in &table.files {
        let e = hoist_io::residency::evict(&f.path)
            .with_context(|| format!("cannot evict {}", f.path.display()))?;
        if e.resident_after_bytes > 0 {
            stayed = true;
            if warn {
                eprintln!(
                    "warning: {} still has {} in the page cache after eviction; this load is not fully cold",
                    f.path.display(),
                    human_bytes(e.resident_after_bytes)
                );
            }
        }
    }
    Ok(stayed)
}

fn print(
    out: &mut impl Write,
    a: &Args,
    o: &Outcome,
    parse_seconds: f64,
    skipped: &[hoist_format::SkippedTensor],
) -> io::Result<()> {
    let peak_rss = peak_rss_bytes();
    let backend = hoist_io::Backend::from(a.backend).name();
    if a.json {
        let methods: serde_json::Map<String, serde_json::Value> =
            o.io.bytes_by_method
                .iter()
                .map(|(m, b)| (m.to_string(), (*b).into()))
                .collect();
        let mut doc = serde_json::json!({
            "path": a.path,
            "device": o.device,
            "bytes": o.bytes,
            "read_bytes": o.io.read_bytes,
            "tensors": o.tensors,
            "seconds": o.seconds,
            "parse_seconds": parse_seconds,
            "gbps": gbps(o.bytes, o.seconds),
            "backend": backend,
            "methods": methods,
            "notes": o.io.notes,
            "cache": o.io.cache,
            "peak_rss_bytes": peak_rss,
            "cold": a.cold,
            "skipped": skipped,
        });
        for (k, v, _) in &o.extra {
            doc[*k] = v.clone();
        }
        if a.checksum {
            let sums: serde_json::Map<String, serde_json::Value> = o
                .checksums
                .iter()
                .map(|(n, c)| (n.clone(), c.clone().into()))
                .collect();
            doc["checksums"] = sums.into();
        }
        serde_json::to_writer(&mut *out, &doc)?;
        return writeln!(out);
    }
    for (n, c) in &o.checksums {
        writeln!(out, "{c}  {n}")?;
    }
    writeln!(
        out,
        "loaded {} tensors, {} to {} in {:.3} s: {:.2} GB/s (header parse {:.1} ms)",
        o.tensors,
        human_bytes(o.bytes),
        o.device,
        o.seconds,
        gbps(o.bytes, o.seconds),
        parse_seconds * 1e3
    )?;
    writeln!(out, "backend {backend}: {}", o.io.methods_summary())?;
    writeln!(out, "cache: {}", o.io.cache.summary())?;
    for (_, _, line) in &o.extra {
        if !line.is_empty() {
            writeln!(out, "{line}")?;
        }
    }
    for sk in skipped {
        writeln!(out, "skipped: tensor '{}' ({})", sk.name, sk.reason)?;
    }
    for n in &o.io.notes {
        writeln!(out, "note: {n}")?;
    }
    if let Some(p) = peak_rss {
        writeln!(
            out,
            "peak host RSS {} (tensors {})",
            human_bytes(p),
            human_bytes(o.bytes)
        )?;
    }
    Ok(())
}
