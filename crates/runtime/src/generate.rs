//! The generation loop: prefill, then decode one token at a time with a sampler, streaming text
//! as it is produced, until an end token, a stop string or the token limit.
//!
//! It runs over any [`LogitsModel`]: the CPU reference here, the GPU runtime later.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::constrain::Constraint;
use crate::cpu::{CpuModel, ForwardError, KvCache, Sequence};
use crate::sampler::{SamplingParams, StopReason};
use crate::tokenizer::Tokenizer;
use crate::RuntimeError;

mod decoder;

pub use decoder::{Decoder, Sink, Step};

/// A model with its own state (KV cache) that turns new tokens into next-token logits.
pub trait LogitsModel {
    /// Appends `tokens` to the sequence and returns the logits after the last one.
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError>;

    /// Greedy decoding inside the model, for models that choose faster than the host can
    /// (the GPU runtime: [`crate::gpu::GpuSession::decode_greedy`]): feeds `first`, then
    /// each arg-max ([`crate::sampler::argmax`]) of the logits after it, handing every chosen
    /// token to `next`, which returns whether to go on (a refused token is not fed); at most
    /// `max_feeds` tokens are fed, `first` included. Returns the tokens fed, or `None`
    /// (having fed nothing) when the model has no such path: the caller then feeds tokens one
    /// by one through [`LogitsModel::next_logits`], to the same result.
    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        let _ = (first, max_feeds, next);
        None
    }
}

/// A [`CpuModel`] with a KV cache, as a [`LogitsModel`].
#[derive(Debug)]
pub struct CpuSession<'a> {
    model: &'a CpuModel,
    cache: KvCache,
}

