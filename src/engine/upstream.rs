//! The upstream engine: a model served by another OpenAI-compatible server (a GPU box,
//! another llamagate, llama.cpp's server, vLLM). llamagate still queues, meters and
//! authenticates; the upstream generates. Every request is streamed from the upstream
//! and passed on chunk by chunk; dropping the stream closes the connection, which
//! cancels the upstream's generation. A down upstream is a 502, a slow one a 504, and
//! the upstream's own 4xx errors reach the client as they were.
//!
//! A model may name several servers (`source` plus `sources`): a pool. Each attempt goes
//! to the member [`upstream_pool::Members::pick`] chooses; an attempt that fails before
//! its first token (connection refused, 5xx, timeout, a 429) is retried on another
//! member, never one whose tokens already reached the client. Failures eject members
//! with backoff, active health checks (`GET {url}/models`) bring them back, and with
//! every member out the request is a 503 with `Retry-After` at once.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{json, Value};

use super::forward::{self, ForwardApi, ForwardRequest, Forwarded, ForwardedBody, RelayedEvent};
use super::upstream_pool::{self, MemberConfig, Members, NoMember, Taken};
use super::{
    EngineError, FinishReason, GenerationRequest, LoadedModel, ModelFacts, Prompt, TokenEvent,
    TokenLogprob, TokenStream, TokenUsage, TopLogprob,
};
use crate::config::{ModelSettings, ModelSource};

/// Longest error body read from an upstream.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest embeddings answer read from an upstream.
const MAX_EMBEDDINGS_BODY: usize = 256 * 1024 * 1024;

/// Longest single SSE event accepted from an upstream.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Engine for `http(s)://` sources.
#[derive(Debug, Default, Clone)]
pub struct UpstreamEngine;

/// One model at one upstream server or a pool of them.
pub struct UpstreamModel {
    client: reqwest::Client,
    members: Arc<Members>,
    timeout: Duration,
    /// Longest wait for a whole (not streamed) forwarded answer.
    answer_timeout: Duration,
    facts: ModelFacts,
}

/// Most attempts one request makes across a pool's members.
const MAX_ATTEMPTS: usize = 3;

/// Resolves `env:NAME` to the variable's value; any other text is the key itself.
fn resolve_key(raw: &str) -> Result<String, EngineError> {
    match raw.strip_prefix("env:") {
        Some(name) => std::env::var(name).map_err(|_| {
            EngineError::Load(format!(
                "upstream_api_key names the environment variable `{name}`, which is not set"
            ))
        }),
        None => Ok(raw.to_string()),
    }
}

#[async_trait]
impl super::Engine for UpstreamEngine {
    fn device_key(&self, _settings: &ModelSettings) -> String {
        crate::memory::REMOTE_DEVICE.into()
    }

    async fn load(&self, settings: &ModelSettings) -> Result<Arc<dyn LoadedModel>, EngineError> {
        let ModelSource::Upstream { base_url } = &settings.source else {
            return Err(EngineError::Load(
                "the upstream engine needs an http(s):// source".into(),
            ));
        };
        let timeout = Duration::from_secs(settings.upstream_timeout_secs);
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| EngineError::Load(format!("HTTP client: {e}")))?;
        let api_key = settings
            .upstream_api_key
            .as_ref()
            .map(|k| resolve_key(&k.0))
            .transpose()?;
        let model = settings
            .upstream_model
            .clone()
            .unwrap_or_else(|| settings.name.clone());
        let mut configs = vec![MemberConfig {
            url: base_url.clone(),
            model: model.clone(),
            api_key: api_key.clone(),
            weight: 1,
            max_concurrent: None,
        }];
        for member in &settings.sources {
            configs.push(MemberConfig {
                url: member.url.clone(),
                model: member
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| model.clone()),
                api_key: match &member.api_key {
                    Some(k) => Some(resolve_key(&k.0)?),
                    None => api_key.clone(),
                },
                weight: member.weight,
                max_concurrent: member.max_concurrent,
            });
        }
        let policy = upstream_pool::Policy {
            slow_start: Duration::from_secs(settings.slow_start_secs),
            affinity: settings.session_affinity,
            ..Default::default()
        };
        let members = Members::new(&settings.name, configs, policy);
        if members.len() > 1 && settings.health_check_interval_secs > 0 {
            spawn_health_checks(
                client.clone(),
                Arc::downgrade(&members),
                Duration::from_secs(settings.health_check_interval_secs),
                Duration::from_secs(settings.health_check_timeout_secs),
            );
        }
        Ok(Arc::new(UpstreamModel {
            client,
            members,
            timeout,
            answer_timeout: Duration::from_secs(settings.upstream_answer_timeout_secs),
            facts: ModelFacts {
                // The upstream enforces its own window; it is not known here.
                context_length: None,
                device: crate::memory::REMOTE_DEVICE.into(),
                // It serves whatever the other server serves.
                kind: None,
                embedding_length: None,
                thinks: false,
                tool_syntax: None,
                gpu_layers: None,
            },
        }))
    }
}

