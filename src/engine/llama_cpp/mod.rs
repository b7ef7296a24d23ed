//! The llama.cpp engine, through the `llama-cpp-2` crate: the fastest way to run a GGUF
//! on a CPU. Each loaded model owns one llama.cpp context with a sequence per concurrent
//! request, driven by one worker thread ([`worker`]) that batches every running
//! sequence into each forward pass (continuous batching) and reuses the KV cache of a
//! prompt's longest cached prefix (multi-turn chat skips what it already read).
//!
//! Chat templates are rendered by [`super::chat_template`]; sampling is llamagate's own
//! (the same seeded sampler as the mistral.rs engine), so both engines give the same API.
//!
//! A model with a `draft` loads the draft's file beside its own, on the same thread, with
//! a context of the same shape: the worker then decodes speculatively.
//!
//! On a build with a GPU backend (`vulkan`, `cuda`, `metal`), `device` picks one of the
//! GPUs ggml lists ([`devices`]) and `gpu_layers` how many layers go there.

mod bursts;
pub mod devices;
pub mod draft_length;
mod embed;
mod grammar;
mod worker;

pub use embed::{EMBED_BATCH_TOKENS, EMBED_SEQUENCES};

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::chat_template::{ChatTemplate, CHATML};
use super::tools::ToolSyntax;
use super::{
    EngineError, GenerationRequest, LoadedModel, ModelFacts, Prompt, TokenEvent, TokenStream,
};
use crate::config::{DeviceSetting, ModelSettings, ModelSource};
use crate::memory::Footprint;

/// Tokens one forward pass takes at most (prompt chunks and decode steps together) unless
/// a model's `batch_tokens` says otherwise; also the most llama.cpp computes at once
/// (`n_ubatch`, which sizes its compute buffers), whatever the batch.
const BATCH_TOKENS: u32 = 512;

/// llama.h's `LLAMA_FLASH_ATTN_TYPE_{AUTO,DISABLED,ENABLED}` (llama-cpp-2 takes the raw value).
const FLASH_ATTN_AUTO: i32 = -1;
const FLASH_ATTN_DISABLED: i32 = 0;
const FLASH_ATTN_ENABLED: i32 = 1;

/// Engine backed by llama.cpp (CPU).
#[derive(Debug, Default, Clone)]
pub struct LlamaCppEngine;

/// llama.cpp's process-wide state, initialised once.
fn backend() -> Result<&'static LlamaBackend, EngineError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| EngineError::Load(format!("llama.cpp could not start: {e}")))
}

/// The GPUs this build's llama.cpp sees, listed once (their names and order do not change
/// while the process runs).
fn known_gpus() -> &'static [devices::GpuDevice] {
    static GPUS: OnceLock<Vec<devices::GpuDevice>> = OnceLock::new();
    GPUS.get_or_init(devices::gpus)
}

