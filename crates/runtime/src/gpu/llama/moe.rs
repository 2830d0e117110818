//! A sparse layer's feed-forward step (Mixtral, Qwen2-MoE, Qwen3-MoE) and the session buffers
//! it works in.
//!
//! - Decode (one token): the router's GEMV, `moe_route` (top-k on the device), then the chosen
//!   experts' products in three launches that find their matrices through the layer's address
//!   tables: no host round trip, so the step stays one captured graph.
//! - Prefill (several tokens): the router's GEMM and `moe_route`, then the ids come to the host,
//!   which groups the tokens by expert; each expert with tokens gathers their rows, runs its
//!   three cuBLAS products and adds its weighted output to theirs, experts in ascending order
//!   (the order transformers adds them in). The shared expert runs over every token.

use std::cell::RefCell;

use hoist_cuda::{DevSlice, DeviceBuf, Gpu};

use super::GpuSession;
use crate::config::ModelConfig;
use crate::gpu::layers::{Act, GemvOut, MoeFfn, Routes};
use crate::gpu::GpuError;

/// The session's mixture-of-experts buffers (sized for `chunk` tokens).
pub(super) struct MoeBufs {
    /// Router logits `[chunk, experts]` f32.
    logits: DeviceBuf,
    /// The shared expert's gate logits `[chunk]` f32.
    shared_logits: DeviceBuf,
    /// Chosen experts `[chunk, k]` i32.
    ids: DeviceBuf,
    /// Their weights, then the shared expert's gate, `[chunk, k + 1]` f32.
    weights: DeviceBuf,
    /// Prefill's (token, slot) pairs grouped by expert, then the shared expert's: `[2 · chunk ·
    /// (k + 1)]` i32.
    list: DeviceBuf,
    /// Decode's slot inputs of the down projections `[k + 1, widest]` f32.
    slot_h: DeviceBuf,
    /// Prefill's gathered rows `[chunk, hidden]` of the activation type.
    gathered: DeviceBuf,
    /// Prefill's SwiGLU output in the activation type `[chunk, widest]` (f32 models: unused).
    h_act: DeviceBuf,
    /// Prefill's per-expert outputs `[chunk, hidden]` f32.
    out: DeviceBuf,
    /// Host copies for prefill's grouping, kept between steps.
    host: RefCell<HostLists>,
}

#[derive(Default)]
struct HostLists {
    ids: Vec<i32>,
    list: Vec<i32>,
    /// First entry of each expert in `list`, and one past the last.
    starts: Vec<usize>,
    /// Where each expert's next entry goes, while `list` is filled.
    next: Vec<usize>,
}

/// Experts per token and their count, if the model has sparse layers.
fn routing(c: &ModelConfig) -> Option<(usize, usize)> {
    c.moe.as_ref().map(|m| (m.experts_per_token, m.num_experts))
}

/// The widest feed-forward block of the model: dense layers', experts', the shared expert's.
pub(super) fn ffn_widest(c: &ModelConfig) -> usize {
    let moe = c.moe.as_ref().map_or(0, |m| {
        m.expert_intermediate_size
            .max(m.shared_expert_intermediate_size.unwrap_or(0))
    });
    c.intermediate_size.max(moe)
}

/// Bytes of each of [`MoeBufs`]' device buffers, in its order (all 0 for dense models).
pub(super) fn moe_buffer_sizes(c: &ModelConfig, act: Act, chunk: usize) -> [usize; 9] {
    let Some((k, experts)) = routing(c) else {
        return [0; 9];
    };
    let (h, wide) = (c.hidden_size, ffn_widest(c));
    let act_bytes = act.elem().bytes();
    [
        chunk * experts * 4,
        chunk * 4,
        chunk * k * 4,
        chunk * (k + 1) * 4,
        2 * chunk * (k + 1) * 4,
        (k + 1) * wide * 4,
        chunk * h * act_bytes,
        chunk * wide * act_bytes,
        chunk * h * 4,
    ]
}