/// Checks every member of a pool each `interval` (`GET {url}/models`) until the pool is
/// dropped: a passing check brings an ejected member back (slow start), a failing one
/// ejects it.
fn spawn_health_checks(
    client: reqwest::Client,
    members: std::sync::Weak<Members>,
    interval: Duration,
    timeout: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(pool) = members.upgrade() else { break };
            let checks = pool.all().iter().enumerate().map(|(i, member)| {
                let mut call = client
                    .get(format!("{}/models", member.config.url))
                    .timeout(timeout);
                if let Some(key) = &member.config.api_key {
                    call = call.bearer_auth(key);
                }
                async move {
                    let outcome = match call.send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("health check: HTTP {}", r.status().as_u16())),
                        Err(e) if e.is_timeout() => Err("health check timed out".to_string()),
                        Err(_) => Err("health check: cannot connect".to_string()),
                    };
                    (i, outcome)
                }
            });
            for (i, outcome) in futures::future::join_all(checks).await {
                let now = std::time::Instant::now();
                match outcome {
                    Ok(()) => pool.succeeded(i, now),
                    Err(error) => pool.check_failed(i, &error, now),
                }
            }
        }
    });
}

/// An attempt's failure: the error, and whether another member may be tried.
struct Failure {
    error: EngineError,
    /// The member is at fault (down, 5xx, timeout, refused our key): count it.
    member_fault: bool,
    /// The connection was refused: the member is down.
    refused: bool,
}

impl Failure {
    fn of(error: EngineError) -> Self {
        let member_fault = matches!(
            error,
            EngineError::UpstreamUnavailable(_) | EngineError::UpstreamTimeout(_)
        );
        Self {
            error,
            member_fault,
            refused: false,
        }
    }

    /// Whether the request may go to another member: the member failed, or it is
    /// rate-limited (429). A client error (any other 4xx) would fail anywhere.
    fn retryable(&self) -> bool {
        self.member_fault
            || matches!(
                self.error,
                EngineError::UpstreamRejected { status: 429, .. }
            )
    }
}

/// The request body sent upstream: always streamed, usage included.
fn request_body(model: &str, request: &GenerationRequest) -> (&'static str, Value) {
    let s = &request.sampling;
    let chat = matches!(request.prompt, Prompt::Chat(..));
    let mut fields = serde_json::Map::new();
    for (key, value) in [
        ("model", json!(model)),
        ("stream", json!(true)),
        ("stream_options", json!({"include_usage": true})),
        ("temperature", json!(s.temperature)),
        ("top_p", json!(s.top_p)),
        ("n", json!(s.n)),
    ] {
        fields.insert(key.into(), value);
    }
    match &request.prompt {
        Prompt::Chat(turns, options) => {
            let messages: Vec<Value> = turns
                .iter()
                .map(|t| json!({"role": t.role.as_str(), "content": t.content}))
                .collect();
            fields.insert("messages".into(), Value::Array(messages));
            // The upstream's template takes the same variables (vLLM, llama.cpp's server).
            let variables = options.variables();
            if !variables.is_empty() {
                fields.insert("chat_template_kwargs".into(), Value::Object(variables));
            }
            if let Some(effort) = &options.reasoning_effort {
                fields.insert("reasoning_effort".into(), json!(effort));
            }
        }
        Prompt::Text(text) => {
            fields.insert("prompt".into(), Value::String(text.clone()));
        }
    }
    if let Some(max_tokens) = s.max_tokens {
        fields.insert("max_tokens".into(), json!(max_tokens));
    }
    if let Some(seed) = s.seed {
        fields.insert("seed".into(), json!(seed));
    }
    if s.presence_penalty != 0.0 {
        fields.insert("presence_penalty".into(), json!(s.presence_penalty));
    }
    if s.frequency_penalty != 0.0 {
        fields.insert("frequency_penalty".into(), json!(s.frequency_penalty));
    }
    if !s.stop.is_empty() {
        fields.insert("stop".into(), json!(s.stop));
    }
    if s.logprobs {
        if chat {
            fields.insert("logprobs".into(), json!(true));
            fields.insert("top_logprobs".into(), json!(s.top_logprobs));
        } else {
            fields.insert("logprobs".into(), json!(s.top_logprobs));
        }
    }
    if let Some(schema) = &request.json_schema {
        fields.insert(
            "response_format".into(),
            json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema, "strict": true}}),
        );
    }
    (
        if chat {
            "chat/completions"
        } else {
            "completions"
        },
        Value::Object(fields),
    )
}

