//! Errors as the two APIs shape them: Ollama's `{"error": "..."}` and OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use hoist_engine::EngineError;
use serde_json::json;

use crate::models::ModelsError;

/// Which API an error answers in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `{"error": "message"}`.
    Ollama,
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi,
}

/// An HTTP error with a message a client can act on.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// OpenAI's machine-readable `code` (`model_not_found`, …).
    pub code: Option<&'static str>,
    /// OpenAI's `param`: the request field at fault.
    pub param: Option<&'static str>,
    /// The shape of the body.
    pub flavor: Flavor,
}

impl ApiError {
    /// An error with `status` and `message`, in Ollama's shape.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            code: None,
            param: None,
            flavor: Flavor::Ollama,
        }
    }

    /// 400: the request is malformed or asks for something out of range.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 400 naming the request field `param` that is wrong (OpenAI's `error.param`).
    pub fn bad_param(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param),
            ..ApiError::bad_request(message)
        }
    }

    /// 400 for a feature hoist does not have yet, naming the request field.
    pub fn unsupported(param: &'static str, what: &str) -> ApiError {
        ApiError {
            param: Some(param),
            code: Some("unsupported"),
            ..ApiError::bad_request(format!(
                "{what} is not supported by hoist serve yet; leave `{param}` out"
            ))
        }
    }

    /// 404: no model by that name.
    pub fn model_not_found(name: &str) -> ApiError {
        ApiError {
            code: Some("model_not_found"),
            param: Some("model"),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                format!("model '{name}' not found; see /api/tags (or `hoist list`) for the models there are"),
            )
        }
    }

    /// 503: the model's queue is full.
    pub fn busy(name: &str, parallel: usize, queue_depth: usize) -> ApiError {
        let running = match parallel {
            1 => "a request".to_string(),
            n => format!("{n} requests"),
        };
        ApiError {
            code: Some("server_busy"),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "server busy: model '{name}' is running {running} and {queue_depth} more are \
                     queued; retry later (hoist serve --queue and --parallel raise the bounds)"
                ),
            )
        }
    }

    /// 500 for a failure inside the server.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The same error in `flavor`'s shape.
    pub fn with_flavor(mut self, flavor: Flavor) -> ApiError {
        self.flavor = flavor;
        self
    }

    /// The JSON body, in this error's shape.
    pub fn body(&self) -> serde_json::Value {
        match self.flavor {
            Flavor::Ollama => json!({ "error": self.message }),
            Flavor::OpenAi => json!({ "error": {
                "message": self.message,
                "type": self.openai_type(),
                "param": self.param,
                "code": self.code,
            }}),
        }
    }

    /// OpenAI's `type` for this status.
    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "server_overloaded",
            s if s >= 500 => "server_error",
            _ => "invalid_request_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The whole chain of an error's causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        let status = match &e {
            EngineError::EmptyPrompt
            | EngineError::PromptTooLong { .. }
            | EngineError::Sampling(_)
            | EngineError::NoTokensAsked => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let code = match &e {
            EngineError::PromptTooLong { .. } => Some("context_length_exceeded"),
            _ => None,
        };
        ApiError {
            code,
            ..ApiError::new(status, chain(&e))
        }
    }
}

impl From<ModelsError> for ApiError {
    fn from(e: ModelsError) -> ApiError {
        match &e {
            ModelsError::NotFound { name } => ApiError::model_not_found(name),
            ModelsError::Invalid { .. } => ApiError::bad_request(chain(&e)),
            ModelsError::Unsupported { .. } => {
                ApiError::new(StatusCode::NOT_IMPLEMENTED, chain(&e))
            }
            ModelsError::Other { .. } => ApiError::internal(chain(&e)),
        }
    }
}

/// A JSON body read whatever its `Content-Type` (Ollama accepts a bare `curl -d`), refused in
/// Ollama's error shape when it does not parse.
pub struct JsonBody<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_request(format!("invalid request body: {e}")).into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_differ_by_flavor() {
        let e = ApiError::model_not_found("x");
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert!(e.body()["error"].as_str().unwrap().contains("'x'"));
        let body = e.with_flavor(Flavor::OpenAi).body();
        assert_eq!(body["error"]["code"], "model_not_found");
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["type"], "not_found_error");
    }

    #[test]
    fn prompt_too_long_is_the_clients_fault() {
        let e = ApiError::from(EngineError::PromptTooLong {
            prompt_tokens: 10,
            context: 8,
        });
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, Some("context_length_exceeded"));
    }
}
