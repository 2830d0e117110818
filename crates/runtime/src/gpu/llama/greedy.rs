//! Greedy decoding with the arg-max taken on the device.
//!
//! A decode step that sends its logits to the host, waits there for the choice and then uploads
//! the chosen token leaves the GPU idle for that round trip (~0.1 ms on an H100, 4% of a
//! 7B Q4_0 step). Here each step ends with [`Ops::argmax_next`](super::Ops::argmax_next),
//! which writes the chosen token and the next position where the next step reads them, so the
//! host queues steps [`QUEUE_DEPTH`] deep and only reads each step's token (4 bytes, copied to
//! pinned memory) to stream it and decide whether to stop. Steps queued past a stop are
//! wasted work whose KV-cache writes land past the session's length, where later steps write
//! anew.

use hoist_cuda::{Event, PinnedAlloc, PinnedBuf};

use super::{bytes_of, GpuSession};
use crate::cpu::ForwardError;
use crate::gpu::GpuError;
use crate::RuntimeError;

/// Steps on the GPU at most while the host waits for the oldest: two keep the GPU busy while
/// the host handles a token; one more absorbs a slow write of the streamed text.
const QUEUE_DEPTH: usize = 3;

/// Bytes of the pinned token slots (one page; a 4-byte slot per queued step).
const SLOT_BYTES: usize = 4096;

/// Where queued steps leave their tokens for the host.
pub(super) struct Slots {
    /// Step `s` copies its token to bytes `4 * (s % QUEUE_DEPTH)..`.
    tokens: PinnedBuf,
    /// Recorded after step `s`'s copy, at `s % QUEUE_DEPTH`.
    copied: Vec<Event>,
}

impl Slots {
    fn new(session: &GpuSession<'_>) -> Result<Slots, GpuError> {
        const { assert!(QUEUE_DEPTH * 4 <= SLOT_BYTES) };
        let gpu = &session.model.gpu;
        Ok(Slots {
            tokens: PinnedBuf::new(gpu, SLOT_BYTES, PinnedAlloc::HostAlloc)?,
            copied: (0..QUEUE_DEPTH)
                .map(|_| Event::new(gpu))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The token step `s` copied (its event has completed).
    fn token(&self, s: usize) -> u32 {
        let slot = (s % QUEUE_DEPTH) * 4;
        // SAFETY: the slot lies inside the pinned page and its copy has completed (the caller
        // waited on its event); the DMA engine wrote it, hence the volatile read.
        unsafe { std::ptr::read_volatile(self.tokens.ptr().as_ptr().add(slot) as *const u32) }
    }
}

impl GpuSession<'_> {
    /// Feeds `first` after the cached positions, then, step after step, the arg-max of the
    /// previous step's logits, all chosen on the GPU. `next` receives each chosen token in
    /// order and returns whether to go on; the token it refuses is not fed. At most
    /// `max_feeds` tokens are fed (`first` included), so the `max_feeds`-th token `next`
    /// accepts is not fed either. Returns the tokens fed; the session's length grows by as
    /// many. The result is that of calling [`GpuSession::forward`] with each token and
    /// choosing by [`crate::sampler::argmax`], with the GPU never waiting for the host.
    ///
    /// # Errors
    /// [`ForwardError::ContextFull`] when `next` still wants tokens once the cache is full (the
    /// tokens before are fed and kept), [`ForwardError::Token`] for a `first` outside the
    /// vocabulary, and GPU failures.
    pub fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Result<usize, RuntimeError> {
        let vocab = self.model.config.vocab_size;
        if first as usize >= vocab {
            return Err(ForwardError::Token {
                token: first,
                vocab,
            }
            .into());
        }
        if max_feeds == 0 {
            return Ok(0);
        }
        let limit = max_feeds.min(self.capacity - self.len);
        let slots = match self.greedy.take() {
            Some(s) => s,
            None => Slots::new(self)?,
        };
        let mut fed = 0;
        let ended = self.feed_queued(first, limit, max_feeds, &slots, next, &mut fed);
        // Steps queued past the stop still run; none may outlive this call (the next call
        // rewrites the ids they read; the slots must outlast their copies).
        let waited = self.model.stream.synchronize();
        self.greedy = Some(slots);
        self.len += fed;
        ended?;
        waited.map_err(GpuError::from)?;
        Ok(fed)
    }

    /// The loop of [`GpuSession::decode_greedy`]: queues steps while fewer than
    /// [`QUEUE_DEPTH`] are unread and `limit` allows, reads the oldest, hands it to `next`.
    /// `fed` counts the steps whose tokens were read (so fed to the model).
    fn feed_queued(
        &mut self,
        first: u32,
        limit: usize,
        max_feeds: usize,
        slots: &Slots,
        next: &mut dyn FnMut(u32) -> bool,
        fed: &mut usize,
    ) -> Result<(), RuntimeError> {
        if limit == 0 {
            return Err(self.context_full(1));
        }
        if self.graphs && self.greedy_graph.is_none() {
            self.greedy_graph = Some(self.capture(true)?);
        }
        let m = self.model;
        self.ids.clear();
        self.ids.extend([first as i32, self.len as i32]);
        self.bufs
            .ids
            .write_async(&m.stream, bytes_of(&self.ids))
            .map_err(GpuError::from)?;
        let mut queued = 0;
        loop {
            while queued < limit && queued - *fed < QUEUE_DEPTH {
                self.queue_step(queued, slots)?;
                queued += 1;
            }
            slots.copied[*fed % QUEUE_DEPTH]
                .synchronize()
                .map_err(GpuError::from)?;
            let token = slots.token(*fed);
            *fed += 1;
            if !next(token) || *fed == max_feeds {
                return Ok(());
            }
            if *fed == limit {
                return Err(self.context_full(*fed + 1));
            }
        }
    }

    /// Queues step `s` of [`GpuSession::decode_greedy`] and the copy of its token.
    fn queue_step(&self, s: usize, slots: &Slots) -> Result<(), GpuError> {
        let m = self.model;
        match &self.greedy_graph {
            Some(g) => g.launch(&m.stream)?,
            None => self.record_greedy()?,
        }
        let slot = s % QUEUE_DEPTH;
        // SAFETY: the host reads the slot only once the event recorded next has completed, and
        // step s - QUEUE_DEPTH's token (the slot's last) was read before step s was queued;
        // `decode_greedy` waits for the stream before the slots can go.
        unsafe {
            self.bufs
                .ids
                .read_to_pinned_async(&m.stream, &slots.tokens, slot * 4, 4)?
        };
        Ok(slots.copied[slot].record(&m.stream)?)
    }

    /// Queues one decode step over the token and position in the ids buffer, then the arg-max
    /// that replaces them with the next step's (captured as the greedy graph).
    pub(super) fn record_greedy(&self) -> Result<(), GpuError> {
        let rows = self.record(1, false, true)?;
        debug_assert_eq!(rows, 1);
        let vocab = self.model.config.vocab_size;
        // SAFETY: the step left one row of `vocab` f32 logits; the ids buffer holds the token
        // and the position (two i32s) the step read.
        unsafe {
            self.model
                .ops()
                .argmax_next(self.bufs.logits.ptr(), vocab, self.bufs.ids.ptr())
        }
    }

    /// The error of a cache too full for `more` tokens after the cached ones.
    fn context_full(&self, more: usize) -> RuntimeError {
        ForwardError::ContextFull {
            needed: self.len + more,
            capacity: self.capacity,
        }
        .into()
    }
}
