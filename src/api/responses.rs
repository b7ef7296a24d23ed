//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}`: OpenAI's Responses API for
//! the clients that speak only it (Codex CLI, the Agents SDK). The request is checked and
//! turned into the same chat request as `/v1/chat/completions` (continuing a stored
//! conversation with `previous_response_id`), runs through the same scheduler, and is
//! rendered by [`ResponsesRenderer`] as one response object or as its named SSE events.
//! With `store` (the default) the response is kept in the [`ResponseStore`].

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::response_store::{ResponseStore, Stored};
use super::sse::{render_events, sse_response, ResponsesEvents};
use super::{read_body, render_answer, AppState};
use crate::engine::forward::ForwardApi;
use crate::engine::{ChatTurn, Role};
use crate::error::ApiError;
use crate::openai::common::unix_now;
use crate::openai::responses::{
    OutputItem, OutputText, ResponseDeleted, ResponseEvent, ResponseEventBody, ResponseObject,
    ResponseRequest, ResponseUsage,
};
use crate::render::responses::{ResponseAnswer, ResponseMeta, ResponsesRenderer};
use crate::render::Renderer;
use crate::validation::parse_json;
use crate::validation::responses::{validate_response, Conversation};

/// Mounts `/responses` and `/responses/{id}` (inside the `/v1` scope).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/responses")
            .route(web::post().to(create_response))
            .default_service(web::to(super::only_post)),
    )
    .service(
        web::resource("/responses/{id}")
            .route(web::get().to(get_response))
            .route(web::delete().to(delete_response))
            .default_service(web::to(only_get_delete)),
    );
}

async fn only_get_delete() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed {
        allow: "GET, DELETE",
    })
}

fn not_found(id: &str, param: Option<&str>) -> ApiError {
    let id: String = id.chars().take(128).collect();
    ApiError::NotFound {
        message: format!(
            "No response with id '{id}' (it may have expired; responses are kept in memory)."
        ),
        param: param.map(str::to_string),
    }
}

/// The conversation a response ends: the turns before it and its output as the
/// assistant's turn.
fn with_output(mut conversation: Conversation, response: &ResponseObject) -> Conversation {
    for item in &response.output {
        match item {
            OutputItem::Message { content, .. } => conversation.turns.push(ChatTurn::new(
                Role::Assistant,
                content.iter().map(|p| p.text.as_str()).collect(),
            )),
            // Earlier thinking is not part of the visible conversation.
            OutputItem::Reasoning { .. } => {}
            OutputItem::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => {
                let arguments = crate::validation::call_arguments(&serde_json::Value::String(
                    arguments.clone(),
                ));
                conversation.add_call(call_id, name, arguments);
            }
        }
    }
    conversation
}

/// A renderer that stores the response its last event carries.
struct Storing {
    inner: ResponsesRenderer,
    store: Option<(Arc<ResponseStore>, Conversation)>,
}

impl Storing {
    fn keep(&mut self, events: &[ResponseEvent]) {
        for event in events {
            if let ResponseEventBody::Completed { response }
            | ResponseEventBody::Incomplete { response } = &event.body
            {
                if let Some((store, conversation)) = self.store.take() {
                    store.put(Stored {
                        response: response.clone(),
                        conversation: with_output(conversation, response),
                    });
                }
            }
        }
    }
}

impl Renderer for Storing {
    type Input = crate::engine::TokenEvent;
    type Chunk = ResponseEvent;

    fn start(&mut self) -> Vec<ResponseEvent> {
        self.inner.start()
    }

    fn push(&mut self, input: Self::Input) -> Vec<ResponseEvent> {
        let events = self.inner.push(input);
        self.keep(&events);
        events
    }

    fn complete(&self) -> bool {
        self.inner.complete()
    }
}

