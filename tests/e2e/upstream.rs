//! The upstream engine: a llamagate in front of a second llamagate (the "GPU box next
//! door"). Same API, streaming passed through, the upstream's errors mapped, a down
//! upstream is 502 and a silent one 504, and a client that leaves cancels the upstream's
//! generation.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use llamagate::config::{EngineKind, ModelSettings, ModelSource, Secret};
use serde_json::json;

use crate::helpers::{
    assert_envelope, free_port, get_json, post_json, settings_with, smollm2, spawn_server,
    sse_data, stream_then_leave, TestServer,
};

const BACK_MODEL: &str = "back-llama";
const BACK_KEY: &str = "upstream-secret";

/// The upstream: the test model on llama.cpp, behind an API key.
fn back() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut model = smollm2(BACK_MODEL);
        model.engine = Some(EngineKind::LlamaCpp);
        model.pinned = true;
        let mut settings = settings_with(vec![model]);
        settings.auth.api_keys = vec![Secret(BACK_KEY.into())];
        spawn_server(settings)
    })
}

fn upstream_model(name: &str, base_url: String) -> ModelSettings {
    let mut m = ModelSettings::new(name, ModelSource::parse(&base_url).unwrap());
    m.upstream_model = Some(BACK_MODEL.into());
    m.upstream_api_key = Some(Secret(BACK_KEY.into()));
    m.upstream_timeout_secs = 2;
    m
}

/// A port that accepts connections and never answers.
fn silent_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    port
}

/// The gateway in front: `remote` (the back server), `wrong-key`, `down` (nothing
/// listens) and `silent` (accepts, never answers).
fn front() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let back = format!("{}/v1", back().base);
        let mut wrong_key = upstream_model("wrong-key", back.clone());
        wrong_key.upstream_api_key = Some(Secret("nope".into()));
        // A whole answer may take longer than a stream's silence, but not this one.
        let mut silent = upstream_model("silent", format!("http://127.0.0.1:{}/v1", silent_port()));
        silent.upstream_answer_timeout_secs = 2;
        let models = vec![
            upstream_model("remote", back),
            wrong_key,
            upstream_model("down", format!("http://127.0.0.1:{}/v1", free_port())),
            silent,
        ];
        spawn_server(settings_with(models))
    })
}

fn chat(model: &str, max_tokens: u32) -> serde_json::Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "user", "content": "Name three colours."}]})
}

#[tokio::test]
async fn chat_through_the_upstream_answers_with_the_upstreams_usage() {
    let (status, body) = post_json(&front().url("/v1/chat/completions"), &chat("remote", 12)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["model"], BACK_MODEL,
        "relayed unchanged: the upstream's own name for the model"
    );
    assert!(body["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10, "{usage}");
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 12);

    // The upstream counted the same prompt.
    let mut direct = reqwest::Client::new()
        .post(back().url("/v1/chat/completions"))
        .bearer_auth(BACK_KEY)
        .json(&chat(BACK_MODEL, 12))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        direct["usage"]["prompt_tokens"].take(),
        usage["prompt_tokens"]
    );

    // The gateway meters upstream models like local ones.
    let prompt = front()
        .metric("llamagate_prompt_tokens_total{model=\"remote\"}")
        .await;
    assert!(
        prompt > 10.0,
        "prompt tokens from the upstream's usage: {prompt}"
    );

    // Legacy completions pass through too.
    let (status, body) = post_json(
        &front().url("/v1/completions"),
        &json!({"model": "remote", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn streaming_is_passed_through_chunk_by_chunk() {
    let mut request = chat("remote", 8);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let res = reqwest::Client::new()
        .post(front().url("/v1/chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    let events = sse_data(&body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let content_chunks = chunks
        .iter()
        .filter(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
        })
        .count();
    assert!(content_chunks >= 4, "one chunk per token: {body}");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 8, "{body}");
    assert!(chunks.iter().all(|c| c["model"] == BACK_MODEL));
}

#[tokio::test]
async fn the_upstreams_client_errors_reach_the_client() {
    let (status, body) = post_json(
        &front().url("/v1/chat/completions"),
        &chat("remote", 100_000),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("context_length_exceeded"), Some("messages"));
}

#[tokio::test]
async fn a_down_upstream_is_502_and_a_silent_one_504() {
    let (status, body) = post_json(&front().url("/v1/chat/completions"), &chat("down", 4)).await;
    assert_eq!(status, 502, "{body}");
    assert_envelope(&body, Some("upstream_error"), None);

    let started = Instant::now();
    let (status, body) = post_json(&front().url("/v1/chat/completions"), &chat("silent", 4)).await;
    assert_eq!(status, 504, "{body}");
    assert_envelope(&body, Some("upstream_timeout"), None);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "never a hang: {:?}",
        started.elapsed()
    );

    let (status, body) =
        post_json(&front().url("/v1/chat/completions"), &chat("wrong-key", 4)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream_api_key"),
        "{body}"
    );

    // The other models keep serving.
    let (status, _) = post_json(&front().url("/v1/chat/completions"), &chat("remote", 2)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn leaving_cancels_the_upstreams_generation() {
    let cancelled = || async {
        back()
            .metric(&format!(
                "llamagate_cancelled_requests_total{{model=\"{BACK_MODEL}\"}}"
            ))
            .await
    };
    let before = cancelled().await;
    stream_then_leave(
        &front().url("/v1/completions"),
        &json!({"model": "remote", "prompt": "1, 2, 3, 4, 5,", "max_tokens": 3000,
                "temperature": 0, "stream": true}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cancelled().await <= before {
        assert!(
            Instant::now() < deadline,
            "the upstream kept generating after the client left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn upstream_models_are_listed_with_their_engine() {
    let m = get_json(&front().url("/v1/models/remote")).await;
    assert_eq!(m["engine"], "upstream");
    assert_eq!(m["device"], "remote");
    assert!(m["source"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
}
