//! `POST /v1/completions`: legacy text completions. Each prompt of a list is its own
//! generation, run side by side as the model's sequence slots free up (the scheduler's
//! `start_many`); choice `i` of prompt `p` has index `p * n + i`.

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{render_events, sse_response, OpenAiEvents};
use super::{read_body, render_answer, AppState};
use crate::engine::forward::ForwardApi;
use crate::engine::Prompt;
use crate::error::ApiError;
use crate::openai::common::{new_id, unix_now};
use crate::openai::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
};
use crate::render::completions::{CompletionAnswer, CompletionMeta, CompletionRenderer};
use crate::validation::{parse_json, validate_completion};

/// Mounts `/completions` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/completions")
            .route(web::post().to(create_completion))
            .default_service(web::to(super::only_post)),
    );
}

/// Continues a text prompt (no chat template).
#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest, tag = "completions",
    responses(
        (status = 200, description = "A completion; with `stream: true` an SSE stream of `CompletionResponse` chunks ending with `data: [DONE]`",
            content((CompletionResponse = "application/json"), (String = "text/event-stream"))),
        (status = 401, body = crate::error::ErrorEnvelope),
        (status = 400, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 408, description = "The body was not sent in time (`server.body_timeout_secs`)", body = crate::error::ErrorEnvelope),
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_completion(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Generation).await?;
    if let Some(response) =
        super::forward::relay(&state, &req, &body, ForwardApi::Completions).await?
    {
        return Ok(response);
    }
    let request: CompletionRequest = parse_json(&body)?;
    let mut valid = validate_completion(request, &state.settings.limits)?;
    if let Some(key) = super::forward::header_affinity(&state, &req, &valid.model) {
        valid.sampling.affinity = Some(key);
    }
    let work = async {
        let n = valid.sampling.settings.n;
        let prompts = valid.prompts.iter().cloned().map(Prompt::Text).collect();
        let batch = state
            .scheduler
            .start_many(&valid.model, prompts, valid.sampling.clone())
            .await
            .map_err(|e| ApiError::from_scheduler(e, "prompt"))?;
        let model = batch.model.clone();
        for report in &batch.reports {
            super::middleware::attach_generation(&req, report.clone());
        }
        let meta = CompletionMeta {
            id: new_id("cmpl"),
            created: unix_now(),
            model: model.clone(),
            n,
            prompts: valid.prompts.clone(),
            echo: valid.echo,
            logprobs: valid.sampling.settings.logprobs,
            include_usage: valid.include_usage,
        };
        let events = batch.events.map(|(p, e)| {
            e.map(|event| (p, event))
                .map_err(|e| ApiError::from_scheduler(e, "prompt"))
        });
        if valid.stream {
            let events =
                render_events::<OpenAiEvents, _>(CompletionRenderer::new(meta), events, model);
            Ok(sse_response(&state, &req, events))
        } else {
            let meta = CompletionMeta {
                include_usage: true,
                ..meta
            };
            let renderer = CompletionRenderer::new(meta.clone());
            let answer = render_answer(renderer, CompletionAnswer::new(meta), events).await?;
            Ok(HttpResponse::Ok().json(answer))
        }
    };
    unless_client_gone(&req, work).await
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_completion), components(schemas(CompletionRequest, CompletionResponse, CompletionChoice, CompletionLogprobs)), tags((name = "completions")))]
pub struct CompletionsApi;
