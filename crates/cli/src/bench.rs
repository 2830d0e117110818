//! `hoist bench`: every hoist backend against baseline loaders on one checkpoint, warm or cold,
//! each run verified against the others by a checksum of all loaded bytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use hoist_format::TensorTable;
use hoist_io::Backend;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::baselines;
use crate::util::{gbps, human_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes};
use crate::{Device, Tuning};

/// Arguments of `hoist bench`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint to benchmark; without one, a synthetic checkpoint is made (see --synthetic).
    path: Option<PathBuf>,
    /// Synthetic layout: tiny, small, qwen3-0.6b, mixtral-mini, llama-7b.
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    synthetic: Option<String>,
    /// Directory for the synthetic checkpoint [default: hoist-synthetic-NAME in the temp
    /// directory]. It must be new, empty, or one hoist made (marked by .hoist-synthetic.json);
    /// hoist refuses any other, so it never writes over a real checkpoint. A finished one of the
    /// same layout is reused.
    #[arg(long, value_name = "DIR", conflicts_with = "path")]
    dir: Option<PathBuf>,
    /// Remove the synthetic checkpoint afterwards: only the files hoist wrote, then the
    /// directory if hoist created it and nothing else is in it.
    #[arg(long, conflicts_with = "path")]
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
    /// Where the tensors go: cpu, or cuda:N (hoist's GPU paths; the baselines still load to
    /// host memory, as a reference; bench/gpu compares with the peers on the GPU).
    #[arg(long, default_value = "cpu")]
    device: Device,
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
    Gpu(usize, hoist_cuda::GpuPath, Backend),
}

impl Loader {
    fn name(self) -> String {
        match self {
            Loader::PerTensorMmap => "baseline: per-tensor mmap+memcpy".into(),
            Loader::Sequential => "baseline: sequential read".into(),
            Loader::Hoist(b) => format!("hoist {}", b.name()),
            Loader::Gpu(n, p, b) => {
                format!("hoist {} {} {}", Device::Cuda(n), p.name(), b.name())
            }
        }
    }
    fn is_baseline(self) -> bool {
        !matches!(self, Loader::Hoist(_))
    }
}

/// One timed load: seconds, `(tensor name, xxh3 of its bytes)` for each tensor, and the
/// methods that ran.
pub type Timed = (f64, Vec<(String, u64)>, String);

struct Run {
    seconds: f64,
    checksum: u64,
    methods: String,
    rss_growth_bytes: Option<u64>,
}

