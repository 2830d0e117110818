//! `hoist bench`: every hoist backend against baseline loaders on one checkpoint, warm or cold,
//! each run verified against the others by a checksum of all loaded bytes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use hoist_format::TensorTable;
use hoist_io::Backend;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::baselines;
use crate::util::{gbps, human_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes};
use crate::Tuning;

/// Arguments of `hoist bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint to benchmark; without one, a synthetic checkpoint is made (see --synthetic).
    path: Option<PathBuf>,
    /// Synthetic layout: tiny, small, qwen3-0.6b, mixtral-mini, llama-7b.
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    synthetic: Option<String>,
    /// Directory for the synthetic checkpoint (reused when it already holds the same one).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Delete the synthetic checkpoint afterwards.
    #[arg(long)]
    clean: bool,
    /// Evict the files from the page cache before every run.
    #[arg(long)]
    cold: bool,
    /// Runs per loader (the median is reported).
    #[arg(long, default_value_t = 3, value_name = "N")]
    repeat: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tuning: Tuning,
}

/// The default synthetic layout: big enough to measure, small enough for CI.
const DEFAULT_SYNTHETIC: &str = "small";
/// Seed of synthetic checkpoints made by `bench`.
const SYNTH_SEED: u64 = 0x5eed;
/// Most runs per loader accepted.
const MAX_REPEAT: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Loader {
    PerTensorMmap,
    Sequential,
    Hoist(Backend),
}

impl Loader {
    fn name(self) -> String {
        match self {
            Loader::PerTensorMmap => "baseline: per-tensor mmap+memcpy".into(),
            Loader::Sequential => "baseline: sequential read".into(),
            Loader::Hoist(b) => format!("hoist {}", b.name()),
        }
    }
    fn is_baseline(self) -> bool {
        !matches!(self, Loader::Hoist(_))
    }
}

