//! What a LAN exposes: access policy bound to routes (every spelling of a path the router
//! accepts meets its route's policy, over raw sockets so nothing normalises the path),
//! the admin loopback rule, slow and stalled clients, and requests of many generations
//! that must not hold sequence slots while they wait.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use llamagate::config::{EngineKind, Secret, Settings};
use llamagate::engine::fake::FakeEngine;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{
    fake_model, get_json, settings_with, smollm2, spawn_server, spawn_with_engine, TestServer,
    LLAMA_CPP,
};

const USER_KEY: &str = "user-key-7f3a";
const ADMIN_KEY: &str = "admin-key-91c2";

/// One raw HTTP/1.1 exchange: the request target goes out byte for byte as given.
fn raw(base: &str, method: &str, target: &str, key: Option<&str>) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let body = if method == "POST" { "{}" } else { "" };
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line for {method} {target}: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A server with API and admin keys and every `protect_*` flag on: every route needs a
/// key, admin routes the admin key.
fn guarded() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut model = smollm2(LLAMA_CPP.model);
        model.engine = Some(EngineKind::LlamaCpp);
        let mut s = settings_with(vec![model]);
        s.auth.api_keys = vec![Secret(USER_KEY.into())];
        s.auth.admin_keys = vec![Secret(ADMIN_KEY.into())];
        s.auth.protect_metrics = true;
        s.auth.protect_health = true;
        s.auth.protect_docs = true;
        s.auth.protect_ui = true;
        spawn_server(s)
    })
}

/// Every route: the OpenAPI document's paths (so a documented route added later is
/// covered without editing this list) and the undocumented pages.
fn route_table() -> Vec<(&'static str, String)> {
    let doc: Value =
        serde_json::from_str(&llamagate::api::openapi::document_json()).expect("openapi json");
    let mut routes = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        // A named key that does not exist: a handler's 404, never a change to a real one.
        let path = &path.replace("{name}", "absent-key");
        let concrete = path.replace("{id}", LLAMA_CPP.model);
        for (method, m) in [("get", "GET"), ("post", "POST"), ("delete", "DELETE")] {
            if ops.get(method).is_some() {
                // A DELETE that got through with the right key must not remove the model
                // the other checks use: it names one that does not exist (still a handler's
                // 404, not the router's).
                let target = if m == "DELETE" {
                    path.replace("{id}", "absent-model")
                } else {
                    concrete.clone()
                };
                routes.push((m, target));
            }
        }
    }
    for page in [
        "/",
        "/docs",
        "/docs/",
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/openapi.json",
    ] {
        routes.push(("GET", page.to_string()));
    }
    assert!(routes.len() >= 12, "{routes:?}");
    routes
}

fn needs_admin(path: &str) -> bool {
    path.starts_with("/admin")
}

fn encode(c: char, upper: bool) -> String {
    if upper {
        format!("%{:02X}", c as u32)
    } else {
        format!("%{:02x}", c as u32)
    }
}

/// Every unreserved character percent-encoded (`/` kept).
fn encode_all(path: &str, upper: bool) -> String {
    path.chars()
        .map(|c| {
            if c == '/' {
                c.to_string()
            } else {
                encode(c, upper)
            }
        })
        .collect()
}

