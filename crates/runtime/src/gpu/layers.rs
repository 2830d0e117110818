//! The shared layers: typed wrappers around each kernel launch and cuBLAS product, used by
//! every architecture file.
//!
//! Every method is `unsafe` for one reason, stated once here: the arguments are raw device
//! addresses, and the caller guarantees that each is live and large enough for the counts
//! given (the model and session size their buffers for the largest counts they pass).

use hoist_cuda::Stream;
use hoist_format::{DType, GgmlType};

use super::blas::{Batch, Blas, Elem, Gemm};
use super::kernels::{Q4_BLOCK_BYTES, Q8_BLOCK_BYTES, QK, XS_PAD};
use super::module::{
    args, Kernels, ARGMAX_THREADS, ATTN_SLICE_KEYS, ATTN_SPLITS, ATTN_THREADS, ELEMENTWISE_THREADS,
    ROW_THREADS,
};
use super::GpuError;

/// Weight element types the kernels read: the discriminants are the kernels' type codes, passed
/// to them as `-DW_F32=0`… (see `kernels/mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    /// Q4_0 repacked on the device into tiles for the tensor-core GEMVs (see kernels/q4_tiles.cu);
    /// never a file's type.
    Q4_0Tiled = 5,
}

impl WType {
    /// The kernels' type for a checkpoint dtype, if they read it.
    pub(crate) fn of(d: DType) -> Option<WType> {
        Some(match d {
            DType::F32 | DType::Ggml(GgmlType::F32) => WType::F32,
            DType::F16 | DType::Ggml(GgmlType::F16) => WType::F16,
            DType::BF16 | DType::Ggml(GgmlType::BF16) => WType::BF16,
            DType::Ggml(GgmlType::Q8_0) => WType::Q8_0,
            DType::Ggml(GgmlType::Q4_0) => WType::Q4_0,
            _ => return None,
        })
    }

    /// The float type cuBLAS can read directly, if any.
    pub(crate) fn elem(self) -> Option<Elem> {
        match self {
            WType::F32 => Some(Elem::F32),
            WType::F16 => Some(Elem::F16),
            WType::BF16 => Some(Elem::BF16),
            WType::Q8_0 | WType::Q4_0 | WType::Q4_0Tiled => None,
        }
    }

    /// Bytes of `elements` values (quantized: `elements` is a multiple of 32).
    pub(crate) fn bytes(self, elements: usize) -> usize {
        match self {
            WType::F32 => elements * 4,
            WType::F16 | WType::BF16 => elements * 2,
            WType::Q8_0 => elements / QK * Q8_BLOCK_BYTES,
            WType::Q4_0 | WType::Q4_0Tiled => elements / QK * Q4_BLOCK_BYTES,
        }
    }
}

/// The type GEMM inputs are rounded to (the kernels' `act` codes, see `kernels/common.cuh`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Act {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
}

impl Act {
    pub(crate) fn elem(self) -> Elem {
        match self {
            Act::F32 => Elem::F32,
            Act::F16 => Elem::F16,
            Act::BF16 => Elem::BF16,
        }
    }
}

/// A weight matrix `[rows, cols]` on the device (a view into the loaded weights).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mat {
    pub ptr: u64,
    pub wtype: WType,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub(crate) fn bytes(&self) -> usize {
        self.wtype.bytes(self.rows * self.cols)
    }
}

/// One GEMV target: `y = W·x (+ bias)`.
pub(crate) struct GemvOut<'a> {
    pub w: &'a Mat,
    pub y: u64,
    /// f32 bias of `w.rows` values, or 0.
    pub bias: u64,
}

/// #[repr(C)] twin of `GemvBatch` in kernels/gemv.cuh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct GemvBatch {
    pub w: [u64; 3],
    pub y: [u64; 3],
    pub bias: [u64; 3],
    pub wtype: [i32; 3],
    pub rows: [i32; 3],
    pub count: i32,
    pub rope_hd: i32,
    pub rope_style: i32,
    pub cap: i32,
    pub kv: i32,
    pub inv_freq: u64,
    pub start_at: u64,
    pub kcache: u64,
    pub vcache: u64,
}

/// The rotary embedding and KV-cache store of [`Ops::rope_store`], fused into the q/k/v GEMV of
/// one token (see `GemvBatch` in kernels/gemv.cuh): q is rotated in place of its output, k and v go
/// straight into the caches (k's output buffer is not written).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FusedRope {
    pub inv_freq: u64,
    /// Device address of the i32 position.
    pub start_at: u64,
    /// Key and value caches of the layer.
    pub cache: [u64; 2],
    pub dims: AttnDims,
    pub interleaved: bool,
}

