//! Choosing the next token from logits, and stopping.
//!
//! The order is `transformers`' `generate`: repetition penalty, then temperature, top-k,
//! top-p, min-p; temperature 0 is greedy. Sampling is deterministic for a seed (a xoshiro256**
//! generator seeded through splitmix64; no global state).
//!
//! [`StopStrings`] watches decoded text as it streams and holds back any tail that could be the
//! start of a stop string, so a stop string split across tokens is never shown.

mod select;

pub use select::argmax;

/// Sampling settings are out of range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("sampling setting {name} = {value} is out of range ({range})")]
pub struct SamplerError {
    /// The setting.
    pub name: &'static str,
    /// The value given.
    pub value: f32,
    /// The accepted range.
    pub range: &'static str,
}

/// How to choose tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// Divides logits; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the fewest most likely tokens whose probabilities sum to at least `top_p`; 1 keeps
    /// all.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 keeps all.
    pub min_p: f32,
    /// Penalty for tokens already in the context (`transformers`' rule: positive logits are
    /// divided by it, negative ones multiplied); 1 is none.
    pub repetition_penalty: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether the choice is the plain arg-max of the logits (temperature 0, no repetition
    /// penalty): what a model may compute itself ([`crate::generate::LogitsModel::decode_greedy`]).
    pub fn picks_argmax(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty == 1.0
    }

    /// Checks every setting's range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        let err = |name, value, range| Err(SamplerError { name, value, range });
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return err("temperature", self.temperature, ">= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return err("top_p", self.top_p, "(0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return err("min_p", self.min_p, "[0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return err("repetition_penalty", self.repetition_penalty, "> 0");
        }
        Ok(())
    }
}

/// `transformers`' repetition penalty over the distinct tokens of `context`.
pub fn apply_repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in context {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if !std::mem::replace(&mut seen[t as usize], true) {
            *l = if *l < 0.0 { *l * penalty } else { *l / penalty };
        }
    }
}

/// The distribution sampling draws from after temperature, top-k, top-p and min-p:
/// `(token, probability)` sorted by probability, descending (ties by token id), summing to 1.
/// Empty when `temperature` is 0 (greedy) or no logit is finite.
pub fn distribution(logits: &[f32], p: &SamplingParams) -> Vec<(u32, f32)> {
    if p.temperature == 0.0 {
        return Vec::new();
    }
    // Descending probability, ties by token id: a total order (ids are distinct), so picking
    // the top k first and sorting only those gives what sorting everything would.
    let mut items = if p.top_k > 0 {
        select::top_k_scaled(logits, p.temperature, p.top_k)
    } else {
        logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / p.temperature))
            .collect()
    };
    if items.is_empty() {
        return items;
    }
    items.sort_by(select::rank);
    let max = items[0].1;
    let mut sum = 0f64;
    for it in items.iter_mut() {
        it.1 = (it.1 - max).exp();
        sum += f64::from(it.1);
    }
    for it in items.iter_mut() {
        it.1 = (f64::from(it.1) / sum) as f32;
    }
    if p.top_p < 1.0 {
        let mut cum = 0f32;
        let keep = items
            .iter()
            .position(|it| {
                cum += it.1;
                cum >= p.top_p
            })
            .map_or(items.len(), |i| i + 1);
        items.truncate(keep);
    }
    if p.min_p > 0.0 {
        let floor = p.min_p * items[0].1;
        items.retain(|it| it.1 >= floor);
    }
    let total: f64 = items.iter().map(|it| f64::from(it.1)).sum();
    for it in items.iter_mut() {
        it.1 = (f64::from(it.1) / total) as f32;
    }
    items
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Chooses tokens with fixed settings and its own seeded generator.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler; the settings are checked.
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplerError> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: Rng::new(params.seed),
        })
    }

    /// The settings.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token for `logits`, given the tokens already in the context (for the
    /// repetition penalty).
    pub fn sample(&mut self, logits: &[f32], context: &[u32]) -> u32 {
        // A copy only when the penalty changes logits (a vocabulary is up to 600 KB).
        let mut logits = std::borrow::Cow::Borrowed(logits);
        if self.params.repetition_penalty != 1.0 {
            apply_repetition_penalty(logits.to_mut(), context, self.params.repetition_penalty);
        }
        let dist = distribution(&logits, &self.params);
        if dist.is_empty() {
            return argmax(&logits);
        }
        let u = self.rng.next_f64();
        let mut cum = 0f64;
        for &(t, p) in &dist {
            cum += f64::from(p);
            if u < cum {
                return t;
            }
        }
        dist[dist.len() - 1].0
    }
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token was produced.
    Eos(u32),
    /// A stop string appeared in the text (it is not part of the output).
    StopString(String),
    /// The token limit was reached.
    MaxTokens,
    /// The caller's cancel flag was set ([`crate::generate::generate_cancellable`]): Ctrl-C in
    /// `hoist run`'s chat.
    Cancelled,
}