/// Reads an OpenAI embeddings answer: `count` float vectors, put in `index` order.
fn parse_embeddings(body: &[u8], count: usize) -> Result<super::Embeddings, EngineError> {
    let bad = |why: &str| EngineError::UpstreamUnavailable(format!("bad embeddings answer: {why}"));
    let value: Value = serde_json::from_slice(body).map_err(|_| bad("not JSON"))?;
    let data = value["data"]
        .as_array()
        .ok_or_else(|| bad("no `data` list"))?;
    if data.len() != count {
        return Err(bad(&format!("{} vectors for {count} inputs", data.len())));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; count];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let vector = item["embedding"]
            .as_array()
            .ok_or_else(|| bad("an `embedding` is not a list of numbers"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad("an `embedding` is not a list of numbers"))?;
        match vectors.get_mut(index) {
            Some(slot @ None) => *slot = Some(vector),
            _ => return Err(bad("an `index` is out of range or repeated")),
        }
    }
    Ok(super::Embeddings {
        vectors: vectors.into_iter().flatten().collect(),
        prompt_tokens: value["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize,
    })
}

/// Turns an upstream's error response into an engine error.
fn upstream_error(status: u16, retry_after: Option<u64>, body: &[u8]) -> EngineError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message").and_then(Value::as_str).or(e.as_str()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                text.chars().take(300).collect()
            }
        });
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match status {
        // Our key or our model name is wrong at the upstream: a gateway problem.
        401 | 403 => EngineError::UpstreamUnavailable(format!(
            "the upstream refused llamagate's key (HTTP {status}): {message}; check upstream_api_key"
        )),
        404 => EngineError::UpstreamUnavailable(format!(
            "the upstream does not serve this model (HTTP 404): {message}; check upstream_model"
        )),
        400..=499 => EngineError::UpstreamRejected {
            status,
            message,
            param: field("param"),
            code: field("code"),
            retry_after: if status == 429 {
                Some(retry_after.unwrap_or(1))
            } else {
                None
            },
        },
        _ => EngineError::UpstreamUnavailable(format!("HTTP {status}: {message}")),
    }
}

