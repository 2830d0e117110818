//! The Gated DeltaNet linear-attention layer of Qwen3-Next and Qwen3.5 in f32, as
//! `transformers` computes it (`Qwen3NextGatedDeltaNet`, `Qwen3_5GatedDeltaNet` with their torch
//! fallbacks `torch_causal_conv1d_fn` / `causal_conv1d_update`, `torch_chunk_gated_delta_rule`
//! and `torch_recurrent_gated_delta_rule`).
//!
//! Per token `t`, from the normed hidden state `h`:
//!
//! 1. `qkv = in_proj_qkv · h` (queries and keys `[k_heads, k_dim]`, values `[v_heads, v_dim]`),
//!    `z = in_proj_z · h` (the output gate), `b = in_proj_b · h`, `a = in_proj_a · h`
//!    (`[v_heads]` each). Qwen3-Next stores the four interleaved per key-head group
//!    (`in_proj_qkvz`, `in_proj_ba`); the loader reorders its rows into this layout once.
//! 2. `qkv` goes through a causal depthwise convolution over time (kernel `K`, no bias), then
//!    SiLU. The last `K − 1` inputs are the *conv state* carried to the next call.
//! 3. `q` and `k` are L2-normalised per head (`x · rsqrt(Σx² + 1e-6)`), `q` scaled by
//!    `1/√k_dim`; value head `h` reads key head `h / (v_heads / k_heads)`.
//! 4. `β = sigmoid(b)`, `g = −exp(A_log) · softplus(a + dt_bias)` (log decay ≤ 0).
//! 5. The gated delta rule over the *recurrent state* `S` (`[v_heads, k_dim, v_dim]`):
//!    `S ← exp(g)·S; S ← S + k ⊗ β(v − Sᵀk); o = Sᵀq`.
//! 6. `o` per head through the gated RMS norm `rms_norm(o) · w · silu(z)`, then `out_proj`.
//!
//! Step 5 has two forms that agree up to rounding: [`recurrent_delta_rule`] (token by token;
//! `transformers` uses it to decode one token with a cache) and [`chunked_delta_rule`]
//! (chunks of 64 tokens solved with a triangular system; `transformers` uses it for prefill).
//! [`DeltaNet::forward`] picks the one `transformers` would: recurrent for one token, chunked
//! for more.

use super::ops::{dot, matmul_t, rms_norm, sigmoid, silu};

/// Chunk length of `transformers`' `torch_chunk_gated_delta_rule`.
pub const CHUNK: usize = 64;

/// The shape of a Gated DeltaNet layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaDims {
    /// Query/key heads.
    pub k_heads: usize,
    /// Value heads (a multiple of `k_heads`).
    pub v_heads: usize,
    /// Width of a query/key head.
    pub k_dim: usize,
    /// Width of a value head.
    pub v_dim: usize,
    /// Length of the causal convolution.
    pub conv_kernel: usize,
}

impl DeltaDims {
    /// Channels of the convolution: queries, keys and values.
    pub fn conv_dim(&self) -> usize {
        2 * self.k_heads * self.k_dim + self.v_heads * self.v_dim
    }

    /// Width of all value heads.
    pub fn value_dim(&self) -> usize {
        self.v_heads * self.v_dim
    }
}

/// What a Gated DeltaNet layer carries from one call to the next for one sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaState {
    /// The last `conv_kernel − 1` convolution inputs, oldest first, `[conv_kernel − 1,
    /// conv_dim]` (zeros before the first token, as the convolution's padding).
    pub conv: Vec<f32>,
    /// The recurrent state, `[v_heads, k_dim, v_dim]`.
    pub recurrent: Vec<f32>,
}

impl DeltaState {
    /// The state before any token.
    pub fn new(d: &DeltaDims) -> DeltaState {
        DeltaState {
            conv: vec![0.0; d.conv_kernel.saturating_sub(1) * d.conv_dim()],
            recurrent: vec![0.0; d.v_heads * d.k_dim * d.v_dim],
        }
    }

    /// Back to the state before any token.
    pub fn clear(&mut self) {
        self.conv.fill(0.0);
        self.recurrent.fill(0.0);
    }
}

