//! The GPU sink: reads land in a bounded ring of pinned host slots, each slot is copied to its
//! final place on the GPU by `cuMemcpyHtoDAsync` on one of several streams, and an event per
//! slot says when the slot may be read into again.
//!
//! This is what bounds host memory whatever the model size (the ring is the only large host
//! allocation) and what lets reading, copying and the next read overlap: a reader thread hands a
//! full slot to the copy engine and immediately takes another; only when every slot is either
//! being read into or still being copied out does it wait, and then on the oldest copy's event
//! (copies finish roughly in order). A tensor is reported complete only once the copies of all
//! its chunks have completed on the device, not when they were queued.
//!
//! The pinned memory, its events and the copy streams ([`StagingRing`]) outlive a load: pinning
//! costs tens of milliseconds, so the [`crate::loader`] keeps one ring per device for the next
//! load; a [`RingSink`] is one load's use of it.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hoist_io::plan::{Chunk, Plan};
use hoist_io::{CompletionTracker, Sink, SinkError, Staging};

use crate::driver::{copy_htod_async, Event, Gpu, PinnedAlloc, PinnedBuf, Stream};
use crate::tensors::Destinations;
use crate::CudaError;

/// How long an `acquire` may wait with every slot held by readers before it reports a stall
/// (a read that never returns, or a reader that failed without handing its slot back).
const STALL: Duration = Duration::from_secs(120);

struct RingState {
    /// Slots ready to be read into.
    free: Vec<usize>,
    /// Slots whose copy is queued, oldest first, with the chunk they carry.
    copying: VecDeque<(usize, usize)>,
}

/// What a load asks of a staging ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingRequest {
    /// Bytes of a slot (the plan's chunk size).
    pub(crate) slot_bytes: usize,
    /// Slots the load can use: no more than its chunks, so a small load pins little.
    pub(crate) slots: usize,
    /// Slots the caller's ring size allows at most.
    pub(crate) max_slots: usize,
    /// Copy streams.
    pub(crate) streams: usize,
    /// How the ring is pinned.
    pub(crate) pinned: PinnedAlloc,
    /// Offer the slots to io_uring as registered buffers.
    pub(crate) offer_fixed: bool,
}

impl RingRequest {
    /// The ring a load of `plan` needs, within `ring_bytes` of pinned memory.
    pub(crate) fn new(
        plan: &Plan,
        ring_bytes: usize,
        streams: usize,
        pinned: PinnedAlloc,
        offer_fixed: bool,
    ) -> Result<RingRequest, CudaError> {
        let slot_bytes = plan.config.chunk_bytes as usize;
        let max_slots = ring_bytes / slot_bytes.max(1);
        if max_slots < 2 {
            return Err(CudaError::Config(format!(
                "ring of {ring_bytes} bytes holds fewer than 2 slots of {slot_bytes} bytes (the chunk size); raise --ring-bytes or lower --chunk-bytes"
            )));
        }
        let slots = max_slots.min(plan.chunks.len().max(2));
        Ok(RingRequest {
            slot_bytes,
            slots,
            max_slots,
            streams: streams.clamp(1, 64),
            pinned,
            offer_fixed: offer_fixed && slots <= u16::MAX as usize,
        })
    }
}

/// Pinned host slots with an event each, and the streams that copy out of them.
pub(crate) struct StagingRing {
    gpu: Arc<Gpu>,
    slot_memory: PinnedBuf,
    /// What it was made for (its `slots` are the ring's).
    shape: RingRequest,
    /// One per slot: recorded after the slot's copies.
    events: Vec<Event>,
    /// One per stream: joins the streams into the first for [`StagingRing::record_all`].
    joins: Vec<Event>,
    streams: Vec<Stream>,
}

