//! The engine: executes a [`Plan`] into a [`Sink`] with deep queues.
//!
//! Each chunk is routed to one method:
//! - **io_uring + O_DIRECT** on dedicated threads, tens of reads in flight, fixed files (and
//!   fixed buffers where the sink offers long-lived ones): for ranges not in the page cache;
//! - **mmap + memcpy** through 4 MiB windows (populated in one call, unmapped at once, so RSS
//!   stays bounded) on a pool of threads: for ranges already in the page cache when the sink's
//!   destinations are fresh memory, where it measured faster than buffered `pread`;
//! - **buffered `pread`** on the same pool: for cached ranges when the sink reuses its buffers
//!   (a pinned staging ring, where it measured faster than mmap), when asked for, or where
//!   O_DIRECT is refused;
//! - **`pread` + O_DIRECT** on the same pool: where io_uring is refused (seccomp, old kernel).
//!
//! `auto` asks `mincore` which chunks are resident, and falls back (once, reported) when io_uring
//! or O_DIRECT is refused. The report says how many bytes each method moved.

mod files;
mod pread;
mod uring;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use crate::plan::Plan;
use crate::residency::FileResidency;
use crate::sink::{Sink, SinkError};

pub use files::OpenFiles;

/// Which backend to use (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Per chunk: copies out of the page cache for cached ranges, io_uring O_DIRECT for the rest,
    /// with fallbacks.
    Auto,
    /// io_uring for everything (O_DIRECT where the filesystem allows it).
    Uring,
    /// Buffered `pread` from a thread pool for everything.
    Pread,
    /// memcpy out of read-only 4 MiB mapping windows from a thread pool for everything.
    Mmap,
}

impl Backend {
    /// Every backend, in the order reports list them.
    pub const ALL: [Backend; 4] = [Backend::Auto, Backend::Uring, Backend::Pread, Backend::Mmap];

    /// Name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Uring => "uring",
            Backend::Pread => "pread",
            Backend::Mmap => "mmap",
        }
    }
}

/// How a chunk was actually read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Method {
    /// io_uring with O_DIRECT.
    UringDirect,
    /// io_uring through the page cache (O_DIRECT refused by the filesystem).
    UringBuffered,
    /// `pread` through the page cache.
    PreadBuffered,
    /// `pread` with O_DIRECT.
    PreadDirect,
    /// memcpy from a chunk-sized mapping.
    Mmap,
}

impl Method {
    const ALL: [Method; 5] = [
        Method::UringDirect,
        Method::UringBuffered,
        Method::PreadBuffered,
        Method::PreadDirect,
        Method::Mmap,
    ];

    /// Short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::UringDirect => "uring-direct",
            Method::UringBuffered => "uring-buffered",
            Method::PreadBuffered => "pread-buffered",
            Method::PreadDirect => "pread-direct",
            Method::Mmap => "mmap",
        }
    }

    fn uses_uring(self) -> bool {
        matches!(self, Method::UringDirect | Method::UringBuffered)
    }

    fn direct(self) -> bool {
        matches!(self, Method::UringDirect | Method::PreadDirect)
    }
}

/// Knobs of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Backend choice.
    pub backend: Backend,
    /// Threads of the `pread`/mmap pool.
    pub threads: usize,
    /// io_uring reads in flight per ring.
    pub queue_depth: usize,
    /// Threads each driving one io_uring ring.
    pub uring_threads: usize,
    /// Bytes committed so far, for progress displays (updated as chunks land).
    pub progress: Option<Arc<AtomicU64>>,
}

/// Largest pool and queue sizes accepted: past these, threads and in-flight reads only
/// contend for the same device and memory bandwidth.
pub const MAX_THREADS: usize = 256;
/// See [`MAX_THREADS`].
pub const MAX_QUEUE_DEPTH: usize = 1024;

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        EngineConfig {
            backend: Backend::Auto,
            threads: cores.clamp(2, 32),
            queue_depth: 32,
            uring_threads: 1,
            progress: None,
        }
    }
}

