//! A sparse layer's feed-forward step (Mixtral, Qwen2-MoE, Qwen3-MoE) and the session buffers
//! it works in.
//!
//! - Decode (one token): the router's GEMV, `moe_route` (top-k on the device), then the chosen
//!   experts' products in two launches (`moe_swiglu`; `moe_down` with the weighted sum) that find
//!   their matrices through the layer's address tables: no host round trip, so the step stays
//!   one captured graph.
//! - Prefill (several tokens): the router's GEMM and `moe_route`, then the ids come to the host,
//!   which groups the tokens by expert. Batched (the experts of each projection at one stride:
//!   GGUF's stacked tensors, most Hugging Face files): every expert's tokens are gathered into
//!   blocks of one padded size, each projection is one strided batched cuBLAS product over the
//!   blocks (quantized experts converted in one launch), an expert with more tokens than a block
//!   holds runs on rows of its own ([`lay_out`]), and each token adds its experts' outputs in
//!   ascending order (the order transformers adds them in): ~8 launches a layer, where a launch
//!   per expert and product costs ~6 per expert. Otherwise (`HOIST_NO_MOE_BATCHED`, or experts
//!   not at one stride) each expert with tokens runs on its own, experts ascending. The shared
//!   expert runs over every token.

use std::cell::RefCell;

use hoist_cuda::{DevSlice, DeviceBuf, Gpu};

use super::GpuSession;
use crate::config::ModelConfig;
use crate::gpu::layers::{Act, GemvOut, Mat, MoeFfn, Routes};
use crate::gpu::GpuError;

/// The session's mixture-of-experts buffers (sized for `chunk` tokens; expert rows for
/// [`padded_rows`]).
pub(super) struct MoeBufs {
    /// Router logits `[chunk, experts]` f32.
    logits: DeviceBuf,
    /// The shared expert's gate logits `[chunk]` f32.
    shared_logits: DeviceBuf,
    /// Chosen experts `[chunk, k]` i32.
    ids: DeviceBuf,
    /// Their weights, then the shared expert's gate, `[chunk, k + 1]` f32.
    weights: DeviceBuf,
    /// Prefill's (token, slot) pairs by expert (`[2 · padded]` i32; padding -1), then the shared
    /// expert's (`[2 · chunk]`).
    list: DeviceBuf,
    /// Batched prefill: the expert row of each token's slot `[chunk, k]` i32.
    rows_of: DeviceBuf,
    /// Decode's slot inputs of the down projections `[k + 1, widest]` f32.
    slot_h: DeviceBuf,
    /// Prefill's gathered rows `[padded, hidden]` of the activation type.
    gathered: DeviceBuf,
    /// Prefill's expert products: gate (then SwiGLU, in place) and up `[padded, expert
    /// width]` f32.
    g: DeviceBuf,
    u: DeviceBuf,
    /// The SwiGLU output in the activation type (experts' and the shared expert's; f32 models:
    /// unused).
    h_act: DeviceBuf,
    /// Prefill's expert outputs `[padded, hidden]` f32.
    out: DeviceBuf,
    /// Expert rows the buffers hold.
    padded: usize,
    /// Experts per token.
    k: usize,
    /// Host copies for prefill's grouping, kept between steps.
    host: RefCell<HostLists>,
}

#[derive(Default)]
struct HostLists {
    ids: Vec<i32>,
    /// (token, slot) pairs by expert, then the shared expert's; uploaded to `MoeBufs::list`.
    list: Vec<i32>,
    /// First entry of each expert in `list`, and one past the last.
    starts: Vec<usize>,
    /// Where each expert's next entry goes, while `list` is filled.
    next: Vec<usize>,
    /// Batched: the expert row of each (token, slot).
    rows_of: Vec<i32>,
    /// Batched: the pairs by expert row (padding (-1, 0)), then the shared expert's; or the
    /// grouped pairs, then the shared expert's: what is uploaded to `MoeBufs::list`.
    upload: Vec<i32>,
    /// Batched: the experts with more tokens than a block holds, `(expert, first row, rows)`.
    heavy: Vec<(usize, usize, usize)>,
}

