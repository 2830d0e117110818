//! The engine: executes a [`Plan`] into a [`Sink`] with deep queues.
//!
//! Each chunk is routed to one method:
//! - **io_uring + O_DIRECT** on dedicated threads, tens of reads in flight, fixed files (and
//!   fixed buffers where the sink offers long-lived ones): for ranges not in the page cache
//!   when the cache policy bypasses it ([`crate::cache`]); **io_uring buffered** the same way
//!   when it keeps them cached ([`KEEP_COLD_METHOD`]), or for `--backend uring` where O_DIRECT
//!   is refused;
//! - **buffered `pread`** on a pool of threads: for ranges already in the page cache, whether
//!   the sink reuses its buffers ([`AUTO_CACHED_INTO_REUSED_BUFFERS`], a pinned staging ring) or,
//!   with fewer than [`AUTO_MMAP_MIN_THREADS`] readers, lands in fresh memory (host loads); when
//!   asked for; or where O_DIRECT is refused;
//! - **mmap + memcpy** through 4 MiB windows (populated in one call, unmapped at once, so RSS
//!   stays bounded) on the same pool: for cached ranges into fresh memory with
//!   [`AUTO_MMAP_MIN_THREADS`] readers or more ([`auto_cached_into_fresh_memory`]); when asked for;
//! - **`pread` + O_DIRECT** on the same pool: where io_uring is refused (seccomp, old kernel).
//!
//! The cache policy (`auto` unless asked: keep when the bytes fit in MemAvailable less a
//! headroom) is decided once per load, logged and reported. `auto` asks `mincore` which chunks
//! are resident, and falls back (once, reported) when io_uring or O_DIRECT is refused. The
//! report says how many bytes each method moved. At `debug` level the engine logs the cache
//! policy, its configuration, each route (method, chunks, bytes, reason), fallbacks and each
//! method's bytes, seconds and GB/s; per-chunk routes at `trace`.

mod files;
mod pread;
#[cfg(test)]
mod tests;
mod uring;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tracing::{debug, info, trace, warn};

use crate::cache::{CacheDecision, CachePolicy, MemInfo};
use crate::plan::Plan;
use crate::residency::FileResidency;
use crate::sink::{Sink, SinkError};

pub use files::OpenFiles;

/// Which backend to use (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Per chunk: copies out of the page cache for cached ranges (buffered `pread`, or mmap
    /// windows into fresh memory with many readers: [`auto_cached_into_fresh_memory`]), io_uring
    /// O_DIRECT for the rest, with fallbacks.
    Auto,
    /// io_uring for everything (O_DIRECT where the filesystem allows it).
    Uring,
    /// Buffered `pread` from a thread pool for everything.
    Pread,
    /// memcpy out of read-only 4 MiB mapping windows from a thread pool for everything.
    Mmap,
}

/// Reader threads from which `auto` copies cached chunks into fresh memory out of mmap windows
/// rather than with buffered `pread`.
///
/// Measured with `crates/io/examples/host_route.rs` (paired rounds, docs/BENCHMARKS.md, "auto's
/// host route", 2026-12-02): with 2 threads `pread` won on the 2-core dev box (6-26% at the
/// median) and tied on the 16-core H200 host (2 and 4 threads: 0.98-1.05); from 8 threads mmap
/// won there (pread/mmap 0.96 at 8, 0.86-0.99 at 16), page faults spreading over more cores.
pub const AUTO_MMAP_MIN_THREADS: usize = 8;

/// `auto`'s method for chunks already in the page cache when the sink's destinations are fresh
/// memory (every host load), read by `threads` reader threads: the one place that decides it
/// (see [`AUTO_MMAP_MIN_THREADS`]).
pub fn auto_cached_into_fresh_memory(threads: usize) -> Method {
    if threads >= AUTO_MMAP_MIN_THREADS {
        Method::Mmap
    } else {
        Method::PreadBuffered
    }
}

