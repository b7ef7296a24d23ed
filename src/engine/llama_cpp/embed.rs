//! Embedding models on llama.cpp: a context in embeddings mode driven by one worker thread
//! that packs the inputs of every waiting request into each forward pass, one sequence
//! per input, and reads each sequence's pooled vector. A pass holds up to
//! [`EMBED_SEQUENCES`] inputs and as many tokens as the longest input the model takes
//! (at least [`MIN_PASS_TOKENS`], at most [`EMBED_BATCH_TOKENS`]): an encoder attends
//! over the whole pass under a mask, so its cost grows with the square of the pass, and
//! a pass no longer than one full input is the fastest (measured in docs/BENCHMARKS.md). Pooling is the GGUF's `pooling_type`,
//! the model's `pooling` setting, or mean when the file names none. An input is never
//! split across passes, so its tokens are capped by the batch as well as the model's
//! trained context. A request whose client went away is skipped before its next pass.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::oneshot;

use super::super::{
    shape_embedding, EmbedInput, EmbeddingRequest, Embeddings, EngineError, GenerationRequest,
    LoadedModel, ModelFacts, PreparedPrompt, Prompt, TokenStream,
};
use crate::config::{ModelKind, PoolingSetting};

/// Tokens one input, and one forward pass, of an embedding model take at most.
pub const EMBED_BATCH_TOKENS: usize = 2048;
/// Tokens a forward pass may take even when the model's inputs are shorter.
pub const MIN_PASS_TOKENS: usize = 512;
/// Inputs one forward pass of an embedding model takes at most.
pub const EMBED_SEQUENCES: usize = 64;

/// What the loader needs besides the file.
pub(super) struct EmbedOptions {
    pub threads: usize,
    pub pooling: Option<PoolingSetting>,
    pub context_length: Option<usize>,
    /// Where its weights go.
    pub placement: super::devices::Placement,
}

/// One request's inputs, and where its vectors go.
struct Job {
    inputs: Vec<Arc<Vec<u32>>>,
    dimensions: Option<usize>,
    normalize: bool,
    out: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>>,
}

/// A request in the worker: the inputs done so far.
struct Running {
    job: Job,
    next: usize,
    vectors: Vec<Vec<f32>>,
}

/// An embedding GGUF loaded in llama.cpp.
pub(super) struct EmbedModel {
    model: Arc<LlamaModel>,
    jobs: std::sync::mpsc::Sender<Job>,
    facts: ModelFacts,
    vocabulary: u32,
}

/// Loads `path` as an embedding model and starts its worker thread.
pub(super) async fn load(
    backend: &'static LlamaBackend,
    path: &Path,
    name: &str,
    options: EmbedOptions,
) -> Result<EmbedModel, EngineError> {
    let path = path.to_path_buf();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(Arc<LlamaModel>, usize), EngineError>>();
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
    let thread_name = format!("llama.cpp-embed-{name}");
    let threads = i32::try_from(options.threads.max(1)).unwrap_or(i32::MAX);
    let pooling_setting = options.pooling;
    let configured_context = options.context_length;
    let model_name = name.to_string();
    let device = options.placement.describe();
    let offload = options
        .placement
        .gpu
        .as_ref()
        .map(|_| (options.placement.gpu_layers, options.placement.layers));
    let placement = options.placement;
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let loaded = std::panic::catch_unwind(|| {
                LlamaModel::load_from_file(backend, &path, &placement.params()?).map_err(
                    |e| {
                        EngineError::Load(super::super::describe_file_error(
                            &path,
                            &format!("llama.cpp could not load it ({e})"),
                        ))
                    },
                )
            });
            let model = match loaded {
                Ok(Ok(model)) => Arc::new(model),
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
            let pooling = match pooling_of(&model, pooling_setting) {
                Ok(p) => p,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let trained = model.n_ctx_train().max(1) as usize;
            let per_input = configured_context
                .map_or(trained, |c| c.min(trained))
                .min(EMBED_BATCH_TOKENS);
            let pass = per_input.clamp(MIN_PASS_TOKENS, EMBED_BATCH_TOKENS);
            let params = LlamaContextParams::default()
                .with_embeddings(true)
                .with_pooling_type(pooling)
                .with_n_ctx(NonZeroU32::new(pass as u32))
                .with_n_batch(pass as u32)
                // A non-causal model must see a whole input in one micro-batch.
                .with_n_ubatch(pass as u32)
                .with_n_seq_max(EMBED_SEQUENCES as u32)
                .with_kv_unified(true)
                .with_n_threads(threads)
                .with_n_threads_batch(threads);
            let context = match model.new_context(backend, params) {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(EngineError::Load(format!(
                        "llama.cpp could not create an embeddings context ({e})"
                    ))));
                    return;
                }
            };
            if ready_tx.send(Ok((model.clone(), per_input))).is_err() {
                return; // The load timed out and nobody waits for this model.
            }
            let worker = std::panic::AssertUnwindSafe(|| run(context, pass, jobs_rx));
            if std::panic::catch_unwind(worker).is_err() {
                tracing::error!(model = %model_name, "the llama.cpp embedding worker crashed; unload and reload the model");
            }
        })
        .map_err(|e| EngineError::Load(format!("cannot start a llama.cpp thread: {e}")))?;

    let (model, per_input) = match ready_rx.await {
        Err(_) => {
            return Err(EngineError::Load(
                "llama.cpp stopped while loading the file".into(),
            ))
        }
        Ok(result) => result?,
    };
    let length = usize::try_from(model.n_embd_out()).unwrap_or(0);
    let vocabulary = u32::try_from(model.n_vocab()).unwrap_or(0);
    tracing::info!(model = %name, threads, per_input, length, "llama.cpp embedding model ready");
    Ok(EmbedModel {
        model,
        jobs: jobs_tx,
        facts: ModelFacts {
            context_length: Some(per_input),
            device,
            kind: Some(ModelKind::Embedding),
            embedding_length: Some(length),
            thinks: false,
            tool_syntax: None,
            gpu_layers: offload,
        },
        vocabulary,
    })
}