/// The causal depthwise convolution of `x` (`[n, channels]`) with `weight` (`[channels,
/// kernel]`, as `conv1d.weight` `[channels, 1, kernel]`), preceded by the `kernel − 1` rows of
/// `state`, then SiLU. `state` becomes the last `kernel − 1` inputs.
pub fn causal_conv_silu(x: &[f32], weight: &[f32], state: &mut [f32], kernel: usize) -> Vec<f32> {
    // The configuration refuses a kernel of 0 and empty projections.
    assert!(
        kernel > 0 && !weight.is_empty(),
        "a convolution of {kernel} taps"
    );
    let channels = weight.len() / kernel;
    let past = kernel.saturating_sub(1);
    // The inputs the window slides over: the carried rows then the new ones.
    let mut all = Vec::with_capacity(state.len() + x.len());
    all.extend_from_slice(state);
    all.extend_from_slice(x);
    let n = x.len() / channels;
    let mut out = vec![0f32; x.len()];
    for t in 0..n {
        for c in 0..channels {
            let w = &weight[c * kernel..(c + 1) * kernel];
            // Output `t` sees inputs `t .. t + kernel` of `all` (rows `t − kernel + 1 ..= t`
            // of the sequence), tap `j` on the `j`-th of them, as `F.conv1d` does.
            let acc: f32 = (0..kernel)
                .map(|j| w[j] * all[(t + j) * channels + c])
                .sum();
            out[t * channels + c] = silu(acc);
        }
    }
    let keep = past * channels;
    state.copy_from_slice(&all[all.len() - keep..]);
    out
}

/// `x · rsqrt(Σx² + 1e-6)` in place (`transformers`' `l2norm`, FLA's convention).
fn l2norm(x: &mut [f32]) {
    let inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() + 1e-6).sqrt();
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `torch.nn.functional.softplus` (β = 1, linear above 20).
fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        x.exp().ln_1p()
    }
}

/// Inputs of the delta rule for `n` tokens, already normalised: `q`, `k` `[n, v_heads, k_dim]`
/// (query/key heads repeated for their value heads, L2-normed, `q` scaled by `1/√k_dim`), `v`
/// `[n, v_heads, v_dim]`, `g` and `beta` `[n, v_heads]`.
#[derive(Clone, Debug)]
pub struct DeltaInputs {
    /// Queries.
    pub q: Vec<f32>,
    /// Keys.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
    /// Log decays (≤ 0).
    pub g: Vec<f32>,
    /// Write strengths in (0, 1).
    pub beta: Vec<f32>,
}

/// The gated delta rule one token at a time (`torch_recurrent_gated_delta_rule`) from state
/// `s` (`[v_heads, k_dim, v_dim]`, updated); returns `[n, v_heads, v_dim]`.
pub fn recurrent_delta_rule(
    x: &DeltaInputs,
    s: &mut [f32],
    v_heads: usize,
    k_dim: usize,
) -> Vec<f32> {
    let v_dim = s.len() / (v_heads * k_dim);
    let n = x.g.len() / v_heads;
    let mut out = vec![0f32; n * v_heads * v_dim];
    for t in 0..n {
        for h in 0..v_heads {
            let th = t * v_heads + h;
            let q = &x.q[th * k_dim..(th + 1) * k_dim];
            let k = &x.k[th * k_dim..(th + 1) * k_dim];
            let v = &x.v[th * v_dim..(th + 1) * v_dim];
            let st = &mut s[h * k_dim * v_dim..(h + 1) * k_dim * v_dim];
            let decay = x.g[th].exp();
            st.iter_mut().for_each(|e| *e *= decay);
            // What the state already predicts for this key, then the correction it writes.
            let mut delta = vec![0f32; v_dim];
            for (j, d) in delta.iter_mut().enumerate() {
                let mem: f32 = (0..k_dim).map(|i| st[i * v_dim + j] * k[i]).sum();
                *d = (v[j] - mem) * x.beta[th];
            }
            for i in 0..k_dim {
                for j in 0..v_dim {
                    st[i * v_dim + j] += k[i] * delta[j];
                }
            }
            let o = &mut out[th * v_dim..(th + 1) * v_dim];
            for (j, o) in o.iter_mut().enumerate() {
                *o = (0..k_dim).map(|i| st[i * v_dim + j] * q[i]).sum();
            }
        }
    }
    out
}

