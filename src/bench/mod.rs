//! `llamagate bench`: a load client for any OpenAI-compatible server (llamagate, llama.cpp's
//! server, vLLM, ...). For each model × prompt length × concurrency it sends streamed chat
//! requests and reports vLLM's measures: TTFT, TPOT, ITL and end-to-end latency
//! (p50/p95/p99), request throughput, output and prompt tokens per second.

pub mod embeddings;
pub mod overhead;
pub mod report;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Base URL, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Bearer key, if the server wants one.
    pub api_key: Option<String>,
    /// Models to measure (empty: every model the server lists).
    pub models: Vec<String>,
    /// Prompt lengths in words (`0` = a short question).
    pub prompt_words: Vec<usize>,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Tokens to generate per request.
    pub max_tokens: usize,
    /// Requests per concurrency level (at least the concurrency).
    pub requests: usize,
    /// Every request of a scenario sends the same prompt (read once before the
    /// measurements), so a server with a prefix cache answers from it: TTFT on a
    /// repeated prompt. Off: each request opens with a random number (nothing cached).
    pub repeat_prompt: bool,
}

/// Timings of one request.
#[derive(Debug, Clone, Default)]
struct Sample {
    ttft: f64,
    e2e: f64,
    itls: Vec<f64>,
    output_tokens: usize,
    prompt_tokens: usize,
}

/// p50 / p95 / p99 of a measure, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize] * 1e3;
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

/// One scenario's results.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScenarioResult {
    /// Model id.
    pub model: String,
    /// Quantization, when the server says.
    pub quantization: Option<String>,
    /// Model file size in bytes, when the server says.
    pub size_bytes: Option<u64>,
    /// Bits per weight (file size × 8 / parameters), when known.
    pub bits_per_weight: Option<f64>,
    /// Prompt length asked for, in words (0 = short question).
    pub prompt_words: usize,
    /// Mean prompt tokens per request.
    pub prompt_tokens: f64,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests completed.
    pub requests: usize,
    /// Time to first token (ms).
    pub ttft_ms: Percentiles,
    /// Time per output token after the first (ms).
    pub tpot_ms: Percentiles,
    /// Inter-token latency (ms).
    pub itl_ms: Percentiles,
    /// End-to-end latency (ms).
    pub e2e_ms: Percentiles,
    /// Requests per second.
    pub request_throughput: f64,
    /// Generated tokens per second, all clients together.
    pub output_tokens_per_s: f64,
    /// Prompt tokens per second, all clients together.
    pub prompt_tokens_per_s: f64,
}

/// Facts about the machine and build a report was made on.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MachineInfo {
    /// CPU model.
    pub cpu: String,
    /// Logical cores.
    pub cores: usize,
    /// RAM in GiB.
    pub ram_gib: f64,
    /// GPUs, if `nvidia-smi` lists any.
    pub gpus: Vec<String>,
    /// The server's build info (llamagate's `llamagate_build_info`), when available.
    pub server_build: Option<String>,
    /// llamagate version of the benchmark client.
    pub client: String,
    /// CPU features this client binary was built with.
    pub client_features: String,
}