/// What a load did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadReport {
    /// Bytes read from files (alignment slack included).
    pub read_bytes: u64,
    /// Bytes each method read, by method name, only methods that ran.
    pub bytes_by_method: Vec<(&'static str, u64)>,
    /// Fallbacks taken, one line each (e.g. io_uring refused).
    pub notes: Vec<String>,
    /// Wall-clock seconds of the engine run.
    pub seconds: f64,
}

impl LoadReport {
    /// Compact summary of methods and shares, e.g. `uring-direct 62%, pread-buffered 38%`.
    pub fn methods_summary(&self) -> String {
        let total: u64 = self.bytes_by_method.iter().map(|m| m.1).sum::<u64>().max(1);
        let parts: Vec<String> = self
            .bytes_by_method
            .iter()
            .map(|(m, b)| format!("{m} {:.0}%", *b as f64 * 100.0 / total as f64))
            .collect();
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(", ")
        }
    }
}

/// A load that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IoError {
    /// A file could not be opened.
    #[error("{path}: cannot open: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A read failed.
    #[error("{path}: read of {len} bytes at offset {offset} failed: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file ended before the bytes its header promised.
    #[error("{path}: file ended at offset {eof} but the checkpoint's header places data up to {need}; was the file truncated or changed during the load?")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Where reading hit the end.
        eof: u64,
        /// Where data should have continued to.
        need: u64,
    },
    /// io_uring was asked for explicitly and the kernel refused it.
    #[error("io_uring is unavailable here ({0}); use --backend auto or --backend pread")]
    UringUnavailable(std::io::Error),
    /// The sink failed.
    #[error("{path}: delivering bytes at offset {offset} failed: {source}")]
    Sink {
        /// The file the chunk came from.
        path: PathBuf,
        /// Offset of the chunk.
        offset: u64,
        /// The sink's error.
        #[source]
        source: SinkError,
    },
}

/// Shared state of one run: work queues, the first error, byte counters.
struct Run<'a> {
    plan: &'a Plan,
    sink: &'a dyn Sink,
    files: &'a OpenFiles,
    progress: Option<&'a AtomicU64>,
    abort: AtomicBool,
    error: Mutex<Option<IoError>>,
    bytes: [AtomicU64; Method::ALL.len()],
}

