//! `llamagate bench --overhead`: what the gateway costs. The same model, loaded once,
//! runs the same kind of generation in-process (straight through the engine seam) and
//! through llamagate's HTTP server (routing, queueing, metrics, SSE), alternating
//! between the two so that both see the same machine state. Reports TTFT, decode
//! tokens/s and end-to-end latency of each, and the difference. A mistral.rs model is
//! also run by mistral.rs alone (its own sampler, straight from its channel), the
//! reference the engine's own work — llamagate's sampler, counting, stop matching — is
//! measured against.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures::StreamExt;
use serde::Serialize;

use super::{percentiles, prompt_of, BenchError, Client, MachineInfo, Percentiles, Sample};
use crate::config::{ModelSettings, Settings};
use crate::engine::router::EngineRouter;
use crate::engine::{
    ChatTurn, Engine, EngineError, GenerationRequest, LoadedModel, Prompt, Role, SamplingSettings,
    TokenEvent,
};
use crate::memory::Footprint;

/// One side of the comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathMeasure {
    /// Time to first token (ms).
    pub ttft_ms: Percentiles,
    /// Generated tokens per second after the first token (median over runs).
    pub decode_tokens_per_s: f64,
    /// End-to-end latency (ms).
    pub e2e_ms: Percentiles,
    /// Mean tokens generated per run.
    pub tokens: f64,
}

/// The comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OverheadReport {
    /// Where it ran.
    pub machine: MachineInfo,
    /// The model measured.
    pub model: String,
    /// Its engine.
    pub engine: String,
    /// Runs per side.
    pub runs: usize,
    /// Tokens asked for per run.
    pub max_tokens: usize,
    /// Straight through the engine.
    pub in_process: PathMeasure,
    /// Through the HTTP API.
    pub http: PathMeasure,
    /// The engine's library alone, where the engine has such a path (mistral.rs: its own
    /// sampler, no logits processor, no gateway), in the same alternation.
    pub native: Option<PathMeasure>,
    /// Sampling temperature of every run (0: greedy).
    pub temperature: f64,
    /// HTTP TTFT p50 minus in-process TTFT p50 (ms).
    pub ttft_p50_added_ms: f64,
    /// Decode tokens/s lost through HTTP, in percent of in-process.
    pub decode_loss_percent: f64,
    /// In-process (the engine path) decode tokens/s ÷ the library alone's.
    pub in_process_vs_native_decode: Option<f64>,
}

/// Hands the server a model that is already loaded, so both paths share it.
struct Preloaded {
    model: Arc<dyn LoadedModel>,
    engine: EngineRouter,
}

#[async_trait]
impl Engine for Preloaded {
    async fn load(&self, _settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        Ok(self.model.clone())
    }

    fn device_key(&self, settings: &ModelSettings) -> String {
        self.engine.device_key(settings)
    }

    fn estimate_footprint(&self, settings: &ModelSettings) -> Result<Footprint, String> {
        self.engine.estimate_footprint(settings)
    }
}

async fn in_process(
    model: &dyn LoadedModel,
    prompt: &str,
    max_tokens: usize,
    temperature: f64,
) -> Result<Sample, BenchError> {
    let started = Instant::now();
    let prompt = Prompt::chat(vec![ChatTurn::new(Role::User, prompt.to_string())]);
    let prepared = model.prepare(&prompt).await.map_err(fail)?;
    let prompt_tokens = prepared.token_count;
    let request = GenerationRequest {
        affinity: None,
        prompt,
        sampling: SamplingSettings {
            temperature,
            max_tokens: Some(max_tokens),
            ..SamplingSettings::default()
        },
        prompt_tokens,
        tokens: prepared.tokens,
        on_token: None,
        json_schema: None,
    };
    let stream = model.generate(request).await.map_err(fail)?;
    timed(stream, started, prompt_tokens).await
}

fn fail(e: EngineError) -> BenchError {
    BenchError(format!("in-process generation failed: {e}"))
}