/// Runs `hoist bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    // Everything that can be refused is, before a synthetic checkpoint costs any writing.
    let target = validate(&a)?;
    if let Device::Cuda(n) = a.device {
        hoist_cuda::probe(n).with_context(|| format!("{} is not usable", a.device))?;
    }
    let (root, synthetic_dir, label) = match target {
        Target::Given(p) => {
            let label = p.display().to_string();
            (p, None, label)
        }
        Target::Synthetic(preset, dir) => {
            let (root, label) = make_synthetic(&a, &preset, &dir)?;
            (root, Some(dir), label)
        }
    };
    let table =
        TensorTable::open(&root).with_context(|| format!("cannot benchmark {}", root.display()))?;
    let selection: Vec<usize> = (0..table.tensors.len()).collect();
    let bytes = table.total_bytes();
    let mut loaders = vec![Loader::PerTensorMmap, Loader::Sequential];
    match a.device {
        Device::Cpu => loaders.extend(
            [Backend::Mmap, Backend::Pread, Backend::Uring, Backend::Auto].map(Loader::Hoist),
        ),
        Device::Cuda(n) => {
            use hoist_cuda::GpuPath;
            loaders.extend(
                [Backend::Mmap, Backend::Pread, Backend::Uring]
                    .map(|b| Loader::Gpu(n, GpuPath::Ring, b)),
            );
            loaders.extend([
                Loader::Gpu(n, GpuPath::Cufile, Backend::Auto),
                Loader::Gpu(n, GpuPath::Auto, Backend::Auto),
            ]);
        }
    }
    if !a.json {
        println!(
            "checkpoint: {label}: {} tensors, {} in {} file(s)",
            table.tensors.len(),
            human_bytes(bytes),
            table.files.len()
        );
        println!(
            "device: {}; mode: {}; {} run(s) per loader, median; {} cores",
            match a.device {
                Device::Cpu => "host memory".to_string(),
                Device::Cuda(_) => format!("{} (baselines to host memory)", a.device),
            },
            if a.cold {
                "cold (files evicted from the page cache before each run)"
            } else {
                "warm (page cache primed)"
            },
            a.repeat,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
    }
    let bar = crate::util::steps_bar((loaders.len() * a.repeat) as u64);
    if !a.cold {
        bar.set_message("priming the page cache");
        baselines::sequential_read(&table).context("priming the page cache")?;
    }
    let mut results = Vec::new();
    let mut reference: Option<u64> = None;
    let mut eviction_failed = false;
    let mut skipped: Vec<(String, String)> = Vec::new();
    'loaders: for loader in loaders {
        let mut runs = Vec::with_capacity(a.repeat);
        bar.set_message(loader.name());
        for _ in 0..a.repeat {
            if a.cold {
                eviction_failed |= crate::load::evict(&table, false)?;
            }
            let r = match run_once(loader, &table, &selection, &a.tuning) {
                Ok(r) => r,
                // cuFile depends on the machine's storage stack; where it is refused, the row
                // says why and the rest of the benchmark goes on.
                Err(e) if matches!(loader, Loader::Gpu(_, hoist_cuda::GpuPath::Cufile, _)) => {
                    skipped.push((loader.name(), format!("{e:#}")));
                    continue 'loaders;
                }
                Err(e) => return Err(e),
            };
            match reference {
                None => reference = Some(r.checksum),
                Some(c) if c != r.checksum => bail!("{} loaded different bytes than the first loader (checksum {:016x} vs {c:016x})", loader.name(), r.checksum),
                Some(_) => {}
            }
            runs.push(r);
            bar.inc(1);
        }
        results.push((loader, runs));
    }
    bar.finish_and_clear();
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
            "skipped": skipped.iter().map(|(l, why)| serde_json::json!({"loader": l, "reason": why})).collect::<Vec<_>>(),
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
        for (l, why) in &skipped {
            println!("{l:<34} skipped: {why}");
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
            let removal = hoist_synth::remove_checkpoint(&dir)
                .context("cannot remove the synthetic checkpoint")?;
            if !a.json && !removal.kept.is_empty() {
                println!(
                    "removed the synthetic checkpoint from {}; left what hoist did not write: {}",
                    dir.display(),
                    removal.kept.join(", ")
                );
            }
        } else if !a.json {
            println!(
                "synthetic checkpoint kept at {} for the next run (--clean removes it)",
                dir.display()
            );
        }
    }
    Ok(())
}

/// What `bench` measures.
enum Target {
    /// The checkpoint given.
    Given(PathBuf),
    /// A synthetic checkpoint of this preset, made or reused in this directory.
    Synthetic(hoist_synth::Preset, PathBuf),
}

/// Checks every argument; returns what to measure.
fn validate(a: &Args) -> anyhow::Result<Target> {
    anyhow::ensure!(
        (1..=MAX_REPEAT).contains(&a.repeat),
        "--repeat must be between 1 and {MAX_REPEAT}"
    );
    a.tuning.plan_config(&a.device)?;
    a.tuning.engine_config(crate::BackendArg::Auto, &a.device)?;
    if let Device::Cuda(n) = a.device {
        a.tuning.gpu_config(n)?;
    }
    if let Some(p) = &a.path {
        return Ok(Target::Given(p.clone()));
    }
    let name = a.synthetic.as_deref().unwrap_or(DEFAULT_SYNTHETIC);
    let preset = hoist_synth::preset(name).with_context(|| {
        let names: Vec<&str> = hoist_synth::presets().iter().map(|p| p.name).collect();
        format!(
            "no synthetic layout '{name}'; choose one of {}",
            names.join(", ")
        )
    })?;
    // Not hoist-synth-NAME, the directories of earlier versions, whose marker listed no files:
    // hoist would refuse to reuse them.
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("hoist-synthetic-{name}")));
    Ok(Target::Synthetic(preset, dir))
}

