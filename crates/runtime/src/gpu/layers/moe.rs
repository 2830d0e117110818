//! Mixture-of-experts launches (kernels/moe.cu): the router's top-k, decode's products over the
//! chosen experts only, prefill's gather and scatter. The same `unsafe` contract as [`super`].

use hoist_cuda::DeviceBuf;

use super::{int, Act, Batch, Gemm, Mat, Ops, WType};
use crate::gpu::module::{args, MOE_MAX_TOP_K, ROW_THREADS};
use crate::gpu::GpuError;

/// A shared expert every token goes through, scaled by `sigmoid(gate_inp · x)` (Qwen2-MoE).
pub(crate) struct SharedFfn {
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
    /// The sigmoid gate's weight, `[1, hidden]`.
    pub gate_inp: Mat,
}

/// One sparse layer's feed-forward block on the device.
pub(crate) struct MoeFfn {
    /// `[experts, hidden]`.
    pub router: Mat,
    /// Each expert's gate, up and down (views into the loaded weights).
    pub experts: Vec<[Mat; 3]>,
    /// The experts' gate, up and down addresses (`u64[experts]` each, in that order), which
    /// decode's kernels index by the chosen ids.
    pub tables: DeviceBuf,
    pub shared: Option<SharedFfn>,
    /// Experts per token.
    pub top_k: usize,
    /// Whether the top-k weights are divided by their sum.
    pub norm_topk_prob: bool,
}

impl MoeFfn {
    /// Expert width.
    pub(crate) fn width(&self) -> usize {
        self.experts.first().map_or(0, |e| e[0].rows)
    }

    /// Slots of a decode step: the chosen experts, and the shared one.
    pub(crate) fn slots(&self) -> usize {
        self.top_k + usize::from(self.shared.is_some())
    }

    /// The widest of the expert and shared-expert widths (rows of the slots' work buffer).
    pub(crate) fn slot_stride(&self) -> usize {
        self.width()
            .max(self.shared.as_ref().map_or(0, |s| s.gate.rows))
    }

    /// The kernels' view of the layer's matrices.
    fn mats(&self) -> MoeMats {
        let e = self.experts.len() as u64;
        let first = &self.experts[0];
        let mut m = MoeMats {
            gate: self.tables.ptr(),
            up: self.tables.ptr() + 8 * e,
            down: self.tables.ptr() + 16 * e,
            wtype: first.map(|m| m.wtype as i32),
            rows: int(first[0].rows),
            ..Default::default()
        };
        if let Some(s) = &self.shared {
            (m.sgate, m.sup, m.sdown) = (s.gate.ptr(), s.up.ptr(), s.down.ptr());
            m.swtype = [s.gate.wtype as i32, s.up.wtype as i32, s.down.wtype as i32];
            m.srows = int(s.gate.rows);
        }
        m
    }
}

/// One projection of every expert, at one stride in memory (a GGUF stacked tensor, or per-expert
/// tensors loaded one after another): what one strided batched cuBLAS product multiplies.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided {
    /// Expert 0's matrix (every expert's shape and type).
    pub first: Mat,
    /// Bytes from one expert's matrix to the next.
    pub stride_bytes: usize,
}

impl MoeFfn {
    /// Projection `p` (0 gate, 1 up, 2 down) of every expert, if the experts lie at one stride
    /// and share the first's type.
    pub(crate) fn strided(&self, p: usize) -> Option<Strided> {
        let first = self.experts.first()?[p];
        let stride = match self.experts.get(1) {
            Some(next) => next[p].ptr().checked_sub(first.ptr())? as usize,
            None => first.bytes(),
        };
        let uniform = self.experts.iter().enumerate().all(|(e, x)| {
            x[p].wtype == first.wtype && x[p].ptr() == first.ptr() + (e * stride) as u64
        });
        (uniform && stride >= first.bytes()).then_some(Strided {
            first,
            stride_bytes: stride,
        })
    }

