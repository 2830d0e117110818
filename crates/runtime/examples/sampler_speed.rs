//! Host time per token of choosing from a step's logits: the arg-max (greedy) and the CLI's
//! default sampling (temperature 0.7, top-k 40, top-p 0.95, min-p 0.05), over random logits of
//! the common vocabulary sizes. The GPU waits for this on every sampled token.
//!
//! ```text
//! cargo run --release -p hoist-runtime --example sampler_speed
//! ```

use std::time::Instant;

use hoist_runtime::sampler::{argmax, Rng, Sampler, SamplingParams};

/// Timed calls per measurement.
const CALLS: u32 = 500;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let default = SamplingParams {
        temperature: 0.7,
        top_k: 40,
        top_p: 0.95,
        min_p: 0.05,
        ..SamplingParams::default()
    };
    println!("vocabulary  arg-max µs  default sampling µs");
    for vocab in [32_000usize, 128_256, 151_936] {
        let mut rng = Rng::new(vocab as u64);
        let logits: Vec<f32> = (0..vocab)
            .map(|_| rng.next_f64() as f32 * 20.0 - 10.0)
            .collect();
        let mut sink = 0u64;
        let t = Instant::now();
        for _ in 0..CALLS {
            sink += u64::from(argmax(std::hint::black_box(&logits)));
        }
        let argmax_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS);
        let mut sampler = Sampler::new(default)?;
        let t = Instant::now();
        for _ in 0..CALLS {
            sink += u64::from(sampler.sample(std::hint::black_box(&logits), &[]));
        }
        let sample_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS);
        println!("{vocab:>10}  {argmax_us:>10.1}  {sample_us:>19.1}");
        std::hint::black_box(sink);
    }
    Ok(())
}