/// `auto`'s method for chunks not in the page cache when the cache policy keeps what is read
/// ([`CachePolicy::Keep`]).
///
/// io_uring buffered reads: their concurrency is the queue depth, where the `pread` pool's is its
/// thread count (one per core), and a cold buffered read waits on the disk. Measured 2026-12-02
/// with paired cold loads of the 1.5 GB synthetic qwen3-0.6b, rounds interleaved (`hoist load D
/// --cold --cache keep --backend uring` for io_uring buffered, `--backend pread --threads N` for
/// the pool, `--cache bypass --backend uring` for O_DIRECT; GB/s, median in brackets): on the 2-core dev
/// box io_uring buffered (queue depth 32) ran 0.89-2.38 (1.55, 8 runs) against 0.61-0.99 (0.98)
/// for the 2-thread `pread` pool and 1.27-1.85 (1.47) with 16 threads, O_DIRECT 1.82-2.46
/// (1.96); on the 16-core H200 host they tied: 1.72-2.11 (1.88) against 1.77-2.07 (1.92) for 16
/// threads, O_DIRECT 1.79-2.19 (2.09).
pub const KEEP_COLD_METHOD: Method = Method::UringBuffered;

/// `auto`'s method for cached chunks when the sink reuses a few buffers (a pinned staging ring,
/// GPU loads): buffered `pread` measured faster than mmap copies there (docs/BENCHMARKS.md).
pub const AUTO_CACHED_INTO_REUSED_BUFFERS: Method = Method::PreadBuffered;

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

    fn slot(self) -> usize {
        Method::ALL.iter().position(|&m| m == self).unwrap_or(0)
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
    /// Whether cold ranges stay in the page cache ([`CachePolicy`]; `auto` by default).
    pub cache: CachePolicy,
    /// Memory `auto` leaves free, bytes; `None`: [`crate::cache::default_headroom_bytes`].
    pub cache_headroom_bytes: Option<u64>,
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
            cache: CachePolicy::Auto,
            cache_headroom_bytes: None,
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
    /// The page-cache policy that ran, and why.
    pub cache: CacheDecision,
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
    /// When the threads started; the span fields below count nanoseconds from here.
    start: Instant,
    /// Per method: when its first chunk was taken (u64::MAX until then).
    first_ns: [AtomicU64; Method::ALL.len()],
    /// Per method: when its last chunk landed.
    last_ns: [AtomicU64; Method::ALL.len()],
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

    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// A thread takes a chunk to read with `method` (for the method's timing).
    fn begin(&self, method: Method) {
        self.first_ns[method.slot()].fetch_min(self.now_ns(), Ordering::Relaxed);
    }

    fn done(&self, method: Method, bytes: u64) {
        self.bytes[method.slot()].fetch_add(bytes, Ordering::Relaxed);
        self.last_ns[method.slot()].fetch_max(self.now_ns(), Ordering::Relaxed);
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
    let cache = crate::cache::decide(
        config.cache,
        config.backend,
        plan.read_bytes(),
        config.cache_headroom_bytes,
        MemInfo::read,
    );
    debug!(
        asked = %cache.asked.name(),
        policy = %cache.policy.name(),
        reason = %cache.reason,
        "cache policy"
    );
    // Keeping the cache needs no O_DIRECT descriptors (nor their probe reads).
    let want_direct = matches!(config.backend, Backend::Auto | Backend::Uring) && !cache.keeps();
    let files = OpenFiles::open(plan, want_direct, &mut notes)?;
    log_direct_refusals(files.direct_refused(), config.backend);

    let reuses_buffers = sink.reuses_buffers();
    let mut routes = route(
        plan,
        &files,
        config.backend,
        &mut notes,
        reuses_buffers,
        config.threads,
        cache.keeps(),
    );
    // Bring up the rings before any thread starts, so a refusal reroutes instead of failing.
    let mut rings = Vec::new();
    if routes.iter().any(|(_, m, _)| m.uses_uring()) {
        for _ in 0..config.uring_threads.clamp(1, 16) {
            match uring::Ring::new(queue_depth, &files, sink) {
                Ok(r) => rings.push(r),
                Err(e) if config.backend == Backend::Uring => {
                    return Err(IoError::UringUnavailable(e))
                }
                Err(e) => {
                    // auto chose io_uring on its own; the pool still reads everything.
                    info!(error = %e, "io_uring unavailable; reading with a pread thread pool instead");
                    notes.push(format!(
                        "io_uring unavailable ({e}); reading with a pread thread pool instead"
                    ));
                    rings.clear();
                    for (_, m, why) in routes.iter_mut() {
                        let pooled = match *m {
                            Method::UringDirect => Method::PreadDirect,
                            Method::UringBuffered => Method::PreadBuffered,
                            other => other,
                        };
                        if pooled != *m {
                            (*m, *why) = (pooled, Reason::UringRefused);
                        }
                    }
                    break;
                }
            }
        }
    }
    log_routes(plan, config.backend, &routes);
    let (ring_work, pool_work): (Vec<_>, Vec<_>) = routes
        .into_iter()
        .map(|(i, m, _)| (i, m))
        .partition(|(_, m)| m.uses_uring());
    let run = Run {
        plan,
        sink,
        files: &files,
        progress: config.progress.as_deref(),
        abort: AtomicBool::new(false),
        error: Mutex::new(None),
        bytes: Default::default(),
        start: Instant::now(),
        first_ns: std::array::from_fn(|_| AtomicU64::new(u64::MAX)),
        last_ns: Default::default(),
    };
    let ring_queue = Queue::new(ring_work);
    let pool_queue = Queue::new(pool_work);
    let pool_threads = if pool_queue.items.is_empty() {
        0
    } else {
        threads.min(pool_queue.items.len())
    };
    debug!(
        backend = %config.backend.name(),
        pool_threads,
        uring_rings = rings.len(),
        queue_depth,
        sink_reuses_buffers = reuses_buffers,
        setup_seconds = start.elapsed().as_secs_f64(),
        "engine starting"
    );
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
    for (i, m) in Method::ALL.iter().enumerate() {
        let bytes = run.bytes[i].load(Ordering::Relaxed);
        if bytes == 0 {
            continue;
        }
        // The method's span, from its first chunk taken to its last landed; methods run side
        // by side, so their spans overlap.
        let first = run.first_ns[i].load(Ordering::Relaxed);
        let seconds = run.last_ns[i].load(Ordering::Relaxed).saturating_sub(first) as f64 / 1e9;
        debug!(
            method = %m.name(),
            bytes,
            seconds,
            gbps = gbps(bytes, seconds),
            "method finished"
        );
    }
    let bytes_by_method: Vec<(&'static str, u64)> = Method::ALL
        .iter()
        .zip(run.bytes.iter())
        .map(|(m, b)| (m.name(), b.load(Ordering::Relaxed)))
        .filter(|(_, b)| *b > 0)
        .collect();
    let read_bytes = bytes_by_method.iter().map(|m| m.1).sum();
    debug_assert_eq!(read_bytes, plan.read_bytes());
    let report = LoadReport {
        read_bytes,
        bytes_by_method,
        notes,
        seconds: start.elapsed().as_secs_f64(),
        cache,
    };
    debug!(
        backend = %config.backend.name(),
        read_bytes,
        seconds = report.seconds,
        gbps = gbps(read_bytes, report.seconds),
        methods = report.methods_summary(),
        "load finished"
    );
    Ok(report)
}

/// Decimal GB per second, 0 for an instant.
fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// Files read through the page cache because O_DIRECT was refused: a warning when io_uring was
/// asked for (its cold-read speed comes from O_DIRECT), routine for `auto`.
fn log_direct_refusals(refused: &[String], backend: Backend) {
    if refused.is_empty() {
        return;
    }
    let refused = refused.join(", ");
    if backend == Backend::Uring {
        warn!(files = %refused, "O_DIRECT refused; io_uring reads these through the page cache, slower for data not cached");
    } else {
        debug!(files = %refused, "O_DIRECT refused; not-cached chunks of these are read buffered");
    }
}

/// One debug line per (method, reason): how many chunks and bytes took that road.
fn log_routes(plan: &Plan, backend: Backend, routes: &[(usize, Method, Reason)]) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return; // the grouping below is only for the log
    }
    let mut groups: BTreeMap<(Method, Reason), (usize, u64)> = BTreeMap::new();
    for &(i, m, why) in routes {
        let c = &plan.chunks[i];
        trace!(
            chunk = i,
            file = %plan.files[c.file].path.display(),
            offset = c.file_offset,
            len = c.len,
            method = %m.name(),
            reason = why.text(),
            "chunk route"
        );
        let g = groups.entry((m, why)).or_default();
        g.0 += 1;
        g.1 += c.need;
    }
    for ((m, why), (chunks, bytes)) in groups {
        debug!(
            backend = %backend.name(),
            method = %m.name(),
            chunks,
            bytes,
            reason = why.text(),
            "route"
        );
    }
}

