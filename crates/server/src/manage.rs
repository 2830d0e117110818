//! Ollama's model management: `/api/tags`, `/api/show`, `/api/pull`, `/api/copy`,
//! `/api/delete`, `/api/ps`, `/api/version`, and the refusal of `/api/embed`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::error::{ApiError, JsonBody};
use crate::generation::rfc3339;
use crate::models::{ModelDetails, ModelRecord, Models, PullProgress};
use crate::AppState;

/// A request naming one model (`model`, or the older `name`).
#[derive(Debug, Deserialize)]
pub struct NameRequest {
    model: Option<String>,
    name: Option<String>,
    stream: Option<bool>,
}

impl NameRequest {
    fn model(&self) -> Result<&str, ApiError> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| ApiError::bad_request("the request names no model: set \"model\""))
    }
}

/// `POST /api/copy`.
#[derive(Debug, Deserialize)]
pub struct CopyRequest {
    source: String,
    destination: String,
}

/// Runs a blocking model operation off the async threads.
async fn blocking<T, F>(state: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Models) -> Result<T, ApiError> + Send + 'static,
{
    let models = state.registry.models().clone();
    tokio::task::spawn_blocking(move || f(models.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("model operation failed: {e}")))?
}

/// Ollama's `details` object.
fn details_json(d: &ModelDetails) -> Value {
    json!({
        "parent_model": "",
        "format": d.format,
        "family": d.family,
        "families": [d.family],
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    })
}

/// A model's entry in `/api/tags` and `/api/ps`.
fn entry_json(r: &ModelRecord, d: &ModelDetails) -> Value {
    json!({
        "name": r.name,
        "model": r.name,
        "modified_at": rfc3339(r.modified),
        "size": r.size_bytes,
        "digest": r.digest.clone().unwrap_or_default(),
        "details": details_json(d),
    })
}

/// The details of `r`, or empty ones when its checkpoint cannot be read (a listing still
/// shows the model; loading it reports the error).
fn details_or_default(models: &dyn Models, r: &ModelRecord) -> ModelDetails {
    models.describe(r).unwrap_or_else(|e| {
        tracing::warn!(model = %r.name, "cannot describe: {e}");
        ModelDetails {
            format: r.format.clone(),
            ..ModelDetails::default()
        }
    })
}

/// `GET /api/tags`.
pub async fn tags(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let models = blocking(&state, |m| {
        let list = m.list()?;
        Ok(list
            .iter()
            .map(|r| entry_json(r, &details_or_default(m, r)))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({ "models": models })).into_response())
}

/// `POST /api/show`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NameRequest>,
) -> Result<Response, ApiError> {
    let name = req.model()?.to_string();
    let (record, details) = blocking(&state, move |m| {
        let r = m.resolve(&name)?;
        let d = m.describe(&r)?;
        Ok((r, d))
    })
    .await?;
    Ok(Json(json!({
        "license": details.license,
        "modelfile": format!("# hoist: {}\nFROM {}\n", record.name, record.path.display()),
        "parameters": "",
        "template": details.template,
        "details": details_json(&details),
        "model_info": details.model_info,
        "capabilities": ["completion"],
        "modified_at": rfc3339(record.modified),
    }))
    .into_response())
}

/// `POST /api/copy`.
pub async fn copy(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<CopyRequest>,
) -> Result<Response, ApiError> {
    blocking(&state, move |m| Ok(m.copy(&req.source, &req.destination)?)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/delete`: forgets the model, unloading it first.
pub async fn delete(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NameRequest>,
) -> Result<Response, ApiError> {
    let record = state.registry.resolve(req.model()?).await?;
    state.registry.unload(&record.name);
    let name = record.name.clone();
    blocking(&state, move |m| Ok(m.remove(&name)?)).await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /api/ps`.
pub async fn ps(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let running = state.registry.running();
    let models = blocking(&state, move |m| {
        Ok(running
            .iter()
            .map(|r| {
                let mut v = entry_json(&r.record, &details_or_default(m, &r.record));
                // "Forever" as Ollama shows it: a date far ahead, still a valid timestamp.
                let forever =
                    SystemTime::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
                v["size_vram"] = json!(r.vram_bytes);
                v["expires_at"] = json!(rfc3339(r.expires_at.unwrap_or(forever)));
                v["context_length"] = json!(r.context);
                v
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(Json(json!({ "models": models })).into_response())
}

/// `GET /api/version`: hoist's version.
pub async fn version() -> Response {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") })).into_response()
}

/// `POST /api/embed` and `/api/embeddings`: not available.
pub async fn embed() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "embeddings are not supported by hoist serve yet: the models it runs are generative \
         (no pooling head); use an embedding server for /api/embed",
    )
}

/// One NDJSON progress line.
fn progress_line(p: &PullProgress) -> String {
    let mut v = json!({ "status": p.status });
    for (key, value) in [("total", p.total), ("completed", p.completed)] {
        if let Some(n) = value {
            v[key] = json!(n);
        }
    }
    if let Some(d) = &p.digest {
        v["digest"] = json!(d);
    }
    format!("{v}\n")
}

/// `POST /api/pull`: streams progress lines, ending with `{"status": "success"}`. A pull that
/// fails before any progress answers with the error's status instead.
pub async fn pull(
    State(state): State<Arc<AppState>>,
    JsonBody(req): JsonBody<NameRequest>,
) -> Result<Response, ApiError> {
    let name = req.model()?.to_string();
    let stream = req.stream.unwrap_or(true);
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<String, ApiError>>();
    let models = state.registry.models().clone();
    tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let mut progress = |p: &PullProgress| {
            // A client gone leaves nobody to tell; the pull still finishes.
            let _ = progress_tx.send(Ok(progress_line(p)));
        };
        let result = models.pull(&name, &mut progress);
        let last = result
            .map(|_| progress_line(&success()))
            .map_err(ApiError::from);
        let _ = tx.send(last);
    });
    let first = rx
        .recv()
        .await
        .ok_or_else(|| ApiError::internal("the pull ended without a result"))??;
    if !stream {
        // Wait for the end; only the last word counts.
        let mut last = first;
        while let Some(line) = rx.recv().await {
            last = line?;
        }
        let v: Value = serde_json::from_str(last.trim()).unwrap_or(Value::Null);
        return Ok(Json(v).into_response());
    }
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let text = line.unwrap_or_else(|e| format!("{}\n", e.body()));
        Some((Ok::<_, std::convert::Infallible>(text), rx))
    });
    let head = futures_util::stream::once(async move { Ok(first) });
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(head, rest));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn success() -> PullProgress {
    PullProgress {
        status: "success".into(),
        digest: None,
        total: None,
        completed: None,
    }
}