impl<'a> CpuSession<'a> {
    /// A session holding up to `context` positions, its KV cache reserved up front.
    ///
    /// # Errors
    /// [`ForwardError::CacheTooLarge`] when a cache of `context` positions cannot be allocated.
    pub fn new(model: &'a CpuModel, context: usize) -> Result<CpuSession<'a>, ForwardError> {
        Ok(CpuSession {
            model,
            cache: model.new_cache(context)?,
        })
    }

    /// Positions the KV cache holds.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Forgets the sequence (the cache keeps its memory).
    pub fn clear(&mut self) {
        self.cache.clear();
    }
}

impl<'a> CpuSession<'a> {
    /// One forward pass for several sessions of one model ([`CpuModel::forward_batch`]):
    /// session `i` is fed `tokens[i]`; returns each one's logits after its last token (none
    /// for a session fed nothing).
    ///
    /// # Panics
    /// If the sessions are not all of one model, or `tokens` is not one slice per session.
    pub fn next_logits_batch(
        sessions: &mut [&mut CpuSession<'a>],
        tokens: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, RuntimeError> {
        assert_eq!(sessions.len(), tokens.len(), "one token slice per session");
        let Some(model) = sessions.first().map(|s| s.model) else {
            return Ok(Vec::new());
        };
        assert!(
            sessions.iter().all(|s| std::ptr::eq(s.model, model)),
            "a batch runs on one model"
        );
        let mut seqs: Vec<Sequence<'_>> = sessions
            .iter_mut()
            .zip(tokens)
            .map(|(s, &tokens)| Sequence {
                tokens,
                cache: &mut s.cache,
            })
            .collect();
        let logits = model.forward_batch(&mut seqs)?;
        let vocab = model.config.vocab_size;
        let mut end = 0;
        Ok(tokens
            .iter()
            .map(|t| {
                end += t.len() * vocab;
                match t.is_empty() {
                    true => Vec::new(),
                    false => logits[end - vocab..end].to_vec(),
                }
            })
            .collect())
    }
}

impl LogitsModel for CpuSession<'_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        let logits = self.model.forward(tokens, &mut self.cache)?;
        let vocab = self.model.config.vocab_size;
        Ok(logits[logits.len().saturating_sub(vocab)..].to_vec())
    }
}

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerateOptions {
    /// Most new tokens.
    pub max_tokens: usize,
    /// How to choose them.
    pub sampling: SamplingParams,
    /// Text that ends generation (not included in the output).
    pub stop_strings: Vec<String>,
    /// Tokens that end generation (the tokenizer's EOS tokens, usually).
    pub stop_tokens: Vec<u32>,
}

/// What was generated.
#[derive(Clone, Debug)]
pub struct Generation {
    /// New tokens (an end token that stopped generation included).
    pub tokens: Vec<u32>,
    /// Their text, as streamed (stop string and end token excluded).
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
    /// Time of the prompt's forward pass.
    pub prefill: Duration,
    /// Time of everything after it.
    pub decode: Duration,
    /// When the first new token was chosen (and its text, if it completed any, handed to
    /// `on_text`): the end of the time to first token. `None` when no token was asked for.
    pub first_token: Option<Instant>,
}

impl Generation {
    /// Decoded tokens per second (tokens after the first, over the decode time).
    pub fn decode_tokens_per_s(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) as f64;
        n / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Generates from `prompt` (token ids, special tokens included) on a model whose sequence is
/// empty; `on_text` receives text as soon as it is final.
pub fn generate(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RuntimeError> {
    generate_after(model, tokenizer, &[], prompt, options, on_text)
}

/// Generates from `prompt` on a model whose sequence already holds `cached` (the tokens in its
/// KV cache, in order): only `prompt` is fed (it must not be empty), but the repetition
/// penalty covers `cached` too, so the result is that of [`generate`] over `cached` followed
/// by `prompt` on an empty model.
///
/// Every chosen token but the last is fed to the model. When the choice is the plain arg-max
/// (temperature 0, no repetition penalty, no constraint) and the model can decode greedily
/// itself ([`LogitsModel::decode_greedy`]), it does, with the same result.
pub fn generate_after(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    cached: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RuntimeError> {
    let never = AtomicBool::new(false);
    generate_cancellable(model, tokenizer, cached, prompt, options, &never, on_text)
}

/// [`generate_after`] that another thread can stop (a Ctrl-C handler): once `cancel` is set,
/// generation ends with [`StopReason::Cancelled`], keeping what it produced. It is checked as
/// each token is chosen, so it stops within one decode step; a prompt being fed is fed first.
pub fn generate_cancellable(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    cached: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RuntimeError> {
    generate_constrained(
        model, tokenizer, cached, prompt, options, None, cancel, on_text,
    )
}

/// [`generate_cancellable`] whose output must satisfy `constraint` (JSON, or JSON matching a
/// schema: [`crate::constrain`]): each step's logits are masked on the host so that only
/// tokens keeping the text a valid prefix can be chosen, and `options.stop_tokens` only once
/// it is complete. With a constraint, a model's own greedy path
/// ([`LogitsModel::decode_greedy`]) is not taken, since it never shows the host the logits.
///
/// Generation also ends when the constraint allows no token: the document is complete and
/// there is no end token to choose ([`StopReason::MaxTokens`]). A document the vocabulary
/// cannot continue is an error. `None` is [`generate_cancellable`].
///
/// (A separate function rather than a field of [`GenerateOptions`]: callers build that struct
/// with literals, which a new field would break.)
#[allow(clippy::too_many_arguments)]
pub fn generate_constrained(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    cached: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    constraint: Option<&Constraint>,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RuntimeError> {
    let mut decoder = Decoder::new(options.clone(), constraint, cached, prompt)?;
    let mut sink = Sink {
        tokenizer,
        cancel,
        on_text,
    };
    let start = Instant::now();
    let mut logits = model.next_logits(prompt)?;
    let prefill = start.elapsed();
    let stop = 'decode: {
        let mut next = match decoder.step(&mut logits, &mut sink)? {
            Step::Feed(t) => t,
            Step::Done(stop) => break 'decode stop,
        };
        if let Some(stop) = on_model(model, &mut decoder, next, &mut sink)? {
            break 'decode stop;
        }
        loop {
            logits = model.next_logits(&[next])?;
            next = match decoder.step(&mut logits, &mut sink)? {
                Step::Feed(t) => t,
                Step::Done(stop) => break 'decode stop,
            };
        }
    };
    let stop = decoder.finish(stop, &mut sink)?;
    let (tokens, text, first_token) = decoder.into_parts();
    Ok(Generation {
        tokens,
        text,
        stop,
        prefill,
        decode: start.elapsed().saturating_sub(prefill),
        first_token,
    })
}

/// Decodes on the model itself after `first` (chosen, to be fed) when the decoder's choice is
/// the plain arg-max and the model can: `Some` with the reason it stopped, or `None` when the
/// host loop is to run instead (nothing was fed).
fn on_model(
    model: &mut dyn LogitsModel,
    decoder: &mut Decoder,
    first: u32,
    sink: &mut Sink<'_>,
) -> Result<Option<StopReason>, RuntimeError> {
    if !decoder.picks_argmax() {
        return Ok(None);
    }
    let (mut stop, mut failed) = (None, None);
    let max_feeds = decoder.remaining();
    let mut next = |t: u32| match decoder.accept(t, sink) {
        Ok(None) => true,
        Ok(Some(s)) => {
            stop = Some(s);
            false
        }
        Err(e) => {
            failed = Some(e);
            false
        }
    };
    let Some(decoded) = model.decode_greedy(first, max_feeds, &mut next) else {
        return Ok(None);
    };
    decoded?;
    if let Some(e) = failed {
        return Err(e);
    }
    // The model stops on its own only after `max_feeds` tokens, where `accept` says MaxTokens.
    Ok(Some(stop.unwrap_or(StopReason::MaxTokens)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::constrain::{JsonGrammar, TokenTable};

    /// Logits that favour the same few tokens whatever came before, and a greedy path that
    /// must not be taken under a constraint.
    struct Stubborn {
        favourite: Vec<f32>,
        greedy_calls: usize,
    }

    impl LogitsModel for Stubborn {
        fn next_logits(&mut self, _: &[u32]) -> Result<Vec<f32>, RuntimeError> {
            Ok(self.favourite.clone())
        }

        fn decode_greedy(
            &mut self,
            _: u32,
            _: usize,
            _: &mut dyn FnMut(u32) -> bool,
        ) -> Option<Result<usize, RuntimeError>> {
            self.greedy_calls += 1;
            None
        }
    }

    #[test]
    fn a_constraint_leaves_the_greedy_path_and_yields_json() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer");
        let tok = Tokenizer::from_hf_dir(&dir).unwrap();
        let n = tok.vocab_size();
        // Letters most, then a quote and a brace: unconstrained, greedy says "a" forever.
        let mut favourite = vec![0.0f32; n];
        let id = |s: &str| tok.token_to_id(s).unwrap() as usize;
        favourite[id("a")] = 5.0;
        favourite[id("\"")] = 4.0;
        favourite[id("{")] = 3.0;
        favourite[id("}")] = 2.0;
        let eos = tok.eos().to_vec();
        for &e in &eos {
            favourite[e as usize] = 1.0;
        }
        let options = GenerateOptions {
            max_tokens: 20,
            stop_tokens: eos,
            ..Default::default()
        };
        let mut model = Stubborn {
            favourite,
            greedy_calls: 0,
        };
        let never = AtomicBool::new(false);
        let free = generate_cancellable(&mut model, &tok, &[], &[1], &options, &never, &mut |_| {})
            .unwrap();
        assert_eq!(model.greedy_calls, 1, "greedy asks the model's own path");
        assert!(serde_json::from_str::<serde_json::Value>(&free.text).is_err());

        let table = Arc::new(TokenTable::new(&tok));
        // Cut by max_tokens: a string that the model never closes (its favourite is "a").
        let any = format!("\"{}", "a".repeat(19));
        let object = format!("{{\"{}", "a".repeat(18));
        for (grammar, expect) in [
            (JsonGrammar::any(), any.as_str()),
            (
                JsonGrammar::from_schema(&serde_json::json!({"type": "object"})).unwrap(),
                object.as_str(),
            ),
            (
                JsonGrammar::from_schema(&serde_json::json!({"enum": ["a", "b"]})).unwrap(),
                "\"a\"",
            ),
        ] {
            let c = Constraint::new(Arc::new(grammar), table.clone());
            model.greedy_calls = 0;
            let g = generate_constrained(
                &mut model,
                &tok,
                &[],
                &[1],
                &options,
                Some(&c),
                &never,
                &mut |_| {},
            )
            .unwrap();
            assert_eq!(model.greedy_calls, 0);
            assert_eq!(g.text, expect);
            if expect == "\"a\"" {
                // Complete: the end token, only then.
                assert!(matches!(g.stop, StopReason::Eos(_)), "{:?}", g.stop);
            } else {
                assert_eq!(g.stop, StopReason::MaxTokens);
            }
        }
    }
}
