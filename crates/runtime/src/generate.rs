//! The generation loop: prefill, then decode one token at a time with a sampler, streaming text
//! as it is produced, until an end token, a stop string or the token limit.
//!
//! It runs over any [`LogitsModel`]: the CPU reference here, the GPU runtime later.

use std::time::{Duration, Instant};

use crate::cpu::{CpuModel, ForwardError, KvCache};
use crate::sampler::{Sampler, SamplingParams, StopCheck, StopReason, StopStrings};
use crate::tokenizer::{TextStream, Tokenizer};
use crate::RuntimeError;

/// A model with its own state (KV cache) that turns new tokens into next-token logits.
pub trait LogitsModel {
    /// Appends `tokens` to the sequence and returns the logits after the last one.
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError>;
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
pub fn generate_after(
    model: &mut dyn LogitsModel,
    tokenizer: &Tokenizer,
    cached: &[u32],
    prompt: &[u32],
    options: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
) -> Result<Generation, RuntimeError> {
    let mut sampler = Sampler::new(options.sampling)?;
    let start = Instant::now();
    let mut logits = model.next_logits(prompt)?;
    let prefill = start.elapsed();
    let mut context = Vec::with_capacity(cached.len() + prompt.len());
    context.extend_from_slice(cached);
    context.extend_from_slice(prompt);
    let mut tokens = Vec::new();
    let mut text = String::new();
    let mut stream = TextStream::new();
    let mut stops = StopStrings::new(options.stop_strings.iter().cloned());
    let mut emit = |t: &str, text: &mut String| {
        if !t.is_empty() {
            on_text(t);
            text.push_str(t);
        }
    };
    let stop = loop {
        if tokens.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        let next = sampler.sample(&logits, &context);
        tokens.push(next);
        context.push(next);
        if options.stop_tokens.contains(&next) {
            break StopReason::Eos(next);
        }
        if let Some(piece) = stream.push(tokenizer, next)? {
            match stops.push(&piece) {
                StopCheck::Emit(t) => emit(&t, &mut text),
                StopCheck::Stop { text: t, stop } => {
                    emit(&t, &mut text);
                    break StopReason::StopString(stop);
                }
            }
        }
        if tokens.len() < options.max_tokens {
            logits = model.next_logits(&[next])?;
        }
    };
    if !matches!(stop, StopReason::StopString(_)) {
        // Bytes of an unfinished character, then text held for a possible stop string.
        let rest = stream.finish(tokenizer)?;
        match stops.push(&rest) {
            StopCheck::Emit(t) => emit(&format!("{t}{}", stops.flush()), &mut text),
            StopCheck::Stop { text: t, stop: s } => {
                emit(&t, &mut text);
                return finish(tokens, text, StopReason::StopString(s), start, prefill);
            }
        }
    }
    finish(tokens, text, stop, start, prefill)
}

fn finish(
    tokens: Vec<u32>,
    text: String,
    stop: StopReason,
    start: Instant,
    prefill: Duration,
) -> Result<Generation, RuntimeError> {
    Ok(Generation {
        tokens,
        text,
        stop,
        prefill,
        decode: start.elapsed().saturating_sub(prefill),
    })
}
