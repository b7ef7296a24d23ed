//! Tool calls in a model's own syntax. The real model (SmolLM2 on llama.cpp) served with a
//! Hermes tool template (tests/fixtures/hermes_tools.jinja: tools listed in the system
//! turn, calls in `<tool_call>` blocks): the grammar of that syntax makes `required` and
//! named calls valid, the answer is parsed back into calls on chat, Responses and
//! Messages, and earlier calls and results are rendered by the template. The scripted
//! engine checks several calls in one turn, which a 135M model does not choose to make.

use std::sync::{Arc, OnceLock};

use futures::StreamExt;
use llamagate::config::EngineKind;
use llamagate::engine::fake::FakeEngine;
use llamagate::engine::tools::ToolSyntax;
use serde_json::{json, Value};

use crate::helpers::{
    fake_model, post_json, post_sse, settings_with, smollm2, spawn_server, spawn_with_engine,
    sse_data, TestServer,
};

const HERMES: &str = include_str!("../fixtures/hermes_tools.jinja");

fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut model = smollm2("smol-hermes");
        model.engine = Some(EngineKind::LlamaCpp);
        model.chat_template = Some(HERMES.into());
        model.pinned = true;
        spawn_server(settings_with(vec![model]))
    })
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"], "additionalProperties": false}}}
    ])
}

/// The arguments are valid against the tool's schema.
fn valid_call(name: &str, arguments: &str) {
    let args: Value =
        serde_json::from_str(arguments).unwrap_or_else(|e| panic!("{e}: {arguments}"));
    match name {
        "get_weather" => {
            assert!(args["city"].is_string(), "{args}");
            assert!(
                ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap_or("")),
                "{args}"
            );
            assert_eq!(args.as_object().unwrap().len(), 2, "{args}");
        }
        "get_time" => {
            assert!(args["city"].is_string(), "{args}");
            assert_eq!(args.as_object().unwrap().len(), 1, "{args}");
        }
        other => panic!("unknown tool {other}"),
    }
}

#[tokio::test]
async fn required_calls_are_written_in_the_models_syntax_and_parsed_back() {
    for parallel in [false, true] {
        let (status, res) = post_json(
            &server().url("/v1/chat/completions"),
            &json!({"model": "smol-hermes", "max_tokens": 120, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
                "tools": tools(), "tool_choice": "required", "parallel_tool_calls": parallel}),
        )
        .await;
        assert_eq!(status, 200, "{res}");
        let choice = &res["choices"][0];
        let calls = choice["message"]["tool_calls"].as_array().unwrap();
        assert!(!calls.is_empty(), "{res}");
        if !parallel {
            assert_eq!(calls.len(), 1, "{res}");
            assert_eq!(choice["finish_reason"], "tool_calls", "{res}");
        }
        for call in calls {
            assert!(call["id"].as_str().unwrap().starts_with("call_"));
            if choice["finish_reason"] == "tool_calls" || call != calls.last().unwrap() {
                valid_call(
                    call["function"]["name"].as_str().unwrap(),
                    call["function"]["arguments"].as_str().unwrap(),
                );
            }
        }
        // The syntax itself never reaches the client.
        let content = choice["message"]["content"].as_str().unwrap_or("");
        assert!(!content.contains("<tool_call>"), "{res}");
    }
}

#[tokio::test]
async fn a_named_call_streams_its_name_then_argument_fragments() {
    let body = json!({"model": "smol-hermes", "max_tokens": 120, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "What time is it in Rome?"}],
        "tools": tools(), "tool_choice": {"type": "function", "function": {"name": "get_time"}}});
    let text = post_sse(&server().url("/v1/chat/completions"), &body).await;
    let chunks: Vec<Value> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(deltas.len() >= 3, "{text}");
    assert_eq!(deltas[0]["function"]["name"], "get_time");
    assert!(deltas[0]["id"].as_str().unwrap().starts_with("call_"));
    assert!(deltas[1..]
        .iter()
        .all(|d| d["id"].is_null() && d["index"] == 0));
    let arguments: String = deltas
        .iter()
        .map(|d| d["function"]["arguments"].as_str().unwrap_or(""))
        .collect();
    valid_call("get_time", &arguments);
    let finish = chunks
        .iter()
        .find_map(|c| c["choices"][0]["finish_reason"].as_str())
        .unwrap();
    assert_eq!(finish, "tool_calls");
}

#[tokio::test]
async fn earlier_calls_and_results_go_through_the_template() {
    let (status, res) = post_json(
        &server().url("/v1/chat/completions"),
        &json!({"model": "smol-hermes", "max_tokens": 20, "temperature": 0,
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees, sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "14:05"}],
            "tools": tools()}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    // The template's system turn lists the tools, then the two calls and their results.
    assert!(
        res["usage"]["prompt_tokens"].as_u64().unwrap() > 250,
        "{res}"
    );
    // Under `auto` the model may answer or call; a call is in the native syntax.
    let message = &res["choices"][0]["message"];
    assert!(
        !message["content"]
            .as_str()
            .unwrap_or("")
            .contains("<tool_call>"),
        "{res}"
    );
}

