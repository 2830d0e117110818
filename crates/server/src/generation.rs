//! Runs a request on the blocking engine and hands its events to async code: a pump on a
//! blocking thread forwards the engine's [`GenerationStream`] into a bounded channel. Dropping
//! the [`Generation`] (the client went away, so axum dropped the response) sets the request's
//! cancel flag: a queued request is skipped, a running one ends within one decode step.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use hoist_engine::{Completion, Event, Request, Stop};
use serde::de::IgnoredAny;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::registry::Lease;

/// Events buffered between the pump and the HTTP response.
const EVENT_BUFFER: usize = 64;

/// Text written around a reply as if the model had (a forced Hermes call's tags): `prefix` was
/// given to the model after the prompt ([`hoist_engine::Request::reply_prefix`]) and opens
/// the reply's text; `suffix` closes it when the generated part is a complete JSON document
/// (a reply cut short stays unclosed, so it is never read as a call).
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    /// Before the generated text.
    pub prefix: &'static str,
    /// After it, when it is complete.
    pub suffix: &'static str,
}

/// A running request's events.
pub struct Generation {
    events: mpsc::Receiver<Event>,
    /// Events made here (a [`Frame`]'s text), sent before the next of `events`.
    pending: VecDeque<Event>,
    frame: Option<Frame>,
    cancel: Arc<AtomicBool>,
    /// What the reply's last message reports besides the engine's statistics.
    pub info: RequestInfo,
}

/// A request's model and timings outside the engine.
#[derive(Clone, Debug)]
pub struct RequestInfo {
    /// The model's name.
    pub model: String,
    /// When the HTTP request arrived.
    pub arrived: Instant,
    /// Time this request spent loading the model (zero when it was loaded already).
    pub load_duration: Duration,
}

impl Generation {
    /// Starts `request` on the lease's model. Input the engine refuses (a prompt too long for
    /// the context, settings out of range) fails here, before any response is sent.
    pub async fn start(
        lease: Lease,
        mut request: Request,
        arrived: Instant,
    ) -> Result<Generation, ApiError> {
        let cancel = Arc::new(AtomicBool::new(false));
        request.cancel = Some(cancel.clone());
        let engine = lease.engine().clone();
        // Tokenizing a long prompt takes a while: off the async threads.
        let stream = tokio::task::spawn_blocking(move || engine.generate(request))
            .await
            .map_err(|e| ApiError::internal(format!("generation failed to start: {e}")))??;
        let (tx, events) = mpsc::channel(EVENT_BUFFER);
        let info = RequestInfo {
            model: lease.name().to_string(),
            arrived,
            load_duration: lease.load_duration(),
        };
        tokio::task::spawn_blocking(move || {
            // The lease lives until the engine is done with the request, so that the queue
            // bound counts it and the model stays loaded; it ends before the last event goes
            // out, so that a client that sends its next request on seeing the end finds the
            // place free.
            let mut lease = Some(lease);
            for event in stream {
                if matches!(event, Event::Done(_) | Event::Failed(_)) {
                    drop(lease.take());
                }
                if tx.blocking_send(event).is_err() {
                    // The receiver is gone; dropping the stream cancels the request.
                    break;
                }
            }
        });
        Ok(Generation {
            events,
            pending: VecDeque::new(),
            frame: None,
            cancel,
            info,
        })
    }

    /// The reply framed by `frame`: its text as the readers see it (events and result).
    pub fn framed(mut self, frame: Frame) -> Generation {
        self.frame = Some(frame);
        self
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(e) = self.pending.pop_front() {
            return Some(e);
        }
        let event = self.events.recv().await?;
        let Some(frame) = self.frame else {
            return Some(event);
        };
        match event {
            Event::Started { .. } => {
                self.pending
                    .push_back(Event::Text(frame.prefix.to_string()));
                Some(event)
            }
            Event::Done(mut c) => {
                let complete = serde_json::from_str::<IgnoredAny>(&c.text).is_ok();
                let suffix = if complete { frame.suffix } else { "" };
                c.text = format!("{}{}{suffix}", frame.prefix, c.text);
                if suffix.is_empty() {
                    return Some(Event::Done(c));
                }
                self.pending.push_back(Event::Done(c));
                Some(Event::Text(suffix.to_string()))
            }
            other => Some(other),
        }
    }

    /// Runs the request to its end.
    pub async fn complete(mut self) -> Result<Completion, ApiError> {
        while let Some(event) = self.next().await {
            match event {
                Event::Done(c) => return Ok(c),
                Event::Failed(e) => return Err(e.into()),
                Event::Started { .. } | Event::Text(_) => {}
            }
        }
        Err(ApiError::internal(
            "the engine ended the request without a result",
        ))
    }

    /// A streaming body: `render` turns each event into the bytes to send (nothing, one frame
    /// or several); the body ends after the last event.
    pub fn into_body<F>(self, render: F) -> Body
    where
        F: FnMut(&RequestInfo, Event) -> String + Send + 'static,
    {
        // The state carries the renderer: each step's future owns it until the next.
        let stream = futures_util::stream::unfold(Some((self, render)), |state| async move {
            let (mut generation, mut render) = state?;
            loop {
                let event = generation.next().await?;
                let last = matches!(event, Event::Done(_) | Event::Failed(_));
                let text = render(&generation.info, event);
                if !text.is_empty() || last {
                    let next = (!last).then_some((generation, render));
                    return Some((Ok::<_, Infallible>(Bytes::from(text)), next));
                }
            }
        });
        Body::from_stream(stream)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Nanoseconds, as Ollama reports durations.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the reply hit a length bound (`length`) or ended by itself (`stop`).
pub fn finish_reason(stop: &Stop) -> &'static str {
    match stop {
        Stop::MaxTokens | Stop::ContextFull => "length",
        Stop::Eos(_) | Stop::StopString(_) | Stop::Cancelled => "stop",
    }
}

/// Seconds since the Unix epoch.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `t` in RFC 3339 (UTC, nanoseconds), as Ollama writes times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// The (year, month, day) of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_251_199, 5);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn length_bounds_read_length() {
        assert_eq!(finish_reason(&Stop::MaxTokens), "length");
        assert_eq!(finish_reason(&Stop::ContextFull), "length");
        assert_eq!(finish_reason(&Stop::Eos(2)), "stop");
    }
}
