//! Named keys on the real binary with the real model: each key is known by its name in
//! the metrics (never by the key), written plain, as `env:` or as a SHA-256; an allow-list
//! hides and refuses the other models (404, as for a model that does not exist); `rpm`,
//! `max_concurrent` and `tpm` refuse with a 429 naming the limit, with `Retry-After` and
//! OpenAI's `x-ratelimit-*` headers, also under concurrency; and the usage counted per
//! key equals the sum of the answers' `usage`.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{model_path, serve_binary_with_env, Served};

const PLAIN: &str = "plain-key-0001";
const LAPTOP: &str = "laptop-key-0001";
const TABLET: &str = "tablet-key-0001";
const SINGLE: &str = "single-key-0001";
const BUDGET: &str = "budget-key-0001";
const BURST: &str = "burst-key-0001";

async fn gateway() -> Served {
    use sha2::Digest;
    let tablet: String = sha2::Sha256::digest(TABLET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let model = model_path();
    let model = model.display();
    serve_binary_with_env(
        &format!(
            "[auth]\napi_keys = [\"{PLAIN}\"]\n\
             [[auth.keys]]\nname = \"laptop\"\nkey = \"{LAPTOP}\"\n\
             [[auth.keys]]\nname = \"kids-tablet\"\nkey = \"sha256:{tablet}\"\nmodels = [\"small\"]\nrpm = 5\n\
             [[auth.keys]]\nname = \"single\"\nkey = \"env:LLAMAGATE_TEST_SINGLE_KEY\"\nmax_concurrent = 1\n\
             [[auth.keys]]\nname = \"budget\"\nkey = \"{BUDGET}\"\ntpm = 60\n\
             [[auth.keys]]\nname = \"burst\"\nkey = \"{BURST}\"\ntpm = 150\n\
             [[models]]\nname = \"smollm2\"\naliases = [\"small\"]\nsource = \"{model}\"\nengine = \"llama.cpp\"\nmax_concurrent = 8\npinned = true\n\
             [[models]]\nname = \"other\"\nsource = \"{model}\"\nengine = \"llama.cpp\"\n"
        ),
        &[("LLAMAGATE_TEST_SINGLE_KEY", std::ffi::OsStr::new(SINGLE))],
    )
    .await
}

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "temperature": 0,
           "messages": [{"role": "user", "content": "Name a colour."}]})
}

async fn call(front: &Served, key: &str, path: &str, body: Option<&Value>) -> reqwest::Response {
    let client = reqwest::Client::new();
    let url = front.server.url(path);
    let call = match body {
        Some(body) => client.post(url).json(body),
        None => client.get(url),
    };
    call.bearer_auth(key)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap()
}

