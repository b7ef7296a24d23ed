//! `POST /v1/embeddings`: OpenAI's embeddings endpoint, served by embedding models (see
//! `capabilities` in `/v1/models`) through the same scheduler as chat: routing, queue,
//! 429, memory budget, load on demand, cancel on disconnect.

use actix_web::{web, HttpRequest, HttpResponse};

use super::disconnect::unless_client_gone;
use super::{read_body, AppState};
use crate::engine::forward::ForwardApi;
use crate::error::ApiError;
use crate::openai::embeddings::{
    EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
};
use crate::validation::{parse_json, validate_embedding};

/// Mounts `/embeddings` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/embeddings")
            .route(web::post().to(create_embedding))
            .default_service(web::to(super::only_post)),
    );
}

/// Embeds one input or many; vectors are L2-normalised unless the model says otherwise.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest, tag = "embeddings",
    responses(
        (status = 200, description = "One embedding per input, in input order", body = EmbeddingResponse),
        (status = 401, body = crate::error::ErrorEnvelope),
        (status = 400, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 408, description = "The body was not sent in time (`server.body_timeout_secs`)", body = crate::error::ErrorEnvelope),
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_embedding(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Input).await?;
    if let Some(response) =
        super::forward::relay(&state, &req, &body, ForwardApi::Embeddings).await?
    {
        return Ok(response);
    }
    let request: EmbeddingRequest = parse_json(&body)?;
    let valid = validate_embedding(request, &state.settings.limits)?;
    let work = async {
        let outcome = state
            .scheduler
            .embed(&valid.model, valid.inputs, valid.dimensions)
            .await
            .map_err(|e| ApiError::from_scheduler(e, "input"))?;
        super::middleware::attach_generation(&req, outcome.report.clone());
        let answer = crate::render::embeddings::render(
            &outcome.model,
            outcome.vectors,
            outcome.prompt_tokens,
            valid.base64,
        );
        Ok(HttpResponse::Ok().json(answer))
    };
    unless_client_gone(&req, work).await
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_embedding), components(schemas(EmbeddingRequest, EmbeddingResponse, EmbeddingData, EmbeddingUsage)), tags((name = "embeddings")))]
pub struct EmbeddingsApi;
