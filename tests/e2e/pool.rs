//! The multi-model scheduler with the real model: a budget that fits one model at a time,
//! broken model files next to a good one, overload, and keep_alive freeing memory.

use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use llamagate::config::{ModelSettings, ModelSource};
use llamagate::memory::{process_rss_bytes, ByteSize};
use serde_json::json;

use crate::helpers::{
    get_json, model_path, post_json, serve_binary, settings_with, smollm2, spawn_server, TestServer,
};

fn small(name: &str) -> ModelSettings {
    let mut m = smollm2(name);
    m.context_length = Some(1024);
    m.max_concurrent = 2;
    m
}

async fn complete(server: &TestServer, model: &str) -> (u16, serde_json::Value) {
    post_json(
        &server.url("/v1/completions"),
        &json!({"model": model, "prompt": "Hello", "max_tokens": 3, "temperature": 0}),
    )
    .await
}

async fn statuses(server: &TestServer) -> Vec<(String, String)> {
    let list: serde_json::Value = get_json(&server.url("/v1/models")).await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn two_models_in_a_budget_for_one_take_turns_without_thrashing() {
    let mut settings = settings_with(vec![small("left"), small("right")]);
    // One model's estimate is ~352 MiB (98 MB weights + 108 MiB f32 embeddings + 90 MiB
    // KV + 64 MiB overhead): the budget fits one, not two.
    settings.scheduler.cpu_memory_budget = Some(ByteSize(500 * 1024 * 1024));
    settings.scheduler.fairness_batch = 4;
    let server = spawn_server(settings);

    // Sequential alternation: every request is served, one model loaded at a time.
    for model in ["left", "right", "left"] {
        let (status, body) = complete(&server, model).await;
        assert_eq!(status, 200, "{body}");
        let states = statuses(&server).await;
        let loaded: Vec<_> = states
            .iter()
            .filter(|(_, s)| s == "ready")
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(loaded, vec![model.to_string()], "{states:?}");
    }
    let swaps_before = server.metric("llamagate_model_swaps_total").await;
    assert_eq!(swaps_before, 2.0);

    // 16 requests alternating between the models, all in flight together.
    let started = Instant::now();
    let results = join_all((0..16).map(|i| {
        let server = &server;
        async move { complete(server, if i % 2 == 0 { "left" } else { "right" }).await }
    }))
    .await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
    }
    let swaps = server.metric("llamagate_model_swaps_total").await - swaps_before;
    eprintln!(
        "16 alternating requests: {swaps} swaps in {:?}",
        started.elapsed()
    );
    assert!(swaps <= 6.0, "{swaps} swaps for 16 alternating requests");
    let loads = server
        .metric("llamagate_model_loads_total{model=\"left\"}")
        .await
        + server
            .metric("llamagate_model_loads_total{model=\"right\"}")
            .await;
    assert!(loads <= 3.0 + 6.0 + 1.0, "{loads} loads");
}