/// Times a generation's events: TTFT at the first text, the gaps after it, the tokens
/// its `Done` counts.
async fn timed(
    mut stream: crate::engine::TokenStream,
    started: Instant,
    prompt_tokens: usize,
) -> Result<Sample, BenchError> {
    let mut sample = Sample {
        prompt_tokens,
        ..Sample::default()
    };
    let mut last: Option<Instant> = None;
    while let Some(event) = stream.next().await {
        match event.map_err(fail)? {
            TokenEvent::Text { text, .. } if !text.is_empty() => {
                let now = Instant::now();
                match last {
                    None => sample.ttft = (now - started).as_secs_f64(),
                    Some(prev) => sample.itls.push((now - prev).as_secs_f64()),
                }
                last = Some(now);
            }
            TokenEvent::Done(usage) => sample.output_tokens = usage.completion_tokens,
            _ => {}
        }
    }
    sample.e2e = started.elapsed().as_secs_f64();
    Ok(sample)
}

/// The same prompt through the library alone (see [`OverheadReport::native`]).
#[cfg(feature = "mistralrs")]
async fn native(
    model: &crate::engine::mistralrs::MistralRsModel,
    prompt: &str,
    max_tokens: usize,
    temperature: f64,
) -> Result<Sample, BenchError> {
    let started = Instant::now();
    let prompt = Prompt::chat(vec![ChatTurn::new(Role::User, prompt.to_string())]);
    let prepared = model.prepare(&prompt).await.map_err(fail)?;
    let tokens = prepared.tokens.map(|t| t.to_vec()).unwrap_or_default();
    let stream = model
        .generate_native(tokens, temperature, max_tokens)
        .await
        .map_err(fail)?;
    timed(stream, started, prepared.token_count).await
}

fn measure(samples: &[Sample]) -> PathMeasure {
    // The median run's rate: one run disturbed by the machine does not move it.
    let mut rates: Vec<f64> = samples
        .iter()
        .filter(|s| s.output_tokens > 1 && s.e2e > s.ttft)
        .map(|s| (s.output_tokens - 1) as f64 / (s.e2e - s.ttft))
        .collect();
    rates.sort_by(f64::total_cmp);
    PathMeasure {
        ttft_ms: percentiles(samples.iter().map(|s| s.ttft).collect()),
        decode_tokens_per_s: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
        e2e_ms: percentiles(samples.iter().map(|s| s.e2e).collect()),
        tokens: samples.iter().map(|s| s.output_tokens as f64).sum::<f64>()
            / samples.len().max(1) as f64,
    }
}

/// What to run in [`run`].
#[derive(Debug, Clone)]
pub struct OverheadPlan {
    /// The model (default: the first configured one).
    pub model: Option<String>,
    /// Runs each way.
    pub runs: usize,
    /// Tokens asked for per run.
    pub max_tokens: usize,
    /// Prompt length in words (0: a short question).
    pub prompt_words: usize,
    /// Sampling temperature (0: greedy).
    pub temperature: f64,
}

