//! The one error type of the HTTP API and its single rendering into OpenAI's envelope
//! `{"error":{"message","type","param","code"}}`, as an HTTP response or as an SSE event.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::engine::EngineError;
use crate::memory::ByteSize;
use crate::scheduler::SchedulerError;

/// Every way a request can fail, client mistakes and server conditions alike.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON or does not match the schema; `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        /// Human-readable explanation naming the field in backticks.
        message: String,
        /// The offending field, as a JSON path (`messages[0].content`).
        param: Option<String>,
        /// A specific machine-readable code, when there is one.
        code: Option<&'static str>,
    },
    /// No configured model has this name or alias.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// Prompt plus requested completion does not fit in the model's context window.
    #[error("{message}")]
    ContextLengthExceeded {
        /// Numbers included: context, prompt tokens, requested tokens.
        message: String,
        /// `messages` or `prompt`.
        param: &'static str,
    },
    /// The body is larger than the configured limit.
    #[error("Request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge {
        /// `server.max_body_bytes`.
        limit: usize,
    },
    /// The model's queue is full.
    #[error("Model `{model}` is at capacity: its queue of {queue_size} requests is full. Retry after {} s.", retry_after.as_secs())]
    QueueFull {
        /// Model name.
        model: String,
        /// Configured queue size.
        queue_size: usize,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// A named key is over one of its limits (`rpm`, `tpm`, `max_concurrent`, `daily_tokens`).
    #[error("Key `{key}` is over its limit of {value} {}. Retry after {} s.", limit_unit(limit), retry_after.as_secs().max(1))]
    KeyLimited {
        /// The key's name.
        key: String,
        /// The limit's setting name.
        limit: &'static str,
        /// Its value.
        value: u64,
        /// When a request would be admitted again.
        retry_after: Duration,
    },
    /// The request waited in the queue longer than the model's queue timeout.
    #[error("Request waited {} s in the queue of model `{model}` without getting a slot. Retry after {} s.", waited.as_secs(), retry_after.as_secs())]
    QueueTimeout {
        /// Model name.
        model: String,
        /// How long it waited.
        waited: Duration,
        /// Suggested wait.
        retry_after: Duration,
    },
    /// The model could not be loaded.
    #[error("Model `{model}` could not be loaded: {reason}")]
    ModelLoadFailed {
        /// Model name.
        model: String,
        /// The cause, without internal details.
        reason: String,
        /// When the next load attempt will be made.
        retry_after: Duration,
    },
    /// The model cannot fit in its device's memory budget, even with every other unpinned
    /// model unloaded.
    #[error("Model `{model}` needs an estimated {} but the {device} memory budget is {}{}. Raise the budget (scheduler.cpu_memory_budget / gpu_memory_budget), lower the model's context_length or max_concurrent, or unpin other models.", ByteSize(*needed), ByteSize(*budget), if *pinned > 0 { format!(" of which pinned models hold {}", ByteSize(*pinned)) } else { String::new() })]
    InsufficientMemory {
        /// Model name.
        model: String,
        /// Device key.
        device: String,
        /// Estimated footprint.
        needed: u64,
        /// The device's budget.
        budget: u64,
        /// Bytes held by pinned models.
        pinned: u64,
    },
    /// No key, or a wrong one, on a route that needs one.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// The route exists but not for this method.
    #[error("Method not allowed for this route; use {allow}.")]
    MethodNotAllowed {
        /// The methods the route takes (the `Allow` header).
        allow: &'static str,
    },
    /// The client did not send its whole request body in time (slow or stalled upload).
    #[error(
        "The request body was not received in time ({0}). Send the whole body without pausing."
    )]
    RequestTimeout(String),
    /// The request conflicts with the server's state (a model name already taken).
    #[error("{0}")]
    Conflict(String),
    /// No such route.
    #[error("Unknown request URL: {0}. Please check the URL for typos.")]
    RouteNotFound(String),
    /// A stored object (a response) that does not exist or has expired.
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// The field that named it, when a body field did.
        param: Option<String>,
    },
    /// The server is shutting down and takes no new work.
    #[error("The server is shutting down.")]
    ShuttingDown,
    /// The client closed the connection before the answer was ready (never delivered).
    #[error("The client closed the connection.")]
    ClientDisconnected,
    /// The engine failed; the message is safe to show (no paths, no panics).
    #[error("The model failed while generating: {0}")]
    Engine(String),
    /// The upstream server refused the request (its 4xx, passed on to the client).
    #[error("{message}")]
    UpstreamRejected {
        /// The upstream's status (400-499).
        status: u16,
        /// The upstream's message.
        message: String,
        /// The field it blamed.
        param: Option<String>,
        /// Its code, when it is one of OpenAI's well-known codes.
        code: Option<&'static str>,
        /// Suggested wait, for 429.
        retry_after: Option<Duration>,
    },
    /// The upstream server is unreachable or failed.
    #[error("The upstream server failed: {0}")]
    BadGateway(String),
    /// The upstream server did not answer in time.
    #[error("The upstream server did not answer in time: {0}")]
    GatewayTimeout(String),
    /// No server of an upstream pool can take the request now (circuit open).
    #[error("No upstream server can take the request now: {message}")]
    NoUpstream {
        /// Why.
        message: String,
        /// When a server may take requests again.
        retry_after: Duration,
    },
}

