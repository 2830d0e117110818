//! Decode's matrix-vector products on 16-bit, f32 and block-quantized weights (the tiled Q4_0 ones
//! are in [`crate::gpu::q4_tiles`]). The same `unsafe` contract as [`super`].

use hoist_cuda::{DevSlice, DeviceBuf};

use super::{int, rope_fusable, Act, FusedRope, GemvBatch, GemvOut, Mat, Ops, WType};
use crate::gpu::module::args;
use crate::gpu::GpuError;

impl Ops<'_> {
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
        // Three kernels: float (gemv), block-quantized (gemv_q) and tiled Q4_0 (gemv_q4t).
        let kind = |w: WType| match w {
            WType::Q4_0Tiled => 2,
            w if w.elem().is_none() => 1,
            _ => 0,
        };
        if outs
            .iter()
            .any(|o| kind(o.w.wtype) != kind(outs[0].w.wtype))
        {
            // Kernels of two kinds: one matrix at a time.
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
            assert!(
                o.bias.is_empty() || o.bias.len() == o.w.rows,
                "bias of {} values for {} rows",
                o.bias.len(),
                o.w.rows
            );
            b.w[i] = o.w.ptr();
            b.y[i] = o.y;
            b.bias[i] = o.bias.ptr();
            b.wtype[i] = o.w.wtype as i32;
            b.rows[i] = int(o.w.rows);
            // Each warp takes a pair of rows of one matrix.
            total += o.w.rows.div_ceil(2);
        }
        if kind(outs[0].w.wtype) == 2 {
            // SAFETY: forwarded contract.
            return unsafe { self.gemv_q4t(outs, &b, x, accumulate) };
        }
        let quantized = kind(outs[0].w.wtype) == 1;
        let smem = self.staged_input_bytes(cols, quantized)?;
        let (cols, acc) = (int(cols), i32::from(accumulate));
        let mut a = args![b, x, cols, acc];
        // A row pair per warp.
        let warps = self.gemv_warps(quantized);
        let grid = total.div_ceil(warps as usize) as u32;
        let f = if quantized {
            self.k.gemv_q
        } else {
            self.k.gemv
        };
        // SAFETY: the module's contract.
        unsafe {
            self.k
                .launch(f, (grid, 1), 32 * warps, smem, self.stream, &mut a)
        }
    }

    /// `y_m[n, rows_m] = x[n, cols] · w_mᵀ` (added to what `y_m` holds with `accumulate`) for
    /// up to three matrices sharing their input: the products of a batched decode step (one
    /// token of each of `n` sequences). `x`: the f32 rows; `x_a`: the same rows as `act` (what
    /// cuBLAS reads; `x` itself for f32 models). Each weight is read once for all the rows
    /// where a kernel allows it: cuBLAS for weights of the activation type, the batched tiled
    /// GEMV for tiled Q4_0 (staging through `stage`, see [`Ops::gemv_q4t_rows`]); other types
    /// take one GEMV per row (their later rows mostly from L2).
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn linear_rows(
        &self,
        outs: &[(&Mat, u64)],
        x: u64,
        x_a: u64,
        act: Act,
        n: usize,
        accumulate: bool,
        stage: Option<&DeviceBuf>,
    ) -> Result<(), GpuError> {
        assert!(
            (1..=3).contains(&outs.len()),
            "linear_rows takes one to three matrices"
        );
        let mut tiled = [outs[0]; 3];
        let mut count = 0;
        for &(w, y) in outs {
            if w.wtype == WType::Q4_0Tiled {
                tiled[count] = (w, y);
                count += 1;
            } else if w.wtype.elem() == Some(act.elem()) {
                let beta = if accumulate { 1.0 } else { 0.0 };
                // SAFETY: forwarded contract; no conversion, so no scratch.
                unsafe { self.linear(w, x_a, act, n, y, beta, 0)? };
            } else {
                for r in 0..n {
                    let out = GemvOut {
                        w,
                        y: y + (r * w.rows * 4) as u64,
                        bias: DevSlice::empty(),
                    };
                    let row = x + (r * w.cols * 4) as u64;
                    // SAFETY: forwarded contract: row r of x and of y.
                    unsafe { self.gemv(&[out], row, accumulate, None)? };
                }
            }
        }
        if count > 0 {
            let Some(stage) = stage else {
                unreachable!("models with tiled weights give their sessions a scratch buffer")
            };
            // SAFETY: forwarded contract.
            unsafe { self.gemv_q4t_rows(&tiled[..count], x, n, accumulate, stage)? };
        }
        Ok(())
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
        let both = gate.wtype.elem().is_none() && up.wtype.elem().is_none();
        let smem = self.staged_input_bytes(gate.cols, quantized)?;
        let (g, u, wg, wu, rows, cols, act, stage_x) = (
            gate.ptr(),
            up.ptr(),
            gate.wtype as i32,
            up.wtype as i32,
            int(gate.rows),
            int(gate.cols),
            act as i32,
            i32::from(quantized),
        );
        let warps = self.gemv_warps(quantized);
        if both {
            // gemv_swiglu_q: a row of both per warp, on at most the blocks resident at once.
            let f = self.k.gemv_swiglu_q;
            let grid = (gate.rows.div_ceil(warps as usize) as u32).min(self.k.resident_blocks(
                f,
                32 * warps,
                smem,
            )?);
            let mut a = args![g, u, wg, wu, x, h, rows, cols, act];
            // SAFETY: the module's contract.
            return unsafe {
                self.k
                    .launch(f, (grid, 1), 32 * warps, smem, self.stream, &mut a)
            };
        }
        // gemv_swiglu. Float weights: a block per row (its warps split the columns); one of
        // them quantized: a warp per row, the block sharing the staged input.
        let grid = if quantized {
            gate.rows.div_ceil(warps as usize)
        } else {
            gate.rows
        } as u32;
        let mut a = args![g, u, wg, wu, x, h, rows, cols, act, stage_x];
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

    /// Dynamic shared memory of a GEMV whose quantized weights read the input quantized into
    /// shared memory (`xq_bytes` in kernels/quant.cuh: int16 values, a scale per 32, a sum per
    /// 16); 0 when nothing is quantized.
    pub(super) fn staged_input_bytes(&self, cols: usize, quantized: bool) -> Result<u32, GpuError> {
        if !quantized {
            return Ok(0);
        }
        assert!(
            cols.is_multiple_of(32),
            "quantized rows are whole 32-value blocks ({cols})"
        );
        let bytes = 2 * cols + cols / 8 + cols / 4;
        if bytes > self.k.attention_smem_bytes {
            return Err(GpuError::Unsupported(format!(
                "quantized rows of {cols} values do not fit the GPU's shared memory"
            )));
        }
        Ok(bytes as u32)
    }
}
