//! Which experts of a layer a GPU expert cache keeps: the policy half of expert streaming.
//!
//! A mixture-of-experts model larger than the GPU keeps attention, norms, routers and shared
//! experts resident and holds, per sparse layer, `capacity` of its experts in VRAM slots. Each
//! step the router names the `k` experts a token needs; those not held are *misses*, copied in
//! (from pinned host memory or the file) into slots the policy frees. This module decides which
//! slot each needed expert lands in and what it evicts; it holds no memory and does no copies,
//! so its behaviour is a pure function of the access sequence, checked here on traces.
//!
//! Policies (the systems issue 18 names report 67–81% hit rates with caches like these, and warn
//! that plain LRU suffers on cyclic access):
//! - [`Policy::Lru`]: evict the expert used longest ago.
//! - [`Policy::LfuDecay`]: evict the lowest score, a use count that decays by half every
//!   `half_life` steps (frequency, with recency breaking the hold of a stale favourite); ties to
//!   the least recently used.
//!
//! Either policy can be fed a *prediction* ([`ExpertCache::prefetch`]): the experts the next
//! layer's router picks for the current hidden state, fetched ahead so that a right guess is a
//! hit when the step comes. Experts needed in the current step are never evicted by it.

/// How an [`ExpertCache`] chooses what to evict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// Least recently used.
    Lru,
    /// Lowest use count decayed by half every `half_life` steps (> 0).
    LfuDecay {
        /// Steps for a use to weigh half as much.
        half_life: f32,
    },
}

impl Default for Policy {
    /// LFU with a half-life of 64 steps: the best or tied hit rate of the policies on every
    /// synthetic trace kind (`examples/expert_cache.rs`; docs/BENCHMARKS.md) — as LRU on uniform
    /// routing, 3–11 points above it on skewed (caches of 12.5–50%), and still ahead when the
    /// popular experts drift.
    fn default() -> Policy {
        Policy::LfuDecay { half_life: 64.0 }
    }
}

/// Where one needed expert is for this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Already held.
    Hit {
        /// Its slot.
        slot: usize,
    },
    /// Not held: to be copied in.
    Miss {
        /// The slot it goes to (whose previous expert, if any, is evicted).
        slot: usize,
    },
}

/// A cache that cannot exist: no slot, or more slots than experts, or a bad half-life.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CacheError {
    /// The capacity is outside `1..=experts`.
    #[error("an expert cache of {capacity} slots for {experts} experts: give 1 to {experts}")]
    Capacity {
        /// Slots asked for.
        capacity: usize,
        /// Experts of the layer.
        experts: usize,
    },
    /// LFU's half-life is not a positive number of steps.
    #[error("an LFU half-life of {0} steps: give a positive number")]
    HalfLife(f32),
}

/// One layer's expert cache: `capacity` slots over `experts` experts.
#[derive(Clone, Debug)]
pub struct ExpertCache {
    policy: Policy,
    /// The expert in each slot.
    slots: Vec<Option<u32>>,
    /// The slot of each expert.
    slot_of: Vec<Option<usize>>,
    /// The step each expert was last used (or prefetched) at.
    last_use: Vec<u64>,
    /// LFU: decayed use counts, as of `scored_at`.
    score: Vec<f32>,
    scored_at: Vec<u64>,
    /// Experts pinned for the step being served (never evicted by it).
    pinned: Vec<bool>,
    step: u64,
}

impl ExpertCache {
    /// An empty cache of `capacity` slots for a layer of `experts` experts.
    pub fn new(experts: usize, capacity: usize, policy: Policy) -> Result<ExpertCache, CacheError> {
        if capacity == 0 || capacity > experts {
            return Err(CacheError::Capacity { capacity, experts });
        }
        if let Policy::LfuDecay { half_life } = policy {
            if !(half_life > 0.0 && half_life.is_finite()) {
                return Err(CacheError::HalfLife(half_life));
            }
        }
        Ok(ExpertCache {
            policy,
            slots: vec![None; capacity],
            slot_of: vec![None; experts],
            last_use: vec![0; experts],
            score: vec![0.0; experts],
            scored_at: vec![0; experts],
            pinned: vec![false; experts],
            step: 0,
        })
    }

    /// Slots of the cache.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The expert held in `slot`.
    pub fn expert_in(&self, slot: usize) -> Option<u32> {
        self.slots.get(slot).copied().flatten()
    }