/// The pooling to run: the setting, else the file's, else mean. Rank pooling (rerankers)
/// scores pairs and makes no sentence vector.
fn pooling_of(
    model: &LlamaModel,
    setting: Option<PoolingSetting>,
) -> Result<LlamaPoolingType, EngineError> {
    if let Some(setting) = setting {
        return Ok(match setting {
            PoolingSetting::Mean => LlamaPoolingType::Mean,
            PoolingSetting::Cls => LlamaPoolingType::Cls,
            PoolingSetting::Last => LlamaPoolingType::Last,
        });
    }
    let arch = model
        .meta_val_str("general.architecture")
        .unwrap_or_default();
    let from_file = model
        .meta_val_str(&format!("{arch}.pooling_type"))
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .map(LlamaPoolingType::from);
    match from_file {
        Some(LlamaPoolingType::Rank) => Err(EngineError::Load(
            "this GGUF is a reranker (pooling type rank); llamagate serves embedding models only"
                .into(),
        )),
        Some(p @ (LlamaPoolingType::Mean | LlamaPoolingType::Cls | LlamaPoolingType::Last)) => {
            Ok(p)
        }
        _ => Ok(LlamaPoolingType::Mean),
    }
}

/// The worker: waits for requests, then runs passes until none is left, on a fresh
/// thread each time (see [`super::bursts`]: an idle model holds no OpenMP team).
fn run(mut context: LlamaContext<'_>, pass: usize, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut batch = LlamaBatch::new(pass, 1);
    // Until the model is unloaded (the job sender is dropped).
    while let Ok(first) = jobs.recv() {
        let period = || passes(&mut context, &mut batch, pass, &jobs, first);
        // SAFETY: the context, batch and job receiver are used by the busy period's
        // thread alone while this one waits for it, and none is tied to a thread.
        unsafe { super::bursts::on_fresh_thread(period) };
    }
}