/// Runs `plan.runs` generations each way on the model.
pub async fn run(
    mut settings: Settings,
    plan: OverheadPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<OverheadReport, BenchError> {
    let OverheadPlan {
        model,
        runs,
        max_tokens,
        prompt_words,
        temperature,
    } = plan;
    let chosen: ModelSettings = match model.as_deref() {
        Some(name) => settings
            .models
            .iter()
            .find(|m| m.name == name || m.aliases.iter().any(|a| a == name))
            .cloned()
            .ok_or_else(|| BenchError(format!("no model `{name}` in the config")))?,
        None => settings
            .models
            .first()
            .cloned()
            .ok_or_else(|| BenchError("the config has no models".into()))?,
    };
    let cannot_load = |e: EngineError| BenchError(format!("cannot load `{}`: {e}", chosen.name));
    let engine = EngineRouter::default();
    #[cfg(feature = "mistralrs")]
    let native_model = if chosen.engine_kind() == crate::config::EngineKind::MistralRs {
        Some(
            crate::engine::mistralrs::MistralRsEngine
                .load_model(&chosen)
                .await
                .map_err(cannot_load)?,
        )
    } else {
        None
    };
    #[cfg(feature = "mistralrs")]
    let loaded: Arc<dyn LoadedModel> = match &native_model {
        Some(model) => model.clone(),
        None => engine.load(&chosen).await.map_err(cannot_load)?,
    };
    #[cfg(not(feature = "mistralrs"))]
    let loaded = engine.load(&chosen).await.map_err(cannot_load)?;
    settings.models = vec![chosen.clone()];
    settings.server.bind = "127.0.0.1:0".into();
    // A benchmark's requests are no one's usage.
    settings.auth.store = Some(PathBuf::new());
    let built = crate::build_server(
        settings,
        Arc::new(Preloaded {
            model: loaded.clone(),
            engine,
        }),
    )
    .map_err(|e| BenchError(format!("cannot start the server: {e}")))?;
    let handle = built.server.handle();
    actix_web::rt::spawn(built.server);
    let client = Client {
        http: reqwest::Client::new(),
        base: format!("http://{}/v1", built.addr),
        key: None,
    };

    // Warm every path (first-call allocations, the server's lazy load).
    in_process(loaded.as_ref(), "Hi", 2, temperature).await?;
    client.one(&chosen.name, "Hi", 2, temperature).await?;
    #[cfg(feature = "mistralrs")]
    if let Some(model) = &native_model {
        native(model, "Hi", 2, temperature).await?;
    }

    let base = prompt_of(prompt_words);
    let nonce = rand::random::<u32>();
    let mut local = Vec::with_capacity(runs);
    let mut remote = Vec::with_capacity(runs);
    #[allow(unused_mut)]
    let mut alone: Vec<Sample> = Vec::new();
    for i in 0..runs {
        // Every prompt is new, so no run reuses another's cached prefix; the order
        // rotates so no path always runs first.
        let prompts: Vec<String> = (0..3)
            .map(|k| format!("Run {nonce}-{}. {base}", 3 * i + k))
            .collect();
        for (k, prompt) in prompts.iter().enumerate() {
            match (i + k) % 3 {
                0 => {
                    local.push(in_process(loaded.as_ref(), prompt, max_tokens, temperature).await?)
                }
                1 => remote.push(
                    client
                        .one(&chosen.name, prompt, max_tokens, temperature)
                        .await?,
                ),
                _ =>
                {
                    #[cfg(feature = "mistralrs")]
                    if let Some(model) = &native_model {
                        alone.push(native(model, prompt, max_tokens, temperature).await?);
                    }
                }
            }
        }
        progress(i + 1, runs);
    }
    handle.stop(true).await;

    let in_process = measure(&local);
    let http = measure(&remote);
    let native = (!alone.is_empty()).then(|| measure(&alone));
    Ok(OverheadReport {
        machine: MachineInfo::detect(),
        model: chosen.name.clone(),
        engine: chosen.engine_kind().to_string(),
        runs,
        max_tokens,
        ttft_p50_added_ms: http.ttft_ms.p50 - in_process.ttft_ms.p50,
        decode_loss_percent: (1.0 - http.decode_tokens_per_s / in_process.decode_tokens_per_s)
            * 100.0,
        in_process_vs_native_decode: native
            .as_ref()
            .map(|n| in_process.decode_tokens_per_s / n.decode_tokens_per_s),
        in_process,
        http,
        native,
        temperature,
    })
}

/// The comparison as a markdown table.
pub fn markdown(r: &OverheadReport) -> String {
    let row = |name: &str, m: &PathMeasure| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
            m.ttft_ms.p50, m.ttft_ms.p95, m.decode_tokens_per_s, m.e2e_ms.p50, m.tokens
        )
    };
    let native_row = r
        .native
        .as_ref()
        .map(|n| row(&format!("{} alone", r.engine), n))
        .unwrap_or_default();
    let native_line = match (&r.native, r.in_process_vs_native_decode) {
        (Some(n), Some(ratio)) => format!(
            "The engine path decodes at {ratio:.3}× {} alone; TTFT p50 {:+.2} ms.\n",
            r.engine,
            r.in_process.ttft_ms.p50 - n.ttft_ms.p50
        ),
        _ => String::new(),
    };
    format!(
        "Gateway overhead — `{}` ({}), {} runs each way, {} tokens, temperature {}, {} ({} cores)\n\n\
         | path | TTFT p50 (ms) | TTFT p95 (ms) | decode tok/s | e2e p50 (ms) | tokens |\n\
         |---|---:|---:|---:|---:|---:|\n{}{}{}\n\
         HTTP adds {:+.2} ms to TTFT p50 and loses {:.2}% of decode tokens/s.\n{}",
        r.model,
        r.engine,
        r.runs,
        r.max_tokens,
        r.temperature,
        r.machine.cpu,
        r.machine.cores,
        native_row,
        row("in-process", &r.in_process),
        row("HTTP (SSE)", &r.http),
        r.ttft_p50_added_ms,
        r.decode_loss_percent,
        native_line
    )
}
