//! `hoist serve`: Ollama- and OpenAI-compatible HTTP APIs over the engine, so that the official
//! clients (`ollama`, `openai`) work unmodified.
//!
//! Models come from a [`Models`] source (the model store, or a fixed map: [`StaticModels`]),
//! load on first use into the [`Registry`] and stay for their keep-alive. Each model runs up to
//! `parallel` requests at once, decoded together (one at a time by default); up to
//! `queue_depth` more wait, and a request beyond that gets 503. A client that disconnects
//! cancels its generation ([`generation`]).

#![warn(missing_docs)]

mod error;
mod format;
pub mod generation;
mod manage;
pub mod models;
mod ollama;
mod openai;
pub mod registry;
mod store;
mod tools;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;

pub use error::{ApiError, Flavor};
pub use models::{ModelDetails, ModelRecord, Models, ModelsError, PullProgress, StaticModels};
pub use registry::{KeepAlive, Registry, RegistryOptions, DEFAULT_KEEP_ALIVE};

/// Default request body bound: 8 MiB (a long chat history fits; a runaway upload does not).
pub const DEFAULT_BODY_LIMIT_BYTES: usize = 8 << 20;
/// Default requests waiting per model besides the one running.
pub const DEFAULT_QUEUE_DEPTH: usize = 16;
/// How often the reaper looks for models whose keep-alive has passed.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// How to serve.
#[derive(Clone)]
pub struct ServerConfig {
    /// Loading and queueing.
    pub registry: RegistryOptions,
    /// When set, every route but `/` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body accepted (413 beyond).
    pub body_limit_bytes: usize,
}

/// What every handler shares.
pub struct AppState {
    /// Loaded models.
    pub registry: Arc<Registry>,
    api_key: Option<String>,
}

/// The router for `config`, over `models`; also returns the registry (to inspect, or to reap).
/// The caller runs the reaper ([`reap_periodically`]) or calls [`serve`], which does.
pub fn router(models: Arc<dyn Models>, config: &ServerConfig) -> (Router, Arc<Registry>) {
    let registry = Registry::new(models, config.registry.clone());
    let state = Arc::new(AppState {
        registry: registry.clone(),
        api_key: config.api_key.clone(),
    });
    let router = Router::new()
        .route("/", get(root).head(root))
        .route("/api/version", get(manage::version))
        .route("/api/tags", get(manage::tags))
        .route("/api/show", post(manage::show))
        .route("/api/generate", post(ollama::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/api/pull", post(manage::pull))
        .route("/api/copy", post(manage::copy))
        .route("/api/delete", delete(manage::delete))
        .route("/api/ps", get(manage::ps))
        .route("/api/embed", post(manage::embed))
        .route("/api/embeddings", post(manage::embed))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{*id}", get(openai::model))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    (router, registry)
}

/// Unloads expired models every [`REAP_INTERVAL`], for as long as the registry lives.
pub async fn reap_periodically(registry: std::sync::Weak<Registry>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(r) = registry.upgrade() else { return };
        r.reap();
    }
}

/// Serves `models` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    models: Arc<dyn Models>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, registry) = router(models, &config);
    let reaper = tokio::spawn(reap_periodically(Arc::downgrade(&registry)));
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    reaper.abort();
    result
}

/// `GET|HEAD /`: the liveness answer Ollama gives.
async fn root() -> &'static str {
    "Ollama is running"
}

/// Checks the API key (every route but `/`) and logs each request with its status and time.
async fn guard(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let open = path == "/" && (method == Method::GET || method == Method::HEAD);
    let response = match &state.api_key {
        Some(key) if !open && !authorized(&request, key) => {
            let flavor = if path.starts_with("/v1/") {
                Flavor::OpenAi
            } else {
                Flavor::Ollama
            };
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>` with the key the \
                 server was started with (--api-key / HOIST_API_KEY)",
            );
            e.code = Some("invalid_api_key");
            e.with_flavor(flavor).into_response()
        }
        _ => next.run(request).await,
    };
    tracing::info!(
        target: "hoist::serve",
        %method,
        path,
        status = response.status().as_u16(),
        ms = t0.elapsed().as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// Whether the request carries `Authorization: Bearer <key>`.
fn authorized(request: &Request, key: &str) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), key.as_bytes()))
}

/// Byte equality whose time does not depend on where the inputs differ (only on their
/// lengths), so that a client cannot find the key byte by byte from response times.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"s"));
        assert!(constant_time_eq(b"", b""));
    }
}
