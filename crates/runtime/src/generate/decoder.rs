//! One sequence's generation as a state machine: given the logits after the last token fed, a
//! [`Decoder`] chooses the next token (sampler, repetition context, constraint), streams its
//! text, and says whether to feed it or why the sequence ends. The model's forward passes stay
//! with the caller, so that one loop ([`super::generate_constrained`]) or a scheduler stepping
//! many sequences through one batched pass drive the same decisions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::constrain::{Constraint, Matcher};
use crate::sampler::{Sampler, StopCheck, StopReason, StopStrings};
use crate::tokenizer::{TextStream, Tokenizer, TokenizerError};
use crate::RuntimeError;

use super::GenerateOptions;

/// What a [`Decoder`] says after choosing a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Feed this token to the model and step again with the logits after it.
    Feed(u32),
    /// The sequence ended (the chosen token, if any, is kept but not fed): call
    /// [`Decoder::finish`].
    Done(StopReason),
}

/// Where a step's text goes and what can stop it: the request's side of a [`Decoder`].
pub struct Sink<'a> {
    /// Turns tokens into text.
    pub tokenizer: &'a Tokenizer,
    /// Once set, the sequence ends at its next token ([`StopReason::Cancelled`]).
    pub cancel: &'a AtomicBool,
    /// Receives text as soon as it is final.
    pub on_text: &'a mut dyn FnMut(&str),
}

/// One sequence's choices between forward passes.
pub struct Decoder {
    sampler: Sampler,
    matcher: Option<Matcher>,
    options: GenerateOptions,
    /// The cached tokens, the prompt and every chosen token: what the repetition penalty sees.
    context: Vec<u32>,
    tokens: Vec<u32>,
    text: String,
    stream: TextStream,
    stops: StopStrings,
    first_token: Option<Instant>,
}

impl Decoder {
    /// A decoder for a sequence whose model holds `cached` then `prompt` (the repetition
    /// penalty covers both), choosing under `options` and, if given, `constraint`.
    ///
    /// # Errors
    /// Sampling settings out of range.
    pub fn new(
        options: GenerateOptions,
        constraint: Option<&Constraint>,
        cached: &[u32],
        prompt: &[u32],
    ) -> Result<Decoder, RuntimeError> {
        let sampler = Sampler::new(options.sampling)?;
        let mut context = Vec::with_capacity(cached.len() + prompt.len());
        context.extend_from_slice(cached);
        context.extend_from_slice(prompt);
        Ok(Decoder {
            sampler,
            matcher: constraint.map(Constraint::matcher),
            stops: StopStrings::new(options.stop_strings.iter().cloned()),
            options,
            context,
            tokens: Vec::new(),
            text: String::new(),
            stream: TextStream::new(),
            first_token: None,
        })
    }

    /// Chooses the token after `logits` (the model's, after the last token fed; masked in place
    /// under a constraint), streams its text into `sink` and says what comes next.
    ///
    /// # Errors
    /// A token the tokenizer cannot decode, or a constraint the vocabulary cannot continue.
    pub fn step(&mut self, logits: &mut [f32], sink: &mut Sink<'_>) -> Result<Step, RuntimeError> {
        if self.tokens.len() >= self.options.max_tokens {
            return Ok(Step::Done(StopReason::MaxTokens));
        }
        let Some(next) = self.choose(logits)? else {
            return Ok(Step::Done(StopReason::MaxTokens));
        };
        Ok(match self.accept(next, sink)? {
            Some(stop) => Step::Done(stop),
            None => Step::Feed(next),
        })
    }

    /// Takes a chosen token (by [`Decoder::step`], or by the model's own greedy path): streams
    /// its text and returns why generation ends with it, or `None` when it is to be fed.
    pub(super) fn accept(
        &mut self,
        next: u32,
        sink: &mut Sink<'_>,
    ) -> Result<Option<StopReason>, RuntimeError> {
        let stop = self.accept_inner(next, sink);
        self.first_token.get_or_insert_with(Instant::now);
        stop
    }