/// Physical CPU cores (llama.cpp runs slower on hyper-threads than on cores alone).
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut physical = String::new();
    for line in info.lines() {
        if let Some((key, value)) = line.split_once(':') {
            match key.trim() {
                "physical id" => physical = value.trim().to_string(),
                "core id" => {
                    cores.insert((physical.clone(), value.trim().to_string()));
                }
                _ => {}
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// What the worker thread reports once its context exists.
struct Ready {
    context_per_sequence: usize,
}

/// A GGUF loaded in llama.cpp.
pub struct LlamaCppModel {
    shared: Arc<Shared>,
    jobs: std::sync::mpsc::Sender<worker::Job>,
    facts: ModelFacts,
}

/// What the request side and the worker both read.
pub(crate) struct Shared {
    model: LlamaModel,
    template: ChatTemplate,
    /// Whether the tokenizer adds BOS, and its text (templates often write it themselves).
    add_bos: bool,
    bos_text: String,
    grammar: OnceLock<Result<Arc<llguidance::ParserFactory>, String>>,
    /// The chat template thinks in `<think>…</think>`.
    thinks: bool,
    /// The syntax the chat template renders tools for, if it has a tool section.
    tool_syntax: Option<ToolSyntax>,
    /// How a grammar writes that syntax's opener: `<[id]>` when it is a control token.
    tool_opener: String,
    /// The opener, when it is a control token (written out as text in the output, so the
    /// calls can be read back).
    pub(crate) tool_opener_token: Option<LlamaToken>,
}

impl Shared {
    /// The prompt's tokens, and whether its chat template opened a thinking block at its end.
    fn tokenize(&self, prompt: &Prompt) -> Result<(Vec<LlamaToken>, bool), EngineError> {
        let text = match prompt {
            Prompt::Chat(turns, options) => self
                .template
                .render_with(turns, true, options)
                .map_err(EngineError::Rejected)?,
            Prompt::Text(text) => text.clone(),
        };
        let add_bos =
            self.add_bos && (self.bos_text.is_empty() || !text.starts_with(&self.bos_text));
        let tokens = self.model.vocab().tokenize(text.as_bytes(), add_bos, true);
        if tokens.is_empty() {
            return Err(EngineError::Rejected(
                "the prompt is empty once tokenized".into(),
            ));
        }
        let opens_thinking =
            matches!(prompt, Prompt::Chat(..)) && text.trim_end().ends_with("<think>");
        Ok((tokens, opens_thinking))
    }

    /// The grammar compiler for this vocabulary, built on first use (it walks the vocabulary).
    fn grammar_factory(&self) -> Result<Arc<llguidance::ParserFactory>, EngineError> {
        self.grammar
            .get_or_init(|| grammar::factory(&self.model).map(Arc::new))
            .clone()
            .map_err(EngineError::Generation)
    }
}

fn model_path(settings: &ModelSettings) -> Result<&Path, EngineError> {
    match &settings.source {
        ModelSource::File(path) => Ok(path),
        _ => Err(EngineError::Load(
            "the llama.cpp engine loads local GGUF files only".into(),
        )),
    }
}

#[async_trait]
impl super::Engine for LlamaCppEngine {
    fn device_key(&self, settings: &ModelSettings) -> String {
        match settings.main_device() {
            DeviceSetting::Cpu => "cpu".into(),
            DeviceSetting::Auto => devices::resolve(DeviceSetting::Auto, known_gpus())
                .ok()
                .flatten()
                .map_or_else(|| "cpu".into(), |g| g.key),
            named => named.to_string(),
        }
    }

    fn device_memory(&self, device_key: &str) -> Option<u64> {
        known_gpus()
            .iter()
            .find(|g| g.key == device_key)
            .map(|g| g.memory_total)
    }

    fn estimate_footprint(&self, settings: &ModelSettings) -> Result<Footprint, String> {
        let estimate = |settings: &ModelSettings, context_used: &mut Option<u64>| {
            super::footprint_from_header(settings, |summary, context, sequences| {
                *context_used = Some(context);
                Footprint::estimate_llama_cpp(summary, context, sequences, u64::from(BATCH_TOKENS))
            })
        };
        let mut context = None;
        let own = estimate(settings, &mut context)?;
        match (&settings.draft_file, context) {
            // The draft's weights and its KV cache for the same context and sequences (a
            // configured `memory` is the whole, and the closure above did not run).
            (Some(path), Some(context)) => {
                let mut draft = settings.clone();
                draft.source = ModelSource::File(path.clone());
                draft.context_length = Some(context as usize);
                Ok(own.plus(estimate(&draft, &mut None)?))
            }
            _ => Ok(own),
        }
    }

    fn device_usage(&self) -> Vec<super::DeviceUsage> {
        devices::gpus()
            .into_iter()
            .map(|g| super::DeviceUsage {
                device: g.key,
                description: g.description,
                total: g.memory_total,
                free: g.memory_free,
            })
            .collect()
    }

    fn offload_layers(&self, settings: &ModelSettings) -> Option<u32> {
        if self.device_key(settings) == "cpu" {
            return None;
        }
        let summary = crate::gguf::read_summary(model_path(settings).ok()?).ok()?;
        let blocks = u32::try_from(summary.arch_u64("block_count")?).ok()?;
        Some(blocks.saturating_add(1))
    }

    fn offload_split(&self, settings: &ModelSettings) -> Vec<(String, f64)> {
        if settings.devices.is_empty() {
            return Vec::new();
        }
        // llama.cpp splits by the free memory it reads when loading; read it now.
        let now = devices::gpus();
        match devices::resolve_all(settings, &now) {
            Ok(gpus) if gpus.len() > 1 => gpus
                .into_iter()
                .map(|g| (g.key, g.memory_free as f64))
                .collect(),
            _ => Vec::new(),
        }
    }

    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        let path = model_path(settings)?.to_path_buf();
        // Reading the header walks the vocabulary: off the async threads.
        let checked = path.clone();
        let blocks = tokio::task::spawn_blocking(move || {
            crate::gguf::read_summary(&checked)
                .map(|s| s.arch_u64("block_count").unwrap_or(0))
                .map_err(|e| EngineError::Load(super::describe_file_error(&checked, &e.0)))
        })
        .await
        .map_err(|_| EngineError::Unavailable)??;
        let backend = backend()?;
        let gpus = devices::resolve_all(settings, known_gpus()).map_err(EngineError::Load)?;
        let blocks = u32::try_from(blocks).unwrap_or(u32::MAX);
        let placement =
            devices::Placement::of(gpus, settings.gpu_layers, settings.split_mode, blocks)
                .map_err(EngineError::Load)?;
        let threads = settings.threads.unwrap_or_else(physical_cores).max(1);
        if settings.kind == Some(crate::config::ModelKind::Embedding) {
            let options = embed::EmbedOptions {
                threads,
                pooling: settings.pooling,
                context_length: settings.context_length,
                placement,
            };
            let model = embed::load(backend, &path, &settings.name, options).await?;
            return Ok(Arc::new(model));
        }
        let draft = match (&settings.draft, &settings.draft_file) {
            (None, _) => None,
            (Some(_), Some(path)) => Some((
                path.clone(),
                draft_length::DraftLength::new(settings.draft_max, settings.draft_adaptive),
                settings.draft_p_min,
            )),
            (Some(name), None) => {
                return Err(EngineError::Load(format!(
                    "its draft model `{name}` is not a model of this server with a GGUF file here (a hub model must be downloaded first)"
                )))
            }
        };
        let sequences = settings.max_concurrent.max(1);
        let configured_context = settings.context_length;
        let reuse_prefix = settings.prefix_cache.unwrap_or(true);
        let flash = flash_policy(settings, &placement);
        // A pass holds every sequence's next token at least.
        let batch = settings
            .batch_tokens
            .map_or(BATCH_TOKENS, |n| u32::try_from(n).unwrap_or(BATCH_TOKENS))
            .max(u32::try_from(sequences).unwrap_or(u32::MAX));
        let chat_template = settings.chat_template.clone();
        let name = settings.name.clone();
        let device = placement.describe();
        let offload = placement
            .gpu
            .as_ref()
            .map(|_| (placement.gpu_layers, placement.layers));

        let (ready_tx, ready_rx) = oneshot::channel::<Result<(Arc<Shared>, Ready), EngineError>>();
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<worker::Job>();
        std::thread::Builder::new()
            .name(format!("llama.cpp-{name}"))
            .spawn(move || {
                let loaded = std::panic::catch_unwind(|| {
                    load_on_this_thread(
                        backend,
                        &path,
                        &placement,
                        chat_template.as_deref(),
                        configured_context,
                        sequences,
                        threads,
                        batch,
                        flash,
                    )
                });
                let (shared, shape, context_per_sequence) = match loaded {
                    Ok(Ok(parts)) => parts,
                    Ok(Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = ready_tx.send(Err(EngineError::Load(
                            "llama.cpp crashed while loading the file (corrupt GGUF?)".into(),
                        )));
                        return;
                    }
                };
                let context = match shared.model.new_context(backend, shape.params()) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(EngineError::Load(format!(
                            "llama.cpp could not create a context ({e}); lower context_length or max_concurrent"
                        ))));
                        return;
                    }
                };
                let context_per_sequence =
                    context_per_sequence.min(context.n_ctx() as usize / sequences);
                // The draft model, if any: its weights, then a context of the same shape.
                let draft_model = match &draft {
                    None => None,
                    Some((path, _, _)) => match load_draft(backend, path, &placement, &shared.model) {
                        Ok(model) => Some(model),
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    },
                };
                let draft = match (&draft_model, &draft) {
                    (Some(model), Some((_, length, p_min))) => {
                        match model.new_context(backend, shape.params()) {
                            Ok(context) => Some(worker::Draft {
                                context,
                                length: length.clone(),
                                p_min: *p_min,
                            }),
                            Err(e) => {
                                let _ = ready_tx.send(Err(EngineError::Load(format!(
                                    "llama.cpp could not create the draft model's context ({e}); lower context_length or max_concurrent"
                                ))));
                                return;
                            }
                        }
                    }
                    _ => None,
                };
                if ready_tx
                    .send(Ok((
                        shared.clone(),
                        Ready {
                            context_per_sequence,
                        },
                    )))
                    .is_err()
                {
                    return; // The load timed out and nobody waits for this model.
                }
                // A panic ends this model's worker: its requests end with an error (their
                // channels close) and later ones get "engine stopped"; nothing hangs.
                let worker = std::panic::AssertUnwindSafe(|| {
                    worker::run(
                        &shared,
                        context,
                        draft,
                        worker::Limits {
                            sequences,
                            context_per_sequence,
                            reuse_prefix,
                            batch: batch as usize,
                        },
                        jobs_rx,
                    )
                });
                if std::panic::catch_unwind(worker).is_err() {
                    tracing::error!(model = %name, "the llama.cpp worker crashed; unload and reload the model");
                }
            })
            .map_err(|e| EngineError::Load(format!("cannot start a llama.cpp thread: {e}")))?;

        // No timeout here: the pool enforces `load_timeout_secs` and keeps the model's
        // memory reserved until this loader has really ended.
        let (shared, ready) = match ready_rx.await {
            Err(_) => {
                return Err(EngineError::Load(
                    "llama.cpp stopped while loading the file".into(),
                ))
            }
            Ok(result) => result?,
        };
        tracing::info!(
            model = %settings.name,
            threads,
            sequences,
            device = %device,
            gpu_layers = offload.map_or(0, |(n, _)| n),
            context = ready.context_per_sequence,
            draft = settings.draft.as_deref().unwrap_or("none"),
            "llama.cpp model ready"
        );
        let thinks = settings.reasoning.unwrap_or(shared.thinks);
        let tool_syntax = shared.tool_syntax;
        Ok(Arc::new(LlamaCppModel {
            shared,
            jobs: jobs_tx,
            facts: ModelFacts {
                thinks,
                tool_syntax,
                gpu_layers: offload,
                ..ModelFacts::chat(Some(ready.context_per_sequence), device)
            },
        }))
    }
}

