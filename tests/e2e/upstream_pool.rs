//! A pool of upstream servers behind one model, on real processes: two llamagate
//! servers with the real model and a server that is up but answers every generation
//! with a 500. Requests are balanced, those the failing member fails are retried on
//! another before their first byte, a member that goes down is ejected, one killed
//! mid-answer is not retried (the client sees the error, not a second answer), one that
//! comes back is taken back after its health check, one user's requests stay on one
//! member (session affinity), and with every member down the answer is a 503 with
//! `Retry-After` at once. llama.cpp's own llama-server is an upstream (its own request and
//! answer fields pass) and a pool member beside llamagate (killed, ejected, taken back).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{get_json, model_path, post_json, serve_binary, Served};

/// A member that is up (its `GET /v1/models`, the health check, answers 200) but fails
/// every generation with a 500.
fn failing_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 65536];
                let read = stream.read(&mut buf).unwrap_or(0);
                let (status, body) = if buf[..read].starts_with(b"GET ") {
                    ("200 OK", r#"{"object":"list","data":[]}"#)
                } else {
                    (
                        "500 Internal Server Error",
                        r#"{"error":{"message":"out of GPU memory","type":"server_error"}}"#,
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

/// A member: the real model as `m`.
async fn member() -> Served {
    serve_binary(&format!(
        "[[models]]\nname = \"m\"\nsource = \"{}\"\nengine = \"llama.cpp\"\npinned = true\nmax_concurrent = 2\n",
        model_path().display()
    ))
    .await
}

fn chat(max_tokens: u32) -> Value {
    json!({"model": "pooled", "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "user", "content": "Count from one to twenty."}]})
}

async fn members(front: &Served) -> Vec<Value> {
    let model = get_json(&front.server.url("/v1/models/pooled")).await;
    model["upstreams"].as_array().cloned().unwrap_or_default()
}

async fn state_of(front: &Served, url: &str) -> String {
    members(front)
        .await
        .iter()
        .find(|m| m["url"] == url)
        .map(|m| m["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Attempts the member at `url` of `pooled` was sent so far.
async fn requests_of(front: &Served, url: &str) -> u64 {
    members(front)
        .await
        .iter()
        .find(|m| m["url"] == url)
        .and_then(|m| m["requests"].as_u64())
        .unwrap_or_default()
}

/// Waits (up to 30 s) until the member at `url` is in `state`.
async fn until_state(front: &Served, url: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if state_of(front, url).await == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never became {state}: {:?}",
            members(front).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `count` chat requests, `at_once` at a time; returns their statuses.
async fn burst(front: &Served, count: usize, at_once: usize) -> Vec<u16> {
    let url = front.server.url("/v1/chat/completions");
    futures::stream::iter(0..count)
        .map(|_| {
            let url = url.clone();
            async move { post_json(&url, &chat(4)).await.0 }
        })
        .buffer_unordered(at_once)
        .collect()
        .await
}

#[tokio::test]
async fn a_pool_balances_fails_over_and_recovers() {
    let mut a = member().await;
    let mut b = member().await;
    let failing = format!("http://127.0.0.1:{}/v1", failing_port());
    let url_a = format!("{}/v1", a.server.base);
    let url_b = format!("{}/v1", b.server.base);
    let front = serve_binary(&format!(
        "[[models]]\nname = \"pooled\"\nsource = \"{url_a}\"\nupstream_model = \"m\"\nupstream_timeout_secs = 30\nhealth_check_interval_secs = 1\nslow_start_secs = 1\nmax_concurrent = 8\nsources = [\"{url_b}\", {{ url = \"{failing}\", weight = 2 }}]\n[[models]]\nname = \"sticky\"\nsource = \"{url_a}\"\nupstream_model = \"m\"\nsession_affinity = true\nsources = [\"{url_b}\"]\n"
    ))
    .await;
    // The pool is shown as soon as it is loaded, which starts at once (there is nothing
    // to read) but in the background, so `/health` can answer a moment before it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = members(&front).await;
        if listed.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{listed:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every request is answered: those sent to the failing member (its health checks
    // pass, so it stays in rotation) are retried on another one before their first byte.
    let statuses = burst(&front, 12, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let listed = members(&front).await;
    for m in &listed {
        if m["url"] != failing {
            assert!(m["requests"].as_u64().unwrap() > 0, "balanced: {listed:?}");
        }
    }
    let failing_entry = listed.iter().find(|m| m["url"] == failing).unwrap();
    assert!(
        failing_entry["failures"].as_u64().unwrap() >= 1,
        "{listed:?}"
    );

    // Session affinity: one user's requests all go to one member (balanced, one after
    // another, they would alternate).
    for _ in 0..6 {
        let (status, body) = post_json(
            &front.server.url("/v1/chat/completions"),
            &json!({"model": "sticky", "user": "alice", "max_tokens": 2,
                    "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let sticky = get_json(&front.server.url("/v1/models/sticky")).await;
    let mut counts: Vec<u64> = sticky["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["requests"].as_u64().unwrap())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [0, 6], "{sticky}");

    // A member killed: its requests go to the other; nothing is lost.
    b.kill();
    let statuses = burst(&front, 8, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    until_state(&front, &url_b, "ejected").await;

    // Back again: its health check takes it back (recovering, then healthy).
    b.restart().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while state_of(&front, &url_b).await == "ejected" {
        assert!(Instant::now() < deadline, "{:?}", members(&front).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until_state(&front, &url_b, "healthy").await;
    let before = requests_of(&front, &url_b).await;
    let statuses = burst(&front, 8, 4).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let after = requests_of(&front, &url_b).await;
    assert!(after > before, "the recovered member takes traffic again");

    // A member killed mid-answer: the client sees the stream fail, and no second answer
    // (it is never retried once tokens went out).
    let res = reqwest::Client::new()
        .post(front.server.url("/v1/chat/completions"))
        .json(&json!({"model": "pooled", "max_tokens": 400, "temperature": 0, "stream": true,
                      "messages": [{"role": "user", "content": "Count from one to five hundred."}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    let mut text = String::new();
    while !text.contains("\"content\":\"") {
        text.push_str(&String::from_utf8_lossy(
            &body.next().await.unwrap().unwrap(),
        ));
    }
    let busy: Vec<String> = members(&front)
        .await
        .iter()
        .filter(|m| m["outstanding"].as_u64() == Some(1))
        .map(|m| m["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(busy.len(), 1, "one member streams: {busy:?}");
    if busy[0] == url_a {
        a.kill();
    } else {
        b.kill();
    }
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_secs(30), body.next()).await
    {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains("\"error\""),
        "the stream ends in an error: {text}"
    );
    assert_eq!(
        text.matches("\"role\":\"assistant\"").count(),
        1,
        "one answer, never a second: {text}"
    );

    // Every member down: refused at once with 503 and Retry-After (circuit open).
    a.kill();
    b.kill();
    until_state(&front, &url_a, "ejected").await;
    until_state(&front, &url_b, "ejected").await;
    let started = Instant::now();
    let res = reqwest::Client::new()
        .post(front.server.url("/v1/chat/completions"))
        .json(&chat(4))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable", "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Metrics per member.
    let metrics = reqwest::get(front.server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "llamagate_upstream_requests_total",
        "llamagate_upstream_failures_total",
        "llamagate_upstream_ejections_total",
        "llamagate_upstream_response_seconds_total",
        "llamagate_upstream_healthy",
    ] {
        assert!(
            metrics.contains(&format!(
                "{name}{{model=\"pooled\",upstream=\"{failing}\"}}"
            )),
            "{name} for the failing member in {metrics}"
        );
    }
}

/// llama.cpp's own `llama-server` (scripts/build-llama-server.sh builds it; scripts/test.sh
/// does so in its set-up and names it in `LLAMA_SERVER`) on the test model, killed on drop.
struct LlamaServer {
    child: std::process::Child,
    port: u16,
}

impl LlamaServer {
    fn binary() -> std::path::PathBuf {
        let path = std::env::var_os("LLAMA_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/llamagate/llama-server/build/bin/llama-server")
            });
        assert!(
            path.is_file(),
            "llama-server {} missing: run scripts/build-llama-server.sh",
            path.display()
        );
        path
    }

    /// Starts it on `port` and waits (up to 60 s) for its `/health`.
    async fn start(port: u16) -> Self {
        let child = std::process::Command::new(Self::binary())
            .arg("-m")
            .arg(model_path())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-t", "2", "-c", "4096", "-np", "2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llama-server starts");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = format!("http://127.0.0.1:{port}/health");
        loop {
            if let Ok(res) = reqwest::get(&health).await {
                if res.status() == 200 {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "llama-server never became healthy"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn llama_server_is_an_upstream_and_a_pool_member() {
    let port = crate::helpers::free_port();
    let mut peer = LlamaServer::start(port).await;
    let back = member().await;
    let url_peer = peer.url();
    let url_back = format!("{}/v1", back.server.base);
    let front = serve_binary(&format!(
        "[[models]]\nname = \"direct\"\nsource = \"{url_peer}\"\nupstream_model = \"m\"\n[[models]]\nname = \"pooled\"\nsource = \"{url_peer}\"\nupstream_model = \"m\"\nupstream_timeout_secs = 30\nhealth_check_interval_secs = 1\nslow_start_secs = 1\nmax_concurrent = 8\nsources = [\"{url_back}\"]\n"
    ))
    .await;

    // Fields only llama-server knows reach it, and its own answer fields come back.
    let ask = json!({"model": "direct", "max_tokens": 6, "temperature": 0,
        "top_k": 1, "min_p": 0.05, "cache_prompt": true, "samplers": ["top_k", "temperature"],
        "logprobs": true, "top_logprobs": 2,
        "messages": [{"role": "user", "content": "Name three colours."}]});
    let (status, body) = post_json(&front.server.url("/v1/chat/completions"), &ask).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["timings"]["predicted_n"].as_u64().is_some(), "{body}");
    assert!(
        body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .is_some_and(|t| t.len() == 2),
        "{body}"
    );
    let prompt = body["usage"]["prompt_tokens"].as_u64().unwrap();
    let completion = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(prompt > 5 && (1..=6).contains(&completion), "{body}");

    // Streamed: its chunks as it wrote them, its usage in the metrics.
    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let text = reqwest::Client::new()
        .post(front.server.url("/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let events = crate::helpers::sse_data(&text);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str(e).ok())
        .collect();
    let usage = chunks
        .iter()
        .rev()
        .find(|c| c["usage"].is_object())
        .unwrap()["usage"]
        .clone();
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(prompt), "{text}");
    let metric = |name: &str| format!("llamagate_{name}_total{{model=\"direct\"}}");
    assert_eq!(
        front.server.metric(&metric("prompt_tokens")).await,
        (2 * prompt) as f64
    );
    assert_eq!(
        front.server.metric(&metric("generated_tokens")).await,
        (completion + usage["completion_tokens"].as_u64().unwrap()) as f64
    );

    // A pool of llama-server and llamagate: both take requests.
    assert!(burst(&front, 8, 4).await.iter().all(|s| *s == 200));
    assert!(requests_of(&front, &url_peer).await > 0);
    assert!(requests_of(&front, &url_back).await > 0);

    // llama-server goes away: every request is still answered (by llamagate), and it is
    // ejected; back again, it is taken back and serves.
    peer.kill();
    assert!(burst(&front, 6, 3).await.iter().all(|s| *s == 200));
    until_state(&front, &url_peer, "ejected").await;
    let peer = LlamaServer::start(port).await;
    until_state(&front, &url_peer, "healthy").await;
    let before = requests_of(&front, &url_peer).await;
    assert!(burst(&front, 8, 4).await.iter().all(|s| *s == 200));
    assert!(requests_of(&front, &url_peer).await > before);
    drop(peer);
}