/// Spellings of `path` that a router might take for the same route, or not.
fn spellings(path: &str) -> Vec<String> {
    let mut out = vec![
        path.to_string(),
        encode_all(path, true),
        encode_all(path, false),
        path.to_uppercase(),
        format!("/{path}"),
        path.replace('/', "//"),
        format!("{path}/"),
        format!("{path}?a=1"),
        format!("{path};a"),
        format!("/./{}", path.trim_start_matches('/')),
        format!("/x/../{}", path.trim_start_matches('/')),
        format!("/%2e/{}", path.trim_start_matches('/')),
        path.replacen('/', "%2F", 2).replacen("%2F", "/", 1),
    ];
    // Each character encoded alone, and each segment's first letter's case flipped.
    for (i, c) in path.char_indices() {
        if c != '/' {
            out.push(format!(
                "{}{}{}",
                &path[..i],
                encode(c, i % 2 == 0),
                &path[i + 1..]
            ));
        }
        if c.is_ascii_alphabetic() && (i == 0 || path.as_bytes()[i - 1] == b'/') {
            let flipped = c.to_ascii_uppercase();
            out.push(format!("{}{flipped}{}", &path[..i], &path[i + 1..]));
        }
    }
    // A second slash inside, and a dot segment before the last segment.
    if let Some(last) = path.rfind('/') {
        out.push(format!("{}/{}", &path[..last], &path[last..]));
        out.push(format!("{}/.{}", &path[..last], &path[last..]));
    }
    out.sort();
    out.dedup();
    out
}

fn unmatched(status: u16, body: &Value) -> bool {
    status == 404 && body["error"]["code"] == "unknown_url"
}

/// The policy, checked for one spelling of a route (`admin`: an admin route): without a
/// key, with a wrong one (and with a user key on admin routes), the answer is 401 (the
/// route's rule) or 404 `unknown_url` (the router matched nothing), never a handler's
/// answer. Returns whether the right key reached a handler.
fn check_spelling(base: &str, method: &str, target: &str, admin: bool) -> bool {
    let right = if admin { ADMIN_KEY } else { USER_KEY };
    let (status, body) = raw(base, method, target, Some(right));
    assert!(
        status != 401 && status != 403,
        "{method} {target}: the right key was refused: {body}"
    );
    let routed = !unmatched(status, &body);
    let mut others = vec![(None, "no key"), (Some("wrong-key-000"), "wrong key")];
    if admin {
        others.push((Some(USER_KEY), "a user key"));
    }
    for (key, label) in others {
        let (s, b) = raw(base, method, target, key);
        if routed {
            assert_eq!(
                s, 401,
                "{method} {target} with {label} reached a handler: {b}"
            );
        }
        assert!(
            s == 401 || unmatched(s, &b),
            "{method} {target} with {label}: {s} {b}"
        );
    }
    routed
}

#[tokio::test]
async fn every_spelling_of_a_protected_route_meets_its_policy() {
    let base = guarded().base.clone();
    tokio::task::spawn_blocking(move || {
        let mut routed_encoded = 0;
        for (method, path) in route_table() {
            for target in spellings(&path) {
                let routed = check_spelling(&base, method, &target, needs_admin(&path));
                if target == encode_all(&path, true) {
                    assert!(routed, "{method} {target}: the router decodes it");
                    routed_encoded += 1;
                }
            }
        }
        assert!(routed_encoded >= 12);
        // The admin key reaches the admin handlers through an encoded path.
        let (status, body) = raw(&base, "GET", "/%61dmin/memory", Some(ADMIN_KEY));
        assert_eq!(status, 200, "{body}");
        assert!(body[0]["budget_bytes"].as_u64().is_some());
        let (status, _) = raw(&base, "GET", "/%61dmin/memory", Some(USER_KEY));
        assert_eq!(status, 401);
        let (status, _) = raw(&base, "GET", "/%76%31/models", None);
        assert_eq!(status, 401);
    })
    .await
    .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random percent-encodings (either hex case) of random routes.
    #[test]
    fn random_encodings_of_the_route_table_meet_the_policy(
        route in any::<prop::sample::Index>(),
        mask in prop::collection::vec(any::<(bool, bool)>(), 64),
    ) {
        let routes = route_table();
        let (method, path) = &routes[route.index(routes.len())];
        let target: String = path
            .chars()
            .zip(mask.iter().cycle())
            .map(|(c, &(enc, upper))| if enc && c != '/' { encode(c, upper) } else { c.to_string() })
            .collect();
        let routed = check_spelling(&guarded().base, method, &target, needs_admin(path));
        prop_assert!(routed, "{} {} did not route", method, target);
    }
}