    /// Whether prefill can run the experts as three strided batched products in the
    /// activation type `act`: each projection at one stride, of `act` itself (read in place,
    /// the stride a whole number of elements) or contiguous (converted to `act` in one launch).
    pub(crate) fn batchable(&self, act: Act) -> bool {
        (0..3).all(|p| {
            self.strided(p).is_some_and(|s| {
                if s.first.wtype.elem() == Some(act.elem()) {
                    s.stride_bytes.is_multiple_of(act.elem().bytes())
                } else {
                    s.stride_bytes == s.first.bytes()
                }
            })
        })
    }

    /// Values of `act` a batched prefill converts at once (every expert's matrix of the
    /// largest projection not of `act`); 0 when none is converted or prefill is not batched.
    pub(crate) fn batched_scratch_values(&self, act: Act) -> usize {
        if !self.batchable(act) {
            return 0;
        }
        (0..3)
            .filter_map(|p| self.strided(p))
            .filter(|s| s.first.wtype.elem() != Some(act.elem()))
            .map(|s| self.experts.len() * s.first.rows * s.first.cols)
            .max()
            .unwrap_or(0)
    }
}

/// One projection of every expert as prefill's products read it ([`Ops::experts_in_act`]):
/// expert e's matrix in the activation type at `at + e · stride` elements.
pub(crate) struct ExpertsInAct {
    /// Expert 0's matrix as the file has it (shape).
    first: Mat,
    at: u64,
    stride: usize,
}

/// #[repr(C)] twin of `MoeMats` in kernels/moe.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MoeMats {
    gate: u64,
    up: u64,
    down: u64,
    wtype: [i32; 3],
    rows: i32,
    sgate: u64,
    sup: u64,
    sdown: u64,
    swtype: [i32; 3],
    srows: i32,
}

/// Device buffers of one routing: `ids` `[tokens, k]` i32, `weights` `[tokens, k + 1]` f32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Routes {
    pub ids: u64,
    pub weights: u64,
}

