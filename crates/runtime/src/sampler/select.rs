//! The two scans over a step's logits that the host makes for every sampled token: the arg-max
//! and the top-k candidates. The GPU waits for them: a vocabulary is 32k–152k logits, and the
//! plain loops (a compare chain the compiler cannot vectorize; every logit collected, then
//! partially sorted; kept in the tests below) took a sizable share of a decode step. Both
//! scans here work in blocks: a block's maximum first (independent lanes, which the compiler
//! vectorizes), then element-wise work only in the blocks that can change the result. The
//! results are the plain loops' exactly (the tests below compare them);
//! `examples/sampler_speed.rs` times them.

use std::cmp::Ordering;

/// Logits per block of the scans.
const BLOCK: usize = 256;
/// Independent maxima per block: the compiler turns the loop over them into vector compares.
const LANES: usize = 16;

/// The largest value of `block` by `>` (NaN skipped; -inf when there is none).
fn block_max(block: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = block.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in lanes.into_iter().chain(chunks.remainder().iter().copied()) {
        if v > m {
            m = v;
        }
    }
    m
}

/// The index of the largest logit, the lowest index on ties; NaNs are never chosen, and 0 is
/// returned when no logit exceeds -inf.
pub fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        let m = block_max(block);
        // Strictly greater: an earlier block keeps a tie; inside the block, the first equal.
        if m > best_v {
            if let Some(i) = block.iter().position(|&v| v == m) {
                best = b * BLOCK + i;
                best_v = m;
            }
        }
    }
    best as u32
}

/// The ranking of sampling candidates `(token, scaled logit)`: higher value first (by
/// `total_cmp`), then lower token id. A total order, since ids are distinct.
pub(super) fn rank(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The first `k` (`k > 0`) of every `(token, logit / temperature)` with a finite logit, by
/// [`rank`], in no particular order (all of them when there are fewer).
pub(super) fn top_k_scaled(logits: &[f32], temperature: f32, k: usize) -> Vec<(u32, f32)> {
    assert!(k > 0, "top-k of 0");
    let scale = |l: f32| l / temperature;
    // Candidates pile up to `compact_at`, then are cut to the best k, whose last sets `floor`:
    // a later token (a higher id) must beat it outright.
    let compact_at = 2 * k + LANES;
    let mut out: Vec<(u32, f32)> = Vec::with_capacity(compact_at + BLOCK);
    let mut floor: Option<f32> = None;
    for (b, block) in logits.chunks(BLOCK).enumerate() {
        // A block whose maximum is below the floor holds no candidate (a conservative test:
        // equal values fall to the exact one below). Division by a positive temperature keeps
        // order (rounding may merge values, never swap them), so one division serves the block.
        if floor.is_some_and(|f| scale(block_max(block)) < f) {
            continue;
        }
        for (c, chunk) in block.chunks(LANES).enumerate() {
            // The same test on each 16 logits, then the exact one on each logit.
            if floor.is_some_and(|f| scale(block_max(chunk)) < f) {
                continue;
            }
            for (j, &l) in chunk.iter().enumerate() {
                let v = scale(l);
                if l.is_finite() && floor.is_none_or(|f| v.total_cmp(&f) == Ordering::Greater) {
                    out.push(((b * BLOCK + c * LANES + j) as u32, v));
                }
            }
        }
        if out.len() >= compact_at {
            out.select_nth_unstable_by(k - 1, rank);
            out.truncate(k);
            floor = Some(out[k - 1].1);
        }
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, rank);
        out.truncate(k);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The plain loop `argmax` replaces.
    fn argmax_plain(logits: &[f32]) -> u32 {
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for (i, &v) in logits.iter().enumerate() {
            if v > best_v {
                best = i;
                best_v = v;
            }
        }
        best as u32
    }

    /// What `top_k_scaled` replaces: every finite logit collected, the top k selected, sorted.
    fn top_k_plain(logits: &[f32], temperature: f32, k: usize) -> Vec<(u32, f32)> {
        let mut items: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / temperature))
            .collect();
        items.sort_by(rank);
        items.truncate(k);
        items
    }

    /// Logits with the values that break naive scans: repeats, signed zeros, infinities, NaN,
    /// and huge values that overflow when scaled.
    fn logits() -> impl Strategy<Value = Vec<f32>> {
        let value = prop_oneof![
            8 => -30f32..30.0,
            1 => prop::sample::select(vec![
                0.0,
                -0.0,
                1.5,
                f32::INFINITY,
                f32::NEG_INFINITY,
                f32::NAN,
                3e38,
                -3e38,
            ]),
        ];
        prop::collection::vec(value, 0..2000)
    }

    proptest! {
        #[test]
        fn argmax_is_the_plain_loops(logits in logits()) {
            prop_assert_eq!(argmax(&logits), argmax_plain(&logits));
        }

        #[test]
        fn top_k_is_the_plain_selection(
            logits in logits(),
            temperature in prop::sample::select(vec![0.05f32, 0.7, 1.0, 3.0]),
            k in prop::sample::select(vec![1usize, 2, 40, 255, 256, 700, 5000]),
        ) {
            let mut got = top_k_scaled(&logits, temperature, k);
            got.sort_by(rank);
            let want = top_k_plain(&logits, temperature, k);
            // Bitwise: -0.0 and +0.0, and overflowed infinities, must match too.
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(t, x)| (t, x.to_bits())).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn a_vocabulary_sized_scan_matches_with_late_and_tied_maxima() {
        let mut rng = crate::sampler::Rng::new(7);
        for n in [32_000usize, 128_256] {
            let mut logits: Vec<f32> = (0..n)
                .map(|_| (rng.next_f64() as f32) * 20.0 - 10.0)
                .collect();
            // The maximum twice, late; ties at the top-k boundary.
            logits[n - 3] = 50.0;
            logits[n - 1] = 50.0;
            logits[10] = 9.999;
            logits[n / 2] = 9.999;
            assert_eq!(argmax(&logits), argmax_plain(&logits));
            assert_eq!(argmax(&logits), (n - 3) as u32);
            for k in [1, 40, 1000] {
                let mut got = top_k_scaled(&logits, 0.7, k);
                got.sort_by(rank);
                assert_eq!(got, top_k_plain(&logits, 0.7, k), "n {n}, k {k}");
            }
        }
    }
}