/// Runs passes, starting with `first`'s inputs, until no request is left.
fn passes(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    pass: usize,
    jobs: &std::sync::mpsc::Receiver<Job>,
    first: Job,
) {
    let mut running: VecDeque<Running> = VecDeque::from([Running::new(first)]);
    loop {
        while let Ok(job) = jobs.try_recv() {
            running.push_back(Running::new(job));
        }
        // Requests whose client went away are dropped before they cost a pass.
        running.retain(|r| !r.job.out.is_closed());
        if running.is_empty() {
            return;
        }
        // Inputs of this pass: (request, input) in arrival order, whole inputs only.
        let mut taken: Vec<(usize, usize)> = Vec::new();
        let mut tokens = 0usize;
        'fill: for (r, run) in running.iter().enumerate() {
            for i in run.next..run.job.inputs.len() {
                let len = run.job.inputs[i].len();
                if taken.len() == EMBED_SEQUENCES || (tokens + len > pass && !taken.is_empty()) {
                    break 'fill;
                }
                taken.push((r, i));
                tokens += len;
            }
        }
        batch.clear();
        let mut added = Ok(());
        for (seq, &(r, i)) in taken.iter().enumerate() {
            let input: Vec<LlamaToken> = running[r].job.inputs[i]
                .iter()
                .map(|&t| LlamaToken(t as i32))
                .collect();
            added = batch.add_sequence(&input, seq as i32, true);
            if added.is_err() {
                break;
            }
        }
        context.clear_kv_cache();
        let result = added
            .map_err(|e| EngineError::Generation(format!("llama.cpp batch: {e}")))
            .and_then(|()| {
                context
                    .decode(batch)
                    .map_err(|e| EngineError::Generation(format!("llama.cpp decode: {e}")))
            });
        match result {
            Ok(()) => {
                for (seq, &(r, _)) in taken.iter().enumerate() {
                    let vector = context
                        .embeddings_seq_ith(seq as i32)
                        .map(<[f32]>::to_vec)
                        .unwrap_or_default();
                    let run = &mut running[r];
                    let shaped = shape_embedding(vector, run.job.dimensions, run.job.normalize);
                    run.vectors.push(shaped);
                    run.next += 1;
                }
            }
            Err(e) => {
                // Every request with an input in the failed pass fails; others go on.
                let failed: std::collections::BTreeSet<usize> =
                    taken.iter().map(|&(r, _)| r).collect();
                for r in failed.into_iter().rev() {
                    if let Some(run) = running.remove(r) {
                        let _ = run.job.out.send(Err(e.clone()));
                    }
                }
                continue;
            }
        }
        // Every request whose inputs are all done is answered, wherever it is in the queue.
        let mut i = 0;
        while i < running.len() {
            if running[i].next == running[i].job.inputs.len() {
                if let Some(done) = running.remove(i) {
                    let _ = done.job.out.send(Ok(done.vectors));
                }
            } else {
                i += 1;
            }
        }
    }
}

impl Running {
    fn new(job: Job) -> Self {
        let capacity = job.inputs.len();
        Self {
            job,
            next: 0,
            vectors: Vec::with_capacity(capacity),
        }
    }
}

#[async_trait]
impl LoadedModel for EmbedModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    async fn prepare(&self, _prompt: &Prompt) -> Result<PreparedPrompt, EngineError> {
        Err(EngineError::Rejected(
            "this is an embedding model; it does not generate text".into(),
        ))
    }

    async fn generate(&self, _request: GenerationRequest) -> Result<TokenStream, EngineError> {
        Err(EngineError::Rejected(
            "this is an embedding model; it does not generate text".into(),
        ))
    }

    async fn prepare_input(&self, input: &EmbedInput) -> Result<PreparedPrompt, EngineError> {
        let tokens: Vec<u32> = match input {
            EmbedInput::Tokens(tokens) => {
                if let Some(bad) = tokens.iter().find(|&&t| t >= self.vocabulary) {
                    return Err(EngineError::Rejected(format!(
                        "token id {bad} is outside the model's vocabulary of {} tokens",
                        self.vocabulary
                    )));
                }
                tokens.clone()
            }
            EmbedInput::Text(text) => {
                let model = self.model.clone();
                let text = text.clone();
                // Tokenizing a long text is CPU work: off the async threads.
                tokio::task::spawn_blocking(move || {
                    // The model's own special tokens ([CLS] … [SEP]); text stays text.
                    model
                        .vocab()
                        .tokenize(text.as_bytes(), true, false)
                        .into_iter()
                        .map(|t| t.0 as u32)
                        .collect()
                })
                .await
                .map_err(|_| EngineError::Unavailable)?
            }
        };
        if tokens.is_empty() {
            return Err(EngineError::Rejected(
                "the input is empty once tokenized".into(),
            ));
        }
        Ok(PreparedPrompt {
            token_count: tokens.len(),
            tokens: Some(Arc::new(tokens)),
            opens_thinking: false,
        })
    }

    async fn embed(&self, request: EmbeddingRequest) -> Result<Embeddings, EngineError> {
        let mut inputs = Vec::with_capacity(request.tokens.len());
        for (prepared, input) in request.tokens.iter().zip(&request.inputs) {
            inputs.push(match prepared {
                Some(tokens) => tokens.clone(),
                None => self.prepare_input(input).await?.tokens.unwrap_or_default(),
            });
        }
        let prompt_tokens = inputs.iter().map(|t| t.len()).sum();
        let (out, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                inputs,
                dimensions: request.dimensions,
                normalize: request.normalize,
                out,
            })
            .map_err(|_| EngineError::Unavailable)?;
        // Dropping this future drops `answer`; the worker skips the rest of the job.
        let vectors = answer.await.map_err(|_| EngineError::Unavailable)??;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }
}