/// Writes (or reuses) the synthetic checkpoint in `dir`; returns the path to open and a label.
fn make_synthetic(
    a: &Args,
    preset: &hoist_synth::Preset,
    dir: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let name = preset.name;
    let size = preset.spec.total_bytes();
    if !a.json {
        eprintln!(
            "synthetic checkpoint '{name}' ({}) in {}",
            human_bytes(size),
            dir.display()
        );
    }
    let t = Instant::now();
    let bar = crate::util::bytes_bar(size, &format!("writing synthetic checkpoint '{name}'"));
    let prepared =
        hoist_synth::prepare_checkpoint(&preset.spec, dir, SYNTH_SEED, &mut |b| bar.inc(b))
            .with_context(|| format!("synthetic checkpoint '{name}'"))?;
    bar.finish_and_clear();
    if !a.json {
        if prepared.reused {
            eprintln!("reusing it (written by an earlier run)");
        } else {
            eprintln!(
                "wrote it in {:.1} s (later runs reuse it)",
                t.elapsed().as_secs_f64()
            );
        }
    }
    Ok((
        prepared.root,
        format!("synthetic {name} ({})", preset.description),
    ))
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
    let hash_of = |name: &str, bytes: &[u8]| (name.to_string(), xxh3_64(bytes));
    let (seconds, named, methods): Timed = match loader {
        Loader::PerTensorMmap => {
            let tensors = baselines::per_tensor_mmap(table, selection)?;
            let seconds = t.elapsed().as_secs_f64();
            let named = selection
                .iter()
                .zip(&tensors)
                .map(|(&i, b)| hash_of(&table.tensors[i].name, b))
                .collect();
            (seconds, named, "mmap, 1 thread".into())
        }
        Loader::Sequential => {
            let files = baselines::sequential_read(table)?;
            let seconds = t.elapsed().as_secs_f64();
            let named = selection
                .iter()
                .map(|&i| {
                    let ti = &table.tensors[i];
                    hash_of(
                        &ti.name,
                        &files[ti.file][ti.offset as usize..ti.end() as usize],
                    )
                })
                .collect();
            (seconds, named, "read(), 1 thread".into())
        }
        Loader::Hoist(backend) => {
            let engine = tuning.engine_config(backend_arg(backend), &Device::Cpu)?;
            let (tensors, report) = hoist_io::load_host(
                table,
                selection,
                tuning.plan_config(&Device::Cpu)?,
                &engine,
                None,
            )?;
            let seconds = t.elapsed().as_secs_f64();
            let named = tensors
                .iter()
                .map(|t| hash_of(&t.info.name, t.bytes()))
                .collect();
            let methods = format!(
                "{}; cache {}",
                report.methods_summary(),
                report.cache.policy.name()
            );
            (seconds, named, methods)
        }
        Loader::Gpu(n, path, backend) => {
            let device = Device::Cuda(n);
            let engine = tuning.engine_config(backend_arg(backend), &device)?;
            let gpu = hoist_cuda::GpuConfig {
                path,
                ..tuning.gpu_config(n)?
            };
            crate::gpu::bench_once(
                table,
                selection,
                tuning.plan_config(&device)?,
                &engine,
                &gpu,
            )?
        }
    };
    let rss_growth_bytes = match (peak_ok, rss_before, peak_rss_bytes()) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    Ok(Run {
        seconds,
        checksum: digest(named),
        methods,
        rss_growth_bytes,
    })
}

fn backend_arg(b: Backend) -> crate::BackendArg {
    match b {
        Backend::Auto => crate::BackendArg::Auto,
        Backend::Uring => crate::BackendArg::Uring,
        Backend::Pread => crate::BackendArg::Pread,
        Backend::Mmap => crate::BackendArg::Mmap,
    }
}

/// One digest of every tensor's bytes, independent of the order loaders hand tensors back in.
fn digest(mut named: Vec<(String, u64)>) -> u64 {
    named.sort_unstable();
    let mut h = Xxh3::new();
    for (name, sum) in &named {
        h.update(name.as_bytes());
        h.update(&sum.to_le_bytes());
    }
    h.digest()
}
