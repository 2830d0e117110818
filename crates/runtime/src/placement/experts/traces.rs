//! Synthetic routing traces for comparing cache policies: each step's `k` distinct experts of
//! `experts`, drawn from a distribution that stands for a kind of router. Random routers (the
//! benchmarks' random models) route nearly uniformly; trained ones favour some experts, and
//! which ones drifts with the text.

use crate::sampler::Rng;

/// `steps` steps of `k` distinct experts drawn from `weights` (relative, one per expert).
fn draw(rng: &mut Rng, weights: &[f64], k: usize, steps: usize) -> Vec<Vec<u32>> {
    assert!(k <= weights.len(), "{k} of {} experts", weights.len());
    let mut trace = Vec::with_capacity(steps);
    for _ in 0..steps {
        let mut chosen: Vec<u32> = Vec::with_capacity(k);
        while chosen.len() < k {
            let total: f64 = weights
                .iter()
                .enumerate()
                .filter(|(e, _)| !chosen.contains(&(*e as u32)))
                .map(|(_, w)| w)
                .sum();
            let mut x = rng.next_f64() * total;
            for (e, w) in weights.iter().enumerate() {
                if chosen.contains(&(e as u32)) {
                    continue;
                }
                x -= w;
                if x <= 0.0 {
                    chosen.push(e as u32);
                    break;
                }
            }
        }
        trace.push(chosen);
    }
    trace
}

/// Every expert equally likely (a random router).
pub fn uniform(seed: u64, experts: usize, k: usize, steps: usize) -> Vec<Vec<u32>> {
    draw(&mut Rng::new(seed), &vec![1.0; experts], k, steps)
}

/// Expert popularity by Zipf's law of exponent `s`, the popular ones scattered over the ids.
pub fn zipf(seed: u64, experts: usize, k: usize, steps: usize, s: f64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    let weights = zipf_weights(&mut rng, experts, s);
    draw(&mut rng, &weights, k, steps)
}

/// Zipf popularity whose ranking is shuffled anew every `period` steps (the text changing
/// topic).
pub fn drifting(
    seed: u64,
    experts: usize,
    k: usize,
    steps: usize,
    s: f64,
    period: usize,
) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    let mut trace = Vec::with_capacity(steps);
    while trace.len() < steps {
        let weights = zipf_weights(&mut rng, experts, s);
        let n = period.min(steps - trace.len());
        trace.extend(draw(&mut rng, &weights, k, n));
    }
    trace
}

/// The experts in turn, `k` a step, round and round (LRU's worst case when they do not fit).
pub fn cyclic(experts: usize, k: usize, steps: usize) -> Vec<Vec<u32>> {
    (0..steps)
        .map(|i| (0..k).map(|j| ((i * k + j) % experts) as u32).collect())
        .collect()
}

/// Zipf weights `1 / rank^s`, ranks shuffled over the experts.
fn zipf_weights(rng: &mut Rng, experts: usize, s: f64) -> Vec<f64> {
    let mut ids: Vec<usize> = (0..experts).collect();
    for i in (1..experts).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    let mut w = vec![0.0; experts];
    for (rank, &e) in ids.iter().enumerate() {
        w[e] = 1.0 / ((rank + 1) as f64).powf(s);
    }
    w
}