impl Run<'_> {
    fn fail(&self, e: IoError) {
        self.abort.store(true, Ordering::Release);
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    }

    fn aborted(&self) -> bool {
        self.abort.load(Ordering::Acquire)
    }

    fn done(&self, method: Method, bytes: u64) {
        self.bytes[Method::ALL.iter().position(|&m| m == method).unwrap_or(0)]
            .fetch_add(bytes, Ordering::Relaxed);
        if let Some(p) = self.progress {
            p.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn sink_error(&self, chunk: usize, source: SinkError) -> IoError {
        let c = &self.plan.chunks[chunk];
        IoError::Sink {
            path: self.plan.files[c.file].path.clone(),
            offset: c.file_offset,
            source,
        }
    }
}

/// A list of chunk indices that several threads drain.
pub(crate) struct Queue {
    items: Vec<(usize, Method)>,
    next: AtomicUsize,
}

impl Queue {
    fn new(items: Vec<(usize, Method)>) -> Queue {
        Queue {
            items,
            next: AtomicUsize::new(0),
        }
    }

    fn pop(&self) -> Option<(usize, Method)> {
        self.items
            .get(self.next.fetch_add(1, Ordering::Relaxed))
            .copied()
    }
}

/// Reads every chunk of `plan` into `sink`.
pub fn execute(plan: &Plan, sink: &dyn Sink, config: &EngineConfig) -> Result<LoadReport, IoError> {
    let start = Instant::now();
    let threads = config.threads.clamp(1, MAX_THREADS);
    let queue_depth = config.queue_depth.clamp(1, MAX_QUEUE_DEPTH);
    let mut notes = Vec::new();
    let want_direct = matches!(config.backend, Backend::Auto | Backend::Uring);
    let files = OpenFiles::open(plan, want_direct, &mut notes)?;

    // Cached chunks: copies out of mmap windows into fresh memory, buffered reads into reused
    // staging buffers (see `Sink::reuses_buffers`).
    let cached_method = if sink.reuses_buffers() {
        Method::PreadBuffered
    } else {
        Method::Mmap
    };
    let mut routes = route(plan, &files, config.backend, &mut notes, cached_method);
    // Bring up the rings before any thread starts, so a refusal reroutes instead of failing.
    let mut rings = Vec::new();
    if routes.iter().any(|(_, m)| m.uses_uring()) {
        for _ in 0..config.uring_threads.clamp(1, 16) {
            match uring::Ring::new(queue_depth, &files, sink) {
                Ok(r) => rings.push(r),
                Err(e) if config.backend == Backend::Uring => {
                    return Err(IoError::UringUnavailable(e))
                }
                Err(e) => {
                    notes.push(format!(
                        "io_uring unavailable ({e}); reading with a pread thread pool instead"
                    ));
                    rings.clear();
                    for (_, m) in routes.iter_mut() {
                        *m = match *m {
                            Method::UringDirect => Method::PreadDirect,
                            Method::UringBuffered => Method::PreadBuffered,
                            other => other,
                        };
                    }
                    break;
                }
            }
        }
    }
    let (ring_work, pool_work): (Vec<_>, Vec<_>) =
        routes.into_iter().partition(|(_, m)| m.uses_uring());
    let run = Run {
        plan,
        sink,
        files: &files,
        progress: config.progress.as_deref(),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        bytes: Default::default(),
    };
    let ring_queue = Queue::new(ring_work);
    let pool_queue = Queue::new(pool_work);
    let pool_threads = if pool_queue.items.is_empty() {
        0
    } else {
        threads.min(pool_queue.items.len())
    };
    std::thread::scope(|s| {
        for ring in rings.drain(..) {
            let (run, q) = (&run, &ring_queue);
            s.spawn(move || {
                if let Err(e) = ring.drain(run, q) {
                    run.fail(e);
                }
            });
        }
        for _ in 0..pool_threads {
            let (run, q) = (&run, &pool_queue);
            s.spawn(move || pread::drain(run, q));
        }
    });
    if let Some(e) = run.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let bytes_by_method: Vec<(&'static str, u64)> = Method::ALL
        .iter()
        .zip(run.bytes.iter())
        .map(|(m, b)| (m.name(), b.load(Ordering::Relaxed)))
        .filter(|(_, b)| *b > 0)
        .collect();
    let read_bytes = bytes_by_method.iter().map(|m| m.1).sum();
    debug_assert_eq!(read_bytes, plan.read_bytes());
    Ok(LoadReport {
        read_bytes,
        bytes_by_method,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Pages sampled per chunk to judge whether it is in the page cache.
const RESIDENCY_PROBES: u64 = 4;

/// Chooses each chunk's method before the run; `auto` consults page-cache residency.
fn route(
    plan: &Plan,
    files: &OpenFiles,
    backend: Backend,
    notes: &mut Vec<String>,
    cached_method: Method,
) -> Vec<(usize, Method)> {
    let mut residency: Vec<Option<FileResidency>> = Vec::with_capacity(plan.files.len());
    if backend == Backend::Auto {
        for (i, f) in plan.files.iter().enumerate() {
            match FileResidency::new(files.buffered(i)) {
                Ok(r) => residency.push(Some(r)),
                Err(e) => {
                    notes.push(format!(
                        "{}: cannot query page-cache residency ({e}); reading it direct",
                        f.path.display()
                    ));
                    residency.push(None);
                }
            }
        }
    }
    let uring_method = |file: usize| {
        if files.direct(file).is_some() {
            Method::UringDirect
        } else {
            Method::UringBuffered
        }
    };
    plan.chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let m = match backend {
                Backend::Mmap => Method::Mmap,
                Backend::Pread => Method::PreadBuffered,
                Backend::Uring => uring_method(c.file),
                Backend::Auto => {
                    let cached = residency[c.file].as_mut().is_some_and(|r| {
                        r.probably_resident(c.file_offset, c.need, RESIDENCY_PROBES)
                            .unwrap_or(false)
                    });
                    if cached {
                        cached_method
                    } else if files.direct(c.file).is_none() {
                        // Without O_DIRECT a cold read goes through the cache anyway; a buffered
                        // pread pool is the simpler road there.
                        Method::PreadBuffered
                    } else {
                        Method::UringDirect
                    }
                }
            };
            (i, m)
        })
        .collect()
}
