//! Scheduler tests with a scripted engine: fast and deterministic, no model involved.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{Scheduler, SchedulerError};
use crate::config::{DurationSetting, ModelSettings, ModelSource, Settings};
use crate::engine::{Prompt, TokenEvent};
use crate::memory::ByteSize;
use crate::metrics::Metrics;

const MIB: u64 = 1024 * 1024;

/// The public scripted engine, under the name these tests grew up with.
use crate::engine::fake::FakeEngine as ScriptedEngine;

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

fn scheduler(
    s: &Settings,
    engine: Arc<dyn crate::engine::Engine>,
) -> (Arc<Scheduler>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let sched = Arc::new(Scheduler::new(s, engine, metrics.clone()));
    sched.start_background();
    (sched, metrics)
}

fn sampling(max_tokens: usize) -> super::Sampling {
    super::Sampling {
        settings: Default::default(),
        max_tokens: Some(max_tokens),
        json_schema: None,
        affinity: None,
    }
}

async fn run(sched: &Scheduler, model: &str, tokens: usize) -> Result<usize, SchedulerError> {
    let mut g = sched
        .start(model, Prompt::Text("hello".into()), sampling(tokens))
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
        Err(SchedulerError::InsufficientMemory { needed, budget, .. }) => {
            assert_eq!(needed, 2000 * MIB);
            assert_eq!(budget, 1000 * MIB);
        }
        other => panic!("{other:?}"),
    }
    run(&sched, "p", 1).await.unwrap();
    match run(&sched, "mid", 1).await {
        Err(SchedulerError::InsufficientMemory { pinned, .. }) => assert_eq!(pinned, 600 * MIB),
        other => panic!("{other:?}"),
    }
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
        Err(SchedulerError::QueueFull { .. })
    ));
    assert!(matches!(
        queued.await.unwrap(),
        Err(SchedulerError::QueueTimeout { .. })
    ));
    assert_eq!(running.await.unwrap().unwrap(), 40);
}

