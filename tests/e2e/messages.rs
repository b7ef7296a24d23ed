//! `/v1/messages` (Anthropic's Messages API) end to end on the real model (llama.cpp),
//! over raw HTTP: the streamed events by name and order, the non-streamed message, tool
//! use, count_tokens agreeing with usage, `x-api-key`, and every error (the key check's
//! included) in Anthropic's envelope. The official SDK's checks are in
//! tests/sdk/anthropic_sdk.py.

use std::sync::OnceLock;

use llamagate::config::{EngineKind, Secret};
use serde_json::{json, Value};

use crate::helpers::{settings_with, smollm2, spawn_server, TestServer};

const KEY: &str = "messages-key";

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut model = smollm2("claude-local");
        model.engine = Some(EngineKind::LlamaCpp);
        model.pinned = true;
        let mut settings = settings_with(vec![model]);
        settings.auth.api_keys = vec![Secret(KEY.into())];
        spawn_server(settings)
    })
}

async fn post(path: &str, body: &Value, key: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(server().url(path))
        .header("anthropic-version", "2023-06-01")
        .json(body);
    if let Some(key) = key {
        request = request.header("x-api-key", key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// `(event name, data)` pairs of an Anthropic SSE body.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

fn assert_anthropic_error(body: &str, kind: &str) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["type"], "error", "{body}");
    assert_eq!(v["error"]["type"], kind, "{body}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn a_message_streamed_and_not() {
    let body = json!({"model": "claude-local", "max_tokens": 8, "system": "Be brief.",
        "messages": [{"role": "user", "content": "Say hi"}]});
    let (status, text) = post("/v1/messages", &body, Some(KEY)).await;
    assert_eq!(status, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["type"], "message");
    assert_eq!(m["role"], "assistant");
    assert_eq!(m["model"], "claude-local");
    assert!(m["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(m["content"][0]["type"], "text");
    assert!(["end_turn", "max_tokens"].contains(&m["stop_reason"].as_str().unwrap()));
    assert!(m["stop_sequence"].is_null());
    let input_tokens = m["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input_tokens > 0);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (status, text) = post("/v1/messages", &streamed, Some(KEY)).await;
    assert_eq!(status, 200);
    let events = events(&text);
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "event name = data type");
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..3],
        ["message_start", "ping", "content_block_start"]
    );
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    assert!(
        names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count()
            >= 1
    );
    assert_eq!(
        events[0].1["message"]["usage"]["input_tokens"],
        input_tokens
    );
    let delta = &events[names.len() - 2].1;
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() >= 1);
    assert!(!text.contains("[DONE]"));

    // count_tokens agrees with what the message used.
    let (status, text) = post(
        "/v1/messages/count_tokens",
        &json!({"model": "claude-local", "system": "Be brief.",
            "messages": [{"role": "user", "content": "Say hi"}]}),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let counted: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(counted["input_tokens"], input_tokens);
}

#[tokio::test]
async fn a_stop_sequence_is_named() {
    // Any answer of a few words has a space or an `e` in it.
    let body = json!({"model": "claude-local", "max_tokens": 40, "temperature": 0, "stop_sequences": ["e", " "],
        "messages": [{"role": "user", "content": "Describe the sea in a sentence."}]});
    let (status, text) = post("/v1/messages", &body, Some(KEY)).await;
    assert_eq!(status, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["stop_reason"], "stop_sequence", "{m}");
    assert!(["e", " "].contains(&m["stop_sequence"].as_str().unwrap()));
    let answer = m["content"][0]["text"].as_str().unwrap_or("");
    assert!(!answer.contains(' ') && !answer.contains('e'), "{answer:?}");
}

#[tokio::test]
async fn a_forced_tool_call_is_a_tool_use_block() {
    // Greedy, with room: at temperature 1 the city string may ramble past the limit.
    let body = json!({"model": "claude-local", "max_tokens": 120, "temperature": 0,
        "tools": [{"name": "get_weather", "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}],
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (status, text) = post("/v1/messages", &body, Some(KEY)).await;
    assert_eq!(status, 200, "{text}");
    let m: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(m["stop_reason"], "tool_use");
    let block = &m["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert!(block["input"]["city"].is_string(), "{block}");
}

#[tokio::test]
async fn every_error_is_in_anthropic_envelope() {
    let ok = json!({"model": "claude-local", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]});
    let (status, body) = post("/v1/messages", &ok, None).await;
    assert_eq!(status, 401);
    assert_anthropic_error(&body, "authentication_error");
    assert!(body.contains("x-api-key"));
    let (status, body) = post("/v1/messages", &ok, Some("wrong")).await;
    assert_eq!(status, 401);
    assert_anthropic_error(&body, "authentication_error");
    // The key as a bearer token works too.
    let response = reqwest::Client::new()
        .post(server().url("/v1/messages"))
        .bearer_auth(KEY)
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (body, status, kind) in [
        (
            json!({"model": "claude-local", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "nope", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "claude-local", "max_tokens": 4, "messages": "x"}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "claude-local", "max_tokens": 4, "messages": [{"role": "tool", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
        (
            json!({"model": "claude-local", "max_tokens": 4000000, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_request_error",
        ),
    ] {
        let (got, text) = post("/v1/messages", &body, Some(KEY)).await;
        assert_eq!(got, status, "{body} → {text}");
        assert_anthropic_error(&text, kind);
    }
    let response = reqwest::Client::new()
        .post(server().url("/v1/messages"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_anthropic_error(&response.text().await.unwrap(), "invalid_request_error");
    let response = reqwest::Client::new()
        .get(server().url("/v1/messages"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_anthropic_error(&response.text().await.unwrap(), "invalid_request_error");
    // OpenAI's routes keep OpenAI's envelope, and take `x-api-key` as well.
    let response = reqwest::Client::new()
        .get(server().url("/v1/models"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = reqwest::get(server().url("/v1/models")).await.unwrap();
    assert_eq!(response.status(), 401);
    let v: Value = response.json().await.unwrap();
    assert!(v["error"]["message"].is_string() && v.get("type").is_none());
}
