//! Batched decode: the next token of each of several sequences through one forward step
//! (`hoist serve --parallel N`).
//!
//! Why: decode at one token reads every weight for one token's worth of arithmetic, so the
//! GPU waits on memory. With the running sequences' tokens as the rows of one step, every
//! matrix product reads its weights once for all of them (cuBLAS for 16-bit and f32 weights,
//! the batched tiled GEMV for Q4_0), and only the rotary embedding and attention, which touch
//! each sequence's own KV cache at its own position, run per sequence (one launch each, over a
//! device table of the rows' caches), as do a sparse layer's experts (each row's own, through
//! decode's kernels). A layer streamed from host memory is copied once for all the rows, which
//! is where batching gains most: such a step is bound by PCIe, not compute.
//!
//! The first session (the lead) lends its work buffers, sized for a prefill chunk, to the
//! step's rows; each session keeps its own KV cache and length. The results match each
//! sequence decoded alone within the products' rounding (the GEMMs sum in another order).

use super::session::attn_dims;
use super::weights::Ffn;
use super::GpuSession;
use crate::cpu::ForwardError;
use crate::gpu::layers::{AttnDims, KvRows, Ops};
use crate::gpu::GpuError;
use crate::RuntimeError;

/// Most sequences one batched step takes (the engine's `--parallel` bound).
pub(super) const MAX_BATCH_ROWS: usize = 64;

/// One row of a batched step: the KV cache it reads and extends (uploaded as the table of
/// `kv_row` in kernels/common.cuh).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Row {
    kcache: u64,
    vcache: u64,
    capacity: usize,
}

