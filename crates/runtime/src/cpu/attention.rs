//! Causal attention with grouped-query heads over a KV cache, for prefill (many new tokens)
//! and decode (one).

use super::deltanet::DeltaState;
use super::model::ForwardError;
use super::ops::{dot, softmax};

/// Keys and values of every layer for the positions seen so far, `[position, kv_head, dim]`
/// per layer, with a fixed capacity.
///
/// A hybrid linear-attention model (Qwen3-Next, Qwen3.5) keeps keys and values for its
/// full-attention layers only (its `layers` are those) and, beside them, the conv and
/// recurrent state of each Gated DeltaNet layer ([`KvCache::with_delta_states`]): one cache
/// type is one sequence's whole state, whatever the architecture.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
    capacity: usize,
    row: usize,
    delta: Vec<DeltaState>,
}

impl KvCache {
    /// An empty cache for `layers` layers of `kv_heads × head_dim`, holding `capacity`
    /// positions, its memory reserved up front.
    ///
    /// # Errors
    /// [`ForwardError::CacheTooLarge`] when the cache's size overflows or its memory cannot be
    /// reserved (a context far beyond what the machine holds).
    pub fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Result<KvCache, ForwardError> {
        let row = kv_heads * head_dim;
        let too_large = || ForwardError::CacheTooLarge {
            context: capacity,
            bytes: cache_bytes(layers, row, capacity),
        };
        let per_layer = capacity.checked_mul(row).ok_or_else(too_large)?;
        // Both caches of every layer must fit in the address space, not only one of them.
        per_layer
            .checked_mul(layers.saturating_mul(2))
            .and_then(|n| n.checked_mul(std::mem::size_of::<f32>()))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(too_large)?;
        let reserve = || -> Result<Vec<Vec<f32>>, ForwardError> {
            (0..layers)
                .map(|_| {
                    let mut v = Vec::new();
                    v.try_reserve_exact(per_layer).map_err(|_| too_large())?;
                    Ok(v)
                })
                .collect()
        };
        Ok(KvCache {
            k: reserve()?,
            v: reserve()?,
            len: 0,
            capacity,
            row,
            delta: Vec::new(),
        })
    }

    /// The cache with the initial states of a hybrid model's DeltaNet layers (in layer order)
    /// beside its keys and values.
    pub fn with_delta_states(mut self, states: Vec<DeltaState>) -> KvCache {
        self.delta = states;
        self
    }

    /// The state of DeltaNet layer `i` (counting DeltaNet layers only).
    ///
    /// # Panics
    /// If the cache holds fewer DeltaNet states (the model makes its own caches).
    pub fn delta_mut(&mut self, i: usize) -> &mut DeltaState {
        &mut self.delta[i]
    }

    /// Attention layers, DeltaNet states, and values per position of a layer's keys.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.k.len(), self.delta.len(), self.row)
    }

    /// The DeltaNet layers' states, in layer order (empty for other models).
    pub fn delta_states(&self) -> &[DeltaState] {
        &self.delta
    }

    /// Positions committed (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is committed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends `n` positions of keys and values (`[n, kv_heads·head_dim]`) to `layer`. The
    /// positions count as committed once every layer has them: call [`KvCache::commit`].
    ///
    /// # Panics
    /// If the rows overrun the capacity or have the wrong width (the model checks first).
    pub fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        assert!(k.len() == v.len() && k.len().is_multiple_of(self.row));
        assert!(
            self.k[layer].len() + k.len() <= self.capacity * self.row,
            "KV cache overrun"
        );
        self.k[layer].extend_from_slice(k);
        self.v[layer].extend_from_slice(v);
    }

    /// Marks `n` more positions as committed in every layer.
    pub fn commit(&mut self, n: usize) {
        self.len += n;
        debug_assert!(self.k.iter().all(|k| k.len() == self.len * self.row));
    }

    /// Forgets every position.
    pub fn clear(&mut self) {
        self.k.iter_mut().for_each(Vec::clear);
        self.v.iter_mut().for_each(Vec::clear);
        self.delta.iter_mut().for_each(DeltaState::clear);
        self.len = 0;
    }

    /// Keys and values of `layer`, appended rows included.
    pub fn layer(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.k[layer], &self.v[layer])
    }
}

/// Bytes of the keys and values of `layers` layers of `row` floats for `capacity` positions
/// (in `u128`: it is reported when it overflows `usize`).
fn cache_bytes(layers: usize, row: usize, capacity: usize) -> u128 {
    2 * layers as u128 * row as u128 * capacity as u128 * std::mem::size_of::<f32>() as u128
}

