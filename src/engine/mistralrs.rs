//! The mistral.rs engine: loads a GGUF on CPU or GPU and runs generations through
//! mistral.rs's *streaming* path only (its non-streaming path panics the engine thread
//! when a client goes away). Dropping the returned stream drops the response channel,
//! which makes mistral.rs cancel that sequence at its next token.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use either::Either;
use indexmap::IndexMap;
use mistralrs::{
    Constraint, Device, GgufModelBuilder, Model, NormalRequest, Request, RequestMessage, Response,
    SamplingParams, TokenSource,
};
use tokio::sync::{mpsc, oneshot};

use super::probe::SamplingProbe;
use super::stop::StopMatcher;
use super::{
    EngineError, FinishReason, GenerationRequest, LoadedModel, ModelFacts, Prompt, TokenEvent,
    TokenLogprob, TokenStream, TokenUsage, TopLogprob,
};
use crate::config::{DeviceSetting, ModelSettings, ModelSource};

/// Engine backed by mistral.rs.
#[derive(Debug, Default, Clone)]
pub struct MistralRsEngine;

/// A GGUF model loaded in mistral.rs.
pub struct MistralRsModel {
    model: Arc<Model>,
    facts: ModelFacts,
}

/// GGUF architectures mistral.rs 0.8 can run.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "mistral3",
    "phi2",
    "phi3",
    "starcoder2",
    "qwen2",
    "qwen3",
    "qwen3moe",
];

/// Checks a local GGUF before handing it to mistral.rs: readable, a complete GGUF (every
/// length checked, so a corrupt header cannot make the engine allocate wildly), and an
/// architecture the engine knows.
fn preflight_file(path: &Path) -> Result<(), EngineError> {
    let summary = crate::gguf::read_summary(path)
        .map_err(|e| EngineError::Load(super::describe_file_error(path, &e.0)))?;
    let arch = summary.architecture().unwrap_or("none");
    if !SUPPORTED_ARCHITECTURES.contains(&arch.to_ascii_lowercase().as_str()) {
        return Err(EngineError::Load(format!(
            "the GGUF's architecture `{arch}` is not supported by mistral.rs (supported: {})",
            SUPPORTED_ARCHITECTURES.join(", ")
        )));
    }
    Ok(())
}

fn select_device(setting: DeviceSetting) -> Result<Option<Device>, EngineError> {
    let unavailable = |what: &str, e: candle_core::Error| {
        EngineError::Load(format!("device {what} is not available: {e}"))
    };
    match setting {
        DeviceSetting::Auto => Ok(None),
        DeviceSetting::Cpu => Ok(Some(Device::Cpu)),
        DeviceSetting::Cuda(n) => Device::new_cuda(n)
            .map(Some)
            .map_err(|e| unavailable(&format!("cuda:{n}"), e)),
        DeviceSetting::Metal(n) => Device::new_metal(n)
            .map(Some)
            .map_err(|e| unavailable(&format!("metal:{n}"), e)),
        DeviceSetting::Vulkan(n) => Err(EngineError::Load(format!(
            "mistral.rs has no Vulkan backend; use engine = \"llama.cpp\" for device vulkan:{n}"
        ))),
    }
}

/// Describes a device for logs and `/v1/models`.
pub fn describe_device(device: &Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => format!("cuda:{}", device.location_ordinal()),
        Device::Metal(_) => format!("metal:{}", device.location_ordinal()),
    }
}

trait DeviceOrdinal {
    fn location_ordinal(&self) -> usize;
}

impl DeviceOrdinal for Device {
    fn location_ordinal(&self) -> usize {
        match self.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => gpu_id,
            candle_core::DeviceLocation::Metal { gpu_id } => gpu_id,
            candle_core::DeviceLocation::Cpu => 0,
        }
    }
}

#[async_trait]
impl super::Engine for MistralRsEngine {
    fn device_key(&self, settings: &ModelSettings) -> String {
        match settings.device {
            DeviceSetting::Auto => {
                describe_device(&mistralrs::best_device(false).unwrap_or(Device::Cpu))
            }
            other => other.to_string(),
        }
    }