type Loaded = (Arc<Shared>, ContextShape, usize);

/// Flash attention by the model's setting. `auto`: off on the CPU alone, where llama.cpp
/// enables it but its CPU kernel is the slower path (SmolLM2 after a 600-token prompt
/// decoded at 42–45 tokens/s with it, 68–70 without; four streams 1.4× slower;
/// docs/BENCHMARKS.md), except with a draft model, whose guesses are checked in one
/// batched pass that matches decoding them one by one only with flash attention on;
/// llama.cpp decides when layers are on a GPU.
fn flash_policy(settings: &ModelSettings, placement: &devices::Placement) -> i32 {
    use crate::config::FlashAttention;
    match settings.flash_attention {
        FlashAttention::On => FLASH_ATTN_ENABLED,
        FlashAttention::Off => FLASH_ATTN_DISABLED,
        FlashAttention::Auto
            if settings.draft.is_some()
                || (placement.gpu.is_some() && placement.gpu_layers > 0) =>
        {
            FLASH_ATTN_AUTO
        }
        FlashAttention::Auto => FLASH_ATTN_DISABLED,
    }
}

/// The shape of a model's llama.cpp context (its draft model's is the same).
struct ContextShape {
    total: NonZeroU32,
    sequences: u32,
    threads: i32,
    /// Tokens one forward pass takes at most.
    batch: u32,
    /// llama.cpp's flash-attention policy: see [`flash_policy`].
    flash: i32,
}