#[allow(clippy::too_many_arguments)]
impl Ops<'_> {
    /// Routes `n` tokens: softmax over the `[n, experts]` f32 `logits`, top-k, renormalised as
    /// `ffn` says, into `routes`; with the shared expert, its gate from the `[n]` f32
    /// `shared_logits`.
    pub(crate) unsafe fn moe_route(
        &self,
        ffn: &MoeFfn,
        logits: u64,
        shared_logits: u64,
        n: usize,
        routes: Routes,
    ) -> Result<(), GpuError> {
        assert!(
            (1..=MOE_MAX_TOP_K).contains(&ffn.top_k) && ffn.top_k <= ffn.experts.len(),
            "top-k checked at load"
        );
        let (experts, k, norm) = (
            int(ffn.experts.len()),
            int(ffn.top_k),
            i32::from(ffn.norm_topk_prob),
        );
        let shared = if ffn.shared.is_some() {
            shared_logits
        } else {
            0
        };
        let (ids, w) = (routes.ids, routes.weights);
        let mut a = args![logits, experts, k, norm, shared, ids, w];
        // A warp per token, its probabilities in shared memory.
        let smem = self.checked_smem(ffn.experts.len() * 4)?;
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_route,
                (int(n) as u32, 1),
                32,
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// Decode's chosen experts for one token: `h[s·stride ..]` = SwiGLU of slot `s` on `x`
    /// (f32, hidden values), then `y += Σ weights[s] · down_s · h[s·stride ..]` (`slots` and
    /// `stride`: [`MoeFfn::slots`], [`MoeFfn::slot_stride`]).
    pub(crate) unsafe fn moe_decode(
        &self,
        ffn: &MoeFfn,
        routes: Routes,
        x: u64,
        h: u64,
        y: u64,
        act: Act,
    ) -> Result<(), GpuError> {
        let m = ffn.mats();
        let slots = ffn.slots();
        let hidden = ffn.router.cols;
        let (k, stride, act, cols, hid, nslots) = (
            int(ffn.top_k),
            int(ffn.slot_stride()),
            act as i32,
            int(hidden),
            int(hidden),
            int(slots),
        );
        let quant = |t: WType| t.elem().is_none();
        let expert_types = ffn.experts[0].map(|m| m.wtype);
        let shared_types = ffn
            .shared
            .as_ref()
            .map(|s| [s.gate.wtype, s.up.wtype, s.down.wtype]);
        let warps = self.k.gemv_shape.quantized_warps;
        let ids = routes.ids;
        // Gate and up: input `hidden` values; a block row per slot, sized for the widest.
        let staged = expert_types[..2]
            .iter()
            .chain(shared_types.iter().flat_map(|t| &t[..2]));
        let smem = self.staged_input_bytes(hidden, staged.copied().any(quant))?;
        let grid = self.moe_grid(self.k.moe_swiglu, ffn.slot_stride(), slots, warps, smem)?;
        let mut a = args![m, ids, k, x, cols, h, stride, act];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_swiglu,
                (grid, slots as u32),
                32 * warps,
                smem,
                self.stream,
                &mut a,
            )?
        };
        // Down over every slot at once: each block stages every quantized slot's input, at
        // `moe_staged_at`'s offsets (k regions of the expert width rounded to 16 bytes, then
        // the shared expert's).
        let mut smem = 0;
        if quant(expert_types[2]) {
            self.staged_input_bytes(ffn.width(), true)?;
            smem = ffn.top_k * self.staged_region(ffn.width());
        }
        if let (Some(t), Some(s)) = (shared_types, &ffn.shared) {
            if quant(t[2]) {
                self.staged_input_bytes(s.down.cols, true)?;
                smem =
                    ffn.top_k * self.staged_region(ffn.width()) + self.staged_region(s.down.cols);
            }
        }
        let smem = self.checked_smem(smem)?;
        let grid = (hidden.div_ceil(warps as usize) as u32).min(self.k.resident_blocks(
            self.k.moe_down,
            32 * warps,
            smem,
        )?);
        let w = routes.weights;
        let mut a = args![m, ids, k, nslots, h, stride, hid, w, y];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_down,
                (grid, 1),
                32 * warps,
                smem,
                self.stream,
                &mut a,
            )
        }
    }

    /// `moe_staged_at`'s region of one slot of `cols` values: `xq_bytes(cols)` rounded up to 16
    /// bytes (whatever `cols`: a float slot's region is counted, never staged).
    fn staged_region(&self, cols: usize) -> usize {
        (2 * cols + cols / 8 + cols / 4).next_multiple_of(16)
    }

    /// `bytes` of dynamic shared memory, if a block may have them.
    fn checked_smem(&self, bytes: usize) -> Result<u32, GpuError> {
        if bytes > self.k.attention_smem_bytes {
            return Err(GpuError::Unsupported(format!(
                "the chosen experts' inputs need {bytes} bytes of shared memory, more than the GPU's {} a block",
                self.k.attention_smem_bytes
            )));
        }
        Ok(bytes as u32)
    }

    /// Blocks per slot of `moe_swiglu`: a row per warp, at most what is resident
    /// at once over all slots (each block walks its rows gridDim.x · warps apart).
    fn moe_grid(
        &self,
        f: hoist_cuda::Function,
        rows: usize,
        slots: usize,
        warps: u32,
        smem: u32,
    ) -> Result<u32, GpuError> {
        let resident = self.k.resident_blocks(f, 32 * warps, smem)? as usize;
        Ok(rows
            .div_ceil(warps as usize)
            .min(resident.div_ceil(slots))
            .max(1) as u32)
    }

    /// Projection `p` of every expert in the activation type `act`, for prefill's products: the
    /// weights themselves, or converted into `scratch` in one launch (every expert's:
    /// [`MoeFfn::batched_scratch_values`]). The experts must be [`MoeFfn::batchable`].
    pub(crate) unsafe fn experts_in_act(
        &self,
        ffn: &MoeFfn,
        p: usize,
        act: Act,
        scratch: u64,
    ) -> Result<ExpertsInAct, GpuError> {
        let Some(s) = ffn.strided(p).filter(|_| ffn.batchable(act)) else {
            unreachable!("batched products only for batchable experts")
        };
        let (w, experts) = (s.first, ffn.experts.len());
        if w.wtype.elem() == Some(act.elem()) {
            return Ok(ExpertsInAct {
                first: w,
                at: w.ptr(),
                stride: s.stride_bytes / act.elem().bytes(),
            });
        }
        assert_ne!(scratch, 0, "a conversion scratch buffer is needed");
        // SAFETY: the experts are contiguous (batchable), scratch holds them all in act.
        unsafe { self.convert(w.ptr(), w.wtype, scratch, act, experts * w.rows * w.cols)? };
        Ok(ExpertsInAct {
            first: w,
            at: scratch,
            stride: w.rows * w.cols,
        })
    }

    /// Prefill's products of `experts` experts from `first` on, one `[rows, ·]` block of `x_a`
    /// each: `y[e][rows, out] = x_a[e][rows, in] · W_eᵀ` (in one strided batched product).
    pub(crate) unsafe fn experts_linear(
        &self,
        w: &ExpertsInAct,
        (first, experts): (usize, usize),
        x_a: u64,
        act: Act,
        rows: usize,
        y: u64,
    ) -> Result<(), GpuError> {
        let m = &w.first;
        let g = Gemm {
            trans_a: true,
            trans_b: false,
            m: m.rows,
            n: rows,
            k: m.cols,
            a: w.at + (first * w.stride * act.elem().bytes()) as u64,
            a_type: act.elem(),
            lda: m.cols,
            b: x_a,
            b_type: act.elem(),
            ldb: m.cols,
            c: y,
            ldc: m.rows,
            alpha: 1.0,
            beta: 0.0,
        };
        let batch = Batch {
            count: int(experts),
            stride_a: w.stride as i64,
            stride_b: (rows * m.cols) as i64,
            stride_c: (rows * m.rows) as i64,
        };
        // SAFETY: the module's contract.
        unsafe { self.gemm("cublas experts", &g, Some(batch)) }
    }

    /// Prefill's weighted sum of the batched experts: `y[t] += Σ_j weights[t·(k+1) + j] ·
    /// out[rows[t·k + j]]` for `n` tokens (rows of `cols` f32; j ascending: the experts in
    /// ascending order).
    pub(crate) unsafe fn moe_combine(
        &self,
        out: u64,
        rows: u64,
        weights: u64,
        k: usize,
        n: usize,
        cols: usize,
        y: u64,
    ) -> Result<(), GpuError> {
        let (k32, c) = (int(k), int(cols));
        let mut a = args![out, rows, weights, k32, c, y];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_combine,
                (int(n) as u32, 1),
                ROW_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// Prefill: `dst[i] = src[list[2i]]` for `n` rows of `cols` values of `act` (the tokens of
    /// experts, gathered for their GEMMs; a token of -1 is a row of zeros, padding).
    pub(crate) unsafe fn moe_gather(
        &self,
        src: u64,
        list: u64,
        n: usize,
        cols: usize,
        act: Act,
        dst: u64,
    ) -> Result<(), GpuError> {
        let words = int(cols * act.elem().bytes() / 2);
        let n32 = int(n);
        let mut a = args![src, list, n32, words, dst];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_gather,
                (n32 as u32, 1),
                ROW_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }

    /// Prefill: `y[t] += weights[t·wstride + j] · out[i]` for the `n` (token, slot) pairs
    /// `(t, j)` of `list` (rows of `cols` f32; no token twice).
    pub(crate) unsafe fn moe_scatter(
        &self,
        out: u64,
        list: u64,
        n: usize,
        weights: u64,
        wstride: usize,
        cols: usize,
        y: u64,
    ) -> Result<(), GpuError> {
        let (n32, ws, c) = (int(n), int(wstride), int(cols));
        let mut a = args![out, list, n32, weights, ws, c, y];
        // SAFETY: the module's contract.
        unsafe {
            self.k.launch(
                self.k.moe_scatter,
                (n32 as u32, 1),
                ROW_THREADS,
                0,
                self.stream,
                &mut a,
            )
        }
    }
}