impl MoeBufs {
    /// The buffers of `sizes` ([`moe_buffer_sizes`]); `None` for a dense model.
    pub(super) fn new(
        gpu: &std::sync::Arc<Gpu>,
        sizes: [usize; 9],
    ) -> Result<Option<MoeBufs>, GpuError> {
        if sizes[0] == 0 {
            return Ok(None);
        }
        let alloc = |n: usize| DeviceBuf::new(gpu, n).map_err(GpuError::from);
        Ok(Some(MoeBufs {
            logits: alloc(sizes[0])?,
            shared_logits: alloc(sizes[1])?,
            ids: alloc(sizes[2])?,
            weights: alloc(sizes[3])?,
            list: alloc(sizes[4])?,
            slot_h: alloc(sizes[5])?,
            gathered: alloc(sizes[6])?,
            h_act: alloc(sizes[7])?,
            out: alloc(sizes[8])?,
            host: RefCell::default(),
        }))
    }

    fn routes(&self) -> Routes {
        Routes {
            ids: self.ids.ptr(),
            weights: self.weights.ptr(),
        }
    }
}

impl GpuSession<'_> {
    /// Adds sparse layer `f`'s output for the step's `n` tokens (normalized in `xn`, and in the
    /// activation type in `xa` unless the model is f32) to the residual `x`.
    ///
    /// # Safety
    /// As for the launches of `record`: the session's buffers hold `n <= chunk` tokens.
    pub(super) unsafe fn moe_ffn(&self, f: &MoeFfn, n: usize) -> Result<(), GpuError> {
        let m = self.model;
        let ops = m.ops();
        let b = &self.bufs;
        let Some(mb) = &b.moe else {
            unreachable!("sessions of models with sparse layers have MoE buffers")
        };
        let act = m.act;
        let hidden = m.config.hidden_size;
        let routes = mb.routes();
        if n == 1 {
            let mut outs = vec![GemvOut {
                w: &f.router,
                y: mb.logits.ptr(),
                bias: DevSlice::empty(),
            }];
            if let Some(s) = &f.shared {
                outs.push(GemvOut {
                    w: &s.gate_inp,
                    y: mb.shared_logits.ptr(),
                    bias: DevSlice::empty(),
                });
            }
            // SAFETY: the buffers were sized for this model's experts and widths (`new`).
            unsafe {
                ops.gemv(&outs, b.xn.ptr(), false, None)?;
                ops.moe_route(f, mb.logits.ptr(), mb.shared_logits.ptr(), 1, routes)?;
                return ops.moe_decode(f, routes, b.xn.ptr(), mb.slot_h.ptr(), b.x.ptr(), act);
            }
        }
        // GEMM inputs: the activation-typed copy, or the f32 rows themselves.
        let xa = b.xa.as_ref().map_or(b.xn.ptr(), |x| x.ptr());
        let scratch = b.scratch.as_ref().map_or(0, |s| s.ptr());
        let k = f.top_k;
        // SAFETY: as above; n <= chunk.
        unsafe {
            ops.linear(&f.router, xa, act, n, mb.logits.ptr(), 0.0, scratch)?;
            if let Some(s) = &f.shared {
                ops.linear(
                    &s.gate_inp,
                    xa,
                    act,
                    n,
                    mb.shared_logits.ptr(),
                    0.0,
                    scratch,
                )?;
            }
            ops.moe_route(f, mb.logits.ptr(), mb.shared_logits.ptr(), n, routes)?;
        }
        let mut host = mb.host.borrow_mut();
        let host = &mut *host;
        group_by_expert(&mb.ids, n, k, f.experts.len(), host, &m.stream)?;
        mb.list
            .write_async(&m.stream, super::bytes_of(&host.list))?;
        // The rows one expert (or the shared one) multiplies, then adds to its tokens' residual.
        let h_in = if act == Act::F32 {
            b.h.ptr()
        } else {
            mb.h_act.ptr()
        };
        let h_act = if act == Act::F32 { 0 } else { mb.h_act.ptr() };
        let run = |mats: [&crate::gpu::layers::Mat; 3], rows: u64, list: u64, count: usize| {
            let [gate, up, down] = mats;
            // SAFETY: as above; count <= chunk rows of the buffers.
            unsafe {
                ops.linear(gate, rows, act, count, b.g.ptr(), 0.0, scratch)?;
                ops.linear(up, rows, act, count, b.u.ptr(), 0.0, scratch)?;
                ops.swiglu(
                    b.g.ptr(),
                    b.u.ptr(),
                    b.h.ptr(),
                    h_act,
                    act,
                    count * gate.rows,
                )?;
                ops.linear(down, h_in, act, count, mb.out.ptr(), 0.0, scratch)?;
                ops.moe_scatter(
                    mb.out.ptr(),
                    list,
                    count,
                    routes.weights,
                    k + 1,
                    hidden,
                    b.x.ptr(),
                )
            }
        };
        for (e, mats) in f.experts.iter().enumerate() {
            let (start, end) = (host.starts[e], host.starts[e + 1]);
            if start == end {
                continue;
            }
            let list = mb.list.ptr() + (start * 8) as u64;
            // SAFETY: the list's entries are tokens < n (group_by_expert).
            unsafe {
                ops.moe_gather(xa, list, end - start, hidden, act, mb.gathered.ptr())?;
            }
            run(
                [&mats[0], &mats[1], &mats[2]],
                mb.gathered.ptr(),
                list,
                end - start,
            )?;
        }
        if let Some(s) = &f.shared {
            // Every token, in order: the rows as they are.
            let list = mb.list.ptr() + (n * k * 8) as u64;
            run([&s.gate, &s.up, &s.down], xa, list, n)?;
        }
        Ok(())
    }
}

