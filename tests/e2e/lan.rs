//! Hosting on a LAN: the OpenAPI document and viewer, the chat page, API keys, CORS,
//! request ids, the open-bind warning and graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llamagate::config::Secret;
use serde_json::json;

use crate::helpers::{
    assert_envelope, fake_model, free_port, model_path, settings_with, shared, smollm2,
    spawn_server, spawn_with_engine, TestServer, MODEL,
};

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_checked_in_file() {
    let generated = llamagate::api::openapi::document_json();
    let checked_in = std::fs::read_to_string(format!(
        "{}/openapi/openapi.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    assert!(
        generated == checked_in,
        "openapi/openapi.json is stale: run `llamagate openapi > openapi/openapi.json`"
    );
    let served = reqwest::get(shared().url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, generated);
    let doc: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/health",
        "/metrics",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} documented");
    }
    assert!(doc["components"]["schemas"].get("ErrorEnvelope").is_some());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    let docs = reqwest::get(shared().url("/docs")).await.unwrap();
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(
        html.contains("/docs/swagger-ui-bundle.js") && !html.contains("https://"),
        "no CDN"
    );
    let bundle = reqwest::get(shared().url("/docs/swagger-ui-bundle.js"))
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.text().await.unwrap().len() > 100_000);
}

#[tokio::test]
async fn the_chat_page_is_served_without_external_resources() {
    let res = reqwest::get(shared().url("/")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = res.text().await.unwrap();
    assert!(html.contains("/v1/chat/completions") && html.contains("id=\"stop\""));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "offline page"
    );
}

fn keyed_server() -> TestServer {
    let mut s = settings_with(vec![smollm2(MODEL)]);
    s.auth.api_keys = vec![Secret("user-key-123".into())];
    s.auth.admin_keys = vec![Secret("admin-key-123".into())];
    s.auth.protect_metrics = true;
    spawn_server(s)
}

async fn get(url: &str, key: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn api_keys_guard_the_protected_routes() {
    let server = keyed_server();
    for path in ["/v1/models", "/v1/models/smollm2-135m-instruct", "/metrics"] {
        for key in [None, Some("wrong-key-1")] {
            let (status, body) = get(&server.url(path), key).await;
            assert_eq!(status, 401, "{path} {key:?}");
            assert_envelope(
                &serde_json::from_str(&body).unwrap(),
                Some("invalid_api_key"),
                None,
            );
        }
        assert_eq!(
            get(&server.url(path), Some("user-key-123")).await.0,
            200,
            "{path}"
        );
        assert_eq!(
            get(&server.url(path), Some("admin-key-123")).await.0,
            200,
            "{path}"
        );
    }
    // POST routes too, before the body is even looked at.
    let res = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.headers().get("www-authenticate").is_some());
    // Open by default: health, the page, the docs.
    for path in ["/health", "/", "/docs", "/openapi.json"] {
        assert_eq!(get(&server.url(path), None).await.0, 200, "{path}");
    }
    // Admin routes need the admin key.
    assert_eq!(
        get(&server.url("/admin/memory"), Some("user-key-123"))
            .await
            .0,
        401
    );
    assert_eq!(
        get(&server.url("/admin/memory"), Some("admin-key-123"))
            .await
            .0,
        200
    );
    // A real OpenAI client with the key works.
    let client = async_openai::Client::with_config(
        async_openai::config::OpenAIConfig::new()
            .with_api_base(server.url("/v1"))
            .with_api_key("user-key-123"),
    );
    assert_eq!(client.models().list().await.unwrap().data.len(), 1);
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    // CORS needs no model: the scripted engine serves.
    let mut s = settings_with(vec![fake_model("fast")]);
    s.server.cors_allowed_origins = vec!["http://phone.lan:3000".into()];
    let server = spawn_with_engine(s, Arc::new(llamagate::engine::fake::FakeEngine::default()));
    let preflight = |origin: &'static str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, server.url("/v1/chat/completions"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header(
                "Access-Control-Request-Headers",
                "authorization, content-type",
            )
            .send()
    };
    let ok = preflight("http://phone.lan:3000").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://phone.lan:3000"
    );
    let refused = preflight("http://evil.example").await.unwrap();
    assert!(refused
        .headers()
        .get("access-control-allow-origin")
        .is_none());
    // The shared server allows no origin at all.
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, shared().url("/v1/models"))
        .header("Origin", "http://phone.lan:3000")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let res = reqwest::Client::new()
        .get(shared().url("/health"))
        .header("x-request-id", "my-trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "my-trace-42");
    let res = reqwest::get(shared().url("/health")).await.unwrap();
    assert_eq!(res.headers()["x-request-id"].len(), 36);
}

fn write_config(port: u16, host: &str, extra: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("llamagate-lan-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        format!(
            "[server]\nbind = \"{host}:{port}\"\nshutdown_grace_secs = 60\n{extra}\n[[models]]\nname = \"m\"\nsource = \"{}\"\ndevice = \"cpu\"\npinned = true\n",
            model_path().display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn binding_beyond_loopback_without_keys_warns_loudly() {
    let port = free_port();
    let config = write_config(port, "0.0.0.0", "");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env(crate::helpers::NO_MODELS_DIR, "")
        .env(crate::helpers::MEMORY_STORE, "")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut warned = false;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains("WITHOUT API KEYS") => {
                warned = true;
                break;
            }
            Some(Ok(line)) if line.contains("listening on") => break,
            Some(_) => {}
            None => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(config);
    assert!(warned, "no warning for an open bind without keys");
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_and_exits_zero() {
    let port = free_port();
    let config = write_config(port, "127.0.0.1", "");
    // The server's log goes to a file, read back into any failure's message.
    let log_path = std::env::temp_dir().join(format!("llamagate-sigterm-{port}.log"));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env(crate::helpers::NO_MODELS_DIR, "")
        .env(crate::helpers::MEMORY_STORE, "")
        .env("RUST_LOG", "info,actix_server=debug,actix_http=debug")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let server_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/health")).await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let res = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"model": "m", "prompt": "1, 2, 3, 4,", "max_tokens": 24, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut body = res.bytes_stream();
    use futures::StreamExt;
    let first = body.next().await.unwrap().unwrap();
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut text = String::from_utf8_lossy(&first).into_owned();
    let cut_at = Instant::now();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Err(e) => panic!(
                "the stream broke {:?} after SIGTERM: {e}\nreceived: {text}\nserver log:\n{}",
                cut_at.elapsed(),
                server_log()
            ),
        }
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream finished: {}\nserver log:\n{}",
        &text[text.len().saturating_sub(200)..],
        server_log()
    );
    assert!(text.contains("\"finish_reason\":\"length\""));
    // The grace (60 s) bounds the wait; the process leaves as soon as the stream is done
    // and idle keep-alive connections close.
    let deadline = Instant::now() + Duration::from_secs(75);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "process did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_file(config);
    assert_eq!(status.code(), Some(0), "{}", server_log());
    let _ = std::fs::remove_file(&log_path);
}