/// OpenAI's well-known error codes, as static strings (an upstream's code is kept only
/// when it is one of these).
pub fn known_error_code(code: &str) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "context_length_exceeded",
        "invalid_value",
        "invalid_type",
        "missing_required_parameter",
        "unsupported_parameter",
        "unsupported_value",
        "invalid_schema",
        "rate_limit_exceeded",
        "request_too_large",
        "invalid_json",
        "model_not_found",
        "invalid_prompt",
    ];
    KNOWN.iter().find(|k| **k == code).copied()
}

/// OpenAI's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// The body of OpenAI's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub message: String,
    /// Error class: `invalid_request_error`, `requests`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// Machine-readable code, if any.
    pub code: Option<&'static str>,
}

/// What a key limit counts, for its error message.
fn limit_unit(limit: &str) -> &'static str {
    match limit {
        "rpm" => "requests per minute (rpm)",
        "tpm" => "tokens per minute (tpm)",
        "max_concurrent" => "requests at once (max_concurrent)",
        "daily_tokens" => "tokens per UTC day (daily_tokens)",
        _ => "",
    }
}

impl ApiError {
    /// A 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// An engine failure, for a request whose prompt field is `param`.
    pub fn from_engine(e: EngineError, param: &'static str) -> Self {
        match e {
            EngineError::Rejected(message) => Self::invalid(param, message),
            EngineError::InvalidSchema(message) => Self::InvalidRequest {
                message: format!(
                    "The JSON schema (from `response_format` or `tools`) is not supported: {message}"
                ),
                param: Some("response_format".into()),
                code: Some("invalid_schema"),
            },
            EngineError::Load(m) | EngineError::Generation(m) => Self::Engine(m),
            EngineError::Unavailable => Self::Engine("the engine is not running".into()),
            EngineError::UpstreamRejected {
                status,
                message,
                param,
                code,
                retry_after,
            } => Self::UpstreamRejected {
                status,
                message,
                param,
                code: code.as_deref().and_then(known_error_code),
                retry_after: retry_after.map(Duration::from_secs),
            },
            EngineError::UpstreamUnavailable(m) => Self::BadGateway(m),
            EngineError::UpstreamTimeout(m) => Self::GatewayTimeout(m),
            EngineError::NoUpstream {
                message,
                retry_after,
            } => Self::NoUpstream {
                message,
                retry_after: Duration::from_secs(retry_after.max(1)),
            },
        }
    }