/// Whether decode can fuse the rotary embedding into the GEMV of these q, k and v matrices: all
/// tiled Q4_0 or none (one kernel computes them), and head_dim even, for tiled ones a multiple
/// of 32 (gemv_q4t pairs whole groups of 16 rows of a head).
pub(crate) fn rope_fusable(qkv: [&Mat; 3], head_dim: usize) -> bool {
    match qkv.map(|m| m.wtype == WType::Q4_0Tiled) {
        [false, false, false] => head_dim % 2 == 0,
        [true, true, true] => head_dim % 32 == 0,
        _ => false,
    }
}

/// Blocks for an element-wise kernel over `n` values (grid-stride beyond).
pub(super) fn blocks(n: usize) -> u32 {
    n.div_ceil(ELEMENTWISE_THREADS as usize).clamp(1, 8192) as u32
}

pub(super) fn int(v: usize) -> i32 {
    debug_assert!(v <= i32::MAX as usize, "{v} does not fit a kernel int");
    v as i32
}

/// Kernels, cuBLAS and the stream they run on.
pub(crate) struct Ops<'a> {
    pub k: &'a Kernels,
    pub blas: &'a Blas,
    pub stream: &'a Stream,
}

#[allow(clippy::too_many_arguments)]
impl Ops<'_> {
    /// Runs a cuBLAS product, timed under `HOIST_PROFILE` as `name`.
    unsafe fn gemm(&self, name: &str, g: &Gemm, batch: Option<Batch>) -> Result<(), GpuError> {
        let started = self.k.profile.as_ref().map(|_| std::time::Instant::now());
        // SAFETY: forwarded contract.
        unsafe { self.blas.gemm(g, batch)? };
        if let (Some(p), Some(t)) = (&self.k.profile, started) {
            self.stream.synchronize()?;
            p.add(name, t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// `dst[..n] = src[..n]` converted from `wtype` to `out` (dequantizing).
    pub(crate) unsafe fn convert(
        &self,
        src: u64,
        wtype: WType,
        dst: u64,
        out: Act,
        n: usize,
    ) -> Result<(), GpuError> {
        let (w, o, n64) = (wtype as i32, out as i32, n as i64);
        let mut a = args![src, w, dst, o, n64];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.convert,
                (blocks(n), 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// Rounds `x[..n]` to `act` in place; also stores it as `act` at `out_a` when non-zero.
    pub(crate) unsafe fn round_cast(
        &self,
        x: u64,
        out_a: u64,
        act: Act,
        n: usize,
    ) -> Result<(), GpuError> {
        let (act, n64) = (act as i32, n as i64);
        let mut a = args![x, out_a, act, n64];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.round_cast,
                (blocks(n), 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// `x[t] = table[ids[t]]` for `n` tokens (`ids`: i32 on the device).
    pub(crate) unsafe fn embed(
        &self,
        table: &Mat,
        ids: u64,
        n: usize,
        x: u64,
    ) -> Result<(), GpuError> {
        let (t, w, hidden) = (table.ptr, table.wtype as i32, int(table.cols));
        let mut a = args![t, w, ids, hidden, x];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.embed,
                (int(n) as u32, 1),
                ROW_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// RMS norm of `rows` rows of `cols` with f32 weight `w`, rounded to `act`.
    pub(crate) unsafe fn rms_norm(
        &self,
        x: u64,
        w: u64,
        out: u64,
        out_a: u64,
        rows: usize,
        cols: usize,
        eps: f32,
        act: Act,
    ) -> Result<(), GpuError> {
        // One float4 per thread where the row allows (a decode row is one round trip).
        let threads = (cols.div_ceil(4).next_power_of_two() as u32).clamp(32, 1024);
        let (cols, act) = (int(cols), act as i32);
        let mut a = args![x, w, out, out_a, cols, eps, act];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.rms_norm,
                (int(rows) as u32, 1),
                threads,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// `y[r] += bias` for `rows` rows of `cols`.
    pub(crate) unsafe fn add_bias(
        &self,
        y: u64,
        bias: u64,
        rows: usize,
        cols: usize,
    ) -> Result<(), GpuError> {
        let (r, c) = (int(rows), int(cols));
        let mut a = args![y, bias, r, c];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.add_bias,
                (blocks(rows * cols), 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// `h = silu(g) * u` over `n` values, rounded to `act` (also stored at `h_a` if non-zero).
    pub(crate) unsafe fn swiglu(
        &self,
        g: u64,
        u: u64,
        h: u64,
        h_a: u64,
        act: Act,
        n: usize,
    ) -> Result<(), GpuError> {
        let (act, n64) = (act as i32, n as i64);
        let mut a = args![g, u, h, h_a, act, n64];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.swiglu,
                (blocks(n), 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// Greedy decoding's hand-over on the device: `ids[0]` becomes the arg-max of the `vocab`
    /// f32 logits at `logits` (as [`crate::sampler::argmax`]) and `ids[1]` (the position) grows
    /// by one, so the next captured step runs on without the host.
    pub(crate) unsafe fn argmax_next(
        &self,
        logits: u64,
        vocab: usize,
        ids: u64,
    ) -> Result<(), GpuError> {
        let vocab = int(vocab);
        let mut a = args![logits, vocab, ids];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.argmax_next,
                (1, 1),
                ARGMAX_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// Rotary embedding of `n` tokens' q (in place) and k (into the key cache), v copied into
    /// the value cache, at positions `start..start + n` where `start` is the i32 at device
    /// address `start_at`. With `q_a` non-zero, the rotated q is also stored there in the
    /// cache's type (what [`Ops::attention_blas`] reads).
    pub(crate) unsafe fn rope_store(
        &self,
        qkv: [u64; 3],
        cache: [u64; 2],
        inv_freq: u64,
        n: usize,
        start_at: u64,
        dims: AttnDims,
        interleaved: bool,
        q_a: u64,
    ) -> Result<(), GpuError> {
        let [q, k, v] = qkv;
        let [kc, vc] = cache;
        let (heads, kvh, hd, cap, style, kv) = (
            int(dims.heads),
            int(dims.kv_heads),
            int(dims.head_dim),
            int(dims.capacity),
            i32::from(interleaved),
            dims.cache as i32,
        );
        let mut a = args![q, k, v, kc, vc, inv_freq, start_at, heads, kvh, hd, cap, style, kv, q_a];
        // Work items of one token: the rotated pairs, and (by the same threads) the v copies.
        let items =
            ((dims.heads + dims.kv_heads) * dims.head_dim / 2).max(dims.kv_heads * dims.head_dim);
        let per_token = items.div_ceil(ROW_THREADS as usize) as u32;
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.rope_store,
                (int(n) as u32, per_token),
                ROW_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

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
        let per_group = if hd % 4 == 0 { hd / 4 } else { hd };
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
    /// `start`, so a captured decode step serves every position.
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
        let mut a = args![
            q, kc, vc, part, start_at, heads, kvh, hd, cap, window, scale, counters, out, out_a,
            act, kv
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

    /// Up to three products with the same input `x` (f32, `cols` values) in one launch; with
    /// `accumulate`, added to what `y` holds. With `rope`, `outs` are q, k and v of one token.
    pub(crate) unsafe fn gemv(
        &self,
        outs: &[GemvOut<'_>],
        x: u64,
        accumulate: bool,
        rope: Option<FusedRope>,
    ) -> Result<(), GpuError> {
        assert!(
            (1..=3).contains(&outs.len()),
            "gemv takes one to three matrices"
        );
        let tiled = outs
            .iter()
            .filter(|o| o.w.wtype == WType::Q4_0Tiled)
            .count();
        if tiled > 0 && tiled < outs.len() {
            // Two kernels: one matrix at a time.
            assert!(
                rope.is_none(),
                "the fused rotary embedding takes q, k and v of one kind"
            );
            for o in outs {
                // SAFETY: forwarded contract.
                unsafe { self.gemv(std::slice::from_ref(o), x, accumulate, None)? };
            }
            return Ok(());
        }
        let cols = outs[0].w.cols;
        let mut b = GemvBatch {
            count: outs.len() as i32,
            ..Default::default()
        };
        if let Some(r) = rope {
            let d = r.dims;
            assert!(
                outs.len() == 3
                    && outs[0].w.rows == d.heads * d.head_dim
                    && outs[1].w.rows == d.kv_heads * d.head_dim
                    && outs[2].w.rows == d.kv_heads * d.head_dim
                    && rope_fusable([outs[0].w, outs[1].w, outs[2].w], d.head_dim)
                    && !accumulate,
                "the fused rotary embedding takes q, k and v that `rope_fusable` accepts"
            );
            b.rope_hd = int(d.head_dim);
            b.rope_style = i32::from(r.interleaved);
            b.cap = int(d.capacity);
            b.kv = d.cache as i32;
            (b.inv_freq, b.start_at) = (r.inv_freq, r.start_at);
            [b.kcache, b.vcache] = r.cache;
        }
        let mut total = 0;
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o.w.cols, cols, "batched GEMVs share their input width");
            b.w[i] = o.w.ptr;
            b.y[i] = o.y;
            b.bias[i] = o.bias;
            b.wtype[i] = o.w.wtype as i32;
            b.rows[i] = int(o.w.rows);
            // Each warp takes a pair of rows of one matrix.
            total += o.w.rows.div_ceil(2);
        }
        if tiled > 0 {
            // SAFETY: forwarded contract.
            return unsafe { self.gemv_q4t(outs, &b, x, accumulate) };
        }
        let quantized = outs.iter().any(|o| o.w.wtype.elem().is_none());
        let smem = self.staged_input_bytes(cols, quantized)?;
        let (cols, acc, stage_x) = (int(cols), i32::from(accumulate), i32::from(quantized));
        let mut a = args![b, x, cols, acc, stage_x];
        // A row pair per warp.
        let warps = self.gemv_warps(quantized);
        let grid = total.div_ceil(warps as usize) as u32;
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.gemv,
                (grid, 1),
                32 * warps,
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// `h = round_act(silu(gate·x) * (up·x))`.
    pub(crate) unsafe fn gemv_swiglu(
        &self,
        gate: &Mat,
        up: &Mat,
        x: u64,
        h: u64,
        act: Act,
    ) -> Result<(), GpuError> {
        if gate.wtype == WType::Q4_0Tiled || up.wtype == WType::Q4_0Tiled {
            assert!(
                gate.wtype == up.wtype,
                "gate and up are tiled together (see Builder::tile_q4_0)"
            );
            // SAFETY: forwarded contract.
            return unsafe { self.gemv_swiglu_q4t(gate, up, x, h, act) };
        }
        let quantized = gate.wtype.elem().is_none() || up.wtype.elem().is_none();
        let smem = self.staged_input_bytes(gate.cols, quantized)?;
        let (g, u, wg, wu, rows, cols, act, stage_x) = (
            gate.ptr,
            up.ptr,
            gate.wtype as i32,
            up.wtype as i32,
            int(gate.rows),
            int(gate.cols),
            act as i32,
            i32::from(quantized),
        );
        let mut a = args![g, u, wg, wu, x, h, rows, cols, act, stage_x];
        // Float weights: a block per row (its warps split the columns); quantized: a warp per
        // row, the block sharing the staged input.
        let warps = self.gemv_warps(quantized);
        let grid = if quantized {
            gate.rows.div_ceil(warps as usize)
        } else {
            gate.rows
        } as u32;
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.gemv_swiglu,
                (grid, 1),
                32 * warps,
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// Warps per block of a GEMV (see `GemvShape`).
    fn gemv_warps(&self, quantized: bool) -> u32 {
        if quantized {
            self.k.gemv_shape.quantized_warps
        } else {
            self.k.gemv_shape.warps
        }
    }

    /// Dynamic shared memory of a GEMV whose quantized weights read a staged input of `cols`
    /// values (0 when nothing is quantized).
    fn staged_input_bytes(&self, cols: usize, quantized: bool) -> Result<u32, GpuError> {
        if !quantized {
            return Ok(0);
        }
        // As `xs_index` in kernels/gemv.cu: XS_PAD floats of padding per QK values.
        let bytes = (cols + cols / QK * XS_PAD + XS_PAD) * 4;
        if bytes > self.k.attention_smem_bytes {
            return Err(GpuError::Unsupported(format!(
                "quantized rows of {cols} values do not fit the GPU's shared memory"
            )));
        }
        Ok(bytes as u32)
    }

    /// `y[n, rows] = beta·y + x_a[n, cols] · wᵀ` with `x_a` of type `act`. Weights of another
    /// type are first converted into `scratch` (`rows * cols` values of `act`).
    pub(crate) unsafe fn linear(
        &self,
        w: &Mat,
        x_a: u64,
        act: Act,
        n: usize,
        y: u64,
        beta: f32,
        scratch: u64,
    ) -> Result<(), GpuError> {
        let a = if w.wtype.elem() == Some(act.elem()) {
            w.ptr
        } else {
            assert_ne!(scratch, 0, "a conversion scratch buffer is needed");
            // SAFETY: scratch holds rows·cols values of act (the caller's contract).
            unsafe {
                if w.wtype == WType::Q4_0Tiled {
                    self.dequant_q4t(w, scratch, act)?
                } else {
                    self.convert(w.ptr, w.wtype, scratch, act, w.rows * w.cols)?
                }
            };
            scratch
        };
        let g = Gemm {
            trans_a: true,
            trans_b: false,
            m: w.rows,
            n,
            k: w.cols,
            a,
            a_type: act.elem(),
            lda: w.cols,
            b: x_a,
            b_type: act.elem(),
            ldb: w.cols,
            c: y,
            ldc: w.rows,
            alpha: 1.0,
            beta,
        };
        // SAFETY: the module's contract.
        unsafe { self.gemm("cublas linear", &g, None) }
    }
}

/// Attention geometry of one model and cache.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache holds.
    pub capacity: usize,
    /// Sliding window (0: none).
    pub window: usize,
    /// Element type of the KV cache: the activation type (16-bit models read half the bytes a
    /// key in decode attention).
    pub cache: Act,
}

impl AttnDims {
    pub(crate) fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }
}