/// Why a chunk took its method (for the logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Reason {
    /// `--backend uring|pread|mmap`.
    Asked,
    /// `--backend uring`, but the filesystem refused O_DIRECT.
    AskedNoDirect,
    /// `--backend uring` with the cache policy keep: through the page cache.
    AskedKeep,
    /// In the page cache, landing in fresh memory.
    CachedFresh,
    /// In the page cache, landing in reused buffers.
    CachedReused,
    /// Not in the page cache.
    Cold,
    /// Not in the page cache, and the cache policy keeps what is read (or residency unknown).
    ColdKeep,
    /// Not in the page cache, and the filesystem refused O_DIRECT.
    ColdNoDirect,
    /// Residency could not be asked.
    ResidencyUnknown,
    /// io_uring was refused at setup; the pool took its chunks.
    UringRefused,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::Asked => "asked for",
            Reason::AskedNoDirect => "asked for; O_DIRECT refused, so through the page cache",
            Reason::AskedKeep => "asked for; cache policy keep, so through the page cache",
            Reason::CachedFresh => "in the page cache; fresh destination memory",
            Reason::CachedReused => "in the page cache; the sink reuses its buffers",
            Reason::Cold => "not in the page cache",
            Reason::ColdKeep => "not in the page cache; cache policy keep, so buffered",
            Reason::ColdNoDirect => "not in the page cache; O_DIRECT refused, so buffered",
            Reason::ResidencyUnknown => "page-cache residency unknown; read as not cached",
            Reason::UringRefused => "io_uring refused; pread thread pool",
        }
    }
}

