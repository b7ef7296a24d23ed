//! Legacy text completions.

use async_openai::types::{CreateCompletionRequestArgs, Prompt};
use futures::StreamExt;

use crate::helpers::{post_json, quiet, shared, Engine};

async fn text_prompt_completes_without_template(engine: Engine) {
    let res = shared()
        .openai()
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model(engine.model)
                .prompt("The capital of France is")
                .max_tokens(6u32)
                .temperature(0.0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.object, "text_completion");
    assert_eq!(res.choices.len(), 1);
    let usage = res.usage.unwrap();
    assert!(
        usage.prompt_tokens >= 4 && usage.prompt_tokens < 12,
        "{usage:?}"
    );
    assert!(usage.completion_tokens <= 6);
}

async fn list_of_prompts_gives_one_choice_each_in_order(engine: Engine) {
    let res = shared()
        .openai()
        .completions()
        .create(
            CreateCompletionRequestArgs::default()
                .model(engine.model)
                .prompt(Prompt::StringArray(vec![
                    "One, two,".into(),
                    "Red, green,".into(),
                ]))
                .max_tokens(4u32)
                .temperature(0.0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.choices.len(), 2);
    assert_eq!(res.choices[0].index, 0);
    assert_eq!(res.choices[1].index, 1);
    let usage = res.usage.unwrap();
    assert!(
        usage.completion_tokens >= 2 && usage.completion_tokens <= 8,
        "{usage:?}"
    );
}

async fn streamed_completion_matches_and_ends_with_done(engine: Engine) {
    let (_turn, server) = quiet().await;
    let body = serde_json::json!({
        "model": engine.model, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
        "stream": true, "stream_options": {"include_usage": true}
    });
    let text = crate::helpers::post_sse(&server.url("/v1/completions"), &body).await;
    let events = crate::helpers::sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let mut streamed = String::new();
    let mut usage = None;
    for e in &events[..events.len() - 1] {
        let v: serde_json::Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "text_completion");
        if let Some(c) = v["choices"].get(0) {
            streamed.push_str(c["text"].as_str().unwrap());
        }
        if !v["usage"].is_null() {
            usage = Some(v["usage"].clone());
        }
    }
    let mut plain = body.clone();
    plain["stream"] = false.into();
    plain.as_object_mut().unwrap().remove("stream_options");
    let (status, plain) = post_json(&server.url("/v1/completions"), &plain).await;
    assert_eq!(status, 200);
    assert_eq!(streamed, plain["choices"][0]["text"].as_str().unwrap());
    // Token counts agree; `prompt_tokens_details.cached_tokens` depends on what the
    // prefix cache held for each of the two requests.
    let usage = usage.unwrap();
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(usage[field], plain["usage"][field], "{field}");
    }

    // And through the client library's stream parser.
    let mut s = server
        .openai()
        .completions()
        .create_stream(
            CreateCompletionRequestArgs::default()
                .model(engine.model)
                .prompt("Once upon a time")
                .max_tokens(8u32)
                .temperature(0.0)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let mut via_client = String::new();
    while let Some(chunk) = s.next().await {
        for c in chunk.unwrap().choices {
            via_client.push_str(&c.text);
        }
    }
    assert_eq!(via_client, streamed);
}

async fn echo_puts_the_prompt_in_front(engine: Engine) {
    let (status, body) = post_json(
        &shared().url("/v1/completions"),
        &serde_json::json!({"model": engine.model, "prompt": "Hello", "max_tokens": 3, "temperature": 0, "echo": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Hello"));
}

async fn a_choice_ending_inside_a_multibyte_character_still_finishes(engine: Engine) {
    // Greedy continuation of emoji: the first token is an incomplete UTF-8 sequence.
    for max_tokens in 1..=3 {
        for stream in [false, true] {
            let (status, body) = post_json(
                &shared().url("/v1/completions"),
                &serde_json::json!({"model": engine.model, "prompt": "Emoji party: 😀🎉😀🎉😀🎉", "max_tokens": max_tokens, "temperature": 0, "stream": stream}),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            if stream {
                let text = body.as_str().unwrap().to_string();
                assert!(
                    text.contains("\"finish_reason\":\"length\"")
                        && text.ends_with("data: [DONE]\n\n"),
                    "{text}"
                );
            } else {
                assert_eq!(body["choices"][0]["finish_reason"], "length", "{body}");
                assert_eq!(body["usage"]["completion_tokens"], max_tokens, "{body}");
            }
        }
    }
}

crate::per_engine!(
    text_prompt_completes_without_template,
    list_of_prompts_gives_one_choice_each_in_order,
    streamed_completion_matches_and_ends_with_done,
    echo_puts_the_prompt_in_front,
    a_choice_ending_inside_a_multibyte_character_still_finishes,
);
