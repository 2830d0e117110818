//! Host side of `kernels/q4_tiles.cu`: Q4_0 matrices repacked on the device into tiles at load time,
//! and the tensor-core GEMVs and dequantization that read them (see that file for the layout
//! and why). The same `unsafe` contract as `layers.rs`.

use hoist_cuda::DeviceBuf;

use super::kernels::{Q4T_COLS, QK};
use super::layers::{blocks, int, Act, GemvBatch, GemvOut, Mat, Ops, WType};
use super::module::{args, Kernels, ELEMENTWISE_THREADS};
use super::GpuError;

/// Shared memory a warp of a tiled GEMV stages per tile of 64 input values: two blocks' f16
/// fragments (2 × 64 bytes) and their two (K, 2^e) pairs.
const Q4T_TILE_SMEM_BYTES: usize = 144;

/// Bytes of the inputs one batched tiled GEMV stages ([`Ops::gemv_q4t_rows`]) for rows of
/// `cols` values: per 32-value block and input, four lanes' 16 bytes of B fragments, then a
/// (2^e, K) pair of f32.
pub(crate) fn q4t_stage_bytes(cols: usize) -> usize {
    cols / QK * Q4T_COLS * (64 + 8)
}

/// Whether `m` can be tiled: Q4_0 with rows in groups of 16 and 64-value tiles, on a GPU with
/// the tensor-core products (sm_80+).
pub(crate) fn tileable(k: &Kernels, m: &Mat) -> bool {
    m.wtype == WType::Q4_0
        && m.rows.is_multiple_of(16)
        && m.cols.is_multiple_of(64)
        && k.tensor_cores
}

