//! The io_uring method: one ring per thread, up to `queue_depth` reads in flight, the plan's
//! files registered as fixed files, and the sink's long-lived buffers registered as fixed
//! buffers when it offers some.

use std::os::fd::AsRawFd;

use io_uring::{opcode, types, IoUring};

use super::pread::{check_staging, ReadFail};
use super::{IoError, Method, OpenFiles, Queue, Run};
use crate::sink::{Sink, Staging};

/// A ring ready to run: built, files registered.
pub(super) struct Ring {
    ring: IoUring,
    queue_depth: usize,
    /// Files are registered twice: `[0, n)` the O_DIRECT descriptors (buffered where none),
    /// `[n, 2n)` the buffered ones.
    file_count: u32,
    fixed_buffers: bool,
}

struct Inflight {
    index: usize,
    method: Method,
    staging: Staging,
    /// Bytes from the start of the chunk known to be read.
    done: u64,
}

impl Ring {
    pub(super) fn new(
        queue_depth: usize,
        files: &OpenFiles,
        sink: &dyn Sink,
    ) -> std::io::Result<Ring> {
        let ring = IoUring::new(queue_depth.next_power_of_two() as u32)?;
        let n = files.count();
        let mut fds: Vec<i32> = (0..n)
            .map(|i| files.direct(i).unwrap_or(files.buffered(i)).as_raw_fd())
            .collect();
        fds.extend((0..n).map(|i| files.buffered(i).as_raw_fd()));
        ring.submitter().register_files(&fds)?;
        let bufs = sink.registered_buffers();
        let mut fixed_buffers = false;
        if !bufs.is_empty() {
            let iovecs: Vec<libc::iovec> = bufs
                .iter()
                .map(|(p, l)| libc::iovec {
                    iov_base: p.as_ptr() as *mut libc::c_void,
                    iov_len: *l,
                })
                .collect();
            // SAFETY: the sink promises these buffers outlive the load (registered_buffers'
            // contract); the ring is dropped when this load ends. A refusal (memlock limits) just
            // means plain reads.
            let registered = unsafe { ring.submitter().register_buffers(&iovecs) };
            if let Err(e) = &registered {
                tracing::debug!(error = %e, buffers = iovecs.len(), "io_uring refused the sink's fixed buffers; plain reads");
            }
            fixed_buffers = registered.is_ok();
        }
        Ok(Ring {
            ring,
            queue_depth,
            file_count: n as u32,
            fixed_buffers,
        })
    }

