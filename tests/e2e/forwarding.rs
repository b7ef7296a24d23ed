//! Forwarding without loss, through a pool of two recording upstreams (real HTTP servers
//! on loopback that keep every request they get and answer with fixed bytes): a chat
//! request with every field OpenAI's schema defines (and one it does not) reaches the
//! upstream unchanged but for `model`; the answers, whole and streamed (split
//! mid-event on the wire), come back byte for byte; the upstream's own 400 comes back as
//! it wrote it; the Responses and Messages APIs, completions and embeddings are
//! forwarded the same way (Anthropic's headers passed, its key as `x-api-key`); a
//! request header keys session affinity; usage is metered from the upstream's numbers;
//! and llamagate still answers for what it guards itself (malformed JSON, body size).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{serve_binary, Served};

/// One request a recording upstream received.
#[derive(Debug, Clone)]
struct Recorded {
    member: usize,
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Log = Arc<Mutex<Vec<Recorded>>>;

const CHAT_JSON: &str = r#"{"id":"chatcmpl-rec","object":"chat.completion","created":1,"model":"back-name","system_fingerprint":"fp_rec","choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}],"annotations":[],"audio":{"id":"audio_1","data":"UklGRg==","expires_at":9,"transcript":"hi"}},"logprobs":{"content":[{"token":"x","logprob":-0.25,"bytes":[120],"top_logprobs":[]}],"refusal":null},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":42,"completion_tokens":7,"total_tokens":49,"prompt_tokens_details":{"cached_tokens":32,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":3}},"service_tier":"default","x_vendor":{"kept":true}}"#;

const CHAT_SSE: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"Weather: a tool.\"},\"finish_reason\":null}],\"usage\":null}\n\n",
    ": an upstream's own comment\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"usage\":null,\"x_vendor\":1}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"back-name\",\"choices\":[],\"usage\":{\"prompt_tokens\":42,\"completion_tokens\":7,\"total_tokens\":49}}\n\n",
    "data: [DONE]\n\n",
);

const ERROR_400: &str = r#"{"error":{"message":"'audio' needs a model with audio output","type":"invalid_request_error","param":"audio","code":"unsupported_parameter"},"x_upstream":"its own words"}"#;

const RESPONSES_JSON: &str = r#"{"id":"resp_rec","object":"response","created_at":1,"status":"completed","model":"back-name","output":[{"type":"web_search_call","id":"ws_1","status":"completed"},{"type":"message","id":"msg_1","role":"assistant","status":"completed","content":[{"type":"output_text","text":"Sunny.","annotations":[{"type":"url_citation","url":"https://example.org","start_index":0,"end_index":6,"title":"x"}]}]}],"usage":{"input_tokens":13,"output_tokens":4,"total_tokens":17}}"#;

const RESPONSES_SSE: &str = concat!(
    "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_rec\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[]}}\n\n",
    "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Sunny.\"}\n\n",
    "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":2,\"response\":{\"id\":\"resp_rec\",\"object\":\"response\",\"status\":\"completed\",\"usage\":{\"input_tokens\":13,\"output_tokens\":4,\"total_tokens\":17}}}\n\n",
);

const MESSAGES_SSE: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_rec\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"back-name\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hm.\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"sig\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

const COMPLETION_JSON: &str = r#"{"id":"cmpl-rec","object":"text_completion","created":1,"model":"back-name","choices":[{"index":0,"text":" there","logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}}"#;

const EMBEDDINGS_JSON: &str = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25,-0.5]}],"model":"back-name","usage":{"prompt_tokens":3,"total_tokens":3}}"#;

/// What the recording upstream answers to `path` with `body`: status, content type, bytes.
fn answer(path: &str, body: &Value) -> (&'static str, &'static str, &'static str) {
    let stream = body["stream"] == true;
    let json = "application/json";
    let sse = "text/event-stream";
    match path {
        _ if body.get("x_answer_400").is_some() => ("400 Bad Request", json, ERROR_400),
        "/v1/chat/completions" if stream => ("200 OK", sse, CHAT_SSE),
        "/v1/chat/completions" => ("200 OK", json, CHAT_JSON),
        "/v1/responses" if stream => ("200 OK", sse, RESPONSES_SSE),
        "/v1/responses" => ("200 OK", json, RESPONSES_JSON),
        "/v1/messages" => ("200 OK", sse, MESSAGES_SSE),
        "/v1/completions" => ("200 OK", json, COMPLETION_JSON),
        "/v1/embeddings" => ("200 OK", json, EMBEDDINGS_JSON),
        _ => (
            "404 Not Found",
            json,
            r#"{"error":{"message":"no such route"}}"#,
        ),
    }
}

