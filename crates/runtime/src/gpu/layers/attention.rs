//! Attention: the split-key kernel of decode and the cuBLAS path of prefill. The same `unsafe`
//! contract as [`super`].

use super::{int, Act, AttnDims, KvRows, Ops};
use crate::gpu::blas::{Batch, Gemm};
use crate::gpu::module::{args, ATTN_SLICE_KEYS, ATTN_SPLITS, ATTN_THREADS, ROW_THREADS};
use crate::gpu::GpuError;

#[allow(clippy::too_many_arguments)]
impl Ops<'_> {
    /// f32 values of `part`, the scratch [`Ops::attention`] needs for `n` queries.
    pub(crate) fn attention_part_values(n: usize, dims: AttnDims) -> usize {
        dims.heads * n * ATTN_SPLITS * (dims.head_dim + 2)
    }

    /// i32 values of `counters`, the zeroed scratch [`Ops::attention`] needs for `n` queries.
    pub(crate) fn attention_counters(n: usize, dims: AttnDims) -> usize {
        dims.heads * n
    }

    /// Dynamic shared memory of the attention kernel for `dims`; an error when the context is
    /// longer than this GPU's shared memory allows (sessions check it when they are made).
    pub(crate) fn attention_smem(&self, dims: AttnDims) -> Result<usize, GpuError> {
        // As `attention_groups` in kernels/attention.cu: threads per group are hd / 4 (or hd).
        let hd = dims.head_dim;
        let per_group = if hd.is_multiple_of(4) { hd / 4 } else { hd };
        let groups = (ATTN_THREADS as usize / per_group).max(1);
        let scores = ATTN_SLICE_KEYS.max(dims.capacity.div_ceil(ATTN_SPLITS));
        // The online path (hd a multiple of 4, at most 256): each warp's values, max and sum.
        let online = (ATTN_THREADS as usize / 32) * (hd + 2);
        let smem = (groups * hd + scores).max(online) * 4;
        if smem > self.k.attention_smem_bytes {
            return Err(GpuError::Unsupported(format!(
                "a context of {} positions is longer than the attention kernel supports on this GPU; ask for a shorter context (--context)",
                dims.capacity
            )));
        }
        Ok(smem)
    }

    /// Attention of `n` queries at positions `start..start + n` (`start`: the i32 at `start_at`)
    /// by our split-key kernel (decode; the reference for the cuBLAS path). `part`: scratch
    /// of [`Ops::attention_part_values`] floats; `counters`: [`Ops::attention_counters`] i32s,
    /// zero before the first call and left zero by each. Launch shapes do not depend on
    /// `start`, so a captured decode step serves every position. With `rows` (a batched decode
    /// step), query `t` is its own sequence's, as in [`Ops::rope_store`]; `dims.capacity` is
    /// then the largest of theirs.
    pub(crate) unsafe fn attention(
        &self,
        q: u64,
        cache: [u64; 2],
        part: u64,
        counters: u64,
        start_at: u64,
        out: u64,
        out_a: u64,
        n: usize,
        dims: AttnDims,
        act: Act,
        rows: Option<KvRows>,
    ) -> Result<(), GpuError> {
        let smem = self.attention_smem(dims)?;
        let [kc, vc] = cache;
        let (heads, kvh, hd, cap, window, scale, act, kv) = (
            int(dims.heads),
            int(dims.kv_heads),
            int(dims.head_dim),
            int(dims.capacity),
            int(dims.window),
            dims.scale(),
            act as i32,
            dims.cache as i32,
        );
        let (table, layer) = rows.map_or((0, 0), |r| (r.table, int(r.layer)));
        let mut a = args![
            q, kc, vc, part, start_at, heads, kvh, hd, cap, window, scale, counters, out, out_a,
            act, kv, table, layer
        ];
        // Grid z: the most key slices a query of this capacity uses (attention_slices in
        // kernels/attention.cu), so that short contexts launch no blocks that would only return.
        let splits = ATTN_SPLITS
            .min(dims.capacity.div_ceil(ATTN_SLICE_KEYS))
            .max(1);
        // SAFETY: the module's contract; shared memory checked above.
        unsafe {
            self.k.launch3(
                self.k.attention_split,
                (heads as u32, int(n) as u32, splits as u32),
                ATTN_THREADS,
                smem as u32,
                self.stream,
                &mut a,
            )
        }
    }

    /// Attention of `n` queries at `start..start + n` through cuBLAS: scores for `tile` queries
    /// at a time into `scores` (`heads * tile * (start + n)` f32), a causal softmax, then the
    /// weighted sum of values into `out` (f32, `[n, heads * head_dim]`), rounded to `act`
    /// (and stored at `out_a` if non-zero). A 16-bit cache is multiplied in its own type:
    /// `q` is then read from `q.1` (as [`Ops::rope_store`] leaves it) and the probabilities
    /// go through `scores.1` (`heads * tile * (start + n)` values); both are 0 for f32.
    pub(crate) unsafe fn attention_blas(
        &self,
        q: (u64, u64),
        cache: [u64; 2],
        out: u64,
        out_a: u64,
        n: usize,
        start: usize,
        dims: AttnDims,
        scores: (u64, u64),
        tile: usize,
        act: Act,
    ) -> Result<(), GpuError> {
        assert!(tile > 0, "attention tile must hold a query");
        let (hd, heads, group) = (dims.head_dim, dims.heads, dims.heads / dims.kv_heads);
        let q_stride = heads * hd;
        let kv = dims.cache.elem();
        let sixteen = dims.cache != Act::F32;
        assert_eq!(
            sixteen,
            q.1 != 0 && scores.1 != 0,
            "a 16-bit cache needs q and the probabilities in its type"
        );
        // q and the probabilities as cuBLAS reads them: their copies in the cache's type.
        let (q_in, p_in) = if sixteen {
            (q.1, scores.1)
        } else {
            (q.0, scores.0)
        };
        let (kv_bytes, scores) = (kv.bytes(), scores.0);
        let mut q0 = 0;
        while q0 < n {
            let rows = tile.min(n - q0);
            let len = start + q0 + rows;
            for g in 0..group {
                // S[h][i][j] = scale · q_i·k_j for heads h = kvh·group + g, batched over kvh.
                let s = Gemm {
                    trans_a: true,
                    trans_b: false,
                    m: len,
                    n: rows,
                    k: hd,
                    a: cache[0],
                    a_type: kv,
                    lda: hd,
                    b: q_in + ((q0 * q_stride + g * hd) * kv_bytes) as u64,
                    b_type: kv,
                    ldb: q_stride,
                    c: scores + (g * rows * len * 4) as u64,
                    ldc: len,
                    alpha: dims.scale(),
                    beta: 0.0,
                };
                let batch = Batch {
                    count: int(dims.kv_heads),
                    stride_a: (dims.capacity * hd) as i64,
                    stride_b: (group * hd) as i64,
                    stride_c: (group * rows * len) as i64,
                };
                // SAFETY: the module's contract (cache, q and scores sized by the caller).
                unsafe { self.gemm("cublas attention qk", &s, Some(batch))? };
            }
            let (r, l, st, q0i, w) = (int(rows), int(len), int(start), int(q0), int(dims.window));
            let (p_a, kv_code) = (if sixteen { p_in } else { 0 }, dims.cache as i32);
            let mut a = args![scores, r, l, st, q0i, w, p_a, kv_code];
            // SAFETY: the module's contract.
            unsafe {
                self.k.launch(
                    self.k.causal_softmax,
                    (int(heads) as u32, r as u32),
                    ROW_THREADS,
                    0,
                    self.stream,
                    &mut a,
                )?
            };
            for g in 0..group {
                // O[i][h·hd + d] = Σ_j P[h][i][j] · v_j[d].
                let o = Gemm {
                    trans_a: false,
                    trans_b: false,
                    m: hd,
                    n: rows,
                    k: len,
                    a: cache[1],
                    a_type: kv,
                    lda: hd,
                    b: p_in + (g * rows * len * kv_bytes) as u64,
                    b_type: kv,
                    ldb: len,
                    c: out + ((q0 * q_stride + g * hd) * 4) as u64,
                    ldc: q_stride,
                    alpha: 1.0,
                    beta: 0.0,
                };
                let batch = Batch {
                    count: int(dims.kv_heads),
                    stride_a: (dims.capacity * hd) as i64,
                    stride_b: (group * rows * len) as i64,
                    stride_c: (group * hd) as i64,
                };
                // SAFETY: as above.
                unsafe { self.gemm("cublas attention pv", &o, Some(batch))? };
            }
            q0 += rows;
        }
        // SAFETY: out holds n rows of heads·hd values; out_a (if any) as many of `act`.
        unsafe { self.round_cast(out, out_a, act, n * q_stride) }
    }
}
