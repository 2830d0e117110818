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
/// full, and last the least recently used.
pub(crate) fn choose(
    slots: &[SlotView<'_>],
    ids: &[u32],
    key: Option<&str>,
    size: usize,
) -> Choice {
    let same_key = |s: &SlotView<'_>| key.is_some() && s.key == key;
    let best = slots
        .iter()
        .enumerate()
        .filter(|(_, s)| reusable(s.cached, ids) > 0)
        .max_by_key(|(_, s)| (s.cached.len(), same_key(s), s.last_used));
    if let Some((i, _)) = best {
        return Choice::Use(i);
    }
    if let Some(i) = slots.iter().position(same_key) {
        return Choice::Use(i);
    }
    if let Some(i) = slots.iter().position(|s| s.cached.is_empty()) {
        return Choice::Use(i);
    }
    if slots.len() < size {
        return Choice::Allocate;
    }
    let lru = slots.iter().enumerate().min_by_key(|(_, s)| s.last_used);
    // An empty pool with size 0 cannot happen: the engine keeps at least one session.
    Choice::Use(lru.map_or(0, |(i, _)| i))
}

/// One session of the pool, with what [`choose`] needs.
struct Slot<'m> {
    session: Session<'m>,
    key: Option<String>,
    last_used: u64,
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
        let views: Vec<SlotView<'_>> = self
            .slots
            .iter()
            .map(|s| SlotView {
                cached: s.session.cached(),
                key: s.key.as_deref(),
                last_used: s.last_used,
            })
            .collect();
        let i = match choose(&views, ids, key, self.size) {
            Choice::Use(i) => i,
            Choice::Allocate => {
                self.slots.push(Slot {
                    session: self.model.session(self.context)?,
                    key: None,
                    last_used: 0,
                });
                self.slots.len() - 1
            }
        };
        self.served += 1;
        let slot = &mut self.slots[i];
        slot.key = key.map(str::to_string);
        slot.last_used = self.served;
        Ok(&mut slot.session)
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
}
