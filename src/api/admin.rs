//! Admin endpoints: load or unload a model on demand, see memory use.
//! `POST /admin/models/{id}/load`, `POST /admin/models/{id}/unload`, `GET /admin/memory`.
//! They need an admin key; without admin keys configured, only loopback clients may call them.

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::models::model_object;
use super::AppState;
use crate::error::ApiError;

/// Mounts the admin routes (inside the `/admin` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/models/{id:.*}/load")
            .route(web::post().to(load_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/models/{id:.*}/unload")
            .route(web::post().to(unload_model))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/memory")
            .route(web::get().to(memory))
            .default_service(web::to(super::only_get)),
    );
}

/// Loads a model now and waits until it is ready.
#[utoipa::path(post, path = "/admin/models/{id}/load", tag = "admin", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope), (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn load_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    state.scheduler.pool().load_now(slot.index).await?;
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// Unloads a model: at once when idle, after its running requests otherwise.
#[utoipa::path(post, path = "/admin/models/{id}/unload", tag = "admin", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 403, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn unload_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    state.scheduler.pool().unload_now(slot.index);
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// Memory budget and use of one device.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceMemoryReport {
    /// `cpu`, `cuda:0`, ...
    pub device: String,
    /// Bytes models may use.
    pub budget_bytes: u64,
    /// Bytes reserved by loaded models.
    pub used_bytes: u64,
}

/// Memory budgets and use.
#[utoipa::path(get, path = "/admin/memory", tag = "admin", responses((status = 200, body = Vec<DeviceMemoryReport>), (status = 401, body = crate::error::ErrorEnvelope), (status = 403, body = crate::error::ErrorEnvelope)))]
pub async fn memory(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let report: Vec<DeviceMemoryReport> = state
        .scheduler
        .pool()
        .memory()
        .into_iter()
        .map(|d| DeviceMemoryReport {
            device: d.device,
            budget_bytes: d.budget,
            used_bytes: d.used,
        })
        .collect();
    Ok(HttpResponse::Ok().json(report))
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(load_model, unload_model, memory), components(schemas(DeviceMemoryReport)), tags((name = "admin")))]
pub struct AdminApi;
