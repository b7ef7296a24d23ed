//! Between the API and the engines: routes a request to its model, admits it through the
//! model's bounded queue, makes sure the model is loaded, checks the prompt against the
//! context window and starts the generation. The returned [`Generation`] holds the
//! model's slot until it is dropped; dropping it early cancels the generation.

pub mod admission;
pub mod memory;
pub mod pool;
pub mod registry;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;

use crate::config::Settings;
use crate::engine::{Engine, EngineError, GenerationRequest, Prompt, TokenEvent, TokenStream};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::validation::ValidSampling;
use pool::{Lease, Pool};
use registry::Registry;

/// Routes, admits and starts generations.
pub struct Scheduler {
    registry: Registry,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
}

/// Maps an engine failure to the API's error table.
pub fn engine_error(e: EngineError, param: &'static str) -> ApiError {
    match e {
        EngineError::Rejected(message) => ApiError::invalid(param, message),
        EngineError::InvalidSchema(message) => ApiError::InvalidRequest {
            message: format!(
                "The JSON schema (from `response_format` or `tools`) is not supported: {message}"
            ),
            param: Some("response_format".into()),
            code: Some("invalid_schema"),
        },
        EngineError::Load(m) | EngineError::Generation(m) => ApiError::Engine(m),
        EngineError::Unavailable => ApiError::Engine("the engine is not running".into()),
        EngineError::UpstreamRejected {
            status,
            message,
            param,
            code,
            retry_after,
        } => ApiError::UpstreamRejected {
            status,
            message,
            param,
            code: code.as_deref().and_then(crate::error::known_error_code),
            retry_after: retry_after.map(std::time::Duration::from_secs),
        },
        EngineError::UpstreamUnavailable(m) => ApiError::BadGateway(m),
        EngineError::UpstreamTimeout(m) => ApiError::GatewayTimeout(m),
    }
}

impl Scheduler {
    /// A scheduler over the configured models.
    pub fn new(settings: &Settings, engine: Arc<dyn Engine>, metrics: Arc<Metrics>) -> Self {
        let registry = Registry::new(&settings.models, &settings.scheduler, engine.as_ref());
        for model in &settings.models {
            metrics.register_model(&model.name);
        }
        let pool = Pool::new(
            registry.slots().to_vec(),
            engine,
            metrics.clone(),
            &settings.scheduler,
        );
        Self {
            registry,
            pool,
            metrics,
        }
    }

    /// The models and their routes.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The models' lifecycles and memory.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Starts background work (pinned loads, idle unloads). Needs a Tokio runtime.
    pub fn start_background(&self) {
        self.pool.start();
    }

    /// Copies the queue and slot counts into the gauges (called before a scrape).
    pub fn refresh_gauges(&self) {
        self.pool.refresh_gauges();
        for slot in self.registry.slots() {
            let name = slot.settings.name.as_str();
            self.metrics
                .queued_requests
                .with_label_values(&[name])
                .set(slot.admission.waiting() as i64);
            self.metrics
                .running_requests
                .with_label_values(&[name])
                .set(slot.admission.running() as i64);
        }
    }

    /// Admits and starts one generation. `param` names the prompt field for errors.
    pub async fn start(
        &self,
        model_id: &str,
        prompt: Prompt,
        sampling: ValidSampling,
        param: &'static str,
    ) -> Result<Generation, ApiError> {
        let admitted = Instant::now();
        let slot = self.registry.resolve(model_id)?;
        let name = slot.settings.name.clone();
        let reject = |reason: &str| {
            self.metrics
                .rejected_requests
                .with_label_values(&[name.as_str(), reason])
                .inc();
        };
        let ticket = slot
            .admission
            .enter()
            .inspect_err(|_| reject("queue_full"))?;
        let lease = self
            .pool
            .acquire(slot.index, ticket.deadline())
            .await
            .inspect_err(|e| match e {
                ApiError::QueueTimeout { .. } => reject("queue_timeout"),
                ApiError::ModelLoadFailed { .. } => reject("load_failed"),
                _ => {}
            })?;
        let model = lease.model().clone();
        let prompt_tokens = model
            .count_prompt_tokens(&prompt)
            .await
            .map_err(|e| engine_error(e, param))?;
        let counted = admitted.elapsed();
        let context = model.facts().context_length;
        let room = context.saturating_sub(prompt_tokens);
        let max_tokens = sampling.max_tokens.unwrap_or(room);
        if prompt_tokens >= context || max_tokens > room {
            reject("context_length");
            let requested = prompt_tokens.saturating_add(max_tokens.max(1));
            return Err(ApiError::ContextLengthExceeded {
                message: format!(
                    "This model's maximum context length is {context} tokens. However, you requested \
                     {requested} tokens ({prompt_tokens} in the {param}, {} in the completion). \
                     Please reduce the length of the {param} or completion.",
                    max_tokens.max(1)
                ),
                param,
            });
        }
        let permit = ticket
            .wait_for_slot()
            .await
            .inspect_err(|_| reject("queue_timeout"))?;
        self.metrics
            .queue_wait
            .with_label_values(&[name.as_str()])
            .observe(admitted.elapsed().as_secs_f64());

        let counter = self
            .metrics
            .generated_tokens
            .with_label_values(&[name.as_str()]);
        let mut settings = sampling.settings;
        settings.max_tokens = max_tokens;
        let request = GenerationRequest {
            prompt,
            sampling: settings,
            prompt_tokens,
            on_token: Some(Arc::new(move || counter.inc())),
            json_schema: sampling.json_schema,
        };
        let stream = model
            .generate(request)
            .await
            .map_err(|e| engine_error(e, param))?;
        tracing::debug!(
            model = %name,
            prompt_tokens,
            count_ms = counted.as_secs_f64() * 1e3,
            start_ms = admitted.elapsed().as_secs_f64() * 1e3,
            "generation started"
        );
        if prompt_tokens > 0 {
            self.metrics
                .prompt_tokens
                .with_label_values(&[name.as_str()])
                .inc_by(prompt_tokens as u64);
            self.metrics
                .prompt_tokens_per_request
                .with_label_values(&[name.as_str()])
                .observe(prompt_tokens as f64);
        }
        let report = Arc::new(GenerationReport {
            model: name.clone(),
            prompt_tokens: prompt_tokens.into(),
            ..GenerationReport::default()
        });
        Ok(Generation {
            report,
            inter_token_latency: self
                .metrics
                .inter_token_latency
                .with_label_values(&[name.as_str()]),
            model: name,
            prompt_tokens,
            inner: stream,
            _permit: permit,
            _lease: lease,
            metrics: self.metrics.clone(),
            started: admitted,
            last_token_at: None,
            done: false,
        })
    }
}