impl MachineInfo {
    /// Reads `/proc` and `nvidia-smi`.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let gpus = std::process::Command::new("nvidia-smi")
            .arg("-L")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_gib: crate::memory::system_memory_bytes().unwrap_or(0) as f64 / (1u64 << 30) as f64,
            gpus,
            server_build: None,
            client: format!("llamagate {}", env!("CARGO_PKG_VERSION")),
            client_features: crate::engine::compiled_cpu_features().join(","),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BenchReport {
    /// Where it ran.
    pub machine: MachineInfo,
    /// The server measured.
    pub base_url: String,
    /// Tokens generated per request.
    pub max_tokens: usize,
    /// Whether each scenario repeated one prompt (prefix-cache hits) or sent fresh ones.
    pub repeated_prompt: bool,
    /// One entry per scenario.
    pub scenarios: Vec<ScenarioResult>,
}

/// A readable failure of the benchmark.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BenchError(pub String);

struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base.trim_end_matches('/')));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        r
    }

    async fn models(&self) -> Result<Vec<Value>, BenchError> {
        let res = self
            .request(reqwest::Method::GET, "/models")
            .send()
            .await
            .map_err(|e| {
                BenchError(format!(
                    "cannot reach {}: {e}. Is the server running, and is the URL its OpenAI base (ending in /v1)?",
                    self.base
                ))
            })?;
        if !res.status().is_success() {
            return Err(BenchError(format!(
                "{}/models answered {}",
                self.base,
                res.status()
            )));
        }
        let body: Value = res
            .json()
            .await
            .map_err(|e| BenchError(format!("{}/models is not JSON: {e}", self.base)))?;
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }

    async fn one(
        &self,
        model: &str,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
    ) -> Result<Sample, BenchError> {
        let body = json!({
            "model": model, "stream": true, "stream_options": {"include_usage": true},
            "max_tokens": max_tokens, "temperature": temperature,
            "ignore_eos": true,
            "messages": [{"role": "user", "content": prompt}]
        });
        let started = Instant::now();
        let res = self
            .request(reqwest::Method::POST, "/chat/completions")
            .json(&body)
            .send()
            .await
            .map_err(|e| BenchError(format!("request failed: {e}")))?;
        if !res.status().is_success() {
            let status = res.status();
            let text = res.text().await.unwrap_or_default();
            return Err(BenchError(format!("server answered {status}: {text}")));
        }
        let mut sample = Sample::default();
        let mut last: Option<Instant> = None;
        let mut chunks = 0usize;
        let mut buffer = String::new();
        let mut body = res.bytes_stream();
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| BenchError(format!("stream broke: {e}")))?;
            buffer.push_str(&String::from_utf8_lossy(&piece));
            while let Some(cut) = buffer.find("\n\n") {
                let event: String = buffer.drain(..cut + 2).collect();
                for line in event.lines() {
                    let Some(data) = line.strip_prefix("data: ") else {
                        continue;
                    };
                    if data == "[DONE]" {
                        continue;
                    }
                    let Ok(v) = serde_json::from_str::<Value>(data) else {
                        continue;
                    };
                    if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                        sample.output_tokens =
                            u["completion_tokens"].as_u64().unwrap_or(0) as usize;
                        sample.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as usize;
                    }
                    let has_text = v["choices"].as_array().is_some_and(|c| {
                        c.iter().any(|c| {
                            c["delta"]["content"]
                                .as_str()
                                .is_some_and(|t| !t.is_empty())
                        })
                    });
                    if has_text {
                        let now = Instant::now();
                        match last {
                            None => sample.ttft = (now - started).as_secs_f64(),
                            Some(prev) => sample.itls.push((now - prev).as_secs_f64()),
                        }
                        last = Some(now);
                        chunks += 1;
                    }
                }
            }
        }
        sample.e2e = started.elapsed().as_secs_f64();
        if sample.output_tokens == 0 {
            sample.output_tokens = chunks;
        }
        Ok(sample)
    }
}

fn prompt_of(words: usize) -> String {
    if words == 0 {
        return "Write a short story about a lighthouse keeper.".into();
    }
    let filler = "The quick brown fox jumps over the lazy dog while the river keeps running. ";
    let mut p = String::from("Summarize the following text, then continue it as a story.\n\n");
    while p.split_whitespace().count() < words {
        p.push_str(filler);
    }
    p
}