/// The gated delta rule by chunks of `chunk` tokens (`torch_chunk_gated_delta_rule`; the last
/// chunk is shorter instead of zero-padded, which changes nothing: padded positions have no
/// key, no value and no decay). Same arguments and result as [`recurrent_delta_rule`].
///
/// Within a chunk (positions `0..L`, cumulative log decay `c_i = Σ_{t≤i} g_t`), the `L`
/// delta-rule writes solve one unit lower-triangular system `T = I + tril₋₁((β_i k_i·k_j)
/// e^{c_i − c_j})`: `U = T⁻¹(βV)` and `W = T⁻¹(βK e^{c})`; then with the state `S` entering the
/// chunk, `V' = U − W S`, the outputs `O = (Q e^{c}) S + (tril((q_i·k_j) e^{c_i − c_j})) V'`
/// and the state leaving it `S e^{c_{L−1}} + (K e^{c_{L−1} − c})ᵀ V'`.
pub fn chunked_delta_rule(
    x: &DeltaInputs,
    s: &mut [f32],
    v_heads: usize,
    k_dim: usize,
    chunk: usize,
) -> Vec<f32> {
    let v_dim = s.len() / (v_heads * k_dim);
    let n = x.g.len() / v_heads;
    let mut out = vec![0f32; n * v_heads * v_dim];
    for h in 0..v_heads {
        let st = &mut s[h * k_dim * v_dim..(h + 1) * k_dim * v_dim];
        let row = |m: &[f32], t: usize, w: usize| -> Vec<f32> {
            m[(t * v_heads + h) * w..(t * v_heads + h + 1) * w].to_vec()
        };
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let ts = start..start + len;
            let q: Vec<Vec<f32>> = ts.clone().map(|t| row(&x.q, t, k_dim)).collect();
            let k: Vec<Vec<f32>> = ts.clone().map(|t| row(&x.k, t, k_dim)).collect();
            let v: Vec<Vec<f32>> = ts.clone().map(|t| row(&x.v, t, v_dim)).collect();
            let beta: Vec<f32> = ts.clone().map(|t| x.beta[t * v_heads + h]).collect();
            let mut cum = Vec::with_capacity(len);
            let mut acc = 0f32;
            for t in ts.clone() {
                acc += x.g[t * v_heads + h];
                cum.push(acc);
            }
            // Forward substitution of T X = B, T unit lower-triangular.
            let solve = |b: Vec<Vec<f32>>| -> Vec<Vec<f32>> {
                let mut xs: Vec<Vec<f32>> = Vec::with_capacity(len);
                for (i, mut bi) in b.into_iter().enumerate() {
                    for (j, xj) in xs.iter().enumerate() {
                        let t = beta[i] * dot(&k[i], &k[j]) * (cum[i] - cum[j]).exp();
                        bi.iter_mut().zip(xj).for_each(|(a, b)| *a -= t * b);
                    }
                    xs.push(bi);
                }
                xs
            };
            let vb: Vec<Vec<f32>> = (0..len)
                .map(|i| v[i].iter().map(|e| e * beta[i]).collect())
                .collect();
            let kb: Vec<Vec<f32>> = (0..len)
                .map(|i| k[i].iter().map(|e| e * beta[i] * cum[i].exp()).collect())
                .collect();
            let u = solve(vb);
            let w = solve(kb);
            // V' = U − W S.
            let v_new: Vec<Vec<f32>> = (0..len)
                .map(|i| {
                    (0..v_dim)
                        .map(|j| {
                            u[i][j] - (0..k_dim).map(|a| w[i][a] * st[a * v_dim + j]).sum::<f32>()
                        })
                        .collect()
                })
                .collect();
            for i in 0..len {
                let o = &mut out[((start + i) * v_heads + h) * v_dim..][..v_dim];
                let qd = cum[i].exp();
                for (j, o) in o.iter_mut().enumerate() {
                    let inter: f32 = (0..k_dim).map(|a| q[i][a] * qd * st[a * v_dim + j]).sum();
                    let intra: f32 = (0..=i)
                        .map(|c| dot(&q[i], &k[c]) * (cum[i] - cum[c]).exp() * v_new[c][j])
                        .sum();
                    *o = inter + intra;
                }
            }
            let last = cum[len - 1];
            let chunk_decay = last.exp();
            for a in 0..k_dim {
                for j in 0..v_dim {
                    let add: f32 = (0..len)
                        .map(|c| k[c][a] * (last - cum[c]).exp() * v_new[c][j])
                        .sum();
                    st[a * v_dim + j] = st[a * v_dim + j] * chunk_decay + add;
                }
            }
            start += len;
        }
    }
    out
}

