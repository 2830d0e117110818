//! Expert-cache policies on synthetic routing traces: the hit rate of LRU, LFU with decay, and
//! each with a look-ahead prefetch (a router applied one layer early: right for a fraction of
//! the experts), per trace kind and cache size, for issue 18's choice of a default.
//!
//!     cargo run --release -p hoist-runtime --example expert_cache [-- STEPS]
//!
//! Shape: Qwen3-30B-A3B's router (128 experts, 8 a token); caches of 12.5%, 25% and 50% of the
//! experts. Prints a Markdown table; deterministic (fixed seeds). No GPU, no timing.

use hoist_runtime::placement::experts::traces::{cyclic, drifting, uniform, zipf};
use hoist_runtime::placement::experts::{simulate, ExpertCache, Policy};
use hoist_runtime::sampler::Rng;

const EXPERTS: usize = 128;
const K: usize = 8;

/// A look-ahead that names each step's expert right with probability `accuracy`, else a random
/// one not in the step.
fn predictions(trace: &[Vec<u32>], accuracy: f64, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    trace
        .iter()
        .map(|step| {
            let mut p: Vec<u32> = Vec::with_capacity(step.len());
            for &e in step {
                let guess = if rng.next_f64() < accuracy {
                    e
                } else {
                    loop {
                        let g = (rng.next_u64() % EXPERTS as u64) as u32;
                        if !step.contains(&g) && !p.contains(&g) {
                            break g;
                        }
                    }
                };
                if !p.contains(&guess) {
                    p.push(guess);
                }
            }
            p
        })
        .collect()
}

fn main() {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8000);
    let traces = [
        ("uniform (random router)", uniform(1, EXPERTS, K, steps)),
        ("Zipf 0.8", zipf(2, EXPERTS, K, steps, 0.8)),
        ("Zipf 1.2", zipf(3, EXPERTS, K, steps, 1.2)),
        (
            "Zipf 1.2, drifting every 500",
            drifting(4, EXPERTS, K, steps, 1.2, 500),
        ),
        ("cyclic", cyclic(EXPERTS, K, steps)),
    ];
    let policies = [
        ("LRU", Policy::Lru),
        ("LFU, half-life 64", Policy::LfuDecay { half_life: 64.0 }),
        ("LFU, half-life 512", Policy::LfuDecay { half_life: 512.0 }),
    ];
    println!("| trace | cache | {} |", {
        let mut h: Vec<String> = Vec::new();
        for (name, _) in &policies {
            h.push(name.to_string());
            h.push(format!("{name} + look-ahead 70%"));
        }
        h.join(" | ")
    });
    println!("|{}", " --- |".repeat(2 + 2 * policies.len()));
    for (name, trace) in &traces {
        let guesses = predictions(trace, 0.7, 9);
        for capacity in [EXPERTS / 8, EXPERTS / 4, EXPERTS / 2] {
            let mut row = format!("| {name} | {capacity} of {EXPERTS} |");
            for (_, policy) in &policies {
                for ahead in [None, Some(guesses.as_slice())] {
                    let Ok(mut cache) = ExpertCache::new(EXPERTS, capacity, *policy) else {
                        unreachable!("capacities within 1..=experts");
                    };
                    let s = simulate(&mut cache, trace, ahead);
                    let per_step = s.fetched() as f64 / trace.len() as f64;
                    row += &format!(" {:.3} ({per_step:.1}/step) |", s.hit_rate());
                }
            }
            println!("{row}");
        }
    }
}
