//! Constrained decoding: generation that can only produce JSON (any value, or one matching a
//! JSON schema of a documented subset).
//!
//! At each step [`Matcher::apply`] masks the logits of every token whose bytes would make the
//! output stop being a prefix of an accepted document, and allows the end tokens only once the
//! document is complete; [`Matcher::advance`] then moves past the chosen token. It works on
//! host logits, so it serves CPU and GPU sessions alike (the generate loop leaves the GPU's
//! on-device greedy path when a constraint is set).
//!
//! # Why no crate
//! `llguidance` + `toktrie` (what llama.cpp, vLLM and SGLang use) would fit the job, but bring
//! a large dependency tree (a regex-derivative engine, its own JSON-schema compiler) into a
//! workspace built `--locked` and offline, for far more than Ollama's and OpenAI's JSON modes
//! need. So this is a small character-level pushdown automaton ([`automaton`]) over a compiled
//! schema ([`schema`]): all of JSON for `format: "json"`, and the schema keywords `type`,
//! `properties`, `required`, `additionalProperties`, `items`, `enum` and `const` (anything
//! else is refused, naming the keyword: [`SchemaError`]).
//!
//! # Cost
//! A mask walks the vocabulary sorted by bytes ([`TokenTable`]), which is a trie walk: a
//! token sharing a prefix with the one before restarts from the state saved after that prefix,
//! and when a byte is refused every following token with that prefix is skipped in O(1). Masks
//! are cached by automaton state (the state inside a free string, say, recurs at every step of
//! that string), so most steps cost a hash lookup and one pass over the logits.

mod automaton;
mod schema;
mod vocab;

use std::collections::HashMap;
use std::sync::Arc;

pub use automaton::{MAX_DEPTH, MAX_WS};
pub use schema::{JsonGrammar, SchemaError, MAX_LITERALS, MAX_PROPERTIES};
pub use vocab::TokenTable;

use automaton::State;

/// Masks kept per request; a mask is one bit per token (19 KB for 150k tokens).
const CACHE_MASKS: usize = 128;

/// What generation must produce, and the vocabulary's bytes to check tokens with: the optional
/// constraint of [`crate::generate::GenerateOptions`]. Cheap to clone (both parts are shared).
#[derive(Clone, Debug)]
pub struct Constraint {
    grammar: Arc<JsonGrammar>,
    tokens: Arc<TokenTable>,
}

impl Constraint {
    /// `grammar` over the tokens of `tokens` (a table of the tokenizer generation uses).
    pub fn new(grammar: Arc<JsonGrammar>, tokens: Arc<TokenTable>) -> Constraint {
        Constraint { grammar, tokens }
    }

    /// A matcher at the start of the document, for one generation.
    pub fn matcher(&self) -> Matcher {
        let state = State::new(&self.grammar);
        Matcher {
            constraint: self.clone(),
            walk: Vec::new(),
            at: Vec::new(),
            next: state.clone(),
            state,
            cache: HashMap::new(),
            saved: Vec::new(),
            computed: 0,
        }
    }
}

/// One generation's progress through a [`Constraint`].
#[derive(Debug)]
pub struct Matcher {
    constraint: Constraint,
    state: State,
    /// Where `advance` feeds a token (the state's copy, its memory reused: no allocation a
    /// token), swapped in when the token fits.
    next: State,
    /// The trie walk's states, one slot per prefix length (kept to reuse their memory).
    walk: Vec<State>,
    /// For each prefix length, the slot of `walk` holding its state.
    at: Vec<usize>,
    /// Masks by state.
    cache: HashMap<State, Vec<u64>>,
    /// End tokens' logits, kept while masking.
    saved: Vec<(usize, f32)>,
    /// Masks computed (cache misses), for tests and measurements.
    computed: usize,
}

impl Matcher {
    /// Whether the output so far is a whole document (the end tokens are allowed).
    pub fn is_complete(&self) -> bool {
        self.state.is_complete(&self.constraint.grammar)
    }

    /// Masks computed so far (the other steps found theirs in the cache).
    pub fn masks_computed(&self) -> usize {
        self.computed
    }

