//! What a caller asks of the engine, and the stream of events it gets back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_runtime::chat::{Message, ToolSchema};
use hoist_runtime::constrain::JsonGrammar;
use hoist_runtime::sampler::SamplingParams;

use crate::EngineError;

/// What to continue.
#[derive(Clone, Debug)]
pub enum Input {
    /// A conversation, rendered with the checkpoint's chat template and a generation prompt
    /// (in raw mode: its texts joined).
    Messages(Vec<Message>),
    /// Text tokenized as is, with the special tokens (BOS) the tokenizer adds itself.
    Text(String),
    /// Token ids, special tokens included, fed as given.
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct Request {
    /// What to continue.
    pub input: Input,
    /// How to choose tokens; the seed is in here.
    pub sampling: SamplingParams,
    /// Most new tokens (fewer when the context fills first: [`Stop::ContextFull`]).
    pub max_tokens: usize,
    /// Text that ends the reply (not included in it).
    pub stop_strings: Vec<String>,
    /// Tokens that end the reply, besides the model's own end tokens.
    pub stop_tokens: Vec<u32>,
    /// A conversation id: its follow-ups prefer the session that served it, whose KV cache
    /// likely holds their start. Without one, any session whose cache holds a prefix is used.
    pub session_key: Option<String>,
    /// A flag that stops the request when set (a Ctrl-C handler's); the stream's
    /// [`GenerationStream::cancel`] sets it too. `None`: a fresh one.
    pub cancel: Option<Arc<AtomicBool>>,
    /// What the reply must be: any JSON value ([`JsonGrammar::any`]) or JSON matching a schema
    /// ([`JsonGrammar::from_schema`]). Tokens that would break it are masked at every step (on
    /// the host: slower than unconstrained greedy decoding on a GPU); the end tokens only come
    /// once it is complete. `None`: free text.
    pub constraint: Option<Arc<JsonGrammar>>,
    /// Function schemas shown to the model through the chat template's `tools` variable
    /// ([`Input::Messages`] only; a template that never reads `tools` does not show them, so
    /// callers check [`hoist_runtime::chat::ChatTemplate::supports_tools`] first).
    pub tools: Vec<ToolSchema>,
    /// Text the reply begins with, written for the model (a forced tool call's opening tag):
    /// appended to the prompt's text before it is tokenized ([`Input::Messages`] after the
    /// chat template's assistant header, [`Input::Text`] after the text), and not part of the
    /// generated text. A non-empty prefix with [`Input::Tokens`] is refused.
    pub reply_prefix: String,
}

impl Request {
    /// A request for `input` with `sampling` and at most `max_tokens` new tokens, and nothing
    /// else set.
    pub fn new(input: Input, sampling: SamplingParams, max_tokens: usize) -> Request {
        Request {
            input,
            sampling,
            max_tokens,
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
            session_key: None,
            cancel: None,
            constraint: None,
            tools: Vec::new(),
            reply_prefix: String::new(),
        }
    }
}

/// A seed from the clock and the process id, for requests that name none.
pub fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Why a reply ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An end token (kept as the reply's last token; its text is not shown).
    Eos(u32),
    /// A stop string (not shown).
    StopString(String),
    /// The request's `max_tokens`.
    MaxTokens,
    /// The KV cache filled before `max_tokens`.
    ContextFull,
    /// The request was cancelled.
    Cancelled,
}

impl Stop {
    /// The reason as one word: `eos`, `stop_string`, `max_tokens`, `context_full` or
    /// `cancelled`.
    pub fn label(&self) -> &'static str {
        match self {
            Stop::Eos(_) => "eos",
            Stop::StopString(_) => "stop_string",
            Stop::MaxTokens => "max_tokens",
            Stop::ContextFull => "context_full",
            Stop::Cancelled => "cancelled",
        }
    }
}

/// What a finished request took.
#[derive(Clone, Debug)]
pub struct Stats {
    /// Tokens of the whole prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens already in the KV cache (not run again).
    pub cached_tokens: usize,
    /// New tokens (an end token that stopped the reply included).
    pub generated_tokens: usize,
    /// Time of the prompt's forward pass.
    pub prefill: Duration,
    /// Time of everything after it.
    pub decode: Duration,
    /// Decoded tokens per second (tokens after the first, over the decode time).
    pub decode_tokens_per_s: f64,
    /// When [`crate::Engine::generate`] was called.
    pub submitted: Instant,
    /// When the owner thread began the request (after those queued before it).
    pub started: Instant,
    /// When the first new token was chosen (and its text sent); `finished` if none was.
    pub first_token: Instant,
    /// When the reply ended.
    pub finished: Instant,
    /// Why it ended.
    pub stop: Stop,
}

impl Stats {
    /// Prompt tokens run per second (the cached ones are not run).
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_tokens) as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Time from the request to its first token, queueing included.
    pub fn time_to_first_token(&self) -> Duration {
        self.first_token.saturating_duration_since(self.submitted)
    }
}

/// A finished reply.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Its text, as streamed (stop string and end token excluded).
    pub text: String,
    /// Its tokens (an end token that stopped it included).
    pub tokens: Vec<u32>,
    /// What it took and why it ended.
    pub stats: Stats,
}

/// What a [`GenerationStream`] yields, in order: [`Event::Started`] (unless the request fails
/// or is cancelled before it starts), any number of [`Event::Text`], then one [`Event::Done`]
/// or [`Event::Failed`].
#[derive(Debug)]
pub enum Event {
    /// The owner thread began the request.
    Started {
        /// Tokens of the whole prompt.
        prompt_tokens: usize,
        /// Of those, tokens reused from a KV cache.
        cached_tokens: usize,
    },
    /// Text of the reply, as soon as it is final.
    Text(String),
    /// The reply, whole.
    Done(Completion),
    /// The request failed; what it streamed is all there is.
    Failed(EngineError),
}

/// The events of one request ([`crate::Engine::generate`]). Iterating blocks until the next
/// event; the iterator ends after the last. Dropping the stream cancels the request.
#[derive(Debug)]
pub struct GenerationStream {
    pub(crate) events: Receiver<Event>,
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) finished: bool,
    /// The checkpoint path, for the error when the owner thread is gone.
    pub(crate) path: std::path::PathBuf,
}

impl GenerationStream {
    /// Stops the request: a queued one is skipped, a running one ends within one decode step
    /// with [`Stop::Cancelled`], keeping what it produced.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The flag that cancels this request, for another thread (a signal handler) to set.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Runs the request to its end, handing each piece of text to `on_text`.
    pub fn complete(mut self, on_text: &mut dyn FnMut(&str)) -> Result<Completion, EngineError> {
        for event in self.by_ref() {
            match event {
                Event::Started { .. } => {}
                Event::Text(t) => on_text(&t),
                Event::Done(c) => return Ok(c),
                Event::Failed(e) => return Err(e),
            }
        }
        Err(EngineError::Stopped {
            path: self.path.clone(),
        })
    }
}

impl Iterator for GenerationStream {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        let event = match self.events.recv() {
            Ok(e) => e,
            // The owner thread dropped the request without a last event: it is gone.
            Err(_) => Event::Failed(EngineError::Stopped {
                path: self.path.clone(),
            }),
        };
        self.finished = matches!(event, Event::Done(_) | Event::Failed(_));
        Some(event)
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel();
        }
    }
}
