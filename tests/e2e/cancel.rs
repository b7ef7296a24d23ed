//! A client that goes away cancels its generation: tokens stop being generated, the
//! cancellation is counted, and the server keeps serving. Each test has its own server so
//! that the token counter sees only its own requests.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{settings_with, smollm2, spawn_server, stream_then_leave, Engine, TestServer};

const MODEL: &str = "cancel-test";

fn server(engine: Engine) -> TestServer {
    let mut m = smollm2(MODEL);
    m.engine = Some(engine.kind);
    m.pinned = true;
    spawn_server(settings_with(vec![m]))
}

async fn generated(server: &TestServer) -> f64 {
    server
        .metric(&format!(
            "llamagate_generated_tokens_total{{model=\"{MODEL}\"}}"
        ))
        .await
}

async fn assert_generation_stopped(server: &TestServer, max_tokens: f64) {
    // A step already under way may still land (a busy machine makes steps slow): the
    // count must settle, long before the generation could have ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut before = generated(server).await;
    let after = loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = generated(server).await;
        if now == before {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tokens are still being generated after the client left ({before} -> {now})"
        );
        before = now;
    };
    assert!(after < max_tokens, "generation ran to the end: {after}");
    let cancelled = server
        .metric(&format!(
            "llamagate_cancelled_requests_total{{model=\"{MODEL}\"}}"
        ))
        .await;
    assert!(cancelled >= 1.0, "cancellation counted");
    // The server still answers.
    let (status, body) = crate::helpers::post_json(
        &server.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,";

async fn dropping_a_stream_cancels_the_generation(engine: Engine) {
    let server = server(engine);
    stream_then_leave(
        &server.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": COUNTING, "max_tokens": 3000, "temperature": 0, "stream": true}),
    )
    .await;
    assert_generation_stopped(&server, 3000.0).await;
}

async fn abandoning_a_non_streaming_request_cancels_the_generation(engine: Engine) {
    let server = server(engine);
    // Warm up so the load is not part of the timeout.
    let _ = crate::helpers::post_json(
        &server.url("/v1/completions"),
        &json!({"model": MODEL, "prompt": "Hi", "max_tokens": 1}),
    )
    .await;
    let started = generated(&server).await;
    // The client leaves once tokens are flowing (however long the engine takes to start
    // on a busy machine): the request's task is dropped with its connection.
    let url = server.url("/v1/completions");
    let request = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(
                &json!({"model": MODEL, "prompt": COUNTING, "max_tokens": 3000, "temperature": 0}),
            )
            .send()
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while generated(&server).await <= started {
        assert!(
            std::time::Instant::now() < deadline,
            "generation never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    request.abort();
    assert!(
        request.await.is_err(),
        "the request should have been abandoned"
    );
    assert_generation_stopped(&server, started + 3000.0).await;
}

crate::per_engine!(
    dropping_a_stream_cancels_the_generation,
    abandoning_a_non_streaming_request_cancels_the_generation,
);