    /// Whether `id`'s bytes keep the output a valid prefix (end tokens are not tokens with
    /// bytes: see [`Matcher::apply`]).
    pub fn allows(&mut self, id: u32) -> bool {
        let i = id as usize;
        self.mask()
            .get(i / 64)
            .is_some_and(|w| w >> (i % 64) & 1 == 1)
    }

    /// Sets to −∞ the logits of tokens the constraint refuses: those whose bytes break the
    /// document, tokens without bytes, and `stop_tokens` until the document is complete.
    /// Returns whether any token is left.
    pub fn apply(&mut self, logits: &mut [f32], stop_tokens: &[u32]) -> bool {
        let complete = self.is_complete();
        let mut saved = std::mem::take(&mut self.saved);
        saved.clear();
        if complete {
            saved.extend(
                stop_tokens
                    .iter()
                    .filter_map(|&t| logits.get(t as usize).map(|&l| (t as usize, l))),
            );
        }
        let mask = self.mask();
        let mut any = false;
        for (i, l) in logits.iter_mut().enumerate() {
            let allowed = mask.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1);
            if allowed {
                any |= !l.is_nan() && *l > f32::NEG_INFINITY;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        for &t in stop_tokens {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = f32::NEG_INFINITY;
            }
        }
        for &(t, l) in &saved {
            logits[t] = l;
            any |= !l.is_nan() && l > f32::NEG_INFINITY;
        }
        self.saved = saved;
        any
    }

    /// Moves past `id` (an end token moves nothing). Returns false when its bytes break the
    /// document (it was not allowed); the matcher is then where it was.
    pub fn advance(&mut self, id: u32) -> bool {
        let c = &self.constraint;
        self.next.clone_from(&self.state);
        if !self.next.feed(&c.grammar, c.tokens.bytes(id)) {
            return false;
        }
        std::mem::swap(&mut self.state, &mut self.next);
        true
    }

    /// The mask of the current state: bit `id` set when token `id` may come next.
    fn mask(&mut self) -> &[u64] {
        if !self.cache.contains_key(&self.state) {
            if self.cache.len() >= CACHE_MASKS {
                self.cache.clear();
            }
            let mask = self.compute();
            self.computed += 1;
            self.cache.insert(self.state.clone(), mask);
        }
        &self.cache[&self.state]
    }

    /// Walks the vocabulary in byte order from the current state.
    fn compute(&mut self) -> Vec<u64> {
        let Constraint { grammar, tokens } = &self.constraint;
        let g = &**grammar;
        let mut mask = vec![0u64; tokens.len().div_ceil(64)];
        let depth = tokens.longest + 1;
        self.walk.resize(depth, self.state.clone());
        self.walk[0].clone_from(&self.state);
        self.at.clear();
        self.at.resize(depth, 0);
        // The state after the current token's first k bytes is `walk[at[k]]`, for k <=
        // `valid`; a byte that leaves the state as it was ([`State::keeps`]) shares the slot
        // before it instead of copying it, and a copy for k goes to slot k, which no shorter
        // prefix uses.
        let mut valid = 0usize;
        // The current token's byte at this index was refused.
        let mut failed: Option<usize> = None;
        for (i, &id) in tokens.order.iter().enumerate() {
            let shared = tokens.shared[i] as usize;
            if failed.is_some_and(|f| shared > f) {
                // Same refused prefix as the token before.
                continue;
            }
            failed = None;
            let bytes = tokens.bytes(id);
            let mut k = shared.min(valid);
            while k < bytes.len() {
                let from = self.at[k];
                if self.walk[from].keeps(bytes[k]) {
                    self.at[k + 1] = from;
                } else {
                    let (head, tail) = self.walk.split_at_mut(k + 1);
                    tail[0].clone_from(&head[from]);
                    if !tail[0].step(g, bytes[k]) {
                        failed = Some(k);
                        break;
                    }
                    self.at[k + 1] = k + 1;
                }
                k += 1;
            }
            valid = k;
            if failed.is_none() {
                mask[id as usize / 64] |= 1 << (id % 64);
            }
        }
        mask
    }
}

#[cfg(test)]
mod tests;
