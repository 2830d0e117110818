//! One sequence: its KV cache, work buffers and forward steps.

use hoist_cuda::{DevSlice, DeviceBuf};

use super::batch::{Row, MAX_BATCH_ROWS};
use super::graph::Graph;
use super::moe::{ffn_widest, moe_buffer_sizes, MoeBufs};
use super::weights::Ffn;
use super::{bytes_of, greedy, GpuModel, MAX_CHUNK_TOKENS, MAX_CONTEXT, SCORES_BUDGET_BYTES};
use crate::cpu::ForwardError;
use crate::gpu::layers::{Act, AttnDims, Mat, Ops, WType};
use crate::gpu::GpuError;
use crate::RuntimeError;

/// One sequence on a [`GpuModel`]: its KV cache and work buffers.
pub struct GpuSession<'a> {
    pub(super) model: &'a GpuModel,
    pub(super) len: usize,
    pub(super) capacity: usize,
    /// Tokens per forward step (prefill chunk).
    pub(super) chunk: usize,
    /// Queries per attention score tile.
    pub(super) tile: usize,
    pub(super) bufs: Buffers,
    /// Host copy of the token ids of the current step, then its first position.
    pub(super) ids: Vec<i32>,
    /// Whether decode steps replay a captured graph ([`crate::gpu::GpuTuning::graphs`], and
    /// only over resident layers: [`super::weights::LayerStore::capturable`]).
    pub(super) graphs: bool,
    /// The captured one-token step.
    pub(super) graph: Option<Graph>,
    /// The captured one-token step followed by the device's arg-max ([`GpuSession::decode_greedy`]).
    pub(super) greedy_graph: Option<Graph>,
    /// Pinned slots and events of [`GpuSession::decode_greedy`], made on its first use.
    pub(super) greedy: Option<greedy::Slots>,
    /// The rows of the last batched step this session led (`batch.rs`), and that step
    /// captured once it repeated.
    pub(super) batch_rows: Vec<Row>,
    pub(super) batch_graph: Option<Graph>,
    /// The device table of `batch_rows` the kernels read (three u64s a row).
    pub(super) batch_table: DeviceBuf,
}

/// The session's device buffers.
pub(super) struct Buffers {
    pub(super) ids: DeviceBuf,
    pub(super) x: DeviceBuf,
    pub(super) xn: DeviceBuf,
    /// GEMM inputs in the activation type (absent for f32 models, whose f32 buffers serve).
    pub(super) xa: Option<DeviceBuf>,
    pub(super) q: DeviceBuf,
    pub(super) k: DeviceBuf,
    pub(super) v: DeviceBuf,
    pub(super) att: DeviceBuf,
    pub(super) g: DeviceBuf,
    pub(super) u: DeviceBuf,
    pub(super) h: DeviceBuf,
    pub(super) kcache: DeviceBuf,
    pub(super) vcache: DeviceBuf,
    pub(super) scores: DeviceBuf,
    /// q and the attention probabilities in the KV cache's type, for cuBLAS prefill attention
    /// (16-bit caches only).
    pub(super) qa: Option<DeviceBuf>,
    pub(super) probs: Option<DeviceBuf>,
    /// The attention kernel's merge counters (zeroed here, left zero by each step).
    pub(super) counters: DeviceBuf,
    /// Conversion target for matrices not of the activation type (prefill only).
    pub(super) scratch: Option<DeviceBuf>,
    /// Logits of one step: `chunk` rows when every position's logits were asked for.
    pub(super) logits: DeviceBuf,
    pub(super) logits_rows: usize,
    /// Mixture-of-experts models' routing and expert buffers.
    pub(super) moe: Option<MoeBufs>,
}

