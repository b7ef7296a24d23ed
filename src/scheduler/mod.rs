//! Between the API and the engines: routes a request to its model, admits it through the
//! model's bounded queue, makes sure the model is loaded, checks the prompt against the
//! context window and starts the generation. The returned [`Generation`] holds the
//! model's slot until it is dropped; dropping it early cancels the generation.

pub mod admission;
mod error;
pub mod folder;
mod forward;
pub mod pool;
pub mod registry;

pub use error::SchedulerError;
pub use forward::{Forwarding, ForwardingBody, RelayedEvents};

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::config::{ModelKind, Settings};
use crate::engine::{
    EmbedInput, EmbeddingRequest, Engine, EngineError, GenerationRequest, Prompt, SamplingSettings,
    TokenEvent, TokenStream,
};
use crate::metrics::Metrics;
use pool::{Lease, Pool};
use registry::Registry;

/// What to generate, as the API validated it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// Everything but the final `max_tokens` (the scheduler fills it in).
    pub settings: SamplingSettings,
    /// The client's limit, if any.
    pub max_tokens: Option<usize>,
    /// JSON schema the output must match (structured output, tool calls).
    pub json_schema: Option<serde_json::Value>,
    /// The end user the request is for (`user`), for session affinity.
    pub affinity: Option<String>,
}

/// What a configuration reload did to the models.
#[derive(Debug, Clone, Default)]
pub struct ModelChanges {
    /// Models added.
    pub added: Vec<String>,
    /// Models whose definition changed: the old one drains, the new one serves.
    pub changed: Vec<String>,
    /// Models removed (they drain).
    pub removed: Vec<String>,
    /// Models left as they were.
    pub unchanged: Vec<String>,
    /// Models that could not be placed, with why (a name or alias taken).
    pub failed: Vec<(String, String)>,
}

/// Routes, admits and starts generations.
pub struct Scheduler {
    registry: Registry,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    engine: Arc<dyn Engine>,
    /// Serialises model additions and removals (folder, admin API, reload): a slot's
    /// index must be the pool's next entry.
    changes: std::sync::Mutex<()>,
}

impl Scheduler {
    /// A scheduler over the configured models.
    pub fn new(settings: &Settings, engine: Arc<dyn Engine>, metrics: Arc<Metrics>) -> Self {
        let registry = Registry::new(&settings.models, &settings.scheduler, engine.as_ref());
        for model in &settings.models {
            metrics.register_model(&model.name);
        }
        let pool = Pool::new(
            registry.all_slots(),
            engine.clone(),
            metrics.clone(),
            &settings.scheduler,
        );
        Self {
            registry,
            pool,
            metrics,
            engine,
            changes: std::sync::Mutex::new(()),
        }
    }

