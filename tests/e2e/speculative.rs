//! Speculative decoding on the llama.cpp engine, with the real model: the Q4_1 file
//! drafted by its own Q4_0 requantization (the same tokenizer, slightly different
//! weights, so some guesses are rejected). Through the official OpenAI client, the answers
//! are those of the same file without a draft: token for token at temperature 0
//! (streamed and not, with a stop sequence, with logprobs, two requests at once) and the
//! same text for seeded sampling, both drafting a fixed 8 tokens ahead and choosing how
//! far as it goes (`draft_adaptive`, which changes the length between steps); the
//! acceptance counters and the length gauge move; the draft counts in the model's
//! memory; a draft with another tokenizer is refused at load, saying why.

use std::path::PathBuf;
use std::process::Command;

use async_openai::types::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, Stop,
};
use futures::StreamExt;
use serde_json::json;

use crate::helpers::{embedding_model_path, get_json, model_path, post_json, serve_binary, Served};

/// The test model requantized to Q4_0 (made once per test run, next to the others' scratch files).
fn q4_0_draft() -> PathBuf {
    let out = std::env::temp_dir().join(format!("llamagate-draft-{}.gguf", uuid::Uuid::new_v4()));
    let res = Command::new(env!("CARGO_BIN_EXE_llamagate"))
        .arg("quantize")
        .arg(model_path())
        .arg(&out)
        .args(["--type", "q4_0"])
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    out
}

async fn server(draft: &std::path::Path) -> Served {
    let model = model_path();
    serve_binary(&format!(
        r#"[[models]]
name = "plain"
source = "{model}"
engine = "llama.cpp"
max_concurrent = 2
flash_attention = "on"
[[models]]
name = "drafted"
source = "{model}"
engine = "llama.cpp"
max_concurrent = 2
draft = "smol-q4_0"
draft_max = 8
draft_adaptive = false
[[models]]
name = "adaptive"
source = "{model}"
engine = "llama.cpp"
max_concurrent = 2
draft = "smol-q4_0"
[[models]]
name = "smol-q4_0"
source = "{draft}"
engine = "llama.cpp"
[[models]]
name = "mismatched"
source = "{model}"
engine = "llama.cpp"
draft = "minilm"
[[models]]
name = "minilm"
source = "{minilm}"
"#,
        model = model.display(),
        draft = draft.display(),
        minilm = embedding_model_path().display(),
    ))
    .await
}

fn request(model: &str, prompt: &str, max_tokens: u32) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .max_completion_tokens(max_tokens)
        .temperature(0.0)
        .build()
        .unwrap()
}

/// The text and completion tokens of an answer.
async fn answer(served: &Served, req: CreateChatCompletionRequest) -> (String, u32) {
    let res = served.server.openai().chat().create(req).await.unwrap();
    (
        res.choices[0].message.content.clone().unwrap_or_default(),
        res.usage.unwrap().completion_tokens,
    )
}

async fn streamed(served: &Served, req: CreateChatCompletionRequest) -> String {
    let mut s = served
        .server
        .openai()
        .chat()
        .create_stream(req)
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(chunk) = s.next().await {
        for choice in chunk.unwrap().choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
    }
    text
}

const PROMPTS: &[&str] = &[
    "Count from one to twenty, in words.",
    "Write a short poem about the sea.",
    "What is the capital of France? Explain in two sentences.",
];

