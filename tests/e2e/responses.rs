//! `/v1/responses` (OpenAI's Responses API) end to end on the real model (llama.cpp),
//! over raw HTTP: the named, numbered stream events, the stored response and its
//! continuation, and errors in OpenAI's envelope. The official SDK's checks are in
//! tests/sdk/openai_sdk.py.

use serde_json::{json, Value};

use crate::helpers::{assert_envelope, post_json, shared, LLAMA_CPP};

async fn stream(body: &Value) -> Vec<(String, Value)> {
    let response = reqwest::Client::new()
        .post(shared().url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("[DONE]"));
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|event| {
            let name = event
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_string();
            let data = event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .unwrap_or(Value::Null);
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn streamed_events_are_named_numbered_and_stored() {
    let events = stream(
        &json!({"model": LLAMA_CPP.model, "input": "Say hi", "stream": true,
        "max_output_tokens": 6, "temperature": 0}),
    )
    .await;
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added"
        ]
    );
    let last = &events.last().unwrap().1;
    assert!(["response.completed", "response.incomplete"].contains(&names[names.len() - 1]));
    let id = last["response"]["id"].as_str().unwrap();
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        deltas.as_str()
    );
    // The streamed response was stored: GET returns the same object.
    let stored: Value = reqwest::get(shared().url(&format!("/v1/responses/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(&stored, &last["response"]);
    // And it continues: the earlier turns are part of the next prompt.
    let (status, next) = post_json(
        &shared().url("/v1/responses"),
        &json!({"model": LLAMA_CPP.model, "input": "Again", "previous_response_id": id, "max_output_tokens": 4}),
    )
    .await;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["previous_response_id"], id);
    assert!(next["usage"]["input_tokens"].as_u64() > stored["usage"]["input_tokens"].as_u64());
}

#[tokio::test]
async fn errors_are_in_openai_envelope() {
    let url = shared().url("/v1/responses");
    for (body, status, param) in [
        (
            json!({"model": LLAMA_CPP.model, "input": "x", "previous_response_id": "resp_missing"}),
            404,
            "previous_response_id",
        ),
        (
            json!({"model": LLAMA_CPP.model, "input": "x", "tools": [{"type": "file_search"}]}),
            400,
            "tools[0].type",
        ),
        (
            json!({"model": LLAMA_CPP.model, "input": "x", "background": true}),
            400,
            "background",
        ),
        (
            json!({"model": LLAMA_CPP.model, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}),
            400,
            "input[0].content[0]",
        ),
        (json!({"model": "nope", "input": "x"}), 404, "model"),
    ] {
        let (got, answer) = post_json(&url, &body).await;
        assert_eq!(got, status, "{body} → {answer}");
        assert_envelope(&answer, None, Some(param));
    }
    let response = reqwest::get(shared().url("/v1/responses/resp_unknown"))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_envelope(&body, Some("not_found"), None);
    let response = reqwest::Client::new()
        .delete(shared().url("/v1/responses/resp_unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = reqwest::Client::new()
        .put(shared().url("/v1/responses/resp_unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}