    /// Adds a model at run time (blocking: reads its GGUF header). With `replace`, a
    /// live model of the same name is retired: new requests go to the new definition at
    /// once, requests running on the old one finish, then it unloads and its memory is
    /// freed. Without, an existing name or alias is refused.
    pub fn add_model(
        &self,
        settings: &crate::config::ModelSettings,
        origin: registry::Origin,
        replace: bool,
    ) -> Result<Arc<registry::ModelSlot>, String> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics.register_model(&settings.name);
        let slot = self
            .registry
            .prepare(settings, origin, self.engine.as_ref(), replace)?;
        // The pool knows the slot before any request can reach it; the old definition
        // stops admitting only once the new one routes.
        self.pool.add(slot.clone());
        if let Some(old) = self.registry.publish(&slot) {
            self.pool.retire(old.index);
        }
        tracing::info!(model = %settings.name, source = %settings.source, origin = origin.as_str(), replaced = replace, "model added");
        Ok(slot)
    }

    /// Makes the models of the configuration file `models`: new ones are added, changed
    /// ones replaced (the old definition drains), ones no longer there removed (they
    /// drain). Models from the models folder or the admin API are left alone, unless a
    /// configured model takes their name. Blocking (GGUF headers).
    pub fn apply_config_models(&self, models: &[crate::config::ModelSettings]) -> ModelChanges {
        let mut changes = ModelChanges::default();
        let configured: Vec<Arc<registry::ModelSlot>> = self
            .registry
            .slots()
            .into_iter()
            .filter(|s| s.origin == registry::Origin::Config)
            .collect();
        for old in &configured {
            if !models.iter().any(|m| m.name == old.settings.name) {
                self.remove_model(&old.settings.name);
                changes.removed.push(old.settings.name.clone());
            }
        }
        let mut pending: Vec<(&crate::config::ModelSettings, bool)> = Vec::new();
        for new in models {
            match configured.iter().find(|s| s.settings.name == new.name) {
                Some(old) => {
                    let mut same = new.clone();
                    if same.kind.is_none() {
                        same.kind = old.settings.kind;
                    }
                    // Settings hold no floats or maps: equal Debug text is equal settings.
                    if format!("{same:?}") == format!("{:?}", old.settings) {
                        changes.unchanged.push(new.name.clone());
                    } else {
                        pending.push((new, true));
                    }
                }
                None => pending.push((new, false)),
            }
        }
        // An alias moving from one model to another frees up only once the first moved:
        // retry what failed while something else succeeds.
        let mut failures: Vec<(String, String)> = Vec::new();
        while !pending.is_empty() {
            failures.clear();
            let before = pending.len();
            pending.retain(|(model, existed)| {
                match self.add_model(model, registry::Origin::Config, true) {
                    Ok(_) => {
                        let list = if *existed {
                            &mut changes.changed
                        } else {
                            &mut changes.added
                        };
                        list.push(model.name.clone());
                        false
                    }
                    Err(e) => {
                        failures.push((model.name.clone(), e));
                        true
                    }
                }
            });
            if pending.len() == before {
                break;
            }
        }
        changes.failed = failures;
        changes
    }

    /// Removes the model named `name` (not an alias): it routes no more, its running
    /// requests finish, then it unloads. Returns the removed slot.
    pub fn remove_model(&self, name: &str) -> Option<Arc<registry::ModelSlot>> {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let slot = self.registry.retire(name)?;
        self.pool.retire(slot.index);
        tracing::info!(model = %name, origin = slot.origin.as_str(), "model removed");
        Some(slot)
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

    /// Copies the queue and slot counts into the gauges (called before a scrape;
    /// blocking: asks the GPUs' drivers for their memory).
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
            for member in self.pool.status(slot.index).upstreams {
                self.export_member(name, &member);
            }
        }
    }

    /// Copies one upstream member's state into the gauges and its counts (kept by the
    /// engine for the life of the process) into the counters.
    fn export_member(&self, model: &str, m: &crate::engine::upstream_pool::MemberStatus) {
        let labels = [model, m.url.as_str()];
        let m_ = &self.metrics;
        m_.upstream_healthy
            .with_label_values(&labels)
            .set(i64::from(m.state != "ejected"));
        m_.upstream_outstanding
            .with_label_values(&labels)
            .set(m.outstanding as i64);
        for (counter, total) in [
            (&m_.upstream_requests, m.requests),
            (&m_.upstream_failures, m.failures),
            (&m_.upstream_ejections, m.ejections),
        ] {
            let counter = counter.with_label_values(&labels);
            let seen = counter.get();
            if total > seen {
                counter.inc_by(total - seen);
            }
        }
        let seconds = m_.upstream_response_seconds.with_label_values(&labels);
        let total = m.response_micros as f64 / 1e6;
        if total > seconds.get() {
            seconds.inc_by(total - seconds.get());
        }
    }

    /// Routes `model_id` to a model that serves `kind`, takes a queue place and leases the
    /// loaded model (loading it if needed); refusals are counted.
    async fn lease(
        &self,
        model_id: &str,
        kind: ModelKind,
    ) -> Result<(Arc<registry::ModelSlot>, admission::QueueTicket, Lease), SchedulerError> {
        // A model replaced while its request waited: the request goes to the new one.
        let mut retries = 3;
        let mut model_id = model_id.to_string();
        // Once overflowed: the first model's refusal, answered if the overflow is full too.
        let mut refused: Option<(String, SchedulerError)> = None;
        loop {
            let slot = self.registry.resolve(&model_id)?;
            let name = slot.settings.name.clone();
            if !slot.serves(kind) {
                return Err(SchedulerError::WrongKind {
                    model: name,
                    serves: match kind {
                        ModelKind::Chat => ModelKind::Embedding,
                        ModelKind::Embedding => ModelKind::Chat,
                    },
                });
            }
            let counted = |e: SchedulerError| {
                count_rejection(&self.metrics, &name, &e);
                e
            };
            let ticket = match slot.admission.enter() {
                Ok(ticket) => ticket,
                Err(e @ SchedulerError::QueueFull { .. }) => {
                    if let Some((first, e)) = refused {
                        count_rejection(&self.metrics, &first, &e);
                        return Err(e);
                    }
                    match slot.settings.overflow.as_deref() {
                        Some(to) if self.registry.resolve(to).is_ok_and(|s| s.serves(kind)) => {
                            model_id = to.to_string();
                            refused = Some((name.clone(), e));
                            continue;
                        }
                        _ => return Err(counted(e)),
                    }
                }
                Err(e) => return Err(counted(e)),
            };
            if let Some((first, _)) = refused.take() {
                self.metrics
                    .overflowed
                    .with_label_values(&[first.as_str(), name.as_str()])
                    .inc();
            }
            match self.pool.acquire(slot.index, ticket.deadline()).await {
                Ok(lease) => return Ok((slot, ticket, lease)),
                Err(SchedulerError::ModelRemoved(_)) if retries > 0 => retries -= 1,
                Err(e) => return Err(counted(e)),
            }
        }
    }

    /// Routes to the model, takes a queue place, leases the loaded model and checks every
    /// prompt against its context window: all before any sequence slot is taken.
    async fn admit(
        &self,
        model_id: &str,
        prompts: Vec<Prompt>,
        sampling: &Sampling,
    ) -> Result<Admitted, SchedulerError> {
        let started = Instant::now();
        let (slot, ticket, lease) = self.lease(model_id, ModelKind::Chat).await?;
        let name = slot.settings.name.clone();
        let counted = |e: SchedulerError| {
            count_rejection(&self.metrics, &name, &e);
            e
        };
        let model = lease.model().clone();
        let context = model.facts().context_length;
        let mut prepared = Vec::with_capacity(prompts.len());
        let native_tools = model.facts().tool_syntax;
        for prompt in prompts {
            // Tools: in the model's own syntax when its engine renders them, else in the
            // portable form (described in the prompt, the answer constrained to JSON).
            let (prompt, json_schema, tool_syntax) = match (native_tools, prompt.tools()) {
                (Some(syntax), Some(_)) => (prompt, sampling.json_schema.clone(), Some(syntax)),
                (Some(_), None) => (prompt, sampling.json_schema.clone(), None),
                (None, choice) => {
                    let schema = choice.map(crate::engine::tools::portable_schema);
                    let syntax = choice.map(|_| crate::engine::tools::ToolSyntax::Json);
                    (
                        crate::engine::tools::portable_prompt(&prompt),
                        schema.or_else(|| sampling.json_schema.clone()),
                        syntax,
                    )
                }
            };
            let prepared_prompt = model
                .prepare(&prompt)
                .await
                .map_err(SchedulerError::Engine)?;
            let prompt_tokens = prepared_prompt.token_count;
            // A window that is not known here (an upstream's) is enforced over there.
            let max_tokens = match context {
                None => sampling.max_tokens,
                Some(context) => {
                    let room = context.saturating_sub(prompt_tokens);
                    let max_tokens = sampling.max_tokens.unwrap_or(room);
                    if prompt_tokens >= context || max_tokens > room {
                        return Err(counted(SchedulerError::ContextLengthExceeded {
                            context,
                            prompt_tokens,
                            max_tokens: max_tokens.max(1),
                        }));
                    }
                    Some(max_tokens)
                }
            };
            prepared.push(Prepared {
                prompt,
                prompt_tokens,
                tokens: prepared_prompt.tokens,
                max_tokens,
                thinking: model
                    .facts()
                    .thinks
                    .then_some(prepared_prompt.opens_thinking),
                json_schema,
                tool_syntax,
            });
        }
        tracing::debug!(
            model = %name,
            count_ms = started.elapsed().as_secs_f64() * 1e3,
            "admitted"
        );
        Ok(Admitted {
            weight: slot.admission.weight(sampling.settings.n),
            slot,
            ticket,
            lease: Arc::new(lease),
            prepared,
            started,
        })
    }

    /// Admits and starts one generation (of `n` choices: it takes `n` sequence slots, at
    /// most all of the model's, at once).
    pub async fn start(
        &self,
        model_id: &str,
        prompt: Prompt,
        sampling: Sampling,
    ) -> Result<Generation, SchedulerError> {
        let mut admitted = self.admit(model_id, vec![prompt], &sampling).await?;
        let prepared = admitted
            .prepared
            .pop()
            .ok_or(SchedulerError::ShuttingDown)?;
        let report = Arc::new(GenerationReport::new(&admitted.slot.settings.name));
        self.first_generation(
            admitted.ticket,
            admitted.weight,
            admitted.lease,
            prepared,
            &sampling,
            admitted.started,
            report,
        )
        .await
    }

    /// Waits in the queue for a request's first generation's slots, then starts it.
    #[allow(clippy::too_many_arguments)]
    async fn first_generation(
        &self,
        ticket: admission::QueueTicket,
        weight: usize,
        lease: Arc<Lease>,
        prepared: Prepared,
        sampling: &Sampling,
        started: Instant,
        report: Arc<GenerationReport>,
    ) -> Result<Generation, SchedulerError> {
        let name = report.model.clone();
        let permit = ticket
            .wait_for_slots(weight)
            .await
            .inspect_err(|e| count_rejection(&self.metrics, &name, e))?;
        self.metrics
            .queue_wait
            .with_label_values(&[name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        launch(
            &self.metrics,
            &name,
            lease,
            prepared,
            sampling,
            permit,
            started,
            report,
        )
        .await
    }

    /// Admits a request of several prompts (each with `n` choices) and runs them as
    /// sequence slots free up: up to `max_concurrent / n` at once, each taking its slots
    /// only when it can start and giving them back when it ends, so the request never
    /// holds a slot while it waits for another (no deadlock, and other requests queue
    /// between its generations). The first generation has started when this returns;
    /// a later one that cannot get slots within the queue timeout ends the stream with
    /// that error.
    pub async fn start_many(
        &self,
        model_id: &str,
        prompts: Vec<Prompt>,
        sampling: Sampling,
    ) -> Result<Batch, SchedulerError> {
        let admitted = self.admit(model_id, prompts, &sampling).await?;
        let Admitted {
            slot,
            ticket,
            lease,
            prepared,
            started,
            weight,
        } = admitted;
        let name = slot.settings.name.clone();
        let count = prepared.len();
        let lanes = (slot.settings.max_concurrent.max(1) / weight).clamp(1, count.max(1));
        let reports: Vec<Arc<GenerationReport>> = (0..count)
            .map(|_| Arc::new(GenerationReport::new(&name)))
            .collect();
        let mut prepared = prepared.into_iter();
        let first = prepared.next().ok_or(SchedulerError::ShuttingDown)?;
        let first = self
            .first_generation(
                ticket,
                weight,
                lease.clone(),
                first,
                &sampling,
                started,
                reports[0].clone(),
            )
            .await?;
        let first = first
            .map(move |e| (0, e.map_err(SchedulerError::Engine)))
            .boxed();
        let metrics = self.metrics.clone();
        let batch_reports = reports.clone();
        let later = prepared.enumerate().map(move |(i, prepared)| {
            let index = i + 1;
            let (slot, lease, metrics, sampling) =
                (slot.clone(), lease.clone(), metrics.clone(), sampling.clone());
            let report = reports[index].clone();
            async_stream::stream! {
                let name = slot.settings.name.clone();
                let waited = Instant::now();
                let permit = match slot.admission.acquire(weight).await {
                    Ok(permit) => permit,
                    Err(e) => {
                        count_rejection(&metrics, &name, &e);
                        yield (index, Err(e));
                        return;
                    }
                };
                match launch(&metrics, &name, lease, prepared, &sampling, permit, waited, report).await {
                    Err(e) => yield (index, Err(e)),
                    Ok(mut generation) => {
                        while let Some(event) = generation.next().await {
                            yield (index, event.map_err(SchedulerError::Engine));
                        }
                    }
                }
            }
            .boxed()
        });
        Ok(Batch {
            model: name,
            reports: batch_reports,
            events: futures::stream::iter(std::iter::once(first))
                .chain(futures::stream::iter(later))
                .flatten_unordered(lanes)
                .boxed(),
        })
    }
}

impl Scheduler {
    /// Counts the tokens `prompt` takes with a chat model (after its chat template):
    /// routes, takes a queue place while the model is leased (loading it if needed), takes
    /// no sequence slot. Returns the model's canonical name and the count.
    pub async fn count_tokens(
        &self,
        model_id: &str,
        prompt: &Prompt,
    ) -> Result<(String, usize), SchedulerError> {
        let (slot, _ticket, lease) = self.lease(model_id, ModelKind::Chat).await?;
        let name = slot.settings.name.clone();
        let prepared = lease
            .model()
            .prepare(prompt)
            .await
            .map_err(SchedulerError::Engine)?;
        Ok((name, prepared.token_count))
    }

    /// Embeds `inputs` with an embedding model: routes, queues (one sequence slot for the
    /// whole request; the engine batches its inputs), loads the model if needed, checks
    /// `dimensions` and every input's length before computing anything. Dropping the
    /// future cancels what is not computed yet.
    pub async fn embed(
        &self,
        model_id: &str,
        inputs: Vec<EmbedInput>,
        dimensions: Option<usize>,
    ) -> Result<EmbeddingOutcome, SchedulerError> {
        let started = Instant::now();
        let (slot, ticket, lease) = self.lease(model_id, ModelKind::Embedding).await?;
        let name = slot.settings.name.clone();
        let counted = |e: SchedulerError| {
            count_rejection(&self.metrics, &name, &e);
            e
        };
        let model = lease.model().clone();
        let facts = model.facts().clone();
        if let (Some(asked), Some(length)) = (dimensions, facts.embedding_length) {
            if asked > length || (asked != length && !slot.settings.matryoshka) {
                return Err(SchedulerError::Unsupported {
                    param: "dimensions",
                    message: if slot.settings.matryoshka {
                        format!("Model `{name}` makes embeddings of {length} dimensions; `dimensions` must be at most {length}.")
                    } else {
                        format!("Model `{name}` makes embeddings of {length} dimensions and was not trained for shortened ones; leave `dimensions` out or set it to {length}.")
                    },
                });
            }
        }
        let mut tokens = Vec::with_capacity(inputs.len());
        let mut total = 0usize;
        for (index, input) in inputs.iter().enumerate() {
            let prepared = model
                .prepare_input(input)
                .await
                .map_err(|error| SchedulerError::InputRejected { index, error })?;
            if let Some(limit) = facts.context_length {
                if prepared.token_count > limit {
                    return Err(counted(SchedulerError::InputTooLong {
                        index,
                        tokens: prepared.token_count,
                        limit,
                    }));
                }
            }
            total += prepared.token_count;
            tokens.push(prepared.tokens);
        }
        let _permit = ticket.wait_for_slots(1).await.map_err(counted)?;
        self.metrics
            .queue_wait
            .with_label_values(&[name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let mut guard = CancelGuard {
            metrics: &self.metrics,
            model: &name,
            done: false,
        };
        let request = EmbeddingRequest {
            inputs,
            tokens,
            dimensions,
            normalize: slot.settings.normalize,
        };
        let result = model.embed(request).await;
        guard.done = true;
        let embeddings = result.map_err(SchedulerError::Engine)?;
        drop(lease);
        // An upstream counts its own tokens; a local model's were counted above.
        let prompt_tokens = if embeddings.prompt_tokens > 0 {
            embeddings.prompt_tokens
        } else {
            total
        };
        let model_label = [name.as_str()];
        self.metrics
            .embedding_requests
            .with_label_values(&model_label)
            .inc();
        self.metrics
            .embedding_input_tokens
            .with_label_values(&model_label)
            .inc_by(prompt_tokens as u64);
        self.metrics
            .embedding_duration
            .with_label_values(&model_label)
            .observe(started.elapsed().as_secs_f64());
        let report = Arc::new(GenerationReport::new(&name));
        report
            .prompt_tokens
            .store(prompt_tokens, std::sync::atomic::Ordering::Relaxed);
        Ok(EmbeddingOutcome {
            model: name.clone(),
            vectors: embeddings.vectors,
            prompt_tokens,
            report,
        })
    }
}

/// Counts a request as cancelled when its future is dropped before the engine answered.
struct CancelGuard<'a> {
    metrics: &'a Metrics,
    model: &'a str,
    done: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!(model = %self.model, "embedding cancelled: client went away");
            self.metrics
                .cancelled_requests
                .with_label_values(&[self.model])
                .inc();
        }
    }
}