impl StagingRing {
    /// Pins a ring of `request.slots` slots on `gpu`.
    pub(crate) fn new(gpu: &Arc<Gpu>, request: RingRequest) -> Result<StagingRing, CudaError> {
        assert!(request.slots >= 2 && request.slots <= request.max_slots);
        let slot_memory = PinnedBuf::new(gpu, request.slots * request.slot_bytes, request.pinned)?;
        let events = (0..request.slots)
            .map(|_| Event::new(gpu))
            .collect::<Result<Vec<_>, _>>()?;
        let streams = (0..request.streams)
            .map(|_| Stream::new(gpu))
            .collect::<Result<Vec<_>, _>>()?;
        let joins = (0..request.streams)
            .map(|_| Event::new(gpu))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StagingRing {
            gpu: gpu.clone(),
            slot_memory,
            shape: request,
            events,
            joins,
            streams,
        })
    }

    /// Whether this ring serves `request`: the same slot size, streams and pinning, and a slot
    /// count between what the load can use and what its ring size allows.
    pub(crate) fn fits(&self, request: &RingRequest) -> bool {
        let s = &self.shape;
        s.slot_bytes == request.slot_bytes
            && s.streams == request.streams
            && s.pinned == request.pinned
            && s.offer_fixed == request.offer_fixed
            && (request.slots..=request.max_slots).contains(&s.slots)
    }

    /// Bytes of pinned host memory the ring holds.
    pub(crate) fn ring_bytes(&self) -> usize {
        self.slot_memory.len()
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.shape.slots
    }

    /// Records `done` after every copy queued so far on any of the ring's streams.
    pub(crate) fn record_all(&self, done: &Event) -> Result<(), CudaError> {
        let (first, rest) = self
            .streams
            .split_first()
            .expect("a ring has at least one stream");
        for (s, join) in rest.iter().zip(&self.joins) {
            join.record(s)?;
            first.wait(join)?;
        }
        done.record(first)
    }

    /// The device.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

impl Drop for StagingRing {
    fn drop(&mut self) {
        // Copies may still read the ring (after a failed load); the ring must outlive them.
        for s in &self.streams {
            let _ = s.synchronize();
        }
    }
}

/// One load's use of a [`StagingRing`]: the engine reads into its slots, this queues the
/// copies out of them into the load's destinations.
pub(crate) struct RingSink<'a> {
    ring: &'a StagingRing,
    plan: &'a Plan,
    dest: &'a Destinations,
    slot_bytes: usize,
    slots: usize,
    next_stream: AtomicUsize,
    state: Mutex<RingState>,
    cv: Condvar,
    tracker: CompletionTracker,
    on_placement: &'a (dyn Fn(usize) + Sync),
}

