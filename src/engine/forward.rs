//! Forwarding without loss: a client's request body sent to an upstream server as it
//! came (only `model` rewritten to the member's id), and the upstream's answer relayed
//! unchanged — one body, or its server-sent events one complete event at a time. What
//! llamagate reads of an answer (its token counts, for metrics and the request log) is
//! read from a copy; the bytes the client gets are the upstream's.

use serde_json::{Map, Value};

pub use crate::config::ForwardApi;

use super::{EngineError, TokenUsage};

/// A request to relay as is.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    /// The API it speaks: the path it goes to at the upstream.
    pub api: ForwardApi,
    /// The client's body (a JSON object); `model` is replaced by each member's id.
    pub body: Map<String, Value>,
    /// Request headers passed on (Anthropic's `anthropic-version`, `anthropic-beta`).
    pub headers: Vec<(String, String)>,
    /// The key of session affinity in a pool (an end-user or conversation id).
    pub affinity: Option<String>,
}

/// The upstream's answer.
pub struct Forwarded {
    /// Its HTTP status (a success, or a client error the upstream answered).
    pub status: u16,
    /// The headers passed back (`content-type`, `retry-after`, rate-limit headers).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: ForwardedBody,
}

/// An answer's body: whole, or a stream of complete events.
pub enum ForwardedBody {
    /// A JSON (or other) body, read to its end, and the usage found in it.
    Whole {
        /// The bytes, unchanged.
        bytes: bytes::Bytes,
        /// Token counts read from it.
        usage: Option<TokenUsage>,
    },
    /// Server-sent events; the stream ends after the upstream's last one, or with an error
    /// when the upstream fails mid-answer (nothing more can be retried then).
    Events(futures::stream::BoxStream<'static, Result<RelayedEvent, EngineError>>),
}

/// One server-sent event as the upstream wrote it.
#[derive(Debug, Clone)]
pub struct RelayedEvent {
    /// The event's bytes with their blank-line terminator, unchanged.
    pub bytes: bytes::Bytes,
    /// Text-bearing deltas in it (0 or 1): for time to first token and a token count
    /// when the upstream reports no usage.
    pub tokens: usize,
    /// Token counts it reports (each field 0 where it says nothing of it).
    pub usage: Option<TokenUsage>,
}

/// Splits complete events off the front of `buffer`: each event's bytes, terminator
/// included (`\n\n`, `\r\n\r\n` or `\r\r`).
pub fn split_events(buffer: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < buffer.len() {
        let rest = &buffer[i..];
        let end = if rest.starts_with(b"\r\n\r\n") {
            Some(4)
        } else if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            Some(2)
        } else {
            None
        };
        match end {
            Some(len) => {
                events.push(buffer[start..i + len].to_vec());
                i += len;
                start = i;
            }
            None => i += 1,
        }
    }
    buffer.drain(..start);
    events
}

/// The `data` of one event (its `data:` lines joined), if it has any.
pub fn event_data(event: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(event);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    (!data.is_empty()).then(|| data.join("\n"))
}

fn count(value: Option<&Value>) -> usize {
    value.and_then(Value::as_u64).unwrap_or(0) as usize
}

/// Token counts in an answer or event of `api`: OpenAI's `usage` (prompt/completion
/// tokens), the Responses API's (`input_tokens`/`output_tokens`, inside `response` in
/// its events) and Anthropic's (`message_start`'s input, `message_delta`'s output).
pub fn usage_in(api: ForwardApi, value: &Value) -> Option<TokenUsage> {
    let usage = match api {
        ForwardApi::Responses => value
            .get("usage")
            .or_else(|| value.pointer("/response/usage")),
        ForwardApi::Messages => value
            .get("usage")
            .or_else(|| value.pointer("/message/usage")),
        _ => value.get("usage"),
    }
    .filter(|u| u.is_object())?;
    let usage = match api {
        ForwardApi::Responses => TokenUsage {
            prompt_tokens: count(usage.get("input_tokens")),
            completion_tokens: count(usage.get("output_tokens")),
            cached_prompt_tokens: count(usage.pointer("/input_tokens_details/cached_tokens")),
            ..Default::default()
        },
        ForwardApi::Messages => TokenUsage {
            prompt_tokens: count(usage.get("input_tokens"))
                + count(usage.get("cache_read_input_tokens"))
                + count(usage.get("cache_creation_input_tokens")),
            completion_tokens: count(usage.get("output_tokens")),
            cached_prompt_tokens: count(usage.get("cache_read_input_tokens")),
            ..Default::default()
        },
        _ => TokenUsage {
            prompt_tokens: count(usage.get("prompt_tokens")),
            completion_tokens: count(usage.get("completion_tokens")),
            cached_prompt_tokens: count(usage.pointer("/prompt_tokens_details/cached_tokens")),
            ..Default::default()
        },
    };
    Some(usage)
}

/// Whether a streamed event of `api` carries generated text (content, reasoning or a
/// tool call's arguments).
pub fn carries_text(api: ForwardApi, value: &Value) -> bool {
    let non_empty = |v: Option<&Value>| match v {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        _ => false,
    };
    match api {
        ForwardApi::ChatCompletions => {
            value
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|choices| {
                    choices.iter().any(|c| {
                        let delta = c.get("delta");
                        let field = |k: &str| delta.and_then(|d| d.get(k));
                        non_empty(field("content"))
                            || non_empty(field("reasoning_content"))
                            || non_empty(field("reasoning"))
                            || non_empty(field("tool_calls"))
                    })
                })
        }
        ForwardApi::Completions => value
            .get("choices")
            .and_then(Value::as_array)
            .is_some_and(|choices| choices.iter().any(|c| non_empty(c.get("text")))),
        ForwardApi::Responses => value
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.ends_with(".delta")),
        ForwardApi::Messages => {
            value.get("type").and_then(Value::as_str) == Some("content_block_delta")
        }
        ForwardApi::Embeddings => false,
    }
}