/// The vectors of an embedding request.
#[derive(Debug, Clone)]
pub struct EmbeddingOutcome {
    /// The model's canonical name.
    pub model: String,
    /// One vector per input, in input order.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens read, all inputs together.
    pub prompt_tokens: usize,
    /// For the request's log line.
    pub report: Arc<GenerationReport>,
}

/// Counts a refusal in `llamagate_rejected_requests_total`, by its reason.
fn count_rejection(metrics: &Metrics, model: &str, e: &SchedulerError) {
    if let Some(reason) = e.rejection_reason() {
        metrics
            .rejected_requests
            .with_label_values(&[model, reason])
            .inc();
    }
}

/// A request admitted to its model, before it takes sequence slots.
struct Admitted {
    slot: Arc<registry::ModelSlot>,
    ticket: admission::QueueTicket,
    lease: Arc<Lease>,
    prepared: Vec<Prepared>,
    started: Instant,
    /// Sequence slots each of its generations takes.
    weight: usize,
}

/// A prompt checked against the context window.
struct Prepared {
    prompt: Prompt,
    prompt_tokens: usize,
    tokens: Option<Arc<Vec<u32>>>,
    max_tokens: Option<usize>,
    /// For a reasoning model: whether the prompt opened the thinking block.
    thinking: Option<bool>,
    /// The JSON schema the output must match (structured output, portable tool calls).
    json_schema: Option<serde_json::Value>,
    /// How the output writes tool calls, when the prompt offers tools.
    tool_syntax: Option<crate::engine::tools::ToolSyntax>,
}