#[allow(clippy::too_many_arguments)]
impl Ops<'_> {
    /// Repacks the Q4_0 matrix `m` in place into tiles (`tileable` must hold) through
    /// `scratch` (at least `m.bytes()`), and marks it tiled. Queued on the stream: `scratch`
    /// must outlive the work (synchronize before dropping it).
    pub(crate) unsafe fn tile_q4_0(
        &self,
        m: &mut Mat,
        scratch: &DeviceBuf,
    ) -> Result<(), GpuError> {
        assert!(
            m.wtype == WType::Q4_0 && m.rows.is_multiple_of(16) && m.cols.is_multiple_of(64),
            "{m:?} cannot be tiled"
        );
        assert!(
            m.data.len() >= m.bytes() && scratch.len() >= m.bytes(),
            "{m:?} and its scratch hold its bytes"
        );
        // SAFETY: m is a live matrix (the caller's contract) whose view holds m.bytes() bytes,
        // distinct from scratch, which holds that many (both asserted above).
        unsafe { scratch.copy_from_device_async(self.stream, m.ptr(), m.bytes())? };
        let (src, dst, rows, cols) = (scratch.ptr(), m.ptr(), int(m.rows), int(m.cols));
        let mut a = args![src, dst, rows, cols];
        let grid = blocks(m.rows * m.cols / 32);
        // SAFETY: the module's contract; the kernel reads scratch and writes m, both m.bytes().
        unsafe {
            self.k.launch(
                self.k.q4_tile_repack,
                (grid, 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )?
        };
        m.wtype = WType::Q4_0Tiled;
        Ok(())
    }

    /// `dst` = the tiled matrix `m` dequantized, as `out` (row-major).
    pub(super) unsafe fn dequant_q4t(&self, m: &Mat, dst: u64, out: Act) -> Result<(), GpuError> {
        let (src, rows, cols, o) = (m.ptr(), int(m.rows), int(m.cols), out as i32);
        let mut a = args![src, dst, rows, cols, o];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.q4_tile_dequant,
                (blocks(m.rows * m.cols / 32), 1),
                ELEMENTWISE_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// [`Ops::gemv`] for tiled matrices, `b` filled in by it: a block per row group, or with
    /// the rotary embedding fused in, per rotation pair of row groups.
    pub(super) unsafe fn gemv_q4t(
        &self,
        outs: &[GemvOut<'_>],
        b: &GemvBatch,
        x: u64,
        accumulate: bool,
    ) -> Result<(), GpuError> {
        let cols = outs[0].w.cols;
        let rows_a_block = if b.rope_hd != 0 { 32 } else { 16 };
        let mut blocks = 0;
        for o in outs {
            assert!(
                o.w.wtype == WType::Q4_0Tiled && o.w.cols == cols && o.w.rows % rows_a_block == 0,
                "batched tiled GEMVs share their input width"
            );
            blocks += o.w.rows / rows_a_block;
        }
        let smem = self.q4t_smem(cols)?;
        let (b, cols, acc) = (*b, int(cols), i32::from(accumulate));
        let mut a = args![b, x, cols, acc];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.gemv_q4t,
                (blocks as u32, 1),
                32 * self.q4t_warps(),
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// [`Ops::gemv_swiglu`] for tiled gate and up matrices: a block per 16 rows of both.
    pub(super) unsafe fn gemv_swiglu_q4t(
        &self,
        gate: &Mat,
        up: &Mat,
        x: u64,
        h: u64,
        act: Act,
    ) -> Result<(), GpuError> {
        assert!(
            gate.rows == up.rows && gate.cols == up.cols && gate.rows.is_multiple_of(16),
            "gate and up have one shape"
        );
        let smem = self.q4t_smem(gate.cols)?;
        let (g, u, rows, cols, act) = (
            gate.ptr(),
            up.ptr(),
            int(gate.rows),
            int(gate.cols),
            act as i32,
        );
        let mut a = args![g, u, x, h, rows, cols, act];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.gemv_swiglu_q4t,
                ((gate.rows / 16) as u32, 1),
                32 * self.q4t_warps(),
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// `y_m[n, rows] = x[n, cols] · w_mᵀ` (added to what `y_m` holds with `accumulate`) for
    /// tiled matrices sharing their input `x` (`n` rows of f32): a batched decode step, each
    /// weight tile read once per [`Q4T_COLS`] rows. The rows are staged into `stage` (at least
    /// [`q4t_stage_bytes`]) once per group for all the matrices.
    pub(crate) unsafe fn gemv_q4t_rows(
        &self,
        outs: &[(&Mat, u64)],
        x: u64,
        n: usize,
        accumulate: bool,
        stage: &DeviceBuf,
    ) -> Result<(), GpuError> {
        let Some((first, _)) = outs.first() else {
            return Ok(());
        };
        let cols = first.cols;
        for (w, _) in outs {
            assert!(
                w.wtype == WType::Q4_0Tiled && w.cols == cols && w.rows.is_multiple_of(16),
                "batched tiled GEMVs share their input width ({w:?})"
            );
        }
        let staged = q4t_stage_bytes(cols);
        assert!(
            stage.len() >= staged,
            "{} bytes of staging for rows of {cols} values, {staged} needed",
            stage.len()
        );
        // The fragments, then the (2^e, K) pairs.
        let (frag, ks) = (
            stage.ptr(),
            stage.ptr() + (cols / QK * Q4T_COLS * 64) as u64,
        );
        let (cols_i, acc) = (int(cols), i32::from(accumulate));
        let mut c0 = 0;
        while c0 < n {
            let count = Q4T_COLS.min(n - c0);
            let (xs, count_i) = (x + (c0 * cols * 4) as u64, int(count));
            let mut a = args![xs, cols_i, count_i, frag, ks];
            // SAFETY: the module's contract: x holds n rows of cols f32, stage `staged` bytes.
            unsafe {
                self.k.launch(
                    self.k.q4t_stage_cols,
                    (blocks(cols / QK * Q4T_COLS), 1),
                    ELEMENTWISE_THREADS,
                    0,
                    self.stream,
                    &mut a,
                )?
            };
            for (w, y) in outs {
                let (wp, rows, ys) = (w.ptr(), int(w.rows), y + (c0 * w.rows * 4) as u64);
                let mut a = args![wp, rows, cols_i, frag, ks, count_i, ys, acc];
                // SAFETY: the module's contract: y holds n rows of w.rows f32.
                unsafe {
                    self.k.launch(
                        self.k.gemv_q4t_cols,
                        ((w.rows / 16) as u32, 1),
                        32 * self.q4t_warps(),
                        0,
                        self.stream,
                        &mut a,
                    )?
                };
            }
            c0 += count;
        }
        Ok(())
    }

    /// Warps per block of the tiled GEMVs (`Q4T_WARPS` in kernels/q4_tiles.cu).
    fn q4t_warps(&self) -> u32 {
        self.k.gemv_shape.q4t_warps
    }

    /// Dynamic shared memory of a tiled GEMV over rows of `cols` values: each warp stages the
    /// input of its share of the tiles (as `q4t_per_warp` in kernels/q4_tiles.cu).
    fn q4t_smem(&self, cols: usize) -> Result<u32, GpuError> {
        let warps = self.q4t_warps() as usize;
        let bytes = warps * (cols / 64).div_ceil(warps) * Q4T_TILE_SMEM_BYTES;
        if bytes > self.k.q4t_smem_bytes {
            return Err(GpuError::Unsupported(format!(
                "tiled Q4_0 rows of {cols} values do not fit the GPU's shared memory"
            )));
        }
        Ok(bytes as u32)
    }
}
