//! `GET /v1/models` and `GET /v1/models/{id}`: every configured model with its state.

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::error::ApiError;
use crate::openai::models::{ModelList, ModelObject};
use crate::scheduler::registry::ModelSlot;

/// Mounts the model routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/v1/models")
            .route(web::get().to(list_models))
            .default_service(web::to(super::method_not_allowed)),
    )
    .service(
        web::resource("/v1/models/{id:.*}")
            .route(web::get().to(get_model))
            .default_service(web::to(super::method_not_allowed)),
    );
}

fn model_object(slot: &ModelSlot, created: u64) -> ModelObject {
    let status = slot.status();
    ModelObject {
        id: slot.settings.name.clone(),
        object: "model".into(),
        created,
        owned_by: "llamagate".into(),
        status: status.status.into(),
        aliases: slot.settings.aliases.clone(),
        source: match &slot.settings.source {
            crate::config::ModelSource::File(_) => slot.settings.source.file_name(),
            hf => hf.to_string(),
        },
        device: status
            .device
            .unwrap_or_else(|| slot.settings.device.to_string()),
        context_length: status.context_length,
        error: status.error,
    }
}

/// Lists every configured model.
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(state: web::Data<AppState>) -> HttpResponse {
    let data = state
        .scheduler
        .registry()
        .slots()
        .iter()
        .map(|s| model_object(s, state.started_at))
        .collect();
    HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data,
    })
}

/// One model, by name or alias.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = ModelObject), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn get_model(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let slot = state.scheduler.registry().resolve(&id)?;
    Ok(HttpResponse::Ok().json(model_object(&slot, state.started_at)))
}
