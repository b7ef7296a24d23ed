//! Structured outputs and tool calls with the real model, and honest capabilities.

use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{
    get_json, post_json, settings_with, shared, smollm2, spawn_server, Engine, MODEL,
};

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "role": {"type": "string", "enum": ["admin", "user", "guest"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 4},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 30}, "zip": {"type": "string", "maxLength": 10}},
                "required": ["city", "zip"],
                "additionalProperties": false
            }
        },
        "required": ["name", "age", "role", "tags", "address"],
        "additionalProperties": false
    })
}

/// Checks the instance against the test schema (types, required, enum, no extras).
fn conforms(v: &Value) -> Result<(), String> {
    let o = v.as_object().ok_or("not an object")?;
    let keys: Vec<&str> = o.keys().map(String::as_str).collect();
    for k in ["name", "age", "role", "tags", "address"] {
        if !o.contains_key(k) {
            return Err(format!("missing {k}"));
        }
    }
    if keys.len() != 5 {
        return Err(format!("extra keys {keys:?}"));
    }
    o["name"].as_str().ok_or("name")?;
    o["age"].as_i64().ok_or("age")?;
    if !["admin", "user", "guest"].contains(&o["role"].as_str().ok_or("role")?) {
        return Err("role not in enum".into());
    }
    if !o["tags"]
        .as_array()
        .ok_or("tags")?
        .iter()
        .all(Value::is_string)
    {
        return Err("tags".into());
    }
    let a = o["address"].as_object().ok_or("address")?;
    if a.len() != 2 || !a["city"].is_string() || !a["zip"].is_string() {
        return Err("address".into());
    }
    Ok(())
}

async fn json_schema_output_validates_every_time_and_stops_when_complete(engine: Engine) {
    for run in 0..10 {
        let (status, body) = post_json(
            &shared().url("/v1/chat/completions"),
            &json!({
                "model": engine.model, "temperature": 0.8, "max_tokens": 300,
                "messages": [{"role": "user", "content": "Invent a person: name, age, role, tags and address."}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}
            }),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        let value: Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("run {run}: {e}: {text}"));
        conforms(&value).unwrap_or_else(|e| panic!("run {run}: {e}: {text}"));
        assert_eq!(
            body["choices"][0]["finish_reason"], "stop",
            "run {run}: {body}"
        );
        assert!(body["usage"]["completion_tokens"].as_u64().unwrap() < 300);
    }
}

async fn json_object_mode_gives_an_object(engine: Engine) {
    let (status, body) = post_json(
        &shared().url("/v1/chat/completions"),
        &json!({"model": engine.model, "max_tokens": 400, "temperature": 0,
            "messages": [{"role": "user", "content": "Give me a small JSON object with a cat's name and age."}],
            "response_format": {"type": "json_object"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value =
        serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(v.is_object());
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time", "description": "Current time in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}}
    ])
}

