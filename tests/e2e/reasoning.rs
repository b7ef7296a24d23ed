//! Reasoning output over HTTP, on the scripted engine (no reasoning model can be had from
//! the package registries): a model whose template thinks in `<think>…</think>` has its
//! thinking returned apart on every chat-like route — `reasoning_content` on chat,
//! a `reasoning` item on Responses, a `thinking` block on Messages — never in the answer.

use std::sync::{Arc, OnceLock};

use llamagate::engine::fake::FakeEngine;
use serde_json::{json, Value};

use crate::helpers::{
    fake_model, post_json, post_sse, settings_with, spawn_with_engine, sse_data, TestServer,
};

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let engine = Arc::new(FakeEngine {
            script: [
                "<think>", "The user", " greets", " me.</th", "ink>", "\n\n", "Hello", "!",
            ]
            .map(String::from)
            .to_vec(),
            thinks: true,
            ..FakeEngine::default()
        });
        spawn_with_engine(settings_with(vec![fake_model("thinker")]), engine)
    })
}

#[tokio::test]
async fn chat_puts_thinking_in_reasoning_content() {
    let body = json!({"model": "thinker", "messages": [{"role": "user", "content": "Hi"}]});
    let (status, answer) = post_json(&server().url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], "The user greets me.");
    assert_eq!(message["content"], "Hello!");
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let text = post_sse(&server().url("/v1/chat/completions"), &streamed).await;
    let (mut reasoning, mut content) = (String::new(), String::new());
    for data in sse_data(&text) {
        if data == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&data).unwrap();
        let delta = &chunk["choices"][0]["delta"];
        reasoning.push_str(delta["reasoning_content"].as_str().unwrap_or(""));
        content.push_str(delta["content"].as_str().unwrap_or(""));
    }
    assert_eq!(
        (reasoning.as_str(), content.as_str()),
        ("The user greets me.", "Hello!")
    );
}

#[tokio::test]
async fn responses_and_messages_return_thinking_apart() {
    let (status, r) = post_json(
        &server().url("/v1/responses"),
        &json!({"model": "thinker", "input": "Hi"}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["output"][0]["type"], "reasoning");
    assert_eq!(r["output"][0]["content"][0]["text"], "The user greets me.");
    assert_eq!(r["output"][1]["type"], "message");
    assert_eq!(r["output"][1]["content"][0]["text"], "Hello!");

    let (status, m) = post_json(
        &server().url("/v1/messages"),
        &json!({"model": "thinker", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(
        m["content"][0],
        json!({"type": "thinking", "thinking": "The user greets me.", "signature": ""})
    );
    assert_eq!(m["content"][1], json!({"type": "text", "text": "Hello!"}));
    assert_eq!(m["stop_reason"], "end_turn");
}
