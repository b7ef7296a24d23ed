//! Every error of the table, in OpenAI's envelope, with the right status and param.

use serde_json::json;

use crate::helpers::{assert_envelope, post_json, shared, Engine, MODEL};

fn chat_url() -> String {
    shared().url("/v1/chat/completions")
}

fn msgs() -> serde_json::Value {
    json!([{"role": "user", "content": "hi"}])
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let (status, body) =
        post_json(&chat_url(), &json!({"model": "gpt-17", "messages": msgs()})).await;
    assert_eq!(status, 404);
    assert_envelope(&body, Some("model_not_found"), Some("model"));
    // Through the OpenAI client too.
    let err = shared()
        .openai()
        .chat()
        .create(
            async_openai::types::CreateChatCompletionRequestArgs::default()
                .model("gpt-17")
                .messages(vec![
                    async_openai::types::ChatCompletionRequestUserMessageArgs::default()
                        .content("hi")
                        .build()
                        .unwrap()
                        .into(),
                ])
                .build()
                .unwrap(),
        )
        .await
        .unwrap_err();
    match err {
        async_openai::error::OpenAIError::ApiError(e) => {
            assert_eq!(e.code.as_deref(), Some("model_not_found"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn malformed_json_and_wrong_types_are_400_naming_the_param() {
    let res = reqwest::Client::new()
        .post(chat_url())
        .header("content-type", "application/json")
        .body("{\"model\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_envelope(&body, Some("invalid_json"), None);

    let cases = [
        (json!({"model": MODEL, "messages": []}), "messages"),
        (json!({"model": MODEL}), "messages"),
        (json!({"messages": msgs()}), "model"),
        (
            json!({"model": MODEL, "messages": msgs(), "temperature": 2.5}),
            "temperature",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "temperature": "warm"}),
            "temperature",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "top_p": 1.5}),
            "top_p",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "max_tokens": 0}),
            "max_tokens",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "n": 100000}),
            "n",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "frequency_penalty": -3}),
            "frequency_penalty",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"model": MODEL, "messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "stop": ["a", "b", "c", "d", "e"]}),
            "stop",
        ),
        (
            json!({"model": MODEL, "messages": msgs(), "stream": "yes"}),
            "stream",
        ),
    ];
    for (body, param) in cases {
        let (status, res) = post_json(&chat_url(), &body).await;
        assert_eq!(status, 400, "{body} -> {res}");
        assert_envelope(&res, None, Some(param));
        assert!(
            res["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{param}`")),
            "{res}"
        );
    }
}

async fn prompt_plus_max_tokens_over_context_is_context_length_exceeded(engine: Engine) {
    let (status, body) = post_json(
        &chat_url(),
        &json!({"model": engine.model, "messages": msgs(), "max_tokens": 100000}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("context_length_exceeded"), Some("messages"));
    let long = "word ".repeat(9000);
    let (status, body) = post_json(
        &shared().url("/v1/completions"),
        &json!({"model": engine.model, "prompt": long, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("context_length_exceeded"), Some("prompt"));
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let huge = "x".repeat(5 * 1024 * 1024);
    let (status, body) = post_json(
        &chat_url(),
        &json!({"model": MODEL, "messages": [{"role": "user", "content": huge}]}),
    )
    .await;
    assert_eq!(status, 413);
    assert_envelope(&body, Some("request_too_large"), None);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_the_envelope() {
    let res = reqwest::get(shared().url("/v1/nothing")).await.unwrap();
    assert_eq!(res.status(), 404);
    assert_envelope(&res.json().await.unwrap(), Some("unknown_url"), None);
    let res = reqwest::get(chat_url()).await.unwrap();
    assert_eq!(res.status(), 405);
    assert_envelope(&res.json().await.unwrap(), Some("method_not_allowed"), None);
}

#[tokio::test]
async fn image_parts_and_tool_roles_are_clear_400s() {
    let (status, body) = post_json(
        &chat_url(),
        &json!({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&body, None, Some("messages[0].content[0]"));
    let (status, body) = post_json(
        &shared().url("/v1/completions"),
        &json!({"model": MODEL, "prompt": [[1, 2, 3]]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&body, None, Some("prompt"));
}

crate::per_engine!(prompt_plus_max_tokens_over_context_is_context_length_exceeded,);