/// One Gated DeltaNet layer's weights, in the Qwen3.5 layout (see the module documentation).
#[derive(Clone, Debug)]
pub struct DeltaNet {
    /// The shape.
    pub dims: DeltaDims,
    /// `[conv_dim, hidden]`: queries, keys, values.
    pub in_qkv: Vec<f32>,
    /// `[value_dim, hidden]`: the output gate.
    pub in_z: Vec<f32>,
    /// `[v_heads, hidden]`: write strength before the sigmoid.
    pub in_b: Vec<f32>,
    /// `[v_heads, hidden]`: time step before `dt_bias` and the softplus.
    pub in_a: Vec<f32>,
    /// `[conv_dim, conv_kernel]`.
    pub conv: Vec<f32>,
    /// `[v_heads]`: the decay rates, `-exp(A_log)` (what llama.cpp's GGUF files store as
    /// `ssm_a`; computed once at load from a Hugging Face `A_log`).
    pub decay: Vec<f32>,
    /// `[v_heads]`.
    pub dt_bias: Vec<f32>,
    /// `[v_dim]`: the gated RMS norm's weight (plain scaling, not zero-centred).
    pub norm: Vec<f32>,
    /// `[hidden, value_dim]`.
    pub out: Vec<f32>,
    /// Epsilon of the gated RMS norm.
    pub eps: f32,
}

impl DeltaNet {
    /// The inputs of the delta rule for `n` tokens of `h` (`[n, hidden]`), advancing the conv
    /// state; also returns the output gate `z` (`[n, value_dim]`).
    pub fn prepare(
        &self,
        h: &[f32],
        hidden: usize,
        state: &mut DeltaState,
    ) -> (DeltaInputs, Vec<f32>) {
        let d = &self.dims;
        let (key_dim, value_dim) = (d.k_heads * d.k_dim, d.value_dim());
        let conv_dim = d.conv_dim();
        let n = h.len() / hidden;
        let qkv = matmul_t(h, &self.in_qkv, hidden, conv_dim);
        let qkv = causal_conv_silu(&qkv, &self.conv, &mut state.conv, d.conv_kernel);
        let z = matmul_t(h, &self.in_z, hidden, value_dim);
        let b = matmul_t(h, &self.in_b, hidden, d.v_heads);
        let a = matmul_t(h, &self.in_a, hidden, d.v_heads);
        let rep = d.v_heads / d.k_heads;
        let scale = 1.0 / (d.k_dim as f32).sqrt();
        let mut x = DeltaInputs {
            q: Vec::with_capacity(n * d.v_heads * d.k_dim),
            k: Vec::with_capacity(n * d.v_heads * d.k_dim),
            v: Vec::with_capacity(n * value_dim),
            g: Vec::with_capacity(n * d.v_heads),
            beta: Vec::with_capacity(n * d.v_heads),
        };
        for t in 0..n {
            let row = &qkv[t * conv_dim..(t + 1) * conv_dim];
            let (qs, rest) = row.split_at(key_dim);
            let (ks, vs) = rest.split_at(key_dim);
            for vh in 0..d.v_heads {
                // `repeat_interleave`: consecutive value heads share a key head.
                let kh = vh / rep;
                let mut q = qs[kh * d.k_dim..(kh + 1) * d.k_dim].to_vec();
                let mut k = ks[kh * d.k_dim..(kh + 1) * d.k_dim].to_vec();
                l2norm(&mut q);
                l2norm(&mut k);
                q.iter_mut().for_each(|e| *e *= scale);
                x.q.extend_from_slice(&q);
                x.k.extend_from_slice(&k);
                let i = t * d.v_heads + vh;
                x.beta.push(sigmoid(b[i]));
                x.g.push(self.decay[vh] * softplus(a[i] + self.dt_bias[vh]));
            }
            x.v.extend_from_slice(vs);
        }
        (x, z)
    }

    /// The layer over `h` (`[n, hidden]`, the positions after those `state` has seen), updating
    /// `state`; returns `[n, hidden]`. One token runs the recurrent form, more the chunked one,
    /// as `transformers` does.
    pub fn forward(&self, h: &[f32], hidden: usize, state: &mut DeltaState) -> Vec<f32> {
        let d = self.dims;
        let (x, z) = self.prepare(h, hidden, state);
        let n = x.g.len() / d.v_heads;
        let mut o = if n == 1 {
            recurrent_delta_rule(&x, &mut state.recurrent, d.v_heads, d.k_dim)
        } else {
            chunked_delta_rule(&x, &mut state.recurrent, d.v_heads, d.k_dim, CHUNK)
        };
        self.gated_norm(&mut o, &z);
        matmul_t(&o, &self.out, d.value_dim(), hidden)
    }

