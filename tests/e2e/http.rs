//! The HTTP layer over the scripted engine (`llamagate::engine::fake::FakeEngine`): SSE
//! framing, the error envelope, overload answers and cancellation, checked over real
//! HTTP in milliseconds. What needs the model (what it says) is tested on the real one.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use llamagate::engine::fake::FakeEngine;
use serde_json::{json, Value};

use crate::helpers::{
    assert_envelope, fake_model, post_json, post_sse, settings_with, spawn_with_engine, sse_data,
    TestServer,
};

/// A server over one fake engine: model `fast` (4 slots) and `slow` (1 slot, no queue,
/// 20 ms per token).
fn fake() -> &'static (TestServer, Arc<FakeEngine>, Arc<FakeEngine>) {
    static SERVER: OnceLock<(TestServer, Arc<FakeEngine>, Arc<FakeEngine>)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let fast = Arc::new(FakeEngine {
            token_text: "tok ".into(),
            ..FakeEngine::default()
        });
        let mut model = fake_model("fast");
        model.max_concurrent = 4;
        let server = spawn_with_engine(settings_with(vec![model]), fast.clone());
        let slow = Arc::new(FakeEngine {
            token_delay: Duration::from_millis(20),
            ..FakeEngine::default()
        });
        let mut model = fake_model("slow");
        model.max_concurrent = 1;
        model.queue_size = 0;
        let slow_server = spawn_with_engine(settings_with(vec![model]), slow.clone());
        // One server per engine; the slow one is reached through its own base.
        SLOW.set(slow_server).ok();
        (server, fast, slow)
    })
}

static SLOW: OnceLock<TestServer> = OnceLock::new();

fn slow_server() -> &'static TestServer {
    fake();
    SLOW.get().unwrap()
}

#[tokio::test]
async fn chat_streams_in_openai_order() {
    let (server, _, _) = fake();
    let body = post_sse(
        &server.url("/v1/chat/completions"),
        &json!({"model": "fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "n": 2, "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = sse_data(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // Role first (every choice), content, one finish per choice, then the usage chunk.
    assert_eq!(chunks[0]["choices"].as_array().unwrap().len(), 2);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert!(usage["choices"].as_array().unwrap().is_empty());
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    let mut text = [String::new(), String::new()];
    let mut finishes = 0;
    for c in &chunks[1..chunks.len() - 1] {
        assert!(c["usage"].is_null(), "usage only in the last chunk");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"], "one id for the whole stream");
        for choice in c["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            text[i].push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(reason) = choice["finish_reason"].as_str() {
                assert_eq!(reason, "length");
                finishes += 1;
            }
        }
    }
    assert_eq!(text, ["tok tok tok ", "tok tok tok "]);
    assert_eq!(finishes, 2);
}

#[tokio::test]
async fn a_prompt_list_indexes_choices_by_prompt_and_choice() {
    let (server, _, _) = fake();
    let prompts: Vec<String> = (0..16).map(|i| format!("p{i}")).collect();
    let (status, body) = post_json(
        &server.url("/v1/completions"),
        &json!({"model": "fast", "prompt": prompts, "max_tokens": 2, "n": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 32);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], "tok tok ");
    }
    assert_eq!(body["usage"]["completion_tokens"], 64);
    assert_eq!(body["usage"]["prompt_tokens"], 16);
}

#[tokio::test]
async fn client_errors_come_in_the_envelope() {
    let (server, _, _) = fake();
    let cases = [
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
            Some("model_not_found"),
            Some("model"),
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "x".repeat(8000)}]}),
            400,
            Some("context_length_exceeded"),
            Some("messages"),
        ),
        (
            json!({"model": "fast", "messages": [{"role": "user", "content": "x"}], "top_p": 7}),
            400,
            None,
            Some("top_p"),
        ),
    ];
    for (body, status, code, param) in cases {
        let (got, answer) = post_json(&server.url("/v1/chat/completions"), &body).await;
        assert_eq!(got, status, "{answer}");
        assert_envelope(&answer, code, param);
    }
    let (got, answer) = post_json(
        &server.url("/v1/completions"),
        &json!({"model": "fast", "prompt": ["ok", "x".repeat(8000)]}),
    )
    .await;
    assert_eq!(got, 400, "{answer}");
    assert_envelope(&answer, Some("context_length_exceeded"), Some("prompt"));
}

#[tokio::test]
async fn a_full_model_answers_429_with_retry_after_and_a_leaving_client_cancels() {
    let (_, _, slow) = fake();
    let server = slow_server();
    // A long stream holds the only slot; the client reads a little, then leaves.
    let res = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "slow", "prompt": "x", "max_tokens": 500, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut chunks = res.bytes_stream();
    chunks.next().await.unwrap().unwrap();
    let refused = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&json!({"model": "slow", "prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let before = slow.cancelled.load(Ordering::SeqCst);
    drop(chunks);
    let started = Instant::now();
    while slow.cancelled.load(Ordering::SeqCst) == before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the generation was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot is free again.
    let (status, body) = post_json(
        &server.url("/v1/completions"),
        &json!({"model": "slow", "prompt": "x", "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn keys_and_route_labels_on_the_fake_engine() {
    let mut s = settings_with(vec![fake_model("fast")]);
    s.auth.api_keys = vec![llamagate::config::Secret("k-1".into())];
    let server = spawn_with_engine(s, Arc::new(FakeEngine::default()));
    let client = reqwest::Client::new();
    let body =
        json!({"model": "fast", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1});
    let refused = client
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    let answer: Value = client
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("k-1")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "x");
    // An encoded spelling of a route is counted under that route's pattern.
    let listed = client
        .get(server.url("/%76%31/models"))
        .bearer_auth("k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let metrics = server.metrics_text().await;
    assert!(
        metrics.contains(
            r#"llamagate_http_requests_total{endpoint="/v1/models",status_class="2xx"} 1"#
        ),
        "{metrics}"
    );
}
