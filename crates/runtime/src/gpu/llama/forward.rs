//! The kernels of one forward step.

use hoist_cuda::DevSlice;

use super::weights::Ffn;
use super::GpuSession;
use crate::gpu::layers::{rope_fusable, AttnDims, FusedRope, GemvOut, Mat};
use crate::gpu::GpuError;

impl GpuSession<'_> {
    /// Queues the kernels of one step over the `n` tokens already uploaded; returns the logit
    /// rows it leaves. Only kernel launches, cuBLAS calls and (streamed layers) copies and
    /// event waits: capturable when `n == 1` and no layer comes from the file.
    pub(super) fn record(&self, n: usize, all_logits: bool, last: bool) -> Result<usize, GpuError> {
        let m = self.model;
        let c = &m.config;
        let ops = m.ops();
        let b = &self.bufs;
        let (h, qd, kvd, inter) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let act = m.act;
        let eps = c.rms_norm_eps;
        let start = self.len;
        let start_at = b.ids.ptr() + (n * 4) as u64;
        let dims = AttnDims {
            heads: c.num_heads,
            kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            capacity: self.capacity,
            window: c.sliding_window.unwrap_or(0),
            cache: act,
        };
        // GEMM inputs: the activation-typed buffer, or the f32 buffer itself for f32 models.
        let xa = b.xa.as_ref().map_or(0, |x| x.ptr());
        let input = |f32_buf: u64| if xa == 0 { f32_buf } else { xa };
        let scratch = b.scratch.as_ref().map_or(0, |s| s.ptr());
        let layer_cache =
            (c.num_kv_heads * self.capacity * c.head_dim * dims.cache.elem().bytes()) as u64;
        let (qa, probs) = (
            b.qa.as_ref().map_or(0, |x| x.ptr()),
            b.probs.as_ref().map_or(0, |x| x.ptr()),
        );
        // Matrix products through cuBLAS: always for several tokens; for one only when asked
        // (`HOIST_DECODE_GEMV=cublas`, for comparison) and no weight needs converting.
        let gemm_path = n > 1 || m.blas_decode;
        // x += W·v for the step's tokens, `from` the f32 buffer of v (its copy in the activation
        // type is in `xa` when cuBLAS reads it).
        let add_to_residual = |w: &Mat, from: u64| -> Result<(), GpuError> {
            // SAFETY: as for the launches below.
            unsafe {
                if gemm_path {
                    ops.linear(w, input(from), act, n, b.x.ptr(), 1.0, scratch)
                } else {
                    ops.gemv(
                        &[GemvOut {
                            w,
                            y: b.x.ptr(),
                            bias: DevSlice::empty(),
                        }],
                        from,
                        true,
                        None,
                    )
                }
            }
        };

        // SAFETY (every launch below): the session's buffers were sized in `new` for `chunk`
        // tokens and `capacity` positions, and n <= chunk, start + n <= capacity; the weights
        // are `DevSlice` views checked against their tensors' shapes when the model was built
        // (and the norms' and biases' lengths against the counts again by each launch), alive
        // while the model is, which outlives the session.
        unsafe {
            // Streamed layers: the first copies are queued (no-ops when all are resident).
            m.layers.begin_step(ops.stream, n)?;
            ops.embed(&m.embed, b.ids.ptr(), n, b.x.ptr())?;
            for l in 0..m.layers.len() {
                // The placement's door: the layer's weights for this step, valid until
                // `after(l)` (see `LayerStore`).
                m.layers.before(l, ops.stream)?;
                let layer = m.layers.layer(l);
                let cache = [
                    b.kcache.ptr() + l as u64 * layer_cache,
                    b.vcache.ptr() + l as u64 * layer_cache,
                ];
                ops.rms_norm(b.x.ptr(), layer.attn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                // One token without q/k norms: the rotary embedding rides in the q/k/v GEMV.
                let rope_fits = rope_fusable([&layer.q, &layer.k, &layer.v], c.head_dim);
                let rope = (!gemm_path && m.fused_rope && layer.qk_norm.is_none() && rope_fits)
                    .then_some(FusedRope {
                        inv_freq: m.inv_freq.ptr(),
                        start_at,
                        cache,
                        dims,
                        interleaved: m.rope_interleaved(),
                    });
                if !gemm_path {
                    let outs = [
                        GemvOut {
                            w: &layer.q,
                            y: b.q.ptr(),
                            bias: layer.qkv_bias[0],
                        },
                        GemvOut {
                            w: &layer.k,
                            y: b.k.ptr(),
                            bias: layer.qkv_bias[1],
                        },
                        GemvOut {
                            w: &layer.v,
                            y: b.v.ptr(),
                            bias: layer.qkv_bias[2],
                        },
                    ];
                    ops.gemv(&outs, b.xn.ptr(), false, rope)?;
                } else {
                    let x_in = input(b.xn.ptr());
                    for (w, y, bias, width) in [
                        (&layer.q, b.q.ptr(), layer.qkv_bias[0], qd),
                        (&layer.k, b.k.ptr(), layer.qkv_bias[1], kvd),
                        (&layer.v, b.v.ptr(), layer.qkv_bias[2], kvd),
                    ] {
                        ops.linear(w, x_in, act, n, y, 0.0, scratch)?;
                        if !bias.is_empty() {
                            ops.add_bias(y, bias, n, width)?;
                        }
                    }
                }
                if let Some([qn, kn]) = layer.qk_norm {
                    let hd = c.head_dim;
                    ops.rms_norm(b.q.ptr(), qn, b.q.ptr(), 0, n * c.num_heads, hd, eps, act)?;
                    ops.rms_norm(
                        b.k.ptr(),
                        kn,
                        b.k.ptr(),
                        0,
                        n * c.num_kv_heads,
                        hd,
                        eps,
                        act,
                    )?;
                }
                if rope.is_none() {
                    ops.rope_store(
                        [b.q.ptr(), b.k.ptr(), b.v.ptr()],
                        cache,
                        m.inv_freq.ptr(),
                        n,
                        start_at,
                        dims,
                        m.rope_interleaved(),
                        if n > 1 { qa } else { 0 },
                        None,
                    )?;
                }
                if n == 1 {
                    ops.attention(
                        b.q.ptr(),
                        cache,
                        b.scores.ptr(),
                        b.counters.ptr(),
                        start_at,
                        b.att.ptr(),
                        if gemm_path { xa } else { 0 },
                        n,
                        dims,
                        act,
                        None,
                    )?;
                } else {
                    ops.attention_blas(
                        (b.q.ptr(), qa),
                        cache,
                        b.att.ptr(),
                        xa,
                        n,
                        start,
                        dims,
                        (b.scores.ptr(), probs),
                        self.tile,
                        act,
                    )?;
                }
                add_to_residual(&layer.o, b.att.ptr())?;
                ops.rms_norm(b.x.ptr(), layer.ffn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                if m.layers.ffn_on_host(l, n) {
                    // A hybrid layer: the slot held its attention only and is free now; the
                    // host computes the feed-forward from pinned memory while later layers'
                    // copies run.
                    m.layers.after(l, ops.stream)?;
                    if let Some(s) = m.layers.streamer() {
                        s.host_ffn(l, &ops, &b.xn, b.x.ptr())?;
                    }
                    continue;
                }
                match &layer.ffn {
                    Ffn::Dense { gate, up, down } => {
                        if !gemm_path {
                            ops.gemv_swiglu(gate, up, b.xn.ptr(), b.h.ptr(), act)?;
                        } else {
                            let x_in = input(b.xn.ptr());
                            ops.linear(gate, x_in, act, n, b.g.ptr(), 0.0, scratch)?;
                            ops.linear(up, x_in, act, n, b.u.ptr(), 0.0, scratch)?;
                            ops.swiglu(b.g.ptr(), b.u.ptr(), b.h.ptr(), xa, act, n * inter)?;
                        }
                        add_to_residual(down, b.h.ptr())?;
                    }
                    // Decode's experts by our kernels even under `HOIST_DECODE_GEMV=cublas`
                    // (cuBLAS would need the chosen ids on the host).
                    Ffn::Moe(f) => self.moe_ffn(f, n)?,
                }
                m.layers.after(l, ops.stream)?;
            }
            ops.rms_norm(b.x.ptr(), m.output_norm, b.xn.ptr(), xa, n, h, eps, act)?;
            let rows = if all_logits && n > 1 {
                ops.linear(
                    &m.output,
                    input(b.xn.ptr()),
                    act,
                    n,
                    b.logits.ptr(),
                    0.0,
                    scratch,
                )?;
                n
            } else if all_logits || last {
                let row = b.xn.ptr() + ((n - 1) * h * 4) as u64;
                ops.gemv(
                    &[GemvOut {
                        w: &m.output,
                        y: b.logits.ptr(),
                        bias: DevSlice::empty(),
                    }],
                    row,
                    false,
                    None,
                )?;
                1
            } else {
                0
            };
            debug_assert!(rows <= b.logits_rows);
            Ok(rows)
        }
    }
}