/// Reads one relayed event: what it carries for the meters.
pub fn read_event(api: ForwardApi, bytes: Vec<u8>) -> RelayedEvent {
    let value = event_data(&bytes)
        .filter(|d| d.trim() != "[DONE]")
        .and_then(|d| serde_json::from_str::<Value>(&d).ok());
    let (tokens, usage) = match &value {
        Some(value) => (usize::from(carries_text(api, value)), usage_in(api, value)),
        None => (0, None),
    };
    RelayedEvent {
        bytes: bytes.into(),
        tokens,
        usage,
    }
}

/// `body` with `model` set to `model`.
pub fn with_model(body: &Map<String, Value>, model: &str) -> Value {
    let mut body = body.clone();
    body.insert("model".into(), Value::String(model.to_string()));
    Value::Object(body)
}

/// Merges token counts seen so far with a later report (each field: the later one where
/// it says something).
pub fn merge_usage(seen: Option<TokenUsage>, later: TokenUsage) -> TokenUsage {
    let seen = seen.unwrap_or_default();
    let pick = |a: usize, b: usize| if b > 0 { b } else { a };
    TokenUsage {
        prompt_tokens: pick(seen.prompt_tokens, later.prompt_tokens),
        completion_tokens: pick(seen.completion_tokens, later.completion_tokens),
        cached_prompt_tokens: pick(seen.cached_prompt_tokens, later.cached_prompt_tokens),
        draft_tokens: pick(seen.draft_tokens, later.draft_tokens),
        draft_accepted_tokens: pick(seen.draft_accepted_tokens, later.draft_accepted_tokens),
        draft_length: later.draft_length.or(seen.draft_length),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_split_with_their_terminators_across_reads() {
        let mut buffer = b"data: {\"a\":1}\n\nevent: x\r\ndata: 2\r\n\r\ndata: [DO".to_vec();
        let events = split_events(&mut buffer);
        assert_eq!(events[0], b"data: {\"a\":1}\n\n");
        assert_eq!(events[1], b"event: x\r\ndata: 2\r\n\r\n");
        assert_eq!(buffer, b"data: [DO");
        buffer.extend_from_slice(b"NE]\n\n");
        let events = split_events(&mut buffer);
        assert_eq!(event_data(&events[0]).as_deref(), Some("[DONE]"));
        assert!(buffer.is_empty());
        assert_eq!(event_data(b": keep-alive\n\n"), None);
    }

    #[test]
    fn usage_is_read_in_each_apis_terms() {
        let chat = json!({"usage": {"prompt_tokens": 7, "completion_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4}}});
        assert_eq!(
            usage_in(ForwardApi::ChatCompletions, &chat),
            Some(TokenUsage {
                prompt_tokens: 7,
                completion_tokens: 3,
                cached_prompt_tokens: 4,
                ..Default::default()
            })
        );
        assert_eq!(
            usage_in(ForwardApi::ChatCompletions, &json!({"usage": null})),
            None
        );
        let completed = json!({"type": "response.completed",
            "response": {"usage": {"input_tokens": 9, "output_tokens": 2}}});
        assert_eq!(
            usage_in(ForwardApi::Responses, &completed).map(|u| u.prompt_tokens),
            Some(9)
        );
        let start = json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}});
        let delta = json!({"type": "message_delta", "usage": {"output_tokens": 12}});
        let merged = merge_usage(
            usage_in(ForwardApi::Messages, &start),
            usage_in(ForwardApi::Messages, &delta).unwrap(),
        );
        assert_eq!((merged.prompt_tokens, merged.completion_tokens), (5, 12));
    }

    #[test]
    fn text_bearing_events_are_told_apart() {
        let role =
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
        let text = json!({"choices": [{"index": 0, "delta": {"content": "Hi"}}]});
        let tool = json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]});
        assert!(!carries_text(ForwardApi::ChatCompletions, &role));
        assert!(carries_text(ForwardApi::ChatCompletions, &text));
        assert!(carries_text(ForwardApi::ChatCompletions, &tool));
        assert!(carries_text(
            ForwardApi::Completions,
            &json!({"choices": [{"text": "x"}]})
        ));
        assert!(carries_text(
            ForwardApi::Responses,
            &json!({"type": "response.output_text.delta", "delta": "x"})
        ));
        assert!(!carries_text(
            ForwardApi::Messages,
            &json!({"type": "message_start"})
        ));
        let event = read_event(
            ForwardApi::ChatCompletions,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n".to_vec(),
        );
        assert_eq!(event.tokens, 1);
        assert_eq!(
            &event.bytes[..],
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"
        );
    }

    #[test]
    fn only_model_is_rewritten() {
        let body = json!({"model": "front", "messages": [], "x_unknown": {"deep": [1, 2]}});
        let out = with_model(body.as_object().unwrap(), "back");
        assert_eq!(out["model"], "back");
        assert_eq!(out["x_unknown"], body["x_unknown"]);
        assert_eq!(out.as_object().unwrap().len(), 3);
    }
}