impl<'a> GpuSession<'a> {
    /// The next token of each session (`tokens[i]` after what `sessions[i]` holds), returning
    /// each one's logits: one batched forward step where the model and sessions allow it
    /// ([`GpuSession::batchable`]), else one step per session.
    pub fn next_logits_batch(
        sessions: &mut [&mut GpuSession<'a>],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        assert_eq!(sessions.len(), tokens.len(), "one token per session");
        // Checked for all before any step, so that an error leaves every session as it was.
        for (s, &token) in sessions.iter().zip(tokens) {
            let vocab = s.model.config.vocab_size;
            if s.len + 1 > s.capacity {
                return Err(ForwardError::ContextFull {
                    needed: s.len + 1,
                    capacity: s.capacity,
                }
                .into());
            }
            if token as usize >= vocab {
                return Err(ForwardError::Token { token, vocab }.into());
            }
        }
        if !GpuSession::batchable(sessions) {
            return sessions
                .iter_mut()
                .zip(tokens)
                .map(|(s, &t)| s.forward(&[t], false))
                .collect();
        }
        Ok(GpuSession::step_batch(sessions, tokens)?)
    }

    /// Whether [`GpuSession::next_logits_batch`] runs `sessions` as one batched step: at least
    /// two, on one model, with the lead's buffers holding a row per session, unless
    /// `HOIST_NO_BATCH_DECODE` turned it off. Streamed layers are copied once for all rows;
    /// a sparse layer's experts run a row at a time.
    pub fn batchable(sessions: &[&mut GpuSession<'a>]) -> bool {
        let Some(lead) = sessions.first() else {
            return false;
        };
        let (m, n) = (lead.model, sessions.len());
        // The attention's slices of every row fit the lead's score buffer.
        let part_bytes = Ops::attention_part_values(n, attn_dims(&m.config, m.act, 1)) * 4;
        m.batch_decode
            && (2..=MAX_BATCH_ROWS).contains(&n)
            // The ids buffer holds the tokens and then their positions.
            && 2 * n <= lead.chunk + 1
            && sessions.iter().all(|s| std::ptr::eq(s.model, m))
            && lead.bufs.scores.len() >= part_bytes
    }

    /// One batched step (checked by `next_logits_batch`): uploads the tokens and positions,
    /// queues the step on the lead, reads every row's logits, advances each session.
    fn step_batch(
        sessions: &mut [&mut GpuSession<'a>],
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, GpuError> {
        let n = tokens.len();
        let rows: Vec<Row> = sessions
            .iter()
            .map(|s| Row {
                kcache: s.bufs.kcache.ptr(),
                vcache: s.bufs.vcache.ptr(),
                capacity: s.capacity,
            })
            .collect();
        let positions: Vec<i32> = sessions.iter().map(|s| s.len as i32).collect();
        let lead = &mut *sessions[0];
        let m = lead.model;
        let vocab = m.config.vocab_size;
        lead.ids.clear();
        lead.ids.extend(tokens.iter().map(|&t| t as i32));
        lead.ids.extend_from_slice(&positions);
        lead.bufs
            .ids
            .write_async(&m.stream, super::bytes_of(&lead.ids))?;
        if lead.batch_rows != rows {
            let table: Vec<u64> = rows
                .iter()
                .flat_map(|r| [r.kcache, r.vcache, r.capacity as u64])
                .collect();
            lead.batch_table
                .write_async(&m.stream, super::bytes_of(&table))?;
        }
        // The same rows as the last step: replay one captured graph of the ~1,500 launches
        // (captured on the second step of a batch, so that a batch that changes at every step
        // pays no capture). The graph names the caches by address, so it serves exactly
        // while the rows are these.
        if lead.graphs && lead.batch_rows == rows {
            if lead.batch_graph.is_none() {
                lead.batch_graph = Some(lead.capture_batch(&rows)?);
            }
            if let Some(g) = &lead.batch_graph {
                g.launch(&m.stream)?;
            }
        } else {
            lead.batch_graph = None;
            lead.record_batch(&rows)?;
            lead.batch_rows = rows;
        }
        let mut all = vec![0f32; n * vocab];
        // SAFETY: f32 has no invalid bit patterns; the view covers exactly `all`.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(all.as_mut_ptr() as *mut u8, all.len() * 4) };
        lead.bufs.logits.read(&m.stream, bytes)?;
        for s in sessions.iter_mut() {
            s.len += 1;
        }
        Ok(all.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Queues the kernels of a batched step over the `rows.len()` tokens uploaded to the ids
    /// buffer (their positions after them), row `r` attending over `rows[r]`'s cache; leaves a
    /// row of logits per token.
    pub(super) fn record_batch(&self, rows: &[Row]) -> Result<(), GpuError> {
        let m = self.model;
        let c = &m.config;
        let ops = m.ops();
        let b = &self.bufs;
        let n = rows.len();
        assert!(2 * n <= self.chunk + 1, "checked by batchable");
        let (h, qd, kvd, inter) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        let (act, eps) = (m.act, c.rms_norm_eps);
        // GEMM inputs: the activation-typed buffer, or the f32 buffer itself for f32 models.
        let xa = b.xa.as_ref().map_or(0, |x| x.ptr());
        let input = |f32_buf: u64| if xa == 0 { f32_buf } else { xa };
        let stage = b.scratch.as_ref();
        // The kernels' shapes (shared memory, key slices) for the longest cache among the rows.
        let longest = rows.iter().map(|r| r.capacity).max().unwrap_or(1);
        let dims = AttnDims {
            window: c.sliding_window.unwrap_or(0),
            ..attn_dims(c, act, longest)
        };
        // SAFETY (every launch below): the lead's buffers were sized in `new` for `chunk`
        // tokens and n <= chunk; each row's caches hold `capacity` positions of every layer,
        // and its position is below that (checked by `next_logits_batch`); the weights are
        // views checked against their shapes when the model was built, alive while it is.
        unsafe {
            // Streamed layers: the first copies are queued (no-ops when all are resident). A
            // batch computes every streamed layer on the GPU, hybrid ones too (`ffn_on_host` is
            // for one token): one copy of the layer serves all the rows.
            m.layers.begin_step(ops.stream, n)?;
            ops.embed(&m.embed, b.ids.ptr(), n, b.x.ptr())?;
            for l in 0..m.layers.len() {
                // The layer's weights for this step, valid until `after(l)` (`LayerStore`).
                m.layers.before(l, ops.stream)?;
                let layer = m.layers.layer(l);
                ops.rms_norm(b.x.ptr(), layer.attn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                let qkv = [
                    (&layer.q, b.q.ptr()),
                    (&layer.k, b.k.ptr()),
                    (&layer.v, b.v.ptr()),
                ];
                ops.linear_rows(&qkv, b.xn.ptr(), input(b.xn.ptr()), act, n, false, stage)?;
                for ((_, y), (bias, width)) in
                    qkv.iter().zip(layer.qkv_bias.iter().zip([qd, kvd, kvd]))
                {
                    if !bias.is_empty() {
                        ops.add_bias(*y, *bias, n, width)?;
                    }
                }
                if let Some([qn, kn]) = layer.qk_norm {
                    let hd = c.head_dim;
                    ops.rms_norm(b.q.ptr(), qn, b.q.ptr(), 0, n * c.num_heads, hd, eps, act)?;
                    let kv_rows = n * c.num_kv_heads;
                    ops.rms_norm(b.k.ptr(), kn, b.k.ptr(), 0, kv_rows, hd, eps, act)?;
                }
                // Each row at its own position, in its own caches (the table `step_batch`
                // uploaded): one launch for all of them.
                let kv_rows = Some(KvRows {
                    table: self.batch_table.ptr(),
                    layer: l,
                });
                let (q, positions) = (b.q.ptr(), b.ids.ptr() + (n * 4) as u64);
                let interleaved = m.rope_interleaved();
                let qkv = [q, b.k.ptr(), b.v.ptr()];
                let inv_freq = m.inv_freq.ptr();
                ops.rope_store(
                    qkv,
                    [0, 0],
                    inv_freq,
                    n,
                    positions,
                    dims,
                    interleaved,
                    0,
                    kv_rows,
                )?;
                let (part, counters) = (b.scores.ptr(), b.counters.ptr());
                ops.attention(
                    q,
                    [0, 0],
                    part,
                    counters,
                    positions,
                    b.att.ptr(),
                    xa,
                    n,
                    dims,
                    act,
                    kv_rows,
                )?;
                let o = [(&layer.o, b.x.ptr())];
                ops.linear_rows(&o, b.att.ptr(), input(b.att.ptr()), act, n, true, stage)?;
                ops.rms_norm(b.x.ptr(), layer.ffn_norm, b.xn.ptr(), xa, n, h, eps, act)?;
                match &layer.ffn {
                    Ffn::Dense { gate, up, down } => {
                        let gu = [(gate, b.g.ptr()), (up, b.u.ptr())];
                        let xn = b.xn.ptr();
                        ops.linear_rows(&gu, xn, input(xn), act, n, false, stage)?;
                        ops.swiglu(b.g.ptr(), b.u.ptr(), b.h.ptr(), xa, act, n * inter)?;
                        let d = [(down, b.x.ptr())];
                        ops.linear_rows(&d, b.h.ptr(), input(b.h.ptr()), act, n, true, stage)?;
                    }
                    // Each row through its own experts, as decode does for one token (the
                    // attention above and the dense layers are what the rows share).
                    Ffn::Moe(f) => {
                        for r in 0..n {
                            let row = (r * h * 4) as u64;
                            self.moe_token(f, b.xn.ptr() + row, b.x.ptr() + row)?;
                        }
                    }
                }
                m.layers.after(l, ops.stream)?;
            }
            ops.rms_norm(b.x.ptr(), m.output_norm, b.xn.ptr(), xa, n, h, eps, act)?;
            let out = [(&m.output, b.logits.ptr())];
            ops.linear_rows(&out, b.xn.ptr(), input(b.xn.ptr()), act, n, false, stage)?;
        }
        debug_assert!(n <= b.logits_rows);
        Ok(())
    }
}
