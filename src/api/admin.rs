//! Admin endpoints: load or unload a model on demand, see memory use.
//! `POST /admin/models/{id}/load`, `POST /admin/models/{id}/unload`, `GET /admin/memory`.
//! Only loopback clients may call them until API keys exist.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::models::model_object;
use super::AppState;
use crate::error::ApiError;

/// Mounts the admin routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/models/{id:.*}/load")
            .route(web::post().to(load_model))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/admin/models/{id:.*}/unload")
            .route(web::post().to(unload_model))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/admin/memory")
            .route(web::get().to(memory))
            .default_service(web::to(super::method_not_allowed)),
    );
}

fn require_loopback(req: &HttpRequest) -> Result<(), ApiError> {
    match req.peer_addr() {
        Some(addr) if addr.ip().is_loopback() => Ok(()),
        _ => Err(ApiError::Forbidden(
            "admin endpoints answer only to clients on this machine".into(),
        )),
    }
}

/// Loads a model now and waits until it is ready.
#[utoipa::path(post, path = "/admin/models/{id}/load", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject), (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn load_model(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_loopback(&req)?;
    let slot = state.scheduler.registry().resolve(&id)?;
    state.scheduler.pool().load_now(slot.index).await?;
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// Unloads a model: at once when idle, after its running requests otherwise.
#[utoipa::path(post, path = "/admin/models/{id}/unload", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = crate::openai::models::ModelObject)))]
pub async fn unload_model(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_loopback(&req)?;
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
#[utoipa::path(get, path = "/admin/memory", responses((status = 200, body = Vec<DeviceMemoryReport>)))]
pub async fn memory(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_loopback(&req)?;
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
