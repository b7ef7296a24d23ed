//! Every Prometheus metric of llamagate, registered once in one registry. Labels are
//! bounded: configured model names, route patterns, status classes, finish reasons.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets (seconds) wide enough for a GPU (ms) and a CPU (s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0,
    60.0, 120.0,
];

/// The registry and handles to each metric.
pub struct Metrics {
    registry: Registry,
    /// Tokens generated, counted as they are sampled.
    pub generated_tokens: IntCounterVec,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: IntCounterVec,
    /// Prompt tokens served from a reused KV-cache prefix.
    pub cached_prompt_tokens: IntCounterVec,
    /// Tokens a draft model guessed ahead (speculative decoding).
    pub draft_tokens: IntCounterVec,
    /// Of those, the ones the model itself then produced (kept).
    pub draft_accepted_tokens: IntCounterVec,
    /// Tokens the draft model guesses ahead per step, as last chosen.
    pub draft_length: IntGaugeVec,
    /// Generations whose client went away before the end.
    pub cancelled_requests: IntCounterVec,
    /// Requests refused by the scheduler, by reason.
    pub rejected_requests: IntCounterVec,
    /// Requests a model with a full queue handed to its `overflow` model.
    pub overflowed: IntCounterVec,
    /// Requests per key name (`unnamed`, `admin`, `anonymous` for the others) and model.
    pub key_requests: IntCounterVec,
    /// Of those, the ones answered with an error status.
    pub key_errors: IntCounterVec,
    /// Prompt tokens per key name and model.
    pub key_prompt_tokens: IntCounterVec,
    /// Completion tokens per key name and model.
    pub key_completion_tokens: IntCounterVec,
    /// Requests refused by a named key's limits, by limit.
    pub key_rate_limited: IntCounterVec,
    /// Connections cut because the client was too slow: `body` (request body not sent in
    /// time) or `write` (a streamed answer not read in time).
    pub client_timeouts: IntCounterVec,
    /// HTTP requests by endpoint (route pattern) and status class.
    pub http_requests: IntCounterVec,
    /// Generations running now.
    pub running_requests: IntGaugeVec,
    /// Requests waiting for a slot now.
    pub queued_requests: IntGaugeVec,
    /// Time to first token.
    pub time_to_first_token: HistogramVec,
    /// Time between tokens after the first.
    pub inter_token_latency: HistogramVec,
    /// Whole request latency.
    pub request_duration: HistogramVec,
    /// `/v1/embeddings` requests computed.
    pub embedding_requests: IntCounterVec,
    /// Tokens read by embedding requests.
    pub embedding_input_tokens: IntCounterVec,
    /// Latency of an embedding request, admission to the last vector.
    pub embedding_duration: HistogramVec,
    /// Successful model loads.
    pub model_loads: IntCounterVec,
    /// Failed model loads.
    pub model_load_failures: IntCounterVec,
    /// Models unloaded to make room for another.
    pub model_evictions: IntCounterVec,
    /// Evictions made to load another model (the thrash counter).
    pub model_swaps: IntCounter,
    /// Bytes downloaded by model pulls.
    pub pull_bytes: IntCounter,
    /// Model pulls that failed.
    pub pull_failures: IntCounter,
    /// Time to load a model.
    pub model_load_duration: HistogramVec,
    /// 1 when the model is loaded.
    pub model_loaded: IntGaugeVec,
    /// Bytes reserved for the model.
    pub model_memory_bytes: IntGaugeVec,
    /// Memory budget per device.
    pub memory_budget_bytes: IntGaugeVec,
    /// Memory reserved per device.
    pub memory_used_bytes: IntGaugeVec,
    /// A GPU's total memory, as its driver reports it.
    pub device_memory_total_bytes: IntGaugeVec,
    /// A GPU's free memory, as its driver reports it.
    pub device_memory_free_bytes: IntGaugeVec,
    /// Time from arrival to getting a sequence slot (queue, memory, load).
    pub queue_wait: HistogramVec,
    /// Prompt tokens per request.
    pub prompt_tokens_per_request: HistogramVec,
    /// Generated tokens per request.
    pub generated_tokens_per_request: HistogramVec,
    /// Build identity (always 1).
    pub build_info: IntGaugeVec,
    /// Attempts sent to each member of an upstream pool.
    pub upstream_requests: IntCounterVec,
    /// Attempts that failed on the member's side.
    pub upstream_failures: IntCounterVec,
    /// Times a member was ejected.
    pub upstream_ejections: IntCounterVec,
    /// Seconds from sending to the member's first byte, summed over answered attempts.
    pub upstream_response_seconds: CounterVec,
    /// 1 while the member takes traffic (healthy or recovering), 0 while ejected.
    pub upstream_healthy: IntGaugeVec,
    /// Requests the member runs now.
    pub upstream_outstanding: IntGaugeVec,
}

