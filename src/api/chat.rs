//! `POST /v1/chat/completions`: validates, starts a generation through the scheduler and
//! renders it as one JSON body or as SSE chunks (role chunk, content chunks, a final chunk
//! with `finish_reason` per choice, an optional usage chunk, then `data: [DONE]`).

use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;

use super::disconnect::unless_client_gone;
use super::sse::{data_event, sse_response, DONE_EVENT};
use super::{read_body, AppState};
use crate::engine::TokenEvent;
use crate::error::ApiError;
use crate::openai::chat::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatDelta, ChatLogprobs, ChatTokenLogprob, FunctionCall, ToolCall,
};
use crate::openai::common::{new_id, system_fingerprint, unix_now, Usage};
use crate::scheduler::Generation;
use crate::validation::{parse_json, validate_chat, OutputMode};

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
        (status = 413, body = crate::error::ErrorEnvelope), (status = 429, body = crate::error::ErrorEnvelope),
        (status = 503, body = crate::error::ErrorEnvelope)))]
pub async fn create_chat_completion(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&state, &req, payload).await?;
    let request: ChatCompletionRequest = parse_json(&body)?;
    let valid = validate_chat(
        request,
        &state.settings.limits,
        state.settings.server.strict_params,
    )?;
    let n = valid.sampling.settings.n;
    let logprobs = valid.sampling.settings.logprobs;
    let tools = matches!(valid.output, OutputMode::Tools { .. });
    let ignored = valid.ignored_params.join(",");
    let work = async {
        let generation = state
            .scheduler
            .start(&valid.model, valid.prompt, valid.sampling)
            .await
            .map_err(|e| ApiError::from_scheduler(e, "messages"))?;
        super::middleware::attach_generation(&req, generation.report());
        let meta = ResponseMeta {
            id: new_id("chatcmpl"),
            created: unix_now(),
            model: generation.model.clone(),
            tools,
        };
        let mut response = if valid.stream {
            sse_response(
                &state,
                &req,
                stream_chunks(generation, meta, n, logprobs, valid.include_usage),
            )
        } else {
            HttpResponse::Ok().json(collect(generation, meta, n, logprobs).await?)
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

/// What a tool-using answer turned out to be.
enum ToolAnswer {
    Call(ToolCall),
    Text(String),
}

/// Reads the constrained JSON of a tool-using answer: a call, or (with `auto`) text.
fn tool_answer(text: &str) -> ToolAnswer {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ToolAnswer::Text(text.to_string());
    };
    match (value["name"].as_str(), value["content"].as_str()) {
        (Some(name), _) => ToolAnswer::Call(ToolCall {
            index: None,
            id: format!("call_{}", uuid::Uuid::new_v4().simple()),
            kind: "function".into(),
            function: FunctionCall {
                name: name.to_string(),
                arguments: value
                    .get("arguments")
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "{}".into()),
            },
        }),
        (None, Some(content)) => ToolAnswer::Text(content.to_string()),
        _ => ToolAnswer::Text(text.to_string()),
    }
}

struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
    tools: bool,
}

impl ResponseMeta {
    fn chunk(
        &self,
        choices: Vec<ChatChunkChoice>,
        usage: Option<Option<Usage>>,
    ) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }
}

async fn collect(
    mut generation: Generation,
    meta: ResponseMeta,
    n: usize,
    want_logprobs: bool,
) -> Result<ChatCompletionResponse, ApiError> {
    let mut texts = vec![String::new(); n];
    let mut logprobs: Vec<Vec<ChatTokenLogprob>> = vec![Vec::new(); n];
    let mut reasons = vec!["stop".to_string(); n];
    let mut usage = None;
    while let Some(event) = generation.next().await {
        match event.map_err(|e| ApiError::from_engine(e, "messages"))? {
            TokenEvent::Text {
                choice,
                text,
                logprobs: lps,
            } if choice < n => {
                texts[choice].push_str(&text);
                logprobs[choice].extend(lps.iter().map(ChatTokenLogprob::from));
            }
            TokenEvent::Finished { choice, reason } if choice < n => {
                reasons[choice] = reason.as_str().into();
            }
            TokenEvent::Done(u) => usage = Some(u),
            _ => {}
        }
    }
    let usage = usage.ok_or_else(|| ApiError::Engine("the generation ended early".into()))?;
    Ok(ChatCompletionResponse {
        id: meta.id,
        object: "chat.completion".into(),
        created: meta.created,
        model: meta.model,
        system_fingerprint: system_fingerprint(),
        choices: texts
            .into_iter()
            .zip(logprobs)
            .zip(reasons)
            .enumerate()
            .map(|(index, ((text, lps), reason))| {
                let (content, tool_calls, reason) = match meta.tools.then(|| tool_answer(&text)) {
                    Some(ToolAnswer::Call(call)) => {
                        (None, Some(vec![call]), "tool_calls".to_string())
                    }
                    Some(ToolAnswer::Text(t)) => (Some(t), None, reason),
                    None => (Some(text), None, reason),
                };
                ChatChoice {
                    index,
                    message: AssistantMessage {
                        role: "assistant".into(),
                        content,
                        refusal: None,
                        tool_calls,
                    },
                    logprobs: want_logprobs.then_some(ChatLogprobs {
                        content: lps,
                        refusal: None,
                    }),
                    finish_reason: reason,
                }
            })
            .collect(),
        usage: usage.into(),
    })
}