/// Runs the plan; `progress(done, total)` after each request.
pub async fn run(
    plan: &BenchPlan,
    mut progress: impl FnMut(usize, usize),
) -> Result<BenchReport, BenchError> {
    let client = std::sync::Arc::new(Client {
        // A connection per request: servers differ in how they end idle keep-alive
        // connections (llama-server's can be closed under a reused one), and a loopback
        // connect costs far less than the millisecond TTFT is reported in.
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| BenchError(e.to_string()))?,
        base: plan.base_url.clone(),
        key: plan.api_key.clone(),
    });
    let listed = client.models().await?;
    let models: Vec<String> = if plan.models.is_empty() {
        listed
            .iter()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect()
    } else {
        plan.models.clone()
    };
    let mut machine = MachineInfo::detect();
    machine.server_build = server_build(&plan.base_url).await;
    let per_level = |c: usize| plan.requests.max(c);
    let total: usize = models.len()
        * plan.prompt_words.len()
        * plan
            .concurrency
            .iter()
            .map(|c| per_level(*c))
            .sum::<usize>();
    let mut done = 0;
    let mut scenarios = Vec::new();
    for model in &models {
        let info = listed.iter().find(|m| m["id"].as_str() == Some(model));
        let size_bytes = info.and_then(|m| m["size_bytes"].as_u64());
        let parameters = info.and_then(|m| m["parameters"].as_u64());
        // Warm up (and load) the model outside the measurements.
        client.one(model, "Hi", 2, 0.0).await?;
        for &words in &plan.prompt_words {
            let prompt = prompt_of(words);
            for &concurrency in &plan.concurrency {
                let n = per_level(concurrency);
                // The one opening of a repeated prompt, read once before the clock starts.
                let fixed = plan
                    .repeat_prompt
                    .then(|| format!("Request {}. {prompt}", rand::random::<u32>()));
                if let Some(fixed) = &fixed {
                    client.one(model, fixed, plan.max_tokens, 0.0).await?;
                }
                let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let started = Instant::now();
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                for _ in 0..concurrency {
                    let (client, next, tx, model, prompt, fixed) = (
                        client.clone(),
                        next.clone(),
                        tx.clone(),
                        model.clone(),
                        prompt.clone(),
                        fixed.clone(),
                    );
                    let max_tokens = plan.max_tokens;
                    tokio::spawn(async move {
                        loop {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            if k >= n {
                                break;
                            }
                            // A distinct opening per request (random, so not even an
                            // earlier run's cache matches): no server answers from a
                            // cached prefix, so prompt speed is measured honestly.
                            let prompt = fixed.clone().unwrap_or_else(|| {
                                format!("Request {}. {prompt}", rand::random::<u32>())
                            });
                            let r = client.one(&model, &prompt, max_tokens, 0.0).await;
                            if tx.send(r).is_err() {
                                break;
                            }
                        }
                    });
                }
                drop(tx);
                let mut samples = Vec::with_capacity(n);
                while let Some(r) = rx.recv().await {
                    samples.push(r?);
                    done += 1;
                    progress(done, total);
                }
                let wall = started.elapsed().as_secs_f64().max(1e-9);
                scenarios.push(summarize(
                    model,
                    info.and_then(|m| m["quantization"].as_str().map(str::to_string)),
                    size_bytes,
                    size_bytes
                        .zip(parameters)
                        .map(|(s, p)| s as f64 * 8.0 / p.max(1) as f64),
                    words,
                    concurrency,
                    &samples,
                    wall,
                ));
            }
        }
    }
    Ok(BenchReport {
        machine,
        base_url: plan.base_url.clone(),
        max_tokens: plan.max_tokens,
        repeated_prompt: plan.repeat_prompt,
        scenarios,
    })
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    model: &str,
    quantization: Option<String>,
    size_bytes: Option<u64>,
    bits_per_weight: Option<f64>,
    prompt_words: usize,
    concurrency: usize,
    samples: &[Sample],
    wall: f64,
) -> ScenarioResult {
    let outputs: usize = samples.iter().map(|s| s.output_tokens).sum();
    let prompts: usize = samples.iter().map(|s| s.prompt_tokens).sum();
    ScenarioResult {
        model: model.to_string(),
        quantization,
        size_bytes,
        bits_per_weight,
        prompt_words,
        prompt_tokens: prompts as f64 / samples.len().max(1) as f64,
        concurrency,
        requests: samples.len(),
        ttft_ms: percentiles(samples.iter().map(|s| s.ttft).collect()),
        tpot_ms: percentiles(
            samples
                .iter()
                .filter(|s| s.output_tokens > 1)
                .map(|s| (s.e2e - s.ttft) / (s.output_tokens - 1) as f64)
                .collect(),
        ),
        itl_ms: percentiles(
            samples
                .iter()
                .flat_map(|s| s.itls.iter().copied())
                .collect(),
        ),
        e2e_ms: percentiles(samples.iter().map(|s| s.e2e).collect()),
        request_throughput: samples.len() as f64 / wall,
        output_tokens_per_s: outputs as f64 / wall,
        prompt_tokens_per_s: prompts as f64 / wall,
    }
}

/// llamagate's build info from `/metrics`, when the server is a llamagate.
async fn server_build(base_url: &str) -> Option<String> {
    let root = base_url.trim_end_matches('/').trim_end_matches("/v1");
    let text = reqwest::get(format!("{root}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("llamagate_build_info{"))
        .map(|l| {
            l.trim_start_matches("llamagate_build_info")
                .trim_end_matches(" 1")
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let p = percentiles((1..=100).map(|i| i as f64 / 1000.0).collect());
        assert_eq!(
            (p.p50.round(), p.p95.round(), p.p99.round()),
            (51.0, 95.0, 99.0)
        );
    }

    #[test]
    fn long_prompts_have_the_asked_length() {
        assert!(prompt_of(512).split_whitespace().count() >= 512);
    }
}