impl<'a> GpuSession<'a> {
    pub(super) fn new(model: &'a GpuModel, context: usize) -> Result<GpuSession<'a>, RuntimeError> {
        let c = &model.config;
        if context == 0 {
            return Err(
                GpuError::Unsupported("a context of 0 positions holds nothing".into()).into(),
            );
        }
        // Kernels index positions with 32-bit ints, and the sizes below must not overflow.
        if context > MAX_CONTEXT {
            return Err(GpuError::Unsupported(format!(
                "a context of {context} positions is more than the {MAX_CONTEXT} the runtime supports; ask for a shorter context (--context)"
            ))
            .into());
        }
        let scratch_values = model
            .layers
            .mats()
            .chain(model.layers.experts())
            .chain([&model.output])
            .filter(|m| m.wtype.elem() != Some(model.act.elem()))
            .map(|m| m.rows * m.cols)
            // Batched prefill converts a projection of every expert at once.
            .chain(model.layers.batched_scratch_values(model.act))
            .max();
        let (chunk, tile, sizes) = buffer_sizes(c, model.act, context, scratch_values);
        let attn = attn_dims(c, model.act, context);
        // Refused here rather than at the first decode step.
        model.ops().attention_smem(attn)?;
        let moe_sizes = moe_buffer_sizes(c, model.act, chunk);
        let needed: usize = sizes.iter().chain(&moe_sizes).sum();
        let (free, _) = model.gpu.mem_info().map_err(GpuError::from)?;
        // Keep a little for cuBLAS's workspace and the driver.
        let reserve = 256usize << 20;
        if needed + reserve > free as usize {
            return Err(GpuError::ContextTooLarge {
                context,
                needed_bytes: (needed + reserve) as u64,
                needed_gib: (needed + reserve) as f64 / (1u64 << 30) as f64,
                free_bytes: free,
            }
            .into());
        }
        let gpu = &model.gpu;
        let alloc = |n: usize| DeviceBuf::new(gpu, n).map_err(GpuError::from);
        // Buffers some models do without (a size of 0).
        let alloc_some = |n: usize| (n > 0).then(|| alloc(n)).transpose();
        let bufs = Buffers {
            ids: alloc(sizes[0])?,
            x: alloc(sizes[1])?,
            xn: alloc(sizes[2])?,
            xa: alloc_some(sizes[3])?,
            q: alloc(sizes[4])?,
            k: alloc(sizes[5])?,
            v: alloc(sizes[6])?,
            att: alloc(sizes[7])?,
            g: alloc(sizes[8])?,
            u: alloc(sizes[9])?,
            h: alloc(sizes[10])?,
            kcache: alloc(sizes[11])?,
            vcache: alloc(sizes[12])?,
            scores: alloc(sizes[13])?,
            scratch: alloc_some(sizes[14])?,
            logits: alloc(sizes[15])?,
            logits_rows: chunk,
            counters: alloc(sizes[16])?,
            qa: alloc_some(sizes[17])?,
            probs: alloc_some(sizes[18])?,
            moe: MoeBufs::new(gpu, c, chunk, moe_sizes)?,
        };
        bufs.counters
            .zero_async(&model.stream)
            .map_err(GpuError::from)?;
        model.stream.synchronize().map_err(GpuError::from)?;
        Ok(GpuSession {
            model,
            len: 0,
            capacity: context,
            chunk,
            tile,
            bufs,
            ids: Vec::with_capacity(chunk + 1),
            graphs: model.graphs && model.layers.capturable(),
            graph: None,
            greedy_graph: None,
            greedy: None,
            batch_rows: Vec::new(),
            batch_graph: None,
            batch_table: alloc(MAX_BATCH_ROWS * 3 * 8)?,
        })
    }

    /// Runs `tokens` (after the positions already cached) and returns logits: `[n, vocab]` when
    /// `all_logits`, else the last position's `[vocab]`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, RuntimeError> {
        let c = &self.model.config;
        let vocab = c.vocab_size;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        if self.len + tokens.len() > self.capacity {
            return Err(ForwardError::ContextFull {
                needed: self.len + tokens.len(),
                capacity: self.capacity,
            }
            .into());
        }
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ForwardError::Token { token, vocab }.into());
        }
        let mut out = Vec::with_capacity(if all_logits {
            tokens.len() * vocab
        } else {
            vocab
        });
        let chunks = tokens.len().div_ceil(self.chunk);
        for (i, piece) in tokens.chunks(self.chunk).enumerate() {
            let last = i + 1 == chunks;
            let rows = self.step(piece, all_logits, last)?;
            if rows > 0 {
                let start = out.len();
                out.resize(start + rows * vocab, 0.0);
                let dst = &mut out[start..];
                // SAFETY: f32 has no invalid bit patterns; the view covers exactly `dst`.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut u8, dst.len() * 4)
                };
                self.bufs
                    .logits
                    .read(&self.model.stream, bytes)
                    .map_err(GpuError::from)?;
            }
        }
        Ok(out)
    }

    /// One forward step over at most `chunk` tokens; returns how many logit rows it left in
    /// the logits buffer (all of them, the last one, or none).
    fn step(&mut self, tokens: &[u32], all_logits: bool, last: bool) -> Result<usize, GpuError> {
        let m = self.model;
        let n = tokens.len();
        assert!(
            n > 0 && n <= self.chunk,
            "step of {n} tokens, chunk {}",
            self.chunk
        );
        assert!(self.len + n <= self.capacity, "context checked by forward");
        self.ids.clear();
        self.ids.extend(tokens.iter().map(|&t| t as i32));
        self.ids.push(self.len as i32);
        // The ids, then the first position (read by the kernels from device memory).
        self.bufs.ids.write_async(&m.stream, bytes_of(&self.ids))?;
        let rows = if n == 1 && self.graphs {
            // Decode: one captured graph replays every launch of the step (the same for every
            // position), which saves the launch gaps of ~260 small kernels per token.
            if self.graph.is_none() {
                self.graph = Some(self.capture(false)?);
            }
            if let Some(g) = &self.graph {
                g.launch(&m.stream)?;
            }
            1
        } else {
            self.record(n, all_logits, last)?
        };
        self.len += n;
        Ok(rows)
    }
}