impl ContextShape {
    fn params(&self) -> LlamaContextParams {
        LlamaContextParams::default()
            .with_n_ctx(Some(self.total))
            .with_n_batch(self.batch)
            .with_n_ubatch(self.batch.min(BATCH_TOKENS))
            .with_n_seq_max(self.sequences)
            .with_kv_unified(false)
            .with_n_threads(self.threads)
            .with_n_threads_batch(self.threads)
            .with_flash_attention_policy(self.flash)
    }
}

/// Loads a draft model's file for `model`, whose tokenizer it must share token for token.
/// The draft goes where the model is: all of it on the model's GPU, if any.
fn load_draft(
    backend: &LlamaBackend,
    path: &Path,
    placement: &devices::Placement,
    model: &LlamaModel,
) -> Result<LlamaModel, EngineError> {
    let params = devices::Placement {
        gpu_layers: if placement.gpu.is_some() { u32::MAX } else { 0 },
        ..placement.clone()
    }
    .params()?;
    let draft = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        LlamaModel::load_from_file(backend, path, &params)
    }))
    .map_err(|_| EngineError::Load("llama.cpp crashed while loading the draft model".into()))?
    .map_err(|e| {
        EngineError::Load(super::describe_file_error(
            path,
            &format!("llama.cpp could not load the draft model ({e})"),
        ))
    })?;
    same_vocabulary(model, &draft).map_err(|why| {
        EngineError::Load(format!(
            "the draft model does not share this model's tokenizer: {why}"
        ))
    })?;
    Ok(draft)
}

