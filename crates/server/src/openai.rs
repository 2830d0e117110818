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
use hoist_runtime::chat::tools::Piece;
use hoist_runtime::chat::{ToolCall, ToolFormat};
use hoist_runtime::sampler::SamplingParams;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, Flavor};
use crate::generation::{finish_reason, unix_seconds, Frame, Generation, RequestInfo};
use crate::tools::{self, Splitter};
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
                .ok_or_else(|| {
                    ApiError::bad_param("stop", "stop must be a string or an array of strings")
                })?,
            Some(_) => {
                return Err(ApiError::bad_param(
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

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(flatten)]
    common: Common,
    messages: Vec<ChatMessage>,
    tools: Option<Vec<Value>>,
    /// `"none"` leaves the tools out; `"required"` or a named function forces a call where the
    /// template's format allows it ([`tools::forced_call`]); `"auto"` lets the model choose.
    tool_choice: Option<Value>,
}

/// A chat message: content as a string or as text parts; an assistant's `tool_calls`, a tool
/// result's `tool_call_id` (and `name`).
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    role: String,
    content: Option<Value>,
    tool_calls: Option<Vec<Value>>,
    tool_call_id: Option<String>,
    name: Option<String>,
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
            Some(_) => Err(ApiError::bad_param(
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
        let mut schemas = tools::schemas(req.tools.as_ref())?;
        if req.tool_choice.as_ref().and_then(Value::as_str) == Some("none") {
            schemas.clear();
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
                tools::message(
                    role,
                    m.text()?,
                    m.tool_calls.as_ref(),
                    m.tool_call_id.as_ref(),
                    m.name.as_ref(),
                )
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        if messages.is_empty() {
            return Err(ApiError::bad_param(
                "messages",
                "messages must not be empty",
            ));
        }
        let mut request = req.common.request(Input::Messages(messages), usize::MAX)?;
        request.tools = schemas;
        run(
            &state,
            &req.common,
            request,
            Kind::Chat,
            req.tool_choice.as_ref(),
        )
        .await
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
                return Err(ApiError::bad_param(
                    "prompt",
                    "prompt must be a string (one prompt per request)",
                ))
            }
        };
        let request = req
            .common
            .request(Input::Text(prompt), DEFAULT_COMPLETION_TOKENS)?;
        run(&state, &req.common, request, Kind::Completion, None).await
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
    /// The format of the reply's tool calls (`None`: no tools, all content).
    tools: Option<ToolFormat>,
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

    /// Two chunks for a call: its id and name (arguments empty), then its arguments.
    fn call_chunks(&self, c: &ToolCall, index: usize, first: bool) -> String {
        let mut head = json!({"tool_calls": [{
            "index": index,
            "id": tools::call_id(c),
            "type": "function",
            "function": {"name": c.name, "arguments": ""},
        }]});
        if first {
            head["role"] = json!("assistant");
        }
        let args = json!({"tool_calls": [{
            "index": index,
            "function": {"arguments": c.arguments.to_string()},
        }]});
        let mut out = String::new();
        for delta in [head, args] {
            let choice =
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null});
            out.push_str(&sse(&self.envelope(true, json!([choice]))));
        }
        out
    }

    fn whole(&self, c: &Completion) -> Value {
        let mut finish = finish_reason(&c.stats.stop);
        let choice = match self.kind {
            Kind::Chat => {
                let (content, calls) = tools::split(self.tools, &c.text);
                let mut message = json!({"role": "assistant", "content": content});
                if !calls.is_empty() {
                    finish = "tool_calls";
                    if content.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = calls
                        .iter()
                        .map(|c| tools::openai_call(c, &tools::call_id(c)))
                        .collect();
                }
                json!({
                    "index": 0,
                    "message": message,
                    "logprobs": null,
                    "finish_reason": finish,
                })
            }
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

/// Runs `request` and answers it; `tool_choice` may force a call ([`tools::forced_call`]).
async fn run(
    state: &AppState,
    common: &Common,
    mut request: Request,
    kind: Kind,
    tool_choice: Option<&Value>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let lease = state.registry.acquire(&common.model, None, None).await?;
    let format = tools::reply_format(&lease, &request.tools)?;
    let mut frame = None;
    if !request.tools.is_empty() {
        let forced = tools::forced_call(format, tool_choice, &request.tools)?;
        // `response_format` asks for a document of its own: it wins over forcing a call.
        if let Some(f) = forced.filter(|_| request.constraint.is_none()) {
            request.constraint = Some(f.grammar);
            if let Some((prefix, suffix)) = f.wrapper {
                request.reply_prefix = prefix.to_string();
                frame = Some(Frame { prefix, suffix });
            }
        }
    }
    let generation = Generation::start(lease, request, arrived).await?;
    let generation = match frame {
        Some(f) => generation.framed(f),
        None => generation,
    };
    let reply = Reply {
        kind,
        id: response_id(match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        }),
        created: unix_seconds(SystemTime::now()),
        model: generation.info.model.clone(),
        tools: format,
    };
    if !common.stream {
        let completion = generation.complete().await?;
        return Ok(Json(reply.whole(&completion)).into_response());
    }
    let mut frames = Frames {
        splitter: Splitter::new(reply.tools),
        reply,
        include_usage: common.include_usage(),
        first: true,
        calls: 0,
    };
    let body = generation.into_body(move |_: &RequestInfo, event| frames.event(event));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

/// The SSE frames of a streamed reply: text deltas (less what may open a call), each call as
/// `delta.tool_calls` chunks once it is whole, the finish reason (`tool_calls` after any
/// call), usage where asked, `[DONE]`.
struct Frames {
    reply: Reply,
    splitter: Splitter,
    include_usage: bool,
    /// No chunk sent yet (the first carries the role).
    first: bool,
    /// Calls sent (the next one's `index`).
    calls: usize,
}

impl Frames {
    fn event(&mut self, event: Event) -> String {
        match event {
            Event::Started { .. } => String::new(),
            Event::Text(t) => {
                let pieces = self.splitter.push(t);
                self.pieces(pieces)
            }
            Event::Done(c) => {
                let pieces = self.splitter.finish();
                let mut out = self.pieces(pieces);
                let finish = match self.calls {
                    0 => finish_reason(&c.stats.stop),
                    _ => "tool_calls",
                };
                out.push_str(&sse(&self.reply.chunk("", self.first, Some(finish))));
                if self.include_usage {
                    let mut u = self.reply.envelope(true, json!([]));
                    u["usage"] = usage(&c.stats);
                    out.push_str(&sse(&u));
                }
                out.push_str("data: [DONE]\n\n");
                out
            }
            Event::Failed(e) => {
                // What was held back is still the reply's: it goes before the error.
                let pieces = self.splitter.finish();
                let mut out = self.pieces(pieces);
                out.push_str(&sse(&ApiError::from(e).with_flavor(Flavor::OpenAi).body()));
                out.push_str("data: [DONE]\n\n");
                out
            }
        }
    }

    fn pieces(&mut self, pieces: Vec<Piece>) -> String {
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(&sse(&self.reply.chunk(&t, self.first, None))),
                Piece::Call(c) => {
                    out.push_str(&self.reply.call_chunks(&c, self.calls, self.first));
                    self.calls += 1;
                }
            }
            self.first = false;
        }
        out
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::tests::{completion, HERMES_REPLY};

    fn reply(tools: Option<ToolFormat>) -> Reply {
        Reply {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            created: 0,
            model: "m".into(),
            tools,
        }
    }

    #[test]
    fn whole_reply_with_calls() {
        let v = reply(Some(ToolFormat::Hermes)).whole(&completion(HERMES_REPLY));
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking.");
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert_ne!(calls[0]["id"], calls[1]["id"]);
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "weather");
        let args: Value =
            serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));

        // Only a call: content is null. Malformed: all content, finish "stop".
        let only = "<tool_call>{\"name\": \"f\", \"arguments\": {}}</tool_call>";
        let v = reply(Some(ToolFormat::Hermes)).whole(&completion(only));
        assert!(v["choices"][0]["message"]["content"].is_null());
        let bad = "<tool_call>{\"name\": </tool_call>";
        let v = reply(Some(ToolFormat::Hermes)).whole(&completion(bad));
        assert_eq!(v["choices"][0]["message"]["content"], bad);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[test]
    fn streamed_calls_as_deltas() {
        let r = reply(Some(ToolFormat::Hermes));
        let mut frames = Frames {
            splitter: Splitter::new(r.tools),
            reply: r,
            include_usage: false,
            first: true,
            calls: 0,
        };
        let mut out = String::new();
        for piece in HERMES_REPLY.as_bytes().chunks(3) {
            let text = String::from_utf8(piece.to_vec()).unwrap();
            out.push_str(&frames.event(Event::Text(text)));
        }
        out.push_str(&frames.event(Event::Done(completion(HERMES_REPLY))));
        assert!(out.ends_with("data: [DONE]\n\n"));
        let chunks: Vec<Value> = out
            .split("\n\n")
            .filter_map(|f| f.strip_prefix("data: "))
            .filter(|f| *f != "[DONE]")
            .map(|f| serde_json::from_str(f).unwrap())
            .collect();
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[0]["role"], "assistant");
        let content: String = deltas
            .iter()
            .filter_map(|d| d["content"].as_str())
            .collect();
        assert_eq!(content, "Checking.");
        // Per call index: the id and name first, then the arguments.
        let mut names = Vec::new();
        let mut args = [String::new(), String::new()];
        for d in &deltas {
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let i = tc["index"].as_u64().unwrap() as usize;
                if let Some(name) = tc["function"]["name"].as_str() {
                    assert!(tc["id"].as_str().unwrap().starts_with("call_"));
                    names.push((i, name.to_string()));
                }
                args[i].push_str(tc["function"]["arguments"].as_str().unwrap());
            }
        }
        assert_eq!(names, [(0, "weather".to_string()), (1, "time".to_string())]);
        assert_eq!(args, ["{\"city\":\"Paris\"}".to_string(), "{}".to_string()]);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    }
}
