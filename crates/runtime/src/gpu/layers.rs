//! The shared layers: typed wrappers around each kernel launch and cuBLAS product, used by
//! every architecture file.
//!
//! Every method is `unsafe` for one reason, stated once here: the arguments are device
//! addresses, and the caller guarantees that each is live and large enough for the counts
//! given (the model and session size their buffers for the largest counts they pass).
//! Weights come as [`DevSlice`] views (a matrix's bytes, an f32 vector's values): their
//! lengths are checked against the counts here before a launch, so that part of the contract
//! is asserted rather than assumed.

mod attention;
mod gemv;
mod moe;

pub(crate) use moe::{MoeFfn, Routes, SharedFfn};

use hoist_cuda::{DevSlice, Stream};
use hoist_format::{DType, GgmlType};

use super::blas::{Batch, Blas, Elem, Gemm};
use super::kernels::DEQUANT_THREADS;
use super::module::{args, Kernels, ARGMAX_THREADS, ELEMENTWISE_THREADS, ROW_THREADS};
use super::GpuError;

/// Weight element types the kernels read: the discriminants are the kernels' type codes, passed
/// to them as `-DW_F32=0`… (see `kernels/mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)] // ggml's names
pub(crate) enum WType {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    /// Q4_0 repacked on the device into tiles for the tensor-core GEMVs (see kernels/q4_tiles.cu);
    /// never a file's type.
    Q4_0Tiled = 5,
    Q4_1 = 6,
    Q5_0 = 7,
    Q5_1 = 8,
    Q2_K = 9,
    Q3_K = 10,
    Q4_K = 11,
    Q5_K = 12,
    Q6_K = 13,
    IQ4_NL = 14,
    IQ4_XS = 15,
}

/// Every ggml block type the kernels read directly (kernels/quant.cuh), with its file type.
pub(crate) const BLOCK_TYPES: [(WType, GgmlType); 12] = [
    (WType::Q8_0, GgmlType::Q8_0),
    (WType::Q4_0, GgmlType::Q4_0),
    (WType::Q4_1, GgmlType::Q4_1),
    (WType::Q5_0, GgmlType::Q5_0),
    (WType::Q5_1, GgmlType::Q5_1),
    (WType::Q2_K, GgmlType::Q2_K),
    (WType::Q3_K, GgmlType::Q3_K),
    (WType::Q4_K, GgmlType::Q4_K),
    (WType::Q5_K, GgmlType::Q5_K),
    (WType::Q6_K, GgmlType::Q6_K),
    (WType::IQ4_NL, GgmlType::IQ4_NL),
    (WType::IQ4_XS, GgmlType::IQ4_XS),
];

impl WType {
    /// The kernels' type for a checkpoint dtype, if they read it.
    pub(crate) fn of(d: DType) -> Option<WType> {
        Some(match d {
            DType::F32 | DType::Ggml(GgmlType::F32) => WType::F32,
            DType::F16 | DType::Ggml(GgmlType::F16) => WType::F16,
            DType::BF16 | DType::Ggml(GgmlType::BF16) => WType::BF16,
            DType::Ggml(g) => BLOCK_TYPES.iter().find(|(_, t)| *t == g)?.0,
            _ => return None,
        })
    }

    /// The file's block type of a block-quantized type (tiled Q4_0: Q4_0); `None` for floats.
    pub(crate) fn ggml(self) -> Option<GgmlType> {
        let w = if self == WType::Q4_0Tiled {
            WType::Q4_0
        } else {
            self
        };
        BLOCK_TYPES.iter().find(|(t, _)| *t == w).map(|(_, g)| *g)
    }

    /// Values per block (1 for the float types).
    pub(crate) fn block_values(self) -> usize {
        self.ggml()
            .and_then(|g| g.block())
            .map_or(1, |(values, _)| values as usize)
    }

    /// The float type cuBLAS can read directly, if any.
    pub(crate) fn elem(self) -> Option<Elem> {
        match self {
            WType::F32 => Some(Elem::F32),
            WType::F16 => Some(Elem::F16),
            WType::BF16 => Some(Elem::BF16),
            _ => None,
        }
    }