/// Starts one generation on a leased model with the slots it holds.
#[allow(clippy::too_many_arguments)]
async fn launch(
    metrics: &Arc<Metrics>,
    name: &str,
    lease: Arc<Lease>,
    prepared: Prepared,
    sampling: &Sampling,
    permit: OwnedSemaphorePermit,
    started: Instant,
    report: Arc<GenerationReport>,
) -> Result<Generation, SchedulerError> {
    let Prepared {
        prompt,
        prompt_tokens,
        tokens,
        max_tokens,
        thinking,
        json_schema,
        tool_syntax,
    } = prepared;
    let counter = metrics.generated_tokens.with_label_values(&[name]);
    let mut settings = sampling.settings.clone();
    settings.max_tokens = max_tokens;
    let request = GenerationRequest {
        affinity: sampling.affinity.clone(),
        prompt,
        sampling: settings,
        prompt_tokens,
        tokens,
        on_token: Some(Arc::new(move || counter.inc())),
        json_schema,
    };
    let stream = lease
        .model()
        .generate(request)
        .await
        .map_err(SchedulerError::Engine)?;
    tracing::debug!(
        model = %name,
        prompt_tokens,
        start_ms = started.elapsed().as_secs_f64() * 1e3,
        "generation started"
    );
    metrics.prompt_read(name, prompt_tokens);
    report
        .prompt_tokens
        .store(prompt_tokens, std::sync::atomic::Ordering::Relaxed);
    Ok(Generation {
        report,
        inter_token_latency: metrics.inter_token_latency.with_label_values(&[name]),
        model: name.to_string(),
        prompt_tokens,
        thinking,
        tool_syntax,
        inner: stream,
        _permit: permit,
        _lease: lease,
        metrics: metrics.clone(),
        started,
        last_token_at: None,
        done: false,
    })
}

