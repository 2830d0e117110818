//! The owner thread's sessions: which one serves a request, so that a conversation's follow-up
//! reuses the KV cache its previous turn left.

use crate::model::{Model, Session};
use crate::EngineError;

/// How many leading tokens of `ids` a KV cache holding `cached` can keep: all of `cached` when
/// `ids` extends it by at least one token (the last token's logits are needed, and a cache
/// cannot drop positions), else 0.
pub(crate) fn reusable(cached: &[u32], ids: &[u32]) -> usize {
    match ids.len() > cached.len() && ids.starts_with(cached) {
        true => cached.len(),
        false => 0,
    }
}

/// What [`choose`] sees of one session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotView<'a> {
    /// The tokens its KV cache holds.
    pub cached: &'a [u32],
    /// The session key of the request it served last.
    pub key: Option<&'a str>,
    /// When it served last (a counter: larger is later).
    pub last_used: u64,
    /// Whether a running request holds it (it cannot serve another).
    pub busy: bool,
}

/// Which session serves a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Choice {
    /// The session at this index.
    Use(usize),
    /// A new session (the pool is not full yet).
    Allocate,
}

/// Picks the session for a request of `ids` with session key `key`, among `slots` of a pool of
/// at most `size`: the one whose cached tokens are the longest prefix of `ids` (on a tie, the
/// request's own key's, then the most recent); else the key's own session (its cache is stale:
/// better than evicting another conversation's), an empty one, a new one while the pool is not
/// full, and last the least recently used. Busy sessions are never chosen: with every session
/// busy, a new one is made (the engine sizes the pool so that this does not happen).
pub(crate) fn choose(
    slots: &[SlotView<'_>],
    ids: &[u32],
    key: Option<&str>,
    size: usize,
) -> Choice {
    let same_key = |s: &SlotView<'_>| key.is_some() && s.key == key;
    let free = || slots.iter().enumerate().filter(|(_, s)| !s.busy);
    let best = free()
        .filter(|(_, s)| reusable(s.cached, ids) > 0)
        .max_by_key(|(_, s)| (s.cached.len(), same_key(s), s.last_used));
    if let Some((i, _)) = best {
        return Choice::Use(i);
    }
    if let Some((i, _)) = free().find(|(_, s)| same_key(s)) {
        return Choice::Use(i);
    }
    if let Some((i, _)) = free().find(|(_, s)| s.cached.is_empty()) {
        return Choice::Use(i);
    }
    if slots.len() < size {
        return Choice::Allocate;
    }
    match free().min_by_key(|(_, s)| s.last_used) {
        Some((i, _)) => Choice::Use(i),
        None => Choice::Allocate,
    }
}

/// One session of the pool, with what [`choose`] needs.
struct Slot<'m> {
    session: Session<'m>,
    key: Option<String>,
    last_used: u64,
    busy: bool,
}

/// Up to `size` sessions on one model, each with a KV cache of `context` positions, made as
/// requests need them.
pub(crate) struct Pool<'m> {
    model: &'m Model,
    context: usize,
    size: usize,
    slots: Vec<Slot<'m>>,
    /// Requests served: the clock of `last_used`.
    served: u64,
}