    /// A scheduler failure, for a request whose prompt field is `param` (`messages`,
    /// `prompt`): the one place where the scheduler's errors become HTTP.
    pub fn from_scheduler(e: SchedulerError, param: &'static str) -> Self {
        match e {
            SchedulerError::ModelNotFound(id) | SchedulerError::ModelRemoved(id) => {
                Self::ModelNotFound(id)
            }
            SchedulerError::QueueFull {
                model,
                queue_size,
                retry_after,
            } => Self::QueueFull {
                model,
                queue_size,
                retry_after,
            },
            SchedulerError::QueueTimeout {
                model,
                waited,
                retry_after,
            } => Self::QueueTimeout {
                model,
                waited,
                retry_after,
            },
            SchedulerError::ModelLoadFailed {
                model,
                reason,
                retry_after,
            } => Self::ModelLoadFailed {
                model,
                reason,
                retry_after,
            },
            SchedulerError::InsufficientMemory {
                model,
                device,
                needed,
                budget,
                pinned,
            } => Self::InsufficientMemory {
                model,
                device,
                needed,
                budget,
                pinned,
            },
            SchedulerError::ContextLengthExceeded {
                context,
                prompt_tokens,
                max_tokens,
            } => Self::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, you requested \
                     {} tokens ({prompt_tokens} in the {param}, {max_tokens} in the completion). \
                     Please reduce the length of the {param} or completion.",
                    prompt_tokens.saturating_add(max_tokens)
                ),
                param,
            },
            SchedulerError::WrongKind { model, serves } => Self::InvalidRequest {
                message: match serves {
                    crate::config::ModelKind::Embedding => format!(
                        "Model `{model}` is an embedding model: use it with /v1/embeddings, not for chat or completions."
                    ),
                    crate::config::ModelKind::Chat => format!(
                        "Model `{model}` is a chat model and does not make embeddings; use an embedding model (see /v1/models `capabilities`)."
                    ),
                },
                param: Some("model".into()),
                code: Some(match serves {
                    crate::config::ModelKind::Embedding => "model_not_chat_capable",
                    crate::config::ModelKind::Chat => "model_not_embedding_capable",
                }),
            },
            SchedulerError::Unsupported { param, message } => Self::InvalidRequest {
                message,
                param: Some(param.into()),
                code: Some("unsupported_value"),
            },
            SchedulerError::InputTooLong {
                index,
                tokens,
                limit,
            } => Self::InvalidRequest {
                message: format!(
                    "Input {index} has {tokens} tokens, but this model takes at most {limit} tokens per input. Shorten or split it."
                ),
                param: Some(format!("{param}[{index}]")),
                code: Some("context_length_exceeded"),
            },
            SchedulerError::InputRejected { index, error } => match Self::from_engine(error, param) {
                Self::InvalidRequest { message, code, .. } => Self::InvalidRequest {
                    message: format!("Input {index}: {message}"),
                    param: Some(format!("{param}[{index}]")),
                    code,
                },
                other => other,
            },
            SchedulerError::ShuttingDown => Self::ShuttingDown,
            SchedulerError::Engine(e) => Self::from_engine(e, param),
        }
    }

    /// The error's type, code and param, in one table.
    fn parts(
        &self,
    ) -> (
        StatusCode,
        &'static str,
        Option<&'static str>,
        Option<String>,
    ) {
        use ApiError::*;
        match self {
            InvalidRequest { param, code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                *code,
                param.clone(),
            ),
            ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("model_not_found"),
                Some("model".into()),
            ),
            ContextLengthExceeded { param, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("context_length_exceeded"),
                Some((*param).into()),
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
                None,
            ),
            QueueFull { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
                None,
            ),
            KeyLimited { limit, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                if limit.contains("tokens") || *limit == "tpm" {
                    "tokens"
                } else {
                    "requests"
                },
                Some("rate_limit_exceeded"),
                None,
            ),
            QueueTimeout { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("queue_timeout"),
                None,
            ),
            ModelLoadFailed { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("model_load_failed"),
                Some("model".into()),
            ),
            InsufficientMemory { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("insufficient_memory"),
                Some("model".into()),
            ),
            Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                None,
            ),
            Forbidden(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("forbidden"),
                None,
            ),
            Conflict(_) => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("conflict"),
                None,
            ),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                Some("method_not_allowed"),
                None,
            ),
            RequestTimeout(_) => (
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                Some("request_timeout"),
                None,
            ),
            RouteNotFound(_) => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("unknown_url"),
                None,
            ),
            NotFound { param, .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("not_found"),
                param.clone(),
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("shutting_down"),
                None,
            ),
            ClientDisconnected => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                Some("client_disconnected"),
                None,
            ),
            Engine(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                Some("engine_error"),
                None,
            ),
            UpstreamRejected {
                status,
                param,
                code,
                ..
            } => (
                StatusCode::from_u16(*status)
                    .ok()
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::BAD_REQUEST),
                if *status == 429 {
                    "requests"
                } else {
                    "invalid_request_error"
                },
                *code,
                param.clone(),
            ),
            BadGateway(_) => (
                StatusCode::BAD_GATEWAY,
                "server_error",
                Some("upstream_error"),
                None,
            ),
            GatewayTimeout(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                Some("upstream_timeout"),
                None,
            ),
            NoUpstream { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                Some("upstream_unavailable"),
                None,
            ),
        }
    }

    /// How long the client should wait before retrying, for overload errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::QueueFull { retry_after, .. }
            | Self::QueueTimeout { retry_after, .. }
            | Self::KeyLimited { retry_after, .. } => Some(*retry_after),
            Self::ModelLoadFailed { retry_after, .. } | Self::NoUpstream { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::ShuttingDown => Some(Duration::from_secs(5)),
            Self::UpstreamRejected { retry_after, .. } => *retry_after,
            Self::BadGateway(_) | Self::GatewayTimeout(_) => Some(Duration::from_secs(2)),
            _ => None,
        }
    }

    /// The envelope for this error.
    pub fn envelope(&self) -> ErrorEnvelope {
        let (_, kind, code, param) = self.parts();
        ErrorEnvelope {
            error: ErrorBody {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }

    /// The error as one SSE event, for failures after a stream has started.
    pub fn sse_event(&self) -> String {
        let json = serde_json::to_string(&self.envelope()).unwrap_or_else(|_| {
            r#"{"error":{"message":"internal error","type":"server_error","param":null,"code":null}}"#
                .to_string()
        });
        format!("data: {json}\n\n")
    }
}

/// For routes without a prompt (admin, models): their scheduler errors never concern one.
impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        Self::from_scheduler(e, "messages")
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.parts().0
    }

    fn error_response(&self) -> HttpResponse {
        self.response_with(&self.envelope())
    }
}