#[actix_web::test]
async fn admin_routes_refuse_other_machines_without_admin_keys_under_any_spelling() {
    use actix_web::{test, web, App};
    let mut s = settings_with(vec![smollm2(LLAMA_CPP.model)]);
    s.auth.api_keys = vec![Secret(USER_KEY.into())];
    let built = llamagate::build_server(
        s,
        Arc::new(llamagate::engine::router::EngineRouter::default()),
    )
    .unwrap();
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(built.state.clone()))
            .configure(llamagate::api::configure)
            .default_service(web::to(llamagate::api::not_found)),
    )
    .await;
    let lan_peer: std::net::SocketAddr = "192.168.1.23:50000".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:50000".parse().unwrap();
    for target in spellings("/admin/memory") {
        for key in [None, Some(USER_KEY)] {
            let mut req = test::TestRequest::get().uri(&target).peer_addr(lan_peer);
            if let Some(k) = key {
                req = req.insert_header(("Authorization", format!("Bearer {k}")));
            }
            let res = test::call_service(&app, req.to_request()).await;
            let status = res.status().as_u16();
            assert!(
                status == 403 || status == 404,
                "{target} from the LAN: {status}"
            );
        }
        let res = test::call_service(
            &app,
            test::TestRequest::get()
                .uri(&target)
                .peer_addr(loopback)
                .to_request(),
        )
        .await;
        assert!(
            matches!(res.status().as_u16(), 200 | 404),
            "{target} from loopback"
        );
    }
    let res = test::call_service(
        &app,
        test::TestRequest::get()
            .uri("/%61dmin/memory")
            .peer_addr(loopback)
            .to_request(),
    )
    .await;
    assert_eq!(res.status(), 200, "encoded admin path routes from loopback");
}

/// Sends a request head promising `length` body bytes, then `sent` of them.
fn start_upload(base: &str, length: usize, sent: &[u8], key: Option<&str>) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
    .unwrap();
    stream.write_all(sent).unwrap();
    stream
}

/// Reads until the peer closes; the response text.
fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn slow_client_server() -> TestServer {
    let mut s = settings_with(vec![smollm2(LLAMA_CPP.model)]);
    s.models[0].engine = Some(EngineKind::LlamaCpp);
    s.server.body_timeout_secs = 3;
    s.server.body_idle_timeout_secs = 1;
    spawn_server(s)
}

