//! The mixture-of-experts feed-forward block in f32 (Mixtral, Qwen2-MoE, Qwen3-MoE), as
//! `transformers` computes it:
//!
//! 1. router logits `h · routerᵀ`, softmax over all experts in f32;
//! 2. the `k` most probable experts (ties to the lower index);
//! 3. their probabilities divided by their sum when `norm_topk_prob` (always for Mixtral),
//!    else kept as they are;
//! 4. the weighted sum of those experts' SwiGLU blocks;
//! 5. Qwen2-MoE adds a shared expert scaled by `sigmoid(h · shared_expert_gate)`.
//!
//! One token at a time: each goes through its own experts. Simple, not fast.

use super::ops::{dot, matmul_t, sigmoid, softmax, swiglu};

/// One SwiGLU block: `down · (silu(gate · h) ⊙ (up · h))`.
#[derive(Clone, Debug)]
pub struct SwiGlu {
    /// `[inter, hidden]`.
    pub gate: Vec<f32>,
    /// `[inter, hidden]`.
    pub up: Vec<f32>,
    /// `[hidden, inter]`.
    pub down: Vec<f32>,
    /// Width of the block.
    pub inter: usize,
}

impl SwiGlu {
    /// The block over rows of `h` (`[rows, hidden]`).
    pub fn forward(&self, h: &[f32], hidden: usize) -> Vec<f32> {
        let mut g = matmul_t(h, &self.gate, hidden, self.inter);
        let u = matmul_t(h, &self.up, hidden, self.inter);
        swiglu(&mut g, &u);
        matmul_t(&g, &self.down, self.inter, hidden)
    }
}

/// A shared expert every token goes through, scaled by a sigmoid gate (Qwen2-MoE).
#[derive(Clone, Debug)]
pub struct SharedExpert {
    /// The expert.
    pub mlp: SwiGlu,
    /// The gate's weight `[hidden]` (one output).
    pub gate: Vec<f32>,
}

/// A sparse layer's feed-forward block.
#[derive(Clone, Debug)]
pub struct MoeBlock {
    /// Router `[experts, hidden]`.
    pub router: Vec<f32>,
    /// The experts.
    pub experts: Vec<SwiGlu>,
    /// The shared expert, if any.
    pub shared: Option<SharedExpert>,
    /// Experts per token.
    pub top_k: usize,
    /// Whether the top-k weights are renormalised to sum to one.
    pub norm_topk_prob: bool,
}

/// The experts a token goes to and their weights: softmax of `logits` (in f32, as
/// `transformers` does whatever the model's dtype), the `k` largest (ties to the lower index,
/// in descending order), divided by their sum when `normalize`. `k` is clamped to the number
/// of experts.
pub fn route(logits: &[f32], k: usize, normalize: bool) -> Vec<(usize, f32)> {
    let mut probs = logits.to_vec();
    softmax(&mut probs);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Stable sort: equal probabilities keep index order.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    let top: Vec<(usize, f32)> = order.into_iter().take(k).map(|e| (e, probs[e])).collect();
    if !normalize {
        return top;
    }
    let sum: f32 = top.iter().map(|t| t.1).sum();
    top.into_iter().map(|(e, p)| (e, p / sum)).collect()
}

impl MoeBlock {
    /// The block over rows of `h` (`[rows, hidden]`); returns `[rows, hidden]`.
    pub fn forward(&self, h: &[f32], hidden: usize) -> Vec<f32> {
        let n_experts = self.experts.len();
        let mut out = vec![0f32; h.len()];
        for (row, y) in h.chunks_exact(hidden).zip(out.chunks_exact_mut(hidden)) {
            let logits = matmul_t(row, &self.router, hidden, n_experts);
            let mut chosen = route(&logits, self.top_k, self.norm_topk_prob);
            // transformers adds the experts' outputs in expert order; so do we, for the same
            // rounding.
            chosen.sort_by_key(|c| c.0);
            for (e, w) in chosen {
                let d = self.experts[e].forward(row, hidden);
                y.iter_mut().zip(&d).for_each(|(a, b)| *a += w * b);
            }
            if let Some(shared) = &self.shared {
                let g = sigmoid(dot(row, &shared.gate));
                let d = shared.mlp.forward(row, hidden);
                y.iter_mut().zip(&d).for_each(|(a, b)| *a += g * b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::ops::silu;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn top_k_of_the_softmax() {
        let logits = [0.0, 2.0, 1.0, 3.0];
        let raw = route(&logits, 2, false);
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert_eq!((raw[0].0, raw[1].0), (3, 1));
        assert!(close(raw[0].1, 3f32.exp() / z) && close(raw[1].1, 2f32.exp() / z));
        let norm = route(&logits, 2, true);
        assert_eq!((norm[0].0, norm[1].0), (3, 1));
        assert!(close(norm[0].1 + norm[1].1, 1.0));
        // Renormalising the top-k probabilities is the softmax over the top-k logits.
        assert!(close(norm[0].1, 1.0 / (1.0 + (-1f32).exp())));
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let r = route(&[1.0, 5.0, 5.0, 5.0], 2, true);
        assert_eq!((r[0].0, r[1].0), (1, 2));
        assert!(close(r[0].1, 0.5) && close(r[1].1, 0.5));
        let all = route(&[0.0; 4], 4, false);
        assert_eq!(all.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(all.iter().all(|r| close(r.1, 0.25)));
    }

    #[test]
    fn k_beyond_the_experts_is_clamped() {
        assert_eq!(route(&[1.0, 2.0], 5, true).len(), 2);
    }

    /// Experts whose down projection is the identity times `scale`, with gate and up chosen
    /// so an input of ones gives `silu(1)·1` in every unit.
    fn expert(hidden: usize, scale: f32) -> SwiGlu {
        let eye = |s: f32| -> Vec<f32> {
            (0..hidden * hidden)
                .map(|i| if i % (hidden + 1) == 0 { s } else { 0.0 })
                .collect()
        };
        SwiGlu {
            gate: eye(1.0),
            up: eye(1.0),
            down: eye(scale),
            inter: hidden,
        }
    }

    #[test]
    fn weighted_experts_and_the_shared_gate() {
        let hidden = 2;
        // The router sends ones to expert 2 (logit 2) and 0 (logit 1); expert 1 has logit 0.
        let router = vec![0.5, 0.5, 0.0, 0.0, 1.0, 1.0];
        let block = |norm, shared| MoeBlock {
            router: router.clone(),
            experts: vec![expert(2, 1.0), expert(2, 10.0), expert(2, 100.0)],
            shared,
            top_k: 2,
            norm_topk_prob: norm,
        };
        let x = [1.0f32, 1.0];
        let unit = silu(1.0);
        let z = 1f32.exp() + 1.0 + 2f32.exp();
        let (p0, p2) = (1f32.exp() / z, 2f32.exp() / z);
        let raw = block(false, None).forward(&x, hidden);
        assert!(close(raw[0], unit * (p0 * 1.0 + p2 * 100.0)), "{raw:?}");
        let norm = block(true, None).forward(&x, hidden);
        let s = p0 + p2;
        assert!(close(norm[1], unit * (p0 / s + 100.0 * p2 / s)), "{norm:?}");
        let shared = SharedExpert {
            mlp: expert(2, 3.0),
            gate: vec![0.25, -1.0],
        };
        let with = block(false, Some(shared)).forward(&x, hidden);
        let g = 1.0 / (1.0 + 0.75f32.exp());
        assert!(close(with[0] - raw[0], g * 3.0 * unit), "{with:?}");
    }
}
