//! Paired comparison of the methods `auto` could take for cached chunks into host memory.
//!
//! `cargo run --release -p hoist-io --example host_route -- PATH [ROUNDS] [THREADS]` reads the checkpoint
//! once (warm), then runs ROUNDS rounds (default 30) of one warm host load per backend (`mmap`,
//! `pread`, `auto`) in one process, rotating the order each round so that no backend always runs
//! first, and prints each backend's GB/s (median, quartiles, range) and the per-round ratios.
//! `hoist bench` runs each loader's repeats back to back in a fixed order, so drifts of a shared
//! machine land on one loader; pairing within a round cancels most of them.

use std::error::Error;

use hoist_format::TensorTable;
use hoist_io::{load_host, Backend, EngineConfig, PlanConfig};

const BACKENDS: [Backend; 3] = [Backend::Mmap, Backend::Pread, Backend::Auto];

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: host_route PATH [ROUNDS] [THREADS] (a checkpoint file or directory)")?;
    let rounds: usize = match args.next() {
        Some(r) => r
            .parse()
            .map_err(|_| format!("ROUNDS '{r}' is not a count"))?,
        None => 30,
    };
    // Reader threads (default: the engine's, one per core): the route's winner may depend on it.
    let threads: usize = match args.next() {
        Some(t) => t
            .parse()
            .ok()
            .filter(|t| (1..=hoist_io::engine::MAX_THREADS).contains(t))
            .ok_or_else(|| {
                format!(
                    "THREADS '{t}' is not between 1 and {}",
                    hoist_io::engine::MAX_THREADS
                )
            })?,
        None => EngineConfig::default().threads,
    };
    if rounds == 0 {
        return Err("ROUNDS must be at least 1".into());
    }
    let table = TensorTable::open(&path)?;
    let all: Vec<usize> = (0..table.tensors.len()).collect();
    // Tensor bytes per second, as `hoist bench` counts.
    let bytes = table.total_bytes() as f64;
    for f in &table.files {
        std::fs::read(&f.path)?; // warm: every chunk is cached
    }
    let mut gbps: [Vec<f64>; 3] = Default::default();
    let mut auto_methods = String::new();
    for round in 0..rounds {
        for k in 0..BACKENDS.len() {
            let i = (round + k) % BACKENDS.len();
            let config = EngineConfig {
                backend: BACKENDS[i],
                threads,
                ..EngineConfig::default()
            };
            let start = std::time::Instant::now();
            let (tensors, report) = load_host(&table, &all, PlanConfig::default(), &config, None)?;
            let seconds = start.elapsed().as_secs_f64();
            // Freeing is part of every load's cost alike; keep it outside the timing.
            drop(tensors);
            gbps[i].push(bytes / seconds / 1e9);
            if BACKENDS[i] == Backend::Auto {
                auto_methods = report.methods_summary();
            }
        }
    }
    println!(
        "{}: {} bytes, {rounds} rounds, {} threads; auto read: {auto_methods}",
        path, bytes, threads
    );
    for (b, v) in BACKENDS.iter().zip(&gbps) {
        let s = summary(v);
        println!("{:6} GB/s {s}", b.name());
    }
    for (a, b) in [(1, 0), (1, 2)] {
        let ratios: Vec<f64> = gbps[a].iter().zip(&gbps[b]).map(|(x, y)| x / y).collect();
        let wins = ratios.iter().filter(|&&r| r > 1.0).count();
        println!(
            "{}/{} per round: {}; {} faster in {wins}/{rounds}",
            BACKENDS[a].name(),
            BACKENDS[b].name(),
            summary(&ratios),
            BACKENDS[a].name()
        );
    }
    Ok(())
}

/// `median M [q1 Q1, q3 Q3] min .. max` of `v` (not empty).
fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    format!(
        "median {:.3} [q1 {:.3}, q3 {:.3}] min {:.3} max {:.3}",
        s[n / 2],
        s[n / 4],
        s[3 * n / 4],
        s[0],
        s[n - 1]
    )
}