/// Causal scaled-dot-product attention for `q` (`[n, heads, dim]`, the `n` newest positions,
/// the first at `start`) over all `keys`/`values` (`[start + n, kv_heads, dim]`). Query head
/// `h` uses key/value head `h / (heads / kv_heads)`. A query at position `p` sees keys
/// `max(0, p − window + 1) ..= p`. Returns `[n, heads, dim]`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    heads: usize,
    kv_heads: usize,
    dim: usize,
    window: Option<usize>,
) -> Vec<f32> {
    let n = q.len() / (heads * dim);
    let total = start + n;
    assert_eq!(
        keys.len(),
        total * kv_heads * dim,
        "keys do not cover the queries"
    );
    let group = heads / kv_heads;
    let scale = 1.0 / (dim as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut scores = Vec::with_capacity(total);
    for t in 0..n {
        let pos = start + t;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q[(t * heads + h) * dim..][..dim];
            scores.clear();
            scores.extend((0..=pos).map(|j| {
                if j < first {
                    f32::NEG_INFINITY
                } else {
                    dot(qh, &keys[(j * kv_heads + kvh) * dim..][..dim]) * scale
                }
            }));
            softmax(&mut scores);
            let o = &mut out[(t * heads + h) * dim..][..dim];
            for (j, p) in scores.iter().enumerate() {
                let vj = &values[(j * kv_heads + kvh) * dim..][..dim];
                for (a, b) in o.iter_mut().zip(vj) {
                    *a += p * b;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn an_impossible_cache_is_an_error_not_an_abort() {
        for capacity in [usize::MAX, 1 << 50] {
            match KvCache::new(2, 2, 8, capacity) {
                Err(ForwardError::CacheTooLarge { context, bytes }) => {
                    assert_eq!(context, capacity);
                    assert_eq!(bytes, 2 * 2 * 16 * 4 * capacity as u128);
                }
                other => panic!("{capacity}: {other:?}"),
            }
        }
    }

    #[test]
    fn single_key_returns_its_value() {
        let out = attention(&[1.0, 0.0], &[3.0, 4.0], &[5.0, 6.0], 0, 1, 1, 2, None);
        assert_eq!(out, vec![5.0, 6.0]);
    }

    #[test]
    fn decode_step_by_step_equals_prefill() {
        let (heads, kvh, dim, n) = (4, 2, 8, 6);
        let q = pseudo(n * heads * dim, 1);
        let k = pseudo(n * kvh * dim, 2);
        let v = pseudo(n * kvh * dim, 3);
        let full = attention(&q, &k, &v, 0, heads, kvh, dim, None);
        let row_q = heads * dim;
        let row_kv = kvh * dim;
        let mut cache = KvCache::new(1, kvh, dim, n).unwrap();
        for t in 0..n {
            cache.append(0, &k[t * row_kv..][..row_kv], &v[t * row_kv..][..row_kv]);
            cache.commit(1);
            let (ck, cv) = cache.layer(0);
            let step = attention(&q[t * row_q..][..row_q], ck, cv, t, heads, kvh, dim, None);
            for (a, b) in step.iter().zip(&full[t * row_q..][..row_q]) {
                assert!((a - b).abs() < 1e-6, "token {t}");
            }
        }
        assert_eq!(cache.len(), n);
    }

    #[test]
    fn gqa_equals_repeated_kv_heads_and_is_causal() {
        let (heads, dim, n) = (4, 4, 5);
        let q = pseudo(n * heads * dim, 7);
        let k = pseudo(n * dim, 8);
        let v = pseudo(n * dim, 9);
        let gqa = attention(&q, &k, &v, 0, heads, 1, dim, None);
        let rep = |x: &[f32]| -> Vec<f32> { x.chunks(dim).flat_map(|r| r.repeat(heads)).collect() };
        let mha = attention(&q, &rep(&k), &rep(&v), 0, heads, heads, dim, None);
        assert_eq!(gqa, mha);
        // Changing the last key must not change any earlier output.
        let mut k2 = k.clone();
        k2[(n - 1) * dim] += 5.0;
        let changed = attention(&q, &k2, &v, 0, heads, 1, dim, None);
        let row = heads * dim;
        assert_eq!(&changed[..(n - 1) * row], &gqa[..(n - 1) * row]);
        assert_ne!(&changed[(n - 1) * row..], &gqa[(n - 1) * row..]);
    }

    #[test]
    fn sliding_window_hides_old_keys() {
        // Window 1: each query sees only its own position's value.
        let (dim, n) = (2, 3);
        let q = pseudo(n * dim, 4);
        let k = pseudo(n * dim, 5);
        let v: Vec<f32> = (0..n * dim).map(|i| i as f32).collect();
        assert_eq!(attention(&q, &k, &v, 0, 1, 1, dim, Some(1)), v);
    }
}
