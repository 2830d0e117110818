//! Rotary position embedding: frequencies (plain and Llama 3.1-scaled) and their application
//! in both pairings ([`RopeStyle`]).

use crate::config::{ModelConfig, RopeScaling, RopeStyle};

/// Inverse frequencies `1 / θ^(2i/d)` for `i < d/2`, with Llama 3.1 scaling applied when
/// asked (the computation of `transformers`' `_compute_llama3_parameters`).
pub fn inv_freqs(head_dim: usize, theta: f32, scaling: Option<RopeScaling>) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match scaling {
        None => base,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        }) => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// The per-frequency divisors llama.cpp's converter stores as `rope_freqs.weight` for Llama
/// 3.1 scaling (`inv_freq_scaled = inv_freq / factor_i`); all ones without scaling.
pub fn llama3_freq_factors(head_dim: usize, theta: f32, scaling: Option<RopeScaling>) -> Vec<f32> {
    let plain = inv_freqs(head_dim, theta, None);
    let scaled = inv_freqs(head_dim, theta, scaling);
    plain.iter().zip(&scaled).map(|(p, s)| p / s).collect()
}

/// Precomputed cos/sin tables for positions `0..max_positions`.
#[derive(Clone, Debug)]
pub struct Rope {
    style: RopeStyle,
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Tables for `config`; `freq_factors` (a GGUF `rope_freqs.weight`) divide the frequencies.
    pub fn new(config: &ModelConfig, max_positions: usize, freq_factors: Option<&[f32]>) -> Rope {
        let mut freqs = inv_freqs(config.head_dim, config.rope_theta, config.rope_scaling);
        if let Some(f) = freq_factors {
            for (v, d) in freqs.iter_mut().zip(f) {
                *v /= d;
            }
        }
        Rope::from_inv_freqs(config.rope_style, &freqs, max_positions)
    }

    /// Tables from explicit inverse frequencies (`head_dim / 2` of them).
    pub fn from_inv_freqs(style: RopeStyle, inv_freqs: &[f32], max_positions: usize) -> Rope {
        let half = inv_freqs.len();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in inv_freqs {
                // f32 product then f32 cos/sin, as transformers computes them.
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rope {
            style,
            half,
            cos,
            sin,
        }
    }

    /// Positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates every head of `x` (`[heads, 2·half]`, one token) for position `pos`.
    ///
    /// # Panics
    /// If `pos` is beyond the tables (callers bound positions by the KV cache capacity).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let h = self.half;
        let cos = &self.cos[pos * h..(pos + 1) * h];
        let sin = &self.sin[pos * h..(pos + 1) * h];
        for head in x.chunks_exact_mut(2 * h) {
            for i in 0..h {
                let (a, b) = match self.style {
                    RopeStyle::Neox => (i, i + h),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * cos[i] - x1 * sin[i];
                head[b] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA3: RopeScaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192.0,
    };

    #[test]
    fn llama3_scaling_regimes() {
        let plain = inv_freqs(128, 500000.0, None);
        let scaled = inv_freqs(128, 500000.0, Some(LLAMA3));
        assert_eq!(plain[0], 1.0);
        assert_eq!(scaled[0], plain[0], "high frequencies are kept");
        assert_eq!(scaled[63], plain[63] / 8.0, "low frequencies are divided");
        let mid = (0..64)
            .filter(|&i| scaled[i] != plain[i] && scaled[i] != plain[i] / 8.0)
            .count();
        assert!(mid > 0, "some frequencies are blended");
        for (p, s) in plain.iter().zip(&scaled) {
            assert!(s <= p && *s >= p / 8.0);
        }
        let factors = llama3_freq_factors(128, 500000.0, Some(LLAMA3));
        assert_eq!((factors[0], factors[63]), (1.0, 8.0));
    }

    /// llama.cpp's q/k permutation: per head, row `2i` ← row `i`, row `2i+1` ← row `i + d/2`.
    fn permute_head(x: &[f32]) -> Vec<f32> {
        let h = x.len() / 2;
        (0..x.len())
            .map(|r| if r % 2 == 0 { x[r / 2] } else { x[h + r / 2] })
            .collect()
    }

    #[test]
    fn interleaved_on_permuted_equals_neox() {
        let freqs = inv_freqs(8, 10000.0, None);
        let neox = Rope::from_inv_freqs(RopeStyle::Neox, &freqs, 40);
        let inter = Rope::from_inv_freqs(RopeStyle::Interleaved, &freqs, 40);
        let x: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
        for pos in [0, 1, 7, 39] {
            let mut a = x.clone();
            neox.apply(&mut a, pos);
            let mut b: Vec<f32> = x.chunks(8).flat_map(permute_head).collect();
            inter.apply(&mut b, pos);
            let a_perm: Vec<f32> = a.chunks(8).flat_map(permute_head).collect();
            for (u, v) in a_perm.iter().zip(&b) {
                assert!((u - v).abs() < 1e-6, "pos {pos}");
            }
        }
    }

    #[test]
    fn rotation_keeps_norm_and_position_zero_is_identity() {
        let rope = Rope::from_inv_freqs(RopeStyle::Neox, &inv_freqs(4, 10000.0, None), 8);
        let x = vec![1.0, 2.0, 3.0, 4.0];
        let mut y = x.clone();
        rope.apply(&mut y, 0);
        assert_eq!(y, x);
        rope.apply(&mut y, 5);
        assert_ne!(y, x);
        let n = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((n(&x) - n(&y)).abs() < 1e-4);
        // Pair (0, 2) rotates by 5 rad at frequency 1.
        assert!((y[0] - (5f32.cos() - 3.0 * 5f32.sin())).abs() < 1e-6);
    }
}
