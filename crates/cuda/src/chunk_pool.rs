//! The worker pool of the loads that move chunk by chunk without the read engine (cuFile, the
//! page-cache mapping): threads take chunks in plan order from a shared counter, each through
//! its own [`ChunkWorker`], until the plan is done or one fails; the first error wins.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use hoist_io::plan::Plan;

use crate::driver::Gpu;
use crate::first_error::FirstError;
use crate::tensors::Destinations;
use crate::CudaError;

/// One load of a plan's chunks into their device buffers.
pub(crate) struct ChunkLoad<'a> {
    /// The device.
    pub(crate) gpu: &'a Arc<Gpu>,
    /// What to load.
    pub(crate) plan: &'a Plan,
    /// Where it goes.
    pub(crate) dest: &'a Destinations,
    /// Worker threads (clamped to 1..=256 and to the number of chunks).
    pub(crate) threads: usize,
    /// Called with each chunk index once its bytes are on the device.
    pub(crate) finish: &'a (dyn Fn(usize) + Sync),
}

/// One thread's side of a [`ChunkLoad`].
pub(crate) trait ChunkWorker {
    /// Puts chunk `index` on its way to the device; calls `done` with each chunk (this one or
    /// one started before) that is complete on the device.
    fn start(&mut self, index: usize, done: &dyn Fn(usize)) -> Result<(), CudaError>;

    /// Completes every chunk started, also after a failure (releasing what the worker holds),
    /// calling `done` for each that completed.
    fn complete(&mut self, done: &dyn Fn(usize)) -> Result<(), CudaError>;
}

impl ChunkLoad<'_> {
    /// Runs a worker made by `worker` (on its own thread, with the device's context current)
    /// on each of the pool's threads; returns the bytes of the chunks completed.
    pub(crate) fn run<W: ChunkWorker>(
        &self,
        worker: impl Fn() -> Result<W, CudaError> + Sync,
    ) -> Result<u64, CudaError> {
        let chunks = self.plan.chunks.len();
        let next = AtomicUsize::new(0);
        let failed = FirstError::default();
        let bytes = AtomicU64::new(0);
        let done = |i: usize| {
            bytes.fetch_add(self.plan.chunks[i].need, Ordering::Relaxed);
            (self.finish)(i);
        };
        std::thread::scope(|s| {
            for _ in 0..self.threads.clamp(1, 256).min(chunks.max(1)) {
                s.spawn(|| {
                    let run = || -> Result<(), CudaError> {
                        self.gpu.make_current()?;
                        let mut w = worker()?;
                        let mut started = || -> Result<(), CudaError> {
                            while !failed.aborted() {
                                let i = next.fetch_add(1, Ordering::Relaxed);
                                if i >= chunks {
                                    break;
                                }
                                w.start(i, &done)?;
                            }
                            Ok(())
                        };
                        let started = started();
                        // Always completed: a failed worker still releases what it holds.
                        let completed = w.complete(&done);
                        started.and(completed)
                    };
                    if let Err(e) = run() {
                        failed.record(e);
                    }
                });
            }
        });
        failed.into_result()?;
        Ok(bytes.into_inner())
    }
}