    fn accept_inner(
        &mut self,
        next: u32,
        sink: &mut Sink<'_>,
    ) -> Result<Option<StopReason>, RuntimeError> {
        self.tokens.push(next);
        self.context.push(next);
        if self.options.stop_tokens.contains(&next) {
            return Ok(Some(StopReason::Eos(next)));
        }
        if let Some(piece) = self.stream.push(sink.tokenizer, next)? {
            match self.stops.push(&piece) {
                StopCheck::Emit(t) => self.emit(&t, sink),
                StopCheck::Stop { text: t, stop } => {
                    self.emit(&t, sink);
                    return Ok(Some(StopReason::StopString(stop)));
                }
            }
        }
        if self.tokens.len() >= self.options.max_tokens {
            return Ok(Some(StopReason::MaxTokens));
        }
        Ok(sink
            .cancel
            .load(Ordering::Relaxed)
            .then_some(StopReason::Cancelled))
    }

    /// After the sequence ended for `stop`: shows the text still held (bytes of an unfinished
    /// character, text that could have begun a stop string) unless a stop string ended it, and
    /// returns the final reason (a stop string completed by that text).
    ///
    /// # Errors
    /// Held bytes the tokenizer cannot decode.
    pub fn finish(
        &mut self,
        stop: StopReason,
        sink: &mut Sink<'_>,
    ) -> Result<StopReason, RuntimeError> {
        if matches!(stop, StopReason::StopString(_)) {
            return Ok(stop);
        }
        let rest = self.stream.finish(sink.tokenizer)?;
        match self.stops.push(&rest) {
            StopCheck::Emit(t) => {
                let t = format!("{t}{}", self.stops.flush());
                self.emit(&t, sink);
                Ok(stop)
            }
            StopCheck::Stop { text: t, stop: s } => {
                self.emit(&t, sink);
                Ok(StopReason::StopString(s))
            }
        }
    }

    /// The tokens chosen so far (an end token that stopped the sequence included).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens the sequence may still choose.
    pub fn remaining(&self) -> usize {
        self.options.max_tokens.saturating_sub(self.tokens.len())
    }

    /// Whether the plain arg-max chooses, with nothing the host must see: the model's own
    /// greedy path ([`super::LogitsModel::decode_greedy`]) gives the same tokens.
    pub fn picks_argmax(&self) -> bool {
        self.matcher.is_none() && self.sampler.params().picks_argmax()
    }

    /// The chosen tokens, their text as streamed (stop string and end token excluded) and when
    /// the first was chosen.
    pub fn into_parts(self) -> (Vec<u32>, String, Option<Instant>) {
        (self.tokens, self.text, self.first_token)
    }

    /// The next token: the sampler's choice among what the constraint (if any) allows, the
    /// matcher then moved past it. `None`: the constraint allows nothing (the document is
    /// complete and there is no end token).
    fn choose(&mut self, logits: &mut [f32]) -> Result<Option<u32>, RuntimeError> {
        let Some(m) = self.matcher.as_mut() else {
            return Ok(Some(self.sampler.sample(logits, &self.context)));
        };
        let stop_tokens = &self.options.stop_tokens;
        if !m.apply(logits, stop_tokens) {
            if m.is_complete() {
                return Ok(None);
            }
            return Err(dead_end("no token of the vocabulary continues the JSON"));
        }
        let next = self.sampler.sample(logits, &self.context);
        if !stop_tokens.contains(&next) && !m.advance(next) {
            return Err(dead_end("the sampler chose a token the constraint refused"));
        }
        Ok(Some(next))
    }

    /// Shows `t` (if any) and keeps it.
    fn emit(&mut self, t: &str, sink: &mut Sink<'_>) {
        if !t.is_empty() {
            (sink.on_text)(t);
            self.text.push_str(t);
        }
    }
}

/// The constraint cannot go on: the tokenizer's vocabulary lacks what it needs.
fn dead_end(message: &str) -> RuntimeError {
    RuntimeError::Tokenizer(TokenizerError::Library {
        context: "constrained decoding".to_string(),
        message: message.to_string(),
    })
}
