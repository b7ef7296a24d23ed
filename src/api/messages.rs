//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API for
//! the clients that speak only it (the Anthropic SDKs, Claude Code). The request is
//! checked and turned into the same chat request as `/v1/chat/completions`, runs through
//! the same scheduler, and is rendered by [`MessagesRenderer`] — as one `Message` or as
//! Anthropic's named SSE events. Every error, the API-key check's included, is in
//! Anthropic's envelope on these routes.

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{render_events, sse_response, AnthropicEvents};
use super::{read_body, render_answer, AppState};
use crate::anthropic::messages::{
    BlockDelta, ContentBlock, CountTokensRequest, CountTokensResponse, DeltaUsage, Message,
    MessageDeltaBody, MessageUsage, MessagesRequest, StreamEvent,
};
use crate::engine::forward::ForwardApi;
use crate::error::{AnthropicError, ApiError};
use crate::render::messages::{MessageAnswer, MessageMeta, MessagesRenderer};
use crate::validation::anthropic::validate_messages;
use crate::validation::parse_json;

/// Mounts `/messages` and `/messages/count_tokens` (inside the `/v1/messages` scope's
/// parent: paths here are relative to `/v1/messages`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("")
            .route(web::post().to(create_message))
            .default_service(web::to(only_post)),
    )
    .service(
        web::resource("/count_tokens")
            .route(web::post().to(count_tokens))
            .default_service(web::to(only_post)),
    )
    .default_service(web::to(not_found));
}

async fn only_post() -> Result<HttpResponse, AnthropicError> {
    Err(ApiError::MethodNotAllowed { allow: "POST" }.into())
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, AnthropicError> {
    let path: String = req.path().chars().take(200).collect();
    Err(ApiError::RouteNotFound(format!("{} {path}", req.method())).into())
}

/// Creates a message (Anthropic's Messages API).
#[utoipa::path(post, path = "/v1/messages", request_body = MessagesRequest, tag = "messages",
    responses(
        (status = 200, description = "A `Message`; with `stream: true` Anthropic's SSE events (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`, `message_stop`, `ping`)",
            content((Message = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = crate::error::AnthropicErrorEnvelope), (status = 401, body = crate::error::AnthropicErrorEnvelope),
        (status = 404, body = crate::error::AnthropicErrorEnvelope),
        (status = 408, description = "The body was not sent in time (`server.body_timeout_secs`)", body = crate::error::AnthropicErrorEnvelope),
        (status = 413, body = crate::error::AnthropicErrorEnvelope), (status = 429, body = crate::error::AnthropicErrorEnvelope),
        (status = 503, body = crate::error::AnthropicErrorEnvelope)))]
pub async fn create_message(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AnthropicError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Generation).await?;
    if let Some(response) = super::forward::relay(&state, &req, &body, ForwardApi::Messages).await?
    {
        return Ok(response);
    }
    let request: MessagesRequest = parse_json(&body)?;
    let mut valid = validate_messages(
        request,
        &state.settings.limits,
        state.settings.server.strict_params,
    )?;
    if let Some(key) = super::forward::header_affinity(&state, &req, &valid.model) {
        valid.sampling.affinity = Some(key);
    }
    let stop_sequences = valid.sampling.settings.stop.clone();
    let work = async {
        let generation = state
            .scheduler
            .start(&valid.model, valid.prompt, valid.sampling)
            .await
            .map_err(|e| ApiError::from_scheduler(e, "messages"))?;
        super::middleware::attach_generation(&req, generation.report());
        let meta = MessageMeta {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            model: generation.model.clone(),
            input_tokens: generation.prompt_tokens,
            tools: generation.tool_syntax,
            thinking: generation.thinking,
            stop_sequences: stop_sequences.clone(),
        };
        let model = meta.model.clone();
        let events = generation.map(|e| e.map_err(|e| ApiError::from_engine(e, "messages")));
        let renderer = MessagesRenderer::new(meta);
        if valid.stream {
            let events = render_events::<AnthropicEvents, _>(renderer, events, model);
            Ok(sse_response(&state, &req, events))
        } else {
            let message = render_answer(renderer, MessageAnswer::new(), events).await?;
            Ok(HttpResponse::Ok().json(message))
        }
    };
    Ok(unless_client_gone(&req, work).await?)
}

/// Counts the tokens a Messages request's prompt takes (system, messages and tools, after
/// the chat template), without generating.
#[utoipa::path(post, path = "/v1/messages/count_tokens", request_body = CountTokensRequest, tag = "messages",
    responses(
        (status = 200, body = CountTokensResponse),
        (status = 400, body = crate::error::AnthropicErrorEnvelope), (status = 401, body = crate::error::AnthropicErrorEnvelope),
        (status = 404, body = crate::error::AnthropicErrorEnvelope), (status = 429, body = crate::error::AnthropicErrorEnvelope),
        (status = 503, body = crate::error::AnthropicErrorEnvelope)))]
pub async fn count_tokens(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, AnthropicError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Counting).await?;
    let request: CountTokensRequest = parse_json(&body)?;
    let as_message = MessagesRequest {
        model: request.model,
        max_tokens: Some(1),
        messages: request.messages,
        system: request.system,
        temperature: None,
        top_p: None,
        top_k: None,
        stop_sequences: None,
        stream: None,
        tools: request.tools,
        tool_choice: request.tool_choice,
        thinking: request.thinking,
        metadata: None,
        service_tier: None,
        container: None,
        mcp_servers: None,
        output_config: None,
        cache_control: None,
        speed: None,
    };
    let valid = validate_messages(as_message, &state.settings.limits, true)?;
    let work = async {
        let (_, input_tokens) = state
            .scheduler
            .count_tokens(&valid.model, &valid.prompt)
            .await
            .map_err(|e| ApiError::from_scheduler(e, "messages"))?;
        Ok(HttpResponse::Ok().json(CountTokensResponse { input_tokens }))
    };
    Ok(unless_client_gone(&req, work).await?)
}

/// The OpenAPI description of these resources.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_message, count_tokens), components(schemas(MessagesRequest, Message, ContentBlock, MessageUsage, StreamEvent, BlockDelta, MessageDeltaBody, DeltaUsage, CountTokensRequest, CountTokensResponse, crate::error::AnthropicErrorEnvelope, crate::error::AnthropicErrorBody)), tags((name = "messages")))]
pub struct MessagesApi;