/// What a generation did, filled in as it runs (for the per-request log line).
#[derive(Debug, Default)]
pub struct GenerationReport {
    /// The model's canonical name.
    pub model: String,
    prompt_tokens: std::sync::atomic::AtomicUsize,
    completion_tokens: std::sync::atomic::AtomicUsize,
    ttft_micros: std::sync::atomic::AtomicU64,
}

impl GenerationReport {
    /// Prompt tokens (an upstream's count arrives with its last chunk).
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Tokens generated (known once the generation ended).
    pub fn completion_tokens(&self) -> usize {
        self.completion_tokens
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Time to first token, once there was one.
    pub fn ttft(&self) -> Option<std::time::Duration> {
        match self.ttft_micros.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }
}

/// A running generation: a stream of [`TokenEvent`]s that holds the model's slot.
pub struct Generation {
    /// The model's canonical name.
    pub model: String,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    inner: TokenStream,
    _permit: OwnedSemaphorePermit,
    _lease: Lease,
    metrics: Arc<Metrics>,
    /// This model's inter-token histogram, resolved once (observed on every token).
    inter_token_latency: prometheus::Histogram,
    started: Instant,
    last_token_at: Option<Instant>,
    done: bool,
    report: Arc<GenerationReport>,
}

impl Generation {
    /// What this generation did so far.
    pub fn report(&self) -> Arc<GenerationReport> {
        self.report.clone()
    }
}

impl Stream for Generation {
    type Item = Result<TokenEvent, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(event))) = &item {
            let now = Instant::now();
            match event {
                TokenEvent::Text { text, .. } if !text.is_empty() => {
                    let model = [self.model.as_str()];
                    match self.last_token_at {
                        None => {
                            let ttft = (now - self.started).as_secs_f64();
                            self.report.ttft_micros.store(
                                ((now - self.started).as_micros() as u64).max(1),
                                std::sync::atomic::Ordering::Relaxed,
                            );
                            tracing::debug!(model = %self.model, ttft_ms = ttft * 1e3, "first token");
                            self.metrics
                                .time_to_first_token
                                .with_label_values(&model)
                                .observe(ttft)
                        }
                        Some(last) => self.inter_token_latency.observe((now - last).as_secs_f64()),
                    }
                    self.last_token_at = Some(now);
                }
                TokenEvent::Done(usage) => {
                    self.done = true;
                    if usage.cached_prompt_tokens > 0 {
                        self.metrics
                            .cached_prompt_tokens
                            .with_label_values(&[self.model.as_str()])
                            .inc_by(usage.cached_prompt_tokens as u64);
                    }
                    if self.prompt_tokens == 0 && usage.prompt_tokens > 0 {
                        // An upstream model: only its answer tells the prompt's size.
                        let model = [self.model.as_str()];
                        self.metrics
                            .prompt_tokens
                            .with_label_values(&model)
                            .inc_by(usage.prompt_tokens as u64);
                        self.metrics
                            .prompt_tokens_per_request
                            .with_label_values(&model)
                            .observe(usage.prompt_tokens as f64);
                        self.report
                            .prompt_tokens
                            .store(usage.prompt_tokens, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.report.completion_tokens.store(
                        usage.completion_tokens,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    self.metrics
                        .generated_tokens_per_request
                        .with_label_values(&[self.model.as_str()])
                        .observe(usage.completion_tokens as f64);
                    self.metrics
                        .request_duration
                        .with_label_values(&[self.model.as_str()])
                        .observe((now - self.started).as_secs_f64());
                }
                _ => {}
            }
        }
        if let Poll::Ready(Some(Err(_))) = &item {
            // A failed generation is over; it is not a cancellation.
            self.done = true;
        }
        item
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(model = %self.model, "generation cancelled: client went away");
            self.metrics
                .cancelled_requests
                .with_label_values(&[self.model.as_str()])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests;