/// One request as read: its request line, headers (names lower-cased) and body.
type RawRequest = (String, Vec<(String, String)>, Vec<u8>);

/// Reads one HTTP/1.1 request.
fn read_request(stream: &mut std::net::TcpStream) -> Option<RawRequest> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        body.extend_from_slice(&buf[..n]);
    }
    Some((request_line, headers, body))
}

/// A recording upstream: keeps every POST in `log` as `member`, answers from [`answer`];
/// event streams are written in pieces cut mid-event.
fn recorder(member: usize, log: Log) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let Some((line, headers, body)) = read_request(&mut stream) else {
                    return;
                };
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                if line.starts_with("GET ") {
                    let list = r#"{"object":"list","data":[{"id":"back-name","object":"model"}]}"#;
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{list}", list.len());
                    return;
                }
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (status, kind, bytes) = answer(&path, &body);
                log.lock().unwrap().push(Recorded {
                    member,
                    path,
                    headers,
                    body,
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nx-ratelimit-remaining-requests: 99\r\nconnection: close\r\n\r\n",
                    bytes.len()
                );
                // Pieces of 37 bytes: most events arrive in several reads.
                for piece in bytes.as_bytes().chunks(37) {
                    let _ = stream.write_all(piece);
                    let _ = stream.flush();
                    if kind == "text/event-stream" {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            });
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

/// A chat request with every field of OpenAI's `CreateChatCompletionRequest`, each
/// message role and content part, and a field no schema defines.
fn every_chat_field() -> Value {
    json!({
        "model": "fwd",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief."}], "name": "dev"},
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "name": "ann", "content": [
                {"type": "text", "text": "What is this and the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}
            ]},
            {"role": "assistant", "content": null, "refusal": null, "audio": {"id": "audio_0"},
             "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}],
             "function_call": null},
            {"role": "tool", "tool_call_id": "call_0", "content": [{"type": "text", "text": "{\"sky\":\"clear\"}"}]},
            {"role": "function", "name": "get_weather", "content": "{\"sky\":\"clear\"}"}
        ],
        "audio": {"voice": "alloy", "format": "wav"},
        "frequency_penalty": 0.5,
        "function_call": "auto",
        "functions": [{"name": "legacy", "description": "old style", "parameters": {"type": "object"}}],
        "logit_bias": {"50256": -100},
        "logprobs": true,
        "max_completion_tokens": 64,
        "max_tokens": 64,
        "metadata": {"team": "weather"},
        "modalities": ["text", "audio"],
        "n": 1,
        "parallel_tool_calls": false,
        "prediction": {"type": "content", "content": "Sunny"},
        "presence_penalty": -0.5,
        "prompt_cache_key": "conversation-7",
        "prompt_cache_retention": "24h",
        "reasoning_effort": "minimal",
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "strict": true, "schema": {"type": "object", "properties": {"sky": {"type": "string"}}, "required": ["sky"], "additionalProperties": false}}},
        "safety_identifier": "hash-of-ann",
        "seed": 7,
        "service_tier": "auto",
        "stop": ["\n\n", "END"],
        "store": true,
        "stream": false,
        "stream_options": {"include_usage": true, "include_obfuscation": false},
        "temperature": 1.3,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather", "strict": true,
             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}},
            {"type": "custom", "custom": {"name": "sql", "format": {"type": "grammar", "grammar": {"syntax": "lark", "definition": "start: /.+/"}}}}
        ],
        "top_logprobs": 3,
        "top_p": 0.9,
        "user": "ann",
        "verbosity": "low",
        "web_search_options": {"search_context_size": "low", "user_location": {"type": "approximate", "approximate": {"city": "Paris"}}},
        "x_vendor_extension": {"nested": [1, "two", {"three": null}]}
    })
}

/// `sent` as the upstream must get it: `model` rewritten, nothing else.
fn as_forwarded(sent: &Value) -> Value {
    let mut expected = sent.clone();
    expected["model"] = json!("back-name");
    expected
}

async fn post(
    front: &Served,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut call = reqwest::Client::new()
        .post(front.server.url(path))
        .json(body)
        .timeout(Duration::from_secs(60));
    for (n, v) in headers {
        call = call.header(*n, *v);
    }
    call.send().await.unwrap()
}

fn last(log: &Log) -> Recorded {
    log.lock().unwrap().last().cloned().unwrap()
}