fn finish_reason(raw: &str) -> FinishReason {
    match raw {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// Log-probabilities of one chunk, chat (`content: [...]`) or legacy (`tokens: [...]`) form.
fn chunk_logprobs(value: Option<&Value>) -> Vec<TokenLogprob> {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let number = |v: Option<&Value>| v.and_then(Value::as_f64).unwrap_or(-9999.0) as f32;
    if let Some(content) = value.get("content").and_then(Value::as_array) {
        return content
            .iter()
            .map(|t| TokenLogprob {
                token: t["token"].as_str().unwrap_or_default().to_string(),
                logprob: number(t.get("logprob")),
                top: t["top_logprobs"]
                    .as_array()
                    .map(|alts| {
                        alts.iter()
                            .map(|a| TopLogprob {
                                token: a["token"].as_str().unwrap_or_default().to_string(),
                                logprob: number(a.get("logprob")),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
    }
    let tokens = value["tokens"].as_array().cloned().unwrap_or_default();
    tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let mut top: Vec<TopLogprob> = value["top_logprobs"]
                .get(i)
                .and_then(Value::as_object)
                .map(|alts| {
                    alts.iter()
                        .map(|(token, lp)| TopLogprob {
                            token: token.clone(),
                            logprob: number(Some(lp)),
                        })
                        .collect()
                })
                .unwrap_or_default();
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            TokenLogprob {
                token: token.as_str().unwrap_or_default().to_string(),
                logprob: number(value["token_logprobs"].get(i)),
                top,
            }
        })
        .collect()
}

/// Splits complete SSE events off the front of `buffer`, returning their `data` payloads.
fn take_events(buffer: &mut Vec<u8>) -> Vec<String> {
    let mut events = Vec::new();
    loop {
        let end = buffer
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|i| (i, 2))
            .into_iter()
            .chain(
                buffer
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| (i, 4)),
            )
            .min_by_key(|&(i, _)| i);
        let Some((at, len)) = end else { break };
        let event: Vec<u8> = buffer.drain(..at + len).collect();
        let text = String::from_utf8_lossy(&event[..at]);
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if !data.is_empty() {
            events.push(data.join("\n"));
        }
    }
    events
}

impl UpstreamModel {
    /// Sends `body` to `{url}/{path}` of `member`; an error status becomes the matching
    /// engine error (its body read within the timeout, at most [`MAX_ERROR_BODY`] bytes).
    async fn post(
        &self,
        member: &MemberConfig,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, Failure> {
        self.send(member, path, body, &[], false, self.timeout)
            .await
    }

    /// [`Self::post`] with request headers passed on; with `pass_client_errors`, a 4xx
    /// the member answered (other than 401/403/404, llamagate's configuration at fault,
    /// and 429, retried elsewhere) is returned as a response, to relay as it is. `wait`
    /// bounds the time to the answer's headers.
    async fn send(
        &self,
        member: &MemberConfig,
        path: &str,
        body: &Value,
        headers: &[(String, String)],
        pass_client_errors: bool,
        wait: Duration,
    ) -> Result<reqwest::Response, Failure> {
        let url = format!("{}/{path}", member.url);
        let mut call = self.client.post(&url).json(&body);
        for (name, value) in headers {
            call = call.header(name, value);
        }
        if let Some(key) = &member.api_key {
            // Anthropic's API takes its key as `x-api-key`.
            call = if path == "messages" {
                call.header("x-api-key", key)
            } else {
                call.bearer_auth(key)
            };
        }
        let timeout = self.timeout;
        let base = &member.url;
        let response = match tokio::time::timeout(wait, call.send()).await {
            Err(_) => {
                let setting = if wait == timeout {
                    "upstream_timeout_secs"
                } else {
                    "upstream_answer_timeout_secs"
                };
                return Err(Failure::of(EngineError::UpstreamTimeout(format!(
                    "no answer from {base} within {} s ({setting})",
                    wait.as_secs()
                ))));
            }
            Ok(Err(e)) if e.is_connect() => {
                let mut failure = Failure::of(EngineError::UpstreamUnavailable(format!(
                    "cannot connect to {base}"
                )));
                failure.refused = true;
                return Err(failure);
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Failure::of(EngineError::UpstreamTimeout(format!(
                    "connecting to {base} timed out"
                ))))
            }
            Ok(Err(e)) => {
                return Err(Failure::of(EngineError::UpstreamUnavailable(format!(
                    "request to {base} failed: {}",
                    e.without_url()
                ))))
            }
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        if pass_client_errors
            && status.is_client_error()
            && !matches!(status.as_u16(), 401 | 403 | 404 | 429)
        {
            return Ok(response);
        }
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let mut body = Vec::new();
            let mut chunks = response.bytes_stream();
            while let Ok(Some(Ok(chunk))) = tokio::time::timeout(timeout, chunks.next()).await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_ERROR_BODY {
                    break;
                }
            }
            return Err(Failure::of(upstream_error(
                status.as_u16(),
                retry_after,
                &body,
            )));
        }
        Ok(response)
    }

    /// Runs `attempt` on members of the pool until one succeeds, a failure that no other
    /// member could avoid, or [`MAX_ATTEMPTS`]. `attempt` succeeds once the member's first
    /// byte (of a streamed answer: its first event) arrived, so nothing a client saw is
    /// ever retried.
    async fn on_members<T, F, Fut>(
        &self,
        user: Option<&str>,
        mut attempt: F,
    ) -> Result<T, EngineError>
    where
        F: FnMut(Taken) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<EngineError> = None;
        while tried.len() < MAX_ATTEMPTS.min(self.members.len()) {
            let taken = match self.members.pick(&tried, std::time::Instant::now(), user) {
                Ok(taken) => taken,
                Err(why) => return Err(self.ran_out(last, why)),
            };
            let index = taken.index;
            tried.push(index);
            let sent = std::time::Instant::now();
            match attempt(taken).await {
                Ok(value) => {
                    self.members.responded_in(index, sent.elapsed());
                    self.members.succeeded(index, std::time::Instant::now());
                    return Ok(value);
                }
                Err(failure) => {
                    if failure.member_fault {
                        self.members.failed(
                            index,
                            &failure.error.to_string(),
                            failure.refused,
                            std::time::Instant::now(),
                        );
                    }
                    if !failure.retryable() {
                        return Err(failure.error);
                    }
                    if tried.len() < self.members.len() {
                        tracing::info!(upstream = %self.members.all()[index].config.url, error = %failure.error, "upstream attempt failed before its first byte: trying another member");
                    }
                    last = Some(failure.error);
                }
            }
        }
        Err(self.ran_out(last, NoMember::AllTried))
    }

    /// The error when no member is left to try: a pool of one passes its member's own
    /// failure on (502, 504, its 429); a larger pool answers 503 with `Retry-After` and
    /// every member's state.
    fn ran_out(&self, last: Option<EngineError>, why: NoMember) -> EngineError {
        match last {
            Some(error) if self.members.len() < 2 => error,
            _ => self.no_member(why),
        }
    }

    /// The 503 for a pool with no member to take a request.
    fn no_member(&self, why: NoMember) -> EngineError {
        let now = std::time::Instant::now();
        let errors: Vec<String> = self
            .members
            .status(now)
            .into_iter()
            .map(|m| match m.last_error {
                Some(e) => format!("{} {} ({e})", m.url, m.state),
                None => format!("{} {}", m.url, m.state),
            })
            .collect();
        let (what, retry_after) = match why {
            NoMember::AllEjected(wait) => (
                "every upstream server is ejected after failures",
                wait.as_secs().max(1),
            ),
            NoMember::AllBusy => ("every upstream server runs its max_concurrent", 1),
            NoMember::AllTried => ("every upstream server failed", 2),
        };
        EngineError::NoUpstream {
            message: format!("{what}: {}", errors.join("; ")),
            retry_after,
        }
    }
}

#[async_trait]
impl LoadedModel for UpstreamModel {
    fn facts(&self) -> &ModelFacts {
        &self.facts
    }

    async fn prepare(&self, _prompt: &Prompt) -> Result<super::PreparedPrompt, EngineError> {
        // Only the upstream knows its tokenizer; its usage numbers are reported at the end.
        Ok(super::PreparedPrompt::default())
    }

    async fn prepare_input(
        &self,
        _input: &super::EmbedInput,
    ) -> Result<super::PreparedPrompt, EngineError> {
        Ok(super::PreparedPrompt::default())
    }

    /// Forwards the inputs to the upstream's `/embeddings` as the client sent them (with
    /// `dimensions`), asking for floats; vectors come back in input order.
    async fn embed(
        &self,
        request: super::EmbeddingRequest,
    ) -> Result<super::Embeddings, EngineError> {
        let inputs: Vec<Value> = request
            .inputs
            .iter()
            .map(|input| match input {
                super::EmbedInput::Text(text) => json!(text),
                super::EmbedInput::Tokens(tokens) => json!(tokens),
            })
            .collect();
        let count = request.inputs.len();
        let dimensions = request.dimensions;
        let inputs = &inputs;
        let timeout = self.timeout;
        self.on_members(None, |taken| async move {
            let member = &self.members.all()[taken.index].config;
            let mut body =
                json!({"model": member.model, "input": inputs, "encoding_format": "float"});
            if let Some(d) = dimensions {
                body["dimensions"] = json!(d);
            }
            let response = self.post(member, "embeddings", &body).await?;
            let bytes = read_whole(response, timeout, &member.url, MAX_EMBEDDINGS_BODY).await?;
            parse_embeddings(&bytes, count).map_err(Failure::of)
        })
        .await
    }

    async fn generate(&self, request: GenerationRequest) -> Result<TokenStream, EngineError> {
        let request = &request;
        self.on_members(request.affinity.as_deref(), |taken| async move {
            let member = &self.members.all()[taken.index].config;
            let (path, body) = request_body(&member.model, request);
            let response = self.post(member, path, &body).await?;
            let mut stream = relay(
                response,
                request,
                self.timeout,
                member.url.clone(),
                self.members.clone(),
                taken,
            );
            // Nothing has reached the client until the first event: a failure up to
            // here may be retried on another member.
            match stream.next().await {
                Some(Err(error)) => Err(Failure::of(error)),
                Some(first) => {
                    let rest: TokenStream =
                        Box::pin(futures::stream::once(async { first }).chain(stream));
                    Ok(rest)
                }
                None => Err(Failure::of(EngineError::UpstreamUnavailable(format!(
                    "{} sent nothing",
                    member.url
                )))),
            }
        })
        .await
    }

    fn upstreams(&self) -> Vec<upstream_pool::MemberStatus> {
        self.members.status(std::time::Instant::now())
    }

    /// Sends the client's body to the member's endpoint for its API, only `model`
    /// rewritten. A streamed answer is relayed event by event once its first event
    /// arrived (before that, a failure is retried on another member); a whole one is read
    /// to its end first (at most [`MAX_FORWARDED_BODY`] bytes), so it is retried too.
    async fn forward(&self, request: ForwardRequest) -> Result<Forwarded, EngineError> {
        let request = &request;
        let timeout = self.timeout;
        // A whole answer's headers come once it is all generated; a stream's at once.
        let streams = request.body.get("stream") == Some(&Value::Bool(true));
        let wait = if streams {
            timeout
        } else {
            self.answer_timeout.max(timeout)
        };
        self.on_members(request.affinity.as_deref(), |taken| async move {
            let member = &self.members.all()[taken.index].config;
            let body = forward::with_model(&request.body, &member.model);
            let response = self
                .send(
                    member,
                    request.api.path(),
                    &body,
                    &request.headers,
                    true,
                    wait,
                )
                .await?;
            let status = response.status().as_u16();
            let headers = passed_headers(response.headers());
            let streamed = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| t.starts_with("text/event-stream"));
            let base = member.url.clone();
            if !streamed {
                let bytes = read_whole(response, timeout, &base, MAX_FORWARDED_BODY).await?;
                let usage = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| forward::usage_in(request.api, &v));
                return Ok(Forwarded {
                    status,
                    headers,
                    body: ForwardedBody::Whole {
                        bytes: bytes.into(),
                        usage,
                    },
                });
            }
            let mut events = relay_events(
                response,
                request.api,
                timeout,
                base,
                self.members.clone(),
                taken,
            );
            // Nothing has reached the client until the first event: a failure up to
            // here may be retried on another member.
            match events.next().await {
                Some(Err(error)) => Err(Failure::of(error)),
                Some(Ok(first)) => Ok(Forwarded {
                    status,
                    headers,
                    body: ForwardedBody::Events(Box::pin(
                        futures::stream::once(async { Ok(first) }).chain(events),
                    )),
                }),
                None => Err(Failure::of(EngineError::UpstreamUnavailable(format!(
                    "{} sent nothing",
                    member.url
                )))),
            }
        })
        .await
    }
}

