//! Several requests at once ([`crate::EngineOptions::parallel`] > 1): up to `parallel`
//! requests run on their own sessions, and each decode step feeds every running request's next
//! token through one forward pass ([`crate::model::decode_batch`]), so that the weights are read
//! once per step for all of them instead of once per request.
//!
//! A request joins between steps: its prompt is prefilled alone (the running requests wait that
//! long), then it decodes with the others. A request leaves as soon as it ends (an end token, a
//! stop string, its token limit, or its client gone), freeing its place for the next in the
//! queue. Each request's choices are its own [`Decoder`]'s: sampling, constraint and stop
//! strings are per request, and so are its results.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use hoist_runtime::generate::{Decoder, Generation, LogitsModel, Sink, Step};
use hoist_runtime::sampler::StopReason;
use hoist_runtime::RuntimeError;

use crate::model::{decode_batch, Session};
use crate::owner::{cancelled_in_queue, text_sender, Host, Job, Plan};
use crate::pool::Pool;
use crate::request::Event;
use crate::EngineError;

/// A request between decode steps.
struct Running {
    job: Job,
    plan: Plan,
    /// Its session in the pool.
    slot: usize,
    decoder: Decoder,
    /// The token to feed at the next step.
    next: u32,
    prefill: Duration,
    /// When its prefill ended: its decode time runs from there.
    decode_from: Instant,
}

/// Serves `jobs` until every sender is gone and the last request has ended, running up to
/// `parallel` at once.
pub(crate) fn run(pool: &mut Pool<'_>, host: &mut Host<'_>, parallel: usize, jobs: &Receiver<Job>) {
    assert!(parallel >= 1, "at least one request runs");
    let mut running: Vec<Running> = Vec::with_capacity(parallel);
    loop {
        while running.len() < parallel {
            // Wait for work only when nothing runs; otherwise take what is queued and go on.
            let job = match running.is_empty() {
                true => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
                false => match jobs.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                },
            };
            if let Some(r) = start(pool, host, job) {
                running.push(r);
            }
        }
        if !running.is_empty() {
            step(pool, host, &mut running);
        }
    }
}

/// Prefills `job` on a free session and chooses its first token: `Some` when it goes on to
/// decode, `None` when it has ended already (its result or error sent).
fn start(pool: &mut Pool<'_>, host: &mut Host<'_>, job: Job) -> Option<Running> {
    let started = Instant::now();
    if job.cancel.load(Ordering::Relaxed) {
        let _ = job.events.send(Event::Done(cancelled_in_queue(&job)));
        return None;
    }
    let slot = match pool.acquire(&job.ids, job.request.session_key.as_deref()) {
        Ok(slot) => slot,
        Err(e) => {
            let _ = job.events.send(Event::Failed(e));
            return None;
        }
    };
    let r = prefill(pool.session(slot), host, job, slot, started)?;
    pool.set_busy(slot, true);
    Some(r)
}

/// Sends the last event of a request that ended before decoding.
fn ended(job: Job, event: Event) -> Option<Running> {
    let _ = job.events.send(event);
    None
}

/// Plans `job` on `session` (slot `slot` of the pool), feeds its prompt and takes its first
/// token: the request to decode on, or `None` when it ended there (its last event sent).
fn prefill(
    session: &mut Session<'_>,
    host: &mut Host<'_>,
    job: Job,
    slot: usize,
    started: Instant,
) -> Option<Running> {
    let plan = match Plan::new(&job, session, host.stop_tokens, started) {
        Ok(p) => p,
        Err(e) => return ended(job, Event::Failed(e)),
    };
    let constraint = host.constraint(&job.request);
    let (head, new) = job.ids.split_at(plan.cached);
    let t0 = Instant::now();
    let ready = Decoder::new(plan.options.clone(), constraint.as_ref(), head, new)
        .and_then(|d| Ok((d, session.next_logits(new)?)));
    let (decoder, mut logits) = match ready {
        Ok(x) => x,
        Err(e) => return ended(job, Event::Failed(host.failed(e))),
    };
    let mut r = Running {
        plan,
        slot,
        decoder,
        next: 0,
        prefill: t0.elapsed(),
        decode_from: Instant::now(),
        job,
    };
    let stop = match r.choose(host, &mut logits) {
        Ok(Step::Feed(t)) => {
            r.next = t;
            return Some(r);
        }
        Ok(Step::Done(stop)) => Ok(stop),
        Err(e) => Err(e),
    };
    let (job, event) = r.finish(host, stop);
    ended(job, event)
}

/// One decode step for every running request; those that end leave `running` with their
/// results sent and their sessions freed.
fn step(pool: &mut Pool<'_>, host: &mut Host<'_>, running: &mut Vec<Running>) {
    let slots: Vec<usize> = running.iter().map(|r| r.slot).collect();
    let tokens: Vec<u32> = running.iter().map(|r| r.next).collect();
    let result = decode_batch(&mut pool.sessions(&slots), &tokens);
    let logits = match result {
        Ok(l) => l,
        Err(e) => {
            let message = error_chain(&e);
            for r in running.drain(..) {
                pool.set_busy(r.slot, false);
                let _ = r.job.events.send(Event::Failed(EngineError::SharedStep {
                    path: host.checkpoint.path.clone(),
                    requests: slots.len(),
                    message: message.clone(),
                }));
            }
            return;
        }
    };
    let mut i = 0;
    for mut l in logits {
        let stop = match running[i].choose(host, &mut l) {
            Ok(Step::Feed(t)) => {
                running[i].next = t;
                i += 1;
                continue;
            }
            Ok(Step::Done(stop)) => Ok(stop),
            Err(e) => Err(e),
        };
        let r = running.remove(i);
        pool.set_busy(r.slot, false);
        let (job, event) = r.finish(host, stop);
        let _ = job.events.send(event);
    }
}

impl Running {
    /// Runs `f` on the decoder with the request's stream as its sink.
    fn with_sink<R>(
        &mut self,
        host: &Host<'_>,
        f: impl FnOnce(&mut Decoder, &mut Sink<'_>) -> R,
    ) -> R {
        let mut on_text = text_sender(&self.job);
        let mut sink = Sink {
            tokenizer: &host.checkpoint.tokenizer,
            cancel: &self.job.cancel,
            on_text: &mut on_text,
        };
        f(&mut self.decoder, &mut sink)
    }

    /// Steps the decoder on `logits`, its text going to the request's stream.
    fn choose(&mut self, host: &Host<'_>, logits: &mut [f32]) -> Result<Step, RuntimeError> {
        self.with_sink(host, |d, sink| d.step(logits, sink))
    }

    /// The request ended for `stop` (or failed): its job and last event.
    fn finish(mut self, host: &Host<'_>, stop: Result<StopReason, RuntimeError>) -> (Job, Event) {
        let stop = stop.and_then(|s| self.with_sink(host, |d, sink| d.finish(s, sink)));
        let event = match stop {
            Err(e) => Event::Failed(host.failed(e)),
            Ok(stop) => {
                let (tokens, text, first_token) = self.decoder.into_parts();
                let g = Generation {
                    tokens,
                    text,
                    stop,
                    prefill: self.prefill,
                    decode: self.decode_from.elapsed(),
                    first_token,
                };
                Event::Done(self.plan.completion(&self.job, g))
            }
        };
        (self.job, event)
    }
}

/// `e` and its causes, one after another.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
