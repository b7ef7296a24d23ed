//! Forwarded requests: a request an upstream model relays as the client sent it still
//! takes the model's queue place and sequence slot like any other (so `max_concurrent`,
//! `queue_size` and the queue timeout bound it), and its answer is metered from what
//! the upstream reports: time to first token, tokens in and out, duration.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use tokio::sync::OwnedSemaphorePermit;

use super::pool::Lease;
use super::{count_rejection, GenerationReport, Scheduler, SchedulerError};
use crate::config::{ModelKind, ModelSource};
use crate::engine::forward::{merge_usage, ForwardApi, ForwardRequest, ForwardedBody};
use crate::engine::{EngineError, TokenUsage};
use crate::metrics::Metrics;

/// A forwarded request's answer, as the upstream gave it.
pub struct Forwarding {
    /// The model's canonical name.
    pub model: String,
    /// The upstream's HTTP status.
    pub status: u16,
    /// The upstream's headers passed back (`content-type`, `retry-after`, rate limits).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: ForwardingBody,
    /// What the request did, for its log line.
    pub report: Arc<GenerationReport>,
}

/// A forwarded answer's body.
pub enum ForwardingBody {
    /// Read to its end.
    Whole(bytes::Bytes),
    /// The upstream's server-sent events, each unchanged; holds the model's slot until it
    /// ends or is dropped (which closes the upstream connection).
    Events(RelayedEvents),
}

impl Scheduler {
    /// Whether requests of `api` for `model_id` are forwarded as the client sent them: the
    /// model is an upstream one and lists `api` in `forward_apis`.
    pub fn forwards(&self, model_id: &str, api: ForwardApi) -> bool {
        self.registry.resolve(model_id).is_ok_and(|slot| {
            matches!(slot.settings.source, ModelSource::Upstream { .. })
                && slot.settings.forward_apis.contains(&api)
                && slot.serves(api.kind())
        })
    }

    /// The model a request of `api` for `model_id` is forwarded to, if any: the model
    /// itself when it [forwards](Self::forwards) `api`; its `overflow` model when its
    /// queue is full now and that one forwards `api` (a request that finds the queue full
    /// only later overflows when it takes its queue place, rebuilt for the upstream).
    pub fn forward_target(&self, model_id: &str, api: ForwardApi) -> Option<String> {
        if self.forwards(model_id, api) {
            return Some(model_id.to_string());
        }
        let slot = self.registry.resolve(model_id).ok()?;
        let to = slot.settings.overflow.as_deref()?;
        if !slot.serves(api.kind()) || !slot.admission.is_full() || !self.forwards(to, api) {
            return None;
        }
        self.metrics
            .overflowed
            .with_label_values(&[slot.settings.name.as_str(), to])
            .inc();
        Some(to.to_string())
    }