/// Reads the `[n, k]` chosen experts and groups them: `host.list` holds (token, slot) pairs
/// by expert (tokens ascending within one), then `(t, k)` for every token (the shared expert's
/// gate is slot k); `host.starts[e]..host.starts[e + 1]` are expert e's entries.
fn group_by_expert(
    ids: &DeviceBuf,
    n: usize,
    k: usize,
    experts: usize,
    host: &mut HostLists,
    stream: &hoist_cuda::Stream,
) -> Result<(), GpuError> {
    host.ids.resize(n * k, 0);
    // SAFETY: i32 has no invalid bit patterns; the view covers exactly the vector.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(host.ids.as_mut_ptr() as *mut u8, host.ids.len() * 4)
    };
    ids.read(stream, bytes)?;
    host.starts.clear();
    host.starts.resize(experts + 1, 0);
    for &e in &host.ids {
        // moe_route writes ids below the expert count; checked, since the lists index rows.
        let e = usize::try_from(e)
            .ok()
            .filter(|&e| e < experts)
            .ok_or_else(|| {
                GpuError::Unsupported(format!("the router chose expert {e} of {experts}"))
            })?;
        host.starts[e + 1] += 1;
    }
    for e in 0..experts {
        host.starts[e + 1] += host.starts[e];
    }
    host.list.clear();
    host.list.resize(2 * (n * k + n), 0);
    host.next.clear();
    host.next.extend_from_slice(&host.starts);
    for t in 0..n {
        for j in 0..k {
            let e = host.ids[t * k + j] as usize;
            let at = host.next[e];
            host.list[2 * at] = t as i32;
            host.list[2 * at + 1] = j as i32;
            host.next[e] += 1;
        }
    }
    for t in 0..n {
        host.list[2 * (n * k + t)] = t as i32;
        host.list[2 * (n * k + t) + 1] = k as i32;
    }
    Ok(())
}