fn corrupt_copy(kind: &str) -> std::path::PathBuf {
    let real = std::fs::read(model_path()).unwrap();
    let path = std::env::temp_dir().join(format!("llamagate-{kind}-{}.gguf", uuid::Uuid::new_v4()));
    let bytes: Vec<u8> = match kind {
        "truncated" => real[..real.len() / 3].to_vec(),
        "bad-header" => {
            let mut b = real[..4096].to_vec();
            b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }
        _ => b"this is not a model at all".to_vec(),
    };
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test]
async fn broken_model_files_fail_cleanly_while_the_good_model_serves() {
    let missing = ModelSettings::new("missing", ModelSource::File("/nowhere/model.gguf".into()));
    let truncated = ModelSettings::new("truncated", ModelSource::File(corrupt_copy("truncated")));
    let bad_header =
        ModelSettings::new("bad-header", ModelSource::File(corrupt_copy("bad-header")));
    let not_gguf = ModelSettings::new("not-gguf", ModelSource::File(corrupt_copy("not-gguf")));
    let server = spawn_server(settings_with(vec![
        small("good"),
        missing,
        truncated,
        bad_header,
        not_gguf,
    ]));
    let expectations = [
        ("missing", "not found"),
        ("truncated", "truncated"),
        ("bad-header", "corrupt header"),
        ("not-gguf", "not a GGUF file"),
    ];
    for (model, needle) in expectations {
        let (status, body) = complete(&server, model).await;
        assert_eq!(status, 503, "{model}: {body}");
        assert_eq!(body["error"]["code"], "model_load_failed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{model}: {message}");
        assert!(
            !message.contains(&std::env::temp_dir().display().to_string()),
            "no paths: {message}"
        );
        let (status, body) = complete(&server, "good").await;
        assert_eq!(status, 200, "{body}");
    }
    let states = statuses(&server).await;
    for (name, status) in states {
        assert_eq!(
            status,
            if name == "good" { "ready" } else { "failed" },
            "{name}"
        );
    }
    assert!(
        server
            .metric("llamagate_model_load_failures_total{model=\"truncated\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn overload_gets_429_with_retry_after_and_every_accepted_request_completes() {
    let mut m = small("busy");
    m.max_concurrent = 1;
    m.queue_size = 2;
    m.pinned = true;
    let server = spawn_server(settings_with(vec![m]));
    let (status, _) = complete(&server, "busy").await; // loaded
    assert_eq!(status, 200);
    let client = reqwest::Client::new();
    let results = join_all((0..12).map(|i| {
        let client = client.clone();
        let url = server.url(if i % 2 == 0 { "/v1/completions" } else { "/v1/chat/completions" });
        async move {
            let body = if i % 2 == 0 {
                json!({"model": "busy", "prompt": "Count:", "max_tokens": 12, "stream": i % 4 == 0})
            } else {
                json!({"model": "busy", "messages": [{"role": "user", "content": "Count"}], "max_tokens": 12, "stream": i % 3 == 0})
            };
            let res = client.post(url).json(&body).send().await.unwrap();
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").is_some();
            let text = res.text().await.unwrap();
            (status, retry_after, text)
        }
    }))
    .await;
    let accepted = results.iter().filter(|r| r.0 == 200).count();
    let refused = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(accepted + refused, 12, "{results:?}");
    assert!(refused >= 4, "capacity is 3: {accepted} accepted");
    for (status, retry_after, text) in &results {
        if *status == 429 {
            assert!(*retry_after, "429 carries Retry-After");
            assert!(text.contains("rate_limit_exceeded"));
        } else {
            assert!(
                text.contains("\"usage\"") || text.contains("[DONE]"),
                "complete answer: {text}"
            );
        }
    }
}

/// The idle TTL frees memory: measured on a separate `llamagate serve` process.
#[tokio::test]
async fn keep_alive_unloads_the_model_and_frees_its_memory() {
    let served = serve_binary(&format!(
        "[[models]]\nname = \"ttl\"\nsource = \"{}\"\ndevice = \"cpu\"\ncontext_length = 2048\nmax_concurrent = 2\nkeep_alive = \"2s\"\n",
        model_path().display()
    ))
    .await;
    let server = &served.server;
    let pid = served.child.id();
    let before = process_rss_bytes(Some(pid)).unwrap();
    let (status, body) = complete(server, "ttl").await;
    assert_eq!(status, 200, "{body}");
    let loaded = process_rss_bytes(Some(pid)).unwrap();
    let estimate: serde_json::Value = get_json(&server.url("/v1/models/ttl")).await;
    let estimate = estimate["memory_bytes"].as_u64().unwrap();
    let mut unloaded = loaded;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = statuses(server).await;
        if status[0].1 == "unloaded" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            unloaded = process_rss_bytes(Some(pid)).unwrap();
            break;
        }
    }
    drop(served);
    let mib = |b: u64| b as f64 / 1048576.0;
    eprintln!(
        "RSS before load {:.1} MiB, loaded {:.1} MiB (+{:.1}), after keep_alive {:.1} MiB; estimate {:.1} MiB",
        mib(before), mib(loaded), mib(loaded.saturating_sub(before)), mib(unloaded), mib(estimate)
    );
    assert!(unloaded < loaded, "RSS did not drop after unload");
    let grown = loaded.saturating_sub(before);
    assert!(
        loaded.saturating_sub(unloaded) * 2 >= grown,
        "unloading gave back less than half of the {:.1} MiB the load took",
        mib(grown)
    );
    assert!(
        estimate >= loaded.saturating_sub(before),
        "the estimate is an upper bound of the measured growth"
    );
}

