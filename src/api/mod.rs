//! The HTTP API: one module per resource, each with `configure`, mounted here inside the
//! scope of its access group ([`middleware::require`]): a route is protected by where it
//! is mounted, whatever spelling of its path the router accepts. Handlers parse and
//! validate, then hand over to the scheduler; they never touch an engine.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod disconnect;
pub mod docs;
pub mod embeddings;
pub mod forward;
pub mod health;
pub mod keys;
pub mod messages;
pub mod metrics;
pub mod middleware;
pub mod models;
pub mod openapi;
pub mod response_store;
pub mod responses;
pub mod sse;
pub mod ui;

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use crate::config::Settings;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The settings the server started with.
    pub settings: Arc<Settings>,
    /// Routes and runs generations.
    pub scheduler: Arc<Scheduler>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Unix seconds at start-up (`created` of models).
    pub started_at: u64,
    /// API keys and route rules.
    pub keys: Arc<crate::auth::KeyRing>,
    /// Usage per key and model, and the keys made at run time, kept across restarts.
    pub usage: Arc<crate::usage::UsageStore>,
    /// Responses kept for `previous_response_id` and `GET /v1/responses/{id}`.
    pub responses: Arc<response_store::ResponseStore>,
    /// Model pulls in progress.
    pub pulls: Arc<crate::pull::Pulls>,
}

/// Mounts every resource, each inside the scope whose access rule it follows. Unmatched
/// paths inside a scope still meet the scope's rule, then answer 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use middleware::{
        require, AdminRoutes, ApiRoutes, DocsRoutes, HealthRoutes, MessagesRoutes, MetricsRoutes,
        UiRoutes,
    };
    // Before `/v1`: Anthropic's routes answer every error, the key check's too, in
    // Anthropic's envelope.
    cfg.service(
        web::scope("/v1/messages")
            .configure(messages::configure)
            .wrap(from_fn(require::<MessagesRoutes, _>)),
    )
    .service(
        web::scope("/v1")
            .configure(chat::configure)
            .configure(completions::configure)
            .configure(embeddings::configure)
            .configure(responses::configure)
            .configure(models::configure)
            .wrap(from_fn(require::<ApiRoutes, _>)),
    )
    .service(
        web::scope("/admin")
            .configure(admin::configure)
            .configure(keys::configure)
            .wrap(from_fn(require::<AdminRoutes, _>)),
    )
    .service(
        web::scope("/metrics")
            .configure(metrics::configure)
            .wrap(from_fn(require::<MetricsRoutes, _>)),
    )
    .service(
        web::scope("/health")
            .configure(health::configure)
            .wrap(from_fn(require::<HealthRoutes, _>)),
    )
    .service(
        web::scope("/docs")
            .configure(docs::configure)
            .wrap(from_fn(require::<DocsRoutes, _>)),
    )
    .service(
        web::resource("/openapi.json")
            .route(web::get().to(openapi::openapi_json))
            .default_service(web::to(only_get))
            .wrap(from_fn(require::<DocsRoutes, _>)),
    )
    .service(
        web::resource("/")
            .route(web::get().to(ui::page))
            .default_service(web::to(only_get))
            .wrap(from_fn(require::<UiRoutes, _>)),
    );
}

/// Reads a request body, refusing with 413 as soon as it passes `server.max_body_bytes`,
/// and with 408 (closing the connection) when it does not arrive within
/// `server.body_timeout_secs` or pauses longer than `server.body_idle_timeout_secs`.
///
/// Then the caller's named key has its say: a `model` outside its allow-list is a 404
/// (as for a model that does not exist), and the request's tokens are reserved against
/// its `tpm` and `daily_tokens` as `usage` estimates them.
pub async fn read_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
    usage: BodyUse,
) -> Result<web::Bytes, ApiError> {
    let server = &state.settings.server;
    let total = std::time::Duration::from_secs(server.body_timeout_secs.max(1));
    let idle = std::time::Duration::from_secs(server.body_idle_timeout_secs.max(1));
    let body = read_body_within(req, payload, server.max_body_bytes, total, idle)
        .await
        .inspect_err(|e| {
            if matches!(e, ApiError::RequestTimeout(_)) {
                state
                    .metrics
                    .client_timeouts
                    .with_label_values(&["body"])
                    .inc();
            }
        })?;
    let caller = middleware::caller(req);
    if let Some(allowed) = caller.allowed_models() {
        #[derive(serde::Deserialize)]
        struct Peek {
            model: Option<serde_json::Value>,
        }
        let model = serde_json::from_slice::<Peek>(&body)
            .ok()
            .and_then(|p| p.model?.as_str().map(str::to_string));
        if let Some(model) = model {
            if !model_allowed(state, allowed, &model) {
                return Err(ApiError::ModelNotFound(model));
            }
        }
    }
    if let Some(estimate) = usage.estimate(&body) {
        middleware::reserve_tokens(req, estimate)?;
    }
    Ok(body)
}