#[tokio::test]
async fn a_full_queue_overflows_to_the_overflow_model_once() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let mut a = model("a", 10);
    a.max_concurrent = 1;
    a.queue_size = 0;
    a.overflow = Some("b".into());
    let mut b = model("b", 10);
    b.max_concurrent = 1;
    b.queue_size = 0;
    b.overflow = Some("a".into());
    let (sched, metrics) = scheduler(&settings(vec![a, b], 100), engine);
    let s1 = sched.clone();
    let running = tokio::spawn(async move { run(&s1, "a", 20).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(sched.registry().resolve("a").unwrap().admission.is_full());
    // `a` is busy: the request runs on `b` instead of a 429.
    let s2 = sched.clone();
    let overflowed = tokio::spawn(async move { run(&s2, "a", 20).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let overflow = |from: &str, to: &str| metrics.overflowed.with_label_values(&[from, to]).get();
    assert_eq!(overflow("a", "b"), 1);
    // Both busy: one hop only (b's own overflow back to a is not followed), a 429.
    assert!(matches!(
        run(&sched, "a", 1).await,
        Err(SchedulerError::QueueFull { .. })
    ));
    assert_eq!((overflow("a", "b"), overflow("b", "a")), (1, 0));
    assert_eq!(running.await.unwrap().unwrap(), 20);
    assert_eq!(overflowed.await.unwrap().unwrap(), 20);
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
    let (sched, _) = scheduler(
        &settings(vec![model("a", 10), model("b", 10)], 100),
        engine.clone(),
    );
    match run(&sched, "a", 1).await {
        Err(SchedulerError::ModelLoadFailed { reason, .. }) => assert!(reason.contains("scripted")),
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&sched, "a"), "failed");
    assert_eq!(
        run(&sched, "b", 1).await.unwrap(),
        1,
        "other models keep serving"
    );
    // During the backoff the stored error comes back at once, without a new attempt.
    let asked = Instant::now();
    match run(&sched, "a", 1).await {
        Err(SchedulerError::ModelLoadFailed { retry_after, .. }) => {
            assert!(retry_after <= super::pool::RETRY_FIRST);
        }
        other => panic!("{other:?}"),
    }
    assert!(asked.elapsed() < Duration::from_millis(100));
    assert_eq!(
        touch_order(&engine),
        vec!["a", "b"],
        "no second load of a yet"
    );
    tokio::time::sleep(super::pool::RETRY_FIRST).await;
    assert_eq!(
        run(&sched, "a", 1).await.unwrap(),
        1,
        "retried once the backoff passed"
    );
}

#[tokio::test]
async fn a_timed_out_load_keeps_its_memory_until_the_loader_ends() {
    let engine = Arc::new(ScriptedEngine {
        load_delay: Duration::from_millis(2500),
        ..Default::default()
    });
    let mut slow = model("slow", 60);
    slow.load_timeout_secs = 1;
    let (sched, _) = scheduler(
        &settings(vec![slow, model("other", 60)], 100),
        engine.clone(),
    );
    let started = Instant::now();
    match run(&sched, "slow", 1).await {
        Err(SchedulerError::ModelLoadFailed { reason, .. }) => {
            assert!(reason.contains("load_timeout"))
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(2000));
    assert_eq!(engine.loaders_running.load(Ordering::SeqCst), 1);
    let used = |sched: &Scheduler| sched.pool().memory().iter().map(|d| d.used).sum::<u64>();
    assert_eq!(
        used(&sched),
        60 * MIB,
        "the running loader still holds its memory"
    );
    // Another model that does not fit beside it waits instead of over-committing.
    let other = {
        let sched = sched.clone();
        tokio::spawn(async move { run(&sched, "other", 1).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!other.is_finished());
    assert!(used(&sched) <= 100 * MIB);
    assert_eq!(other.await.unwrap().unwrap(), 1);
    assert_eq!(engine.loaders_running.load(Ordering::SeqCst), 0);
    assert_eq!(used(&sched), 60 * MIB, "only `other` holds memory now");
}

#[tokio::test]
async fn a_model_of_unknown_size_reserves_the_whole_budget_until_loaded() {
    let engine = Arc::new(ScriptedEngine {
        load_delay: Duration::from_millis(300),
        unknown_until_loaded: Mutex::new(vec!["hub".into()]),
        ..Default::default()
    });
    let (sched, _) = scheduler(&settings(vec![model("hub", 30)], 100), engine);
    let loading = {
        let sched = sched.clone();
        tokio::spawn(async move { run(&sched, "hub", 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let used = |sched: &Scheduler| sched.pool().memory().iter().map(|d| d.used).sum::<u64>();
    assert_eq!(
        used(&sched),
        100 * MIB,
        "the whole budget while its size is unknown"
    );
    assert_eq!(loading.await.unwrap().unwrap(), 1);
    assert_eq!(used(&sched), 30 * MIB, "its real footprint once loaded");
}

fn prompts(count: usize) -> Vec<Prompt> {
    (0..count)
        .map(|i| Prompt::Text(format!("prompt {i}")))
        .collect()
}

async fn run_many(sched: &Scheduler, model: &str, count: usize, tokens: usize) -> usize {
    let mut batch = sched
        .start_many(model, prompts(count), sampling(tokens))
        .await
        .unwrap();
    assert_eq!(batch.reports.len(), count);
    let mut done = 0;
    while let Some((_, event)) = batch.events.next().await {
        if let TokenEvent::Done(_) = event.unwrap() {
            done += 1;
        }
    }
    done
}

#[tokio::test]
async fn many_prompts_on_few_slots_complete_and_never_hold_idle_slots() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(5),
        ..Default::default()
    });
    let mut m = model("a", 10);
    m.max_concurrent = 4;
    m.queue_timeout_secs = Some(2);
    let (sched, _) = scheduler(&settings(vec![m], 100), engine);
    assert_eq!(run_many(&sched, "a", 16, 4).await, 16);
    // Two at once: 32 generations through 4 slots, no deadlock.
    let (a, b) = tokio::join!(run_many(&sched, "a", 16, 4), run_many(&sched, "a", 16, 4));
    assert_eq!((a, b), (16, 16));
    let slot = sched.registry().resolve("a").unwrap();
    assert_eq!((slot.admission.running(), slot.admission.waiting()), (0, 0));
}

#[tokio::test]
async fn a_single_request_is_not_starved_by_a_batch() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(10),
        ..Default::default()
    });
    let mut m = model("a", 10);
    m.max_concurrent = 4;
    let (sched, _) = scheduler(&settings(vec![m], 100), engine);
    // 16 prompts × 10 tokens × 10 ms through 4 slots: ~400 ms in four waves.
    let batch = {
        let sched = sched.clone();
        tokio::spawn(async move {
            let done = run_many(&sched, "a", 16, 10).await;
            (done, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let asked = Instant::now();
    assert_eq!(run(&sched, "a", 10).await.unwrap(), 10);
    let single_done = Instant::now();
    // It waits for at most one generation of the batch (~100 ms), not the batch.
    assert!(
        single_done - asked < Duration::from_millis(350),
        "waited {:?}",
        single_done - asked
    );
    let (done, batch_done) = batch.await.unwrap();
    assert_eq!(done, 16);
    assert!(single_done < batch_done);
}

#[tokio::test]
async fn n_choices_take_n_slots_at_once() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let mut m = model("a", 10);
    m.max_concurrent = 4;
    let (sched, _) = scheduler(&settings(vec![m], 100), engine);
    let slot = sched.registry().resolve("a").unwrap();
    let mut sampling3 = sampling(5);
    sampling3.settings.n = 3;
    let g = sched
        .start("a", Prompt::Text("x".into()), sampling3)
        .await
        .unwrap();
    assert_eq!(slot.admission.running(), 3);
    let mut sampling9 = sampling(5);
    sampling9.settings.n = 9;
    let waiting = {
        let sched = sched.clone();
        tokio::spawn(async move {
            sched
                .start("a", Prompt::Text("x".into()), sampling9)
                .await
                .map(|_| ())
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !waiting.is_finished(),
        "more choices than free slots: waits for all 4"
    );
    drop(g);
    waiting.await.unwrap().unwrap();
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
        .start("m", Prompt::Text("hi".into()), sampling(50))
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

/// The fake engine, sized as the llama.cpp engine sizes a GGUF from its header, recording
/// the context each load was asked for.
#[derive(Default)]
struct HeaderSized {
    fake: ScriptedEngine,
    contexts: Mutex<Vec<(String, Option<usize>)>>,
}

#[async_trait::async_trait]
impl crate::engine::Engine for HeaderSized {
    async fn load(
        &self,
        settings: &ModelSettings,
    ) -> Result<Arc<dyn crate::engine::LoadedModel>, crate::engine::EngineError> {
        self.contexts
            .lock()
            .unwrap()
            .push((settings.name.clone(), settings.context_length));
        self.fake.load(settings).await
    }

    fn estimate_footprint(
        &self,
        settings: &ModelSettings,
    ) -> Result<crate::memory::Footprint, String> {
        crate::engine::llama_cpp::LlamaCppEngine.estimate_footprint(settings)
    }
}

/// Header-only GGUFs of real models, each in a scratch folder of its own.
fn real_geometry(name: &str, g: &crate::gguf::geometry::Geometry) -> ModelSettings {
    let dir = std::env::temp_dir().join(format!("llamagate-fit-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.gguf"));
    crate::gguf::geometry::write(&path, g);
    let mut m = ModelSettings::new(name, ModelSource::File(path));
    m.max_concurrent = 4;
    m.queue_size = 8;
    m
}

#[tokio::test]
async fn an_unset_context_shrinks_to_fit_and_a_set_one_is_refused_with_numbers() {
    use crate::engine::Engine;
    use crate::gguf::geometry::{LLAMA_3_1_8B, LLAMA_3_2_1B, LLAMA_3_2_3B, QWEN_2_5_7B};
    const GIB: u64 = 1024 * MIB;
    // A 16 GiB PC: the default budget is 70% of it.
    let budget = 16 * GIB * 7 / 10;
    for (name, g) in [
        ("llama-3.1-8b", LLAMA_3_1_8B),
        ("llama-3.2-3b", LLAMA_3_2_3B),
        ("qwen2.5-7b", QWEN_2_5_7B),
    ] {
        let engine = Arc::new(HeaderSized::default());
        let m = real_geometry(name, &g);
        let full = engine.estimate_footprint(&m).unwrap();
        assert!(
            full.total() > budget,
            "{name} at its full context must not fit"
        );
        let mut s = settings(vec![m.clone()], budget / MIB);
        s.scheduler.cpu_memory_budget = Some(ByteSize(budget));
        let sched = scheduler(&s, engine.clone()).0;
        run(&sched, name, 1).await.unwrap();
        let asked = engine.contexts.lock().unwrap()[0].1.unwrap() as u64;
        let at = |c: u64| {
            let mut fitted = m.clone();
            fitted.context_length = Some(c as usize);
            engine.estimate_footprint(&fitted).unwrap().total()
        };
        eprintln!(
            "{name}: context {asked} of {} fits {} (full: {})",
            g.context,
            ByteSize(at(asked)),
            ByteSize(full.total())
        );
        assert_eq!(asked % 1024, 0, "{name}: {asked}");
        assert!(
            asked >= crate::memory::MIN_FITTED_CONTEXT && asked < g.context,
            "{name}: {asked}"
        );
        assert!(at(asked) <= budget, "{name}: {asked} fits");
        assert!(at(asked + 1024) > budget, "{name}: {asked} is the largest");
        let slot = sched.registry().resolve(name).unwrap();
        let status = sched.pool().status(slot.index);
        assert_eq!(status.fitted_context, Some((asked, g.context)));
        assert_eq!(status.reserved_bytes, at(asked));

        // The same model with its full context configured: refused, with the numbers.
        let mut explicit = m.clone();
        explicit.name = format!("{name}-full");
        explicit.context_length = Some(g.context as usize);
        let s = settings(vec![explicit.clone()], 0);
        let mut s = s;
        s.scheduler.cpu_memory_budget = Some(ByteSize(budget));
        let sched = scheduler(&s, engine.clone()).0;
        match run(&sched, &explicit.name, 1).await {
            Err(SchedulerError::InsufficientMemory {
                needed, budget: b, ..
            }) => {
                assert_eq!(needed, full.total());
                assert_eq!(b, budget);
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    // Next to a pinned 3B, an 8B gets what is left; a 1B that fits whole keeps its context.
    let engine = Arc::new(HeaderSized::default());
    let mut pinned = real_geometry("pinned-3b", &LLAMA_3_2_3B);
    pinned.pinned = true;
    pinned.context_length = Some(8192);
    let big = real_geometry("llama-3.1-8b", &LLAMA_3_1_8B);
    let mut small = real_geometry("llama-3.2-1b", &LLAMA_3_2_1B);
    small.max_concurrent = 1;
    let mut s = settings(vec![pinned.clone(), big.clone(), small], 0);
    s.scheduler.cpu_memory_budget = Some(ByteSize(32 * GIB));
    let sched = scheduler(&s, engine.clone()).0;
    run(&sched, "pinned-3b", 1).await.unwrap();
    run(&sched, "llama-3.1-8b", 1).await.unwrap();
    let pinned_bytes = engine.estimate_footprint(&pinned).unwrap().total();
    let slot = sched.registry().resolve("llama-3.1-8b").unwrap();
    let status = sched.pool().status(slot.index);
    let (context, _) = status.fitted_context.unwrap();
    assert!(status.reserved_bytes <= 32 * GIB - pinned_bytes);
    let mut one_more = big.clone();
    one_more.context_length = Some(context as usize + 1024);
    assert!(engine.estimate_footprint(&one_more).unwrap().total() > 32 * GIB - pinned_bytes);
    // The 8B leaves (idle, not pinned) for the 1B, which fits at its full 128k context.
    run(&sched, "llama-3.2-1b", 1).await.unwrap();
    let slot = sched.registry().resolve("llama-3.2-1b").unwrap();
    assert_eq!(sched.pool().status(slot.index).fitted_context, None);
    let contexts = engine.contexts.lock().unwrap().clone();
    assert_eq!(
        contexts.last().unwrap(),
        &("llama-3.2-1b".to_string(), None)
    );
    // Not even the floor fits: refused with the floor's numbers.
    let tiny = real_geometry("llama-3.1-8b", &LLAMA_3_1_8B);
    let mut s = settings(vec![tiny.clone()], 0);
    s.scheduler.cpu_memory_budget = Some(ByteSize(4 * GIB));
    let sched = scheduler(&s, engine.clone()).0;
    match run(&sched, "llama-3.1-8b", 1).await {
        Err(SchedulerError::InsufficientMemory { needed, .. }) => {
            let mut floor = tiny.clone();
            floor.context_length = Some(crate::memory::MIN_FITTED_CONTEXT as usize);
            assert_eq!(needed, engine.estimate_footprint(&floor).unwrap().total());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_replaced_model_finishes_its_work_and_its_queue_moves_to_the_new_one() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let mut a = model("a", 100);
    a.max_concurrent = 1;
    let (sched, _) = scheduler(&settings(vec![a.clone()], 1000), engine.clone());
    // One request runs (20 tokens), three wait in the queue of the old definition.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = sched.clone();
        tasks.push(tokio::spawn(async move { run(&s, "a", 20).await }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut changed = a.clone();
    changed.max_concurrent = 4;
    changed.aliases = vec!["alpha".into()];
    let new = sched
        .add_model(&changed, super::registry::Origin::Api, true)
        .unwrap();
    assert_eq!(sched.registry().resolve("alpha").unwrap().index, new.index);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 20, "nothing is dropped");
    }
    assert_eq!(
        sched.pool().status(0).status,
        "unloaded",
        "the old one unloaded"
    );
    assert_eq!(sched.pool().status(0).reserved_bytes, 0);
    assert_eq!(sched.registry().slots().len(), 1);
    // Without replace, a taken name is refused; removing makes it a 404.
    assert!(sched
        .add_model(&changed, super::registry::Origin::Api, false)
        .is_err());
    assert!(sched.remove_model("a").is_some());
    assert!(matches!(
        run(&sched, "alpha", 1).await,
        Err(SchedulerError::ModelNotFound(_))
    ));
    assert!(sched.remove_model("a").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_added_at_once_from_many_threads_each_serve() {
    let engine = Arc::new(ScriptedEngine::default());
    let (sched, _) = scheduler(&settings(vec![model("a", 10)], 1000), engine);
    let adds: Vec<_> = (0..8)
        .map(|i| {
            let s = sched.clone();
            tokio::task::spawn_blocking(move || {
                s.add_model(
                    &model(&format!("m{i}"), 10),
                    super::registry::Origin::Api,
                    false,
                )
                .unwrap()
            })
        })
        .collect();
    for add in adds {
        let slot = add.await.unwrap();
        assert_eq!(
            sched.registry().resolve(&slot.settings.name).unwrap().index,
            slot.index
        );
    }
    for i in 0..8 {
        assert_eq!(run(&sched, &format!("m{i}"), 3).await.unwrap(), 3);
        let slot = sched.registry().resolve(&format!("m{i}")).unwrap();
        assert_eq!(sched.pool().status(slot.index).status, "ready");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_around_a_replacement_all_finish() {
    let engine = Arc::new(ScriptedEngine {
        token_delay: Duration::from_millis(5),
        load_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let a = model("a", 100);
    let (sched, _) = scheduler(
        &settings(vec![a.clone(), model("b", 100)], 1000),
        engine.clone(),
    );
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let s = sched.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 7)).await;
            run(&s, "a", 20).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(60)).await;
    let mut changed = a.clone();
    changed.max_concurrent = 3;
    let s = sched.clone();
    tokio::task::spawn_blocking(move || {
        s.apply_config_models(&[changed, model("c", 100)]);
    })
    .await
    .unwrap();
    for t in tasks {
        let done = tokio::time::timeout(Duration::from_secs(4), t).await;
        assert_eq!(done.expect("a request was stuck").unwrap().unwrap(), 20);
    }
}

/// A model of `mib` MiB on GPU `cuda:0`, whose layers the fake engine lets the pool split.
fn gpu_model(name: &str, mib: u64) -> ModelSettings {
    let mut m = model(name, mib);
    m.device = "cuda:0".parse().unwrap();
    m
}

/// Settings with a GPU budget beside the CPU's.
fn gpu_settings(models: Vec<ModelSettings>, gpu_mib: u64, cpu_mib: u64) -> Settings {
    let mut s = settings(models, cpu_mib);
    s.scheduler.gpu_memory_budget = Some(ByteSize(gpu_mib * MIB));
    s
}

fn used(sched: &Scheduler, device: &str) -> u64 {
    sched
        .pool()
        .memory()
        .into_iter()
        .find(|d| d.device == device)
        .map_or(0, |d| d.used / MIB)
}

fn placed(engine: &ScriptedEngine) -> Vec<(String, crate::config::GpuLayers)> {
    engine.placed.lock().unwrap().clone()
}

use crate::config::GpuLayers;

#[tokio::test]
async fn a_model_larger_than_its_gpu_budget_is_split_by_layer() {
    let engine = Arc::new(ScriptedEngine {
        layers: 10,
        ..Default::default()
    });
    let s = gpu_settings(vec![gpu_model("big", 1000)], 600, 2000);
    let (sched, _) = scheduler(&s, engine.clone());
    run(&sched, "big", 1).await.unwrap();
    assert_eq!(placed(&engine), [("big".into(), GpuLayers::Count(6))]);
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (600, 400));
    let slot = sched.registry().resolve("big").unwrap();
    let status = sched.pool().status(slot.index);
    assert_eq!(status.gpu_layers, Some((6, 10)));
    assert_eq!(status.reserved_bytes, 1000 * MIB);
}

#[tokio::test]
async fn a_model_over_two_gpus_reserves_its_share_on_each_and_leaves_both_when_evicted() {
    let engine = Arc::new(ScriptedEngine {
        layers: 10,
        ..Default::default()
    });
    let mut big = model("big", 1000);
    big.engine = Some(crate::config::EngineKind::LlamaCpp);
    big.devices = vec!["cuda:0".parse().unwrap(), "cuda:1".parse().unwrap()];
    let mut small = gpu_model("small", 300);
    small.device = "cuda:1".parse().unwrap();
    let s = gpu_settings(vec![big, small], 400, 2000);
    let (sched, _) = scheduler(&s, engine.clone());
    // 10 layers of 100 MiB, equal halves: 8 fit two budgets of 400 (4 + 4), 2 on the CPU.
    run(&sched, "big", 1).await.unwrap();
    assert_eq!(placed(&engine), [("big".into(), GpuLayers::Count(8))]);
    assert_eq!(
        (
            used(&sched, "cuda:0"),
            used(&sched, "cuda:1"),
            used(&sched, "cpu")
        ),
        (400, 400, 200)
    );
    let memory = sched.pool().memory();
    for device in ["cuda:0", "cuda:1"] {
        let d = memory.iter().find(|d| d.device == device).unwrap();
        assert_eq!(d.models, [("big".to_string(), 400 * MIB)], "{device}");
    }
    let slot = sched.registry().resolve("big").unwrap();
    assert_eq!(sched.pool().status(slot.index).reserved_bytes, 1000 * MIB);
    // A model on the second GPU alone evicts the idle one from both GPUs and the CPU.
    run(&sched, "small", 1).await.unwrap();
    assert_eq!(
        (
            used(&sched, "cuda:0"),
            used(&sched, "cuda:1"),
            used(&sched, "cpu")
        ),
        (0, 300, 0)
    );
}

#[tokio::test]
async fn a_configured_split_is_honoured_or_refused_with_the_numbers() {
    let engine = Arc::new(ScriptedEngine {
        layers: 10,
        ..Default::default()
    });
    let mut four = gpu_model("four", 1000);
    four.gpu_layers = GpuLayers::Count(4);
    let mut all = gpu_model("all", 1000);
    all.gpu_layers = GpuLayers::Count(10);
    let s = gpu_settings(vec![four, all], 600, 2000);
    let (sched, _) = scheduler(&s, engine.clone());
    run(&sched, "four", 1).await.unwrap();
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (400, 600));
    match run(&sched, "all", 1).await {
        Err(SchedulerError::InsufficientMemory {
            device,
            needed,
            budget,
            ..
        }) => {
            assert_eq!(device, "cuda:0");
            assert_eq!((needed / MIB, budget / MIB), (1000, 600));
        }
        other => panic!("expected insufficient memory, got {:?}", other.map(drop)),
    }
    // The CPU's share counts on the CPU's budget too.
    let mut s = gpu_settings(vec![gpu_model("big", 1000)], 100, 500);
    s.models[0].gpu_layers = GpuLayers::Count(1);
    let (sched, _) = scheduler(&s, engine);
    match run(&sched, "big", 1).await {
        Err(SchedulerError::InsufficientMemory { device, needed, .. }) => {
            assert_eq!((device.as_str(), needed / MIB), ("cpu", 900));
        }
        other => panic!("expected insufficient memory, got {:?}", other.map(drop)),
    }
}

#[tokio::test]
async fn gpu_models_share_the_gpu_budget_beside_busy_ones_and_evict_idle_ones() {
    let engine = Arc::new(ScriptedEngine {
        layers: 10,
        token_delay: Duration::from_millis(20),
        ..Default::default()
    });
    let s = gpu_settings(vec![gpu_model("a", 500), gpu_model("b", 500)], 800, 2000);
    let (sched, _) = scheduler(&s, engine.clone());
    // `a` is busy: `b` gets the rest of the GPU and the CPU for the rest.
    let sched2 = sched.clone();
    let long = tokio::spawn(async move { run(&sched2, "a", 15).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    run(&sched, "b", 1).await.unwrap();
    assert_eq!(long.await.unwrap().unwrap(), 15);
    assert_eq!(
        placed(&engine),
        [
            ("a".into(), GpuLayers::Count(10)),
            ("b".into(), GpuLayers::Count(6))
        ]
    );
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (800, 200));
    // Both idle: `a` asks again (loaded, nothing moves); then `b` is unloaded and
    // reloads whole, evicting the idle `a` (least recently used) to fit.
    run(&sched, "a", 1).await.unwrap();
    sched
        .pool()
        .unload_now(sched.registry().resolve("b").unwrap().index);
    run(&sched, "b", 1).await.unwrap();
    assert_eq!(status(&sched, "a"), "unloaded");
    assert_eq!(placed(&engine)[2], ("b".into(), GpuLayers::Count(10)));
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (500, 0));
}

#[tokio::test]
async fn a_split_model_evicts_idle_cpu_models_for_its_cpu_share() {
    let engine = Arc::new(ScriptedEngine {
        layers: 10,
        ..Default::default()
    });
    let s = gpu_settings(
        vec![model("cpu-model", 400), gpu_model("big", 1000)],
        500,
        800,
    );
    let (sched, _) = scheduler(&s, engine.clone());
    run(&sched, "cpu-model", 1).await.unwrap();
    run(&sched, "big", 1).await.unwrap();
    assert_eq!(status(&sched, "cpu-model"), "unloaded");
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (500, 500));
    // And the CPU model, loaded again, evicts the split one (it holds CPU memory).
    run(&sched, "cpu-model", 1).await.unwrap();
    assert_eq!(status(&sched, "big"), "unloaded");
    assert_eq!((used(&sched, "cuda:0"), used(&sched, "cpu")), (0, 400));
}
