//! The page-cache zero-copy path (experimental): for data already in the page cache, map the
//! file read-only, pin each chunk's page-cache pages in place (`cuMemHostRegister` with
//! `READ_ONLY`) and let the copy engine read them directly, then unpin.
//!
//! Why: the ring path moves every byte through DRAM three times (page cache → pinned slot by
//! the CPU, a read and a write; then the DMA read); this moves it once, so on a warm cache it
//! is bounded by the pinning cost and the PCIe link instead of the CPU's copy bandwidth. Cold
//! pages would be faulted in one at a time by the pinning, so this path is only for resident
//! data. No host memory is allocated at all.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::fs::File;
use std::os::fd::AsRawFd;

use cudarc::driver::sys;

use crate::chunk_pool::{ChunkLoad, ChunkWorker};
use crate::driver::{check, copy_htod_async, DeviceAttribute, Event, Gpu, Stream};
use crate::CudaError;

/// Copies each thread keeps queued before it waits for the oldest.
const DEPTH: usize = 4;

struct Map {
    ptr: *mut c_void,
    len: usize,
}

impl Drop for Map {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping a mapping made in `load`, once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

// SAFETY: a read-only mapping, only read (by the DMA engine) while pinned.
unsafe impl Send for Map {}
// SAFETY: as above.
unsafe impl Sync for Map {}

/// Whether the device can DMA from read-only registered host memory (needed to pin a
/// read-only file mapping).
pub(crate) fn supported(gpu: &Gpu) -> bool {
    gpu.attribute(DeviceAttribute::ReadOnlyHostRegisterSupported)
        .is_ok_and(|v| v != 0)
}

/// Copies every chunk of the load from the page cache into its destinations, each worker
/// thread with its own stream. Returns bytes copied.
pub(crate) fn load(load: &ChunkLoad<'_>) -> Result<u64, CudaError> {
    let plan = load.plan;
    let mut maps = Vec::with_capacity(plan.files.len());
    for f in &plan.files {
        let file = File::open(&f.path).map_err(|source| CudaError::File {
            path: f.path.clone(),
            source,
        })?;
        let len = file
            .metadata()
            .map_err(|source| CudaError::File {
                path: f.path.clone(),
                source,
            })?
            .len() as usize;
        if len == 0 {
            maps.push(Map {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
            continue;
        }
        // SAFETY: a fresh read-only shared mapping of a file we opened; only the DMA engine
        // reads it (a concurrent truncation would fault the copy: the hazard every mmap loader
        // accepts).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(CudaError::File {
                path: f.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        maps.push(Map { ptr, len });
    }
    let page_bytes = hoist_io::residency::page_bytes() as usize;
    load.run(|| MappedWorker::new(load, &maps, page_bytes))
}

/// A chunk whose page-cache pages are pinned while its copies run.
struct Pinned {
    /// Index of the event recorded after its copies.
    event: usize,
    /// Start of the registration.
    ptr: *mut c_void,
    /// The chunk.
    chunk: usize,
}

/// One thread of the mapped load: pins a chunk's pages, queues its copies on the thread's
/// stream, and keeps up to [`DEPTH`] chunks in flight before unpinning the oldest.
struct MappedWorker<'a> {
    load: &'a ChunkLoad<'a>,
    maps: &'a [Map],
    page_bytes: usize,
    stream: Stream,
    /// One more than the chunks in flight, so one is always free to record.
    events: Vec<Event>,
    free: Vec<usize>,
    pending: VecDeque<Pinned>,
}

impl<'a> MappedWorker<'a> {
    fn new(
        load: &'a ChunkLoad<'a>,
        maps: &'a [Map],
        page_bytes: usize,
    ) -> Result<MappedWorker<'a>, CudaError> {
        Ok(MappedWorker {
            load,
            maps,
            page_bytes,
            stream: Stream::new(load.gpu)?,
            events: (0..=DEPTH)
                .map(|_| Event::new(load.gpu))
                .collect::<Result<Vec<_>, _>>()?,
            free: (0..=DEPTH).collect(),
            pending: VecDeque::with_capacity(DEPTH),
        })
    }

    /// Waits for the oldest chunk's copies, unpins it and reports it done. It leaves the
    /// queue only once unpinned, so a failure leaves it to [`ChunkWorker::complete`].
    fn retire_oldest(&mut self, done: &dyn Fn(usize)) -> Result<(), CudaError> {
        let Some(oldest) = self.pending.front() else {
            return Ok(());
        };
        self.events[oldest.event].synchronize()?;
        let ptr = oldest.ptr;
        // SAFETY: registered in `start` and its copies have completed (event above).
        check("cuMemHostUnregister", self.load.gpu.ordinal(), unsafe {
            sys::cuMemHostUnregister(ptr)
        })?;
        if let Some(p) = self.pending.pop_front() {
            self.free.push(p.event);
            done(p.chunk);
        }
        Ok(())
    }
}

impl ChunkWorker for MappedWorker<'_> {
    fn start(&mut self, index: usize, done: &dyn Fn(usize)) -> Result<(), CudaError> {
        let plan = self.load.plan;
        let c = &plan.chunks[index];
        let map = &self.maps[c.file];
        let off = c.file_offset as usize;
        let reg = (c.need as usize).next_multiple_of(self.page_bytes);
        if off + c.need as usize > map.len {
            return Err(CudaError::FileChanged {
                path: plan.files[c.file].path.clone(),
                reason: format!(
                    "it is {} bytes now but data should reach {}",
                    map.len,
                    off + c.need as usize
                ),
            });
        }
        // SAFETY: off < map.len, inside the mapping.
        let src = unsafe { (map.ptr as *mut u8).add(off) };
        // SAFETY: [src, src + reg) lies inside the mapping's pages (the mapping covers whole
        // pages); chunks are page aligned and disjoint, so no two registrations overlap.
        let r = unsafe {
            sys::cuMemHostRegister_v2(src as *mut c_void, reg, sys::CU_MEMHOSTREGISTER_READ_ONLY)
        };
        check(
            "cuMemHostRegister(READ_ONLY, page cache)",
            self.load.gpu.ordinal(),
            r,
        )?;
        let event = self
            .free
            .pop()
            .expect("DEPTH + 1 events for at most DEPTH chunks in flight");
        // Queued before the copies: a failed copy still leaves the pages to be unpinned.
        self.pending.push_back(Pinned {
            event,
            ptr: src as *mut c_void,
            chunk: index,
        });
        let queued = (|| {
            for (dst, src_off, len) in self.load.dest.copies(plan, c) {
                // SAFETY: the source is pinned until the event below completes; the
                // destination lies inside its allocation.
                unsafe {
                    copy_htod_async(self.load.gpu, dst, src.add(src_off), len, &self.stream)?
                };
            }
            self.events[event].record(&self.stream)
        })();
        if let Err(e) = queued {
            // The event was not recorded: only an idle stream makes unpinning safe.
            let _ = self.stream.synchronize();
            return Err(e);
        }
        if self.pending.len() >= DEPTH {
            self.retire_oldest(done)?;
        }
        Ok(())
    }

    fn complete(&mut self, done: &dyn Fn(usize)) -> Result<(), CudaError> {
        while !self.pending.is_empty() {
            if let Err(e) = self.retire_oldest(done) {
                // Still unpin what is left once the stream is idle.
                let _ = self.stream.synchronize();
                for p in self.pending.drain(..) {
                    // SAFETY: registered in `start`; the stream is idle.
                    unsafe { sys::cuMemHostUnregister(p.ptr) };
                }
                return Err(e);
            }
        }
        Ok(())
    }
}