    /// `rms_norm(o) · norm · silu(z)` per value head, in place (`Qwen3NextRMSNormGated`:
    /// normalise, scale, then gate).
    fn gated_norm(&self, o: &mut [f32], z: &[f32]) {
        rms_norm(o, &self.norm, self.eps);
        o.iter_mut().zip(z).for_each(|(v, z)| *v *= silu(*z));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in `[-1, 1)`.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }
    }

    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
    }

    fn layer(rng: &mut Lcg, d: DeltaDims, hidden: usize) -> DeltaNet {
        let w = |rng: &mut Lcg, rows: usize, cols: usize| {
            rng.vec(rows * cols, 1.0 / (cols as f32).sqrt())
        };
        DeltaNet {
            dims: d,
            in_qkv: w(rng, d.conv_dim(), hidden),
            in_z: w(rng, d.value_dim(), hidden),
            in_b: w(rng, d.v_heads, hidden),
            in_a: w(rng, d.v_heads, hidden),
            conv: w(rng, d.conv_dim(), d.conv_kernel),
            decay: rng.vec(d.v_heads, 1.0).iter().map(|v| -v.exp()).collect(),
            dt_bias: rng.vec(d.v_heads, 0.5),
            norm: rng.vec(d.v_dim, 0.2).iter().map(|v| 1.0 + v).collect(),
            out: w(rng, hidden, d.value_dim()),
            eps: 1e-6,
        }
    }

    const DIMS: DeltaDims = DeltaDims {
        k_heads: 2,
        v_heads: 4,
        k_dim: 8,
        v_dim: 6,
        conv_kernel: 4,
    };

    #[test]
    fn chunked_and_recurrent_forms_agree() {
        let mut rng = Lcg(7);
        let net = layer(&mut rng, DIMS, 16);
        // 150 tokens: two whole chunks of 64 and a short one, from a non-zero state.
        let h = rng.vec(150 * 16, 1.0);
        let mut state = DeltaState::new(&DIMS);
        state.recurrent = rng.vec(state.recurrent.len(), 0.5);
        let (x, _) = net.prepare(&h, 16, &mut state.clone());
        let mut s_rec = state.recurrent.clone();
        let mut s_chunk = state.recurrent.clone();
        let rec = recurrent_delta_rule(&x, &mut s_rec, DIMS.v_heads, DIMS.k_dim);
        let chunked = chunked_delta_rule(&x, &mut s_chunk, DIMS.v_heads, DIMS.k_dim, CHUNK);
        assert!(
            rel(&chunked, &rec) < 1e-5,
            "outputs {:e}",
            rel(&chunked, &rec)
        );
        assert!(
            rel(&s_chunk, &s_rec) < 1e-5,
            "states {:e}",
            rel(&s_chunk, &s_rec)
        );
        // Other chunk lengths: the same rule.
        for c in [1, 5, 17] {
            let mut s = state.recurrent.clone();
            let o = chunked_delta_rule(&x, &mut s, DIMS.v_heads, DIMS.k_dim, c);
            assert!(rel(&o, &rec) < 1e-5, "chunk {c}: {:e}", rel(&o, &rec));
        }
    }

    #[test]
    fn state_carries_across_calls() {
        let mut rng = Lcg(11);
        let net = layer(&mut rng, DIMS, 16);
        let h = rng.vec(80 * 16, 1.0);
        let mut once = DeltaState::new(&DIMS);
        let all = net.forward(&h, 16, &mut once);
        // Prefill 70 tokens (chunked), then decode the rest one by one (recurrent), then a
        // prefill of several tokens again from a carried state.
        let mut split = DeltaState::new(&DIMS);
        let mut parts = net.forward(&h[..70 * 16], 16, &mut split);
        for t in 70..76 {
            parts.extend(net.forward(&h[t * 16..(t + 1) * 16], 16, &mut split));
        }
        parts.extend(net.forward(&h[76 * 16..], 16, &mut split));
        assert!(rel(&parts, &all) < 1e-5, "outputs {:e}", rel(&parts, &all));
        assert!(rel(&split.recurrent, &once.recurrent) < 1e-5);
        assert_eq!(
            split.conv, once.conv,
            "the conv state is the last inputs either way"
        );
    }

    #[test]
    fn conv_is_causal_and_padded_with_zeros() {
        // One channel, kernel 3, weights [1, 10, 100]: output t = x_{t-2} + 10 x_{t-1} + 100 x_t
        // (before SiLU), with zeros before the start.
        let mut state = vec![0.0; 2];
        let x = [1.0, 2.0, 3.0];
        let out = causal_conv_silu(&x, &[1.0, 10.0, 100.0], &mut state, 3);
        let pre = [100.0, 210.0, 321.0];
        for (o, p) in out.iter().zip(pre) {
            assert!((o - silu(p)).abs() < 1e-3, "{out:?}");
        }
        assert_eq!(state, [2.0, 3.0]);
    }
}