fn stream_chunks(
    mut generation: Generation,
    meta: ResponseMeta,
    n: usize,
    want_logprobs: bool,
    include_usage: bool,
) -> impl futures::Stream<Item = String> {
    let usage_field = move |u: Option<Usage>| if include_usage { Some(u) } else { None };
    let mut buffered = vec![String::new(); n];
    async_stream::stream! {
        let role_chunk = meta.chunk(
            (0..n)
                .map(|index| ChatChunkChoice {
                    index,
                    delta: ChatDelta { role: Some("assistant".into()), content: Some(String::new()), tool_calls: None },
                    logprobs: None,
                    finish_reason: None,
                })
                .collect(),
            usage_field(None),
        );
        yield data_event(&role_chunk);
        while let Some(event) = generation.next().await {
            match event {
                Ok(TokenEvent::Text { choice, text, .. }) if meta.tools => {
                    // Tool answers are JSON under the hood: sent whole when the choice ends.
                    if let Some(b) = buffered.get_mut(choice) {
                        b.push_str(&text);
                    }
                }
                Ok(TokenEvent::Finished { choice, reason }) if meta.tools => {
                    let text = buffered.get_mut(choice).map(std::mem::take).unwrap_or_default();
                    let (delta, reason) = match tool_answer(&text) {
                        ToolAnswer::Call(mut call) => {
                            call.index = Some(0);
                            (ChatDelta { role: None, content: None, tool_calls: Some(vec![call]) }, "tool_calls".to_string())
                        }
                        ToolAnswer::Text(t) => (ChatDelta { role: None, content: Some(t), tool_calls: None }, reason.as_str().to_string()),
                    };
                    yield data_event(&meta.chunk(
                        vec![ChatChunkChoice { index: choice, delta, logprobs: None, finish_reason: None }],
                        usage_field(None),
                    ));
                    yield data_event(&meta.chunk(
                        vec![ChatChunkChoice { index: choice, delta: ChatDelta::default(), logprobs: None, finish_reason: Some(reason) }],
                        usage_field(None),
                    ));
                }
                Ok(TokenEvent::Text { choice, text, logprobs }) => {
                    let chunk = meta.chunk(
                        vec![ChatChunkChoice {
                            index: choice,
                            delta: ChatDelta { role: None, content: Some(text), tool_calls: None },
                            logprobs: want_logprobs.then(|| ChatLogprobs {
                                content: logprobs.iter().map(ChatTokenLogprob::from).collect(),
                                refusal: None,
                            }),
                            finish_reason: None,
                        }],
                        usage_field(None),
                    );
                    yield data_event(&chunk);
                }
                Ok(TokenEvent::Finished { choice, reason }) => {
                    let chunk = meta.chunk(
                        vec![ChatChunkChoice {
                            index: choice,
                            delta: ChatDelta::default(),
                            logprobs: None,
                            finish_reason: Some(reason.as_str().into()),
                        }],
                        usage_field(None),
                    );
                    yield data_event(&chunk);
                }
                Ok(TokenEvent::Done(usage)) => {
                    if include_usage {
                        yield data_event(&meta.chunk(Vec::new(), Some(Some(usage.into()))));
                    }
                    yield DONE_EVENT.to_string();
                    return;
                }
                Err(e) => {
                    tracing::warn!(model = %meta.model, error = %e, "generation failed mid-stream");
                    yield ApiError::from_engine(e, "messages").sse_event();
                    return;
                }
            }
        }
        yield ApiError::Engine("the generation ended early".into()).sse_event();
    }
}

/// The OpenAPI description of this resource.
#[derive(utoipa::OpenApi)]
#[openapi(paths(create_chat_completion), components(schemas(ChatCompletionRequest, crate::openai::chat::ChatMessage, crate::openai::chat::ChatRole, crate::openai::common::StreamOptions, ChatCompletionResponse, crate::openai::chat::ChatChoice, AssistantMessage, ChatLogprobs, ChatTokenLogprob, crate::openai::chat::ChatTopLogprob, ToolCall, FunctionCall, ChatCompletionChunk, ChatChunkChoice, ChatDelta, Usage)), tags((name = "chat")))]
pub struct ChatApi;
