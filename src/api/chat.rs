//! `POST /v1/chat/completions`: validates, starts a generation through the scheduler and
//! renders it as one JSON body or as SSE chunks (role chunk, content chunks, a final chunk
//! with `finish_reason` per choice, an optional usage chunk, then `data: [DONE]`).

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{render_events, sse_response, OpenAiEvents};
use super::{read_body, render_answer, AppState};
use crate::engine::forward::ForwardApi;
use crate::error::ApiError;
use crate::openai::chat::{
    AssistantMessage, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatTokenLogprob, FunctionCall, ToolCall,
};
use crate::openai::common::{new_id, unix_now, Usage};
use crate::render::chat::{ChatAnswer, ChatMeta, ChatRenderer};
use crate::validation::{parse_json, validate_chat};

/// Mounts `/chat/completions` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/chat/completions")
            .route(web::post().to(create_chat_completion))
            .default_service(web::to(super::only_post)),
    );
}

/// Creates a model response for the conversation.
#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest, tag = "chat",
    responses(
        (status = 200, description = "A completion; with `stream: true` an SSE stream of `ChatCompletionChunk` events ending with `data: [DONE]`",
            content((ChatCompletionResponse = "application/json"), (String = "text/event-stream"))),
        (status = 401, body = crate::error::ErrorEnvelope),
        (status = 400, body = crate::error::ErrorEnvelope), (status = 404, body = crate::error::ErrorEnvelope),
        (status = 408, description = "The body was not sent in time (`server.body_timeout_secs`)", body = crate::error::ErrorEnvelope),
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_chat_completion(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Generation).await?;
    if let Some(response) =
        super::forward::relay(&state, &req, &body, ForwardApi::ChatCompletions).await?
    {
        return Ok(response);
    }
    let request: ChatCompletionRequest = parse_json(&body)?;
    let mut valid = validate_chat(
        request,
        &state.settings.limits,
        state.settings.server.strict_params,
    )?;
    if let Some(key) = super::forward::header_affinity(&state, &req, &valid.model) {
        valid.sampling.affinity = Some(key);
    }
    let n = valid.sampling.settings.n;
    let logprobs = valid.sampling.settings.logprobs;
    let ignored = valid.ignored_params.join(",");
    let work = async {
        let generation = state
            .scheduler
            .start(&valid.model, valid.prompt, valid.sampling)
            .await
            .map_err(|e| ApiError::from_scheduler(e, "messages"))?;
        super::middleware::attach_generation(&req, generation.report());
        let meta = ChatMeta {
            id: new_id("chatcmpl"),
            created: unix_now(),
            model: generation.model.clone(),
            n,
            tools: generation.tool_syntax,
            logprobs,
            include_usage: valid.include_usage,
            thinking: generation.thinking,
        };
        let model = meta.model.clone();
        let events = generation.map(|e| e.map_err(|e| ApiError::from_engine(e, "messages")));
        let mut response = if valid.stream {
            let events = render_events::<OpenAiEvents, _>(ChatRenderer::new(meta), events, model);
            sse_response(&state, &req, events)
        } else {
            let meta = ChatMeta {
                include_usage: true,
                ..meta
            };
            let (renderer, answer) = (ChatRenderer::new(meta.clone()), ChatAnswer::new(meta));
            HttpResponse::Ok().json(render_answer(renderer, answer, events).await?)
        };
        if !ignored.is_empty() {
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&ignored) {
                response.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("x-llamagate-ignored-params"),
                    v,
                );
            }
        }
        Ok(response)
    };
    unless_client_gone(&req, work).await
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_chat_completion), components(schemas(ChatCompletionRequest, crate::openai::chat::ChatMessage, crate::openai::chat::ChatRole, crate::openai::common::StreamOptions, ChatCompletionResponse, crate::openai::chat::ChatChoice, AssistantMessage, ChatLogprobs, ChatTokenLogprob, crate::openai::chat::ChatTopLogprob, ToolCall, FunctionCall, ChatCompletionChunk, ChatChunkChoice, ChatDelta, crate::openai::chat::ToolCallDelta, crate::openai::chat::FunctionCallDelta, Usage)), tags((name = "chat")))]
pub struct ChatApi;