impl<'a> GpuSession<'a> {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence (keeps the buffers).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (the next token goes to position `len`).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Runs only the prefill's matrix products for `n` tokens (cuBLAS, the model's shapes and
    /// types; quantized weights use their conversion buffer as it is): the yardstick of
    /// [`super::bench`]. Waits for them.
    pub(crate) fn gemms_only(&self, n: usize) -> Result<(), GpuError> {
        assert!(
            n > 0 && n <= self.chunk,
            "gemms_only: {n} tokens, chunk {}",
            self.chunk
        );
        let m = self.model;
        let ops = m.ops();
        let b = &self.bufs;
        let xa = b.xa.as_ref().map_or(b.xn.ptr(), |x| x.ptr());
        for l in 0..m.layers.len() {
            let layer = m.layers.layer(l);
            let mut products = vec![
                (&layer.q, b.q.ptr(), 0.0),
                (&layer.k, b.k.ptr(), 0.0),
                (&layer.v, b.v.ptr(), 0.0),
                (&layer.o, b.x.ptr(), 1.0),
            ];
            match &layer.ffn {
                Ffn::Dense { gate, up, down } => products.extend([
                    (gate, b.g.ptr(), 0.0),
                    (up, b.u.ptr(), 0.0),
                    (down, b.x.ptr(), 1.0),
                ]),
                // Each token through k experts: k experts' products over all the tokens (the
                // same FLOPs as the grouped ones).
                Ffn::Moe(f) => {
                    let shared = f.shared.as_ref().map(|s| [&s.gate, &s.up, &s.down]);
                    for [gate, up, down] in f.experts[..f.top_k]
                        .iter()
                        .map(|e| [&e[0], &e[1], &e[2]])
                        .chain(shared)
                    {
                        products.extend([
                            (gate, b.g.ptr(), 0.0),
                            (up, b.u.ptr(), 0.0),
                            (down, b.x.ptr(), 1.0),
                        ]);
                    }
                }
            }
            for (w, y, beta) in products {
                let direct = w.wtype.elem() == Some(m.act.elem());
                let a = match (&b.scratch, direct) {
                    (_, true) => *w,
                    (Some(s), false) => {
                        let wtype = match m.act {
                            Act::F32 => WType::F32,
                            Act::F16 => WType::F16,
                            Act::BF16 => WType::BF16,
                        };
                        // The scratch holds the largest converted matrix (sized in `new`).
                        let data = DevSlice::of(s)?.slice(0..wtype.bytes(w.rows * w.cols))?;
                        Mat { data, wtype, ..*w }
                    }
                    (None, false) => {
                        unreachable!("sessions of models with converted weights have scratch")
                    }
                };
                // SAFETY: as in `step`: buffers sized for `chunk` tokens, n <= chunk.
                unsafe { ops.linear(&a, xa, m.act, n, y, beta, 0)? };
            }
        }
        Ok(m.stream.synchronize()?)
    }