    fn device_memory(&self, device_key: &str) -> Option<u64> {
        let device = match device_key.parse::<DeviceSetting>().ok()? {
            DeviceSetting::Cpu | DeviceSetting::Auto => Device::Cpu,
            DeviceSetting::Cuda(n) => Device::new_cuda(n).ok()?,
            DeviceSetting::Metal(n) => Device::new_metal(n).ok()?,
            DeviceSetting::Vulkan(_) => return None,
        };
        mistralrs::core::MemoryUsage
            .get_total_memory(&device)
            .ok()
            .map(|b| b as u64)
    }

    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        Ok(self.load_model(settings).await?)
    }
}

impl MistralRsEngine {
    /// Loads `settings`' model as this engine's own type (what [`super::Engine::load`]
    /// hands out behind the engine seam), for callers that also run it natively
    /// ([`MistralRsModel::generate_native`]).
    pub async fn load_model(
        &self,
        settings: &ModelSettings,
    ) -> Result<Arc<MistralRsModel>, EngineError> {
        if settings.kind == Some(crate::config::ModelKind::Embedding) {
            // mistral.rs 0.8 embeds only safetensors models (its EmbeddingModelBuilder),
            // not GGUF files, which is all this gateway loads.
            return Err(EngineError::Load(
                "the mistral.rs engine does not serve GGUF embedding models; use engine = \"llama.cpp\""
                    .into(),
            ));
        }
        let (model_id, file, revision) = match &settings.source {
            ModelSource::File(path) => {
                // Reading the header walks the vocabulary: off the async threads.
                let checked = path.clone();
                tokio::task::spawn_blocking(move || preflight_file(&checked))
                    .await
                    .map_err(|_| EngineError::Unavailable)??;
                let dir = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (dir.to_string_lossy().into_owned(), file, None)
            }
            ModelSource::HuggingFace {
                repo,
                file,
                revision,
            } => (repo.clone(), file.clone(), revision.clone()),
            ModelSource::Upstream { .. } => {
                return Err(EngineError::Load(
                    "mistral.rs loads GGUF files, not upstream servers".into(),
                ))
            }
        };
        let device = select_device(settings.device)?;
        let is_local = matches!(settings.source, ModelSource::File(_));
        let mut builder = GgufModelBuilder::new(&model_id, vec![file])
            // One sequence at a time: mistral.rs 0.8.1 corrupts a running sequence when a
            // new prompt is scheduled into the same step with it (its KV cache takes the
            // other prompt's context: a temperature-0 answer changes and borrows the other
            // request's words; reproduced with two chats whose prompts differ by one token).
            // The scheduler's queue still admits `max_concurrent`; they run in turn here.
            .with_max_num_seqs(1)
            .with_prefix_cache_n(settings.prefix_cache.unwrap_or(false).then_some(16))
            .with_token_source(if is_local {
                TokenSource::None
            } else {
                TokenSource::CacheToken
            });
        if let Some(rev) = revision {
            builder = builder.with_hf_revision(rev);
        }
        if let Some(template) = &settings.chat_template {
            builder = builder.with_jinja_explicit(template.clone());
        }
        builder = match device {
            Some(Device::Cpu) => builder.with_force_cpu(),
            Some(d) => builder.with_device(d),
            None => builder,
        };

        // Loading blocks and may panic inside the library: run it on its own thread so
        // neither can take down a server worker.
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name(format!("load-{}", settings.name))
            .spawn(move || {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|e| anyhow::anyhow!(e))
                        .and_then(|rt| rt.block_on(builder.build()))
                }));
                let _ = tx.send(result);
            })
            .map_err(|e| EngineError::Load(format!("cannot start a loader thread: {e}")))?;
        // No timeout here: the pool enforces `load_timeout_secs` and keeps the model's
        // memory reserved until this loader thread has really ended.
        let model = match rx.await {
            Err(_) | Ok(Err(_)) => {
                return Err(EngineError::Load(
                    "the engine crashed while loading the file (corrupt or unsupported GGUF?)"
                        .into(),
                ))
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(model = %settings.name, error = %format!("{e:#}"), "mistral.rs could not load the model");
                return Err(EngineError::Load(describe_load_error(&e)));
            }
            Ok(Ok(Ok(model))) => model,
        };

        let model_max = model
            .max_sequence_length()
            .ok()
            .flatten()
            .unwrap_or(usize::MAX);
        let context_length = settings
            .context_length
            .map_or(model_max, |c| c.min(model_max));
        let device = match settings.device {
            DeviceSetting::Auto => {
                describe_device(&mistralrs::best_device(false).unwrap_or(Device::Cpu))
            }
            other => other.to_string(),
        };
        Ok(Arc::new(MistralRsModel {
            model: Arc::new(model),
            facts: ModelFacts {
                thinks: settings.reasoning.unwrap_or(false),
                ..ModelFacts::chat(Some(context_length), device)
            },
        }))
    }
}