struct Run {
    seconds: f64,
    checksum: u64,
    methods: String,
    rss_growth_bytes: Option<u64>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_REPEAT).contains(&a.repeat),
        "--repeat must be between 1 and {MAX_REPEAT}"
    );
    let (root, synthetic_dir, label) = checkpoint(&a)?;
    let table =
        TensorTable::open(&root).with_context(|| format!("cannot benchmark {}", root.display()))?;
    let selection: Vec<usize> = (0..table.tensors.len()).collect();
    let bytes = table.total_bytes();
    let loaders = [
        Loader::PerTensorMmap,
        Loader::Sequential,
        Loader::Hoist(Backend::Mmap),
        Loader::Hoist(Backend::Pread),
        Loader::Hoist(Backend::Uring),
        Loader::Hoist(Backend::Auto),
    ];
    if !a.json {
        println!(
            "checkpoint: {label}: {} tensors, {} in {} file(s)",
            table.tensors.len(),
            human_bytes(bytes),
            table.files.len()
        );
        println!(
            "mode: {}; {} run(s) per loader, median; {} cores",
            if a.cold {
                "cold (files evicted from the page cache before each run)"
            } else {
                "warm (page cache primed)"
            },
            a.repeat,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    if !a.cold {
        baselines::sequential_read(&table).context("priming the page cache")?;
    }
    let mut results = Vec::new();
    let mut reference: Option<u64> = None;
    let mut eviction_failed = false;
    for loader in loaders {
        let mut runs = Vec::with_capacity(a.repeat);
        for _ in 0..a.repeat {
            if a.cold {
                eviction_failed |= evict_all(&table)?;
            }
            let r = run_once(loader, &table, &selection, &a.tuning)?;
            match reference {
                None => reference = Some(r.checksum),
                Some(c) if c != r.checksum => bail!("{} loaded different bytes than the first loader (checksum {:016x} vs {c:016x})", loader.name(), r.checksum),
                Some(_) => {}
            }
            runs.push(r);
        }
        results.push((loader, runs));
    }
    let median = |runs: &[Run]| {
        let mut s: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let best_baseline = results
        .iter()
        .filter(|(l, _)| l.is_baseline())
        .map(|(_, r)| gbps(bytes, median(r)))
        .fold(0.0, f64::max);
    let mmap_baseline = gbps(bytes, median(&results[0].1));

    if a.json {
        let rows: Vec<_> = results
            .iter()
            .map(|(l, runs)| {
                let g = gbps(bytes, median(runs));
                serde_json::json!({
                    "loader": l.name(),
                    "gbps_median": g,
                    "seconds": runs.iter().map(|r| r.seconds).collect::<Vec<_>>(),
                    "vs_best_baseline": g / best_baseline,
                    "vs_per_tensor_mmap": g / mmap_baseline,
                    "methods": runs.last().map(|r| r.methods.clone()),
                    "peak_rss_growth_bytes": runs.iter().filter_map(|r| r.rss_growth_bytes).max(),
                })
            })
            .collect();
        let doc = serde_json::json!({
            "checkpoint": label,
            "path": root,
            "bytes": bytes,
            "tensors": table.tensors.len(),
            "files": table.files.len(),
            "cold": a.cold,
            "eviction_failed": eviction_failed,
            "repeat": a.repeat,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!();
        println!(
            "{:<34} {:>8} {:>10} {:>10} {:>12}  methods",
            "loader", "GB/s", "vs best", "vs mmap", "RSS growth"
        );
        println!(
            "{:<34} {:>8} {:>10} {:>10} {:>12}",
            "", "", "baseline", "baseline", ""
        );
        for (l, runs) in &results {
            let g = gbps(bytes, median(runs));
            let rss = runs
                .iter()
                .filter_map(|r| r.rss_growth_bytes)
                .max()
                .map_or("-".into(), human_bytes);
            let methods = runs.last().map_or(String::new(), |r| r.methods.clone());
            println!(
                "{:<34} {:>8.2} {:>9.2}x {:>9.2}x {:>12}  {methods}",
                l.name(),
                g,
                g / best_baseline,
                g / mmap_baseline,
                rss
            );
        }
        println!(
            "\nevery run loaded identical bytes (xxh3 {:016x})",
            reference.unwrap_or(0)
        );
        if eviction_failed {
            println!("warning: eviction from the page cache did not fully take (tmpfs?); cold figures are not cold");
        }
    }
    if let Some(dir) = synthetic_dir {
        if a.clean {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot remove {}", dir.display()))?;
        } else if !a.json {
            println!(
                "synthetic checkpoint kept at {} for the next run (--clean removes it)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// The checkpoint to measure: the path given, or a synthetic one (made or reused).
fn checkpoint(a: &Args) -> anyhow::Result<(PathBuf, Option<PathBuf>, String)> {
    if let Some(p) = &a.path {
        return Ok((p.clone(), None, p.display().to_string()));
    }
    let name = a.synthetic.as_deref().unwrap_or(DEFAULT_SYNTHETIC);
    let preset = hoist_synth::preset(name).with_context(|| {
        let names: Vec<&str> = hoist_synth::presets().iter().map(|p| p.name).collect();
        format!(
            "no synthetic layout '{name}'; choose one of {}",
            names.join(", ")
        )
    })?;
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("hoist-synth-{name}")));
    let size = preset.spec.total_bytes();
    if !a.json {
        eprintln!(
            "synthetic checkpoint '{name}' ({}) in {} (made once, then reused)",
            human_bytes(size),
            dir.display()
        );
    }
    let t = Instant::now();
    let root =
        hoist_synth::write_checkpoint(&preset.spec, &dir, SYNTH_SEED).with_context(|| {
            format!(
                "cannot write the synthetic checkpoint into {}",
                dir.display()
            )
        })?;
    if !a.json && t.elapsed().as_secs_f64() > 1.0 {
        eprintln!("wrote it in {:.1} s", t.elapsed().as_secs_f64());
    }
    Ok((
        root,
        Some(dir),
        format!("synthetic {name} ({})", preset.description),
    ))
}

/// Evicts every file; returns true if some bytes stayed cached.
fn evict_all(table: &TensorTable) -> anyhow::Result<bool> {
    let mut stayed = false;
    for f in &table.files {
        let e = hoist_io::residency::evict(&f.path)
            .with_context(|| format!("cannot evict {}", f.path.display()))?;
        stayed |= e.resident_after_bytes > 0;
    }
    Ok(stayed)
}

fn run_once(
    loader: Loader,
    table: &TensorTable,
    selection: &[usize],
    tuning: &Tuning,
) -> anyhow::Result<Run> {
    let rss_before = rss_bytes();
    let peak_ok = reset_peak_rss();
    let t = Instant::now();
    let mut h = Xxh3::new();
    let methods;
    let seconds;
    match loader {
        Loader::PerTensorMmap => {
            let tensors = baselines::per_tensor_mmap(table, selection)?;
            seconds = t.elapsed().as_secs_f64();
            tensors
                .iter()
                .for_each(|b| h.update(&xxh3_64(b).to_le_bytes()));
            methods = "mmap, 1 thread".to_string();
        }
        Loader::Sequential => {
            let files = baselines::sequential_read(table)?;
            seconds = t.elapsed().as_secs_f64();
            for &i in selection {
                let ti = &table.tensors[i];
                h.update(
                    &xxh3_64(&files[ti.file][ti.offset as usize..ti.end() as usize]).to_le_bytes(),
                );
            }
            methods = "read(), 1 thread".to_string();
        }
        Loader::Hoist(backend) => {
            let engine = tuning.engine_config(match backend {
                Backend::Auto => crate::BackendArg::Auto,
                Backend::Uring => crate::BackendArg::Uring,
                Backend::Pread => crate::BackendArg::Pread,
                Backend::Mmap => crate::BackendArg::Mmap,
            })?;
            let (tensors, report) =
                hoist_io::load_host(table, selection, tuning.plan_config()?, &engine, None)?;
            seconds = t.elapsed().as_secs_f64();
            tensors
                .iter()
                .for_each(|t| h.update(&xxh3_64(t.bytes()).to_le_bytes()));
            methods = report.methods_summary();
        }
    }
    let rss_growth_bytes = match (peak_ok, rss_before, peak_rss_bytes()) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    Ok(Run {
        seconds,
        checksum: h.digest(),
        methods,
        rss_growth_bytes,
    })
}