/// Asserts a 429 naming `limit`; its body.
async fn refused(res: reqwest::Response, limit: &str) -> Value {
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(limit), "`{limit}` not in {body}");
    body
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn named_keys_are_limited_and_counted_by_name() {
    let front = gateway().await;

    // A named key without limits: served, no rate-limit headers; usage counted by name.
    let mut prompt = 0;
    let mut completion = 0;
    for _ in 0..3 {
        let res = call(
            &front,
            LAPTOP,
            "/v1/chat/completions",
            Some(&chat("smollm2", 4)),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert!(header(&res, "x-ratelimit-limit-requests").is_none());
        let body: Value = res.json().await.unwrap();
        prompt += body["usage"]["prompt_tokens"].as_u64().unwrap();
        completion += body["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let metric = |name: &str, key: &str| {
        format!("llamagate_key_{name}_total{{key=\"{key}\",model=\"smollm2\"}}")
    };
    assert_eq!(
        front.server.metric(&metric("requests", "laptop")).await,
        3.0
    );
    assert_eq!(
        front
            .server
            .metric(&metric("prompt_tokens", "laptop"))
            .await,
        prompt as f64
    );
    assert_eq!(
        front
            .server
            .metric(&metric("completion_tokens", "laptop"))
            .await,
        completion as f64
    );
    let res = call(
        &front,
        PLAIN,
        "/v1/chat/completions",
        Some(&chat("smollm2", 2)),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        front.server.metric(&metric("requests", "unnamed")).await,
        1.0
    );

    // The allow-list: the tablet sees and uses only `small` (smollm2); `other` is not
    // there for it. Its key is written as a SHA-256 in the config.
    let res = call(&front, TABLET, "/v1/models", None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-limit-requests"), Some("5"));
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("4"));
    let list: Value = res.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smollm2"]);
    let res = call(&front, TABLET, "/v1/models/other", None).await;
    assert_eq!(res.status(), 404);
    let res = call(
        &front,
        TABLET,
        "/v1/chat/completions",
        Some(&chat("other", 2)),
    )
    .await;
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found", "{body}");
    let res = call(
        &front,
        TABLET,
        "/v1/chat/completions",
        Some(&chat("small", 2)),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("1"));
    // Its fifth request in the minute is its last; the sixth is refused, in each API's
    // own envelope.
    let res = call(&front, TABLET, "/v1/models", None).await;
    assert_eq!(res.status(), 200);
    let res = call(
        &front,
        TABLET,
        "/v1/chat/completions",
        Some(&chat("small", 2)),
    )
    .await;
    assert!(header(&res, "retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("0"));
    let body = refused(res, "rpm").await;
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("kids-tablet"),
        "{body}"
    );
    let res = reqwest::Client::new()
        .post(front.server.url("/v1/messages"))
        .header("x-api-key", TABLET)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "small", "max_tokens": 2,
                      "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert_eq!(
        front
            .server
            .metric("llamagate_key_rate_limited_total{key=\"kids-tablet\",limit=\"rpm\"}")
            .await,
        2.0
    );

    // max_concurrent = 1 (its key from the environment): while one answer streams, the
    // others are refused at once; after it, the next is served.
    let mut streamed = chat("smollm2", 400);
    streamed["stream"] = json!(true);
    streamed["messages"][0]["content"] = json!("Count from 1 to 300, one number per line.");
    let mut held = call(&front, SINGLE, "/v1/chat/completions", Some(&streamed)).await;
    assert_eq!(held.status(), 200);
    assert!(!held.chunk().await.unwrap().unwrap().is_empty());
    let small = chat("smollm2", 2);
    let others = futures::stream::iter(0..4)
        .map(|_| call(&front, SINGLE, "/v1/chat/completions", Some(&small)))
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for res in others {
        refused(res, "max_concurrent").await;
    }
    while held.chunk().await.unwrap().is_some() {}
    let res = call(
        &front,
        SINGLE,
        "/v1/chat/completions",
        Some(&chat("smollm2", 2)),
    )
    .await;
    assert_eq!(res.status(), 200);

    // tpm = 60: requests are served while the minute has tokens left; then a 429 naming
    // the tokens limit, with the time until the window frees them.
    let mut served = 0;
    let mut used = 0;
    let refusal = loop {
        let res = call(
            &front,
            BUDGET,
            "/v1/chat/completions",
            Some(&chat("smollm2", 4)),
        )
        .await;
        assert_eq!(header(&res, "x-ratelimit-limit-tokens"), Some("60"));
        if res.status() != 200 {
            break res;
        }
        served += 1;
        let body: Value = res.json().await.unwrap();
        used += body["usage"]["total_tokens"].as_u64().unwrap();
        assert!(served < 10, "never refused");
    };
    assert_eq!(refusal.status(), 429);
    assert!(used >= 60 && served >= 1, "{served} served, {used} tokens");
    let wait: u64 = header(&refusal, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(header(&refusal, "x-ratelimit-remaining-tokens"), Some("0"));
    let body: Value = refusal.json().await.unwrap();
    assert_eq!(body["error"]["type"], "tokens", "{body}");

    // tpm under concurrency: a burst is admitted only as far as its reservations fit, so
    // what it used passes the limit by less than one request.
    let eight = chat("smollm2", 8);
    let answers = futures::stream::iter(0..8)
        .map(|_| call(&front, BURST, "/v1/chat/completions", Some(&eight)))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    let mut totals = Vec::new();
    let mut refused = 0;
    for res in answers {
        if res.status() == 200 {
            let body: Value = res.json().await.unwrap();
            totals.push(body["usage"]["total_tokens"].as_u64().unwrap());
        } else {
            assert_eq!(res.status(), 429);
            refused += 1;
        }
    }
    let largest = totals.iter().copied().max().unwrap_or(0);
    let sum: u64 = totals.iter().sum();
    assert!(refused > 0, "{totals:?}");
    assert!(sum < 150 + largest, "{totals:?}");

    // The metrics name keys, never the keys themselves.
    let text = front.server.metrics_text().await;
    for secret in [PLAIN, LAPTOP, TABLET, SINGLE, BUDGET, BURST] {
        assert!(!text.contains(secret));
    }
}

const ADMIN: &str = "admin-key-0001";
const CAPPED: &str = "capped-key-0001";

async fn admin(
    front: &Served,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut call = reqwest::Client::new()
        .request(method, front.server.url(path))
        .bearer_auth(ADMIN);
    if let Some(body) = body {
        call = call.json(body);
    }
    let res = call.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Usage of one answer: (prompt, completion).
async fn answered(res: reqwest::Response) -> (u64, u64) {
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    (
        body["usage"]["prompt_tokens"].as_u64().unwrap(),
        body["usage"]["completion_tokens"].as_u64().unwrap(),
    )
}

fn row<'a>(usage: &'a Value, key: &str) -> &'a Value {
    usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == key && r["model"] == "smollm2")
        .unwrap_or_else(|| panic!("no usage row for {key}: {usage}"))
}

#[tokio::test]
async fn keys_made_at_run_time_and_usage_survive_a_crash() {
    let dir = std::env::temp_dir().join(format!("llamagate-store-{}", uuid::Uuid::new_v4()));
    let store = dir.join("usage.db");
    let model = model_path();
    let model = model.display();
    let mut front = serve_binary_with_env(
        &format!(
            "[auth]\nadmin_keys = [\"{ADMIN}\"]\nstore_flush_secs = 1\n\
             [[auth.keys]]\nname = \"laptop\"\nkey = \"{LAPTOP}\"\n\
             [[auth.keys]]\nname = \"capped\"\nkey = \"{CAPPED}\"\ndaily_tokens = 100\n\
             [[models]]\nname = \"smollm2\"\nsource = \"{model}\"\nengine = \"llama.cpp\"\nmax_concurrent = 4\npinned = true\n"
        ),
        &[(crate::helpers::MEMORY_STORE, store.as_os_str())],
    )
    .await;
    let post = reqwest::Method::POST;

    // Made by an admin; the secret shown once; refused to others; checked fields.
    let (status, made) = admin(
        &front,
        post.clone(),
        "/admin/keys",
        Some(&json!({"name": "phone", "models": ["smollm2"], "rpm": 100})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let phone = made["key"].as_str().unwrap().to_string();
    assert!(phone.starts_with("lg-") && phone.len() == 67, "{phone}");
    assert_eq!(
        (made["name"].clone(), made["origin"].clone()),
        (json!("phone"), json!("runtime"))
    );
    assert_eq!(made["rpm"], 100);
    let res = call(&front, LAPTOP, "/admin/keys", None).await;
    assert_eq!(res.status(), 401, "a user key makes no keys");
    for (body, status, param) in [
        (json!({"name": "a b"}), 400, "name"),
        (json!({"name": "x", "colour": "red"}), 400, "colour"),
        (json!({"name": "x", "models": ["nope"]}), 400, "models[0]"),
        (json!({"name": "x", "tpm": 0}), 400, "tpm"),
        (json!({"name": "admin"}), 400, "name"),
    ] {
        let (s, b) = admin(&front, post.clone(), "/admin/keys", Some(&body)).await;
        assert_eq!(s, status, "{body}: {b}");
        assert_eq!(b["error"]["param"], param, "{body}: {b}");
    }
    let (s, b) = admin(
        &front,
        post.clone(),
        "/admin/keys",
        Some(&json!({"name": "laptop"})),
    )
    .await;
    assert_eq!(s, 409, "{b}");
    let (_, list) = admin(&front, reqwest::Method::GET, "/admin/keys", None).await;
    let names: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].clone())
        .collect();
    assert_eq!(names, [json!("laptop"), json!("capped"), json!("phone")]);
    assert!(
        !list.to_string().contains(&phone[3..]),
        "the secret is shown once"
    );

    // Used: the new key at once, a configured one, and one until its daily budget is spent.
    let mut phone_use = (0, 0);
    for _ in 0..2 {
        let (p, c) = answered(
            call(
                &front,
                &phone,
                "/v1/chat/completions",
                Some(&chat("smollm2", 4)),
            )
            .await,
        )
        .await;
        phone_use = (phone_use.0 + p, phone_use.1 + c);
    }
    let laptop_use = answered(
        call(
            &front,
            LAPTOP,
            "/v1/chat/completions",
            Some(&chat("smollm2", 3)),
        )
        .await,
    )
    .await;
    let mut capped_requests = 0;
    loop {
        let res = call(
            &front,
            CAPPED,
            "/v1/chat/completions",
            Some(&chat("smollm2", 40)),
        )
        .await;
        if res.status() == 429 {
            refused(res, "daily_tokens").await;
            break;
        }
        answered(res).await;
        capped_requests += 1;
        assert!(capped_requests < 6, "daily_tokens never refused");
    }
    // Disabled (a configured key): refused as unknown, with the reason.
    let (s, b) = admin(&front, post.clone(), "/admin/keys/laptop/disable", None).await;
    assert_eq!((s, b["disabled"].clone()), (200, json!(true)), "{b}");
    let res = call(&front, LAPTOP, "/v1/models", None).await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("disabled"),
        "{body}"
    );

    // A crash after the flush interval: nothing counted is lost.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    front.restart().await;

    let (_, usage) = admin(
        &front,
        reqwest::Method::GET,
        "/admin/usage?since=2020-01-01",
        None,
    )
    .await;
    let phone_row = row(&usage, "phone");
    assert_eq!(phone_row["requests"], 2, "{usage}");
    assert_eq!(
        (
            phone_row["prompt_tokens"].as_u64().unwrap(),
            phone_row["completion_tokens"].as_u64().unwrap()
        ),
        phone_use
    );
    let laptop_row = row(&usage, "laptop");
    assert_eq!(
        (
            laptop_row["prompt_tokens"].as_u64().unwrap(),
            laptop_row["completion_tokens"].as_u64().unwrap()
        ),
        laptop_use
    );
    // The capped key's 429 is its error, on no model (refused before one was chosen);
    // the request of the disabled key is nobody's (a 401 has no caller).
    let capped = row(&usage, "capped");
    assert_eq!(
        (capped["requests"].clone(), capped["errors"].clone()),
        (json!(capped_requests), json!(0))
    );
    let unrouted = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["key"] == "capped" && r["model"] == "")
        .unwrap();
    assert_eq!(
        (unrouted["requests"].clone(), unrouted["errors"].clone()),
        (json!(1), json!(1)),
        "{usage}"
    );
    let (_, only) = admin(&front, reqwest::Method::GET, "/admin/usage?key=phone", None).await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["total"]["requests"], 2);
    let (s, b) = admin(
        &front,
        reqwest::Method::GET,
        "/admin/usage?since=yesterday",
        None,
    )
    .await;
    assert_eq!(
        (s, b["error"]["param"].clone()),
        (400, json!("since")),
        "{b}"
    );

    // The counters start where they were.
    assert_eq!(
        front
            .server
            .metric("llamagate_key_requests_total{key=\"phone\",model=\"smollm2\"}")
            .await,
        2.0
    );
    // The run-time key is back; the disabled key still disabled; the daily budget spent.
    answered(
        call(
            &front,
            &phone,
            "/v1/chat/completions",
            Some(&chat("smollm2", 2)),
        )
        .await,
    )
    .await;
    assert_eq!(call(&front, LAPTOP, "/v1/models", None).await.status(), 401);
    let res = call(
        &front,
        CAPPED,
        "/v1/chat/completions",
        Some(&chat("smollm2", 4)),
    )
    .await;
    // The day's tokens were remembered.
    refused(res, "daily_tokens").await;
    let (_, list) = admin(&front, reqwest::Method::GET, "/admin/keys", None).await;
    let capped = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "capped")
        .unwrap();
    assert!(
        capped["live"]["tokens_today"].as_u64().unwrap() >= 100,
        "{capped}"
    );

    // Enabled again; a configured key is not deleted here; a run-time key is, for good.
    let (s, _) = admin(&front, post.clone(), "/admin/keys/laptop/enable", None).await;
    assert_eq!(s, 200);
    assert_eq!(call(&front, LAPTOP, "/v1/models", None).await.status(), 200);
    let (s, b) = admin(&front, reqwest::Method::DELETE, "/admin/keys/laptop", None).await;
    assert_eq!(s, 409, "{b}");
    let (s, b) = admin(&front, reqwest::Method::DELETE, "/admin/keys/phone", None).await;
    assert_eq!((s, b["deleted"].clone()), (200, json!(true)), "{b}");
    assert_eq!(call(&front, &phone, "/v1/models", None).await.status(), 401);
    let (s, _) = admin(&front, reqwest::Method::DELETE, "/admin/keys/phone", None).await;
    assert_eq!(s, 404);
    front.restart().await;
    assert_eq!(
        call(&front, &phone, "/v1/models", None).await.status(),
        401,
        "deleted for good"
    );
    drop(front);
    let _ = std::fs::remove_dir_all(dir);
}
