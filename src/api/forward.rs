//! Forwarded requests: when the `model` of a request names an upstream model that
//! forwards this API (`forward_apis`), the body goes to the upstream as the client sent
//! it (the scheduler's engine rewrites only `model`) and the answer comes back as the
//! upstream wrote it: its status, body and events. llamagate still guards itself here
//! (the body's size and arrival time, the key check of the route's scope, the model's
//! queue); what the body asks for is the upstream's to judge, so fields llamagate does
//! not know or does not run itself (tools, images, audio, logprobs, `response_format`)
//! pass. A failure before the upstream's first byte is llamagate's error in the API's
//! own envelope; after it, the API's own error event ends the stream.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::{Map, Value};

use super::disconnect::unless_client_gone;
use super::sse::{sse_response, AnthropicEvents, Dialect, OpenAiEvents, ResponsesEvents};
use super::AppState;
use crate::engine::forward::{ForwardApi, ForwardRequest};
use crate::error::ApiError;
use crate::scheduler::{Forwarding, ForwardingBody};

/// Request headers passed on to the upstream, by API.
const PASSED_HEADERS: &[&str] = &["anthropic-version", "anthropic-beta"];

/// Longest affinity key taken from a request (longer ones are cut).
const MAX_AFFINITY_CHARS: usize = 256;

/// The value of the model's `affinity_header` in `req`, when it has one and the request
/// carries it.
pub fn header_affinity(state: &AppState, req: &HttpRequest, model: &str) -> Option<String> {
    let slot = state.scheduler.registry().resolve(model).ok()?;
    let name = slot.settings.affinity_header.as_deref()?;
    let value = req.headers().get(name)?.to_str().ok()?.trim();
    (!value.is_empty()).then(|| value.chars().take(MAX_AFFINITY_CHARS).collect())
}

/// The affinity key of a forwarded body: the header's, else the body's conversation or
/// end-user id (`prompt_cache_key`, `user`, `safety_identifier`; Messages:
/// `metadata.user_id`).
fn body_affinity(api: ForwardApi, body: &Map<String, Value>) -> Option<String> {
    let text = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| s.chars().take(MAX_AFFINITY_CHARS).collect())
    };
    match api {
        ForwardApi::Messages => text(body.get("metadata").and_then(|m| m.get("user_id"))),
        _ => ["prompt_cache_key", "user", "safety_identifier"]
            .iter()
            .find_map(|k| text(body.get(*k))),
    }
}

/// Relays the request when its model forwards `api`; `None` when it does not (or the body
/// is not a JSON object with a string `model`: the API's own checks then say what is
/// wrong), and the handler goes on as for a local model.
pub async fn relay(
    state: &AppState,
    req: &HttpRequest,
    body: &web::Bytes,
    api: ForwardApi,
) -> Result<Option<HttpResponse>, ApiError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Ok(None);
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Ok(None);
    };
    let Some(model) = state.scheduler.forward_target(&model, api) else {
        return Ok(None);
    };
    let affinity = header_affinity(state, req, &model).or_else(|| body_affinity(api, &body));
    let headers = PASSED_HEADERS
        .iter()
        .filter_map(|name| {
            let value = req.headers().get(*name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    let request = ForwardRequest {
        api,
        body,
        headers,
        affinity,
    };
    let param = match api {
        ForwardApi::Completions => "prompt",
        ForwardApi::Embeddings | ForwardApi::Responses => "input",
        ForwardApi::ChatCompletions | ForwardApi::Messages => "messages",
    };
    let work = async {
        let forwarded = state
            .scheduler
            .forward(&model, request)
            .await
            .map_err(|e| ApiError::from_scheduler(e, param))?;
        super::middleware::attach_generation(req, forwarded.report.clone());
        Ok(respond(state, req, api, forwarded, param))
    };
    unless_client_gone(req, work).await.map(Some)
}

/// The upstream's answer as the client's response.
fn respond(
    state: &AppState,
    req: &HttpRequest,
    api: ForwardApi,
    forwarded: Forwarding,
    param: &'static str,
) -> HttpResponse {
    let Forwarding {
        model,
        status,
        headers,
        body,
        ..
    } = forwarded;
    let mut response = match body {
        ForwardingBody::Whole(bytes) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            let mut builder = HttpResponse::build(status);
            for (name, value) in &headers {
                builder.insert_header((name.as_str(), value.as_str()));
            }
            return builder.body(bytes);
        }
        ForwardingBody::Events(events) => {
            let events = events.map(move |item| match item {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::warn!(model = %model, error = %e, "forwarded answer failed mid-stream");
                    let e = ApiError::from_engine(e, param);
                    web::Bytes::from(match api {
                        ForwardApi::Messages => AnthropicEvents::error(&e),
                        ForwardApi::Responses => ResponsesEvents::error(&e),
                        _ => OpenAiEvents::error(&e),
                    })
                }
            });
            sse_response(state, req, events)
        }
    };
    for (name, value) in headers {
        if name == "content-type" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            actix_web::http::header::HeaderName::try_from(name),
            actix_web::http::header::HeaderValue::try_from(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_affinity_key_is_the_conversation_then_the_user() {
        let body = json!({"user": "ann", "prompt_cache_key": "conv-1"});
        assert_eq!(
            body_affinity(ForwardApi::ChatCompletions, body.as_object().unwrap()).as_deref(),
            Some("conv-1")
        );
        let body = json!({"user": "ann"});
        assert_eq!(
            body_affinity(ForwardApi::Responses, body.as_object().unwrap()).as_deref(),
            Some("ann")
        );
        let body = json!({"metadata": {"user_id": "bob"}, "user": "x"});
        assert_eq!(
            body_affinity(ForwardApi::Messages, body.as_object().unwrap()).as_deref(),
            Some("bob")
        );
        let body = json!({"user": ""});
        assert_eq!(
            body_affinity(ForwardApi::Completions, body.as_object().unwrap()),
            None
        );
    }
}
