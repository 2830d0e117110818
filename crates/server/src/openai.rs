//! OpenAI's API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`; SSE streams of
//! `data: {json}` frames ending with `data: [DONE]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist_engine::{clock_seed, Completion, Event, Input, Request, Stats};
use hoist_runtime::chat::Message;
use hoist_runtime::sampler::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Flavor};
use crate::generation::{finish_reason, unix_seconds, Generation, RequestInfo};
use crate::AppState;

/// Tokens of a `/v1/completions` reply when the request names no bound (OpenAI's default).
const DEFAULT_COMPLETION_TOKENS: usize = 16;

/// Fields common to both generation endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    model: String,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Value>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<u32>,
    frequency_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    #[serde(default)]
    logprobs: Option<Value>,
    response_format: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

impl Common {
    /// Refuses what hoist cannot do yet, naming the field.
    fn refuse_unsupported(&self) -> Result<(), ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::unsupported(
                "n",
                "more than one choice per request",
            ));
        }
        for (value, field) in [
            (self.frequency_penalty, "frequency_penalty"),
            (self.presence_penalty, "presence_penalty"),
        ] {
            if value.is_some_and(|v| v != 0.0) {
                return Err(ApiError::unsupported(field, field));
            }
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
        {
            return Err(ApiError::unsupported("logprobs", "log probabilities"));
        }
        Ok(())
    }

    /// The engine request for `input`.
    fn request(&self, input: Input, default_tokens: usize) -> Result<Request, ApiError> {
        let stop_strings = match &self.stop {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| param("stop", "stop must be a string or an array of strings"))?,
            Some(_) => {
                return Err(param(
                    "stop",
                    "stop must be a string or an array of strings",
                ))
            }
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed.unwrap_or_else(clock_seed),
            ..SamplingParams::default()
        };
        let max_tokens = self
            .max_completion_tokens
            .or(self.max_tokens)
            .unwrap_or(default_tokens);
        let mut request = Request::new(input, sampling, max_tokens);
        request.stop_strings = stop_strings;
        request.constraint = crate::format::openai(self.response_format.as_ref())?;
        Ok(request)
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

fn param(name: &'static str, message: &str) -> ApiError {
    ApiError {
        param: Some(name),
        ..ApiError::bad_request(message)
    }
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    common: Common,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
}

/// A chat message: content as a string or as text parts.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    role: String,
    content: Option<Value>,
}

impl ChatMessage {
    fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|p| match p.get("type").and_then(Value::as_str) {
                    Some("text") => Ok(p.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => Err(ApiError::unsupported(
                        "messages",
                        &format!("content parts of type {}", other.unwrap_or("(none)")),
                    )),
                })
                .collect(),
            Some(_) => Err(param(
                "messages",
                "a message's content must be a string or an array of parts",
            )),
        }
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(flatten)]
    common: Common,
    prompt: Value,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
}

/// A response id, unique within the process.
fn response_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{:x}{n:x}", unix_seconds(SystemTime::now()))
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let result = async {
        let req: ChatRequest = parse(&body)?;
        req.common.refuse_unsupported()?;
        if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::unsupported("tools", "tool calling"));
        }
        let messages = req
            .messages
            .iter()
            .map(|m| {
                // OpenAI's newer name for the system role, which chat templates do not know.
                let role = if m.role == "developer" {
                    "system"
                } else {
                    &m.role
                };
                Ok(Message::new(role, m.text()?))
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        if messages.is_empty() {
            return Err(param("messages", "messages must not be empty"));
        }
        let request = req.common.request(Input::Messages(messages), usize::MAX)?;
        run(&state, &req.common, request, Kind::Chat).await
    };
    result
        .await
        .unwrap_or_else(|e| e.with_flavor(Flavor::OpenAi).into_response())
}