/// Largest whole (not streamed) answer relayed from an upstream.
const MAX_FORWARDED_BODY: usize = 256 * 1024 * 1024;

/// Answer headers passed back to the client with a forwarded answer.
fn passed_headers(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name == "content-type"
                || name == "retry-after"
                || name.starts_with("x-ratelimit-")
                || name.starts_with("anthropic-ratelimit-")
                || name == "openai-processing-ms"
        })
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect()
}

/// Reads a whole answer, failing when it stops for `timeout`, breaks or passes `limit`.
async fn read_whole(
    response: reqwest::Response,
    timeout: Duration,
    base: &str,
    limit: usize,
) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let mut chunks = response.bytes_stream();
    loop {
        match tokio::time::timeout(timeout, chunks.next()).await {
            Err(_) => {
                return Err(Failure::of(EngineError::UpstreamTimeout(format!(
                    "{base} stopped sending for {} s",
                    timeout.as_secs()
                ))))
            }
            Ok(None) => return Ok(bytes),
            Ok(Some(Err(e))) => {
                return Err(Failure::of(EngineError::UpstreamUnavailable(format!(
                    "reading from {base} failed: {}",
                    e.without_url()
                ))))
            }
            Ok(Some(Ok(chunk))) => {
                if bytes.len() + chunk.len() > limit {
                    return Err(Failure::of(EngineError::UpstreamUnavailable(format!(
                        "the answer from {base} is larger than {limit} bytes"
                    ))));
                }
                bytes.extend_from_slice(&chunk);
            }
        }
    }
}

