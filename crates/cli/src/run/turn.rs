//! One reply through the engine, the line that sums it up, and the stdout it streams to.

use std::io::Write;
use std::time::Instant;

use hoist_engine::{Checkpoint, Completion, Engine, EngineError, Request, Stats, Stop};

/// Runs `request` on `engine`, handing its text to `on_text` as it is produced.
pub fn run(
    engine: &Engine,
    request: Request,
    on_text: &mut dyn FnMut(&str),
) -> Result<Completion, EngineError> {
    engine.generate(request)?.complete(on_text)
}

/// Why the reply ended, in words.
pub fn stop_text(stop: &Stop, ck: &Checkpoint) -> String {
    match stop {
        Stop::Eos(id) => format!("end token {}", ck.token_text(*id)),
        Stop::StopString(s) => format!("stop string {s:?}"),
        Stop::ContextFull => "context full".into(),
        Stop::MaxTokens => "--max-tokens".into(),
        Stop::Cancelled => "Ctrl-C".into(),
    }
}

/// One compact line of timings: load (when given), time to first token since `from` (`after`
/// names that instant), prefill and decode rates, stop reason.
pub fn summary(
    stats: &Stats,
    ck: &Checkpoint,
    load_seconds: Option<f64>,
    from: Instant,
    after: &str,
) -> String {
    let mut parts = Vec::new();
    if let Some(s) = load_seconds {
        parts.push(format!("load {s:.2} s"));
    }
    let ttft = stats.first_token.saturating_duration_since(from);
    parts.push(format!("first token {:.3} s {after}", ttft.as_secs_f64()));
    parts.push(format!(
        "prompt {}{} at {:.1} tok/s",
        tokens(stats.prompt_tokens),
        match stats.cached_tokens {
            0 => String::new(),
            n => format!(" ({n} cached)"),
        },
        stats.prefill_tokens_per_s()
    ));
    parts.push(format!(
        "generated {} at {:.1} tok/s",
        tokens(stats.generated_tokens),
        stats.decode_tokens_per_s
    ));
    parts.push(format!("stop: {}", stop_text(&stats.stop, ck)));
    parts.join(", ")
}

/// `1 token`, `2 tokens`.
fn tokens(n: usize) -> String {
    match n {
        1 => "1 token".into(),
        n => format!("{n} tokens"),
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
