//! Where the engine's reads land, and how completed reads become completed tensors.
//!
//! The engine knows nothing of the destination: for each chunk it asks the sink for host
//! memory to read into ([`Sink::acquire`]), reads, and hands the memory back
//! ([`Sink::commit`]). A host sink gives out slices of the final tensors' buffers (no copy); a
//! GPU sink gives out pinned staging buffers from a bounded ring and copies them to the device
//! on commit, which is what bounds host memory.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::plan::{Chunk, Plan};

/// Host memory that one chunk is read into.
#[derive(Debug)]
pub struct Staging {
    /// Start of the buffer; aligned to the plan's `align_bytes`.
    pub ptr: NonNull<u8>,
    /// Usable bytes at `ptr`; at least the chunk's `len`.
    pub len: usize,
    /// The sink's own tag for the buffer (a ring slot, say); the engine passes it back untouched.
    pub slot: u32,
    /// Index of the buffer in the sink's [`Sink::registered_buffers`], when it is one of them:
    /// the engine then reads with io_uring's fixed-buffer opcode.
    pub fixed: Option<u16>,
}

// SAFETY: a Staging is a unique loan of a buffer from the sink to one engine thread; the sink
// hands each buffer to one chunk at a time and takes it back in `commit`.
unsafe impl Send for Staging {}

/// An error a sink reports; the engine stops and passes it up with the chunk's file and offset.
pub type SinkError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A destination for a plan's reads.
pub trait Sink: Sync {
    /// Memory to read chunk `index` (`chunk`) into. May block until a staging buffer is free.
    fn acquire(&self, index: usize, chunk: &Chunk) -> Result<Staging, SinkError>;

    /// Like [`Sink::acquire`] but returns `Ok(None)` instead of blocking; the io_uring thread uses
    /// it to keep reaping completions while buffers are scarce.
    fn try_acquire(&self, index: usize, chunk: &Chunk) -> Result<Option<Staging>, SinkError> {
        self.acquire(index, chunk).map(Some)
    }

    /// Chunk `index`'s bytes (`chunk.need` of them) are in `staging`.
    fn commit(&self, index: usize, chunk: &Chunk, staging: Staging) -> Result<(), SinkError>;

    /// Takes back a buffer whose read failed or was abandoned (the load is failing); its
    /// contents are garbage. A bounded sink must make the buffer available again, or threads
    /// blocked in [`Sink::acquire`] would wait forever.
    fn release(&self, index: usize, staging: Staging) {
        let _ = (index, staging);
    }

    /// Whether the sink hands out the same few buffers again and again (a staging ring) rather
    /// than fresh destination memory. `auto` picks its method for cached chunks by this answer
    /// ([`crate::engine::auto_cached_into_fresh_memory`] or
    /// [`crate::engine::AUTO_CACHED_INTO_REUSED_BUFFERS`], as measured in docs/BENCHMARKS.md),
    /// since page faults on fresh memory change which copy is cheaper.
    fn reuses_buffers(&self) -> bool {
        false
    }

    /// The buffers to register with io_uring once per ring (`(ptr, len)`), if the sink's buffers
    /// are long-lived. A registered buffer is pinned by the kernel, so only bounded rings should
    /// offer theirs.
    fn registered_buffers(&self) -> Vec<(NonNull<u8>, usize)> {
        Vec::new()
    }
}

/// Counts, per placement, the chunks still to arrive, so that a sink can report each tensor the
/// moment its last chunk lands (possibly on another thread).
#[derive(Debug)]
pub struct CompletionTracker {
    pending: Vec<AtomicU32>,
}

impl CompletionTracker {
    /// A tracker for `plan`: each placement waits for every chunk that overlaps it.
    pub fn new(plan: &Plan) -> CompletionTracker {
        let mut counts = vec![0u32; plan.placements.len()];
        for c in &plan.chunks {
            for p in c.placements.clone() {
                counts[p] += 1;
            }
        }
        CompletionTracker {
            pending: counts.into_iter().map(AtomicU32::new).collect(),
        }
    }

    /// Records that `chunk` is complete at its destination; calls `ready` with each placement
    /// index that this completes. Each placement is reported exactly once over a whole load.
    pub fn chunk_done(&self, chunk: &Chunk, mut ready: impl FnMut(usize)) {
        for p in chunk.placements.clone() {
            let before = self.pending[p].fetch_sub(1, Ordering::AcqRel);
            assert!(
                before > 0,
                "placement {p} completed more often than it has chunks"
            );
            if before == 1 {
                ready(p);
            }
        }
    }

    /// Whether every placement is complete.
    pub fn all_done(&self) -> bool {
        self.pending.iter().all(|c| c.load(Ordering::Acquire) == 0)
    }
}