/// The generations of a multi-prompt request, merged: each event tagged with its
/// prompt's index. Dropping it cancels every generation (and those not yet started).
pub struct Batch {
    /// The model's canonical name.
    pub model: String,
    /// One report per prompt, in prompt order.
    pub reports: Vec<Arc<GenerationReport>>,
    /// The events, in the order they happen.
    pub events: futures::stream::BoxStream<'static, (usize, Result<TokenEvent, SchedulerError>)>,
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
    fn new(model: &str) -> Self {
        Self {
            model: model.to_string(),
            ..Self::default()
        }
    }

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
    /// For a reasoning model (its output thinks in `<think>…</think>` first): whether the
    /// prompt already opened the thinking block. `None` for other models.
    pub thinking: Option<bool>,
    /// How the output writes tool calls, when the prompt offers tools.
    pub tool_syntax: Option<crate::engine::tools::ToolSyntax>,
    inner: TokenStream,
    _permit: OwnedSemaphorePermit,
    _lease: Arc<Lease>,
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
                    if self.prompt_tokens == 0 && usage.prompt_tokens > 0 {
                        // An upstream model: only its answer tells the prompt's size.
                        self.metrics.prompt_read(&self.model, usage.prompt_tokens);
                        self.report
                            .prompt_tokens
                            .store(usage.prompt_tokens, std::sync::atomic::Ordering::Relaxed);
                    }
                    self.report.completion_tokens.store(
                        usage.completion_tokens,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    self.metrics.draft_checked(
                        &self.model,
                        usage.draft_tokens,
                        usage.draft_accepted_tokens,
                        usage.draft_length,
                    );
                    self.metrics.answer_finished(
                        &self.model,
                        usage.cached_prompt_tokens,
                        usage.completion_tokens,
                        (now - self.started).as_secs_f64(),
                    );
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
