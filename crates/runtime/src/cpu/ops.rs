//! Element-wise and row-wise kernels: embedding, RMS norm, SwiGLU, the linear layer, softmax.

/// Dot product, accumulated in eight f32 lanes then summed (close to what BLAS does, and fast
/// enough for reference use).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in ca.by_ref().zip(cb.by_ref()) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// The linear layer without bias: `x` is `[rows, k]`, `w` is `[n, k]`; returns `x · wᵀ`,
/// `[rows, n]`.
///
/// # Panics
/// If the lengths are not `rows·k` and `n·k`.
pub fn matmul_t(x: &[f32], w: &[f32], k: usize, n: usize) -> Vec<f32> {
    assert!(
        k > 0 && x.len().is_multiple_of(k) && w.len() == n * k,
        "matmul_t: x {} / w {} with k {k}, n {n}",
        x.len(),
        w.len()
    );
    let rows = x.len() / k;
    let mut out = vec![0f32; rows * n];
    // Weight rows outside: each is read once for every input row (a batch of decode steps
    // reads the weights once, not once per sequence); the sums are the same either way.
    for (j, wr) in w.chunks_exact(k).enumerate() {
        for (r, row) in x.chunks_exact(k).enumerate() {
            out[r * n + j] = dot(row, wr);
        }
    }
    out
}

/// Adds `bias` (`[n]`) to each row of `x` (`[rows, n]`).
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        for (v, b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// Rows of `table` (`[vocab, dim]`) for `ids`; `None` if an id is out of range.
pub fn embedding(table: &[f32], dim: usize, ids: &[u32]) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        let start = (id as usize).checked_mul(dim)?;
        out.extend_from_slice(table.get(start..start + dim)?);
    }
    Some(out)
}

/// RMS norm of each row of `x` (`[rows, weight.len()]`), in place:
/// `x · 1/√(mean(x²) + eps) · weight` (the order of `transformers`' `LlamaRMSNorm`).
pub fn rms_norm(x: &mut [f32], weight: &[f32], eps: f32) {
    let n = weight.len();
    for row in x.chunks_exact_mut(n) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = w * (*v * inv);
        }
    }
}

/// `1 / (1 + e^-x)`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `x · sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU's gating: `silu(gate) · up`, element-wise, into `gate`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// Softmax of `x` in place (max subtracted first); an all-`-inf` row becomes all zeros.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        x.fill(0.0);
        return;
    }
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_matches_hand_computation() {
        // x = [[1,2,3],[4,5,6]], w = [[1,0,-1],[2,1,0]] → x·wᵀ = [[-2,4],[-2,13]]
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0, 0.0, -1.0, 2.0, 1.0, 0.0];
        assert_eq!(matmul_t(&x, &w, 3, 2), vec![-2.0, 4.0, -2.0, 13.0]);
        // Long rows exercise the lane accumulators and the tail.
        let a: Vec<f32> = (0..37).map(|i| i as f32).collect();
        assert_eq!(dot(&a, &a), (0..37).map(|i| (i * i) as f32).sum::<f32>());
    }

    #[test]
    fn rms_norm_unit_rows() {
        let mut x = vec![3.0, 4.0];
        rms_norm(&mut x, &[1.0, 2.0], 0.0);
        // mean square = 12.5
        let s = 1.0 / 12.5f32.sqrt();
        assert_eq!(x, vec![3.0 * s, 2.0 * (4.0 * s)]);
        let mut zeros = vec![0.0, 0.0];
        rms_norm(&mut zeros, &[1.0, 2.0], 1e-6);
        assert_eq!(zeros, vec![0.0, 0.0], "eps keeps an all-zero row finite");
    }

    #[test]
    fn softmax_is_a_distribution() {
        let mut x = vec![1.0, 2.0, 3.0, f32::NEG_INFINITY];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(x[3], 0.0);
        assert!((x[2] / x[1] - std::f32::consts::E).abs() < 1e-5);
        let mut big = vec![1000.0, 1000.0];
        softmax(&mut big);
        assert_eq!(big, vec![0.5, 0.5], "no overflow for large logits");
    }

    #[test]
    fn swiglu_and_embedding() {
        assert_eq!(silu(0.0), 0.0);
        assert!((silu(2.0) - 2.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
        let mut g = vec![0.0, 2.0];
        swiglu(&mut g, &[5.0, 3.0]);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 3.0 * silu(2.0)).abs() < 1e-6);
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0];
        assert_eq!(
            embedding(&table, 2, &[2, 0]),
            Some(vec![20.0, 21.0, 0.0, 1.0])
        );
        assert_eq!(embedding(&table, 2, &[3]), None);
    }
}