/// Token-count buckets: 1 to 16384 in powers of two.
fn token_buckets() -> Vec<f64> {
    (0..=14).map(|p| f64::from(1u32 << p)).collect()
}

impl Metrics {
    /// Creates and registers every metric.
    #[allow(
        clippy::expect_used,
        reason = "constant names, help texts and buckets, each registered once: checked by every test"
    )]
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("registered once");
            g
        };
        let histogram_with = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("registered once");
            h
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            histogram_with(name, help, labels, LATENCY_BUCKETS.to_vec())
        };
        Self {
            generated_tokens: counter(
                "llamagate_generated_tokens_total",
                "Tokens generated, counted as they are sampled.",
                &["model"],
            ),
            prompt_tokens: counter(
                "llamagate_prompt_tokens_total",
                "Prompt tokens of admitted generations.",
                &["model"],
            ),
            cached_prompt_tokens: counter(
                "llamagate_prompt_cached_tokens_total",
                "Prompt tokens served from a reused KV-cache prefix instead of recomputed.",
                &["model"],
            ),
            draft_tokens: counter(
                "llamagate_draft_tokens_total",
                "Tokens a draft model guessed ahead for the model (speculative decoding).",
                &["model"],
            ),
            draft_accepted_tokens: counter(
                "llamagate_draft_accepted_tokens_total",
                "Draft tokens the model itself produced too (kept); divided by llamagate_draft_tokens_total, the acceptance rate.",
                &["model"],
            ),
            draft_length: gauge(
                "llamagate_draft_length",
                "Tokens the draft model guesses ahead per step (speculative decoding), as chosen when the model's last answer ended: from what drafting yields on this machine (0: drafting does not pay now), or draft_max with draft_adaptive = false.",
                &["model"],
            ),
            cancelled_requests: counter(
                "llamagate_cancelled_requests_total",
                "Generations cancelled because the client went away.",
                &["model"],
            ),
            rejected_requests: counter(
                "llamagate_rejected_requests_total",
                "Requests refused by the scheduler, by reason.",
                &["model", "reason"],
            ),
            overflowed: counter(
                "llamagate_overflow_requests_total",
                "Requests a model with a full queue handed to its overflow model.",
                &["model", "to"],
            ),
            key_requests: counter(
                "llamagate_key_requests_total",
                "API requests by key name (never the key) and model.",
                &["key", "model"],
            ),
            key_errors: counter(
                "llamagate_key_errors_total",
                "API requests answered with an error status, by key name and model.",
                &["key", "model"],
            ),
            key_prompt_tokens: counter(
                "llamagate_key_prompt_tokens_total",
                "Prompt tokens by key name and model.",
                &["key", "model"],
            ),
            key_completion_tokens: counter(
                "llamagate_key_completion_tokens_total",
                "Completion tokens by key name and model.",
                &["key", "model"],
            ),
            key_rate_limited: counter(
                "llamagate_key_rate_limited_total",
                "Requests refused by a named key's limits, by limit.",
                &["key", "limit"],
            ),
            client_timeouts: {
                let c = counter(
                    "llamagate_client_timeouts_total",
                    "Connections cut because the client sent its body or read its answer too slowly.",
                    &["kind"],
                );
                c.with_label_values(&["body"]);
                c.with_label_values(&["write"]);
                c
            },
            http_requests: counter(
                "llamagate_http_requests_total",
                "HTTP requests by route pattern and status class.",
                &["endpoint", "status_class"],
            ),
            running_requests: gauge(
                "llamagate_running_requests",
                "Generations running now.",
                &["model"],
            ),
            queued_requests: gauge(
                "llamagate_queued_requests",
                "Requests waiting for a sequence slot now.",
                &["model"],
            ),
            time_to_first_token: histogram(
                "llamagate_time_to_first_token_seconds",
                "Time from admission to the first generated text.",
                &["model"],
            ),
            inter_token_latency: histogram(
                "llamagate_inter_token_latency_seconds",
                "Time between successive generated tokens.",
                &["model"],
            ),
            request_duration: histogram(
                "llamagate_request_duration_seconds",
                "End-to-end generation latency, admission to last token.",
                &["model"],
            ),
            embedding_requests: counter(
                "llamagate_embedding_requests_total",
                "Embedding requests computed.",
                &["model"],
            ),
            embedding_input_tokens: counter(
                "llamagate_embedding_input_tokens_total",
                "Tokens read by embedding requests.",
                &["model"],
            ),
            embedding_duration: histogram(
                "llamagate_embedding_duration_seconds",
                "Embedding request latency, admission to the last vector.",
                &["model"],
            ),
            model_loads: counter(
                "llamagate_model_loads_total",
                "Successful model loads.",
                &["model"],
            ),
            model_load_failures: counter(
                "llamagate_model_load_failures_total",
                "Failed model loads.",
                &["model"],
            ),
            model_evictions: counter(
                "llamagate_model_evictions_total",
                "Models unloaded to make room for another model.",
                &["model"],
            ),
            pull_bytes: {
                let c = IntCounter::new(
                    "llamagate_pull_bytes_total",
                    "Bytes downloaded by model pulls (resumed bytes count once).",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            pull_failures: {
                let c =
                    IntCounter::new("llamagate_pull_failures_total", "Model pulls that failed.")
                        .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            model_swaps: {
                let c = IntCounter::new(
                    "llamagate_model_swaps_total",
                    "Evictions made to load another model.",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            model_load_duration: histogram_with(
                "llamagate_model_load_duration_seconds",
                "Time to load a model.",
                &["model"],
                vec![
                    0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ],
            ),
            model_loaded: gauge(
                "llamagate_model_loaded",
                "1 when the model is loaded (ready or draining), else 0.",
                &["model"],
            ),
            model_memory_bytes: gauge(
                "llamagate_model_memory_bytes",
                "Memory reserved for the model (estimated footprint) while loaded.",
                &["model"],
            ),
            memory_budget_bytes: gauge(
                "llamagate_memory_budget_bytes",
                "Memory models may use, per device.",
                &["device"],
            ),
            memory_used_bytes: gauge(
                "llamagate_memory_used_bytes",
                "Memory reserved by loaded models, per device.",
                &["device"],
            ),
            device_memory_total_bytes: gauge(
                "llamagate_device_memory_total_bytes",
                "A GPU's total memory, as its driver reports it.",
                &["device"],
            ),
            device_memory_free_bytes: gauge(
                "llamagate_device_memory_free_bytes",
                "A GPU's free memory, as its driver reports it (every process's use counted).",
                &["device"],
            ),
            queue_wait: histogram(
                "llamagate_queue_wait_seconds",
                "Time from arrival until a sequence slot was granted (queue, memory, load).",
                &["model"],
            ),
            prompt_tokens_per_request: histogram_with(
                "llamagate_request_prompt_tokens",
                "Prompt tokens per request.",
                &["model"],
                token_buckets(),
            ),
            generated_tokens_per_request: histogram_with(
                "llamagate_request_generated_tokens",
                "Generated tokens per finished request.",
                &["model"],
                token_buckets(),
            ),
            upstream_requests: counter(
                "llamagate_upstream_requests_total",
                "Attempts sent to each member of an upstream pool (retries count again).",
                &["model", "upstream"],
            ),
            upstream_failures: counter(
                "llamagate_upstream_failures_total",
                "Attempts that failed on the member's side (connection, 5xx, timeout, broken stream).",
                &["model", "upstream"],
            ),
            upstream_ejections: counter(
                "llamagate_upstream_ejections_total",
                "Times a member of an upstream pool was ejected after failures.",
                &["model", "upstream"],
            ),
            upstream_response_seconds: {
                let c = CounterVec::new(
                    Opts::new(
                        "llamagate_upstream_response_seconds_total",
                        "Seconds from sending to the member's first byte, summed over answered attempts (divide by answered requests for the mean).",
                    ),
                    &["model", "upstream"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(c.clone()))
                    .expect("registered once");
                c
            },
            upstream_healthy: gauge(
                "llamagate_upstream_healthy",
                "1 while the member of an upstream pool takes traffic (healthy or recovering), 0 while ejected.",
                &["model", "upstream"],
            ),
            upstream_outstanding: gauge(
                "llamagate_upstream_outstanding_requests",
                "Requests the member of an upstream pool runs now.",
                &["model", "upstream"],
            ),
            build_info: {
                let g = gauge(
                    "llamagate_build_info",
                    "Build identity: version, engines, compiled features; always 1.",
                    &["version", "engine", "features"],
                );
                let mut features: Vec<&str> = crate::engine::compiled_cpu_features();
                if cfg!(feature = "cuda") {
                    features.push("cuda");
                }
                if cfg!(feature = "metal") {
                    features.push("metal");
                }
                g.with_label_values(&[
                    env!("CARGO_PKG_VERSION"),
                    if cfg!(feature = "mistralrs") {
                        "mistralrs-0.8+llama.cpp(llama-cpp-2-0.1)+upstream"
                    } else {
                        "llama.cpp(llama-cpp-2-0.1)+upstream"
                    },
                    features.join(",").as_str(),
                ])
                .set(1);
                g
            },
            registry,
        }
    }

    /// A prompt of `tokens` read for `model` (nothing when 0: not known).
    pub fn prompt_read(&self, model: &str, tokens: usize) {
        if tokens > 0 {
            self.prompt_tokens
                .with_label_values(&[model])
                .inc_by(tokens as u64);
            self.prompt_tokens_per_request
                .with_label_values(&[model])
                .observe(tokens as f64);
        }
    }

    /// An answer of `model` finished: prompt tokens a cache served, tokens generated for
    /// it (the per-request histogram; the `generated_tokens` counter grows per token) and
    /// its duration.
    pub fn answer_finished(&self, model: &str, cached: usize, completion: usize, seconds: f64) {
        let model = [model];
        if cached > 0 {
            self.cached_prompt_tokens
                .with_label_values(&model)
                .inc_by(cached as u64);
        }
        self.generated_tokens_per_request
            .with_label_values(&model)
            .observe(completion as f64);
        self.request_duration
            .with_label_values(&model)
            .observe(seconds);
    }

    /// A generation of `model` had `drafted` tokens guessed by its draft model, of which
    /// `accepted` were kept, and ended guessing `length` ahead per step.
    pub fn draft_checked(
        &self,
        model: &str,
        drafted: usize,
        accepted: usize,
        length: Option<usize>,
    ) {
        if let Some(length) = length {
            self.draft_length
                .with_label_values(&[model])
                .set(i64::try_from(length).unwrap_or(i64::MAX));
        }
        if drafted > 0 {
            let model = [model];
            self.draft_tokens
                .with_label_values(&model)
                .inc_by(drafted as u64);
            self.draft_accepted_tokens
                .with_label_values(&model)
                .inc_by(accepted as u64);
        }
    }

    /// Creates the per-model series at zero, so dashboards and `rate()` see every
    /// configured model from the first scrape.
    pub fn register_model(&self, model: &str) {
        let m = [model];
        for c in [
            &self.generated_tokens,
            &self.prompt_tokens,
            &self.cached_prompt_tokens,
            &self.draft_tokens,
            &self.draft_accepted_tokens,
            &self.cancelled_requests,
            &self.embedding_requests,
            &self.embedding_input_tokens,
            &self.model_loads,
            &self.model_load_failures,
            &self.model_evictions,
        ] {
            c.with_label_values(&m);
        }
        for g in [
            &self.running_requests,
            &self.queued_requests,
            &self.model_loaded,
            &self.model_memory_bytes,
        ] {
            g.with_label_values(&m);
        }
        for h in [
            &self.time_to_first_token,
            &self.inter_token_latency,
            &self.request_duration,
            &self.embedding_duration,
            &self.queue_wait,
            &self.prompt_tokens_per_request,
            &self.generated_tokens_per_request,
            &self.model_load_duration,
        ] {
            h.with_label_values(&m);
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