#[tokio::test]
async fn a_drafted_model_answers_as_it_does_alone() {
    let draft = q4_0_draft();
    let served = server(&draft).await;

    // Temperature 0: the same tokens, not streamed and streamed, however far drafted.
    for prompt in PROMPTS {
        let alone = answer(&served, request("plain", prompt, 64)).await;
        let drafted = answer(&served, request("drafted", prompt, 64)).await;
        assert_eq!(drafted, alone, "{prompt}");
        let mut req = request("drafted", prompt, 64);
        req.stream = Some(true);
        assert_eq!(streamed(&served, req).await, alone.0, "{prompt}");
        for _ in 0..2 {
            let adaptive = answer(&served, request("adaptive", prompt, 64)).await;
            assert_eq!(adaptive, alone, "adaptive: {prompt}");
        }
    }
    let length = |model: &str| {
        let query = format!("llamagate_draft_length{{model=\"{model}\"}}");
        let server = &served.server;
        async move { server.metric(&query).await }
    };
    assert_eq!(length("drafted").await, 8.0);
    let chosen = length("adaptive").await;
    assert!((0.0..=16.0).contains(&chosen), "{chosen}");
    let metrics = served.server.metrics_text().await;
    assert!(
        metrics.contains("llamagate_draft_length{model=\"adaptive\"}"),
        "the gauge is set"
    );

    // A stop sequence ends both at the same place, even inside kept guesses.
    let stopped = |model: &str| {
        let mut r = request(model, PROMPTS[0], 64);
        r.stop = Some(Stop::String(" five".into()));
        r
    };
    assert_eq!(
        answer(&served, stopped("drafted")).await,
        answer(&served, stopped("plain")).await
    );

    // Two drafted requests at once answer as they do alone.
    let alone: Vec<_> = futures::future::join_all(
        PROMPTS[..2]
            .iter()
            .map(|p| answer(&served, request("plain", p, 48))),
    )
    .await;
    for _ in 0..2 {
        let together = futures::future::join_all(
            PROMPTS[..2]
                .iter()
                .map(|p| answer(&served, request("drafted", p, 48))),
        )
        .await;
        assert_eq!(together, alone);
    }

    // Seeded sampling draws the same numbers for the same tokens: the same text.
    for seed in [1, 2, 3] {
        let sampled = |model: &str| {
            let mut r = request(model, PROMPTS[1], 48);
            r.temperature = Some(0.9);
            r.seed = Some(seed);
            r
        };
        assert_eq!(
            answer(&served, sampled("drafted")).await,
            answer(&served, sampled("plain")).await,
            "seed {seed}"
        );
    }

    // Logprobs are the model's own (read from the checked rows).
    let with_logprobs = |model: &str| {
        json!({"model": model, "max_tokens": 24, "temperature": 0, "logprobs": true, "top_logprobs": 2,
               "messages": [{"role": "user", "content": PROMPTS[2]}]})
    };
    let url = served.server.url("/v1/chat/completions");
    let (status, alone) = post_json(&url, &with_logprobs("plain")).await;
    assert_eq!(status, 200, "{alone}");
    let (status, drafted) = post_json(&url, &with_logprobs("drafted")).await;
    assert_eq!(status, 200, "{drafted}");
    let tokens = |v: &serde_json::Value| {
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| (t["token"].clone(), t["logprob"].as_f64().unwrap()))
            .collect::<Vec<_>>()
    };
    let (a, b) = (tokens(&alone), tokens(&drafted));
    assert_eq!(a.len(), b.len());
    for ((ta, la), (tb, lb)) in a.iter().zip(&b) {
        assert_eq!(ta, tb);
        assert!((la - lb).abs() < 1e-3, "{la} vs {lb}");
    }

    // The draft guessed, and some guesses were kept and some not (Q4_0 is not Q4_1).
    let drafted_tokens = served
        .server
        .metric("llamagate_draft_tokens_total{model=\"drafted\"}")
        .await;
    let accepted = served
        .server
        .metric("llamagate_draft_accepted_tokens_total{model=\"drafted\"}")
        .await;
    assert!(
        accepted > 0.0 && accepted < drafted_tokens,
        "{accepted} of {drafted_tokens}"
    );
    assert_eq!(
        served
            .server
            .metric("llamagate_draft_tokens_total{model=\"plain\"}")
            .await,
        0.0
    );

    // The draft's weights and cache count in the model's memory.
    let model = |id: &str| {
        let url = served.server.url(&format!("/v1/models/{id}"));
        async move { get_json(&url).await }
    };
    let (plain, drafted) = (model("plain").await, model("drafted").await);
    assert_eq!(drafted["draft"], "smol-q4_0", "{drafted}");
    assert!(plain.get("draft").is_none(), "{plain}");
    let memory = |m: &serde_json::Value| m["memory_bytes"].as_u64().unwrap();
    let draft_file = model("smol-q4_0").await["size_bytes"].as_u64().unwrap();
    assert!(
        memory(&drafted) > memory(&plain) + draft_file,
        "{drafted} vs {plain} + {draft_file}"
    );

    // A draft with another tokenizer is refused when the model loads.
    let (status, body) = post_json(
        &url,
        &json!({"model": "mismatched", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert!(status >= 500, "{status} {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("tokenizer"), "{body}");
    // Nothing else was lost.
    assert_eq!(
        answer(&served, request("drafted", PROMPTS[2], 8)).await,
        answer(&served, request("plain", PROMPTS[2], 8)).await
    );
    let _ = std::fs::remove_file(draft);
}