/// What a request's body is for, to estimate the tokens it will use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    /// A generation: its prompt and its `max_tokens` (or the rest of the budget).
    Generation,
    /// Embeddings: its input only.
    Input,
    /// Counting tokens: none.
    Counting,
}

impl BodyUse {
    /// `None`: reserve nothing; `Some(None)`: the rest of the budget; `Some(Some(n))`: `n`.
    fn estimate(self, body: &[u8]) -> Option<Option<u64>> {
        // A token is at least a byte or so of the prompt's text; JSON adds more bytes.
        let prompt = (body.len() as u64).div_ceil(3);
        match self {
            Self::Counting => None,
            Self::Input => Some(Some(prompt)),
            Self::Generation => {
                let value: serde_json::Value = serde_json::from_slice(body).ok()?;
                let most = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                    .iter()
                    .filter_map(|k| value.get(*k)?.as_u64())
                    .min();
                let choices = value
                    .get("n")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(1);
                // Legacy completions take a list of prompts, each answered.
                let prompts = match value.get("prompt") {
                    Some(serde_json::Value::Array(items))
                        if items.first().is_some_and(|i| i.is_string() || i.is_array()) =>
                    {
                        items.len() as u64
                    }
                    _ => 1,
                };
                Some(
                    most.map(|m| prompt + m.saturating_mul(choices.max(1)).saturating_mul(prompts)),
                )
            }
        }
    }
}

/// Whether `model` is in the allow-list: named there, or the same model as one named
/// there (an alias of it).
pub fn model_allowed(state: &AppState, allowed: &[String], model: &str) -> bool {
    if allowed.iter().any(|a| a == model) {
        return true;
    }
    let registry = state.scheduler.registry();
    let Ok(wanted) = registry.resolve(model) else {
        return false;
    };
    allowed.iter().any(|a| {
        registry
            .resolve(a)
            .is_ok_and(|slot| slot.settings.name == wanted.settings.name)
    })
}

async fn read_body_within(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    total: std::time::Duration,
    idle: std::time::Duration,
) -> Result<web::Bytes, ApiError> {
    let deadline = tokio::time::Instant::now() + total;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    loop {
        let next = deadline.min(tokio::time::Instant::now() + idle);
        let chunk = match tokio::time::timeout_at(next, payload.next()).await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(_) if next == deadline => {
                return Err(ApiError::RequestTimeout(format!(
                    "{} bytes in {} s",
                    body.len(),
                    total.as_secs()
                )))
            }
            Err(_) => {
                return Err(ApiError::RequestTimeout(format!(
                    "nothing for {} s after {} bytes",
                    idle.as_secs(),
                    body.len()
                )))
            }
        };
        let chunk = chunk.map_err(|e| ApiError::InvalidRequest {
            message: format!("The request body could not be read: {e}"),
            param: None,
            code: Some("invalid_body"),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The non-streamed answer: `renderer`'s chunks for `events`, folded into `answer`
/// (a renderer and fold built with the usage chunk on).
pub async fn render_answer<R, F>(
    mut renderer: R,
    mut answer: F,
    mut events: impl futures::Stream<Item = Result<R::Input, ApiError>> + Unpin,
) -> Result<F::Answer, ApiError>
where
    R: crate::render::Renderer,
    F: crate::render::Fold<Chunk = R::Chunk>,
{
    for chunk in renderer.start() {
        answer.absorb(chunk);
    }
    while let Some(input) = events.next().await {
        for chunk in renderer.push(input?) {
            answer.absorb(chunk);
        }
    }
    answer
        .finish()
        .ok_or_else(|| ApiError::Engine("the generation ended early".into()))
}

/// Unknown routes answer in OpenAI's envelope.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path: String = req.path().chars().take(200).collect();
    Err(ApiError::RouteNotFound(format!("{} {path}", req.method())))
}

/// Known GET routes asked with another method.
pub async fn only_get() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "GET" })
}

/// Known GET and POST routes asked with another method.
pub async fn only_get_or_post() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "GET, POST" })
}

/// Known DELETE routes asked with another method.
pub async fn only_delete() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "DELETE" })
}

/// Known POST routes asked with another method.
pub async fn only_post() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "POST" })
}
