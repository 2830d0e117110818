//! The owner thread: it loads the model, keeps it and its sessions, and serves requests in
//! arrival order: one at a time, or up to `parallel` at once through [`crate::batch`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hoist_runtime::constrain::{Constraint, TokenTable};
use hoist_runtime::generate::{generate_constrained, GenerateOptions, Generation};
use hoist_runtime::gpu::LoadStats;
use hoist_runtime::placement::Placement;
use hoist_runtime::sampler::StopReason;

use crate::model::{Device, Model, Session, Weights};
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
    /// Requests decoded together ([`crate::EngineOptions::parallel`]); the pool holds at
    /// least this many sessions.
    pub parallel: usize,
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
        parallel,
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
    let mut host = Host {
        checkpoint: &checkpoint,
        stop_tokens: &stop_tokens,
        tokens: None,
    };
    if parallel > 1 {
        crate::batch::run(&mut pool, &mut host, parallel, &jobs);
        return;
    }
    for job in jobs {
        let events = job.events.clone();
        let event = match serve(&mut pool, &mut host, job) {
            Ok(c) => Event::Done(c),
            Err(e) => Event::Failed(e),
        };
        // A receiver gone (the stream dropped) wants nothing more.
        let _ = events.send(event);
    }
}

/// What every request on the owner thread shares: the checkpoint, the model's end tokens and
/// the vocabulary's bytes for constrained requests.
pub(crate) struct Host<'a> {
    pub checkpoint: &'a Checkpoint,
    pub stop_tokens: &'a [u32],
    /// Built on the first constrained request (decoding every token takes a while on large
    /// vocabularies), then shared.
    tokens: Option<Arc<TokenTable>>,
}

impl Host<'_> {
    /// The constraint of `request`, if it has one.
    pub(crate) fn constraint(&mut self, request: &Request) -> Option<Constraint> {
        let ck = self.checkpoint;
        request.constraint.clone().map(|grammar| {
            let table = self
                .tokens
                .get_or_insert_with(|| Arc::new(TokenTable::new(&ck.tokenizer)))
                .clone();
            Constraint::new(grammar, table)
        })
    }

    /// The error of a failed generation.
    pub(crate) fn failed(&self, source: hoist_runtime::RuntimeError) -> EngineError {
        EngineError::Generate {
            path: self.checkpoint.path.clone(),
            source: Box::new(source),
        }
    }
}

/// A request about to run on its session.
pub(crate) struct Plan {
    /// Leading prompt tokens the session's cache already holds (not fed again).
    pub cached: usize,
    /// What to generate: the request's settings, `max_tokens` cut to the context's room.
    pub options: GenerateOptions,
    /// When it left the queue.
    pub started: Instant,
}

impl Plan {
    /// Prepares `job` on `session`: checks the context's room, keeps what the cache holds of
    /// the prompt and reports both ([`Event::Started`]).
    pub(crate) fn new(
        job: &Job,
        session: &mut Session<'_>,
        model_stop_tokens: &[u32],
        started: Instant,
    ) -> Result<Plan, EngineError> {
        let ids = &job.ids;
        let capacity = session.capacity();
        let room = capacity.saturating_sub(ids.len());
        if room == 0 {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: ids.len(),
                context: capacity,
            });
        }
        // Only what the cache lacks is fed; the repetition penalty still covers the cached head.
        let cached = session.reuse(ids);
        let _ = job.events.send(Event::Started {
            prompt_tokens: ids.len(),
            cached_tokens: cached,
        });
        let request = &job.request;
        let mut stop_tokens = model_stop_tokens.to_vec();
        stop_tokens.extend(
            request
                .stop_tokens
                .iter()
                .filter(|t| !model_stop_tokens.contains(t)),
        );
        Ok(Plan {
            cached,
            options: GenerateOptions {
                max_tokens: request.max_tokens.min(room),
                sampling: request.sampling,
                stop_strings: request.stop_strings.clone(),
                stop_tokens,
            },
            started,
        })
    }

    /// The request's result from what generation produced.
    pub(crate) fn completion(&self, job: &Job, g: Generation) -> Completion {
        let finished = Instant::now();
        let decode_tokens_per_s = g.decode_tokens_per_s();
        let stop = match g.stop {
            StopReason::Eos(id) => Stop::Eos(id),
            StopReason::StopString(s) => Stop::StopString(s),
            StopReason::MaxTokens if self.options.max_tokens < job.request.max_tokens => {
                Stop::ContextFull
            }
            StopReason::MaxTokens => Stop::MaxTokens,
            StopReason::Cancelled => Stop::Cancelled,
        };
        Completion {
            stats: Stats {
                prompt_tokens: job.ids.len(),
                cached_tokens: self.cached,
                generated_tokens: g.tokens.len(),
                prefill: g.prefill,
                decode: g.decode,
                decode_tokens_per_s,
                submitted: job.submitted,
                started: self.started,
                first_token: g.first_token.unwrap_or(finished),
                finished,
                stop,
            },
            text: g.text,
            tokens: g.tokens,
        }
    }
}

/// The result of a request cancelled while queued: nothing ran.
pub(crate) fn cancelled_in_queue(job: &Job) -> Completion {
    let now = Instant::now();
    Completion {
        text: String::new(),
        tokens: Vec::new(),
        stats: Stats {
            prompt_tokens: job.ids.len(),
            cached_tokens: 0,
            generated_tokens: 0,
            prefill: Duration::ZERO,
            decode: Duration::ZERO,
            decode_tokens_per_s: 0.0,
            submitted: job.submitted,
            started: now,
            first_token: now,
            finished: now,
            stop: Stop::Cancelled,
        },
    }
}

/// Where a request's text goes: its stream, or (nobody listens any more) its cancel flag.
pub(crate) fn text_sender(job: &Job) -> impl FnMut(&str) + '_ {
    |t: &str| {
        if job.events.send(Event::Text(t.to_string())).is_err() {
            job.cancel.store(true, Ordering::Relaxed);
        }
    }
}

/// Runs one request to its end on the pool's best session.
fn serve(pool: &mut Pool<'_>, host: &mut Host<'_>, job: Job) -> Result<Completion, EngineError> {
    let started = Instant::now();
    if job.cancel.load(Ordering::Relaxed) {
        return Ok(cancelled_in_queue(&job));
    }
    let constraint = host.constraint(&job.request);
    let session = pool.session_for(&job.ids, job.request.session_key.as_deref())?;
    let plan = Plan::new(&job, session, host.stop_tokens, started)?;
    let (head, new) = job.ids.split_at(plan.cached);
    let g = generate_constrained(
        session,
        &host.checkpoint.tokenizer,
        head,
        new,
        &plan.options,
        constraint.as_ref(),
        &job.cancel,
        &mut text_sender(&job),
    )
    .map_err(|e| host.failed(e))?;
    Ok(plan.completion(&job, g))
}
