//! One reply: feed what the KV cache lacks, generate, and time it.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use hoist_runtime::generate::{generate_cancellable, Generation, LogitsModel};
use hoist_runtime::sampler::StopReason;
use hoist_runtime::RuntimeError;

use super::model::{Checkpoint, Session};
use super::Settings;

/// What one reply did, and when.
pub struct Turn {
    /// The generation.
    pub generation: Generation,
    /// Tokens of the whole prompt.
    pub prompt_tokens: usize,
    /// Prompt tokens run through the model (the others were already in the KV cache).
    pub fed: usize,
    /// When the turn began.
    pub started: Instant,
    /// When the first new token was chosen (and its text streamed, if it completed any).
    pub first_token: Instant,
    /// When the turn ended.
    pub finished: Instant,
    /// The reply stopped because the KV cache was full, before `--max-tokens`.
    pub context_full: bool,
}

impl Turn {
    /// Prompt tokens run per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.fed as f64 / self.generation.prefill.as_secs_f64().max(1e-9)
    }

    /// Why the reply ended, as a JSON value: `eos`, `stop_string`, `max_tokens`,
    /// `context_full` or `cancelled`.
    pub fn stop_label(&self) -> &'static str {
        match self.generation.stop {
            StopReason::Eos(_) => "eos",
            StopReason::StopString(_) => "stop_string",
            StopReason::MaxTokens if self.context_full => "context_full",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
        }
    }

    /// Why the reply ended, in words.
    pub fn stop_text(&self, ck: &Checkpoint) -> String {
        match &self.generation.stop {
            StopReason::Eos(id) => format!("end token {}", ck.token_text(*id)),
            StopReason::StopString(s) => format!("stop string {s:?}"),
            StopReason::MaxTokens if self.context_full => "context full".into(),
            StopReason::MaxTokens => "--max-tokens".into(),
            StopReason::Cancelled => "Ctrl-C".into(),
        }
    }

    /// One compact line of timings: load (when given), time to first token since `from`
    /// (`after` names that instant), prefill and decode rates, stop reason.
    pub fn summary(
        &self,
        ck: &Checkpoint,
        load_seconds: Option<f64>,
        from: Instant,
        after: &str,
    ) -> String {
        let g = &self.generation;
        let mut parts = Vec::new();
        if let Some(s) = load_seconds {
            parts.push(format!("load {s:.2} s"));
        }
        let ttft = self.first_token.saturating_duration_since(from);
        parts.push(format!("first token {:.3} s {after}", ttft.as_secs_f64()));
        let cached = self.prompt_tokens - self.fed;
        parts.push(format!(
            "prompt {}{} at {:.1} tok/s",
            tokens(self.prompt_tokens),
            match cached {
                0 => String::new(),
                n => format!(" ({n} cached)"),
            },
            self.prefill_tokens_per_s()
        ));
        parts.push(format!(
            "generated {} at {:.1} tok/s",
            tokens(g.tokens.len()),
            g.decode_tokens_per_s()
        ));
        parts.push(format!("stop: {}", self.stop_text(ck)));
        parts.join(", ")
    }
}

/// `1 token`, `2 tokens`.
fn tokens(n: usize) -> String {
    match n {
        1 => "1 token".into(),
        n => format!("{n} tokens"),
    }
}

/// Generates the reply to `ids` (the whole conversation, rendered) on `session`, feeding only
/// what its cache lacks; `on_text` receives the reply's text as it is produced, and `cancel`
/// (set by Ctrl-C) ends it early. The caller checks that `ids` leaves room in the cache; the
/// reply is cut to what room is left.
#[allow(clippy::too_many_arguments)]
pub fn run(
    session: &mut Session<'_>,
    ck: &Checkpoint,
    ids: &[u32],
    settings: &Settings,
    stop_tokens: &[u32],
    turn: u64,
    cancel: &AtomicBool,
    on_text: &mut dyn FnMut(&str),
) -> anyhow::Result<Turn> {
    let started = Instant::now();
    let room = session.capacity().saturating_sub(ids.len());
    let max_tokens = settings.max_tokens.min(room);
    anyhow::ensure!(
        max_tokens > 0,
        "the prompt needs {} positions; the context holds {}",
        ids.len() + 1,
        session.capacity()
    );
    // Only what the cache lacks is fed; the repetition penalty still covers the cached head.
    let cached = session.reuse(ids);
    let options = settings.generate_options(max_tokens, stop_tokens, turn);
    let mut timed = Timed {
        session,
        calls: 0,
        first_token: None,
    };
    let (head, new) = ids.split_at(cached);
    let generation = generate_cancellable(
        &mut timed,
        &ck.tokenizer,
        head,
        new,
        &options,
        cancel,
        on_text,
    )?;
    let finished = Instant::now();
    let context_full = generation.stop == StopReason::MaxTokens && max_tokens < settings.max_tokens;
    Ok(Turn {
        prompt_tokens: ids.len(),
        fed: ids.len() - cached,
        started,
        // One token and done: the only model call was the prompt's.
        first_token: timed.first_token.unwrap_or(finished),
        finished,
        context_full,
        generation,
    })
}

/// Notes when the first new token was chosen: the loop calls the model for the prompt, then
/// once per chosen token, right after choosing (and streaming) it.
struct Timed<'s, 'm> {
    session: &'s mut Session<'m>,
    calls: usize,
    first_token: Option<Instant>,
}

impl LogitsModel for Timed<'_, '_> {
    fn next_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, RuntimeError> {
        self.count_call();
        self.session.next_logits(tokens)
    }

    fn decode_greedy(
        &mut self,
        first: u32,
        max_feeds: usize,
        next: &mut dyn FnMut(u32) -> bool,
    ) -> Option<Result<usize, RuntimeError>> {
        // Called right after the first token is chosen, as `next_logits`'s second call is.
        self.count_call();
        self.session.decode_greedy(first, max_feeds, next)
    }
}

impl Timed<'_, '_> {
    /// Counts a model call; the second comes right after the first token was chosen.
    fn count_call(&mut self) {
        if self.calls == 1 {
            self.first_token = Some(Instant::now());
        }
        self.calls += 1;
    }
}

/// Text streamed to stdout, flushed piece by piece. A write error is kept for the caller and
/// ends the output; a closed pipe (`| head`) never gets here: `main` restores SIGPIPE's default,
/// which ends the process quietly at that write.
#[derive(Default)]
pub struct Stdout {
    /// The first write error.
    pub error: Option<std::io::Error>,
}

impl Stdout {
    /// Writes `text` and flushes.
    pub fn write(&mut self, text: &str) {
        if self.error.is_some() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            self.error = Some(e);
        }
    }

    /// The first write error, if any.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        match self.error.take() {
            Some(e) => Err(anyhow::Error::new(e).context("cannot write to stdout")),
            None => Ok(()),
        }
    }
}
