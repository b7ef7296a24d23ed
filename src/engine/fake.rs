//! A scripted engine for tests of everything above the engine seam (scheduler, HTTP layer,
//! renderers, auth, timeouts): no model, deterministic, milliseconds. Each choice emits
//! `token_text` per token up to `max_tokens` (ending with `length`); a constrained
//! request emits `{}` (ending with `stop`). Loads, failures, delays and unknown
//! footprints are scripted per model name, and what happened is counted. A model
//! configured with `kind = "embedding"` embeds instead: a token per 4 bytes of text, a
//! vector of [`FAKE_EMBEDDING_LENGTH`] values derived from the input's bytes, after
//! `token_delay` per input.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    EmbedInput, EmbeddingRequest, Embeddings, Engine, EngineError, FinishReason, GenerationRequest,
    LoadedModel, ModelFacts, PreparedPrompt, Prompt, TokenEvent, TokenLogprob, TokenStream,
    TokenUsage, TopLogprob,
};
use crate::config::{ModelKind, ModelSettings};

/// Length of the fake engine's embeddings.
pub const FAKE_EMBEDDING_LENGTH: usize = 8;
use crate::memory::Footprint;

/// The scripted engine. `FakeEngine::default()` loads at once and streams `"x"` tokens
/// as fast as they are read, with a context window of 1024 tokens.
pub struct FakeEngine {
    /// How long each load takes.
    pub load_delay: Duration,
    /// Pause before each token.
    pub token_delay: Duration,
    /// The text of every token.
    pub token_text: String,
    /// When not empty, each choice emits these tokens instead (up to `max_tokens`) and
    /// ends with `stop`.
    pub script: Vec<String>,
    /// Loaded models report a `<think>` chat template (a reasoning model).
    pub thinks: bool,
    /// Loaded models report a chat template that renders tools in this syntax.
    pub tool_syntax: Option<crate::engine::tools::ToolSyntax>,
    /// Context window of every loaded model.
    pub context_length: usize,
    /// Models whose next load fails (each entry once).
    pub fail_once: Mutex<Vec<String>>,
    /// Models whose footprint is unknown until their first load (like a hub file not
    /// downloaded yet).
    pub unknown_until_loaded: Mutex<Vec<String>>,
    /// Models loaded, in order.
    pub loads: Mutex<Vec<String>>,
    /// Loads in progress.
    pub loaders_running: AtomicUsize,
    /// The layers of every model on a GPU device (`cuda:N`, `vulkan:N`): the scheduler
    /// may split such a model between the GPU and the CPU. `0`: models are not split.
    pub layers: u32,
    /// Each load's model and the layers it was given for its GPU, in order.
    pub placed: Mutex<Vec<(String, crate::config::GpuLayers)>>,
    /// Generations in progress (streams not yet dropped).
    pub running: Arc<AtomicUsize>,
    /// Generations whose stream was dropped before their last event (cancelled).
    pub cancelled: Arc<AtomicUsize>,
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self {
            load_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            token_text: "x".into(),
            script: Vec::new(),
            thinks: false,
            tool_syntax: None,
            context_length: 1024,
            fail_once: Mutex::default(),
            unknown_until_loaded: Mutex::default(),
            loads: Mutex::default(),
            loaders_running: AtomicUsize::new(0),
            layers: 0,
            placed: Mutex::default(),
            running: Arc::default(),
            cancelled: Arc::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeEngine {
    /// The models loaded so far, in order.
    pub fn loaded(&self) -> Vec<String> {
        lock(&self.loads).clone()
    }
}

/// A model of the fake engine.
struct FakeModel {
    facts: ModelFacts,
    token_delay: Duration,
    token_text: String,
    script: Vec<String>,
    running: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
}

/// Counts a generation as running while its stream lives, and as cancelled when the
/// stream is dropped before its end.
struct Running {
    running: Arc<AtomicUsize>,
    cancelled: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if !self.finished {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl LoadedModel for FakeModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    /// A token per 4 bytes of text (at least one).
    async fn prepare(&self, prompt: &Prompt) -> Result<PreparedPrompt, EngineError> {
        Ok(PreparedPrompt {
            token_count: prompt.text_bytes().div_ceil(4).max(1),
            tokens: None,
            opens_thinking: false,
        })
    }

    async fn prepare_input(&self, input: &EmbedInput) -> Result<PreparedPrompt, EngineError> {
        let tokens: Vec<u32> = match input {
            EmbedInput::Text(text) => text.as_bytes().chunks(4).map(|c| u32::from(c[0])).collect(),
            EmbedInput::Tokens(tokens) => tokens.clone(),
        };
        Ok(PreparedPrompt {
            token_count: tokens.len().max(1),
            tokens: Some(Arc::new(tokens)),
            opens_thinking: false,
        })
    }

    async fn embed(&self, request: EmbeddingRequest) -> Result<Embeddings, EngineError> {
        self.running.fetch_add(1, Ordering::SeqCst);
        let mut guard = Running {
            running: self.running.clone(),
            cancelled: self.cancelled.clone(),
            finished: false,
        };
        let mut out = Embeddings::default();
        for tokens in &request.tokens {
            if !self.token_delay.is_zero() {
                tokio::time::sleep(self.token_delay).await;
            }
            let tokens = tokens.as_deref().map_or(&[][..], Vec::as_slice);
            out.prompt_tokens += tokens.len().max(1);
            let vector = (0..FAKE_EMBEDDING_LENGTH)
                .map(|i| {
                    tokens
                        .iter()
                        .enumerate()
                        .map(|(j, t)| ((*t as f32) * (1.0 + (i * j % 7) as f32)).sin())
                        .sum::<f32>()
                        + 1.0 / (1.0 + i as f32)
                })
                .collect();
            out.vectors.push(super::shape_embedding(
                vector,
                request.dimensions,
                request.normalize,
            ));
        }
        guard.finished = true;
        Ok(out)
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TokenStream, EngineError> {
        if self.facts.kind == Some(ModelKind::Embedding) {
            return Err(EngineError::Rejected(
                "an embedding model does not generate".into(),
            ));
        }
        self.running.fetch_add(1, Ordering::SeqCst);
        let guard = Running {
            running: self.running.clone(),
            cancelled: self.cancelled.clone(),
            finished: false,
        };
        let delay = self.token_delay;
        let text = self.token_text.clone();
        let script = self.script.clone();
        let s = request.sampling;
        let n = s.n.max(1);
        let constrained = request.json_schema.is_some();
        let max = s.max_tokens.unwrap_or(usize::MAX);
        let scripted = !constrained && !script.is_empty();
        let prompt_tokens = request.prompt_tokens;
        let on_token = request.on_token;
        let logprobs = s.logprobs;
        let top = s.top_logprobs;
        Ok(Box::pin(async_stream::stream! {
            // The whole guard lives in the stream (not just the field set below).
            let mut guard = guard;
            let mut generated = 0usize;
            let per_choice = if constrained {
                1
            } else if scripted {
                max.min(script.len())
            } else {
                max
            };
            for step in 0..per_choice {
                for choice in 0..n {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    } else if step % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                    generated += 1;
                    if let Some(f) = &on_token {
                        f();
                    }
                    let token = if constrained {
                        "{}".to_string()
                    } else if let Some(t) = script.get(step).filter(|_| scripted) {
                        t.clone()
                    } else {
                        text.clone()
                    };
                    let logprobs = if logprobs {
                        vec![TokenLogprob {
                            token: token.clone(),
                            logprob: -0.5,
                            top: (0..top)
                                .map(|i| TopLogprob { token: format!("t{i}"), logprob: -1.0 - i as f32 })
                                .collect(),
                        }]
                    } else {
                        Vec::new()
                    };
                    yield Ok(TokenEvent::Text { choice, text: token, logprobs });
                }
            }
            for choice in 0..n {
                let reason = if constrained || (scripted && per_choice == script.len()) {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                yield Ok(TokenEvent::Finished { choice, reason });
            }
            guard.finished = true;
            yield Ok(TokenEvent::Done(TokenUsage {
                prompt_tokens,
                completion_tokens: generated,
                cached_prompt_tokens: 0,
                ..Default::default()
            }));
        }))
    }
}

#[async_trait]
impl Engine for FakeEngine {
    /// `memory` when set, else nothing; [`Footprint::UNKNOWN`] for models listed in
    /// `unknown_until_loaded` that were never loaded.
    fn estimate_footprint(&self, settings: &ModelSettings) -> Result<Footprint, String> {
        let loaded = lock(&self.loads).contains(&settings.name);
        if !loaded && lock(&self.unknown_until_loaded).contains(&settings.name) {
            return Ok(Footprint::UNKNOWN);
        }
        Ok(Footprint::fixed(settings.memory.map_or(0, |m| m.0)))
    }

    fn offload_layers(&self, settings: &ModelSettings) -> Option<u32> {
        (self.layers > 0 && settings.main_device().is_gpu()).then_some(self.layers)
    }

    /// Several GPUs in `devices` share the layers equally.
    fn offload_split(&self, settings: &ModelSettings) -> Vec<(String, f64)> {
        if self.layers == 0 || settings.devices.len() < 2 {
            return Vec::new();
        }
        settings
            .devices
            .iter()
            .map(|d| (d.to_string(), 1.0))
            .collect()
    }

    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        self.loaders_running.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.load_delay).await;
        self.loaders_running.fetch_sub(1, Ordering::SeqCst);
        lock(&self.loads).push(settings.name.clone());
        lock(&self.placed).push((settings.name.clone(), settings.gpu_layers));
        {
            let mut fail = lock(&self.fail_once);
            if let Some(pos) = fail.iter().position(|n| *n == settings.name) {
                fail.remove(pos);
                return Err(EngineError::Load("scripted failure".into()));
            }
        }
        Ok(Arc::new(FakeModel {
            facts: match settings.kind {
                Some(ModelKind::Embedding) => ModelFacts {
                    context_length: Some(self.context_length),
                    device: "cpu".into(),
                    kind: Some(ModelKind::Embedding),
                    embedding_length: Some(FAKE_EMBEDDING_LENGTH),
                    thinks: false,
                    tool_syntax: None,
                    gpu_layers: None,
                },
                _ => ModelFacts {
                    thinks: self.thinks,
                    tool_syntax: self.tool_syntax,
                    gpu_layers: self.offload_layers(settings).map(|layers| {
                        let on_gpu = match settings.gpu_layers {
                            crate::config::GpuLayers::Auto => layers,
                            crate::config::GpuLayers::Count(n) => n.min(layers),
                        };
                        (on_gpu, layers)
                    }),
                    ..ModelFacts::chat(Some(self.context_length), "cpu")
                },
            },
            token_delay: self.token_delay,
            token_text: self.token_text.clone(),
            script: self.script.clone(),
            running: self.running.clone(),
            cancelled: self.cancelled.clone(),
        }))
    }
}
