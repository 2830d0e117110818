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
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use cudarc::driver::sys;
use hoist_io::plan::Plan;

use crate::driver::{check, copy_htod_async, Event, Gpu, Stream};
use crate::first_error::FirstError;
use crate::tensors::Destinations;
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
    if gpu.make_current().is_err() {
        return false;
    }
    let mut v = 0i32;
    let mut dev: sys::CUdevice = 0;
    // SAFETY: out-pointers to locals.
    let ok = unsafe { sys::cuDeviceGet(&mut dev, gpu.ordinal() as i32) } == sys::CUresult::CUDA_SUCCESS
        // SAFETY: out-pointer to a local; dev is valid.
        && unsafe {
            sys::cuDeviceGetAttribute(&mut v, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED, dev)
        } == sys::CUresult::CUDA_SUCCESS;
    ok && v != 0
}

/// Copies every chunk of `plan` from the page cache into `dest` on `threads` threads, each with
/// its own stream; `finish(chunk)` once a chunk's bytes are on the device. Returns bytes copied.
pub(crate) fn load(
    gpu: &Arc<Gpu>,
    plan: &Plan,
    dest: &Destinations,
    threads: usize,
    finish: &(dyn Fn(usize) + Sync),
) -> Result<u64, CudaError> {
    let page = hoist_io::residency::page_bytes() as usize;
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
    let next = AtomicUsize::new(0);
    let failed = FirstError::default();
    let bytes = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 256).min(plan.chunks.len().max(1)) {
            s.spawn(|| {
                let run = || -> Result<(), CudaError> {
                    gpu.make_current()?;
                    let stream = Stream::new(gpu)?;
                    let events = (0..=DEPTH)
                        .map(|_| Event::new(gpu))
                        .collect::<Result<Vec<_>, _>>()?;
                    let mut free: Vec<usize> = (0..=DEPTH).collect();
                    // (event index, pinned address, pinned length, chunk)
                    let mut pending: VecDeque<(usize, *mut c_void, usize)> = VecDeque::new();
                    let mut pending_chunks: VecDeque<usize> = VecDeque::new();
                    let retire = |pending: &mut VecDeque<(usize, *mut c_void, usize)>,
                                  chunks: &mut VecDeque<usize>,
                                  free: &mut Vec<usize>|
                     -> Result<(), CudaError> {
                        if let (Some((e, p, _)), Some(c)) =
                            (pending.pop_front(), chunks.pop_front())
                        {
                            events[e].synchronize()?;
                            // SAFETY: p was registered below and its copies have completed.
                            check("cuMemHostUnregister", gpu.ordinal(), unsafe {
                                sys::cuMemHostUnregister(p)
                            })?;
                            free.push(e);
                            bytes.fetch_add(plan.chunks[c].need, Ordering::Relaxed);
                            finish(c);
                        }
                        Ok(())
                    };
                    let result = (|| {
                        while !failed.aborted() {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(c) = plan.chunks.get(i) else { break };
                            let map = &maps[c.file];
                            let off = c.file_offset as usize;
                            let reg = (c.need as usize).next_multiple_of(page);
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
                            // SAFETY: [src, src + reg) lies inside the mapping's pages (the
                            // mapping covers whole pages); chunks are page aligned and disjoint,
                            // so no two registrations overlap.
                            let r = unsafe {
                                sys::cuMemHostRegister_v2(
                                    src as *mut c_void,
                                    reg,
                                    sys::CU_MEMHOSTREGISTER_READ_ONLY,
                                )
                            };
                            check("cuMemHostRegister(READ_ONLY, page cache)", gpu.ordinal(), r)?;
                            for (dst, src_off, len) in dest.copies(plan, c) {
                                // SAFETY: the source is pinned until the event below completes;
                                // the destination lies inside its allocation.
                                unsafe {
                                    copy_htod_async(gpu, dst, src.add(src_off), len, &stream)?
                                };
                            }
                            let e = free.pop().unwrap_or(0);
                            events[e].record(&stream)?;
                            pending.push_back((e, src as *mut c_void, reg));
                            pending_chunks.push_back(i);
                            if pending.len() >= DEPTH {
                                retire(&mut pending, &mut pending_chunks, &mut free)?;
                            }
                        }
                        Ok(())
                    })();
                    while !pending.is_empty() {
                        if let Err(e) = retire(&mut pending, &mut pending_chunks, &mut free) {
                            // Still unpin what is left once the stream is idle.
                            let _ = stream.synchronize();
                            for (_, p, _) in pending.drain(..) {
                                // SAFETY: registered above; the stream is idle.
                                unsafe { sys::cuMemHostUnregister(p) };
                            }
                            return Err(e);
                        }
                    }
                    result
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