    /// One step's experts (distinct, each below the expert count; at most `capacity` of them):
    /// where each is, in `out` (in `needed`'s order). Misses take free slots first, then evict
    /// by the policy, never one of `needed`.
    ///
    /// # Panics
    /// When `needed` holds more experts than slots, an expert twice, or one out of range: the
    /// router's output, checked by the caller.
    pub fn access(&mut self, needed: &[u32], out: &mut Vec<Access>) {
        assert!(
            needed.len() <= self.capacity(),
            "{} experts a step for {} slots",
            needed.len(),
            self.capacity()
        );
        self.step += 1;
        out.clear();
        for &e in needed {
            let e = e as usize;
            assert!(!self.pinned[e], "expert {e} twice in one step");
            self.pinned[e] = true;
        }
        for &e in needed {
            let e = e as usize;
            let access = match self.slot_of[e] {
                Some(slot) => Access::Hit { slot },
                None => Access::Miss {
                    slot: self.place(e),
                },
            };
            self.touch(e);
            out.push(access);
        }
        for &e in needed {
            self.pinned[e as usize] = false;
        }
    }

    /// Fetches `predicted` experts ahead of the step that will need them (those not held yet,
    /// at most what the slots allow without evicting each other); returns how many were
    /// fetched. A prefetched expert counts as used now, so it is kept until its step.
    pub fn prefetch(&mut self, predicted: &[u32]) -> usize {
        let mut fetched = 0;
        for &e in predicted.iter().take(self.capacity()) {
            let e = e as usize;
            if self.slot_of[e].is_none() {
                self.place(e);
                fetched += 1;
            }
            self.last_use[e] = self.step;
            self.pinned[e] = true;
        }
        for &e in predicted {
            self.pinned[e as usize] = false;
        }
        fetched
    }

    /// Puts expert `e` in a slot (a free one, else the policy's victim's) and returns it.
    fn place(&mut self, e: usize) -> usize {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => self.victim(),
        };
        if let Some(old) = self.slots[slot] {
            self.slot_of[old as usize] = None;
        }
        self.slots[slot] = Some(e as u32);
        self.slot_of[e] = Some(slot);
        slot
    }

    /// The slot whose expert the policy evicts (never a pinned one; one exists: a step needs at
    /// most `capacity` experts).
    fn victim(&self) -> usize {
        let candidates = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| e.map(|e| (slot, e as usize)))
            .filter(|&(_, e)| !self.pinned[e]);
        let chosen = match self.policy {
            Policy::Lru => candidates.min_by_key(|&(_, e)| self.last_use[e]),
            Policy::LfuDecay { half_life } => candidates.min_by(|&(_, a), &(_, b)| {
                let (sa, sb) = (self.decayed(a, half_life), self.decayed(b, half_life));
                sa.total_cmp(&sb)
                    .then(self.last_use[a].cmp(&self.last_use[b]))
            }),
        };
        match chosen {
            Some((slot, _)) => slot,
            None => unreachable!("a full cache holds an unpinned expert"),
        }
    }

    /// Expert `e`'s LFU score now.
    fn decayed(&self, e: usize, half_life: f32) -> f32 {
        let age = (self.step - self.scored_at[e]) as f32;
        self.score[e] * (-age / half_life).exp2()
    }

    /// Records a use of expert `e` at this step.
    fn touch(&mut self, e: usize) {
        self.last_use[e] = self.step;
        if let Policy::LfuDecay { half_life } = self.policy {
            self.score[e] = self.decayed(e, half_life) + 1.0;
            self.scored_at[e] = self.step;
        }
    }
}

/// What serving a trace through a cache did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Stats {
    /// Experts asked for.
    pub accesses: u64,
    /// Of those, already held.
    pub hits: u64,
    /// Experts fetched ahead by predictions.
    pub prefetched: u64,
}

impl Stats {
    /// Hits over accesses (1 for no access).
    pub fn hit_rate(&self) -> f64 {
        if self.accesses == 0 {
            1.0
        } else {
            self.hits as f64 / self.accesses as f64
        }
    }

    /// Experts copied per step: the misses and the prefetches.
    pub fn fetched(&self) -> u64 {
        self.accesses - self.hits + self.prefetched
    }
}

/// Serves `trace` (each step's experts) through `cache`; with `predictions`, step `i`'s
/// prediction is prefetched just before step `i` (the look-ahead a router applied early gives).
pub fn simulate(
    cache: &mut ExpertCache,
    trace: &[Vec<u32>],
    predictions: Option<&[Vec<u32>]>,
) -> Stats {
    let mut stats = Stats::default();
    let mut out = Vec::with_capacity(cache.capacity());
    for (i, step) in trace.iter().enumerate() {
        if let Some(p) = predictions.and_then(|p| p.get(i)) {
            stats.prefetched += cache.prefetch(p) as u64;
        }
        cache.access(step, &mut out);
        stats.accesses += out.len() as u64;
        stats.hits += out
            .iter()
            .filter(|a| matches!(a, Access::Hit { .. }))
            .count() as u64;
    }
    stats
}

pub mod traces;

#[cfg(test)]
mod tests;
