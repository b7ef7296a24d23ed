//! `GET /metrics`: Prometheus text format.

use actix_web::{web, HttpResponse};

use super::AppState;

/// Mounts `/metrics` (as the `/metrics` scope's root).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::get().to(metrics))
            .default_service(web::to(super::only_get)),
    );
}

/// Every metric, in Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 401, body = crate::error::ErrorEnvelope)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // Asking the GPUs' drivers for their memory may block: off the async threads.
    let scheduler = state.scheduler.clone();
    if web::block(move || scheduler.refresh_gauges())
        .await
        .is_err()
    {
        tracing::warn!("refreshing the gauges failed; serving the last values");
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(metrics), tags((name = "metrics")))]
pub struct MetricsApi;
