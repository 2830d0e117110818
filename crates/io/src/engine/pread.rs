//! The thread-pool methods: buffered `pread`, `pread` with O_DIRECT, and memcpy from a mapping.

use std::os::fd::AsRawFd;

use super::{IoError, Method, Queue, Run};
use crate::sink::Staging;

/// Takes chunks from `queue` until it is empty or the run fails.
pub(super) fn drain(run: &Run<'_>, queue: &Queue) {
    while !run.aborted() {
        let Some((index, method)) = queue.pop() else {
            return;
        };
        if let Err(e) = one(run, index, method) {
            run.fail(e);
            return;
        }
    }
}

fn one(run: &Run<'_>, index: usize, method: Method) -> Result<(), IoError> {
    run.begin(method);
    let chunk = &run.plan.chunks[index];
    let staging = run
        .sink
        .acquire(index, chunk)
        .map_err(|e| run.sink_error(index, e))?;
    if let Err(e) = read_into(run, index, method, &staging) {
        run.sink.release(index, staging);
        return Err(e);
    }
    run.sink
        .commit(index, chunk, staging)
        .map_err(|e| run.sink_error(index, e))?;
    run.done(method, chunk.need);
    Ok(())
}

fn read_into(
    run: &Run<'_>,
    index: usize,
    method: Method,
    staging: &Staging,
) -> Result<(), IoError> {
    let chunk = &run.plan.chunks[index];
    let path = &run.plan.files[chunk.file].path;
    check_staging(run, staging, index, method)?;
    let file = match method {
        Method::PreadDirect => run
            .files
            .direct(chunk.file)
            .unwrap_or(run.files.buffered(chunk.file)),
        _ => run.files.buffered(chunk.file),
    };
    let result = match method {
        Method::Mmap => copy_from_window(file, staging, chunk.file_offset, chunk.need),
        _ => read_full(
            file.as_raw_fd(),
            staging,
            chunk.file_offset,
            chunk.len,
            chunk.need,
            method == Method::PreadDirect,
            run.plan.config.align_bytes,
        ),
    };
    result.map_err(|e| e.at(path))
}

/// Bytes mapped at a time by [`copy_from_window`]: each thread's mapped file pages count in the
/// process's RSS while mapped, so this bounds that transient to threads × 4 MiB.
const MMAP_WINDOW_BYTES: u64 = 4 << 20;

/// Copies `[offset, offset + need)` of `file` out of mappings of at most
/// [`MMAP_WINDOW_BYTES`] each, made with
/// MAP_POPULATE so resident pages are wired in one call instead of one fault each, and unmapped
/// at once: a whole-file mapping would count every copied page in the process's RSS, and page
/// faults on it would serialize the threads on the mapping's lock.
fn copy_from_window(
    file: &std::fs::File,
    s: &Staging,
    offset: u64,
    need: u64,
) -> Result<(), ReadFail> {
    let size = file
        .metadata()
        .map_err(|err| ReadFail::Os {
            offset,
            len: need,
            err,
        })?
        .len();
    if offset + need > size {
        // Mapping past the end would raise SIGBUS on the copy.
        return Err(ReadFail::Eof {
            eof: size,
            need: offset + need,
        });
    }
    let page = crate::residency::page_bytes();
    let mut done = 0u64;
    while done < need {
        let at = offset + done;
        let n = (need - done).min(MMAP_WINDOW_BYTES);
        let start = at / page * page;
        let skip = (at - start) as usize;
        // SAFETY: a read-only private window inside the file's current size (checked above); a
        // concurrent truncation by another process would raise SIGBUS, the hazard every mmap
        // loader accepts.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(start)
                .len(skip + n as usize)
                .populate()
                .map(file)
        }
        .map_err(|err| ReadFail::Os {
            offset: at,
            len: n,
            err,
        })?;
        // SAFETY: the staging loan holds at least `need` bytes for this thread alone, so
        // `[done, done + n)` is inside it; the source is a separate mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                map.as_ptr().add(skip),
                s.ptr.as_ptr().add(done as usize),
                n as usize,
            )
        };
        done += n;
    }
    Ok(())
}

/// O_DIRECT needs aligned addresses; a sink that hands out anything else is a bug worth a
/// clear error rather than an EINVAL from the kernel.
pub(super) fn check_staging(
    run: &Run<'_>,
    s: &Staging,
    index: usize,
    method: Method,
) -> Result<(), IoError> {
    let chunk = &run.plan.chunks[index];
    let align = run.plan.config.align_bytes as usize;
    if s.len < chunk.len as usize
        || (method.direct() && !(s.ptr.as_ptr() as usize).is_multiple_of(align))
    {
        return Err(run.sink_error(
            index,
            format!(
                "staging buffer of {} bytes at {:p} cannot take an aligned read of {}",
                s.len, s.ptr, chunk.len
            )
            .into(),
        ));
    }
    Ok(())
}

/// A read error not yet tied to a path.
pub(super) enum ReadFail {
    Os {
        offset: u64,
        len: u64,
        err: std::io::Error,
    },
    Eof {
        eof: u64,
        need: u64,
    },
}

impl ReadFail {
    pub(super) fn at(self, path: &std::path::Path) -> IoError {
        match self {
            ReadFail::Os { offset, len, err } => IoError::Read {
                path: path.to_path_buf(),
                offset,
                len,
                source: err,
            },
            ReadFail::Eof { eof, need } => IoError::Truncated {
                path: path.to_path_buf(),
                eof,
                need,
            },
        }
    }
}

/// Reads until `need` bytes are in, retrying short reads and EINTR. With O_DIRECT, a retry
/// restarts at the aligned offset below the bytes already read (re-reading a few bytes is
/// harmless; an unaligned offset is refused).
fn read_full(
    fd: i32,
    s: &Staging,
    offset: u64,
    len: u64,
    need: u64,
    direct: bool,
    align: u64,
) -> Result<(), ReadFail> {
    let mut done = 0u64;
    while done < need {
        let from = if direct { done / align * align } else { done };
        // SAFETY: [from, len) lies inside the staging buffer (len ≤ s.len, checked), which this
        // thread holds alone.
        let rc = unsafe {
            libc::pread(
                fd,
                s.ptr.as_ptr().add(from as usize) as *mut libc::c_void,
                (len - from) as usize,
                (offset + from) as i64,
            )
        };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ReadFail::Os {
                offset: offset + from,
                len: len - from,
                err,
            });
        }
        // A read that brings nothing new is the end of the file: with O_DIRECT a retry re-reads
        // the aligned tail it already has, so "no progress" rather than 0 marks EOF.
        if from + rc as u64 <= done {
            return Err(ReadFail::Eof {
                eof: offset + from + rc as u64,
                need: offset + need,
            });
        }
        done = from + rc as u64;
    }
    Ok(())
}