#[tokio::test]
async fn requests_and_answers_pass_through_a_pool_unchanged() {
    let log: Log = Arc::default();
    let a = recorder(0, log.clone());
    let b = recorder(1, log.clone());
    let front = serve_binary(&format!(
        "max_body_bytes = 200000\n[[models]]\nname = \"fwd\"\nsource = \"{a}\"\nupstream_model = \"back-name\"\nupstream_api_key = \"key-a\"\nsources = [{{ url = \"{b}\", api_key = \"key-b\" }}]\nforward_apis = [\"chat_completions\", \"completions\", \"embeddings\", \"responses\", \"messages\"]\nsession_affinity = true\naffinity_header = \"x-session-id\"\nhealth_check_interval_secs = 0\n"
    ))
    .await;

    // Every field reaches the upstream as sent (what llamagate runs itself would refuse
    // audio output, `n` with tools and more: none of that is its to judge here).
    let sent = every_chat_field();
    let res = post(&front, "/v1/chat/completions", &sent, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(res.headers()["x-ratelimit-remaining-requests"], "99");
    assert_eq!(
        res.text().await.unwrap(),
        CHAT_JSON,
        "the answer, byte for byte"
    );
    let got = last(&log);
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.body,
        as_forwarded(&sent),
        "the request, field for field"
    );
    let key = if got.member == 0 {
        "Bearer key-a"
    } else {
        "Bearer key-b"
    };
    assert_eq!(got.header("authorization"), Some(key));

    // Streamed: the same events, in the same bytes, though they arrived cut mid-event.
    let mut streamed = sent.clone();
    streamed["stream"] = json!(true);
    let res = post(&front, "/v1/chat/completions", &streamed, &[]).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(res.text().await.unwrap(), CHAT_SSE);
    assert_eq!(last(&log).body, as_forwarded(&streamed));

    // The upstream's own refusal, status and body as it wrote them.
    let mut refused = sent.clone();
    refused["x_answer_400"] = json!(true);
    let res = post(&front, "/v1/chat/completions", &refused, &[]).await;
    assert_eq!(res.status(), 400);
    assert_eq!(res.text().await.unwrap(), ERROR_400);

    // The Responses API, whole and streamed, with fields llamagate does not run.
    let responses = json!({"model": "fwd", "input": [{"role": "user", "content": [
            {"type": "input_text", "text": "Weather?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}],
        "tools": [{"type": "web_search"}], "include": ["reasoning.encrypted_content"],
        "previous_response_id": "resp_upstream_1", "store": true, "background": false,
        "reasoning": {"effort": "high", "summary": "auto"}, "text": {"verbosity": "low"}});
    let res = post(&front, "/v1/responses", &responses, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), RESPONSES_JSON);
    assert_eq!(last(&log).path, "/v1/responses");
    assert_eq!(last(&log).body, as_forwarded(&responses));
    let mut responses_streamed = responses.clone();
    responses_streamed["stream"] = json!(true);
    let res = post(&front, "/v1/responses", &responses_streamed, &[]).await;
    assert_eq!(res.text().await.unwrap(), RESPONSES_SSE);

    // Anthropic's Messages API: its headers passed on, the key as `x-api-key`.
    let messages = json!({"model": "fwd", "max_tokens": 64, "stream": true,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}],
        "metadata": {"user_id": "ann"}, "mcp_servers": [], "x_vendor": true});
    let res = post(
        &front,
        "/v1/messages",
        &messages,
        &[
            ("anthropic-version", "2023-06-01"),
            ("anthropic-beta", "interleaved-thinking-2025-05-14"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), MESSAGES_SSE);
    let got = last(&log);
    assert_eq!(
        (got.path.as_str(), &got.body),
        ("/v1/messages", &as_forwarded(&messages))
    );
    assert_eq!(got.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        got.header("anthropic-beta"),
        Some("interleaved-thinking-2025-05-14")
    );
    let key = if got.member == 0 { "key-a" } else { "key-b" };
    assert_eq!(
        (got.header("x-api-key"), got.header("authorization")),
        (Some(key), None)
    );

    // Completions and embeddings too.
    let completion = json!({"model": "fwd", "prompt": ["Hello", [15496, 11]], "echo": true, "best_of": 2, "suffix": "!"});
    let res = post(&front, "/v1/completions", &completion, &[]).await;
    assert_eq!(res.text().await.unwrap(), COMPLETION_JSON);
    assert_eq!(last(&log).body, as_forwarded(&completion));
    let embedding = json!({"model": "fwd", "input": "hi", "encoding_format": "float", "dimensions": 2, "user": "ann"});
    let res = post(&front, "/v1/embeddings", &embedding, &[]).await;
    assert_eq!(res.text().await.unwrap(), EMBEDDINGS_JSON);
    assert_eq!(last(&log).body, as_forwarded(&embedding));

    // One conversation named by the header stays on one member; without affinity keys
    // requests spread.
    let mut plain = every_chat_field();
    for key in ["user", "prompt_cache_key", "safety_identifier"] {
        plain.as_object_mut().unwrap().remove(key);
    }
    for session in ["s-1", "s-2"] {
        let before = log.lock().unwrap().len();
        for _ in 0..6 {
            let res = post(
                &front,
                "/v1/chat/completions",
                &plain,
                &[("x-session-id", session)],
            )
            .await;
            assert_eq!(res.status(), 200);
        }
        let members: Vec<usize> = log.lock().unwrap()[before..]
            .iter()
            .map(|r| r.member)
            .collect();
        assert!(
            members.iter().all(|m| *m == members[0]),
            "{session}: {members:?}"
        );
    }
    let before = log.lock().unwrap().len();
    for _ in 0..8 {
        post(&front, "/v1/chat/completions", &plain, &[]).await;
    }
    let members: Vec<usize> = log.lock().unwrap()[before..]
        .iter()
        .map(|r| r.member)
        .collect();
    assert!(
        members.contains(&0) && members.contains(&1),
        "balanced: {members:?}"
    );

    // Metered from the upstream's usage: 42 + 42 (chat), 13 + 13 (responses), 11
    // (messages), 2 (completions), and 14 chat requests of 42 after.
    let prompt = front
        .server
        .metric("llamagate_prompt_tokens_total{model=\"fwd\"}")
        .await;
    assert_eq!(prompt, (42 * 2 + 13 * 2 + 11 + 2 + 42 * 20) as f64);
    let generated = front
        .server
        .metric("llamagate_generated_tokens_total{model=\"fwd\"}")
        .await;
    assert_eq!(generated, (7 * 2 + 4 * 2 + 5 + 1 + 7 * 20) as f64);
    let embedded = front
        .server
        .metric("llamagate_embedding_input_tokens_total{model=\"fwd\"}")
        .await;
    assert_eq!(embedded, 3.0);

    // What llamagate guards itself still answers in its own envelope.
    let res = reqwest::Client::new()
        .post(front.server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{\"model\": \"fwd\", ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    let mut huge = sent.clone();
    huge["x_padding"] = json!("x".repeat(300_000));
    let res = post(&front, "/v1/chat/completions", &huge, &[]).await;
    assert_eq!(res.status(), 413);
}

#[tokio::test]
async fn a_busy_local_model_overflows_to_its_upstream_without_loss() {
    let log: Log = Arc::default();
    let a = recorder(0, log.clone());
    let front = serve_binary(&format!(
        "[[models]]\nname = \"local\"\nsource = \"{}\"\nmax_concurrent = 1\nqueue_size = 0\noverflow = \"fwd\"\n\n[[models]]\nname = \"fwd\"\nsource = \"{a}\"\nupstream_model = \"back-name\"\n",
        crate::helpers::model_path().display()
    ))
    .await;

    // The local model answers while it has room: the upstream sees nothing. A long
    // answer, streamed, holds its one slot (its own client: `post`'s 60 s bound the whole
    // answer, which a loaded CI machine can take longer than to write).
    let mut held = reqwest::Client::new()
        .post(front.server.url("/v1/chat/completions"))
        .json(&json!({"model": "local", "stream": true, "max_tokens": 1000, "temperature": 0,
                "messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]}))
        .timeout(Duration::from_secs(600))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 200);
    assert!(!held.chunk().await.unwrap().unwrap().is_empty());
    assert!(log.lock().unwrap().is_empty());

    // Busy, no queue: the next request goes to the overflow model as the client sent it
    // (tools, images and all), not a 429.
    let mut sent = every_chat_field();
    sent["model"] = json!("local");
    let res = post(&front, "/v1/chat/completions", &sent, &[]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), CHAT_JSON);
    assert_eq!(last(&log).body, as_forwarded(&sent));
    assert_eq!(
        front
            .server
            .metric("llamagate_overflow_requests_total{model=\"local\",to=\"fwd\"}")
            .await,
        1.0
    );

    // The held answer was still going, and ends well.
    let mut rest = Vec::new();
    while let Some(chunk) = held.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("[DONE]"), "{rest}");
}