    /// The GPU and stream, for timing.
    pub(crate) fn model(&self) -> &'a GpuModel {
        self.model
    }
}

/// Bytes of each of a session's buffers (in [`Buffers`]' order, see `GpuSession::new`) for a
/// model of configuration `c` computing in `act` with a context of `context` positions, and
/// `scratch_values` values of the largest matrix not of the activation type (`None`: none);
/// with the prefill chunk and attention tile they imply. Also the GPU budget's reserve for a
/// session, computed before the model is loaded.
pub(super) fn buffer_sizes(
    c: &crate::config::ModelConfig,
    act: Act,
    context: usize,
    scratch_values: Option<usize>,
) -> (usize, usize, [usize; 19]) {
    let chunk = context.min(MAX_CHUNK_TOKENS);
    let (h, qd, kvd, inter, vocab) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        ffn_widest(c),
        c.vocab_size,
    );
    let act_bytes = act.elem().bytes();
    // 16-bit models keep the KV cache in their type; cuBLAS prefill attention then reads
    // q and the probabilities in that type too (copies beside the f32 ones).
    let copies = if act == Act::F32 { 0 } else { act_bytes };
    let tile = (SCORES_BUDGET_BYTES / (c.num_heads * context * (4 + copies))).clamp(1, chunk);
    let widest = h.max(qd).max(inter);
    let cache_bytes = c.num_layers * c.num_kv_heads * context * c.head_dim * act_bytes;
    let attn = attn_dims(c, act, context);
    let batch_rows = chunk.div_ceil(2).clamp(1, MAX_BATCH_ROWS);
    let sizes = [
        (chunk + 1) * 4,
        chunk * h * 4,
        chunk * h * 4,
        if act == Act::F32 {
            0
        } else {
            chunk * widest * act_bytes
        },
        chunk * qd * 4,
        chunk * kvd * 4,
        chunk * kvd * 4,
        chunk * qd * 4,
        chunk * inter * 4,
        chunk * inter * 4,
        chunk * inter * 4,
        cache_bytes,
        cache_bytes,
        // Prefill's score tiles, or the attention slices of the most rows a batched decode
        // step led by this session takes (`batch.rs`: its ids buffer holds 2 per row).
        (c.num_heads * tile * context).max(Ops::attention_part_values(batch_rows, attn)) * 4,
        scratch_values.map_or(0, |v| v * act_bytes),
        chunk * vocab * 4,
        Ops::attention_counters(chunk, attn) * 4,
        chunk * qd * copies,
        c.num_heads * tile * context * copies,
    ];
    (chunk, tile, sizes)
}

/// The attention dimensions the kernel's scratch sizes depend on (and nothing else).
pub(super) fn attn_dims(c: &crate::config::ModelConfig, act: Act, context: usize) -> AttnDims {
    AttnDims {
        heads: c.num_heads,
        kv_heads: c.num_kv_heads,
        head_dim: c.head_dim,
        capacity: context,
        window: 0,
        cache: act,
    }
}