/// The upstream's events, each as it wrote it. The member's place (`taken`) is held
/// until the stream ends or is dropped; a failure after the first event is counted
/// against the member.
fn relay_events(
    response: reqwest::Response,
    api: ForwardApi,
    timeout: Duration,
    base_url: String,
    members: Arc<Members>,
    taken: Taken,
) -> futures::stream::BoxStream<'static, Result<RelayedEvent, EngineError>> {
    let mut bytes = response.bytes_stream();
    let index = taken.index;
    Box::pin(async_stream::stream! {
        let _taken = taken;
        let mut buffer: Vec<u8> = Vec::new();
        let mut first = true;
        loop {
            let failure = match tokio::time::timeout(timeout, bytes.next()).await {
                Err(_) => Some(EngineError::UpstreamTimeout(format!(
                    "{base_url} stopped sending for {} s", timeout.as_secs()
                ))),
                Ok(None) => {
                    if !buffer.iter().all(u8::is_ascii_whitespace) {
                        // A last event without its blank line: relay it completed.
                        buffer.extend_from_slice(b"\n\n");
                        yield Ok(forward::read_event(api, std::mem::take(&mut buffer)));
                    }
                    return;
                }
                Ok(Some(Err(_))) => Some(EngineError::UpstreamUnavailable(format!(
                    "{base_url} broke the connection mid-answer"
                ))),
                Ok(Some(Ok(chunk))) => {
                    buffer.extend_from_slice(&chunk);
                    None
                }
            };
            if let Some(error) = failure {
                if !first {
                    members.failed(index, &error.to_string(), false, std::time::Instant::now());
                }
                yield Err(error);
                return;
            }
            for event in forward::split_events(&mut buffer) {
                first = false;
                yield Ok(forward::read_event(api, event));
            }
            if buffer.len() > MAX_EVENT_BYTES {
                yield Err(EngineError::UpstreamUnavailable("the upstream sent an oversized event".into()));
                return;
            }
        }
    })
}