/// Creates a model response (OpenAI's Responses API).
#[utoipa::path(post, path = "/v1/responses", request_body = ResponseRequest, tag = "responses",
    responses(
        (status = 200, description = "A response object; with `stream: true` its SSE events (`response.created` … `response.completed`), each with a `sequence_number`",
            content((ResponseObject = "application/json"), (String = "text/event-stream"))),
        (status = 401, body = crate::error::ErrorEnvelope),
        (status = 400, body = crate::error::ErrorEnvelope),
        (status = 404, description = "Unknown model, or `previous_response_id` not stored", body = crate::error::ErrorEnvelope),
        (status = 408, description = "The body was not sent in time (`server.body_timeout_secs`)", body = crate::error::ErrorEnvelope),
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_response(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload, super::BodyUse::Generation).await?;
    if let Some(response) =
        super::forward::relay(&state, &req, &body, ForwardApi::Responses).await?
    {
        return Ok(response);
    }
    let request: ResponseRequest = parse_json(&body)?;
    let previous = match request.previous_response_id.as_deref() {
        None => None,
        Some(id) => Some(
            state
                .responses
                .get(id)
                .ok_or_else(|| not_found(id, Some("previous_response_id")))?
                .conversation,
        ),
    };
    let mut valid = validate_response(&request, &state.settings.limits, previous)?;
    if let Some(key) = super::forward::header_affinity(&state, &req, &valid.chat.model) {
        valid.chat.sampling.affinity = Some(key);
    }
    let work = async {
        let generation = state
            .scheduler
            .start(
                &valid.chat.model,
                valid.chat.prompt.clone(),
                valid.chat.sampling.clone(),
            )
            .await
            .map_err(|e| ApiError::from_scheduler(e, "input"))?;
        super::middleware::attach_generation(&req, generation.report());
        let generation_thinking = generation.thinking;
        let tool_syntax = generation.tool_syntax;
        let sampling = &valid.chat.sampling.settings;
        let response = ResponseObject {
            id: format!("resp_{}", uuid::Uuid::new_v4().simple()),
            object: "response".into(),
            created_at: unix_now(),
            status: "in_progress".into(),
            error: None,
            incomplete_details: None,
            instructions: request.instructions.clone(),
            max_output_tokens: valid.chat.sampling.max_tokens,
            model: generation.model.clone(),
            output: Vec::new(),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            previous_response_id: request.previous_response_id.clone(),
            reasoning: serde_json::json!({
                "effort": request.reasoning.as_ref().and_then(|r| r.get("effort")).cloned(),
                "summary": null
            }),
            store: valid.store,
            temperature: sampling.temperature,
            text: valid.text.clone(),
            tool_choice: valid.tool_choice.clone(),
            tools: valid.tools.clone(),
            top_p: sampling.top_p,
            truncation: "disabled".into(),
            usage: None::<ResponseUsage>,
            user: request.user.clone(),
            metadata: request
                .metadata
                .clone()
                .filter(|m| m.is_object())
                .unwrap_or_else(|| serde_json::json!({})),
        };
        let model = response.model.clone();
        let events = generation.map(|e| e.map_err(|e| ApiError::from_engine(e, "input")));
        let renderer = Storing {
            inner: ResponsesRenderer::new(ResponseMeta {
                response,
                tools: tool_syntax,
                thinking: generation_thinking,
            }),
            store: valid
                .store
                .then(|| (state.responses.clone(), valid.conversation.clone())),
        };
        if valid.chat.stream {
            let events = render_events::<ResponsesEvents, _>(renderer, events, model);
            Ok(sse_response(&state, &req, events))
        } else {
            let answer = render_answer(renderer, ResponseAnswer::new(), events).await?;
            Ok(HttpResponse::Ok().json(answer))
        }
    };
    unless_client_gone(&req, work).await
}

/// A stored response.
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "responses",
    params(("id" = String, Path, description = "The response's id")),
    responses((status = 200, body = ResponseObject), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 404, description = "Not stored (or expired)", body = crate::error::ErrorEnvelope)))]
pub async fn get_response(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let stored = state
        .responses
        .get(&id)
        .ok_or_else(|| not_found(&id, None))?;
    Ok(HttpResponse::Ok().json(stored.response))
}

/// Deletes a stored response.
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "responses",
    params(("id" = String, Path, description = "The response's id")),
    responses((status = 200, body = ResponseDeleted), (status = 401, body = crate::error::ErrorEnvelope),
        (status = 404, description = "Not stored (or expired)", body = crate::error::ErrorEnvelope)))]
pub async fn delete_response(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.responses.delete(&id) {
        return Err(not_found(&id, None));
    }
    Ok(HttpResponse::Ok().json(ResponseDeleted {
        id: id.into_inner(),
        object: "response".into(),
        deleted: true,
    }))
}

/// The OpenAPI description of these resources.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_response, get_response, delete_response), components(schemas(ResponseRequest, ResponseObject, OutputItem, OutputText, crate::openai::responses::ReasoningText, ResponseUsage, crate::openai::responses::InputTokensDetails, crate::openai::responses::OutputTokensDetails, crate::openai::responses::IncompleteDetails, ResponseDeleted, ResponseEvent, ResponseEventBody)), tags((name = "responses")))]
pub struct ResponsesApi;