#[tokio::test]
async fn stalled_and_trickling_bodies_get_408_and_lose_their_connection() {
    let server = slow_client_server();
    let base = server.base.clone();
    tokio::task::spawn_blocking(move || {
        // A body that stops: 408 after the idle timeout, then the connection closes.
        let started = Instant::now();
        let mut stalled = start_upload(&base, 100, br#"{"model": "#, None);
        let text = read_all(&mut stalled);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("request_timeout"), "{text}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(8),
            "{waited:?}"
        );

        // One byte every half second never pauses past the idle timeout, but the whole
        // body must arrive within body_timeout_secs (3 s).
        let started = Instant::now();
        let mut trickle = start_upload(&base, 4096, b"{", None);
        let mut response = String::new();
        for _ in 0..40 {
            std::thread::sleep(Duration::from_millis(500));
            if trickle.write_all(b" ").is_err() {
                break;
            }
            let mut probe = [0u8; 4096];
            trickle
                .set_read_timeout(Some(Duration::from_millis(10)))
                .unwrap();
            if let Ok(n) = trickle.read(&mut probe) {
                response.push_str(&String::from_utf8_lossy(&probe[..n]));
                if n == 0 || response.contains("\r\n\r\n") {
                    break;
                }
            }
        }
        trickle
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        response.push_str(&read_all(&mut trickle));
        assert!(response.starts_with("HTTP/1.1 408"), "{response}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2900) && waited < Duration::from_secs(10),
            "{waited:?}"
        );
    })
    .await
    .unwrap();
    assert_eq!(
        server
            .metric("llamagate_client_timeouts_total{kind=\"body\"}")
            .await,
        2.0
    );
    // The server still serves.
    let (status, _) =
        crate::helpers::post_json(&server.url("/v1/chat/completions"), &json!({
            "model": LLAMA_CPP.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2
        }))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unauthenticated_upload_is_refused_before_its_body() {
    let mut s = settings_with(vec![smollm2(LLAMA_CPP.model)]);
    s.auth.api_keys = vec![Secret(USER_KEY.into())];
    let server = spawn_server(s);
    let base = server.base.clone();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut upload = start_upload(&base, 1 << 20, b"{", None);
        let mut head = [0u8; 12];
        upload.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 401");
        assert!(started.elapsed() < Duration::from_secs(2));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_streamed_answer_nobody_reads_is_cancelled_after_the_write_timeout() {
    // Big tokens as fast as they can go: a client that does not read fills every buffer.
    let engine = Arc::new(FakeEngine {
        token_text: "x".repeat(16 * 1024),
        context_length: 1 << 30,
        ..FakeEngine::default()
    });
    let mut model = fake_model("flood");
    model.max_concurrent = 1;
    let mut s: Settings = settings_with(vec![model]);
    s.server.write_timeout_secs = 2;
    let server = spawn_with_engine(s, engine.clone());
    let addr = server.base.trim_start_matches("http://").to_string();
    let base = format!("http://{addr}");
    // The client asks for a long stream and never reads a byte of it.
    let mut idle = TcpStream::connect(&addr).unwrap();
    let body = json!({"model": "flood", "prompt": "x", "max_tokens": 1_000_000, "stream": true})
        .to_string();
    write!(
        idle,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    while engine.cancelled.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the generation was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert_eq!(engine.running.load(Ordering::SeqCst), 0);
    let metrics = TestServer { base: base.clone() };
    assert_eq!(
        metrics
            .metric("llamagate_client_timeouts_total{kind=\"write\"}")
            .await,
        1.0
    );
    // The model's only slot is free again.
    let (status, body) = crate::helpers::post_json(
        &format!("{base}/v1/completions"),
        &json!({"model": "flood", "prompt": "x", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // And the connection was shut down: reading it ends (after whatever was buffered).
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![0u8; 1 << 20];
    let closed = loop {
        match idle.read(&mut sink) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(
        closed,
        "the connection of the client that stopped reading is closed"
    );
}

async fn completions(server: &TestServer, prompts: usize, max_tokens: usize) -> (u16, Value) {
    let prompts: Vec<String> = (0..prompts).map(|i| format!("Count to {i}:")).collect();
    crate::helpers::post_json(
        &server.url("/v1/completions"),
        &json!({"model": LLAMA_CPP.model, "prompt": prompts, "max_tokens": max_tokens, "temperature": 0}),
    )
    .await
}

#[tokio::test]
async fn sixteen_prompts_on_four_slots_complete_and_do_not_starve_others() {
    let mut model = smollm2(LLAMA_CPP.model);
    model.engine = Some(EngineKind::LlamaCpp);
    model.max_concurrent = 4;
    model.pinned = true;
    let mut s = settings_with(vec![model]);
    s.scheduler.queue_timeout_secs = 60;
    let server = spawn_server(s);
    // Warm: the model is loaded before timing anything.
    assert_eq!(completions(&server, 1, 1).await.0, 200);

    let started = Instant::now();
    let (status, body) = completions(&server, 16, 12).await;
    let alone = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 16);

    // Two at once, and a chat request sent meanwhile.
    let chat = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        let (status, body) = crate::helpers::post_json(
            &server.url("/v1/chat/completions"),
            &json!({"model": LLAMA_CPP.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        asked.elapsed()
    };
    let (a, b, chat_wait) = tokio::join!(
        completions(&server, 16, 12),
        completions(&server, 16, 12),
        chat
    );
    assert_eq!((a.0, b.0), (200, 200), "{} {}", a.1, b.1);
    assert_eq!(a.1["choices"].as_array().unwrap().len(), 16);
    assert_eq!(b.1["choices"].as_array().unwrap().len(), 16);
    // Starved, it would wait for both batches (~2× `alone`); it waits for about one
    // generation of them.
    assert!(
        chat_wait < alone,
        "chat waited {chat_wait:?}; one batch alone took {alone:?}"
    );
    let models = get_json(&server.url("/v1/models")).await;
    assert_eq!(models["data"][0]["status"], "ready");
}

#[tokio::test]
async fn a_hub_model_runs_on_llama_cpp_and_reserves_its_real_footprint() {
    // A hub cache laid out as the hub's clients leave it, holding the test model.
    let home = std::env::temp_dir().join(format!("llamagate-hf-{}", uuid::Uuid::new_v4()));
    let repo = home.join("hub/models--llamagate-test--smollm2");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    std::os::unix::fs::symlink(crate::helpers::model_path(), snapshot.join("smol.gguf")).unwrap();
    let served = crate::helpers::serve_binary_with_env(
        &format!(
            "[[models]]\nname = \"hub\"\nsource = \"hf://llamagate-test/smollm2/smol.gguf\"\nengine = \"llama.cpp\"\n\
             [[models]]\nname = \"local\"\nsource = \"{}\"\nengine = \"llama.cpp\"\n",
            crate::helpers::model_path().display()
        ),
        // Nothing may be fetched: the file is in the cache.
        &[
            ("HF_HOME", home.as_os_str()),
            ("HF_ENDPOINT", std::ffi::OsStr::new("http://127.0.0.1:9")),
        ],
    )
    .await;
    let server = &served.server;
    for model in ["hub", "local"] {
        let (status, body) = crate::helpers::post_json(
            &server.url("/v1/chat/completions"),
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
        )
        .await;
        assert_eq!(status, 200, "{model}: {body}");
    }
    let models = get_json(&server.url("/v1/models")).await;
    let reserved = |i: usize| models["data"][i]["memory_bytes"].as_u64().unwrap();
    assert!(reserved(1) > 0);
    assert_eq!(
        reserved(0),
        reserved(1),
        "the hub file's footprint is its header's"
    );
    let memory = get_json(&server.url("/admin/memory")).await;
    assert_eq!(
        memory[0]["used_bytes"].as_u64().unwrap(),
        reserved(0) + reserved(1)
    );
    drop(served);
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test]
async fn a_model_load_does_not_delay_health() {
    let mut model = smollm2("loading");
    model.engine = Some(EngineKind::MistralRs);
    let mut s = settings_with(vec![model]);
    s.server.workers = 1;
    let server = spawn_server(s);
    let url = server.url("/v1/chat/completions");
    let body = json!({"model": "loading", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let chat = crate::helpers::post_json(&url, &body);
    let probe = async {
        let client = reqwest::Client::new();
        let mut slowest = Duration::ZERO;
        let mut loading_seen = false;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(120) {
            let asked = Instant::now();
            let res = client.get(server.url("/v1/models")).send().await.unwrap();
            let body: Value = res.json().await.unwrap();
            let health = client.get(server.url("/health")).send().await.unwrap();
            assert_eq!(health.status(), 200);
            slowest = slowest.max(asked.elapsed());
            match body["data"][0]["status"].as_str() {
                Some("loading") => loading_seen = true,
                Some("ready") => break,
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (slowest, loading_seen)
    };
    let ((status, body), (slowest, loading_seen)) = tokio::join!(chat, probe);
    assert_eq!(status, 200, "{body}");
    assert!(loading_seen, "the probe ran while the model loaded");
    assert!(
        slowest < Duration::from_millis(1500),
        "/health and /v1/models took {slowest:?} during a load"
    );
}