#[tokio::test]
async fn responses_and_messages_parse_the_native_calls() {
    let (status, res) = post_json(
        &server().url("/v1/responses"),
        &json!({"model": "smol-hermes", "max_output_tokens": 120, "temperature": 0,
            "input": "What is the weather in Oslo?", "store": false,
            "tools": [{"type": "function", "name": "get_weather", "description": "Current weather in a city.",
                "parameters": tools()[0]["function"]["parameters"]}],
            "tool_choice": "required", "parallel_tool_calls": false}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let item = &res["output"][0];
    assert_eq!(item["type"], "function_call", "{res}");
    valid_call("get_weather", item["arguments"].as_str().unwrap());

    let (status, res) = post_json(
        &server().url("/v1/messages"),
        &json!({"model": "smol-hermes", "max_tokens": 120, "temperature": 0,
            "messages": [{"role": "user", "content": "What time is it in Lima?"}],
            "tools": [{"name": "get_time", "description": "Current time in a city.",
                "input_schema": tools()[1]["function"]["parameters"]}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    assert_eq!(res["stop_reason"], "tool_use", "{res}");
    let block = res["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .unwrap();
    assert_eq!(block["name"], "get_time");
    valid_call("get_time", &block["input"].to_string());
}

/// A model that answers with two Hermes calls after a sentence.
fn scripted() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let engine = Arc::new(FakeEngine {
            script: [
                "Checking both.",
                "\n<tool_",
                "call>\n{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Paris\", ",
                "\"unit\": \"celsius\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            ]
            .map(String::from)
            .to_vec(),
            tool_syntax: Some(ToolSyntax::Hermes),
            ..FakeEngine::default()
        });
        spawn_with_engine(settings_with(vec![fake_model("caller")]), engine)
    })
}

#[tokio::test]
async fn several_calls_in_one_turn_on_every_route() {
    let body = json!({"model": "caller", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Weather and time in Paris?"}], "tools": tools()});
    let (status, res) = post_json(&scripted().url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{res}");
    let message = &res["choices"][0]["message"];
    assert_eq!(message["content"], "Checking both.\n");
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{res}");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[1]["function"]["name"], "get_time");
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(res["choices"][0]["finish_reason"], "tool_calls");

    // Streamed: each call's deltas carry its index.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let text = post_sse(&scripted().url("/v1/chat/completions"), &stream_body).await;
    let indexes: Vec<u64> = sse_data(&text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| {
            let c: Value = serde_json::from_str(d).unwrap();
            c["choices"][0]["delta"]["tool_calls"][0]["index"].as_u64()
        })
        .collect();
    assert!(indexes.contains(&0) && indexes.contains(&1), "{text}");
    assert!(indexes.windows(2).all(|w| w[0] <= w[1]), "{indexes:?}");

    let (status, res) = post_json(
        &scripted().url("/v1/responses"),
        &json!({"model": "caller", "input": "Weather and time?", "store": false,
            "tools": [{"type": "function", "name": "get_weather", "parameters": tools()[0]["function"]["parameters"]},
                      {"type": "function", "name": "get_time", "parameters": tools()[1]["function"]["parameters"]}]}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let kinds: Vec<&str> = res["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["message", "function_call", "function_call"],
        "{res}"
    );

    let (status, res) = post_json(
        &scripted().url("/v1/messages"),
        &json!({"model": "caller", "max_tokens": 50,
            "messages": [{"role": "user", "content": "Weather and time?"}],
            "tools": [{"name": "get_weather", "input_schema": tools()[0]["function"]["parameters"]},
                      {"name": "get_time", "input_schema": tools()[1]["function"]["parameters"]}]}),
    )
    .await;
    assert_eq!(status, 200, "{res}");
    let kinds: Vec<&str> = res["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text", "tool_use", "tool_use"], "{res}");
    assert_eq!(
        res["content"][1]["input"],
        json!({"city": "Paris", "unit": "celsius"})
    );
    assert_eq!(res["stop_reason"], "tool_use");

    // The OpenAI client reads the streamed calls back whole.
    let mut req: async_openai::types::CreateChatCompletionRequest =
        serde_json::from_value(body).unwrap();
    req.stream = Some(true);
    let mut stream = scripted().openai().chat().create_stream(req).await.unwrap();
    let mut names = Vec::new();
    while let Some(chunk) = stream.next().await {
        for c in chunk.unwrap().choices {
            for tc in c.delta.tool_calls.unwrap_or_default() {
                if let Some(name) = tc.function.and_then(|f| f.name) {
                    names.push((tc.index, name));
                }
            }
        }
    }
    assert_eq!(
        names,
        [(0, "get_weather".to_string()), (1, "get_time".to_string())]
    );
}
