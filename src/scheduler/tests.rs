//! Scheduler tests with a scripted engine: fast and deterministic, no model involved.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;

use super::memory::ByteSize;
use super::Scheduler;
use crate::config::{DurationSetting, ModelSettings, ModelSource, Settings};
use crate::engine::{
    Engine, EngineError, FinishReason, GenerationRequest, LoadedModel, ModelFacts, Prompt,
    TokenEvent, TokenStream, TokenUsage,
};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::validation::ValidSampling;

const MIB: u64 = 1024 * 1024;

/// Loads take `load_delay`; names listed in `fail_once` fail their first load.
#[derive(Default)]
struct ScriptedEngine {
    loads: Mutex<Vec<String>>,
    load_delay: Duration,
    fail_once: Mutex<Vec<String>>,
    token_delay: Duration,
}

struct ScriptedModel {
    facts: ModelFacts,
    token_delay: Duration,
    generated: Arc<AtomicUsize>,
}

#[async_trait]
impl LoadedModel for ScriptedModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    async fn count_prompt_tokens(&self, prompt: &Prompt) -> Result<usize, EngineError> {
        Ok(prompt.text_bytes().div_ceil(4).max(1))
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TokenStream, EngineError> {
        let delay = self.token_delay;
        let generated = self.generated.clone();
        let max = request.sampling.max_tokens;
        let prompt_tokens = request.prompt_tokens;
        let on_token = request.on_token.clone();
        Ok(Box::pin(async_stream::stream! {
            for _ in 0..max {
                tokio::time::sleep(delay).await;
                generated.fetch_add(1, Ordering::SeqCst);
                if let Some(f) = &on_token {
                    f();
                }
                yield Ok(TokenEvent::Text { choice: 0, text: "x".into(), logprobs: Vec::new() });
            }
            yield Ok(TokenEvent::Finished { choice: 0, reason: FinishReason::Length });
            yield Ok(TokenEvent::Done(TokenUsage { prompt_tokens, completion_tokens: max, cached_prompt_tokens: 0 }));
        }))
    }
}

#[async_trait]
impl Engine for ScriptedEngine {
    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        tokio::time::sleep(self.load_delay).await;
        self.loads.lock().unwrap().push(settings.name.clone());
        let mut fail = self.fail_once.lock().unwrap();
        if let Some(pos) = fail.iter().position(|n| *n == settings.name) {
            fail.remove(pos);
            return Err(EngineError::Load("scripted failure".into()));
        }
        Ok(Arc::new(ScriptedModel {
            facts: ModelFacts {
                context_length: 1024,
                device: "cpu".into(),
            },
            token_delay: self.token_delay,
            generated: Arc::new(AtomicUsize::new(0)),
        }))
    }
}

fn model(name: &str, mib: u64) -> ModelSettings {
    let mut m = ModelSettings::new(name, ModelSource::File(format!("{name}.gguf").into()));
    m.memory = Some(ByteSize(mib * MIB));
    m.max_concurrent = 2;
    m.queue_size = 64;
    m
}

fn settings(models: Vec<ModelSettings>, budget_mib: u64) -> Settings {
    let mut s = Settings::from_toml("[[models]]\nname = \"x\"\nsource = \"x.gguf\"\n").unwrap();
    s.models = models;
    s.scheduler.cpu_memory_budget = Some(ByteSize(budget_mib * MIB));
    s.scheduler.queue_timeout_secs = 5;
    s.scheduler.fairness_batch = 3;
    s
}

fn scheduler(s: &Settings, engine: Arc<ScriptedEngine>) -> (Arc<Scheduler>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let sched = Arc::new(Scheduler::new(s, engine, metrics.clone()));
    sched.start_background();
    (sched, metrics)
}

fn sampling(max_tokens: usize) -> ValidSampling {
    ValidSampling {
        settings: Default::default(),
        max_tokens: Some(max_tokens),
        json_schema: None,
    }
}

async fn run(sched: &Scheduler, model: &str, tokens: usize) -> Result<usize, ApiError> {
    let mut g = sched
        .start(
            model,
            Prompt::Text("hello".into()),
            sampling(tokens),
            "prompt",
        )
        .await?;
    let mut n = 0;
    while let Some(e) = g.next().await {
        if let Ok(TokenEvent::Text { .. }) = e {
            n += 1;
        }
    }
    Ok(n)
}

fn status(sched: &Scheduler, name: &str) -> &'static str {
    let slot = sched.registry().resolve(name).unwrap();
    sched.pool().status(slot.index).status
}

fn touch_order(engine: &ScriptedEngine) -> Vec<String> {
    engine.loads.lock().unwrap().clone()
}

