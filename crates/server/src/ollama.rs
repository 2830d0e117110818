//! Ollama's API: `/api/*`, NDJSON streams, durations in nanoseconds.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist_engine::{clock_seed, Completion, Event, Input, Request};
use hoist_runtime::chat::tools::Piece;
use hoist_runtime::chat::{Message, ToolFormat};
use hoist_runtime::sampler::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, JsonBody};
use crate::generation::{finish_reason, nanos, rfc3339, Generation, RequestInfo};
use crate::registry::KeepAlive;
use crate::tools::{self, Splitter};
use crate::AppState;

/// Ollama's sampling defaults, where a request names none.
const DEFAULT_TEMPERATURE: f32 = 0.8;
const DEFAULT_TOP_K: usize = 40;
const DEFAULT_TOP_P: f32 = 0.9;
const DEFAULT_REPEAT_PENALTY: f32 = 1.1;

/// `options` of a generate or chat request.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    temperature: Option<f32>,
    top_k: Option<i64>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    seed: Option<i64>,
    num_predict: Option<i64>,
    num_ctx: Option<usize>,
    stop: Option<Vec<String>>,
    repeat_penalty: Option<f32>,
    /// Options hoist does not implement (logged, not applied).
    #[serde(flatten)]
    other: Map<String, Value>,
}

impl Options {
    /// The engine request for `input`.
    fn request(&self, input: Input) -> Result<Request, ApiError> {
        if !self.other.is_empty() {
            let names: Vec<&str> = self.other.keys().map(String::as_str).collect();
            tracing::warn!(options = ?names, "options hoist does not implement are not applied");
        }
        let top_k = match self.top_k {
            Some(k) if k < 0 => return Err(ApiError::bad_request("options.top_k must be >= 0")),
            Some(k) => k as usize,
            None => DEFAULT_TOP_K,
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(DEFAULT_TEMPERATURE),
            top_k,
            top_p: self.top_p.unwrap_or(DEFAULT_TOP_P),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repeat_penalty.unwrap_or(DEFAULT_REPEAT_PENALTY),
            // A negative seed is Ollama's "random".
            seed: self
                .seed
                .filter(|&s| s >= 0)
                .map_or_else(clock_seed, |s| s as u64),
        };
        // -1 (none), -2 (fill the context): both end at the context.
        let max_tokens = match self.num_predict {
            Some(n) if n >= 0 => n as usize,
            _ => usize::MAX,
        };
        let mut request = Request::new(input, sampling, max_tokens);
        request.stop_strings = self.stop.clone().unwrap_or_default();
        Ok(request)
    }
}

/// Fields common to generate and chat that hoist refuses or reads first.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    model: String,
    #[serde(default)]
    options: Options,
    stream: Option<bool>,
    keep_alive: Option<Value>,
    format: Option<Value>,
    think: Option<Value>,
}

impl Common {
    fn keep_alive(&self) -> Result<Option<KeepAlive>, ApiError> {
        self.keep_alive
            .as_ref()
            .map(|v| KeepAlive::parse(v).map_err(ApiError::bad_request))
            .transpose()
    }

    /// The engine request for `input`: the options, and `format` as a constraint.
    fn request(&self, input: Input) -> Result<Request, ApiError> {
        let mut request = self.options.request(input)?;
        request.constraint = crate::format::ollama(self.format.as_ref())?;
        Ok(request)
    }

    /// Refuses what hoist cannot do yet, naming the field.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self
            .think
            .as_ref()
            .is_some_and(|t| t != &Value::Bool(false) && !t.is_null())
        {
            return Err(ApiError::unsupported("think", "thinking mode"));
        }
        Ok(())
    }
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(flatten)]
    common: Common,
    prompt: Option<String>,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    suffix: Option<String>,
    template: Option<String>,
    context: Option<Vec<u32>>,
    images: Option<Vec<Value>>,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    common: Common,
    #[serde(default)]
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
}

/// One message of a chat.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    role: String,
    #[serde(default)]
    content: String,
    images: Option<Vec<Value>>,
    /// An assistant message's calls: `[{"function": {"name", "arguments": {...}}}]`.
    tool_calls: Option<Vec<Value>>,
    /// A tool message's function (Ollama's name for it).
    tool_name: Option<String>,
    /// A tool message's call id, where a client sends one.
    tool_call_id: Option<String>,
}

fn non_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