/// What [`StopStrings::push`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopCheck {
    /// Text that is safe to show now (may be empty while a possible stop string is held).
    Emit(String),
    /// A stop string was found: show this last text, then stop.
    Stop {
        /// Text before the stop string not shown yet.
        text: String,
        /// The stop string found.
        stop: String,
    },
}

/// Finds stop strings in streamed text, across token boundaries.
#[derive(Clone, Debug, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    text: String,
    shown: usize,
}

impl StopStrings {
    /// A watcher for `stops` (empty strings are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> StopStrings {
        StopStrings {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }

    /// Adds newly decoded text; returns what may be shown now, or the stop.
    pub fn push(&mut self, new_text: &str) -> StopCheck {
        // A stop string may start up to (longest − 1) bytes before the new text.
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut from = self
            .text
            .len()
            .saturating_sub(longest.saturating_sub(1))
            .max(self.shown);
        self.text.push_str(new_text);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| (from + i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((at, stop)) = found {
            let text = self.text[self.shown..at].to_string();
            let stop = stop.clone();
            self.shown = self.text.len();
            return StopCheck::Stop { text, stop };
        }
        let hold = self.held_tail();
        let end = self.text.len() - hold;
        let out = self.text[self.shown..end].to_string();
        self.shown = end;
        StopCheck::Emit(out)
    }

    /// The text held back at the end (generation ended without a stop string).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.shown..].to_string();
        self.shown = self.text.len();
        out
    }

    /// Bytes at the end of the text that are a proper prefix of some stop string.
    fn held_tail(&self) -> usize {
        let unshown = &self.text[self.shown..];
        self.stops
            .iter()
            .map(|s| held_prefix(unshown, s))
            .max()
            .unwrap_or(0)
    }
}