impl ApiError {
    /// The error's response (status, `Allow`, `WWW-Authenticate`, `Retry-After`, connection
    /// handling) with `body` as its JSON: one place for every API's envelope.
    fn response_with<T: Serialize>(&self, body: &T) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Self::MethodNotAllowed { allow } = self {
            response.insert_header((header::ALLOW, *allow));
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        if let Some(wait) = self.retry_after() {
            response.insert_header((header::RETRY_AFTER, wait.as_secs().max(1).to_string()));
        }
        if matches!(self, Self::RequestTimeout(_)) {
            // The rest of the body may still trickle in: the connection cannot be reused.
            response.force_close();
        }
        response.json(body)
    }

    /// Anthropic's error type for this error's status.
    pub fn anthropic_type(&self) -> &'static str {
        match self.status_code().as_u16() {
            400 | 405 | 409 | 422 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            408 | 504 => "timeout_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            502 | 503 => "overloaded_error",
            _ => "api_error",
        }
    }

    /// Anthropic's envelope for this error.
    pub fn anthropic_envelope(&self) -> AnthropicErrorEnvelope {
        AnthropicErrorEnvelope {
            kind: "error",
            error: AnthropicErrorBody {
                kind: self.anthropic_type(),
                message: self.to_string(),
            },
        }
    }

    /// The error as one Anthropic SSE `error` event, for failures after a stream started.
    pub fn anthropic_sse_event(&self) -> String {
        let json = serde_json::to_string(&self.anthropic_envelope()).unwrap_or_else(|_| {
            r#"{"type":"error","error":{"type":"api_error","message":"internal error"}}"#.into()
        });
        format!("event: error\ndata: {json}\n\n")
    }
}

/// Anthropic's error envelope `{"type":"error","error":{"type","message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicErrorEnvelope {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The error.
    pub error: AnthropicErrorBody,
}

/// The body of Anthropic's error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnthropicErrorBody {
    /// `invalid_request_error`, `authentication_error`, `not_found_error`,
    /// `rate_limit_error`, `overloaded_error`, `api_error`, ...
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What went wrong, for a person (naming the field at fault in backticks).
    pub message: String,
}

/// An [`ApiError`] answered in Anthropic's envelope: the error type of the Messages API's
/// handlers (same statuses and headers as the OpenAI routes).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AnthropicError(pub ApiError);

impl From<ApiError> for AnthropicError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl ResponseError for AnthropicError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.0.response_with(&self.0.anthropic_envelope())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_every_field() {
        let v = serde_json::to_value(ApiError::ModelNotFound("x".into()).envelope()).unwrap();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("`x`"));
        let v =
            serde_json::to_value(ApiError::MethodNotAllowed { allow: "GET" }.envelope()).unwrap();
        assert!(v["error"].get("param").unwrap().is_null());
    }

    #[test]
    fn anthropic_envelope_keeps_status_and_headers() {
        let e = AnthropicError(ApiError::QueueFull {
            model: "m".into(),
            queue_size: 1,
            retry_after: Duration::from_secs(3),
        });
        let r = e.error_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "3");
        let v = serde_json::to_value(e.0.anthropic_envelope()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        let v = serde_json::to_value(
            ApiError::invalid("max_tokens", "`max_tokens` is required.").anthropic_envelope(),
        )
        .unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(ApiError::Unauthorized("no".into())
            .anthropic_sse_event()
            .starts_with("event: error\ndata: {"));
    }

    #[test]
    fn overload_carries_retry_after() {
        let e = ApiError::QueueFull {
            model: "m".into(),
            queue_size: 1,
            retry_after: Duration::from_secs(3),
        };
        let r = e.error_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "3");
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let e = ApiError::Engine("boom".into()).sse_event();
        assert!(e.starts_with("data: {\"error\":"));
        assert!(e.ends_with("\n\n"));
    }
}
