use super::traces::{cyclic, drifting, uniform, zipf};
use super::*;
use proptest::prelude::*;

fn rate(policy: Policy, experts: usize, capacity: usize, trace: &[Vec<u32>]) -> f64 {
    let mut c = ExpertCache::new(experts, capacity, policy).unwrap();
    simulate(&mut c, trace, None).hit_rate()
}

const LFU: Policy = Policy::LfuDecay { half_life: 64.0 };

#[test]
fn a_cache_of_every_expert_misses_each_once() {
    let trace = uniform(3, 16, 4, 500);
    for policy in [Policy::Lru, LFU] {
        let mut c = ExpertCache::new(16, 16, policy).unwrap();
        let s = simulate(&mut c, &trace, None);
        assert_eq!(s.accesses - s.hits, 16, "{policy:?}");
    }
}

#[test]
fn lru_misses_everything_on_a_cycle_that_does_not_fit() {
    // 8 experts one at a time through 7 slots: LRU always evicts the next one needed.
    let trace = cyclic(8, 1, 800);
    assert_eq!(rate(Policy::Lru, 8, 7, &trace), 0.0);
    // A perfect look-ahead hides every miss from the step itself.
    let mut c = ExpertCache::new(8, 7, Policy::Lru).unwrap();
    let s = simulate(&mut c, &trace, Some(&trace));
    assert_eq!(s.hit_rate(), 1.0);
    assert_eq!(s.prefetched, 800);
}

#[test]
fn frequency_wins_where_popularity_is_skewed_and_stable() {
    // 128 experts, 8 a token, a quarter of them cached (issue 18's streaming budget).
    let trace = zipf(11, 128, 8, 4000, 1.1);
    let (lru, lfu) = (
        rate(Policy::Lru, 128, 32, &trace),
        rate(LFU, 128, 32, &trace),
    );
    assert!(lfu > lru + 0.02, "LFU {lfu:.3} against LRU {lru:.3}");
    // Uniform routing: nothing to learn; both near the capacity's share.
    let trace = uniform(12, 128, 8, 4000);
    for r in [
        rate(Policy::Lru, 128, 32, &trace),
        rate(LFU, 128, 32, &trace),
    ] {
        assert!((r - 0.25).abs() < 0.05, "uniform: {r:.3}");
    }
}

#[test]
fn decay_lets_frequency_follow_drift() {
    let trace = drifting(5, 128, 8, 6000, 1.1, 500);
    let slow = rate(Policy::LfuDecay { half_life: 1e6 }, 128, 32, &trace);
    let fast = rate(LFU, 128, 32, &trace);
    assert!(
        fast > slow,
        "decaying {fast:.3} against nearly plain LFU {slow:.3}"
    );
}

#[test]
fn impossible_caches_are_errors() {
    assert!(ExpertCache::new(8, 0, Policy::Lru).is_err());
    let e = ExpertCache::new(8, 9, Policy::Lru).unwrap_err();
    assert!(e.to_string().contains("1 to 8"), "{e}");
    for h in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        assert!(ExpertCache::new(8, 4, Policy::LfuDecay { half_life: h }).is_err());
    }
}

proptest! {
    /// Whatever the trace and policy: each step's experts end up held, in the slot reported; a
    /// hit's slot already held it; no expert sits in two slots.
    #[test]
    fn every_needed_expert_is_held_where_reported(
        experts in 2usize..40, cap_frac in 0.2f64..1.0, k_frac in 0.1f64..1.0,
        lfu in any::<bool>(), seed in any::<u64>(), steps in 1usize..60, predict in any::<bool>()
    ) {
        let capacity = ((experts as f64 * cap_frac) as usize).clamp(1, experts);
        let k = ((capacity as f64 * k_frac) as usize).clamp(1, capacity);
        let policy = if lfu { Policy::LfuDecay { half_life: 8.0 } } else { Policy::Lru };
        let mut c = ExpertCache::new(experts, capacity, policy).unwrap();
        let trace = zipf(seed, experts, k, steps, 1.0);
        let mut out = Vec::new();
        for (i, step) in trace.iter().enumerate() {
            if predict {
                if let Some(next) = trace.get(i + 1) {
                    c.prefetch(next);
                }
            }
            let before: Vec<Option<u32>> = (0..capacity).map(|s| c.expert_in(s)).collect();
            c.access(step, &mut out);
            prop_assert_eq!(out.len(), step.len());
            for (&e, a) in step.iter().zip(&out) {
                let slot = match *a {
                    Access::Hit { slot } => {
                        prop_assert_eq!(before[slot], Some(e));
                        slot
                    }
                    Access::Miss { slot } => slot,
                };
                prop_assert_eq!(c.expert_in(slot), Some(e));
            }
            let mut held: Vec<u32> = (0..capacity).filter_map(|s| c.expert_in(s)).collect();
            held.sort();
            let n = held.len();
            held.dedup();
            prop_assert_eq!(held.len(), n);
        }
    }
}
