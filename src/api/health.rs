//! `GET /health`: liveness, plus how many models are ready.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// Health report.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    pub status: &'static str,
    /// Models configured.
    pub models: usize,
    /// Models loaded and ready.
    pub models_ready: usize,
}

/// Mounts `/health` (as the `/health` scope's root).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::get().to(health))
            .default_service(web::to(super::only_get)),
    );
}

/// The server is up.
#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, body = Health), (status = 401, body = crate::error::ErrorEnvelope)))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let slots = state.scheduler.registry().slots();
    let pool = state.scheduler.pool();
    HttpResponse::Ok().json(Health {
        status: "ok",
        models: slots.len(),
        models_ready: slots
            .iter()
            .filter(|s| pool.status(s.index).status == "ready")
            .count(),
    })
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(health), components(schemas(Health)), tags((name = "health")))]
pub struct HealthApi;