impl<'a> RingSink<'a> {
    /// A load of `plan` into `dest` through `ring`; `on_placement` is called with each
    /// placement index once its bytes are on the device.
    pub(crate) fn new(
        ring: &'a StagingRing,
        plan: &'a Plan,
        dest: &'a Destinations,
        on_placement: &'a (dyn Fn(usize) + Sync),
    ) -> RingSink<'a> {
        let slots = ring.slots();
        assert_eq!(
            ring.shape.slot_bytes as u64, plan.config.chunk_bytes,
            "ring slots must be the plan's chunk size"
        );
        RingSink {
            ring,
            plan,
            dest,
            slot_bytes: ring.shape.slot_bytes,
            slots,
            next_stream: AtomicUsize::new(0),
            state: Mutex::new(RingState {
                free: (0..slots).rev().collect(),
                copying: VecDeque::with_capacity(slots),
            }),
            cv: Condvar::new(),
            tracker: CompletionTracker::new(plan),
            on_placement,
        }
    }

    fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot_ptr(&self, slot: usize) -> NonNull<u8> {
        assert!(slot < self.slots);
        // SAFETY: slot < slots, so the offset stays inside the ring's allocation.
        unsafe { self.ring.slot_memory.ptr().add(slot * self.slot_bytes) }
    }

    fn staging(&self, slot: usize) -> Staging {
        Staging {
            ptr: self.slot_ptr(slot),
            len: self.slot_bytes,
            slot: slot as u32,
            fixed: if self.ring.shape.offer_fixed {
                Some(slot as u16)
            } else {
                None
            },
        }
    }

    /// The chunk's copies are complete on the device: report the tensors this completes.
    fn finish(&self, chunk: usize) {
        self.tracker
            .chunk_done(&self.plan.chunks[chunk], |p| (self.on_placement)(p));
    }

    /// Waits for every queued copy and reports the tensors they complete; call once the engine
    /// has returned (whatever it returned).
    pub(crate) fn drain(&self) -> Result<(), CudaError> {
        let pending: Vec<(usize, usize)> = self.lock().copying.drain(..).collect();
        let mut first = None;
        for (slot, chunk) in pending {
            match self.ring.events[slot].synchronize() {
                Ok(()) => self.finish(chunk),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
            self.lock().free.push(slot);
        }
        for s in &self.ring.streams {
            if let Err(e) = s.synchronize() {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether every selected tensor has reached the device.
    pub(crate) fn all_done(&self) -> bool {
        self.tracker.all_done()
    }
}

impl Drop for RingSink<'_> {
    fn drop(&mut self) {
        // The ring goes on to the next load: no copy of this one may still read it then.
        for s in &self.ring.streams {
            let _ = s.synchronize();
        }
    }
}

impl Sink for RingSink<'_> {
    fn acquire(&self, _index: usize, _chunk: &Chunk) -> Result<Staging, SinkError> {
        let start = Instant::now();
        let mut st = self.lock();
        loop {
            if let Some(slot) = st.free.pop() {
                return Ok(self.staging(slot));
            }
            if let Some((slot, chunk)) = st.copying.pop_front() {
                drop(st);
                self.ring.events[slot].synchronize()?;
                self.finish(chunk);
                return Ok(self.staging(slot));
            }
            // Every slot is being read into: wait for a commit.
            let (guard, _) = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            if start.elapsed() > STALL {
                return Err(format!(
                    "staging ring stalled: all {} slots of {} bytes were held by readers for {} s",
                    self.slots,
                    self.slot_bytes,
                    STALL.as_secs()
                )
                .into());
            }
        }
    }

    fn try_acquire(&self, _index: usize, _chunk: &Chunk) -> Result<Option<Staging>, SinkError> {
        let mut st = self.lock();
        if let Some(slot) = st.free.pop() {
            return Ok(Some(self.staging(slot)));
        }
        let Some(&(slot, chunk)) = st.copying.front() else {
            return Ok(None);
        };
        if !self.ring.events[slot].query()? {
            return Ok(None);
        }
        st.copying.pop_front();
        drop(st);
        self.finish(chunk);
        Ok(Some(self.staging(slot)))
    }

    fn commit(&self, index: usize, chunk: &Chunk, staging: Staging) -> Result<(), SinkError> {
        let slot = staging.slot as usize;
        debug_assert_eq!(staging.ptr, self.slot_ptr(slot));
        let streams = &self.ring.streams;
        let stream = &streams[self.next_stream.fetch_add(1, Ordering::Relaxed) % streams.len()];
        let queued = (|| {
            for (dst, src_offset, len) in self.dest.copies(self.plan, chunk) {
                // SAFETY: the slot is pinned ring memory that nobody touches until its event
                // (recorded below, after this copy) completes; `copies` keeps every source range
                // inside the chunk's `need` bytes and every destination inside its allocation.
                unsafe {
                    copy_htod_async(
                        &self.ring.gpu,
                        dst,
                        staging.ptr.as_ptr().add(src_offset),
                        len,
                        stream,
                    )?
                };
            }
            self.ring.events[slot].record(stream)
        })();
        let mut st = self.lock();
        match queued {
            Ok(()) => st.copying.push_back((slot, index)),
            // The load fails; the slot goes back so no reader waits on it forever.
            Err(_) => st.free.push(slot),
        }
        drop(st);
        self.cv.notify_one();
        queued.map_err(|e| Box::new(e) as SinkError)
    }

    fn release(&self, _index: usize, staging: Staging) {
        // A read failed or was abandoned: the slot holds garbage and no copy reads it.
        self.lock().free.push(staging.slot as usize);
        self.cv.notify_one();
    }

    fn reuses_buffers(&self) -> bool {
        // The ring's slots are pinned and refilled all load long: cached chunks are read into
        // them with buffered pread (40 vs 27 GB/s for mmap copies on the GPU machine).
        true
    }

    fn registered_buffers(&self) -> Vec<(NonNull<u8>, usize)> {
        if !self.ring.shape.offer_fixed {
            return Vec::new();
        }
        (0..self.slots)
            .map(|s| (self.slot_ptr(s), self.slot_bytes))
            .collect()
    }
}