impl<'m> Pool<'m> {
    /// A pool of at most `size` (at least 1) sessions; the first is made now, so that a context
    /// too large for memory fails at load rather than at the first request.
    pub(crate) fn new(
        model: &'m Model,
        context: usize,
        size: usize,
    ) -> Result<Pool<'m>, EngineError> {
        assert!(size >= 1, "a pool holds at least one session");
        let first = Slot {
            session: model.session(context)?,
            key: None,
            last_used: 0,
            busy: false,
        };
        Ok(Pool {
            model,
            context,
            size,
            slots: vec![first],
            served: 0,
        })
    }

    /// The session to serve `ids` for `key`, made if need be.
    pub(crate) fn session_for(
        &mut self,
        ids: &[u32],
        key: Option<&str>,
    ) -> Result<&mut Session<'m>, EngineError> {
        let i = self.acquire(ids, key)?;
        Ok(&mut self.slots[i].session)
    }

    /// Index of the session to serve `ids` for `key` among those no request holds (made if
    /// need be), marked busy until [`Pool::release`].
    pub(crate) fn acquire(&mut self, ids: &[u32], key: Option<&str>) -> Result<usize, EngineError> {
        let views: Vec<SlotView<'_>> = self
            .slots
            .iter()
            .map(|s| SlotView {
                cached: s.session.cached(),
                key: s.key.as_deref(),
                last_used: s.last_used,
                busy: s.busy,
            })
            .collect();
        let i = match choose(&views, ids, key, self.size) {
            Choice::Use(i) => i,
            Choice::Allocate => {
                self.slots.push(Slot {
                    session: self.model.session(self.context)?,
                    key: None,
                    last_used: 0,
                    busy: false,
                });
                self.slots.len() - 1
            }
        };
        self.served += 1;
        let slot = &mut self.slots[i];
        slot.key = key.map(str::to_string);
        slot.last_used = self.served;
        Ok(i)
    }

    /// Marks session `i` held by a running request (or free again).
    pub(crate) fn set_busy(&mut self, i: usize, busy: bool) {
        self.slots[i].busy = busy;
    }

    /// Session `i`.
    pub(crate) fn session(&mut self, i: usize) -> &mut Session<'m> {
        &mut self.slots[i].session
    }

    /// The sessions at `indices` (distinct), in that order.
    pub(crate) fn sessions(&mut self, indices: &[usize]) -> Vec<&mut Session<'m>> {
        let mut all: Vec<Option<&mut Session<'m>>> = self
            .slots
            .iter_mut()
            .map(|s| Some(&mut s.session))
            .collect();
        indices
            .iter()
            .map(|&i| all[i].take().expect("distinct session indices"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view<'a>(cached: &'a [u32], key: Option<&'a str>, last_used: u64) -> SlotView<'a> {
        SlotView {
            cached,
            key,
            last_used,
            busy: false,
        }
    }

    #[test]
    fn only_a_strict_prefix_is_reused() {
        assert_eq!(reusable(&[1, 2], &[1, 2, 3]), 2);
        assert_eq!(
            reusable(&[1, 2], &[1, 2]),
            0,
            "one token must be left to feed"
        );
        assert_eq!(reusable(&[1, 3], &[1, 2, 3]), 0);
        assert_eq!(reusable(&[], &[1]), 0);
    }

    #[test]
    fn the_longest_cached_prefix_wins() {
        let slots = [
            view(&[1], Some("a"), 5),
            view(&[1, 2, 3], Some("b"), 1),
            view(&[9, 9], None, 9),
        ];
        assert_eq!(choose(&slots, &[1, 2, 3, 4], Some("a"), 4), Choice::Use(1));
        assert_eq!(choose(&slots, &[1, 2], None, 4), Choice::Use(0));
        // Equal prefixes: the request's own conversation, then the latest.
        let tied = [view(&[1, 2], Some("a"), 7), view(&[1, 2], Some("b"), 3)];
        assert_eq!(choose(&tied, &[1, 2, 3], Some("b"), 4), Choice::Use(1));
        assert_eq!(choose(&tied, &[1, 2, 3], None, 4), Choice::Use(0));
    }

    #[test]
    fn a_miss_takes_its_own_then_an_empty_then_a_new_then_the_oldest_session() {
        let slots = [view(&[5], Some("a"), 2), view(&[6], Some("b"), 1)];
        assert_eq!(choose(&slots, &[1, 2], Some("b"), 4), Choice::Use(1));
        assert_eq!(choose(&slots, &[1, 2], Some("c"), 4), Choice::Allocate);
        assert_eq!(
            choose(&slots, &[1, 2], None, 2),
            Choice::Use(1),
            "least recent"
        );
        let with_empty = [view(&[5], None, 2), view(&[], None, 3)];
        assert_eq!(choose(&with_empty, &[1], None, 4), Choice::Use(1));
    }

    #[test]
    fn a_busy_session_is_never_chosen() {
        let busy = |v: SlotView<'static>| SlotView { busy: true, ..v };
        // Its prefix, its key, its emptiness and its age all lose to being held.
        let slots = [busy(view(&[1, 2], Some("a"), 1)), view(&[7], None, 5)];
        assert_eq!(choose(&slots, &[1, 2, 3], Some("a"), 2), Choice::Use(1));
        let slots = [busy(view(&[], None, 1)), view(&[7], None, 5)];
        assert_eq!(choose(&slots, &[1], None, 2), Choice::Use(1));
        assert_eq!(choose(&slots, &[1], None, 3), Choice::Allocate);
        let all_busy = [busy(view(&[1], None, 1)), busy(view(&[2], None, 2))];
        assert_eq!(choose(&all_busy, &[1, 2], None, 2), Choice::Allocate);
    }
}
