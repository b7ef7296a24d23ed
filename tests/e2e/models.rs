//! Model listing, lookup by name and alias, health, metrics exposition.

use crate::helpers::{get_json, shared, ALIAS, LLAMA_CPP, MODEL};

#[tokio::test]
async fn models_are_listed_with_status_and_aliases() {
    let list = shared().openai().models().list().await.unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [MODEL, LLAMA_CPP.model], "configuration order");
    let raw: serde_json::Value = get_json(&shared().url("/v1/models")).await;
    let m = &raw["data"][0];
    assert_eq!(m["object"], "model");
    assert_eq!(m["aliases"][0], ALIAS);
    assert_eq!(m["engine"], "mistralrs");
    assert_eq!(raw["data"][1]["engine"], "llama.cpp");
    assert!(
        ["unloaded", "loading", "ready"].contains(&m["status"].as_str().unwrap()),
        "{m}"
    );
}

#[tokio::test]
async fn a_model_is_found_by_alias_and_unknown_ids_are_404() {
    let m = shared().openai().models().retrieve(ALIAS).await.unwrap();
    assert_eq!(m.id, MODEL);
    let res = reqwest::get(shared().url("/v1/models/nope")).await.unwrap();
    assert_eq!(res.status(), 404);
    crate::helpers::assert_envelope(
        &res.json().await.unwrap(),
        Some("model_not_found"),
        Some("model"),
    );
}

#[tokio::test]
async fn health_answers() {
    let v: serde_json::Value = get_json(&shared().url("/health")).await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["models"], 2);
}

#[tokio::test]
async fn ready_model_reports_context_length_after_a_request() {
    let _ = crate::helpers::post_json(
        &shared().url("/v1/completions"),
        &serde_json::json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
    )
    .await;
    let m: serde_json::Value = get_json(&shared().url("/v1/models/smollm2")).await;
    assert_eq!(m["status"], "ready");
    assert_eq!(m["context_length"], 8192);
    assert_eq!(m["device"], "cpu");
}

/// SmolLM2 (trained for 8192 tokens) under a budget that holds it only at 4096: served
/// with the context shrunk, shown in `/v1/models`, and answering.
#[tokio::test]
async fn a_model_without_a_context_length_is_fitted_to_its_budget() {
    use llamagate::engine::Engine;
    let mut m = crate::helpers::smollm2("fitted");
    m.engine = Some(llamagate::config::EngineKind::LlamaCpp);
    m.max_concurrent = 2;
    let engine = llamagate::engine::llama_cpp::LlamaCppEngine;
    let at = |context: usize| {
        let mut s = m.clone();
        s.context_length = Some(context);
        engine.estimate_footprint(&s).unwrap().total()
    };
    let mut settings = crate::helpers::settings_with(vec![m.clone()]);
    let budget = at(4096) + (at(5120) - at(4096)) / 2;
    settings.scheduler.cpu_memory_budget = Some(llamagate::memory::ByteSize(budget));
    let server = crate::helpers::spawn_server(settings);
    let (status, body) = crate::helpers::post_json(
        &server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "fitted", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let listed = get_json(&server.url("/v1/models/fitted")).await;
    assert_eq!(listed["context_source"], "fitted", "{listed}");
    assert_eq!(listed["context_length"], 4096, "{listed}");
    assert_eq!(listed["trained_context_length"], 8192, "{listed}");
    assert_eq!(listed["memory_bytes"], at(4096), "{listed}");
    // A prompt past the fitted context is the client's mistake, named as such.
    let long = "word ".repeat(5000);
    let (status, body) = crate::helpers::post_json(
        &server.url("/v1/chat/completions"),
        &serde_json::json!({"model": "fitted", "messages": [{"role": "user", "content": long}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
}
