//! `llamagate bench --embeddings`: embedding throughput of any OpenAI-compatible server
//! (llamagate, `llama-server --embedding`, vLLM, ...). For each model × input length ×
//! batch size it sends `/v1/embeddings` requests of that many distinct inputs from
//! `concurrency` clients and reports inputs/s, tokens/s (the server's `usage`) and
//! request latency. One warm-up request per scenario is not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::{percentiles, BenchError, Client, MachineInfo, Percentiles};

/// What to measure.
#[derive(Debug, Clone)]
pub struct EmbedPlan {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Bearer key, if the server wants one.
    pub api_key: Option<String>,
    /// Models to measure (empty: the models the server lists as embedding models, or
    /// every model when it does not say).
    pub models: Vec<String>,
    /// Words per input.
    pub input_words: Vec<usize>,
    /// Inputs per request.
    pub batch_sizes: Vec<usize>,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Requests per scenario (at least the concurrency).
    pub requests: usize,
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmbedScenario {
    /// Model id.
    pub model: String,
    /// Words per input.
    pub input_words: usize,
    /// Mean tokens per input, from the server's `usage`.
    pub tokens_per_input: f64,
    /// Inputs per request.
    pub batch: usize,
    /// Clients sending at once.
    pub concurrency: usize,
    /// Requests completed.
    pub requests: usize,
    /// Inputs embedded per second, all clients together.
    pub inputs_per_s: f64,
    /// Input tokens per second, all clients together.
    pub tokens_per_s: f64,
    /// Request latency (ms).
    pub latency_ms: Percentiles,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EmbedReport {
    /// Where it ran.
    pub machine: MachineInfo,
    /// The server measured.
    pub base_url: String,
    /// One entry per scenario.
    pub scenarios: Vec<EmbedScenario>,
}

/// `words` words of varied text, different for every `seed` (no server-side cache helps).
fn input_of(words: usize, seed: usize) -> String {
    const WORDS: &[&str] = &[
        "river", "lantern", "harvest", "copper", "meadow", "signal", "granite", "orbit", "velvet",
        "thunder", "compass", "willow", "ember", "glacier", "harbor", "prism", "quartz", "saddle",
        "timber", "violet", "anchor", "beacon", "canyon", "dune",
    ];
    (0..words.max(1))
        .map(|i| WORDS[(seed.wrapping_mul(7919) + i * 31 + i * i) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" {seed}")
}

impl Client {
    /// One embeddings request: (latency in seconds, prompt tokens).
    async fn embed(&self, model: &str, inputs: &[String]) -> Result<(f64, usize), BenchError> {
        let body = json!({"model": model, "input": inputs, "encoding_format": "float"});
        let started = Instant::now();
        let res = self
            .request(reqwest::Method::POST, "/embeddings")
            .json(&body)
            .send()
            .await
            .map_err(|e| BenchError(format!("request failed: {e}")))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| BenchError(format!("reading the answer failed: {e}")))?;
        let elapsed = started.elapsed().as_secs_f64();
        if !status.is_success() {
            return Err(BenchError(format!(
                "server answered {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| BenchError(format!("the answer is not JSON: {e}")))?;
        let got = value["data"].as_array().map_or(0, Vec::len);
        if got != inputs.len() {
            return Err(BenchError(format!(
                "{got} embeddings for {} inputs",
                inputs.len()
            )));
        }
        let tokens = value["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
        Ok((elapsed, tokens))
    }
}

/// Runs the plan; `progress(done, total)` after each request.
pub async fn run(
    plan: &EmbedPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<EmbedReport, BenchError> {
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| BenchError(e.to_string()))?,
        base: plan.base_url.clone(),
        key: plan.api_key.clone(),
    });
    let listed = client.models().await?;
    let models: Vec<String> = if plan.models.is_empty() {
        let ids = |embedding_only: bool| -> Vec<String> {
            listed
                .iter()
                .filter(|m| !embedding_only || m["capabilities"]["embeddings"] == true)
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        };
        let embedding = ids(true);
        if embedding.is_empty() {
            ids(false)
        } else {
            embedding
        }
    } else {
        plan.models.clone()
    };
    if models.is_empty() {
        return Err(BenchError("the server lists no model".into()));
    }
    let mut machine = MachineInfo::detect();
    machine.server_build = super::server_build(&plan.base_url).await;
    let concurrency = plan.concurrency.max(1);
    let requests = plan.requests.max(concurrency);
    let total = models.len() * plan.input_words.len() * plan.batch_sizes.len() * requests;
    let mut done = 0;
    let mut scenarios = Vec::new();
    let mut seed = 0usize;
    for model in &models {
        for &words in &plan.input_words {
            for &batch in &plan.batch_sizes {
                let batch = batch.max(1);
                let mut next_batch = || {
                    let inputs: Vec<String> =
                        (0..batch).map(|i| input_of(words, seed + i)).collect();
                    seed += batch;
                    inputs
                };
                client.embed(model, &next_batch()).await?; // warm-up
                let batches: Vec<Vec<String>> = (0..requests).map(|_| next_batch()).collect();
                let queue = Arc::new(std::sync::Mutex::new(batches));
                let started = Instant::now();
                let mut workers = Vec::new();
                for _ in 0..concurrency {
                    let (client, queue, model) = (client.clone(), queue.clone(), model.clone());
                    workers.push(tokio::spawn(async move {
                        let mut out = Vec::new();
                        loop {
                            let next = queue.lock().ok().and_then(|mut q| q.pop());
                            let Some(inputs) = next else { break };
                            out.push(client.embed(&model, &inputs).await?);
                        }
                        Ok::<_, BenchError>(out)
                    }));
                }
                let mut samples = Vec::new();
                for worker in workers {
                    let results = worker
                        .await
                        .map_err(|e| BenchError(format!("a client crashed: {e}")))??;
                    done += results.len();
                    progress(done, total);
                    samples.extend(results);
                }
                let wall = started.elapsed().as_secs_f64().max(1e-9);
                let tokens: usize = samples.iter().map(|s| s.1).sum();
                let inputs = (samples.len() * batch) as f64;
                scenarios.push(EmbedScenario {
                    model: model.clone(),
                    input_words: words,
                    tokens_per_input: tokens as f64 / inputs.max(1.0),
                    batch,
                    concurrency,
                    requests: samples.len(),
                    inputs_per_s: inputs / wall,
                    tokens_per_s: tokens as f64 / wall,
                    latency_ms: percentiles(samples.iter().map(|s| s.0).collect()),
                });
            }
        }
    }
    Ok(EmbedReport {
        machine,
        base_url: plan.base_url.clone(),
        scenarios,
    })
}

/// The report as a Markdown table.
pub fn markdown(report: &EmbedReport) -> String {
    let m = &report.machine;
    let mut out = format!(
        "Embeddings: {} ({} cores, {:.0} GiB), server {}{}\n\n",
        m.cpu,
        m.cores,
        m.ram_gib,
        report.base_url,
        m.server_build
            .as_deref()
            .map(|b| format!(" ({b})"))
            .unwrap_or_default()
    );
    out.push_str("| model | words/input | tokens/input | batch | clients | inputs/s | tokens/s | p50 ms | p95 ms |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in &report.scenarios {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {} | {} | {:.1} | {:.0} | {:.1} | {:.1} |\n",
            s.model,
            s.input_words,
            s.tokens_per_input,
            s.batch,
            s.concurrency,
            s.inputs_per_s,
            s.tokens_per_s,
            s.latency_ms.p50,
            s.latency_ms.p95
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_have_the_asked_length_and_differ() {
        let a = input_of(16, 1);
        assert_eq!(a.split_whitespace().count(), 17);
        assert_ne!(a, input_of(16, 2));
    }
}