#[tokio::test]
async fn admin_endpoints_load_and_unload_on_demand() {
    let server = spawn_server(settings_with(vec![small("managed")]));
    let client = reqwest::Client::new();
    let res = client
        .post(server.url("/admin/models/managed/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(body["loaded_at"].as_u64().is_some());
    assert_eq!(body["quantization"], "Q4_1");
    assert!(body["size_bytes"].as_u64().unwrap() > 90_000_000);
    assert!(body["memory_bytes"].as_u64().unwrap() > body["size_bytes"].as_u64().unwrap());
    let memory: serde_json::Value = client
        .get(server.url("/admin/memory"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(memory[0]["device"], "cpu");
    assert_eq!(memory[0]["used_bytes"], body["memory_bytes"]);
    let res = client
        .post(server.url("/admin/models/managed/unload"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["status"], "unloaded");
    let res = client
        .post(server.url("/admin/models/nope/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // And it comes back on demand.
    let (status, _) = complete(&server, "managed").await;
    assert_eq!(status, 200);
}

/// Threads of process `pid` whose name is `name` (Linux: /proc/PID/task/*/comm).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|comm| comm.trim_end() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Waits (up to 10 s) until `pid` has `want` threads named `name`; the count seen last.
async fn settle(pid: u32, name: &str, want: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = threads_named(pid, name);
        if seen == want || Instant::now() > deadline {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An idle llama.cpp model holds no threads but its waiting worker: its forward passes
/// run on a thread (and llama.cpp's OpenMP team, whose threads take that thread's name)
/// that ends when it has nothing left to do — else every idle model's team would make
/// the busy ones decode up to twice as slowly (docs/BENCHMARKS.md). Both kinds of worker,
/// generation and embeddings, and a model that answers again afterwards.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_idle_llama_cpp_model_keeps_no_threads_but_its_worker() {
    let served = serve_binary(&format!(
        r#"[[models]]
name = "a"
source = "{model}"
engine = "llama.cpp"
threads = 2
[[models]]
name = "b"
source = "{model}"
engine = "llama.cpp"
threads = 2
[[models]]
name = "e"
source = "{minilm}"
threads = 2
"#,
        model = model_path().display(),
        minilm = crate::helpers::embedding_model_path().display(),
    ))
    .await;
    let server = &served.server;
    let pid = served.child.id();
    for round in 0..2 {
        for model in ["a", "b"] {
            // While a stream runs, its busy thread and team are there beside the worker.
            let response = reqwest::Client::new()
                .post(server.url("/v1/chat/completions"))
                .json(&json!({"model": model, "max_tokens": 300, "temperature": 0,
                    "stream": true,
                    "messages": [{"role": "user", "content": "Write a long story about a dragon."}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{model}");
            let mut body = response.bytes_stream();
            let first = body.next().await.unwrap().unwrap();
            assert!(!first.is_empty());
            let name = format!("llama.cpp-{model}");
            // The first event may come before the first forward pass (the role's chunk).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut busy = threads_named(pid, &name);
            while busy < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
                busy = threads_named(pid, &name);
            }
            assert!(
                busy >= 2,
                "{model}, round {round}: {busy} threads while generating"
            );
            while body.next().await.is_some() {}
            assert_eq!(
                settle(pid, &name, 1).await,
                1,
                "{model}, round {round}: idle"
            );
        }
        let (status, body) = post_json(
            &server.url("/v1/embeddings"),
            &json!({"model": "e", "input": ["one sentence", "and another"]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        // "llama.cpp-embed-e", as Linux keeps it: 15 bytes.
        assert_eq!(
            settle(pid, "llama.cpp-embed", 1).await,
            1,
            "embeddings, round {round}"
        );
    }
    // Nothing else of the two generation models is left over either.
    assert_eq!(threads_named(pid, "llama.cpp-a"), 1);
    assert_eq!(threads_named(pid, "llama.cpp-b"), 1);
}

/// `batch_tokens` sizes the forward passes of a llama.cpp model: a prompt longer than
/// one pass is read in several (64 tokens) or in one (2048), with the same greedy answer,
/// and the same as the default's (512).
#[tokio::test]
async fn batch_tokens_changes_how_a_prompt_is_read_not_what_is_answered() {
    let model = model_path();
    let block = |name: &str, extra: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\nsource = \"{}\"\nengine = \"llama.cpp\"\nthreads = 2\ncontext_length = 2048\nmax_concurrent = 1\n{extra}\n",
            model.display()
        )
    };
    let served = serve_binary(
        &[
            block("default", ""),
            block("small", "batch_tokens = 64"),
            block("large", "batch_tokens = 2048"),
        ]
        .concat(),
    )
    .await;
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(70);
    let mut answers = Vec::new();
    for name in ["default", "small", "large"] {
        let (status, body) = post_json(
            &served.server.url("/v1/completions"),
            &json!({"model": name, "prompt": prompt, "max_tokens": 8, "temperature": 0}),
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert!(
            body["usage"]["prompt_tokens"].as_u64().unwrap() > 600,
            "{body}"
        );
        answers.push(body["choices"][0]["text"].as_str().unwrap().to_string());
    }
    assert_eq!(answers[0], answers[1], "64-token passes");
    assert_eq!(answers[0], answers[2], "one 2048-token pass");
}
