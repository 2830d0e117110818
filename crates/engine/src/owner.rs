//! The owner thread: it loads the model, keeps it and its sessions, and serves requests one at
//! a time in arrival order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_runtime::constrain::{Constraint, TokenTable};
use hoist_runtime::generate::{generate_constrained, GenerateOptions};
use hoist_runtime::gpu::LoadStats;
use hoist_runtime::placement::Placement;
use hoist_runtime::sampler::StopReason;

use crate::model::{Device, Model, Weights};
use crate::pool::Pool;
use crate::request::{Completion, Event, Request, Stats, Stop};
use crate::{Checkpoint, EngineError};

/// A request with its prompt's token ids, on its way to the owner thread.
pub(crate) struct Job {
    /// The whole prompt; it leaves room for at least one new token in the context.
    pub ids: Vec<u32>,
    /// The request (its input already turned into `ids`).
    pub request: Request,
    /// Set to stop the request.
    pub cancel: Arc<AtomicBool>,
    /// Where its events go.
    pub events: Sender<Event>,
    /// When it was submitted.
    pub submitted: Instant,
}

/// What the owner thread needs to start.
pub(crate) struct Start {
    pub weights: Weights,
    pub device: Device,
    pub placement: Placement,
    pub progress: Option<Arc<std::sync::atomic::AtomicU64>>,
    pub cache: hoist_runtime::gpu::CachePolicy,
    pub context: usize,
    pub pool_size: usize,
    pub checkpoint: Arc<Checkpoint>,
    /// The model's end tokens.
    pub stop_tokens: Vec<u32>,
}

/// What a successful load reports back: its seconds and, on a GPU, its details.
pub(crate) type Loaded = (f64, Option<LoadStats>);

/// The owner thread's body: loads the model, says how that went on `ready`, then serves `jobs`
/// until every sender is gone. The model and its sessions are made, used and dropped here.
pub(crate) fn run(
    start: Start,
    ready: SyncSender<Result<Loaded, EngineError>>,
    jobs: Receiver<Job>,
) {
    let Start {
        weights,
        device,
        placement,
        progress,
        cache,
        context,
        pool_size,
        checkpoint,
        stop_tokens,
    } = start;
    let loaded = Model::load(weights, device, placement, (progress, cache), context).map(
        |(model, seconds)| {
            let stats = model.gpu_stats().cloned();
            (model, (seconds, stats))
        },
    );
    let (model, report) = match loaded {
        Ok(m) => m,
        Err(e) => {
            // The caller is waiting in `Engine::start`; nothing more to do if it is not.
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut pool = match Pool::new(&model, context, pool_size) {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(report)).is_err() {
        return;
    }
    // The vocabulary's bytes for constrained requests: built on the first one (decoding every
    // token takes a while on large vocabularies), then shared.
    let mut tokens: Option<Arc<TokenTable>> = None;
    for job in jobs {
        let events = job.events.clone();
        let constraint = job.request.constraint.clone().map(|grammar| {
            let table = tokens
                .get_or_insert_with(|| Arc::new(TokenTable::new(&checkpoint.tokenizer)))
                .clone();
            Constraint::new(grammar, table)
        });
        let event = match serve(&mut pool, &checkpoint, &stop_tokens, constraint, job) {
            Ok(c) => Event::Done(c),
            Err(e) => Event::Failed(e),
        };
        // A receiver gone (the stream dropped) wants nothing more.
        let _ = events.send(event);
    }
}

/// Runs one request on the pool's best session.
fn serve(
    pool: &mut Pool<'_>,
    ck: &Checkpoint,
    model_stop_tokens: &[u32],
    constraint: Option<Constraint>,
    job: Job,
) -> Result<Completion, EngineError> {
    let Job {
        ids,
        request,
        cancel,
        events,
        submitted,
    } = job;
    let started = Instant::now();
    if cancel.load(Ordering::Relaxed) {
        // Cancelled while queued: nothing ran.
        return Ok(Completion {
            text: String::new(),
            tokens: Vec::new(),
            stats: Stats {
                prompt_tokens: ids.len(),
                cached_tokens: 0,
                generated_tokens: 0,
                prefill: Duration::ZERO,
                decode: Duration::ZERO,
                decode_tokens_per_s: 0.0,
                submitted,
                started,
                first_token: started,
                finished: started,
                stop: Stop::Cancelled,
            },
        });
    }
    let session = pool.session_for(&ids, request.session_key.as_deref())?;
    let capacity = session.capacity();
    let room = capacity.saturating_sub(ids.len());
    if room == 0 {
        return Err(EngineError::PromptTooLong {
            prompt_tokens: ids.len(),
            context: capacity,
        });
    }
    let max_tokens = request.max_tokens.min(room);
    // Only what the cache lacks is fed; the repetition penalty still covers the cached head.
    let cached = session.reuse(&ids);
    let _ = events.send(Event::Started {
        prompt_tokens: ids.len(),
        cached_tokens: cached,
    });
    let mut stop_tokens = model_stop_tokens.to_vec();
    stop_tokens.extend(
        request
            .stop_tokens
            .iter()
            .filter(|t| !model_stop_tokens.contains(t)),
    );
    let options = GenerateOptions {
        max_tokens,
        sampling: request.sampling,
        stop_strings: request.stop_strings,
        stop_tokens,
    };
    let (head, new) = ids.split_at(cached);
    let g = generate_constrained(
        session,
        &ck.tokenizer,
        head,
        new,
        &options,
        constraint.as_ref(),
        &cancel,
        &mut |t| {
            // Nobody listens any more: stop at the next token.
            if events.send(Event::Text(t.to_string())).is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
        },
    )
    .map_err(|source| EngineError::Generate {
        path: ck.path.clone(),
        source: Box::new(source),
    })?;
    let finished = Instant::now();
    let decode_tokens_per_s = g.decode_tokens_per_s();
    let stop = match g.stop {
        StopReason::Eos(id) => Stop::Eos(id),
        StopReason::StopString(s) => Stop::StopString(s),
        StopReason::MaxTokens if max_tokens < request.max_tokens => Stop::ContextFull,
        StopReason::MaxTokens => Stop::MaxTokens,
        StopReason::Cancelled => Stop::Cancelled,
    };
    Ok(Completion {
        stats: Stats {
            prompt_tokens: ids.len(),
            cached_tokens: cached,
            generated_tokens: g.tokens.len(),
            prefill: g.prefill,
            decode: g.decode,
            decode_tokens_per_s,
            submitted,
            started,
            first_token: g.first_token.unwrap_or(finished),
            finished,
            stop,
        },
        text: g.text,
        tokens: g.tokens,
    })
}
