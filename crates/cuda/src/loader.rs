//! The persistent pinned loader: each device's staging ring (pinned slots, their events, the
//! copy streams) is made by the first ring load and reused by every later one, instead of
//! pinning a new ring per load (~45 ms for the default 256 MiB on the GPU machine).
//!
//! A load takes the device's ring out of the cache for its duration (a concurrent load on the
//! same device makes its own), and puts it back when done. A ring unused for
//! [`LOADER_IDLE_RELEASE_SECONDS`] is released by a background thread, which exits when
//! nothing is left to release; [`release_pinned_loaders`] releases all idle rings at once.
//! The io_uring rings that register the slots as fixed buffers belong to the read engine and
//! are still made per load.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hoist_io::plan::Plan;
use hoist_io::{EngineConfig, LoadReport};

use crate::driver::{Event, Gpu};
use crate::ring::{RingRequest, RingSink, StagingRing};
use crate::tensors::Destinations;
use crate::CudaError;

/// Seconds a device's pinned ring stays pinned after its last load.
pub const LOADER_IDLE_RELEASE_SECONDS: u64 = 30;

/// [`LOADER_IDLE_RELEASE_SECONDS`] as a duration.
const IDLE_RELEASE: Duration = Duration::from_secs(LOADER_IDLE_RELEASE_SECONDS);

/// What the pinned loaders of this process have done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PinnedLoaderStats {
    /// Rings pinned.
    pub made: u64,
    /// Loads that reused a ring pinned by an earlier load.
    pub reused: u64,
    /// Rings released (idle, on demand, or replaced by one of another shape).
    pub released: u64,
    /// Pinned bytes held now by idle rings.
    pub idle_bytes: usize,
}

/// Idle items by device ordinal, each with the time it was put back; the clock is the
/// caller's (`now`), so the policy is tested without waiting.
struct IdleCache<T> {
    idle: Vec<(usize, T, Instant)>,
    stats: PinnedLoaderStats,
}

impl<T> IdleCache<T> {
    const fn new() -> IdleCache<T> {
        IdleCache {
            idle: Vec::new(),
            stats: PinnedLoaderStats {
                made: 0,
                reused: 0,
                released: 0,
                idle_bytes: 0,
            },
        }
    }

    /// Takes device `ordinal`'s idle item if `fits` accepts it (counted as a reuse). One that
    /// does not fit is returned second, to be released by the caller.
    fn take(
        &mut self,
        ordinal: usize,
        fits: impl Fn(&T) -> bool,
        bytes: impl Fn(&T) -> usize,
    ) -> (Option<T>, Option<T>) {
        let Some(i) = self.idle.iter().position(|(o, _, _)| *o == ordinal) else {
            return (None, None);
        };
        let (_, item, _) = self.idle.swap_remove(i);
        self.stats.idle_bytes -= bytes(&item);
        if fits(&item) {
            self.stats.reused += 1;
            (Some(item), None)
        } else {
            self.stats.released += 1;
            (None, Some(item))
        }
    }

    /// Puts `item` back for device `ordinal` at `now`; returns the one it replaces, if any
    /// (a concurrent load's), to be released by the caller.
    fn put(
        &mut self,
        ordinal: usize,
        item: T,
        now: Instant,
        bytes: impl Fn(&T) -> usize,
    ) -> Option<T> {
        self.stats.idle_bytes += bytes(&item);
        let i = self.idle.iter().position(|(o, _, _)| *o == ordinal);
        let Some(i) = i else {
            self.idle.push((ordinal, item, now));
            return None;
        };
        let (_, old, _) = std::mem::replace(&mut self.idle[i], (ordinal, item, now));
        self.stats.idle_bytes -= bytes(&old);
        self.stats.released += 1;
        Some(old)
    }

    /// Removes the items idle for `idle_for` or longer at `now` (all with `Duration::ZERO`).
    fn expire(&mut self, now: Instant, idle_for: Duration, bytes: impl Fn(&T) -> usize) -> Vec<T> {
        let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|(_, _, since)| now.saturating_duration_since(*since) >= idle_for);
        self.idle = kept;
        for (_, item, _) in &expired {
            self.stats.idle_bytes -= bytes(item);
        }
        self.stats.released += expired.len() as u64;
        expired.into_iter().map(|(_, item, _)| item).collect()
    }

    /// When the next item becomes due for release, if any is idle.
    fn next_expiry(&self, idle_for: Duration) -> Option<Instant> {
        self.idle
            .iter()
            .map(|(_, _, since)| *since + idle_for)
            .min()
    }
}