    /// Admits a request to forward (a queue place, then one sequence slot) and relays it
    /// to the model's upstream servers.
    pub async fn forward(
        &self,
        model_id: &str,
        request: ForwardRequest,
    ) -> Result<Forwarding, SchedulerError> {
        let started = Instant::now();
        let api = request.api;
        let (slot, ticket, lease) = self.lease(model_id, api.kind()).await?;
        let name = slot.settings.name.clone();
        let permit = ticket
            .wait_for_slots(1)
            .await
            .inspect_err(|e| count_rejection(&self.metrics, &name, e))?;
        self.metrics
            .queue_wait
            .with_label_values(&[name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let report = Arc::new(GenerationReport::new(&name));
        let mut meter = Meter {
            metrics: self.metrics.clone(),
            model: name.clone(),
            embeddings: api.kind() == ModelKind::Embedding,
            report: report.clone(),
            started,
            last_token_at: None,
            tokens: 0,
            usage: None,
            done: false,
        };
        let forwarded = lease.model().forward(request).await.map_err(|e| {
            meter.done = true;
            SchedulerError::Engine(e)
        })?;
        let body = match forwarded.body {
            ForwardedBody::Whole { bytes, usage } => {
                meter.usage = usage;
                meter.finish();
                ForwardingBody::Whole(bytes)
            }
            ForwardedBody::Events(events) => ForwardingBody::Events(RelayedEvents {
                inner: events,
                meter,
                _permit: permit,
                _lease: Arc::new(lease),
            }),
        };
        Ok(Forwarding {
            model: name,
            status: forwarded.status,
            headers: forwarded.headers,
            body,
            report,
        })
    }
}

/// Meters a forwarded answer from what the upstream reports.
struct Meter {
    metrics: Arc<Metrics>,
    model: String,
    embeddings: bool,
    report: Arc<GenerationReport>,
    started: Instant,
    last_token_at: Option<Instant>,
    /// Text-bearing events seen (the token count when the upstream reports none).
    tokens: usize,
    usage: Option<TokenUsage>,
    done: bool,
}

impl Meter {
    fn saw_tokens(&mut self, now: Instant) {
        let model = [self.model.as_str()];
        match self.last_token_at {
            None => {
                let ttft = now - self.started;
                self.report
                    .ttft_micros
                    .store((ttft.as_micros() as u64).max(1), Ordering::Relaxed);
                self.metrics
                    .time_to_first_token
                    .with_label_values(&model)
                    .observe(ttft.as_secs_f64());
            }
            Some(last) => self
                .metrics
                .inter_token_latency
                .with_label_values(&model)
                .observe((now - last).as_secs_f64()),
        }
        self.last_token_at = Some(now);
    }

    /// Records the finished answer's counts and duration.
    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let usage = self.usage.unwrap_or_default();
        let model = [self.model.as_str()];
        let elapsed = self.started.elapsed().as_secs_f64();
        self.report
            .prompt_tokens
            .store(usage.prompt_tokens, Ordering::Relaxed);
        if self.embeddings {
            self.metrics
                .embedding_requests
                .with_label_values(&model)
                .inc();
            self.metrics
                .embedding_input_tokens
                .with_label_values(&model)
                .inc_by(usage.prompt_tokens as u64);
            self.metrics
                .embedding_duration
                .with_label_values(&model)
                .observe(elapsed);
            return;
        }
        let completion = if usage.completion_tokens > 0 {
            usage.completion_tokens
        } else {
            self.tokens
        };
        self.report
            .completion_tokens
            .store(completion, Ordering::Relaxed);
        self.metrics.prompt_read(&self.model, usage.prompt_tokens);
        // Relayed whole: the tokens are counted at the end, not one by one.
        self.metrics
            .generated_tokens
            .with_label_values(&model)
            .inc_by(completion as u64);
        self.metrics
            .answer_finished(&self.model, usage.cached_prompt_tokens, completion, elapsed);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(model = %self.model, "forwarded request cancelled: client went away");
            self.metrics
                .cancelled_requests
                .with_label_values(&[self.model.as_str()])
                .inc();
        }
    }
}

/// A relayed stream of events: each the upstream's bytes, metered on the way.
pub struct RelayedEvents {
    inner: futures::stream::BoxStream<
        'static,
        Result<crate::engine::forward::RelayedEvent, EngineError>,
    >,
    meter: Meter,
    _permit: OwnedSemaphorePermit,
    _lease: Arc<Lease>,
}

impl Stream for RelayedEvents {
    type Item = Result<bytes::Bytes, EngineError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        match item {
            Poll::Ready(Some(Ok(event))) => {
                let meter = &mut self.meter;
                if event.tokens > 0 {
                    meter.tokens += event.tokens;
                    meter.saw_tokens(Instant::now());
                }
                if let Some(usage) = event.usage {
                    meter.usage = Some(merge_usage(meter.usage, usage));
                }
                Poll::Ready(Some(Ok(event.bytes)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A failed answer is over; it is not a cancellation.
                self.meter.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.meter.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