    /// Bytes of `elements` values (quantized: `elements` is a multiple of
    /// [`WType::block_values`]).
    pub(crate) fn bytes(self, elements: usize) -> usize {
        match self {
            WType::F32 => elements * 4,
            WType::F16 | WType::BF16 => elements * 2,
            // Every other type is a block type (tiled Q4_0 keeps Q4_0's bytes).
            _ => {
                let (values, bytes) = self.ggml().and_then(|g| g.block()).unwrap_or((1, 0));
                elements / values as usize * bytes as usize
            }
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
    /// The matrix's `wtype.bytes(rows * cols)` bytes.
    pub data: DevSlice<u8>,
    pub wtype: WType,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub(crate) fn bytes(&self) -> usize {
        self.wtype.bytes(self.rows * self.cols)
    }

    /// The device address of its first byte, for a kernel argument.
    pub(crate) fn ptr(&self) -> u64 {
        self.data.ptr()
    }
}

/// One GEMV target: `y = W·x (+ bias)`.
#[derive(Clone, Copy)]
pub(crate) struct GemvOut<'a> {
    pub w: &'a Mat,
    pub y: u64,
    /// f32 bias of `w.rows` values, or empty.
    pub bias: DevSlice<f32>,
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
/// of one kernel's kind (16-bit/f32, block-quantized, or tiled Q4_0: one launch computes them),
/// and head_dim even, for tiled ones a multiple of 32 (gemv_q4t pairs whole groups of 16 rows
/// of a head).
pub(crate) fn rope_fusable(qkv: [&Mat; 3], head_dim: usize) -> bool {
    let kind = |m: &Mat| (m.wtype == WType::Q4_0Tiled, m.wtype.elem().is_none());
    if qkv.iter().any(|m| kind(m) != kind(qkv[0])) {
        return false;
    }
    if qkv[0].wtype == WType::Q4_0Tiled {
        head_dim.is_multiple_of(32)
    } else {
        head_dim.is_multiple_of(2)
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

    /// `dst[..n] = src[..n]` converted from `wtype` to `out` (dequantizing: `n` whole blocks,
    /// a thread per 32-value slice).
    pub(crate) unsafe fn convert(
        &self,
        src: u64,
        wtype: WType,
        dst: u64,
        out: Act,
        n: usize,
    ) -> Result<(), GpuError> {
        let block = wtype.block_values();
        assert!(
            n.is_multiple_of(block),
            "{n} values of {wtype:?} are not whole blocks"
        );
        // Quantized: a block of DEQUANT_THREADS threads per as many 32-value slices.
        let (grid, threads) = if block > 1 {
            let slices = n / 32;
            let grid = slices.div_ceil(DEQUANT_THREADS as usize).clamp(1, 8192) as u32;
            (grid, DEQUANT_THREADS)
        } else {
            (blocks(n), ELEMENTWISE_THREADS)
        };
        let (w, o, n64) = (wtype as i32, out as i32, n as i64);
        let mut a = args![src, w, dst, o, n64];
        // SAFETY: the module's contract.
        unsafe {
            self.k
                .launch(self.k.convert, (grid, 1), threads, 0, self.stream, &mut a)
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
        let (t, w, hidden) = (table.ptr(), table.wtype as i32, int(table.cols));
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

    /// RMS norm of `rows` rows of `cols` with f32 weight `w` (`cols` values), rounded to
    /// `act`.
    pub(crate) unsafe fn rms_norm(
        &self,
        x: u64,
        w: DevSlice<f32>,
        out: u64,
        out_a: u64,
        rows: usize,
        cols: usize,
        eps: f32,
        act: Act,
    ) -> Result<(), GpuError> {
        // One float4 per thread where the row allows (a decode row is one round trip).
        let threads = (cols.div_ceil(4).next_power_of_two() as u32).clamp(32, 1024);
        assert_eq!(
            w.len(),
            cols,
            "RMS norm weight of {} values for rows of {cols}",
            w.len()
        );
        let (w, cols, act) = (w.ptr(), int(cols), act as i32);
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

    /// `y[r] += bias` for `rows` rows of `cols` (`bias`: `cols` values).
    pub(crate) unsafe fn add_bias(
        &self,
        y: u64,
        bias: DevSlice<f32>,
        rows: usize,
        cols: usize,
    ) -> Result<(), GpuError> {
        assert_eq!(
            bias.len(),
            cols,
            "bias of {} values for rows of {cols}",
            bias.len()
        );
        let (bias, r, c) = (bias.ptr(), int(rows), int(cols));
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
    /// cache's type (what [`Ops::attention_blas`] reads). With `rows` (a batched decode step),
    /// token `t` is at the i32 position `start_at[t]`, into the caches `rows` names for it
    /// (`cache` unused).
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
        rows: Option<KvRows>,
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
        let (table, layer) = rows.map_or((0, 0), |r| (r.table, int(r.layer)));
        let mut a = args![
            q, k, v, kc, vc, inv_freq, start_at, heads, kvh, hd, cap, style, kv, q_a, table, layer
        ];
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
            w.ptr()
        } else {
            assert_ne!(scratch, 0, "a conversion scratch buffer is needed");
            // SAFETY: scratch holds rows·cols values of act (the caller's contract).
            unsafe {
                if w.wtype == WType::Q4_0Tiled {
                    self.dequant_q4t(w, scratch, act)?
                } else {
                    self.convert(w.ptr(), w.wtype, scratch, act, w.rows * w.cols)?
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

/// The rows of a batched decode step as [`Ops::rope_store`] and [`Ops::attention`] read them
/// (`kv_row` in kernels/common.cuh): a device table of three u64s a row (the sequence's key and
/// value caches, then their capacity), and the layer whose caches to use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvRows {
    pub table: u64,
    pub layer: usize,
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
