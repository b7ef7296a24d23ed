//! `POST /v1/completions`: legacy text completions. Each prompt of a list is its own
//! generation, run side by side as the model's sequence slots free up (the scheduler's
//! `start_many`); choice `i` of prompt `p` has index `p * n + i`.

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{data_event, sse_response, DONE_EVENT};
use super::{read_body, AppState};
use crate::engine::{Prompt, TokenEvent};
use crate::error::ApiError;
use crate::openai::common::{new_id, unix_now};
use crate::openai::completions::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
};
use crate::render::completions::{CompletionAnswer, CompletionMeta, CompletionRenderer};
use crate::scheduler::SchedulerError;
use crate::validation::{parse_json, validate_completion};

/// Mounts `/completions` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/completions")
            .route(web::post().to(create_completion))
            .default_service(web::to(super::only_post)),
    );
}

type Tagged = (usize, Result<TokenEvent, SchedulerError>);

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
    let body = read_body(&state, &req, payload).await?;
    let request: CompletionRequest = parse_json(&body)?;
    let valid = validate_completion(request, &state.settings.limits)?;
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
            model,
            n,
            prompts: valid.prompts.clone(),
            echo: valid.echo,
            logprobs: valid.sampling.settings.logprobs,
            include_usage: valid.include_usage,
        };
        if valid.stream {
            Ok(sse_response(
                &state,
                &req,
                stream_chunks(batch.events, meta),
            ))
        } else {
            Ok(HttpResponse::Ok().json(collect(batch.events, meta).await?))
        }
    };
    unless_client_gone(&req, work).await
}

/// The non-streamed answer: the stream's chunks, folded.
async fn collect(
    mut events: impl futures::Stream<Item = Tagged> + Unpin,
    meta: CompletionMeta,
) -> Result<CompletionResponse, ApiError> {
    let meta = CompletionMeta {
        include_usage: true,
        ..meta
    };
    let mut renderer = CompletionRenderer::new(meta.clone());
    let mut answer = CompletionAnswer::new(meta);
    for chunk in renderer.start() {
        answer.absorb(chunk);
    }
    while let Some((p, event)) = events.next().await {
        let event = event.map_err(|e| ApiError::from_scheduler(e, "prompt"))?;
        for chunk in renderer.push(p, event) {
            answer.absorb(chunk);
        }
    }
    answer
        .finish()
        .ok_or_else(|| ApiError::Engine("the generation ended early".into()))
}

/// The streamed answer: the renderer's chunks as SSE events, then `data: [DONE]` once
/// every generation ended; a failure becomes an error event.
fn stream_chunks(
    mut events: impl futures::Stream<Item = Tagged> + Unpin + 'static,
    meta: CompletionMeta,
) -> impl futures::Stream<Item = String> {
    let model = meta.model.clone();
    let mut renderer = CompletionRenderer::new(meta);
    async_stream::stream! {
        for chunk in renderer.start() {
            yield data_event(&chunk);
        }
        while let Some((p, event)) = events.next().await {
            match event {
                Ok(event) => {
                    for chunk in renderer.push(p, event) {
                        yield data_event(&chunk);
                    }
                    if renderer.complete() {
                        yield DONE_EVENT.to_string();
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %model, error = %e, "generation failed mid-stream");
                    yield ApiError::from_scheduler(e, "prompt").sse_event();
                    return;
                }
            }
        }
        yield ApiError::Engine("the generation ended early".into()).sse_event();
    }
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_completion), components(schemas(CompletionRequest, CompletionResponse, CompletionChoice, CompletionLogprobs)), tags((name = "completions")))]
pub struct CompletionsApi;