/// Whether two models tokenize alike: the same tokens under the same ids, the same BOS
/// and EOS (a draft's guesses are token ids of the model's vocabulary).
fn same_vocabulary(model: &LlamaModel, draft: &LlamaModel) -> Result<(), String> {
    let (a, b) = (model.vocab(), draft.vocab());
    if a.n_tokens() != b.n_tokens() {
        return Err(format!(
            "its vocabulary has {} tokens, this model's {}",
            b.n_tokens(),
            a.n_tokens()
        ));
    }
    if a.bos() != b.bos() || a.eos() != b.eos() {
        return Err("its BOS or EOS token is another one".into());
    }
    match (0..a.n_tokens())
        .map(LlamaToken)
        .find(|&t| a.text(t) != b.text(t))
    {
        Some(t) => Err(format!(
            "token {} is `{}` in it and `{}` in this model",
            t.0,
            b.text(t).map(|c| c.to_string_lossy()).unwrap_or_default(),
            a.text(t).map(|c| c.to_string_lossy()).unwrap_or_default()
        )),
        None => Ok(()),
    }
}

/// How llama.cpp loads a model file: read into memory, not mapped. A file that is
/// replaced in place (truncated and rewritten, as `cp` does) while mapped kills the whole
/// process with SIGBUS on the next page it touches; read, a loaded model no longer depends
/// on its file, as on mistral.rs. The memory budget counts the weights either way.
pub(crate) fn model_params() -> LlamaModelParams {
    LlamaModelParams::default().with_use_mmap(false)
}

/// What a generation's output is held to.
enum Constraint {
    /// JSON valid against this schema.
    Json(serde_json::Value),
    /// This Lark grammar (a native tool-call syntax).
    Lark(String),
}

#[allow(clippy::too_many_arguments)]
fn load_on_this_thread(
    backend: &LlamaBackend,
    path: &Path,
    placement: &devices::Placement,
    chat_template: Option<&str>,
    configured_context: Option<usize>,
    sequences: usize,
    threads: usize,
    batch: u32,
    flash: i32,
) -> Result<Loaded, EngineError> {
    let model =
        LlamaModel::load_from_file(backend, path, &placement.params()?).map_err(|e| {
            // llama.cpp only says "null result": name what the header claims to be.
            let claimed = crate::gguf::read_summary(path).ok().map(|s| {
                format!(
                    "; the file says its architecture is `{}`: its tensors may not match it, or this llama.cpp may not support it",
                    s.architecture().unwrap_or("none")
                )
            });
            EngineError::Load(super::describe_file_error(
                path,
                &format!(
                    "llama.cpp could not load it ({e}{})",
                    claimed.unwrap_or_default()
                ),
            ))
        })?;
    let trained = model.n_ctx_train().max(1) as usize;
    let per_sequence = configured_context.map_or(trained, |c| c.min(trained));
    let total = per_sequence
        .checked_mul(sequences)
        .and_then(|t| u32::try_from(t).ok())
        .and_then(NonZeroU32::new)
        .ok_or_else(|| EngineError::Load("context_length × max_concurrent is too large".into()))?;
    let shape = ContextShape {
        total,
        sequences: sequences as u32,
        threads: i32::try_from(threads).unwrap_or(i32::MAX),
        batch,
        flash,
    };

    let vocab = model.vocab();
    let piece = |token: LlamaToken| {
        String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
    };
    let (bos_text, eos_text) = (piece(vocab.bos()), piece(vocab.eos()));
    let add_bos = vocab.should_add_bos();
    let source = match chat_template {
        Some(t) => t.to_string(),
        None => model
            .meta_val_str("tokenizer.chat_template")
            .unwrap_or_else(|_| CHATML.to_string()),
    };
    let thinks = source.contains("</think>");
    let tool_syntax = ToolSyntax::of_template(&source);
    let opener_token = tool_syntax
        .map(|syntax| syntax.opener())
        .filter(|opener| !opener.is_empty())
        .and_then(
            |opener| match vocab.tokenize(opener.as_bytes(), false, true).as_slice() {
                [token] if vocab.token_to_piece(*token, false, None).is_empty() => Some(*token),
                _ => None,
            },
        );
    let tool_opener = match opener_token {
        Some(token) => format!("<[{}]>", token.0),
        None => serde_json::to_string(tool_syntax.map_or("", |s| s.opener())).unwrap_or_default(),
    };
    let template = ChatTemplate::new(&source, bos_text.clone(), eos_text)
        .map_err(|e| EngineError::Load(format!("chat template: {e}")))?;
    Ok((
        Arc::new(Shared {
            model,
            template,
            add_bos,
            bos_text,
            grammar: OnceLock::new(),
            thinks,
            tool_syntax,
            tool_opener,
            tool_opener_token: opener_token,
        }),
        shape,
        per_sequence,
    ))
}

