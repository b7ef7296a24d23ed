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
    assert_eq!(res.status(), 429);
    assert!(header(&res, "retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert_eq!(header(&res, "x-ratelimit-remaining-requests"), Some("0"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("kids-tablet") && message.contains("rpm"),
        "{message}"
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
    let refused = futures::stream::iter(0..4)
        .map(|_| call(&front, SINGLE, "/v1/chat/completions", Some(&small)))
        .buffer_unordered(4)
        .collect::<Vec<_>>()
        .await;
    for res in refused {
        assert_eq!(res.status(), 429);
        let body: Value = res.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_concurrent"),
            "{body}"
        );
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
