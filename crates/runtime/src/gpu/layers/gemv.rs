//! Decode's matrix-vector products on 16-bit, f32 and Q8_0/Q4_0 weights (the tiled Q4_0 ones
//! are in [`crate::gpu::q4_tiles`]). The same `unsafe` contract as [`super`].

use super::{int, rope_fusable, Act, FusedRope, GemvBatch, GemvOut, Mat, Ops, WType};
use crate::gpu::kernels::{QK, XS_PAD};
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
            gate.ptr(),
            up.ptr(),
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
}