#[tokio::test]
async fn concurrent_first_requests_share_one_load() {
    let engine = Arc::new(ScriptedEngine {
        load_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let (sched, _) = scheduler(&settings(vec![model("a", 100)], 1000), engine.clone());
    let runs = (0..6).map(|_| run(&sched, "a", 2));
    for r in futures::future::join_all(runs).await {
        assert_eq!(r.unwrap(), 2);
    }
    assert_eq!(touch_order(&engine), vec!["a"]);
}

#[tokio::test]
async fn least_recently_used_idle_model_is_evicted() {
    let engine = Arc::new(ScriptedEngine::default());
    let s = settings(vec![model("a", 100), model("b", 100), model("c", 100)], 250);
    let (sched, metrics) = scheduler(&s, engine.clone());
    run(&sched, "a", 1).await.unwrap();
    run(&sched, "b", 1).await.unwrap();
    run(&sched, "a", 1).await.unwrap(); // a is now more recent than b
    run(&sched, "c", 1).await.unwrap();
    assert_eq!(status(&sched, "a"), "ready");
    assert_eq!(status(&sched, "b"), "unloaded");
    assert_eq!(status(&sched, "c"), "ready");
    assert_eq!(metrics.model_swaps.get(), 1);
}

#[tokio::test]
async fn pinned_and_busy_models_are_never_evicted() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let mut pinned = model("p", 100);
    pinned.pinned = true;
    let s = settings(vec![pinned, model("busy", 100), model("new", 100)], 250);
    let (sched, _) = scheduler(&s, engine.clone());
    run(&sched, "p", 1).await.unwrap();
    // `busy` runs a long generation while `new` asks for room.
    let sched2 = sched.clone();
    let long = tokio::spawn(async move { run(&sched2, "busy", 20).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    run(&sched, "new", 1).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "new waited for busy to finish"
    );
    assert_eq!(
        long.await.unwrap().unwrap(),
        20,
        "the busy model's request completed"
    );
    assert_eq!(status(&sched, "p"), "ready", "pinned stays");
    assert_eq!(status(&sched, "busy"), "unloaded");
}

#[tokio::test]
async fn a_model_that_can_never_fit_is_refused_with_the_numbers() {
    let engine = Arc::new(ScriptedEngine::default());
    let mut pinned = model("p", 600);
    pinned.pinned = true;
    let s = settings(vec![pinned, model("big", 2000), model("mid", 500)], 1000);
    let (sched, metrics) = scheduler(&s, engine.clone());
    match run(&sched, "big", 1).await {
        Err(ApiError::InsufficientMemory { needed, budget, .. }) => {
            assert_eq!(needed, 2000 * MIB);
            assert_eq!(budget, 1000 * MIB);
        }
        other => panic!("{other:?}"),
    }
    run(&sched, "p", 1).await.unwrap();
    let err = run(&sched, "mid", 1).await.unwrap_err();
    assert!(err.to_string().contains("pinned models hold"), "{err}");
    assert_eq!(
        metrics
            .rejected_requests
            .with_label_values(&["big", "insufficient_memory"])
            .get(),
        1
    );
}

#[tokio::test]
async fn full_queue_is_429_and_a_long_wait_is_503() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let mut m = model("a", 10);
    m.max_concurrent = 1;
    m.queue_size = 1;
    m.queue_timeout_secs = Some(1);
    let (sched, _) = scheduler(&settings(vec![m], 100), engine);
    let s1 = sched.clone();
    let running = tokio::spawn(async move { run(&s1, "a", 40).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s2 = sched.clone();
    let queued = tokio::spawn(async move { run(&s2, "a", 1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(
        run(&sched, "a", 1).await,
        Err(ApiError::QueueFull { .. })
    ));
    assert!(matches!(
        queued.await.unwrap(),
        Err(ApiError::QueueTimeout { .. })
    ));
    assert_eq!(running.await.unwrap().unwrap(), 40);
}

#[tokio::test]
async fn a_request_cancelled_while_queued_leaves_the_queue() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let mut m = model("a", 10);
    m.max_concurrent = 1;
    let (sched, _) = scheduler(&settings(vec![m], 100), engine);
    let s1 = sched.clone();
    let running = tokio::spawn(async move { run(&s1, "a", 10).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s2 = sched.clone();
    let waiter = tokio::spawn(async move { run(&s2, "a", 1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let slot = sched.registry().resolve("a").unwrap();
    assert_eq!(slot.admission.waiting(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(slot.admission.waiting(), 0);
    running.await.unwrap().unwrap();
    assert_eq!(slot.admission.running(), 0);
}

#[tokio::test]
async fn busy_models_take_turns_within_the_fairness_bound() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(5),
        ..Default::default()
    });
    let s = settings(vec![model("a", 100), model("b", 100)], 150);
    let (sched, metrics) = scheduler(&s, engine.clone());
    // 24 requests alternating between the two models, all sent at once.
    let order = Arc::new(Mutex::new(Vec::new()));
    let runs = (0..24).map(|i| {
        let sched = sched.clone();
        let order = order.clone();
        let name = if i % 2 == 0 { "a" } else { "b" };
        async move {
            run(&sched, name, 4).await.unwrap();
            order.lock().unwrap().push(name);
        }
    });
    futures::future::join_all(runs).await;
    let swaps = metrics.model_swaps.get();
    let loads = touch_order(&engine).len();
    // A load per request would be 24; batches of up to fairness_batch (3) + in-flight
    // requests give far fewer.
    assert!(swaps <= 8, "swaps {swaps}, loads {loads}");
    assert!(loads <= 9, "loads {loads}");
    // Fairness: while the other model waits, a model admits at most fairness_batch (3)
    // requests per turn (one more of slack for the first turn, before anyone waited).
    let order = order.lock().unwrap();
    let longest_run = order
        .chunk_by(|a, b| a == b)
        .map(|c| c.len())
        .max()
        .unwrap_or(0);
    assert!(longest_run <= 3 + 1, "order {order:?}");
}

#[tokio::test]
async fn keep_alive_unloads_idle_models() {
    let engine = Arc::new(ScriptedEngine::default());
    let mut ttl = model("ttl", 10);
    ttl.keep_alive = Some(DurationSetting(Duration::from_millis(300)));
    let mut zero = model("zero", 10);
    zero.keep_alive = Some(DurationSetting(Duration::ZERO));
    let forever = model("forever", 10);
    let (sched, _) = scheduler(&settings(vec![ttl, zero, forever], 100), engine);
    for m in ["ttl", "zero", "forever"] {
        run(&sched, m, 1).await.unwrap();
    }
    assert_eq!(status(&sched, "zero"), "unloaded");
    assert_eq!(status(&sched, "ttl"), "ready");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&sched, "ttl"), "unloaded");
    assert_eq!(status(&sched, "forever"), "ready");
    let used: u64 = sched.pool().memory().iter().map(|d| d.used).sum();
    assert_eq!(used, 10 * MIB, "only `forever` holds memory");
}

#[tokio::test]
async fn a_failed_load_is_reported_then_retried() {
    let engine = Arc::new(ScriptedEngine {
        fail_once: Mutex::new(vec!["a".into()]),
        ..Default::default()
    });
    let (sched, _) = scheduler(&settings(vec![model("a", 10), model("b", 10)], 100), engine);
    match run(&sched, "a", 1).await {
        Err(ApiError::ModelLoadFailed { reason, .. }) => assert!(reason.contains("scripted")),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&sched, "a"), "failed");
    assert_eq!(
        run(&sched, "b", 1).await.unwrap(),
        1,
        "other models keep serving"
    );
    assert_eq!(
        run(&sched, "a", 1).await.unwrap(),
        1,
        "retried on a later request"
    );
}

#[tokio::test]
async fn admin_unload_drains_a_busy_model() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(10),
        ..Default::default()
    });
    let (sched, _) = scheduler(&settings(vec![model("a", 10)], 100), engine);
    let s1 = sched.clone();
    let running = tokio::spawn(async move { run(&s1, "a", 20).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sched.pool().unload_now(0), "draining");
    assert_eq!(
        running.await.unwrap().unwrap(),
        20,
        "running request finishes"
    );
    assert_eq!(status(&sched, "a"), "unloaded");
    sched.pool().load_now(0).await.unwrap();
    assert_eq!(status(&sched, "a"), "ready");
}

#[tokio::test]
async fn metrics_count_exactly_what_happened() {
    let engine = Arc::new(ScriptedEngine::default());
    let (sched, metrics) = scheduler(&settings(vec![model("m", 10)], 100), engine);
    assert_eq!(run(&sched, "m", 5).await.unwrap(), 5);
    let m = ["m"];
    assert_eq!(metrics.generated_tokens.with_label_values(&m).get(), 5);
    assert_eq!(metrics.prompt_tokens.with_label_values(&m).get(), 2);
    assert_eq!(
        metrics
            .time_to_first_token
            .with_label_values(&m)
            .get_sample_count(),
        1
    );
    assert_eq!(
        metrics
            .inter_token_latency
            .with_label_values(&m)
            .get_sample_count(),
        4
    );
    assert_eq!(
        metrics
            .request_duration
            .with_label_values(&m)
            .get_sample_count(),
        1
    );
    assert_eq!(
        metrics.queue_wait.with_label_values(&m).get_sample_count(),
        1
    );
    let per_request = metrics.generated_tokens_per_request.with_label_values(&m);
    assert_eq!(
        (per_request.get_sample_count(), per_request.get_sample_sum()),
        (1, 5.0)
    );
    assert_eq!(metrics.model_loads.with_label_values(&m).get(), 1);
    assert_eq!(metrics.cancelled_requests.with_label_values(&m).get(), 0);

    // A stream dropped before its end is a cancellation, and the slot is freed.
    let mut g = sched
        .start("m", Prompt::Text("hi".into()), sampling(50), "prompt")
        .await
        .unwrap();
    g.next().await.unwrap().unwrap();
    drop(g);
    assert_eq!(metrics.cancelled_requests.with_label_values(&m).get(), 1);
    assert_eq!(
        metrics
            .request_duration
            .with_label_values(&m)
            .get_sample_count(),
        1
    );
    sched.refresh_gauges();
    assert_eq!(metrics.running_requests.with_label_values(&m).get(), 0);
    assert_eq!(metrics.queued_requests.with_label_values(&m).get(), 0);
    assert_eq!(metrics.model_loaded.with_label_values(&m).get(), 1);
}
