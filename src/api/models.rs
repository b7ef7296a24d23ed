//! `GET /v1/models` and `GET /v1/models/{id}`: every configured model with its state.

use actix_web::{web, HttpRequest, HttpResponse};

use super::AppState;
use crate::config::ModelKind;
use crate::error::ApiError;
use crate::openai::models::{Capabilities, ModelList, ModelObject};
use crate::scheduler::registry::ModelSlot;

/// Mounts `/models` and `/models/{id}` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/models")
            .route(web::get().to(list_models))
            .default_service(web::to(super::only_get)),
    )
    .service(
        web::resource("/models/{id:.*}")
            .route(web::get().to(get_model))
            .default_service(web::to(super::only_get)),
    );
}

/// The `/v1/models` entry of a model.
pub fn model_object(state: &AppState, slot: &ModelSlot) -> ModelObject {
    let status = state.scheduler.pool().status(slot.index);
    ModelObject {
        id: slot.settings.name.clone(),
        object: "model".into(),
        created: state.started_at,
        owned_by: "llamagate".into(),
        status: status.status.into(),
        aliases: slot.settings.aliases.clone(),
        source: match &slot.settings.source {
            crate::config::ModelSource::File(_) => slot.settings.source.file_name(),
            hf => hf.to_string(),
        },
        engine: slot.settings.engine_kind().to_string(),
        engine_reason: slot.settings.engine_choice().1.to_string(),
        device: status.device.unwrap_or_else(|| slot.device_key.clone()),
        gpu_layers: status.gpu_layers.map(|(n, _)| n),
        layers: status.gpu_layers.map(|(_, all)| all),
        context_length: status
            .context_length
            .or(status.fitted_context.map(|(c, _)| c as usize)),
        context_source: match (status.fitted_context, slot.settings.context_length) {
            (Some(_), _) => Some("fitted".into()),
            (None, Some(_)) if status.context_length.is_some() => Some("configured".into()),
            (None, None) if status.context_length.is_some() => Some("trained".into()),
            _ => None,
        },
        trained_context_length: status.fitted_context.map(|(_, t)| t),
        downloaded_bytes: None,
        download_total_bytes: None,
        quantization: slot.file.quantization.clone(),
        size_bytes: slot.file.size_bytes,
        parameters: slot.file.parameters,
        memory_bytes: status.reserved_bytes,
        loaded_at: status.loaded_at.and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        }),
        pinned: slot.settings.pinned,
        draft: slot.settings.draft.clone(),
        upstreams: status
            .upstreams
            .into_iter()
            .map(|m| crate::openai::models::UpstreamObject {
                url: m.url,
                state: m.state.into(),
                outstanding: m.outstanding,
                weight: m.weight,
                ejected_for_secs: m.ejected_for_secs,
                last_error: m.last_error,
                requests: m.requests,
                failures: m.failures,
                ejections: m.ejections,
            })
            .collect(),
        error: status.error,
        capabilities: Capabilities {
            context_length: status.context_length,
            chat: slot.serves(ModelKind::Chat),
            embeddings: slot.serves(ModelKind::Embedding),
            embedding_length: if slot.serves(ModelKind::Embedding) {
                status.embedding_length.or(slot.file.embedding_length)
            } else {
                None
            },
            tools: slot.serves(ModelKind::Chat),
            json_schema: slot.serves(ModelKind::Chat),
            logprobs: slot.serves(ModelKind::Chat),
            vision: false,
            audio: false,
        },
    }
}

/// Lists every configured model.
#[utoipa::path(get, path = "/v1/models", tag = "models", responses((status = 200, body = ModelList), (status = 401, body = crate::error::ErrorEnvelope)))]
pub async fn list_models(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    // A named key with an allow-list sees only its models.
    let caller = super::middleware::caller(&req);
    let allowed = |id: &str| {
        caller
            .allowed_models()
            .is_none_or(|list| super::model_allowed(&state, list, id))
    };
    let mut data: Vec<ModelObject> = state
        .scheduler
        .registry()
        .slots()
        .iter()
        .filter(|s| allowed(&s.settings.name))
        .map(|s| model_object(&state, s))
        .collect();
    // Models being pulled into the models folder, not served yet.
    for (model, pull) in state.pulls.list() {
        if data.iter().any(|m| m.id == model) || !allowed(&model) {
            continue;
        }
        use std::sync::atomic::Ordering;
        data.push(ModelObject {
            id: model,
            object: "model".into(),
            created: state.started_at,
            owned_by: "llamagate".into(),
            status: "downloading".into(),
            source: pull.reference.clone(),
            downloaded_bytes: Some(pull.progress.done.load(Ordering::Relaxed)),
            download_total_bytes: Some(pull.progress.total.load(Ordering::Relaxed)),
            ..ModelObject::default()
        });
    }
    HttpResponse::Ok().json(ModelList {
        object: "list".into(),
        data,
    })
}

/// One model, by name or alias.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models", params(("id" = String, Path, description = "Model name or alias")),
    responses((status = 200, body = ModelObject), (status = 401, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope)))]
pub async fn get_model(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if let Some(list) = super::middleware::caller(&req).allowed_models() {
        if !super::model_allowed(&state, list, &id) {
            return Err(ApiError::ModelNotFound(id.into_inner()));
        }
    }
    let slot = state.scheduler.registry().resolve(&id)?;
    Ok(HttpResponse::Ok().json(model_object(&state, &slot)))
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(list_models, get_model), components(schemas(ModelList, ModelObject, Capabilities)), tags((name = "models")))]
pub struct ModelsApi;