/// The upstream's streamed answer as token events. The member's place (`taken`) is held
/// until the stream ends or is dropped; a failure after the first event is counted
/// against the member (it cannot be retried: the client has seen tokens).
fn relay(
    response: reqwest::Response,
    request: &GenerationRequest,
    timeout: Duration,
    base_url: String,
    members: Arc<Members>,
    taken: Taken,
) -> TokenStream {
    let n = request.sampling.n.max(1);
    let on_token = request.on_token.clone();
    let mut bytes = response.bytes_stream();
    let index = taken.index;
    let inner = async_stream::stream! {
        let mut buffer: Vec<u8> = Vec::new();
        let mut finished = vec![false; n];
        let mut usage: Option<TokenUsage> = None;
        let mut chunks_seen = 0usize;
        'read: loop {
            let next = match tokio::time::timeout(timeout, bytes.next()).await {
                Err(_) => {
                    yield Err(EngineError::UpstreamTimeout(format!(
                        "{base_url} stopped sending for {} s", timeout.as_secs()
                    )));
                    return;
                }
                Ok(next) => next,
            };
            match next {
                None => break 'read,
                Some(Err(_)) => {
                    yield Err(EngineError::UpstreamUnavailable(format!(
                        "{base_url} broke the connection mid-answer"
                    )));
                    return;
                }
                Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
            }
            if buffer.len() > MAX_EVENT_BYTES {
                yield Err(EngineError::UpstreamUnavailable("the upstream sent an oversized event".into()));
                return;
            }
            for data in take_events(&mut buffer) {
                if data.trim() == "[DONE]" {
                    break 'read;
                }
                let Ok(value) = serde_json::from_str::<Value>(&data) else {
                    continue;
                };
                if let Some(error) = value.get("error") {
                    let message = error
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("the upstream failed mid-answer");
                    yield Err(EngineError::UpstreamUnavailable(message.to_string()));
                    return;
                }
                if let Some(u) = value.get("usage").filter(|u| !u.is_null()) {
                    let count = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
                    usage = Some(TokenUsage {
                        prompt_tokens: count("prompt_tokens"),
                        completion_tokens: count("completion_tokens"),
                        cached_prompt_tokens: u
                            .pointer("/prompt_tokens_details/cached_tokens")
                            .and_then(Value::as_u64)
                            .unwrap_or(0) as usize,
                            ..Default::default()
                    });
                }
                let choices = value.get("choices").and_then(Value::as_array).cloned().unwrap_or_default();
                for c in choices {
                    let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
                    if index >= n || finished[index] {
                        continue;
                    }
                    let text = c
                        .get("delta")
                        .and_then(|d| d.get("content"))
                        .or_else(|| c.get("text"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let logprobs = chunk_logprobs(c.get("logprobs"));
                    if !text.is_empty() || !logprobs.is_empty() {
                        chunks_seen += 1;
                        if let Some(callback) = &on_token {
                            callback();
                        }
                        yield Ok(TokenEvent::Text { choice: index, text, logprobs });
                    }
                    if let Some(reason) = c.get("finish_reason").and_then(Value::as_str) {
                        finished[index] = true;
                        yield Ok(TokenEvent::Finished { choice: index, reason: finish_reason(reason) });
                    }
                }
            }
        }
        if !finished.iter().all(|f| *f) {
            yield Err(EngineError::UpstreamUnavailable(format!(
                "{base_url} ended the stream before every choice finished"
            )));
            return;
        }
        yield Ok(TokenEvent::Done(usage.unwrap_or(TokenUsage {
            prompt_tokens: 0,
            completion_tokens: chunks_seen,
            cached_prompt_tokens: 0,
            ..Default::default()
        })));
    };
    let stream = async_stream::stream! {
        let _taken = taken;
        let mut first = true;
        let inner = inner;
        futures::pin_mut!(inner);
        while let Some(item) = inner.next().await {
            if let (Err(e), false) = (&item, first) {
                members.failed(index, &e.to_string(), false, std::time::Instant::now());
            }
            first = false;
            yield item;
        }
    };
    Box::pin(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_across_reads() {
        let mut buffer = b"data: {\"a\":1}\n\ndata: [DO".to_vec();
        assert_eq!(take_events(&mut buffer), vec!["{\"a\":1}".to_string()]);
        buffer.extend_from_slice(b"NE]\r\n\r\n: comment\n\n");
        assert_eq!(take_events(&mut buffer), vec!["[DONE]".to_string()]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn upstream_errors_map_to_gateway_statuses() {
        let body = br#"{"error":{"message":"too long","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        match upstream_error(400, None, body) {
            EngineError::UpstreamRejected {
                status,
                message,
                param,
                code,
                ..
            } => {
                assert_eq!(status, 400);
                assert_eq!(message, "too long");
                assert_eq!(param.as_deref(), Some("messages"));
                assert_eq!(code.as_deref(), Some("context_length_exceeded"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            upstream_error(429, Some(7), b""),
            EngineError::UpstreamRejected {
                retry_after: Some(7),
                ..
            }
        ));
        assert!(matches!(
            upstream_error(500, None, b"boom"),
            EngineError::UpstreamUnavailable(m) if m.contains("boom")
        ));
        assert!(matches!(
            upstream_error(401, None, b"{}"),
            EngineError::UpstreamUnavailable(m) if m.contains("upstream_api_key")
        ));
    }

    #[test]
    fn legacy_and_chat_logprobs_parse() {
        let chat = json!({"content":[{"token":"Hi","logprob":-0.5,"top_logprobs":[{"token":"Hi","logprob":-0.5},{"token":"Yo","logprob":-1.5}]}]});
        let parsed = chunk_logprobs(Some(&chat));
        assert_eq!(parsed[0].token, "Hi");
        assert_eq!(parsed[0].top.len(), 2);
        let legacy =
            json!({"tokens":["a"],"token_logprobs":[-0.1],"top_logprobs":[{"a":-0.1,"b":-2.0}]});
        let parsed = chunk_logprobs(Some(&legacy));
        assert_eq!(parsed[0].top[0].token, "a");
        assert!((parsed[0].logprob + 0.1).abs() < 1e-6);
    }
}