/// Expert rows of a batched prefill of `chunk` tokens: three times their `k` slots, so that
/// every expert's block may hold twice the mean count before the experts beyond run alone.
fn padded_rows(chunk: usize, k: usize) -> usize {
    3 * chunk * k
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
pub(super) fn moe_buffer_sizes(c: &ModelConfig, act: Act, chunk: usize) -> [usize; 12] {
    let Some(moe) = &c.moe else {
        return [0; 12];
    };
    let (k, experts, width) = (
        moe.experts_per_token,
        moe.num_experts,
        moe.expert_intermediate_size,
    );
    let (h, wide, padded) = (c.hidden_size, ffn_widest(c), padded_rows(chunk, k));
    let act_bytes = act.elem().bytes();
    [
        chunk * experts * 4,
        chunk * 4,
        chunk * k * 4,
        chunk * (k + 1) * 4,
        2 * (padded + chunk) * 4,
        chunk * k * 4,
        (k + 1) * wide * 4,
        padded * h * act_bytes,
        padded * width * 4,
        padded * width * 4,
        (padded * width).max(chunk * wide) * act_bytes,
        padded * h * 4,
    ]
}

impl MoeBufs {
    /// The buffers of `sizes` ([`moe_buffer_sizes`]) for `chunk` tokens; `None` for a dense
    /// model.
    pub(super) fn new(
        gpu: &std::sync::Arc<Gpu>,
        c: &ModelConfig,
        chunk: usize,
        sizes: [usize; 12],
    ) -> Result<Option<MoeBufs>, GpuError> {
        let Some(moe) = &c.moe else {
            return Ok(None);
        };
        let alloc = |n: usize| DeviceBuf::new(gpu, n).map_err(GpuError::from);
        Ok(Some(MoeBufs {
            logits: alloc(sizes[0])?,
            shared_logits: alloc(sizes[1])?,
            ids: alloc(sizes[2])?,
            weights: alloc(sizes[3])?,
            list: alloc(sizes[4])?,
            rows_of: alloc(sizes[5])?,
            slot_h: alloc(sizes[6])?,
            gathered: alloc(sizes[7])?,
            g: alloc(sizes[8])?,
            u: alloc(sizes[9])?,
            h_act: alloc(sizes[10])?,
            out: alloc(sizes[11])?,
            padded: padded_rows(chunk, moe.experts_per_token),
            k: moe.experts_per_token,
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
    /// Adds sparse layer `f`'s output for one token (normalized, f32, at `xn`) to its residual
    /// row at `x`: decode's path (and a batched step's, a row at a time: each row takes its own
    /// experts).
    ///
    /// # Safety
    /// As for the launches of `record`: `xn` and `x` hold a row of `hidden_size` f32.
    pub(super) unsafe fn moe_token(&self, f: &MoeFfn, xn: u64, x: u64) -> Result<(), GpuError> {
        let m = self.model;
        let ops = m.ops();
        let Some(mb) = &self.bufs.moe else {
            unreachable!("sessions of models with sparse layers have MoE buffers")
        };
        let routes = mb.routes();
        // The router and the shared expert's gate share the input: one launch, no allocation
        // on the decode path.
        let router = GemvOut {
            w: &f.router,
            y: mb.logits.ptr(),
            bias: DevSlice::empty(),
        };
        let outs = match &f.shared {
            Some(s) => [
                router,
                GemvOut {
                    w: &s.gate_inp,
                    y: mb.shared_logits.ptr(),
                    bias: DevSlice::empty(),
                },
            ],
            None => [router, router],
        };
        let outs = &outs[..1 + usize::from(f.shared.is_some())];
        // SAFETY: the buffers were sized for this model's experts and widths (`new`).
        unsafe {
            ops.gemv(outs, xn, false, None)?;
            ops.moe_route(f, mb.logits.ptr(), mb.shared_logits.ptr(), 1, routes)?;
            ops.moe_decode(f, routes, xn, mb.slot_h.ptr(), x, m.act)
        }
    }

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
            // SAFETY: the caller's contract.
            return unsafe { self.moe_token(f, b.xn.ptr(), b.x.ptr()) };
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
        let experts = f.experts.len();
        group_by_expert(&mb.ids, n, k, experts, host, &m.stream)?;
        let batched = m.moe_batched && f.batchable(act);
        let (cap, rows) = if batched {
            let laid = lay_out(host, n, k, experts, mb.padded);
            mb.rows_of
                .write_async(&m.stream, super::bytes_of(&host.rows_of))?;
            laid
        } else {
            host.upload.clear();
            host.upload.extend_from_slice(&host.list);
            (0, 0)
        };
        // The shared expert's pairs after room for the longest list.
        let shared_at = 2 * mb.padded;
        host.upload.resize(shared_at + 2 * n, 0);
        for t in 0..n {
            host.upload[shared_at + 2 * t] = t as i32;
            host.upload[shared_at + 2 * t + 1] = k as i32;
        }
        mb.list
            .write_async(&m.stream, super::bytes_of(&host.upload))?;
        let h_act = if act == Act::F32 { 0 } else { mb.h_act.ptr() };
        let list = mb.list.ptr();
        // SAFETY: as above: the lists' tokens are < n, their rows < padded (group_by_expert,
        // lay_out), the buffers hold padded expert rows of the widths.
        unsafe {
            if batched {
                let (g, u, out, x_rows) = (mb.g.ptr(), mb.u.ptr(), mb.out.ptr(), mb.gathered.ptr());
                let width = f.width();
                // SwiGLU in place of the gate's products: its f32 rows (f32 models) or its
                // activation-typed copy are the down products' input.
                let h_in = if act == Act::F32 { g } else { h_act };
                let (act_bytes, h_bytes) = (
                    act.elem().bytes(),
                    if act == Act::F32 {
                        4
                    } else {
                        act.elem().bytes()
                    },
                );
                ops.moe_gather(xa, list, rows, hidden, act, x_rows)?;
                // Projection p of every expert: the blocks at once, then the heavy experts'
                // rows one expert at a time.
                let project = |p: usize,
                               input: u64,
                               in_bytes: usize,
                               cols: usize,
                               y: u64,
                               out_cols: usize| {
                    let w = ops.experts_in_act(f, p, act, scratch)?;
                    if cap > 0 {
                        ops.experts_linear(&w, (0, experts), input, act, cap, y)?;
                    }
                    for &(e, row, count) in &host.heavy {
                        let at = |base: u64, per_row: usize| base + (row * per_row) as u64;
                        let (x, y) = (at(input, cols * in_bytes), at(y, out_cols * 4));
                        ops.experts_linear(&w, (e, 1), x, act, count, y)?;
                    }
                    Ok::<(), GpuError>(())
                };
                project(0, x_rows, act_bytes, hidden, g, width)?;
                project(1, x_rows, act_bytes, hidden, u, width)?;
                ops.swiglu(g, u, g, h_act, act, rows * width)?;
                project(2, h_in, h_bytes, width, out, hidden)?;
                ops.moe_combine(
                    out,
                    mb.rows_of.ptr(),
                    routes.weights,
                    k,
                    n,
                    hidden,
                    b.x.ptr(),
                )?;
            } else {
                for (e, mats) in f.experts.iter().enumerate() {
                    let (start, end) = (host.starts[e], host.starts[e + 1]);
                    if start == end {
                        continue;
                    }
                    let list = list + (start * 8) as u64;
                    ops.moe_gather(xa, list, end - start, hidden, act, mb.gathered.ptr())?;
                    let (g, u) = (mb.g.ptr(), mb.u.ptr());
                    self.moe_expert(mats, [g, u, g], mb.gathered.ptr(), list, end - start)?;
                }
            }
            if let Some(s) = &f.shared {
                // Every token, in order: the rows as they are.
                let list = list + (shared_at * 4) as u64;
                let (g, u, h) = (b.g.ptr(), b.u.ptr(), b.h.ptr());
                self.moe_expert(&[s.gate, s.up, s.down], [g, u, h], xa, list, n)?;
            }
        }
        Ok(())
    }

    /// One expert's three products over `count` rows at `rows` (activation type), its output
    /// added to the residual of the (token, slot) pairs at `list`, weighted: prefill, one
    /// expert at a time. `[g, u, h]` hold `count` rows of its width (f32).
    ///
    /// # Safety
    /// As for [`GpuSession::moe_ffn`]; `count` rows fit every buffer.
    unsafe fn moe_expert(
        &self,
        mats: &[Mat; 3],
        [g, u, h]: [u64; 3],
        rows: u64,
        list: u64,
        count: usize,
    ) -> Result<(), GpuError> {
        let m = self.model;
        let (ops, b, act) = (m.ops(), &self.bufs, m.act);
        let Some(mb) = &b.moe else {
            unreachable!("sessions of models with sparse layers have MoE buffers")
        };
        let scratch = b.scratch.as_ref().map_or(0, |s| s.ptr());
        let (h_act, h_in) = if act == Act::F32 {
            (0, h)
        } else {
            (mb.h_act.ptr(), mb.h_act.ptr())
        };
        let [gate, up, down] = mats;
        let k = mb.k;
        // SAFETY: the caller's contract.
        unsafe {
            ops.linear(gate, rows, act, count, g, 0.0, scratch)?;
            ops.linear(up, rows, act, count, u, 0.0, scratch)?;
            ops.swiglu(g, u, h, h_act, act, count * gate.rows)?;
            ops.linear(down, h_in, act, count, mb.out.ptr(), 0.0, scratch)?;
            let hidden = m.config.hidden_size;
            let w = mb.weights.ptr();
            ops.moe_scatter(mb.out.ptr(), list, count, w, k + 1, hidden, b.x.ptr())
        }
    }
}

/// Lays the grouped pairs out for the batched products, in `host.upload`: expert e's block is
/// rows `e · cap .. (e + 1) · cap` (its pairs, then padding (-1, 0)), where `cap` is the largest
/// count, or what leaves room in `padded` rows for every pair beyond the blocks; an expert with
/// more pairs than `cap` (heavy) has its block left as padding and its pairs in rows of their
/// own after the blocks (`host.heavy`). `host.rows_of[t · k + j]` is the row of token t's slot
/// j. Returns `cap` and the rows used.
fn lay_out(
    host: &mut HostLists,
    n: usize,
    k: usize,
    experts: usize,
    padded: usize,
) -> (usize, usize) {
    let count = |h: &HostLists, e: usize| h.starts[e + 1] - h.starts[e];
    let c_max = (0..experts).map(|e| count(host, e)).max().unwrap_or(0);
    assert!(n * k <= padded, "{n} tokens' slots beyond {padded} rows");
    let cap = c_max.min((padded - n * k) / experts);
    host.heavy.clear();
    let mut next = experts * cap;
    for e in 0..experts {
        if count(host, e) > cap {
            host.heavy.push((e, next, count(host, e)));
            next += count(host, e);
        }
    }
    let rows = next;
    // The blocks take at most padded - n·k rows, the heavy experts at most n·k.
    assert!(
        rows <= padded,
        "{rows} expert rows beyond the buffers' {padded}"
    );
    host.upload.clear();
    host.upload.resize(2 * rows, 0);
    host.rows_of.clear();
    host.rows_of.resize(n * k, 0);
    for e in 0..experts {
        let heavy = host.heavy.iter().find(|h| h.0 == e).map(|h| h.1);
        let first = heavy.unwrap_or(e * cap);
        // The block's padding (a heavy expert's whole block).
        let pad = if heavy.is_some() { 0 } else { count(host, e) };
        for i in pad..cap {
            host.upload[2 * (e * cap + i)] = -1;
        }
        for i in 0..count(host, e) {
            let at = 2 * (host.starts[e] + i);
            let (t, j) = (host.list[at], host.list[at + 1]);
            let row = first + i;
            host.upload[2 * row] = t;
            host.upload[2 * row + 1] = j;
            host.rows_of[t as usize * k + j as usize] = row as i32;
        }
    }
    (cap, rows)
}

/// Reads the `[n, k]` chosen experts and groups them: `host.list` holds (token, slot) pairs
/// by expert (tokens ascending within one); `host.starts[e]..host.starts[e + 1]` are expert e's
/// entries.
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
    group(host, n, k, experts)
}

/// [`group_by_expert`] on the ids in `host.ids`.
fn group(host: &mut HostLists, n: usize, k: usize, experts: usize) -> Result<(), GpuError> {
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
    host.list.resize(2 * n * k, 0);
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `n` tokens' `k` distinct experts of `experts`, from `seed`.
    fn routes(n: usize, k: usize, experts: usize, seed: u64) -> Vec<i32> {
        let mut rng = crate::sampler::Rng::new(seed);
        let mut ids = Vec::new();
        for _ in 0..n {
            let mut chosen: Vec<i32> = Vec::new();
            while chosen.len() < k {
                let e = (rng.next_u64() % experts as u64) as i32;
                if !chosen.contains(&e) {
                    chosen.push(e);
                }
            }
            chosen.sort();
            ids.extend(chosen);
        }
        ids
    }

    proptest! {
        /// Every (token, slot) lands once in its expert's group, tokens ascending; laid out, once
        /// at the row `rows_of` names: in its expert's block, or in the rows of its heavy
        /// expert after the blocks; padding only inside blocks; never beyond the rows given.
        #[test]
        fn grouping_and_padding_cover_every_slot_once(
            n in 1usize..40, k in 1usize..5, extra in 0usize..12, pad in 0usize..200,
            seed in any::<u64>()
        ) {
            let experts = k + extra;
            let mut host = HostLists { ids: routes(n, k, experts, seed), ..Default::default() };
            group(&mut host, n, k, experts).unwrap();
            let mut seen = vec![false; n * k];
            for e in 0..experts {
                let pairs = &host.list[2 * host.starts[e]..2 * host.starts[e + 1]];
                let tokens: Vec<i32> = pairs.chunks(2).map(|p| p[0]).collect();
                prop_assert!(tokens.windows(2).all(|w| w[0] < w[1]));
                for p in pairs.chunks(2) {
                    let (t, j) = (p[0] as usize, p[1] as usize);
                    prop_assert_eq!(host.ids[t * k + j], e as i32);
                    prop_assert!(!seen[t * k + j]);
                    seen[t * k + j] = true;
                }
            }
            prop_assert!(seen.iter().all(|&s| s));
            // Laid out in blocks (and heavy experts' own rows) within `padded` rows.
            let padded = n * k + pad;
            let (cap, rows) = lay_out(&mut host, n, k, experts, padded);
            prop_assert!(rows <= padded && rows >= experts * cap);
            let mut placed = vec![false; n * k];
            for row in 0..rows {
                let (t, j) = (host.upload[2 * row], host.upload[2 * row + 1]);
                if t < 0 {
                    // Padding: inside a block.
                    prop_assert!(row < experts * cap);
                    continue;
                }
                let (t, j) = (t as usize, j as usize);
                prop_assert_eq!(host.rows_of[t * k + j], row as i32);
                prop_assert!(!placed[t * k + j]);
                placed[t * k + j] = true;
                let e = host.ids[t * k + j] as usize;
                match host.heavy.iter().find(|h| h.0 == e) {
                    Some(&(_, first, count)) => {
                        prop_assert!(count > cap && (first..first + count).contains(&row));
                        prop_assert!(first >= experts * cap);
                    }
                    None => prop_assert!((e * cap..(e + 1) * cap).contains(&row)),
                }
            }
            prop_assert!(placed.iter().all(|&p| p));
        }
    }

    #[test]
    fn an_expert_id_out_of_range_is_an_error() {
        let mut host = HostLists {
            ids: vec![0, 9],
            ..Default::default()
        };
        assert!(group(&mut host, 1, 2, 4).is_err());
    }
}
