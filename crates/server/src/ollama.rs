//! Ollama's API: `/api/*`, NDJSON streams, durations in nanoseconds.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist_engine::{clock_seed, Completion, Event, Input, Request};
use hoist_runtime::chat::Message;
use hoist_runtime::sampler::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, JsonBody};
use crate::generation::{finish_reason, nanos, rfc3339, Generation, RequestInfo};
use crate::registry::KeepAlive;
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
    tool_calls: Option<Vec<Value>>,
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
    if non_empty(&req.tools) || req.messages.iter().any(|m| non_empty(&m.tool_calls)) {
        return Err(ApiError::unsupported("tools", "tool calling"));
    }
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
        .map(|m| Message::new(m.role.clone(), m.content.clone()))
        .collect();
    let request = req.common.request(Input::Messages(messages))?;
    let lease = state
        .registry
        .acquire(&req.common.model, keep_alive, req.common.options.num_ctx)
        .await?;
    let generation = Generation::start(lease, request, arrived).await?;
    respond(generation, req.common.stream.unwrap_or(true), Kind::Chat).await
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

async fn respond(generation: Generation, stream: bool, kind: Kind) -> Result<Response, ApiError> {
    if !stream {
        let info = generation.info.clone();
        let completion = generation.complete().await?;
        return Ok(Json(kind.last(&info, &completion.text, &completion)).into_response());
    }
    let body = generation.into_body(move |info, event| match event {
        Event::Started { .. } => String::new(),
        Event::Text(t) => ndjson(&kind.line(&info.model, &t, false)),
        Event::Done(c) => ndjson(&kind.last(info, "", &c)),
        Event::Failed(e) => ndjson(&ApiError::from(e).body()),
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}