    /// Takes chunks from `queue` until it is empty or the run fails; returns only once the
    /// kernel holds none of the sink's buffers.
    pub(super) fn drain(mut self, run: &Run<'_>, queue: &Queue) -> Result<(), IoError> {
        let qd = self.queue_depth;
        let mut slots: Vec<Option<Inflight>> = (0..qd).map(|_| None).collect();
        let mut free: Vec<usize> = (0..qd).rev().collect();
        let mut completions: Vec<(u64, i32)> = Vec::with_capacity(qd * 2);
        let mut waiting: Option<(usize, Method)> = None;
        let mut first_error: Option<IoError> = None;
        loop {
            let stop = first_error.is_some() || run.aborted();
            while !stop && !free.is_empty() {
                let Some((index, method)) = waiting.take().or_else(|| queue.pop()) else {
                    break;
                };
                run.begin(method);
                let chunk = &run.plan.chunks[index];
                let idle = free.len() == qd;
                let got = if idle {
                    run.sink.acquire(index, chunk).map(Some)
                } else {
                    run.sink.try_acquire(index, chunk)
                };
                let staging = match got {
                    Ok(Some(s)) => s,
                    Ok(None) => {
                        waiting = Some((index, method));
                        break;
                    }
                    Err(e) => {
                        first_error = Some(run.sink_error(index, e));
                        break;
                    }
                };
                if let Err(e) = check_staging(run, &staging, index, method) {
                    run.sink.release(index, staging);
                    first_error = Some(e);
                    break;
                }
                let slot = free.pop().unwrap_or_default();
                let inf = Inflight {
                    index,
                    method,
                    staging,
                    done: 0,
                };
                if let Err(e) = self.submit(run, slot, &inf) {
                    run.sink.release(index, inf.staging);
                    first_error = Some(e);
                    free.push(slot);
                    break;
                }
                slots[slot] = Some(inf);
            }
            if free.len() == qd {
                break;
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                // EINTR, and EBUSY/EAGAIN while the completion queue is full, clear by reaping.
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) {
                    // The ring is unusable. The kernel keeps the pages of in-flight reads pinned
                    // until they finish, so handing the buffers back is memory-safe; the load
                    // fails, so their contents do not matter.
                    for inf in slots.iter_mut().filter_map(Option::take) {
                        run.sink.release(inf.index, inf.staging);
                    }
                    let path = run.plan.files[0].path.clone();
                    return Err(IoError::Read {
                        path,
                        offset: 0,
                        len: 0,
                        source: e,
                    });
                }
            }
            self.reap(&mut completions);
            for &(ud, res) in &completions {
                let slot = ud as usize;
                let Some(mut inf) = slots[slot].take() else {
                    continue;
                };
                let chunk = &run.plan.chunks[inf.index];
                let align = run.plan.config.align_bytes;
                let from = if inf.method == Method::UringDirect {
                    inf.done / align * align
                } else {
                    inf.done
                };
                let outcome = if res < 0 {
                    let err = std::io::Error::from_raw_os_error(-res);
                    match -res {
                        libc::EINTR | libc::EAGAIN => Ok(()),
                        _ => Err(ReadFail::Os {
                            offset: chunk.file_offset + from,
                            len: chunk.len - from,
                            err,
                        }),
                    }
                } else if from + res as u64 <= inf.done {
                    // No progress: the end of the file (see pread::read_full).
                    Err(ReadFail::Eof {
                        eof: chunk.file_offset + from + res as u64,
                        need: chunk.file_offset + chunk.need,
                    })
                } else {
                    inf.done = from + res as u64;
                    Ok(())
                };
                if let Err(f) = outcome {
                    first_error.get_or_insert(f.at(&run.plan.files[chunk.file].path));
                    run.sink.release(inf.index, inf.staging);
                    free.push(slot);
                    continue;
                }
                if inf.done < chunk.need {
                    if first_error.is_none() && !run.aborted() {
                        match self.submit(run, slot, &inf) {
                            Ok(()) => slots[slot] = Some(inf),
                            Err(e) => {
                                first_error = Some(e);
                                run.sink.release(inf.index, inf.staging);
                                free.push(slot);
                            }
                        }
                    } else {
                        run.sink.release(inf.index, inf.staging);
                        free.push(slot);
                    }
                    continue;
                }
                free.push(slot);
                let (index, method) = (inf.index, inf.method);
                if let Err(e) = run.sink.commit(index, chunk, inf.staging) {
                    first_error.get_or_insert(run.sink_error(index, e));
                    continue;
                }
                run.done(method, chunk.need);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Moves every available completion into `out` (cleared first).
    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
    }

    /// Queues the read of the rest of `inf`'s chunk into its staging buffer.
    fn submit(&mut self, run: &Run<'_>, slot: usize, inf: &Inflight) -> Result<(), IoError> {
        let chunk = &run.plan.chunks[inf.index];
        let align = run.plan.config.align_bytes;
        let direct = inf.method == Method::UringDirect;
        let from = if direct {
            inf.done / align * align
        } else {
            inf.done
        };
        let file = if direct {
            chunk.file as u32
        } else {
            self.file_count + chunk.file as u32
        };
        // SAFETY: `from < chunk.len ≤ staging.len`, so the pointer stays inside the loan.
        let ptr = unsafe { inf.staging.ptr.as_ptr().add(from as usize) };
        let len = (chunk.len - from) as u32;
        let offset = chunk.file_offset + from;
        let entry = match (self.fixed_buffers, inf.staging.fixed) {
            (true, Some(buf)) => opcode::ReadFixed::new(types::Fixed(file), ptr, len, buf)
                .offset(offset)
                .build(),
            _ => opcode::Read::new(types::Fixed(file), ptr, len)
                .offset(offset)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the buffer stays loaned to this ring (in `slots`) until its completion is
        // reaped; the file is registered for the ring's lifetime.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The submission queue holds queue_depth entries and at most that many reads are in
            // flight, so it cannot be full; flush and retry once to be safe.
            let _ = self.ring.submit();
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }.map_err(|_| IoError::Read {
                path: run.plan.files[chunk.file].path.clone(),
                offset,
                len: len as u64,
                source: std::io::Error::other("io_uring submission queue full"),
            })?;
        }
        Ok(())
    }
}