impl LlamaCppModel {
    async fn tokenize(&self, prompt: &Prompt) -> Result<(Vec<LlamaToken>, bool), EngineError> {
        let shared = self.shared.clone();
        let prompt = prompt.clone();
        tokio::task::spawn_blocking(move || shared.tokenize(&prompt))
            .await
            .map_err(|_| EngineError::Unavailable)?
    }
}

#[async_trait]
impl LoadedModel for LlamaCppModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    async fn prepare(&self, prompt: &Prompt) -> Result<super::PreparedPrompt, EngineError> {
        let (tokens, opens_thinking) = self.tokenize(prompt).await?;
        Ok(super::PreparedPrompt {
            token_count: tokens.len(),
            // llama.cpp token ids are non-negative `i32`s.
            tokens: Some(Arc::new(tokens.iter().map(|t| t.0 as u32).collect())),
            opens_thinking,
        })
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TokenStream, EngineError> {
        let tokens = match &request.tokens {
            Some(tokens) => tokens.iter().map(|&t| LlamaToken(t as i32)).collect(),
            None => self.tokenize(&request.prompt).await?.0,
        };
        let n = request.sampling.n.max(1);
        // A JSON schema, or the grammar of the model's own tool-call syntax.
        let constraint = match (&request.json_schema, request.prompt.tools()) {
            (Some(schema), _) => Some(Constraint::Json(schema.clone())),
            (None, Some(choice)) => self.shared.tool_syntax.and_then(|syntax| {
                super::tools::native_grammar(syntax, choice, &self.shared.tool_opener)
                    .map(Constraint::Lark)
            }),
            (None, None) => None,
        };
        let matchers = match constraint {
            None => None,
            Some(constraint) => {
                // The first grammar walks the whole vocabulary: off the async threads.
                let shared = self.shared.clone();
                let built = tokio::task::spawn_blocking(move || {
                    let factory = shared.grammar_factory()?;
                    (0..n)
                        .map(|_| match &constraint {
                            Constraint::Json(schema) => grammar::matcher(&factory, schema),
                            Constraint::Lark(lark) => grammar::lark_matcher(&factory, lark),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(EngineError::InvalidSchema)
                })
                .await
                .map_err(|_| EngineError::Unavailable)?;
                Some(built?)
            }
        };
        let (out_tx, mut out_rx) = mpsc::unbounded_channel();
        self.jobs
            .send(worker::Job {
                tokens,
                sampling: request.sampling,
                matchers,
                on_token: request.on_token,
                out: out_tx,
            })
            .map_err(|_| EngineError::Unavailable)?;
        // Dropping this stream closes the channel; the worker sees it before its next
        // step and frees the sequence.
        Ok(Box::pin(async_stream::stream! {
            while let Some(item) = out_rx.recv().await {
                let last = matches!(item, Ok(TokenEvent::Done(_)) | Err(_));
                yield item;
                if last {
                    return;
                }
            }
            // The worker went away before `Done` (it crashed, or the model was unloaded).
            yield Err(EngineError::Unavailable);
        }))
    }
}