/// `POST /v1/completions`.
pub async fn completions(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let result = async {
        let req: CompletionRequest = parse(&body)?;
        req.common.refuse_unsupported()?;
        if req.echo {
            return Err(ApiError::unsupported("echo", "echoing the prompt"));
        }
        if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::unsupported("suffix", "fill-in-the-middle"));
        }
        let prompt = match &req.prompt {
            Value::String(s) => s.clone(),
            Value::Array(a) if a.len() == 1 && a[0].is_string() => {
                a[0].as_str().unwrap_or_default().to_string()
            }
            _ => {
                return Err(param(
                    "prompt",
                    "prompt must be a string (one prompt per request)",
                ))
            }
        };
        let request = req
            .common
            .request(Input::Text(prompt), DEFAULT_COMPLETION_TOKENS)?;
        run(&state, &req.common, request, Kind::Completion).await
    };
    result
        .await
        .unwrap_or_else(|e| e.with_flavor(Flavor::OpenAi).into_response())
}

/// The body as JSON, or a 400 in OpenAI's shape (axum's own rejection is plain text).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Which endpoint a reply answers.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Completion,
}

struct Reply {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("hoist-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }

    /// A streamed choice carrying `text` (`role` on the first chat delta).
    fn chunk(&self, text: &str, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if first {
                    delta["role"] = json!("assistant");
                }
                if !text.is_empty() || (first && finish.is_none()) {
                    delta["content"] = json!(text);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        self.envelope(true, json!([choice]))
    }

    fn whole(&self, c: &Completion) -> Value {
        let finish = finish_reason(&c.stats.stop);
        let choice = match self.kind {
            Kind::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": null,
                "finish_reason": finish,
            }),
            Kind::Completion => {
                json!({"index": 0, "text": c.text, "logprobs": null, "finish_reason": finish})
            }
        };
        let mut v = self.envelope(false, json!([choice]));
        v["usage"] = usage(&c.stats);
        v
    }
}

fn usage(s: &Stats) -> Value {
    json!({
        "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.generated_tokens,
        "total_tokens": s.prompt_tokens + s.generated_tokens,
    })
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

async fn run(
    state: &AppState,
    common: &Common,
    request: Request,
    kind: Kind,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let lease = state.registry.acquire(&common.model, None, None).await?;
    let generation = Generation::start(lease, request, arrived).await?;
    let reply = Reply {
        kind,
        id: response_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: unix_seconds(SystemTime::now()),
        model: generation.info.model.clone(),
    };
    if !common.stream {
        let completion = generation.complete().await?;
        return Ok(Json(reply.whole(&completion)).into_response());
    }
    let include_usage = common.include_usage();
    let mut first = true;
    let body = generation.into_body(move |_: &RequestInfo, event| {
        let mut out = String::new();
        match event {
            Event::Started { .. } => {}
            Event::Text(t) => {
                out = sse(&reply.chunk(&t, first, None));
                first = false;
            }
            Event::Done(c) => {
                out.push_str(&sse(&reply.chunk(
                    "",
                    first,
                    Some(finish_reason(&c.stats.stop)),
                )));
                if include_usage {
                    let mut u = reply.envelope(true, json!([]));
                    u["usage"] = usage(&c.stats);
                    out.push_str(&sse(&u));
                }
                out.push_str("data: [DONE]\n\n");
            }
            Event::Failed(e) => {
                out = sse(&ApiError::from(e).with_flavor(Flavor::OpenAi).body());
                out.push_str("data: [DONE]\n\n");
            }
        }
        out
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// `GET /v1/models`.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let models = state.registry.models().clone();
    let listed = tokio::task::spawn_blocking(move || models.list()).await;
    match listed {
        Ok(Ok(list)) => {
            let data: Vec<Value> = list.iter().map(model_json).collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Ok(Err(e)) => ApiError::from(e)
            .with_flavor(Flavor::OpenAi)
            .into_response(),
        Err(e) => ApiError::internal(format!("listing models failed: {e}"))
            .with_flavor(Flavor::OpenAi)
            .into_response(),
    }
}

/// `GET /v1/models/{id}`.
pub async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match state.registry.resolve(&id).await {
        Ok(r) => Json(model_json(&r)).into_response(),
        Err(e) => e.with_flavor(Flavor::OpenAi).into_response(),
    }
}

fn model_json(r: &crate::models::ModelRecord) -> Value {
    json!({
        "id": r.name,
        "object": "model",
        "created": unix_seconds(r.modified),
        "owned_by": "hoist",
    })
}