/// Pages sampled per chunk to judge whether it is in the page cache.
const RESIDENCY_PROBES: u64 = 4;

/// Chooses each chunk's method (and why) before the run; `auto` consults page-cache residency.
fn route(
    plan: &Plan,
    files: &OpenFiles,
    backend: Backend,
    notes: &mut Vec<String>,
    reuses_buffers: bool,
    threads: usize,
    keep_cache: bool,
) -> Vec<(usize, Method, Reason)> {
    let mut residency: Vec<Option<FileResidency>> = Vec::with_capacity(plan.files.len());
    if backend == Backend::Auto {
        for (i, f) in plan.files.iter().enumerate() {
            match FileResidency::new(files.buffered(i)) {
                Ok(r) => residency.push(Some(r)),
                Err(e) => {
                    debug!(file = %f.path.display(), error = %e, "cannot query page-cache residency; reading it as not cached");
                    notes.push(format!(
                        "{}: cannot query page-cache residency ({e}); reading it direct",
                        f.path.display()
                    ));
                    residency.push(None);
                }
            }
        }
    }
    let (cached_method, cached_reason) = if reuses_buffers {
        (AUTO_CACHED_INTO_REUSED_BUFFERS, Reason::CachedReused)
    } else {
        (auto_cached_into_fresh_memory(threads), Reason::CachedFresh)
    };
    plan.chunks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let direct = files.direct(c.file).is_some();
            let (m, why) = match backend {
                Backend::Mmap => (Method::Mmap, Reason::Asked),
                Backend::Pread => (Method::PreadBuffered, Reason::Asked),
                Backend::Uring if keep_cache => (Method::UringBuffered, Reason::AskedKeep),
                Backend::Uring if direct => (Method::UringDirect, Reason::Asked),
                Backend::Uring => (Method::UringBuffered, Reason::AskedNoDirect),
                Backend::Auto => {
                    let cached = residency[c.file].as_mut().map(|r| {
                        r.probably_resident(c.file_offset, c.need, RESIDENCY_PROBES)
                            .unwrap_or(false)
                    });
                    match (cached, direct) {
                        (Some(true), _) => (cached_method, cached_reason),
                        _ if keep_cache => (KEEP_COLD_METHOD, Reason::ColdKeep),
                        // Without O_DIRECT a cold read goes through the cache anyway; a buffered
                        // pread pool is the simpler road there.
                        (_, false) => (Method::PreadBuffered, Reason::ColdNoDirect),
                        (None, true) => (Method::UringDirect, Reason::ResidencyUnknown),
                        (Some(false), true) => (Method::UringDirect, Reason::Cold),
                    }
                }
            };
            (i, m, why)
        })
        .collect()
}