/// Bytes at the end of `text` that are a proper prefix of `pattern` (the text a stream holds
/// back while `pattern` may still complete).
pub(crate) fn held_prefix(text: &str, pattern: &str) -> usize {
    (1..pattern.len())
        .rev()
        .find(|&k| pattern.is_char_boundary(k) && text.ends_with(&pattern[..k]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_and_argmax() {
        let mut s = Sampler::new(params(0.0)).unwrap();
        assert_eq!(
            s.sample(&[0.1, 3.0, 3.0, -1.0], &[]),
            1,
            "first of equal maxima"
        );
        assert_eq!(argmax(&[f32::NAN, -5.0, f32::NAN]), 1);
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut l = vec![2.0, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0, 99], 2.0);
        assert_eq!(
            l,
            vec![1.0, -4.0, 1.0],
            "once per distinct token, ids out of range ignored"
        );
        // With a strong penalty greedy moves off the repeated token.
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 3.0,
            ..params(0.0)
        })
        .unwrap();
        assert_eq!(s.sample(&[2.0, 1.0], &[0]), 1);
    }

    #[test]
    fn filters() {
        let logits = [4.0f32, 3.0, 2.0, 1.0, 0.0];
        let d = distribution(
            &logits,
            &SamplingParams {
                top_k: 2,
                ..params(1.0)
            },
        );
        assert_eq!(d.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        // p = softmax: .636, .234, .086, …; top_p .8 keeps two (.87 ≥ .8).
        let d = distribution(
            &logits,
            &SamplingParams {
                top_p: 0.8,
                ..params(1.0)
            },
        );
        assert_eq!(d.len(), 2);
        // min_p .1: keep p ≥ .0636 → three tokens.
        let d = distribution(
            &logits,
            &SamplingParams {
                min_p: 0.1,
                ..params(1.0)
            },
        );
        assert_eq!(d.len(), 3);
        // Low temperature sharpens.
        let hot = distribution(&logits, &params(2.0));
        let cold = distribution(&logits, &params(0.5));
        assert!(cold[0].1 > hot[0].1);
    }

    #[test]
    fn bad_settings_are_refused() {
        for p in [
            params(-1.0),
            SamplingParams {
                top_p: 0.0,
                ..params(1.0)
            },
            SamplingParams {
                min_p: 1.5,
                ..params(1.0)
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..params(1.0)
            },
        ] {
            assert!(Sampler::new(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        let logits = [1.0f32, 0.0, 2.0, -1.0];
        let p = SamplingParams {
            seed: 7,
            ..params(1.0)
        };
        let dist = distribution(&logits, &p);
        let mut s = Sampler::new(p).unwrap();
        let mut counts = [0usize; 4];
        let n = 20000;
        for _ in 0..n {
            counts[s.sample(&logits, &[]) as usize] += 1;
        }
        for (t, prob) in dist {
            let freq = counts[t as usize] as f32 / n as f32;
            // 20k draws: the standard error is below 0.0035; allow 4 of them.
            assert!((freq - prob).abs() < 0.014, "token {t}: {freq} vs {prob}");
        }
    }

    #[test]
    fn stop_string_split_across_tokens() {
        let mut s = StopStrings::new(["</end>".to_string()]);
        assert_eq!(s.push("Hello </"), StopCheck::Emit("Hello ".into()));
        assert_eq!(s.push("en"), StopCheck::Emit(String::new()));
        assert_eq!(
            s.push("d> tail"),
            StopCheck::Stop {
                text: String::new(),
                stop: "</end>".into()
            }
        );
        // A held prefix that turns out not to be a stop string is released.
        let mut s = StopStrings::new(["STOP".to_string()]);
        assert_eq!(s.push("ab ST"), StopCheck::Emit("ab ".into()));
        assert_eq!(s.push("AR"), StopCheck::Emit("STAR".into()));
        assert_eq!(s.push("x S"), StopCheck::Emit("x ".into()));
        assert_eq!(s.flush(), "S");
        // The earliest of several stop strings wins; multi-byte text is cut on char boundaries.
        let mut s = StopStrings::new(["é!".to_string(), "zz".to_string()]);
        assert_eq!(s.push("aé"), StopCheck::Emit("a".into()));
        assert_eq!(
            s.push("!zz"),
            StopCheck::Stop {
                text: String::new(),
                stop: "é!".into()
            }
        );
    }

    proptest! {
        #[test]
        fn distribution_invariants(
            logits in prop::collection::vec(-20f32..20.0, 1..64),
            temperature in 0.05f32..4.0,
            top_k in 0usize..10,
            top_p in 0.05f32..=1.0,
            min_p in 0f32..0.5,
        ) {
            let p = SamplingParams { temperature, top_k, top_p, min_p, ..Default::default() };
            let d = distribution(&logits, &p);
            prop_assert!(!d.is_empty());
            let sum: f32 = d.iter().map(|x| x.1).sum();
            prop_assert!((sum - 1.0).abs() < 1e-4, "sum {}", sum);
            if top_k > 0 { prop_assert!(d.len() <= top_k); }
            // Sorted by probability; the arg-max is always kept.
            prop_assert!(d.windows(2).all(|w| w[0].1 >= w[1].1));
            let scaled: Vec<f32> = logits.iter().map(|l| l / temperature).collect();
            prop_assert_eq!(d[0].0, argmax(&scaled));
            // What is kept is the top of the ranking: no dropped token beats a kept one.
            let min_kept = d.iter().map(|x| logits[x.0 as usize]).fold(f32::INFINITY, f32::min);
            for (i, &l) in logits.iter().enumerate() {
                if !d.iter().any(|x| x.0 == i as u32) {
                    prop_assert!(l <= min_kept);
                }
            }
        }

        #[test]
        fn same_seed_same_tokens(seed in any::<u64>(), logits in prop::collection::vec(-3f32..3.0, 2..32)) {
            let p = SamplingParams { seed, top_k: 5, top_p: 0.9, ..params(0.8) };
            let mut a = Sampler::new(p).unwrap();
            let mut b = Sampler::new(p).unwrap();
            let ta: Vec<u32> = (0..20).map(|_| a.sample(&logits, &[])).collect();
            let tb: Vec<u32> = (0..20).map(|_| b.sample(&logits, &[])).collect();
            prop_assert_eq!(ta, tb);
        }

        #[test]
        fn stop_strings_never_leak(chunks in prop::collection::vec("[ab]{0,3}", 0..12)) {
            let stop = "abba".to_string();
            let mut s = StopStrings::new([stop.clone()]);
            let mut shown = String::new();
            let full: String = chunks.concat();
            let mut stopped = false;
            for c in &chunks {
                match s.push(c) {
                    StopCheck::Emit(t) => shown.push_str(&t),
                    StopCheck::Stop { text, .. } => { shown.push_str(&text); stopped = true; break; }
                }
            }
            if !stopped { shown.push_str(&s.flush()); }
            match full.find(&stop) {
                Some(i) => { prop_assert!(stopped); prop_assert_eq!(&shown, &full[..i]); }
                None => { prop_assert!(!stopped); prop_assert_eq!(&shown, &full); }
            }
        }
    }
}
