//! Every renderer's output checked against the published API schemas: the JSON Schemas in
//! `tests/schemas/` are the official `openai` and `anthropic` SDKs' types (generated from
//! OpenAI's and Anthropic's OpenAPI specifications), written with their versions by
//! `scripts/api-schemas.py`. Scripted event sequences cover text, stop, length, tool calls
//! (portable and native, several in one turn), reasoning and failures mid-stream; each
//! streamed chunk and each folded answer must validate.

use serde::Serialize;
use serde_json::Value;

use super::chat::{ChatAnswer, ChatMeta, ChatRenderer};
use super::completions::{CompletionAnswer, CompletionMeta, CompletionRenderer};
use super::messages::{MessageAnswer, MessageMeta, MessagesRenderer};
use super::responses::tests::{done, finished, text};
use super::responses::{ResponseAnswer, ResponseMeta, ResponsesRenderer};
use super::{Fold, Renderer};
use crate::engine::tools::ToolSyntax;
use crate::engine::{FinishReason, TokenEvent, TokenLogprob, TopLogprob};

fn schema(name: &str) -> jsonschema::Validator {
    let text = match name {
        "openai/chat_completion" => include_str!("../../tests/schemas/openai/chat_completion.json"),
        "openai/chat_completion_chunk" => {
            include_str!("../../tests/schemas/openai/chat_completion_chunk.json")
        }
        "openai/completion" => include_str!("../../tests/schemas/openai/completion.json"),
        "openai/create_embedding_response" => {
            include_str!("../../tests/schemas/openai/create_embedding_response.json")
        }
        "openai/error_object" => include_str!("../../tests/schemas/openai/error_object.json"),
        "openai/response" => include_str!("../../tests/schemas/openai/response.json"),
        "openai/response_stream_event" => {
            include_str!("../../tests/schemas/openai/response_stream_event.json")
        }
        "anthropic/message" => include_str!("../../tests/schemas/anthropic/message.json"),
        "anthropic/raw_message_stream_event" => {
            include_str!("../../tests/schemas/anthropic/raw_message_stream_event.json")
        }
        "anthropic/message_tokens_count" => {
            include_str!("../../tests/schemas/anthropic/message_tokens_count.json")
        }
        "anthropic/error_response" => {
            include_str!("../../tests/schemas/anthropic/error_response.json")
        }
        other => panic!("no schema {other}"),
    };
    let schema: Value = serde_json::from_str(text).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

/// Fails with every violation when `value` does not validate.
fn check<T: Serialize>(validator: &jsonschema::Validator, what: &str, value: &T) {
    let value = serde_json::to_value(value).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}\n{value:#}");
}

/// A scripted answer: what it shows, the reader's thinking and tool settings, its events.
type Script = (
    &'static str,
    Option<bool>,
    Option<ToolSyntax>,
    Vec<TokenEvent>,
);

fn scripts() -> Vec<Script> {
    let hermes_two = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    vec![
        (
            "text",
            None,
            None,
            vec![
                text("Hello"),
                text(" there"),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        (
            "length",
            None,
            None,
            vec![text("Hel"), finished(FinishReason::Length), done()],
        ),
        (
            "stop sequence",
            None,
            None,
            vec![text("a"), finished(FinishReason::StopSequence(0)), done()],
        ),
        (
            "portable call",
            None,
            Some(ToolSyntax::Json),
            vec![
                text("{\"name\": \"get_weather\", \"arguments\": "),
                text("{\"city\": \"Paris\"}}"),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        (
            "portable text",
            None,
            Some(ToolSyntax::Json),
            vec![
                text("{\"content\": \"Hi\"}"),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        (
            "native calls with text",
            None,
            Some(ToolSyntax::Hermes),
            vec![
                text("Checking.\n"),
                text(&hermes_two[..30]),
                text(&hermes_two[30..]),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        (
            "call cut short",
            None,
            Some(ToolSyntax::Hermes),
            vec![
                text("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"ci"),
                finished(FinishReason::Length),
                done(),
            ],
        ),
        (
            "reasoning",
            Some(false),
            None,
            vec![
                text("<think>\nHm"),
                text("m.</think>\n\nFour."),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        (
            "reasoning then a call",
            Some(true),
            Some(ToolSyntax::Hermes),
            vec![
                text("The user wants weather.</think>\n\n"),
                text(&hermes_two[..70]),
                text(&hermes_two[70..]),
                finished(FinishReason::Stop),
                done(),
            ],
        ),
        ("failed mid-stream", None, None, vec![text("Hel")]),
    ]
}

#[test]
fn chat_chunks_and_answers_match_openais_schema() {
    let chunk = schema("openai/chat_completion_chunk");
    let answer = schema("openai/chat_completion");
    for (what, thinking, tools, events) in scripts() {
        for logprobs in [false, true] {
            let meta = ChatMeta {
                id: "chatcmpl-1".into(),
                created: 1,
                model: "m".into(),
                n: 1,
                tools,
                logprobs,
                include_usage: true,
                thinking,
            };
            let mut renderer = ChatRenderer::new(meta.clone());
            let mut fold = ChatAnswer::new(meta);
            let mut chunks = renderer.start();
            for event in events.clone() {
                let event = match event {
                    TokenEvent::Text { choice, text, .. } if logprobs => TokenEvent::Text {
                        choice,
                        logprobs: vec![TokenLogprob {
                            token: text.clone(),
                            logprob: -0.5,
                            top: vec![TopLogprob {
                                token: text.clone(),
                                logprob: -0.5,
                            }],
                        }],
                        text,
                    },
                    other => other,
                };
                chunks.extend(renderer.push(event));
            }
            for c in chunks {
                check(&chunk, what, &c);
                fold.absorb(c);
            }
            if let Some(a) = fold.finish() {
                check(&answer, what, &a);
            }
        }
    }
}

#[test]
fn completion_chunks_and_answers_match_openais_schema() {
    let validator = schema("openai/completion");
    for (what, _, _, events) in scripts() {
        let meta = CompletionMeta {
            id: "cmpl-1".into(),
            created: 1,
            model: "m".into(),
            n: 1,
            prompts: vec!["Say".into()],
            echo: true,
            logprobs: false,
            include_usage: true,
        };
        let mut renderer = CompletionRenderer::new(meta.clone());
        let mut fold = CompletionAnswer::new(meta);
        let mut chunks = renderer.start();
        for event in events {
            chunks.extend(renderer.push((0, event)));
        }
        for c in chunks {
            // OpenAI streams `finish_reason: null` until a choice ends; the published type
            // (shared with the whole answer) does not allow it.
            let mut value = serde_json::to_value(&c).unwrap();
            for choice in value["choices"].as_array_mut().unwrap() {
                if choice["finish_reason"].is_null() {
                    choice["finish_reason"] = "stop".into();
                }
            }
            check(&validator, what, &value);
            fold.absorb(c);
        }
        if let Some(a) = fold.finish() {
            check(&validator, what, &a);
        }
    }
}

#[test]
fn embeddings_match_openais_schema() {
    let validator = schema("openai/create_embedding_response");
    // `encoding_format: base64` sends a string where the published type has the floats
    // (the SDK decodes it); the float answer is checked.
    let answer = super::embeddings::render("m", vec![vec![0.6, 0.8], vec![1.0, 0.0]], 4, false);
    check(&validator, "embeddings", &answer);
}

#[test]
fn responses_events_and_objects_match_openais_schema() {
    let event = schema("openai/response_stream_event");
    let object = schema("openai/response");
    for (what, thinking, tools, events) in scripts() {
        let meta = ResponseMeta {
            response: super::responses::tests::response(),
            tools,
            thinking,
        };
        let mut renderer = ResponsesRenderer::new(meta);
        let mut fold = ResponseAnswer::new();
        let mut out = renderer.start();
        let failing = !events.iter().any(|e| matches!(e, TokenEvent::Done(_)));
        for e in events {
            out.extend(renderer.push(e));
        }
        if failing {
            out.extend(renderer.fail("engine_error", "the engine stopped"));
        }
        for e in out {
            // Each event's response first: its errors say more than the event's `anyOf`.
            if let Some(r) = serde_json::to_value(&e).unwrap().get("response") {
                check(&object, what, r);
            }
            check(&event, what, &e);
            fold.absorb(e);
        }
        if let Some(r) = fold.finish() {
            check(&object, what, &r);
        }
    }
}

#[test]
fn messages_events_and_messages_match_anthropics_schema() {
    let event = schema("anthropic/raw_message_stream_event");
    let message = schema("anthropic/message");
    for (what, thinking, tools, events) in scripts() {
        let meta = MessageMeta {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 9,
            tools,
            thinking,
            stop_sequences: vec!["END".into()],
        };
        let mut renderer = MessagesRenderer::new(meta);
        let mut fold = MessageAnswer::new();
        let mut out = renderer.start();
        for e in events {
            out.extend(renderer.push(e));
        }
        for e in out {
            // The SDK reads `ping` apart from the other events; its type has no schema.
            if !matches!(e, crate::anthropic::messages::StreamEvent::Ping) {
                check(&event, what, &e);
            }
            fold.absorb(e);
        }
        if let Some(m) = fold.finish() {
            check(&message, what, &m);
        }
    }
}

#[test]
fn error_envelopes_match_both_schemas() {
    use crate::error::ApiError;
    let openai = schema("openai/error_object");
    let anthropic = schema("anthropic/error_response");
    for e in [
        ApiError::invalid("messages[0].role", "`messages[0].role` must be …"),
        ApiError::Engine("the engine stopped".into()),
    ] {
        check(&openai, "openai error", &e.envelope().error);
        check(&anthropic, "anthropic error", &e.anthropic_envelope());
    }
    let count = schema("anthropic/message_tokens_count");
    check(
        &count,
        "count_tokens",
        &serde_json::json!({"input_tokens": 12}),
    );
}