/// Turns a mistral.rs load error into a short, path-free cause.
fn describe_load_error(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let lower = text.to_lowercase();
    if lower.contains("unknown architecture") || lower.contains("unsupported architecture") {
        "the GGUF's architecture is not supported by this engine".into()
    } else if lower.contains("dns")
        || lower.contains("connect")
        || lower.contains("request error")
        || lower.contains("network")
        || lower.contains("timed out")
        || lower.contains("huggingface")
    {
        "the Hugging Face hub could not be reached to fetch the model".into()
    } else if lower.contains("out of memory") || lower.contains("alloc") {
        "not enough memory to load the model".into()
    } else {
        // First line only, and no absolute paths.
        let first = text.lines().next().unwrap_or("unknown error");
        first
            .split_whitespace()
            .map(|w| {
                if w.contains('/') && w.len() > 1 {
                    "<path>"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn chat_options(prompt: &Prompt) -> super::ChatOptions {
    match prompt {
        Prompt::Chat(_, options) => options.clone(),
        Prompt::Text(_) => super::ChatOptions::default(),
    }
}

/// The prompt's `reasoning_effort`, as mistral.rs takes it.
fn reasoning_effort(prompt: &Prompt) -> Option<mistralrs::core::ReasoningEffort> {
    match chat_options(prompt).reasoning_effort.as_deref() {
        Some("low") => Some(mistralrs::core::ReasoningEffort::Low),
        Some("medium") => Some(mistralrs::core::ReasoningEffort::Medium),
        Some("high") => Some(mistralrs::core::ReasoningEffort::High),
        _ => None,
    }
}

fn to_mistral_messages(
    prompt: &Prompt,
) -> Either<Vec<IndexMap<String, mistralrs::MessageContent>>, String> {
    match prompt {
        Prompt::Text(text) => Either::Right(text.clone()),
        Prompt::Chat(turns, _) => Either::Left(
            turns
                .iter()
                .map(|t| {
                    let mut m = IndexMap::new();
                    m.insert(
                        "role".to_string(),
                        Either::Left(t.role.as_str().to_string()),
                    );
                    m.insert(
                        "content".to_string(),
                        Either::Left(super::neutralize_special_tokens(&t.content).into_owned()),
                    );
                    m
                })
                .collect(),
        ),
    }
}

fn finite(x: f32) -> f32 {
    if x.is_finite() {
        x
    } else {
        -9999.0
    }
}

/// Rebuilds the log-probabilities of one chunk from the probe's records: mistral.rs's
/// first alternative is the chosen token (marked by the probe), the others carry
/// `log10` of their true probabilities.
fn convert_logprob(
    lp: mistralrs::core::ResponseLogprob,
    probe: &SamplingProbe,
    top_k: usize,
) -> Vec<TokenLogprob> {
    let Some(chosen) = lp.top_logprobs.first().map(|t| t.token) else {
        return Vec::new();
    };
    let (record, skipped) = probe.claim(chosen);
    let chosen_logprob = record.map(|r| r.logprob).unwrap_or(f32::MIN);
    let mut top: Vec<TopLogprob> = lp
        .top_logprobs
        .iter()
        .skip(1)
        .map(|t| TopLogprob {
            token: t.bytes.clone().unwrap_or_default(),
            logprob: finite(t.logprob * std::f32::consts::LN_10),
        })
        .collect();
    top.push(TopLogprob {
        token: lp.token.clone(),
        logprob: finite(chosen_logprob),
    });
    top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    top.truncate(top_k);
    let mut out: Vec<TokenLogprob> = skipped
        .into_iter()
        .map(|r| TokenLogprob {
            token: String::new(),
            logprob: finite(r.logprob),
            top: Vec::new(),
        })
        .collect();
    out.push(TokenLogprob {
        token: lp.token,
        logprob: finite(chosen_logprob),
        top,
    });
    out
}

fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

impl MistralRsModel {
    /// Sends a request to the engine, keeping the reply channel alive on a detached task
    /// so that a caller going away never drops it early (mistral.rs's tokenizer path
    /// panics if it does).
    async fn tokenize(&self, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
        let sender = self
            .model
            .inner()
            .get_sender(None)
            .map_err(|_| EngineError::Unavailable)?;
        let (tx, mut rx) = mpsc::channel(1);
        let request = Request::Tokenize(mistralrs::core::TokenizationRequest {
            text: to_mistral_messages(prompt),
            tools: None,
            add_generation_prompt: matches!(prompt, Prompt::Chat(..)),
            add_special_tokens: true,
            enable_thinking: chat_options(prompt).enable_thinking,
            reasoning_effort: reasoning_effort(prompt),
            response: tx,
        });
        let task = tokio::spawn(async move {
            sender
                .send(request)
                .await
                .map_err(|_| EngineError::Unavailable)?;
            match rx.recv().await {
                Some(Ok(tokens)) => Ok(tokens),
                Some(Err(e)) => Err(EngineError::Rejected(format!(
                    "the prompt could not be rendered or tokenized: {e}"
                ))),
                None => Err(EngineError::Unavailable),
            }
        });
        task.await.map_err(|_| EngineError::Unavailable)?
    }

    /// mistral.rs on its own, the reference `llamagate bench --overhead` measures this
    /// engine against: the same prompt tokens, sampled by mistral.rs's own sampler
    /// (`temperature` 0 is its greedy step; no seed, no logits processor), streamed
    /// straight from its channel — none of the gateway's sampling, counting, stop
    /// matching or pump. One `Text` event per chunk, then `Done` with the chunks counted
    /// as completion tokens.
    pub async fn generate_native(
        &self,
        tokens: Vec<u32>,
        temperature: f64,
        max_tokens: usize,
    ) -> Result<TokenStream, EngineError> {
        let runner = self.model.inner();
        let (tx, mut rx) = mpsc::channel::<Response>(64);
        let normal = NormalRequest {
            messages: RequestMessage::CompletionTokens(tokens),
            sampling_params: SamplingParams {
                temperature: Some(temperature),
                top_k: None,
                max_len: Some(max_tokens),
                ..SamplingParams::deterministic()
            },
            response: tx,
            return_logprobs: false,
            is_streaming: true,
            id: runner.next_request_id(),
            constraint: Constraint::None,
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: None,
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        };
        runner
            .get_sender(None)
            .map_err(|_| EngineError::Unavailable)?
            .send(Request::Normal(Box::new(normal)))
            .await
            .map_err(|_| EngineError::Unavailable)?;
        let stream = async_stream::stream! {
            let mut chunks = 0;
            while let Some(response) = rx.recv().await {
                let (text, done) = match response {
                    Response::Chunk(chunk) => chunk.choices.into_iter().fold(
                        (String::new(), false),
                        |(text, done), c| (text + &c.delta.content.unwrap_or_default(), done || c.finish_reason.is_some()),
                    ),
                    Response::CompletionChunk(chunk) => chunk.choices.into_iter().fold(
                        (String::new(), false),
                        |(text, done), c| (text + &c.text, done || c.finish_reason.is_some()),
                    ),
                    Response::ModelError(msg, _) | Response::CompletionModelError(msg, _) => {
                        yield Err(EngineError::Generation(msg));
                        return;
                    }
                    _ => continue,
                };
                chunks += 1;
                yield Ok(TokenEvent::Text { choice: 0, text, logprobs: Vec::new() });
                if done {
                    break;
                }
            }
            yield Ok(TokenEvent::Done(TokenUsage {
                completion_tokens: chunks,
                ..Default::default()
            }));
        };
        Ok(Box::pin(stream))
    }
}

#[async_trait]
impl LoadedModel for MistralRsModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    async fn prepare(&self, prompt: &Prompt) -> Result<super::PreparedPrompt, EngineError> {
        let tokens = self.tokenize(prompt).await?;
        Ok(super::PreparedPrompt {
            token_count: tokens.len(),
            tokens: Some(Arc::new(tokens)),
            opens_thinking: false,
        })
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TokenStream, EngineError> {
        let s = &request.sampling;
        let probe = Arc::new(
            SamplingProbe::new(s.temperature, s.top_p, s.seed, s.logprobs)
                .with_callback(request.on_token.clone()),
        );
        // The probe samples; mistral.rs only takes its greedy step over the probe's output.
        // One extra alternative is asked for: the first is always the chosen token.
        let sampling_params = SamplingParams {
            temperature: Some(0.0),
            top_k: None,
            top_p: None,
            min_p: None,
            top_n_logprobs: if s.logprobs { s.top_logprobs + 1 } else { 0 },
            frequency_penalty: (s.frequency_penalty != 0.0).then_some(s.frequency_penalty),
            presence_penalty: (s.presence_penalty != 0.0).then_some(s.presence_penalty),
            repetition_penalty: None,
            stop_toks: None,
            max_len: s.max_tokens,
            logits_bias: None,
            n_choices: s.n,
            dry_params: None,
        };
        let messages = match (&request.tokens, to_mistral_messages(&request.prompt)) {
            // Rendered and tokenized once already (by `prepare`): not again.
            (Some(tokens), _) => RequestMessage::CompletionTokens(tokens.to_vec()),
            (None, Either::Left(messages)) => RequestMessage::Chat {
                messages,
                enable_thinking: chat_options(&request.prompt).enable_thinking,
                reasoning_effort: reasoning_effort(&request.prompt),
            },
            (None, Either::Right(text)) => RequestMessage::Completion {
                text,
                echo_prompt: false,
                best_of: None,
            },
        };
        let runner = self.model.inner();
        let (tx, mut rx) = mpsc::channel::<Response>(64);
        let processor: Arc<dyn mistralrs::CustomLogitsProcessor> = probe.clone();
        let normal = NormalRequest {
            messages,
            sampling_params,
            response: tx,
            return_logprobs: s.logprobs,
            is_streaming: true,
            id: runner.next_request_id(),
            constraint: match &request.json_schema {
                Some(schema) => Constraint::JsonSchema(schema.clone()),
                None => Constraint::None,
            },
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![processor]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        };
        runner
            .get_sender(None)
            .map_err(|_| EngineError::Unavailable)?
            .send(Request::Normal(Box::new(normal)))
            .await
            .map_err(|_| EngineError::Unavailable)?;

        // mistral.rs awaits each send, so a slow reader would stall every sequence of the
        // model: a pump drains the engine channel at once into an unbounded buffer (bounded
        // in practice by max_tokens) and drops it, cancelling the sequence, as soon as the
        // consumer is gone.
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Response>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    response = rx.recv() => match response {
                        Some(r) => {
                            if out_tx.send(r).is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = out_tx.closed() => break,
                }
            }
        });

        let n = s.n;
        let constrained = request.json_schema.is_some();
        // A schema the grammar engine rejects is reported before any response starts.
        let mut pending = None;
        if constrained {
            match out_rx.recv().await {
                Some(Response::ValidationError(e)) => {
                    return Err(EngineError::InvalidSchema(
                        e.to_string()
                            .trim_start_matches("Invalid grammar. ")
                            .to_string(),
                    ))
                }
                other => pending = other,
            }
        }
        let max_tokens = s.max_tokens.unwrap_or(usize::MAX);
        let top_k = s.top_logprobs;
        let stops = s.stop.clone();
        let prompt_tokens = request.prompt_tokens;
        let stream = async_stream::stream! {
            let mut matchers: Vec<StopMatcher> = (0..n).map(|_| StopMatcher::new(&stops)).collect();
            let mut json_ends: Option<Vec<super::json_end::JsonEnd>> =
                constrained.then(|| vec![Default::default(); n]);
            let mut finished = vec![false; n];
            // Dropping this stream drops `out_rx`, which stops the pump and cancels the sequence.
            loop {
                let response = match pending.take() {
                    Some(r) => r,
                    None => match out_rx.recv().await {
                        Some(r) => r,
                        None => break,
                    },
                };
                let pieces: Vec<(usize, String, Option<Vec<TokenLogprob>>, Option<String>)> = match response {
                    Response::Chunk(chunk) => chunk
                        .choices
                        .into_iter()
                        .map(|c| (c.index, c.delta.content.unwrap_or_default(), c.logprobs.map(|l| convert_logprob(l, &probe, top_k)), c.finish_reason))
                        .collect(),
                    Response::CompletionChunk(chunk) => chunk
                        .choices
                        .into_iter()
                        .map(|c| (c.index, c.text, c.logprobs.map(|l| convert_logprob(l, &probe, top_k)), c.finish_reason))
                        .collect(),
                    Response::ModelError(msg, _) | Response::CompletionModelError(msg, _) => {
                        yield Err(EngineError::Generation(msg));
                        return;
                    }
                    Response::ValidationError(e) => {
                        yield Err(EngineError::Rejected(e.to_string()));
                        return;
                    }
                    Response::InternalError(e) => {
                        tracing::error!(error = %e, "mistral.rs internal error");
                        yield Err(EngineError::Generation("internal engine error".into()));
                        return;
                    }
                    _ => Vec::new(),
                };
                for (choice, text, logprob, reason) in pieces {
                    if choice >= n || finished[choice] {
                        continue;
                    }
                    // A constrained choice ends where its JSON value is complete.
                    let (text, json_done) = match json_ends.as_mut() {
                        Some(ends) => match ends[choice].push(&text) {
                            Some(end) => (text[..end].to_string(), true),
                            None => (text, false),
                        },
                        None => (text, false),
                    };
                    let outcome = matchers[choice].push(&text);
                    let mut emit = outcome.emit;
                    if json_done && !outcome.stopped {
                        emit.push_str(&matchers[choice].flush());
                    }
                    if reason.is_some() && !outcome.stopped {
                        emit.push_str(&matchers[choice].flush());
                    }
                    if !emit.is_empty() || logprob.is_some() {
                        yield Ok(TokenEvent::Text {
                            choice,
                            text: emit,
                            logprobs: logprob.unwrap_or_default(),
                        });
                    }
                    let end = if outcome.stopped {
                        Some(matchers[choice].reason())
                    } else if json_done {
                        Some(FinishReason::Stop)
                    } else {
                        reason.as_deref().map(finish_reason)
                    };
                    if let Some(reason) = end {
                        finished[choice] = true;
                        yield Ok(TokenEvent::Finished { choice, reason });
                    }
                }
                if finished.iter().all(|f| *f) {
                    break;
                }
            }
            if !finished.iter().all(|f| *f) {
                if probe.generated() == 0 {
                    yield Err(EngineError::Generation("the engine ended the generation before any token".into()));
                    return;
                }
                // mistral.rs drops a choice's last chunk (finish_reason included) when its
                // last token is an incomplete UTF-8 sequence; the choice did end, so end it
                // here: `length` when it used its whole budget, else end of sequence.
                let reason = if probe.generated() >= max_tokens {
                    FinishReason::Length
                } else {
                    FinishReason::Stop
                };
                for choice in 0..n {
                    if !finished[choice] {
                        let rest = matchers[choice].flush();
                        if !rest.is_empty() {
                            yield Ok(TokenEvent::Text { choice, text: rest, logprobs: Vec::new() });
                        }
                        yield Ok(TokenEvent::Finished { choice, reason });
                    }
                }
            }
            // The sampler can be asked once more after a choice reached its limit.
            yield Ok(TokenEvent::Done(TokenUsage {
                prompt_tokens,
                completion_tokens: probe.generated().min(max_tokens.saturating_mul(n)),
                cached_prompt_tokens: 0,
                ..Default::default()
            }));
        };
        Ok(Box::pin(stream))
    }
}