async fn a_named_tool_choice_gives_a_parseable_call_streamed_and_not(engine: Engine) {
    let body = json!({"model": engine.model, "max_tokens": 80, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let (status, res) = post_json(&shared().url("/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{res}");
    let choice = &res["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        args["city"].is_string()
            && ["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap())
    );

    // Streamed, through the OpenAI client's chunk parser.
    let mut req: async_openai::types::CreateChatCompletionRequest =
        serde_json::from_value(body).unwrap();
    req.stream = Some(true);
    let mut stream = shared().openai().chat().create_stream(req).await.unwrap();
    let (mut name, mut arguments, mut finish) = (String::new(), String::new(), None);
    while let Some(chunk) = stream.next().await {
        for c in chunk.unwrap().choices {
            for tc in c.delta.tool_calls.unwrap_or_default() {
                if let Some(f) = tc.function {
                    name.push_str(&f.name.unwrap_or_default());
                    arguments.push_str(&f.arguments.unwrap_or_default());
                }
            }
            if c.finish_reason.is_some() {
                finish = c.finish_reason;
            }
        }
    }
    assert_eq!(name, "get_weather");
    assert!(
        serde_json::from_str::<Value>(&arguments).is_ok(),
        "{arguments}"
    );
    assert_eq!(finish, Some(async_openai::types::FinishReason::ToolCalls));
}

async fn a_full_tool_round_trip(engine: Engine) {
    let first = json!({"model": engine.model, "max_tokens": 80, "temperature": 0,
        "messages": [{"role": "user", "content": "What time is it in Tokyo?"}],
        "tools": weather_tools(), "tool_choice": "required"});
    let (status, res) = post_json(&shared().url("/v1/chat/completions"), &first).await;
    assert_eq!(status, 200, "{res}");
    let call = res["choices"][0]["message"]["tool_calls"][0].clone();
    assert!(["get_weather", "get_time"].contains(&call["function"]["name"].as_str().unwrap()));
    let second = json!({"model": engine.model, "max_tokens": 30, "temperature": 0,
    "tools": weather_tools(),
    "messages": [
        {"role": "user", "content": "What time is it in Tokyo?"},
        {"role": "assistant", "content": null, "tool_calls": [call.clone()]},
        {"role": "tool", "tool_call_id": call["id"], "content": "{\"time\": \"14:05\"}"}
    ]});
    let (status, res) = post_json(&shared().url("/v1/chat/completions"), &second).await;
    assert_eq!(status, 200, "{res}");
    let msg = &res["choices"][0]["message"];
    // `auto`: the model either answers in text or calls again; both are well-formed.
    assert!(
        msg["content"].is_string() || msg["tool_calls"][0]["function"]["name"].is_string(),
        "{res}"
    );
}

#[tokio::test]
async fn unsupported_parameters_are_400_in_strict_mode_and_reported_otherwise() {
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for (param, value) in [
        ("logit_bias", json!({"50256": -100})),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
        ("functions", json!([{"name": "f"}])),
    ] {
        let mut body = json!({"model": MODEL, "messages": msgs, "max_tokens": 2});
        body[param] = value;
        let (status, res) = post_json(&shared().url("/v1/chat/completions"), &body).await;
        assert_eq!(status, 400, "{param}: {res}");
        assert_eq!(res["error"]["param"], param);
    }
    for (body, param) in [
        (
            json!({"model": MODEL, "messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}),
            "response_format.json_schema.name",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"model": MODEL, "messages": msgs, "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
    ] {
        let (status, res) = post_json(&shared().url("/v1/chat/completions"), &body).await;
        assert_eq!(status, 400, "{body}: {res}");
        assert_eq!(res["error"]["param"], param, "{res}");
    }

    let mut lenient = settings_with(vec![smollm2(MODEL)]);
    lenient.server.strict_params = false;
    let server = spawn_server(lenient);
    let res = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": MODEL, "messages": msgs, "max_tokens": 2, "logit_bias": {"1": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-llamagate-ignored-params"], "logit_bias");
}

#[tokio::test]
async fn models_state_their_capabilities() {
    let m: Value = get_json(&shared().url("/v1/models/smollm2")).await;
    let c = &m["capabilities"];
    assert_eq!(c["tools"], true);
    assert_eq!(c["json_schema"], true);
    assert_eq!(c["logprobs"], true);
    assert_eq!(c["vision"], false);
}

async fn a_schema_the_grammar_engine_rejects_is_a_400_streamed_or_not(engine: Engine) {
    for stream in [false, true] {
        let (status, body) = post_json(
            &shared().url("/v1/chat/completions"),
            &json!({"model": engine.model, "max_tokens": 20, "stream": stream,
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "bad",
                    "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}}}}}),
        )
        .await;
        assert_eq!(status, 400, "stream={stream}: {body}");
        assert_eq!(body["error"]["param"], "response_format");
        assert_eq!(body["error"]["code"], "invalid_schema");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("nonsense"),
            "{body}"
        );
    }
}

crate::per_engine!(
    json_schema_output_validates_every_time_and_stops_when_complete,
    json_object_mode_gives_an_object,
    a_named_tool_choice_gives_a_parseable_call_streamed_and_not,
    a_full_tool_round_trip,
    a_schema_the_grammar_engine_rejects_is_a_400_streamed_or_not,
);