/// `POST /api/generate`.
pub async fn generate(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<GenerateRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    req.common.refuse_unsupported()?;
    for (set, field, what) in [
        (
            req.suffix.as_ref().is_some_and(|s| !s.is_empty()),
            "suffix",
            "fill-in-the-middle",
        ),
        (
            req.template.as_ref().is_some_and(|s| !s.is_empty()),
            "template",
            "a request's own template",
        ),
        (
            non_empty(&req.context),
            "context",
            "continuing from returned context tokens",
        ),
        (non_empty(&req.images), "images", "images"),
    ] {
        if set {
            return Err(ApiError::unsupported(field, what));
        }
    }
    let keep_alive = req.common.keep_alive()?;
    let prompt = req.prompt.clone().unwrap_or_default();
    if prompt.is_empty() {
        return load_or_unload(&state, &req.common, keep_alive, "generate").await;
    }
    let input = if req.raw {
        Input::Text(prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.system.as_ref().filter(|s| !s.is_empty()) {
            messages.push(Message::new("system", system.clone()));
        }
        messages.push(Message::new("user", prompt));
        Input::Messages(messages)
    };
    let request = req.common.request(input)?;
    let lease = state
        .registry
        .acquire(&req.common.model, keep_alive, req.common.options.num_ctx)
        .await?;
    let generation = Generation::start(lease, request, arrived).await?;
    respond(
        generation,
        req.common.stream.unwrap_or(true),
        Kind::Generate,
        None,
    )
    .await
}

/// `POST /api/chat`.
pub async fn chat(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    req.common.refuse_unsupported()?;
    let schemas = tools::schemas(req.tools.as_ref())?;
    if req.messages.iter().any(|m| non_empty(&m.images)) {
        return Err(ApiError::unsupported("images", "images"));
    }
    let keep_alive = req.common.keep_alive()?;
    if req.messages.is_empty() {
        return load_or_unload(&state, &req.common, keep_alive, "chat").await;
    }
    let messages = req
        .messages
        .iter()
        .map(|m| {
            tools::message(
                &m.role,
                m.content.clone(),
                m.tool_calls.as_ref(),
                m.tool_call_id.as_ref(),
                m.tool_name.as_ref(),
            )
        })
        .collect::<Result<Vec<Message>, ApiError>>()?;
    let mut request = req.common.request(Input::Messages(messages))?;
    let lease = state
        .registry
        .acquire(&req.common.model, keep_alive, req.common.options.num_ctx)
        .await?;
    let format = tools::reply_format(&lease, &schemas)?;
    request.tools = schemas;
    let generation = Generation::start(lease, request, arrived).await?;
    respond(
        generation,
        req.common.stream.unwrap_or(true),
        Kind::Chat,
        format,
    )
    .await
}

/// A request with nothing to generate: loads the model (unloads it with `keep_alive: 0`), as
/// Ollama does.
async fn load_or_unload(
    state: &AppState,
    common: &Common,
    keep_alive: Option<KeepAlive>,
    endpoint: &str,
) -> Result<Response, ApiError> {
    let record = state.registry.resolve(&common.model).await?;
    let reason = if keep_alive == Some(KeepAlive::For(std::time::Duration::ZERO)) {
        state.registry.unload(&record.name);
        "unload"
    } else {
        let lease = state
            .registry
            .acquire(&record.name, keep_alive, common.options.num_ctx)
            .await?;
        drop(lease);
        "load"
    };
    let mut body = json!({
        "model": record.name,
        "created_at": rfc3339(SystemTime::now()),
        "done": true,
        "done_reason": reason,
    });
    if endpoint == "chat" {
        body["message"] = json!({"role": "assistant", "content": ""});
    } else {
        body["response"] = json!("");
    }
    Ok(Json(body).into_response())
}

/// Which endpoint a reply answers.
#[derive(Clone, Copy)]
enum Kind {
    Generate,
    Chat,
}

impl Kind {
    /// A line carrying `text`.
    fn line(self, model: &str, text: &str, done: bool) -> Value {
        let mut v = json!({
            "model": model,
            "created_at": rfc3339(SystemTime::now()),
            "done": done,
        });
        match self {
            Kind::Generate => v["response"] = json!(text),
            Kind::Chat => v["message"] = json!({"role": "assistant", "content": text}),
        }
        v
    }

    /// The last line: the reason and the timings.
    fn last(self, g: &RequestInfo, text: &str, c: &Completion) -> Value {
        let s = &c.stats;
        let mut v = self.line(&g.model, text, true);
        v["done_reason"] = json!(finish_reason(&s.stop));
        v["total_duration"] = json!(nanos(g.arrived.elapsed()));
        v["load_duration"] = json!(nanos(g.load_duration));
        v["prompt_eval_count"] = json!(s.prompt_tokens);
        v["prompt_eval_duration"] = json!(nanos(s.prefill));
        v["eval_count"] = json!(s.generated_tokens);
        v["eval_duration"] = json!(nanos(s.decode));
        v
    }
}

/// One NDJSON line.
fn ndjson(v: &Value) -> String {
    let mut line = v.to_string();
    line.push('\n');
    line
}

/// A reply: one object, or NDJSON lines as it streams; with `tools`, its calls are read out
/// of the text (a chat only).
async fn respond(
    generation: Generation,
    stream: bool,
    kind: Kind,
    tools: Option<ToolFormat>,
) -> Result<Response, ApiError> {
    if !stream {
        let info = generation.info.clone();
        let completion = generation.complete().await?;
        return Ok(Json(whole(kind, &info, &completion, tools)).into_response());
    }
    let mut lines = Lines {
        kind,
        splitter: Splitter::new(tools),
    };
    let body = generation.into_body(move |info, event| lines.event(info, event));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// The whole reply of a request that did not stream: the text outside calls as content, the
/// calls as `message.tool_calls`.
fn whole(kind: Kind, info: &RequestInfo, c: &Completion, tools: Option<ToolFormat>) -> Value {
    let (content, calls) = tools::split(tools, &c.text);
    let mut v = kind.last(info, &content, c);
    if !calls.is_empty() {
        v["message"]["tool_calls"] = calls.iter().map(tools::ollama_call).collect();
    }
    v
}

/// The NDJSON lines of a streamed reply: text as it comes (less what may open a call), each
/// call in a line of its own once it is whole.
struct Lines {
    kind: Kind,
    splitter: Splitter,
}

impl Lines {
    fn event(&mut self, info: &RequestInfo, event: Event) -> String {
        match event {
            Event::Started { .. } => String::new(),
            Event::Text(t) => {
                let pieces = self.splitter.push(t);
                self.pieces(info, pieces)
            }
            Event::Done(c) => {
                let pieces = self.splitter.finish();
                let mut out = self.pieces(info, pieces);
                out.push_str(&ndjson(&self.kind.last(info, "", &c)));
                out
            }
            Event::Failed(e) => {
                // What was held back is still the reply's: it goes before the error.
                let pieces = self.splitter.finish();
                let mut out = self.pieces(info, pieces);
                out.push_str(&ndjson(&ApiError::from(e).body()));
                out
            }
        }
    }

    fn pieces(&self, info: &RequestInfo, pieces: Vec<Piece>) -> String {
        let mut out = String::new();
        for piece in pieces {
            let line = match piece {
                Piece::Text(t) => self.kind.line(&info.model, &t, false),
                Piece::Call(c) => {
                    let mut v = self.kind.line(&info.model, "", false);
                    v["message"]["tool_calls"] = json!([tools::ollama_call(&c)]);
                    v
                }
            };
            out.push_str(&ndjson(&line));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::tests::{completion, HERMES_REPLY};

    fn info() -> RequestInfo {
        RequestInfo {
            model: "m".into(),
            arrived: Instant::now(),
            load_duration: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn whole_reply_with_calls() {
        let c = completion(HERMES_REPLY);
        let v = whole(Kind::Chat, &info(), &c, Some(ToolFormat::Hermes));
        assert_eq!(v["message"]["content"], "Checking.");
        assert_eq!(v["done_reason"], "stop");
        assert_eq!(
            v["message"]["tool_calls"],
            json!([
                {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                {"function": {"name": "time", "arguments": {}}},
            ])
        );
        // Without tools the text is the content.
        let v = whole(Kind::Chat, &info(), &c, None);
        assert_eq!(v["message"]["content"], HERMES_REPLY);
        assert!(v["message"].get("tool_calls").is_none());
    }

    #[test]
    fn streamed_calls_come_as_lines_of_their_own() {
        let mut lines = Lines {
            kind: Kind::Chat,
            splitter: Splitter::new(Some(ToolFormat::Hermes)),
        };
        let mut out = String::new();
        // Token-sized pieces, cutting the markers.
        for piece in HERMES_REPLY.as_bytes().chunks(4) {
            let text = String::from_utf8(piece.to_vec()).unwrap();
            out.push_str(&lines.event(&info(), Event::Text(text)));
        }
        out.push_str(&lines.event(&info(), Event::Done(completion(HERMES_REPLY))));
        let values: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let content: String = values
            .iter()
            .filter_map(|v| v["message"]["content"].as_str())
            .collect();
        assert_eq!(content, "Checking.", "no call text streamed");
        let calls: Vec<&Value> = values
            .iter()
            .filter_map(|v| v["message"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[1],
            &json!([{"function": {"name": "time", "arguments": {}}}])
        );
        let last = values.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
    }
}