/// The process's idle rings, and whether the thread that releases them runs.
struct Pool {
    cache: IdleCache<StagingRing>,
    reaper_running: bool,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    cache: IdleCache::new(),
    reaper_running: false,
});

fn pool() -> MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

fn ring_bytes(r: &StagingRing) -> usize {
    r.ring_bytes()
}

/// Releases every idle pinned ring now (the ring of a load in progress is released when it
/// ends and stays idle for [`LOADER_IDLE_RELEASE_SECONDS`]). Returns the bytes unpinned.
pub fn release_pinned_loaders() -> usize {
    let released = pool()
        .cache
        .expire(Instant::now(), Duration::ZERO, ring_bytes);
    // Unpinned outside the lock: unregistering hundreds of MiB takes milliseconds.
    released.iter().map(StagingRing::ring_bytes).sum()
}

/// What the pinned loaders of this process have done so far.
pub fn pinned_loader_stats() -> PinnedLoaderStats {
    pool().cache.stats
}

/// Starts the releasing thread unless it runs. It sleeps until the next ring is due, releases
/// what is due, and exits once nothing is idle (the next put starts it again).
fn ensure_reaper(pool: &mut Pool) {
    if pool.reaper_running {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("hoist-pinned-release".into())
        .spawn(|| loop {
            let (due, next) = {
                let mut p = self::pool();
                let due = p.cache.expire(Instant::now(), IDLE_RELEASE, ring_bytes);
                let next = p.cache.next_expiry(IDLE_RELEASE);
                p.reaper_running = next.is_some();
                (due, next)
            };
            if !due.is_empty() {
                tracing::debug!(rings = due.len(), "idle pinned rings released");
            }
            drop(due);
            match next {
                Some(at) => std::thread::sleep(at.saturating_duration_since(Instant::now())),
                None => return,
            }
        });
    match spawned {
        Ok(_) => pool.reaper_running = true,
        // Without the thread, idle rings stay until `release_pinned_loaders`.
        Err(e) => tracing::warn!("cannot start the thread that releases idle pinned memory: {e}"),
    }
}

/// A device's staging ring, taken from the cache for one load (or more, by one owner) and put
/// back on drop.
pub(crate) struct PinnedLoader {
    ring: Option<StagingRing>,
    reused: bool,
}

impl PinnedLoader {
    /// The loader for `request` on `gpu`: the device's idle ring if it fits, else a new one.
    pub(crate) fn acquire(gpu: &Arc<Gpu>, request: RingRequest) -> Result<PinnedLoader, CudaError> {
        let (idle, unfit) = pool()
            .cache
            .take(gpu.ordinal(), |r| r.fits(&request), ring_bytes);
        drop(unfit);
        let reused = idle.is_some();
        let ring = match idle {
            Some(r) => r,
            None => {
                let r = StagingRing::new(gpu, request)?;
                pool().cache.stats.made += 1;
                r
            }
        };
        Ok(PinnedLoader {
            ring: Some(ring),
            reused,
        })
    }

    fn ring(&self) -> &StagingRing {
        self.ring.as_ref().expect("the ring leaves only in drop")
    }

    /// Whether the ring was pinned by an earlier load.
    pub(crate) fn reused(&self) -> bool {
        self.reused
    }

    /// Bytes of pinned memory of the ring.
    pub(crate) fn ring_bytes(&self) -> usize {
        self.ring().ring_bytes()
    }

    /// Slots of the ring.
    pub(crate) fn slots(&self) -> usize {
        self.ring().slots()
    }

    /// Reads `plan` through `engine` into the given device buffers `dest`; `on_placement`
    /// gets each placement once its bytes are on the device. Returns the engine's report and
    /// an event recorded after every copy, which the caller waits on (or makes a stream wait
    /// on) before using the buffers.
    pub(crate) fn fill(
        &self,
        plan: &Plan,
        dest: &Destinations,
        engine: &EngineConfig,
        on_placement: &(dyn Fn(usize) + Sync),
    ) -> Result<(LoadReport, Event), CudaError> {
        let ring = self.ring();
        let sink = RingSink::new(ring, plan, dest, on_placement);
        let result = hoist_io::execute(plan, &sink, engine);
        let drained = sink.drain();
        let io = result?;
        drained?;
        assert!(
            sink.all_done(),
            "a ring load ended with tensors not reported"
        );
        let done = Event::new(ring.gpu())?;
        ring.record_all(&done)?;
        Ok((io, done))
    }
}

impl Drop for PinnedLoader {
    fn drop(&mut self) {
        let Some(ring) = self.ring.take() else {
            return;
        };
        let ordinal = ring.gpu().ordinal();
        let mut p = pool();
        let replaced = p.cache.put(ordinal, ring, Instant::now(), ring_bytes);
        ensure_reaper(&mut p);
        drop(p);
        drop(replaced);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items are their byte counts.
    fn bytes(v: &usize) -> usize {
        *v
    }

    #[test]
    fn an_idle_item_is_reused_until_it_has_been_idle_long_enough() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(30);
        let mut c = IdleCache::new();
        assert_eq!(c.take(0, |_| true, bytes), (None, None));
        assert_eq!(c.put(0, 100, t0, bytes), None);
        assert_eq!(c.stats.idle_bytes, 100);
        assert_eq!(c.next_expiry(idle), Some(t0 + idle));
        // Not yet due.
        assert!(c
            .expire(t0 + Duration::from_secs(29), idle, bytes)
            .is_empty());
        assert_eq!(c.take(0, |_| true, bytes), (Some(100), None));
        assert_eq!(c.stats.reused, 1);
        assert_eq!(c.stats.idle_bytes, 0);
        // Put back later: the idle time counts from then.
        let t1 = t0 + Duration::from_secs(29);
        c.put(0, 100, t1, bytes);
        assert!(c.expire(t0 + idle, idle, bytes).is_empty());
        assert_eq!(c.expire(t1 + idle, idle, bytes), vec![100]);
        assert_eq!(c.next_expiry(idle), None);
        assert_eq!(c.stats.released, 1);
        assert_eq!(c.stats.idle_bytes, 0);
    }

    #[test]
    fn devices_are_apart_and_an_unfit_item_is_handed_back_for_release() {
        let t0 = Instant::now();
        let mut c = IdleCache::new();
        c.put(0, 100, t0, bytes);
        c.put(1, 200, t0 + Duration::from_secs(5), bytes);
        assert_eq!(c.take(2, |_| true, bytes), (None, None));
        assert_eq!(c.take(1, |&v| v >= 300, bytes), (None, Some(200)));
        assert_eq!(c.stats.released, 1);
        assert_eq!(c.stats.reused, 0);
        assert_eq!(c.take(0, |&v| v >= 100, bytes), (Some(100), None));
        assert_eq!(c.stats.idle_bytes, 0);
    }

    #[test]
    fn a_second_put_replaces_and_returns_the_first() {
        let t0 = Instant::now();
        let mut c = IdleCache::new();
        c.put(0, 100, t0, bytes);
        assert_eq!(c.put(0, 150, t0, bytes), Some(100));
        assert_eq!(c.stats.idle_bytes, 150);
        assert_eq!(c.stats.released, 1);
        assert_eq!(c.take(0, |_| true, bytes), (Some(150), None));
    }

    #[test]
    fn release_now_takes_everything_idle() {
        let t0 = Instant::now();
        let mut c = IdleCache::new();
        c.put(0, 1, t0, bytes);
        c.put(3, 2, t0, bytes);
        let mut all = c.expire(t0, Duration::ZERO, bytes);
        all.sort();
        assert_eq!(all, vec![1, 2]);
        assert_eq!(c.stats.idle_bytes, 0);
        assert_eq!(c.next_expiry(Duration::ZERO), None);
    }

    #[test]
    fn with_nothing_pinned_release_and_stats_answer() {
        assert_eq!(release_pinned_loaders(), 0);
        assert_eq!(pinned_loader_stats().idle_bytes, 0);
    }
}
