//! The HTTP API: one module per resource, each with `configure`, mounted here. Handlers
//! parse and validate, then hand over to the scheduler; they never touch an engine.

pub mod admin;
pub mod chat;
pub mod completions;
pub mod disconnect;
pub mod docs;
pub mod health;
pub mod metrics;
pub mod middleware;
pub mod models;
pub mod openapi;
pub mod sse;
pub mod ui;

use std::sync::Arc;

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
}

/// Mounts every resource.
pub fn configure(cfg: &mut web::ServiceConfig) {
    chat::configure(cfg);
    admin::configure(cfg);
    completions::configure(cfg);
    models::configure(cfg);
    health::configure(cfg);
    metrics::configure(cfg);
    docs::configure(cfg);
    ui::configure(cfg);
}

/// Reads a request body, refusing with 413 as soon as it passes `limit` bytes.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
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

/// Unknown routes answer in OpenAI's envelope.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path: String = req.path().chars().take(200).collect();
    Err(ApiError::RouteNotFound(format!("{} {path}", req.method())))
}

/// Known GET routes asked with another method.
pub async fn only_get() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "GET" })
}

/// Known POST routes asked with another method.
pub async fn only_post() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow: "POST" })
}
