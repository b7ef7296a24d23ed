//! Typed settings: `config/default.toml` (or `--config FILE`) < `LLAMAGATE__SECTION__KEY`
//! environment variables < CLI flags, deserialized into [`Settings`] and checked for the
//! cross-field rules (unique model names and aliases, sane limits) before anything starts.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::memory::{ByteSize, NumberOrText};

/// Why the settings could not be used; every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named on the command line does not exist.
    #[error("config file `{0}` does not exist; pass an existing file with --config")]
    MissingFile(PathBuf),
    /// The file or environment could not be parsed into settings.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// The settings parse but break a rule.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Everything llamagate needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// HTTP server settings.
    #[serde(default)]
    pub server: ServerSettings,
    /// Bounds applied to every request before it reaches an engine.
    #[serde(default)]
    pub limits: LimitSettings,
    /// How models share memory and time.
    #[serde(default)]
    pub scheduler: SchedulerSettings,
    /// API keys and which routes need one.
    #[serde(default)]
    pub auth: AuthSettings,
    /// The Responses API's store.
    #[serde(default)]
    pub responses: ResponsesSettings,
    /// The models this gateway serves.
    #[serde(default)]
    pub models: Vec<ModelSettings>,
    /// `[model_defaults]`: the fields of a `[[models]]` entry (all but `name`, `aliases`
    /// and `source`) that models found in `scheduler.models_dir` get.
    #[serde(default)]
    pub model_defaults: serde_json::Map<String, serde_json::Value>,
    /// The file (and command-line overrides) these settings came from: what a reload
    /// reads again. None for settings built in code.
    #[serde(skip)]
    pub loaded_from: Option<(PathBuf, CliOverrides)>,
}

/// `[responses]`: the in-memory store behind `store: true`, `previous_response_id` and
/// `GET /v1/responses/{id}` (lost on restart). Least recently used responses go first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesSettings {
    /// Most responses kept.
    pub store_max_entries: usize,
    /// Most bytes of text kept (conversations and outputs together).
    pub store_max_bytes: usize,
    /// Seconds a response is kept after it was made.
    pub store_max_age_secs: u64,
}

impl Default for ResponsesSettings {
    fn default() -> Self {
        Self {
            store_max_entries: 1024,
            store_max_bytes: 64 * 1024 * 1024,
            store_max_age_secs: 24 * 3600,
        }
    }
}

/// `[server]`: where and how the HTTP server listens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on, e.g. `127.0.0.1:8080` (`:0` picks a free port).
    pub bind: String,
    /// Largest request body accepted, in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// HTTP worker threads (0 = one per core).
    pub workers: usize,
    /// How long a client may take to send its request head, in seconds.
    pub client_request_timeout_secs: u64,
    /// How long a client may take to send a whole request body once its head arrived, in
    /// seconds; past it the request gets 408 and the connection is closed.
    pub body_timeout_secs: u64,
    /// Longest pause between two pieces of a request body, in seconds (408 past it).
    pub body_idle_timeout_secs: u64,
    /// A streamed answer whose client has read nothing for this many seconds (while
    /// tokens wait to be sent) is cut: its generation is cancelled, the connection closed.
    pub write_timeout_secs: u64,
    /// Seconds between SSE keep-alive comments while a stream waits for tokens.
    pub keep_alive_interval_secs: u64,
    /// Browser origins allowed to call the API (CORS), e.g. `http://192.168.1.20:3000`;
    /// `*` allows any. None by default.
    pub cors_allowed_origins: Vec<String>,
    /// On SIGTERM/SIGINT, seconds running requests get to finish before they are cut.
    pub shutdown_grace_secs: u64,
    /// Answer 400 for a request parameter the server would otherwise ignore (e.g.
    /// `logit_bias`, `audio`); off = ignore it and name it in `x-llamagate-ignored-params`.
    pub strict_params: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            max_body_bytes: 4 * 1024 * 1024,
            workers: 0,
            client_request_timeout_secs: 30,
            body_timeout_secs: 60,
            body_idle_timeout_secs: 15,
            write_timeout_secs: 30,
            keep_alive_interval_secs: 15,
            cors_allowed_origins: Vec::new(),
            shutdown_grace_secs: 30,
            strict_params: true,
        }
    }
}

/// `[limits]`: hard bounds on requests, checked before a request is queued.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitSettings {
    /// Most messages in one chat request.
    pub max_messages: usize,
    /// Most bytes of prompt text (all messages or all prompts together).
    pub max_prompt_bytes: usize,
    /// Most choices (`n`) per request.
    pub max_n: usize,
    /// Most prompts in one `/v1/completions` request.
    pub max_prompts: usize,
    /// Most stop sequences per request (OpenAI allows 4).
    pub max_stop_sequences: usize,
    /// Longest stop sequence, in bytes.
    pub max_stop_bytes: usize,
    /// Most `top_logprobs` per token (OpenAI allows 20).
    pub max_top_logprobs: usize,
    /// Most alternatives per token for `/v1/completions`' `logprobs` (OpenAI allows 5).
    pub max_completion_logprobs: usize,
    /// Most functions in `tools` (OpenAI allows 128; each one grows the grammar).
    pub max_tools: usize,
    /// Most inputs in one `/v1/embeddings` request (OpenAI allows 2048).
    pub max_embedding_inputs: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_prompt_bytes: 1024 * 1024,
            max_n: 8,
            max_prompts: 16,
            max_stop_sequences: 4,
            max_stop_bytes: 256,
            max_top_logprobs: 20,
            max_completion_logprobs: 5,
            max_tools: 64,
            max_embedding_inputs: 2048,
        }
    }
}

/// A secret string: compared in constant time, never printed.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `[auth]`: API keys (`Authorization: Bearer <key>`) and the routes that need one.
/// Keys also come from `LLAMAGATE_API_KEYS` / `LLAMAGATE_ADMIN_KEYS` (comma-separated)
/// and from `api_keys_file` (one per line).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Keys accepted on `/v1/*` (and on other protected routes).
    pub api_keys: Vec<Secret>,
    /// A file with one key per line (`#` comments allowed).
    pub api_keys_file: Option<PathBuf>,
    /// Keys for `/admin/*`; without any, admin routes answer loopback clients only.
    pub admin_keys: Vec<Secret>,
    /// Require a key for `/metrics`.
    pub protect_metrics: bool,
    /// Require a key for `/health`.
    pub protect_health: bool,
    /// Require a key for the chat page `/`.
    pub protect_ui: bool,
    /// Require a key for `/docs` and `/openapi.json`.
    pub protect_docs: bool,
    /// Named keys (`[[auth.keys]]`), each with optional limits and a model allow-list.
    pub keys: Vec<NamedKeySettings>,
    /// The SQLite file that keeps usage per key and model, keys made at run time
    /// (`/admin/keys`) and disabled keys across restarts. Default
    /// `$XDG_DATA_HOME/llamagate/llamagate.db` (else `~/.local/share/llamagate/…`);
    /// `""` keeps them in memory, for one run.
    pub store: Option<PathBuf>,
    /// Seconds between writes of the usage counters to `store`: a crash loses at most
    /// this much usage.
    pub store_flush_secs: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            api_keys_file: None,
            admin_keys: Vec::new(),
            protect_metrics: false,
            protect_health: false,
            protect_ui: false,
            protect_docs: false,
            keys: Vec::new(),
            store: None,
            store_flush_secs: 5,
        }
    }
}

/// Names that label callers without a named key in metrics and usage.
pub const RESERVED_KEY_NAMES: [&str; 3] = ["anonymous", "unnamed", "admin"];

/// One named API key (`[[auth.keys]]`): who it is in metrics and usage, what it may use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKeySettings {
    /// Its name in metrics, usage and errors (letters, digits, `-`, `_`, `.`); never the key.
    pub name: String,
    /// The key itself, `env:VARIABLE` (read from the environment), or `sha256:<hex>` (the
    /// SHA-256 of the key, so the config file holds no secret).
    pub key: Secret,
    /// Models (names or aliases) it may use; absent = all.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    pub tpm: Option<u64>,
    /// Requests at once.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Tokens (prompt + completion) per UTC day.
    #[serde(default)]
    pub daily_tokens: Option<u64>,
}

impl NamedKeySettings {
    /// The SHA-256 digest of the key it accepts (read from the environment for `env:`).
    pub fn digest(&self) -> Result<[u8; 32], ConfigError> {
        use sha2::Digest;
        let invalid = |m: String| ConfigError::Invalid(format!("auth.keys `{}`: {m}", self.name));
        let raw = self.key.0.trim();
        if let Some(hex) = raw.strip_prefix("sha256:") {
            let hex = hex.trim();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("a sha256: key is 64 hexadecimal digits".into()));
            }
            let mut digest = [0u8; 32];
            for (i, byte) in digest.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| invalid("not hexadecimal".into()))?;
            }
            return Ok(digest);
        }
        let key = match raw.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map_err(|_| invalid(format!("the environment variable `{var}` is not set")))?,
            None => raw.to_string(),
        };
        if key.len() < 8 {
            return Err(invalid("keys must be at least 8 characters long".into()));
        }
        Ok(sha2::Sha256::digest(key.as_bytes()).into())
    }

    /// Checks name, limits and allow-list: on failure the field at fault and why (the
    /// key itself is checked by [`Self::digest`]).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                "name",
                format!(
                    "name `{}`: 1 to 64 letters, digits, `-`, `_` or `.`",
                    self.name
                ),
            ));
        }
        if RESERVED_KEY_NAMES.contains(&self.name.as_str()) {
            return Err((
                "name",
                format!(
                    "name `{}` is reserved (it labels callers without a named key)",
                    self.name
                ),
            ));
        }
        for (field, zero) in [
            ("rpm", self.rpm == Some(0)),
            ("tpm", self.tpm == Some(0)),
            ("max_concurrent", self.max_concurrent == Some(0)),
            ("daily_tokens", self.daily_tokens == Some(0)),
        ] {
            if zero {
                return Err((field, format!("{field} must be at least 1 (or absent)")));
            }
        }
        if self.models.as_ref().is_some_and(Vec::is_empty) {
            return Err((
                "models",
                "models is an allow-list; an empty one allows nothing (remove the key instead)"
                    .into(),
            ));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(field, message)| {
            ConfigError::Invalid(if field == "name" {
                format!("auth.keys {message}")
            } else {
                format!("auth.keys `{}`: {message}", self.name)
            })
        })?;
        self.digest().map(|_| ())
    }
}

impl AuthSettings {
    /// Adds keys from the environment and the key file.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let from_env = |name: &str| -> Vec<Secret> {
            std::env::var(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(|k| Secret(k.to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        self.api_keys.extend(from_env("LLAMAGATE_API_KEYS"));
        self.admin_keys.extend(from_env("LLAMAGATE_ADMIN_KEYS"));
        if let Some(file) = &self.api_keys_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::Invalid(format!(
                    "auth.api_keys_file `{}` cannot be read: {e}",
                    file.display()
                ))
            })?;
            self.api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|k| Secret(k.to_string())),
            );
        }
        if self
            .api_keys
            .iter()
            .chain(&self.admin_keys)
            .any(|k| k.0.len() < 8)
        {
            return Err(ConfigError::Invalid(
                "API keys must be at least 8 characters long".into(),
            ));
        }
        Ok(())
    }

    /// Where the store lives: `None` in memory (`store = ""`, or no home folder to put
    /// it in).
    pub fn store_path(&self) -> Option<PathBuf> {
        match &self.store {
            Some(path) if path.as_os_str().is_empty() => None,
            Some(path) => Some(path.clone()),
            None => std::env::var_os("XDG_DATA_HOME")
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME")
                        .filter(|d| !d.is_empty())
                        .map(|h| PathBuf::from(h).join(".local/share"))
                })
                .map(|d| d.join("llamagate/llamagate.db")),
        }
    }

    /// Checks the named keys: names valid and unique, keys readable, limits sane.
    fn validate_keys(&self) -> Result<(), ConfigError> {
        if self.store_flush_secs == 0 {
            return Err(ConfigError::Invalid(
                "auth.store_flush_secs must be at least 1".into(),
            ));
        }
        let mut names = HashSet::new();
        for key in &self.keys {
            key.validate()?;
            if !names.insert(key.name.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "auth.keys: the name `{}` is used twice",
                    key.name
                )));
            }
        }
        Ok(())
    }
}

/// `[scheduler]`: memory budgets, model count, queue and fairness defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// Memory models may use on the CPU (RAM); default 70% of the machine's RAM.
    pub cpu_memory_budget: Option<ByteSize>,
    /// Memory models may use on each GPU; default 90% of the GPU's memory.
    pub gpu_memory_budget: Option<ByteSize>,
    /// Most models loaded at once (default: no limit but memory).
    pub max_loaded_models: Option<usize>,
    /// Default seconds a request may wait (queue, memory, load) before 503.
    pub queue_timeout_secs: u64,
    /// While another model waits for its memory, a loaded model admits at most this many
    /// more requests before it drains and makes room (the fairness bound).
    pub fairness_batch: usize,
    /// A folder whose GGUF files are served without a `[[models]]` entry (default
    /// `models`, relative to the working directory; `""` turns it off). Watched: files
    /// added, replaced or removed are noticed while serving.
    pub models_dir: PathBuf,
    /// Seconds between rescans of `models_dir` beside the file watcher (its fallback).
    pub models_dir_rescan_secs: u64,
}

impl SchedulerSettings {
    /// `models_dir`, unless turned off.
    pub fn models_dir(&self) -> Option<&Path> {
        (!self.models_dir.as_os_str().is_empty()).then_some(self.models_dir.as_path())
    }
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            cpu_memory_budget: None,
            gpu_memory_budget: None,
            max_loaded_models: None,
            queue_timeout_secs: 120,
            fairness_batch: 8,
            models_dir: PathBuf::from("models"),
            models_dir_rescan_secs: 10,
        }
    }
}

/// A duration written as seconds (`300`) or with a unit (`"90s"`, `"5m"`, `"1h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSetting(pub Duration);

impl DurationSetting {
    /// Parses `300`, `"300"`, `"90s"`, `"5m"`, `"2h"`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let (number, factor) = match s.chars().last() {
            Some('s') => (&s[..s.len() - 1], 1),
            Some('m') => (&s[..s.len() - 1], 60),
            Some('h') => (&s[..s.len() - 1], 3600),
            _ => (s, 1),
        };
        number
            .trim()
            .parse::<u64>()
            .map(|n| Self(Duration::from_secs(n * factor)))
            .map_err(|_| {
                format!("`{raw}` is not a duration; write e.g. 300, \"90s\", \"5m\" or \"1h\"")
            })
    }
}

impl<'de> Deserialize<'de> for DurationSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Self(Duration::from_secs(n))),
            NumberOrText::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Which hardware a model runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSetting {
    /// The GPU when the binary was built with one and it is present, else the CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// CUDA device N (needs the `cuda` feature).
    Cuda(usize),
    /// Metal device N (needs the `metal` feature).
    Metal(usize),
    /// Vulkan device N (needs the `vulkan` feature; the llama.cpp engine only).
    Vulkan(usize),
}

impl DeviceSetting {
    /// Whether this names a GPU (not `auto`, not `cpu`).
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::Cuda(_) | Self::Metal(_) | Self::Vulkan(_))
    }
}

impl fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
            Self::Vulkan(n) => write!(f, "vulkan:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        let ordinal = |rest: &str| -> Result<usize, String> {
            if rest.is_empty() {
                return Ok(0);
            }
            rest.strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    format!("`{s}` is not a device; use auto, cpu, cuda:N, vulkan:N or metal:N")
                })
        };
        match s.as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            _ if s.starts_with("cuda") => Ok(Self::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(Self::Metal(ordinal(&s[5..])?)),
            _ if s.starts_with("vulkan") => Ok(Self::Vulkan(ordinal(&s[6..])?)),
            _ => Err(format!(
                "`{s}` is not a device; use auto, cpu, cuda:N, vulkan:N or metal:N"
            )),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How many of a model's layers the llama.cpp engine puts on its GPU (`gpu_layers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// As many as the device's memory budget holds next to the models already there
    /// (all of them when the model fits), the rest on the CPU.
    #[default]
    Auto,
    /// Exactly N repeating layers (more than the model has is refused at load, with the
    /// numbers); `0` keeps the weights on the CPU.
    Count(u32),
}

impl fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for GpuLayers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        let bad = |what: &str| {
            serde::de::Error::custom(format!(
                "gpu_layers `{what}` is neither \"auto\" nor a number of layers"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Number(n) => u32::try_from(n)
                .map(Self::Count)
                .map_err(|_| bad(&n.to_string())),
            Raw::Text(t) if t.trim().eq_ignore_ascii_case("auto") => Ok(Self::Auto),
            Raw::Text(t) => t.trim().parse().map(Self::Count).map_err(|_| bad(&t)),
        }
    }
}

/// How the llama.cpp engine splits a model over several GPUs (`split_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Whole layers (weights and KV cache) on each GPU, in proportion to its free memory.
    #[default]
    Layer,
    /// Each weight matrix's rows split across the GPUs (CUDA only), the rest on the first.
    Row,
}

impl fmt::Display for SplitMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Layer => "layer",
            Self::Row => "row",
        })
    }
}

/// Flash attention for a llama.cpp model (`flash_attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashAttention {
    /// Off on the CPU alone (llama.cpp's CPU kernel for it is the slower one there) unless
    /// the model has a `draft`; llama.cpp's own choice when layers are on a GPU or drafted.
    #[default]
    Auto,
    /// Always on.
    On,
    /// Always off.
    Off,
}

/// Where a model's GGUF file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file on this machine.
    File(PathBuf),
    /// `hf://owner/repo/file.gguf[@revision]`: fetched from the Hugging Face hub into its
    /// cache before the first load (any local engine).
    HuggingFace {
        /// `owner/repo`.
        repo: String,
        /// File name inside the repository.
        file: String,
        /// Branch, tag or commit; `main` when absent.
        revision: Option<String>,
    },
    /// `http(s)://host:port/v1`: an OpenAI-compatible server that does the inference
    /// (another llamagate, llama.cpp's server, vLLM, ...).
    Upstream {
        /// The base URL, without a trailing slash (requests go to `{base_url}/chat/completions`).
        base_url: String,
    },
}

impl ModelSource {
    /// Parses a `source` value: `hf://owner/repo/file.gguf[@rev]`, `http(s)://host/v1` or a
    /// file path.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with("http://") || raw.starts_with("https://") {
            let base = raw.trim_end_matches('/');
            let host = base.split_once("://").map_or("", |(_, rest)| rest);
            if host.is_empty() || host.starts_with('/') || base.contains(char::is_whitespace) {
                return Err(format!(
                    "`{raw}` is not an upstream URL; write http://host:port/v1"
                ));
            }
            return Ok(Self::Upstream {
                base_url: base.to_string(),
            });
        }
        if let Some(rest) = raw.strip_prefix("hf://") {
            let (path, revision) = match rest.rsplit_once('@') {
                Some((p, r)) if !r.is_empty() => (p, Some(r.to_string())),
                _ => (rest, None),
            };
            let parts: Vec<&str> = path.split('/').collect();
            if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
                return Err(format!(
                    "`{raw}` is not a Hugging Face reference; write hf://owner/repo/file.gguf"
                ));
            }
            return Ok(Self::HuggingFace {
                repo: format!("{}/{}", parts[0], parts[1]),
                file: parts[2..].join("/"),
                revision,
            });
        }
        if raw.trim().is_empty() {
            return Err(
                "`source` is empty; give a path to a .gguf file or hf://owner/repo/file.gguf"
                    .into(),
            );
        }
        Ok(Self::File(PathBuf::from(raw)))
    }

    /// The file name of the GGUF, for display.
    pub fn file_name(&self) -> String {
        match self {
            Self::File(p) => p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            Self::HuggingFace { file, .. } => file.clone(),
            Self::Upstream { .. } => String::new(),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::HuggingFace {
                repo,
                file,
                revision,
            } => {
                write!(f, "hf://{repo}/{file}")?;
                if let Some(r) = revision {
                    write!(f, "@{r}")?;
                }
                Ok(())
            }
            Self::Upstream { base_url } => f.write_str(base_url),
        }
    }
}

impl<'de> Deserialize<'de> for ModelSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ModelSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a model serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Text generation: `/v1/chat/completions` and `/v1/completions`.
    Chat,
    /// Sentence embeddings: `/v1/embeddings`.
    Embedding,
}

impl ModelKind {
    /// The name used in config and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
        }
    }
}

/// An API whose requests an upstream model forwards as the client sent them
/// (`forward_apis`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardApi {
    /// `POST /v1/chat/completions`.
    ChatCompletions,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/responses` (OpenAI's Responses API).
    Responses,
    /// `POST /v1/messages` (Anthropic's Messages API).
    Messages,
}

impl ForwardApi {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    /// Its path below an upstream's base URL (`http://host:port/v1`).
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat/completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::Responses => "responses",
            Self::Messages => "messages",
        }
    }

    /// What a model must serve to answer it.
    pub fn kind(self) -> ModelKind {
        match self {
            Self::Embeddings => ModelKind::Embedding,
            _ => ModelKind::Chat,
        }
    }
}

fn default_forward_apis() -> Vec<ForwardApi> {
    vec![
        ForwardApi::ChatCompletions,
        ForwardApi::Completions,
        ForwardApi::Embeddings,
    ]
}

/// How an embedding model turns its per-token states into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingSetting {
    /// The mean over the input's tokens.
    Mean,
    /// The first token's (`[CLS]`) state.
    Cls,
    /// The last token's state (decoder-based embedding models such as Qwen3-Embedding).
    Last,
}

/// Which inference engine runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// mistral.rs (CPU, CUDA or Metal; chosen by `auto` for GPU devices on GPU builds).
    MistralRs,
    /// llama.cpp through `llama-cpp-2` (chosen by `auto` on the CPU, where it is faster).
    LlamaCpp,
    /// An upstream OpenAI-compatible server (implied by an `http(s)://` source).
    Upstream,
}

impl EngineKind {
    /// The name used in config, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MistralRs => "mistralrs",
            Self::LlamaCpp => "llama.cpp",
            Self::Upstream => "upstream",
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EngineKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.trim().to_ascii_lowercase().as_str() {
            "mistralrs" | "mistral.rs" => Ok(Self::MistralRs),
            "llama.cpp" | "llamacpp" | "llama-cpp" => Ok(Self::LlamaCpp),
            "upstream" => Ok(Self::Upstream),
            _ => Err(serde::de::Error::custom(format!(
                "`{s}` is not an engine; use \"auto\", \"llama.cpp\", \"mistralrs\" or \"upstream\""
            ))),
        }
    }
}

/// A model's `engine` setting: `"auto"` (or none) leaves the choice to
/// [`ModelSettings::engine_choice`].
fn engine_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<EngineKind>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(None);
    }
    EngineKind::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&s)).map(Some)
}

/// `[[models]]`: one model the gateway can serve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// The id clients put in the `model` field.
    pub name: String,
    /// Other ids that route to this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A path to a GGUF file, `hf://owner/repo/file.gguf`, or the base URL of an upstream
    /// OpenAI-compatible server (`http://host:port/v1`).
    pub source: ModelSource,
    /// `auto` (default), `llama.cpp` or `mistralrs` for a GGUF; an `http(s)://` source is
    /// always `upstream`. `auto`: mistral.rs for a GPU device on a GPU build, llama.cpp on
    /// the CPU (faster there, see docs/BENCHMARKS.md).
    #[serde(default, deserialize_with = "engine_setting")]
    pub engine: Option<EngineKind>,
    /// CPU threads for the llama.cpp engine (default: the machine's physical cores).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The model's id at the upstream server (default: `name`).
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// Bearer key sent to the upstream server.
    #[serde(default)]
    pub upstream_api_key: Option<Secret>,
    /// Seconds the upstream may take to start answering, and between two streamed
    /// chunks, before the request fails with 504.
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_secs: u64,
    /// Seconds a forwarded request that is not streamed may take from sending to the
    /// end of its answer: such an upstream says nothing until it has generated it all.
    #[serde(default = "default_upstream_answer_timeout")]
    pub upstream_answer_timeout_secs: u64,
    /// More upstream servers for the same model, beside `source` (which must then be an
    /// upstream too): each a URL, or a table `{ url, api_key, weight, max_concurrent,
    /// upstream_model }`. Requests go to the member with the fewest outstanding requests
    /// per unit of weight; a failing member is ejected with backoff and a request that
    /// failed before its first byte is retried on another one.
    #[serde(default)]
    pub sources: Vec<UpstreamMemberSetting>,
    /// Seconds between active health checks of a pool's members (`GET {url}/models`);
    /// `0` turns them off (failures seen by requests still eject).
    #[serde(default = "default_health_interval")]
    pub health_check_interval_secs: u64,
    /// Seconds a health check may take.
    #[serde(default = "default_health_timeout")]
    pub health_check_timeout_secs: u64,
    /// Seconds over which a recovered member's share of the traffic ramps up to its
    /// weight.
    #[serde(default = "default_slow_start")]
    pub slow_start_secs: u64,
    /// Send each end user's requests to the same member of a pool while it is healthy
    /// (the body's `user`, Messages'
    /// `metadata.user_id`; rendezvous hashing by weight), so that member's prefix cache
    /// serves their conversation. Requests without one are balanced as usual.
    #[serde(default)]
    pub session_affinity: bool,
    /// With `session_affinity`: a request header whose value keys the affinity before the
    /// body's fields (`x-session-id`, say), for clients that name a conversation there.
    #[serde(default)]
    pub affinity_header: Option<String>,
    /// The APIs whose requests this upstream model forwards as the client sent them, only
    /// `model` rewritten (tools, images, unknown fields and all), its answers relayed
    /// unchanged, event by event. Default: `chat_completions`, `completions`,
    /// `embeddings`; add `responses` and `messages` when the upstream speaks them (another
    /// llamagate, vLLM, a recent llama.cpp server). An API not listed is checked by
    /// llamagate and rebuilt as a chat or completion request for the upstream.
    #[serde(default = "default_forward_apis")]
    pub forward_apis: Vec<ForwardApi>,
    /// `auto`, `cpu`, `cuda:N`, `vulkan:N` or `metal:N`.
    #[serde(default)]
    pub device: DeviceSetting,
    /// llama.cpp on a GPU: `auto` (default: as many layers as the device's budget holds,
    /// the rest on the CPU) or a number of layers.
    #[serde(default)]
    pub gpu_layers: GpuLayers,
    /// llama.cpp on several GPUs of one kind (`["cuda:0", "cuda:1"]`): the model's GPU
    /// layers are split over them in proportion to each one's free memory (llama.cpp's
    /// own split), each share counted on that GPU's budget; the first is the main one
    /// (`device`, when given, must name it).
    #[serde(default)]
    pub devices: Vec<DeviceSetting>,
    /// With `devices`: `layer` (default) or `row` (CUDA only).
    #[serde(default)]
    pub split_mode: SplitMode,
    /// llama.cpp: tokens one forward pass takes at most (default 512). Prompts are read
    /// in chunks of this size between the running sequences' decode steps: small chunks
    /// keep running streams moving while a long prompt is read; 2048 (llama-server's
    /// `--batch-size`) reads the prompts that arrive together in one pass first, so their
    /// streams start later and then run without pauses.
    #[serde(default)]
    pub batch_tokens: Option<usize>,
    /// llama.cpp: `auto` (default), `on` or `off`. `auto` is off on the CPU alone, where
    /// llama.cpp's flash-attention kernel decoded 1.6× slower after a long prompt, except
    /// for a model with a `draft`: checking the draft's guesses in one pass gives the same
    /// logits as decoding them one by one only with flash attention on.
    #[serde(default)]
    pub flash_attention: FlashAttention,
    /// Context window in tokens; defaults to the model's own (from the GGUF).
    #[serde(default)]
    pub context_length: Option<usize>,
    /// Sequences handed to the engine at once.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Requests allowed to wait for a sequence slot; more get 429, or go to `overflow`.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// The model (by name) that takes this one's requests when its queue is full, instead
    /// of a 429: typically an upstream model (a pool of servers) beside a local GGUF. One
    /// hop: the overflow model's own `overflow` is not followed.
    #[serde(default)]
    pub overflow: Option<String>,
    /// Seconds a request may wait (queue, memory, load) before 503; default from `[scheduler]`.
    #[serde(default)]
    pub queue_timeout_secs: Option<u64>,
    /// Unload after this long without requests (`0` = right after use); absent = never.
    #[serde(default)]
    pub keep_alive: Option<DurationSetting>,
    /// Memory this model needs, instead of the estimate from its GGUF header.
    #[serde(default)]
    pub memory: Option<ByteSize>,
    /// Load at start-up and never unload.
    #[serde(default)]
    pub pinned: bool,
    /// Seconds a load may take before it is reported as failed.
    #[serde(default = "default_load_timeout")]
    pub load_timeout_secs: u64,
    /// A Jinja chat template that replaces the one in the GGUF.
    #[serde(default)]
    pub chat_template: Option<String>,
    /// Reuse the KV cache of earlier prompts that share a prefix (faster multi-turn chat).
    /// Default: on for llama.cpp, off for mistral.rs (whose reused prefixes can change a
    /// repeated temperature-0 answer).
    #[serde(default)]
    pub prefix_cache: Option<bool>,
    /// The model thinks in `<think>…</think>` before it answers: the thinking is returned
    /// apart (`reasoning_content`, `reasoning` items, `thinking` blocks). Default: when its
    /// chat template mentions `</think>` (llama.cpp engine).
    #[serde(default)]
    pub reasoning: Option<bool>,
    /// `chat` or `embedding`. Default: read from the GGUF (an encoder architecture such
    /// as BERT, or a file that names a pooling type, is an embedding model); `chat` for a
    /// file not downloaded yet. An upstream serves both.
    #[serde(default)]
    pub kind: Option<ModelKind>,
    /// Pooling of an embedding model, instead of the GGUF's `pooling_type` (mean when the
    /// file names none).
    #[serde(default)]
    pub pooling: Option<PoolingSetting>,
    /// L2-normalise embeddings (default true, as OpenAI's models and llama.cpp's server).
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// The model was trained for shortened embeddings (Matryoshka): `dimensions` may ask
    /// for fewer, which are cut and re-normalised. Otherwise `dimensions` other than the
    /// model's own is refused.
    #[serde(default)]
    pub matryoshka: bool,
    /// Speculative decoding (llama.cpp engine): the name of another `[[models]]` entry
    /// whose file drafts tokens for this one, e.g. a smaller or more quantized sibling
    /// with the same tokenizer (checked at load). The draft's weights are loaded,
    /// counted in this model's memory budget and unloaded with it; its own entry, if it
    /// is served too, loads apart. The output does not change: greedy decoding gives the
    /// same tokens, sampling the same distribution (the standard acceptance rule).
    #[serde(default)]
    pub draft: Option<String>,
    /// With `draft`: the most tokens drafted ahead per step (default 16, as llama.cpp's
    /// server). With `draft_adaptive` each step drafts between 0 and this many.
    #[serde(default = "default_draft_max")]
    pub draft_max: usize,
    /// With `draft`: choose how far to draft from what this machine measures while it
    /// serves — how often the draft is right and what a draft pass and a longer check
    /// cost — the length that gives the most tokens per second, none when drafting does
    /// not pay (default true; false: always `draft_max`).
    #[serde(default = "default_true")]
    pub draft_adaptive: bool,
    /// With `draft`: drafting stops early once the draft's most likely next token has a
    /// probability below this, so a step drafts only what is likely kept (default 0:
    /// always `draft_max`; a stop still costs the draft's forward pass that found it).
    #[serde(default = "default_draft_p_min")]
    pub draft_p_min: f32,
    /// The draft's local file, looked up by the scheduler from `draft` when the model is
    /// sized or loaded (not a setting).
    #[serde(skip)]
    pub draft_file: Option<PathBuf>,
}

fn default_draft_max() -> usize {
    16
}

fn default_draft_p_min() -> f32 {
    0.0
}

fn default_true() -> bool {
    true
}

fn default_max_concurrent() -> usize {
    4
}
fn default_queue_size() -> usize {
    32
}
fn default_load_timeout() -> u64 {
    300
}
fn default_upstream_timeout() -> u64 {
    120
}
fn default_upstream_answer_timeout() -> u64 {
    600
}
fn default_health_interval() -> u64 {
    10
}
fn default_health_timeout() -> u64 {
    2
}
fn default_slow_start() -> u64 {
    30
}

/// One more member of an upstream pool (`sources = [...]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamMemberSetting {
    /// Its base URL, `http(s)://host:port/v1`.
    pub url: String,
    /// Bearer key sent to it (`env:NAME` reads a variable); default: the model's
    /// `upstream_api_key`.
    pub api_key: Option<Secret>,
    /// Its share of the traffic (default 1).
    pub weight: u32,
    /// Requests it may run at once (default: no limit of its own).
    pub max_concurrent: Option<usize>,
    /// The model's id there (default: the model's `upstream_model`, else its name).
    pub upstream_model: Option<String>,
}

impl<'de> Deserialize<'de> for UpstreamMemberSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default)]
            api_key: Option<Secret>,
            #[serde(default = "one")]
            weight: u32,
            #[serde(default)]
            max_concurrent: Option<usize>,
            #[serde(default)]
            upstream_model: Option<String>,
        }
        fn one() -> u32 {
            1
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Url(String),
            Table(Table),
        }
        let table = match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "each of `sources` is a URL or a table { url, api_key, weight, max_concurrent, upstream_model }",
            )
        })? {
            Form::Url(url) => Table {
                url,
                api_key: None,
                weight: 1,
                max_concurrent: None,
                upstream_model: None,
            },
            Form::Table(t) => t,
        };
        let url = match ModelSource::parse(&table.url).map_err(serde::de::Error::custom)? {
            ModelSource::Upstream { base_url } => base_url,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "`{}` in `sources` is not an upstream URL; write http://host:port/v1",
                    table.url
                )))
            }
        };
        Ok(Self {
            url,
            api_key: table.api_key,
            weight: table.weight,
            max_concurrent: table.max_concurrent,
            upstream_model: table.upstream_model,
        })
    }
}

impl ModelSettings {
    /// A model entry with defaults for everything but its name and source (used by tests).
    pub fn new(name: impl Into<String>, source: ModelSource) -> Self {
        Self {
            name: name.into(),
            aliases: Vec::new(),
            source,
            engine: None,
            threads: None,
            upstream_model: None,
            upstream_api_key: None,
            upstream_timeout_secs: default_upstream_timeout(),
            upstream_answer_timeout_secs: default_upstream_answer_timeout(),
            sources: Vec::new(),
            health_check_interval_secs: default_health_interval(),
            health_check_timeout_secs: default_health_timeout(),
            slow_start_secs: default_slow_start(),
            session_affinity: false,
            affinity_header: None,
            overflow: None,
            forward_apis: default_forward_apis(),
            device: DeviceSetting::Auto,
            gpu_layers: GpuLayers::Auto,
            devices: Vec::new(),
            split_mode: SplitMode::Layer,
            batch_tokens: None,
            flash_attention: FlashAttention::Auto,
            context_length: None,
            max_concurrent: default_max_concurrent(),
            queue_size: default_queue_size(),
            queue_timeout_secs: None,
            keep_alive: None,
            memory: None,
            pinned: false,
            load_timeout_secs: default_load_timeout(),
            chat_template: None,
            prefix_cache: None,
            reasoning: None,
            kind: None,
            pooling: None,
            normalize: true,
            matryoshka: false,
            draft: None,
            draft_max: default_draft_max(),
            draft_adaptive: true,
            draft_p_min: default_draft_p_min(),
            draft_file: None,
        }
    }

    /// How long a request may wait, with `default_secs` from `[scheduler]`.
    pub fn queue_timeout(&self, default_secs: u64) -> Duration {
        Duration::from_secs(self.queue_timeout_secs.unwrap_or(default_secs))
    }

    /// How long a load may take.
    pub fn load_timeout(&self) -> Duration {
        Duration::from_secs(self.load_timeout_secs)
    }

    /// The engine that runs this model.
    pub fn engine_kind(&self) -> EngineKind {
        self.engine_choice().0
    }

    /// The engine that runs this model and why: `upstream` for an `http(s)://` source, the
    /// configured one, or under `auto` mistral.rs for a GPU device on a build with a GPU
    /// backend (the llama.cpp engine is built for the CPU) and llama.cpp on the CPU, where
    /// it answers sooner and decodes ~2.5× faster on the same file (docs/BENCHMARKS.md).
    pub fn engine_choice(&self) -> (EngineKind, &'static str) {
        let gpu_build = cfg!(any(feature = "cuda", feature = "metal"));
        match (&self.source, self.engine, &self.device) {
            (ModelSource::Upstream { .. }, _, _) => (EngineKind::Upstream, "an http(s):// source"),
            (_, Some(kind), _) => (kind, "configured"),
            _ if !self.devices.is_empty() => (
                EngineKind::LlamaCpp,
                "auto: several GPUs in `devices` (llama.cpp splits a model over them)",
            ),
            (_, None, DeviceSetting::Vulkan(_)) => (
                EngineKind::LlamaCpp,
                "auto: a Vulkan device (llama.cpp; mistral.rs has no Vulkan backend)",
            ),
            (_, None, DeviceSetting::Cuda(_) | DeviceSetting::Metal(_)) => (
                EngineKind::MistralRs,
                "auto: a GPU device (mistral.rs; the llama.cpp engine runs on the CPU)",
            ),
            (_, None, DeviceSetting::Auto) if gpu_build => (
                EngineKind::MistralRs,
                "auto: a GPU build (mistral.rs, on the GPU when one is present)",
            ),
            (_, None, _) => (
                EngineKind::LlamaCpp,
                "auto: the CPU (llama.cpp, faster than mistral.rs there)",
            ),
        }
    }
}

/// Overrides given on the command line; they win over file and environment.
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// `--bind ADDR`.
    pub bind: Option<String>,
}

impl Settings {
    /// Loads `file`, then `LLAMAGATE__*` environment variables, then `overrides`, and validates.
    pub fn load(file: &Path, overrides: &CliOverrides) -> Result<Self, ConfigError> {
        if !file.is_file() {
            return Err(ConfigError::MissingFile(file.to_path_buf()));
        }
        let mut builder = config::Config::builder()
            .add_source(config::File::from(file).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("LLAMAGATE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            );
        if let Some(bind) = &overrides.bind {
            builder = builder
                .set_override("server.bind", bind.clone())
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        let mut settings: Settings =
            builder
                .build()
                .and_then(|c| c.try_deserialize())
                .map_err(|e| {
                    ConfigError::Parse(format!(
                        "{e} (in {} or LLAMAGATE__* variables)",
                        file.display()
                    ))
                })?;
        settings.auth.resolve()?;
        settings.validate()?;
        settings.loaded_from = Some((file.to_path_buf(), overrides.clone()));
        Ok(settings)
    }

    /// The definition of a model found in `models_dir`: `[model_defaults]` with its name,
    /// aliases and file.
    pub fn folder_model(
        &self,
        name: &str,
        aliases: Vec<String>,
        path: &Path,
    ) -> Result<ModelSettings, String> {
        let mut fields = self.model_defaults.clone();
        fields.insert("name".into(), name.into());
        fields.insert("aliases".into(), aliases.into());
        fields.insert("source".into(), path.to_string_lossy().into_owned().into());
        let model: ModelSettings =
            serde_json::from_value(serde_json::Value::Object(fields)).map_err(|e| e.to_string())?;
        model.validate().map_err(|e| e.to_string())?;
        Ok(model)
    }

    /// Parses settings from TOML text (tests and embedded defaults) and validates them.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks the rules that span fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.models.is_empty() && self.scheduler.models_dir().is_none() {
            return invalid(
                "no models configured; add at least one [[models]] entry or a scheduler.models_dir"
                    .into(),
            );
        }
        for key in ["name", "aliases", "source"] {
            if self.model_defaults.contains_key(key) {
                return invalid(format!(
                    "model_defaults.{key}: each model in models_dir gets its own; remove it"
                ));
            }
        }
        if !self.model_defaults.is_empty() {
            self.folder_model("example", Vec::new(), Path::new("example.gguf"))
                .map_err(|e| ConfigError::Invalid(format!("model_defaults: {e}")))?;
        }
        if self.scheduler.models_dir_rescan_secs == 0 {
            return invalid("scheduler.models_dir_rescan_secs must be at least 1".into());
        }
        let mut seen: HashSet<&str> = HashSet::new();
        for model in &self.models {
            model.validate()?;
            for id in model.ids() {
                if !seen.insert(id.as_str()) {
                    return invalid(format!(
                        "`{id}` is used by more than one model (as a name or alias); every name and alias must be unique"
                    ));
                }
            }
        }
        for model in &self.models {
            let Some(target) = &model.overflow else {
                continue;
            };
            let Some(to) = self.models.iter().find(|m| &m.name == target) else {
                return invalid(format!(
                    "model `{}`: overflow `{target}` is not the name of a configured model",
                    model.name
                ));
            };
            if to.name == model.name {
                return invalid(format!(
                    "model `{}`: overflow names the model itself",
                    model.name
                ));
            }
            if let (Some(a), Some(b)) = (model.kind, to.kind) {
                if a != b {
                    return invalid(format!(
                        "model `{}` serves {} and its overflow `{target}` {}",
                        model.name,
                        a.as_str(),
                        b.as_str()
                    ));
                }
            }
        }
        for model in &self.models {
            let Some(draft) = &model.draft else {
                continue;
            };
            match self.models.iter().find(|m| &m.name == draft) {
                None => {
                    return invalid(format!(
                        "model `{}`: draft `{draft}` is not the name of a configured model",
                        model.name
                    ));
                }
                Some(to)
                    if matches!(to.source, ModelSource::Upstream { .. })
                        || to.kind == Some(ModelKind::Embedding) =>
                {
                    return invalid(format!(
                        "model `{}`: draft `{draft}` must be a chat GGUF (it is read by the llama.cpp engine beside this model)",
                        model.name
                    ));
                }
                _ => {}
            }
        }
        self.auth.validate_keys()?;
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes must be at least 1024".into());
        }
        if self.scheduler.fairness_batch == 0 {
            return invalid("scheduler.fairness_batch must be at least 1".into());
        }
        if self.scheduler.max_loaded_models == Some(0) {
            return invalid("scheduler.max_loaded_models must be at least 1 (or absent)".into());
        }
        if self.limits.max_n == 0
            || self.limits.max_prompts == 0
            || self.limits.max_messages == 0
            || self.limits.max_embedding_inputs == 0
        {
            return invalid(
                "limits.max_n, limits.max_prompts, limits.max_messages and \
                 limits.max_embedding_inputs must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

impl ModelSettings {
    /// Its name, then its aliases: every id that routes to it.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.name).chain(&self.aliases)
    }

    /// The device the model runs on: the first of `devices`, else `device`.
    pub fn main_device(&self) -> DeviceSetting {
        self.devices.first().copied().unwrap_or(self.device)
    }

    /// `devices`: two or more distinct GPUs of one kind, for the llama.cpp engine, the
    /// first being `device` when that is given.
    fn validate_devices(&self) -> Result<(), ConfigError> {
        let name = &self.name;
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let kind = |d: &DeviceSetting| d.to_string().split(':').next().unwrap_or("").to_string();
        if self.devices.len() < 2 {
            return invalid(format!(
                "model `{name}`: `devices` lists the GPUs to split the model over (two or more); for one, use `device`"
            ));
        }
        if let Some(d) = self.devices.iter().find(|d| !d.is_gpu()) {
            return invalid(format!(
                "model `{name}`: `devices` lists GPUs (cuda:N, vulkan:N, metal:N), not `{d}`"
            ));
        }
        if self
            .devices
            .iter()
            .any(|d| kind(d) != kind(&self.devices[0]))
        {
            return invalid(format!(
                "model `{name}`: the GPUs in `devices` must be of one kind (llama.cpp splits a model over one backend's devices)"
            ));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if self.devices[..i].contains(d) {
                return invalid(format!("model `{name}`: `{d}` is named twice in `devices`"));
            }
        }
        if self.device != DeviceSetting::Auto && self.device != self.devices[0] {
            return invalid(format!(
                "model `{name}`: device `{}` is not the first of `devices` ({}); leave `device` out or name the main GPU there first",
                self.device, self.devices[0]
            ));
        }
        if self.engine_kind() != EngineKind::LlamaCpp {
            return invalid(format!(
                "model `{name}`: `devices` splits a model with the llama.cpp engine; set engine = \"llama.cpp\""
            ));
        }
        Ok(())
    }

    /// Checks one model definition on its own (names and aliases unique across models are
    /// checked by [`Settings::validate`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if !valid_model_id(&self.name) {
            return invalid(format!(
                "model name `{}` must be 1-128 characters of letters, digits, '.', '-', '_', ':' or '/'",
                self.name
            ));
        }
        for id in &self.aliases {
            if !valid_model_id(id) {
                return invalid(format!(
                    "alias `{id}` of model `{}` must be 1-128 characters of letters, digits, '.', '-', '_', ':' or '/'",
                    self.name
                ));
            }
        }
        if self.max_concurrent == 0 {
            return invalid(format!(
                "model `{}`: max_concurrent must be at least 1",
                self.name
            ));
        }
        if self.context_length == Some(0) {
            return invalid(format!(
                "model `{}`: context_length must be at least 1",
                self.name
            ));
        }
        let upstream_source = matches!(self.source, ModelSource::Upstream { .. });
        match (self.engine, upstream_source) {
            (Some(EngineKind::Upstream), false) => {
                return invalid(format!(
                    "model `{}`: engine \"upstream\" needs an http(s):// source (the server's /v1 URL)",
                    self.name
                ))
            }
            (Some(kind @ (EngineKind::MistralRs | EngineKind::LlamaCpp)), true) => {
                return invalid(format!(
                    "model `{}`: an http(s):// source is served by the upstream engine, not `{kind}`; remove `engine` or give a GGUF file",
                    self.name
                ))
            }
            _ => {}
        }
        if !cfg!(feature = "mistralrs") && self.engine_kind() == EngineKind::MistralRs {
            return invalid(format!(
                "model `{}`: {} needs the mistral.rs engine, which this binary was built without (scripts/serve.sh builds only llama.cpp on a CPU machine; build with `cargo build` or run `LLAMAGATE_ENGINES=all scripts/serve.sh`)",
                self.name,
                self.engine_choice().1
            ));
        }
        if self.threads == Some(0) {
            return invalid(format!("model `{}`: threads must be at least 1", self.name));
        }
        if !self.devices.is_empty() {
            self.validate_devices()?;
        }
        if let Some(n) = self.batch_tokens {
            if !(32..=65536).contains(&n) {
                return invalid(format!(
                    "model `{}`: batch_tokens must be between 32 and 65536 (it is {n})",
                    self.name
                ));
            }
        }
        if !self.sources.is_empty() && !upstream_source {
            return invalid(format!(
                "model `{}`: `sources` adds upstream servers to an upstream model; its `source` must be an http(s):// URL too (for upstreams that take a local model's overflow, make them a model of their own and name it in this one's `overflow`)",
                self.name
            ));
        }
        if let Some(member) = self.sources.iter().find(|m| m.weight == 0) {
            return invalid(format!(
                "model `{}`: the weight of `{}` in `sources` must be at least 1",
                self.name, member.url
            ));
        }
        if let Some(member) = self.sources.iter().find(|m| m.max_concurrent == Some(0)) {
            return invalid(format!(
                "model `{}`: the max_concurrent of `{}` in `sources` must be at least 1",
                self.name, member.url
            ));
        }
        if let ModelSource::Upstream { base_url } = &self.source {
            let mut urls: Vec<&str> = self.sources.iter().map(|m| m.url.as_str()).collect();
            urls.push(base_url);
            urls.sort_unstable();
            if let Some(w) = urls.windows(2).find(|w| w[0] == w[1]) {
                return invalid(format!(
                    "model `{}`: `{}` is named twice among `source` and `sources`",
                    self.name, w[0]
                ));
            }
        }
        if let Some(header) = &self.affinity_header {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if header.is_empty() || !header.chars().all(token) {
                return invalid(format!(
                    "model `{}`: affinity_header `{header}` is not a header name",
                    self.name
                ));
            }
        }
        if self.health_check_timeout_secs == 0 {
            return invalid(format!(
                "model `{}`: health_check_timeout_secs must be at least 1",
                self.name
            ));
        }
        if self.upstream_timeout_secs == 0 {
            return invalid(format!(
                "model `{}`: upstream_timeout_secs must be at least 1",
                self.name
            ));
        }
        if self.upstream_answer_timeout_secs == 0 {
            return invalid(format!(
                "model `{}`: upstream_answer_timeout_secs must be at least 1",
                self.name
            ));
        }
        if self.load_timeout_secs == 0 {
            return invalid(format!(
                "model `{}`: load_timeout_secs must be at least 1",
                self.name
            ));
        }
        if let Some(draft) = &self.draft {
            if upstream_source
                || self.kind == Some(ModelKind::Embedding)
                || self.engine_kind() != EngineKind::LlamaCpp
            {
                return invalid(format!(
                    "model `{}`: `draft` (speculative decoding) is for a chat GGUF on the llama.cpp engine; this model is served by `{}` ({})",
                    self.name,
                    self.engine_kind(),
                    self.engine_choice().1
                ));
            }
            if draft == &self.name || self.aliases.contains(draft) {
                return invalid(format!(
                    "model `{}`: `draft` names the model itself; name a smaller sibling",
                    self.name
                ));
            }
            if !(1..=64).contains(&self.draft_max) {
                return invalid(format!("model `{}`: draft_max must be 1 to 64", self.name));
            }
            if !(0.0..=1.0).contains(&self.draft_p_min) {
                return invalid(format!(
                    "model `{}`: draft_p_min must be between 0 and 1",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

fn valid_model_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_MODEL: &str = r#"
[[models]]
name = "m"
aliases = ["a"]
source = "models/x.gguf"
"#;

    #[test]
    fn defaults_fill_in() {
        let s = Settings::from_toml(ONE_MODEL).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.models[0].device, DeviceSetting::Auto);
        assert_eq!(
            s.models[0].source,
            ModelSource::File("models/x.gguf".into())
        );
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = Settings::from_toml(&format!("{ONE_MODEL}colour = \"red\"\n")).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = Settings::from_toml("[server]\nbindd = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");
    }

    #[test]
    fn duplicate_names_and_aliases_are_rejected() {
        let dup = format!(
            "{ONE_MODEL}{}",
            ONE_MODEL
                .replace("name = \"m\"", "name = \"a\"")
                .replace("[\"a\"]", "[]")
        );
        let err = Settings::from_toml(&dup).unwrap_err();
        assert!(
            err.to_string()
                .contains("`a` is used by more than one model"),
            "{err}"
        );
    }

    #[test]
    fn engines_are_chosen_per_model_and_upstream_follows_the_source() {
        let s = Settings::from_toml(
            r#"
[[models]]
name = "fast"
source = "m.gguf"
engine = "llama.cpp"
threads = 4
[[models]]
name = "default"
source = "m.gguf"
[[models]]
name = "lan"
source = "http://gpu-box:8080/v1/"
upstream_model = "llama-70b"
upstream_api_key = "env:GPU_BOX_KEY"
"#,
        )
        .unwrap();
        assert_eq!(s.models[0].engine_kind(), EngineKind::LlamaCpp);
        assert_eq!(s.models[0].threads, Some(4));
        // `auto`: llama.cpp on the CPU; mistral.rs for a GPU device.
        let cpu_default = if cfg!(any(feature = "cuda", feature = "metal")) {
            EngineKind::MistralRs
        } else {
            EngineKind::LlamaCpp
        };
        assert_eq!(s.models[1].engine_kind(), cpu_default);
        assert!(s.models[1].engine_choice().1.starts_with("auto: "));
        assert_eq!(s.models[0].engine_choice().1, "configured");
        assert_eq!(s.models[2].engine_kind(), EngineKind::Upstream);
        let gpu = Settings::from_toml(
            "[[models]]\nname = \"g\"\nsource = \"m.gguf\"\ndevice = \"cuda:0\"\nengine = \"auto\"\n",
        )
        .unwrap();
        assert_eq!(gpu.models[0].engine_kind(), EngineKind::MistralRs);
        let cpu = Settings::from_toml(
            "[[models]]\nname = \"c\"\nsource = \"m.gguf\"\ndevice = \"cpu\"\nengine = \"AUTO\"\n",
        )
        .unwrap();
        assert_eq!(cpu.models[0].engine_kind(), EngineKind::LlamaCpp);
        assert_eq!(
            s.models[2].source,
            ModelSource::Upstream {
                base_url: "http://gpu-box:8080/v1".into()
            }
        );
        assert_eq!(
            format!("{:?}", s.models[2].upstream_api_key),
            "Some(\"***\")"
        );

        let bad = |body: &str| {
            Settings::from_toml(&format!("[[models]]\nname = \"m\"\n{body}"))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("source = \"m.gguf\"\nengine = \"vllm\"").contains("not an engine"));
        assert!(bad("source = \"http://x/v1\"\nengine = \"llama.cpp\"").contains("upstream engine"));
        assert!(bad("source = \"m.gguf\"\nengine = \"upstream\"").contains("http(s)://"));
        // Hub files are downloaded before loading: every local engine takes them.
        assert!(Settings::from_toml(
            "[[models]]\nname = \"m\"\nsource = \"hf://o/r/f.gguf\"\nengine = \"llama.cpp\"\n"
        )
        .is_ok());
        assert!(bad("source = \"m.gguf\"\nthreads = 0").contains("threads"));
        assert!(bad("source = \"http:///v1\"").contains("not an upstream URL"));
    }

    #[test]
    fn hf_sources_parse() {
        assert_eq!(
            ModelSource::parse("hf://owner/repo/dir/f.gguf@v1").unwrap(),
            ModelSource::HuggingFace {
                repo: "owner/repo".into(),
                file: "dir/f.gguf".into(),
                revision: Some("v1".into())
            }
        );
        assert!(ModelSource::parse("hf://owner/f.gguf").is_err());
    }

    #[test]
    fn devices_parse() {
        assert_eq!(
            "cuda:1".parse::<DeviceSetting>().unwrap(),
            DeviceSetting::Cuda(1)
        );
        assert_eq!("CPU".parse::<DeviceSetting>().unwrap(), DeviceSetting::Cpu);
        assert!("tpu".parse::<DeviceSetting>().is_err());
        let vulkan: DeviceSetting = "vulkan:2".parse().unwrap();
        assert_eq!(
            (vulkan, vulkan.to_string()),
            (DeviceSetting::Vulkan(2), "vulkan:2".into())
        );
        assert!(vulkan.is_gpu() && !DeviceSetting::Auto.is_gpu());
        assert!("vulkan:x"
            .parse::<DeviceSetting>()
            .unwrap_err()
            .contains("vulkan:N"));
    }

    #[test]
    fn gpu_layers_are_auto_or_a_count() {
        #[derive(Deserialize)]
        struct T {
            gpu_layers: GpuLayers,
        }
        let parse = |v: &str| {
            serde_json::from_str::<T>(&format!("{{\"gpu_layers\": {v}}}")).map(|t| t.gpu_layers)
        };
        assert_eq!(parse("\"auto\"").unwrap(), GpuLayers::Auto);
        assert_eq!(parse("12").unwrap(), GpuLayers::Count(12));
        assert_eq!(parse("\"7\"").unwrap(), GpuLayers::Count(7));
        assert!(parse("-1")
            .unwrap_err()
            .to_string()
            .contains("gpu_layers `-1`"));
        assert!(parse("\"all\"").is_err());
    }

    #[test]
    fn several_gpus_are_distinct_gpus_of_one_kind_for_llama_cpp() {
        let with = |extra: &str| {
            Settings::from_toml(&format!(
                "[[models]]\nname = \"m\"\nsource = \"m.gguf\"\n{extra}\n"
            ))
            .map(|s| s.models[0].clone())
        };
        let m = with("devices = [\"vulkan:0\", \"vulkan:1\"]\nsplit_mode = \"layer\"").unwrap();
        assert_eq!(m.main_device(), DeviceSetting::Vulkan(0));
        assert_eq!(m.engine_kind(), EngineKind::LlamaCpp);
        assert_eq!(m.split_mode, SplitMode::Layer);
        let refused = |extra: &str, says: &str| {
            let why = with(extra).unwrap_err().to_string();
            assert!(why.contains(says), "{extra}: {why}");
        };
        refused("devices = [\"cuda:0\"]", "two or more");
        refused("devices = [\"cuda:0\", \"cpu\"]", "not `cpu`");
        refused("devices = [\"cuda:0\", \"vulkan:1\"]", "one kind");
        refused("devices = [\"cuda:1\", \"cuda:1\"]", "named twice");
        refused(
            "devices = [\"cuda:0\", \"cuda:1\"]\ndevice = \"cuda:1\"",
            "not the first of `devices`",
        );
        refused(
            "devices = [\"cuda:0\", \"cuda:1\"]\nengine = \"mistralrs\"",
            "llama.cpp",
        );
        refused("split_mode = \"tensor\"", "split_mode");
        refused("batch_tokens = 8", "between 32 and 65536");
        assert_eq!(
            with("batch_tokens = 2048").unwrap().batch_tokens,
            Some(2048)
        );
    }

    #[test]
    fn missing_file_says_so() {
        let err = Settings::load(Path::new("/nope/llamagate.toml"), &CliOverrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn model_defaults_are_checked_and_given_to_folder_models() {
        let base = "[scheduler]\nmodels_dir = \"m\"\n";
        let s = Settings::from_toml(&format!(
            "{base}[model_defaults]\nmax_concurrent = 3\nkeep_alive = \"5m\"\n"
        ))
        .unwrap();
        assert!(
            s.models.is_empty(),
            "a models folder alone is a valid config"
        );
        let m = s
            .folder_model("x-Q4_0", vec!["x".into()], Path::new("m/x-Q4_0.gguf"))
            .unwrap();
        assert_eq!(
            (m.max_concurrent, m.aliases.clone()),
            (3, vec!["x".to_string()])
        );
        assert_eq!(m.source, ModelSource::File("m/x-Q4_0.gguf".into()));
        for bad in [
            "[model_defaults]\nsource = \"a.gguf\"\n",
            "[model_defaults]\nmax_concurrent = 0\n",
            "[model_defaults]\nflavour = \"x\"\n",
        ] {
            let err = Settings::from_toml(&format!("{base}{bad}")).unwrap_err();
            assert!(err.to_string().contains("model_defaults"), "{bad}: {err}");
        }
        let err = Settings::from_toml("[scheduler]\nmodels_dir = \"\"\n").unwrap_err();
        assert!(err.to_string().contains("models_dir"), "{err}");
    }

    #[test]
    fn overflow_names_another_configured_model() {
        let two = "[[models]]\nname = \"a\"\nsource = \"a.gguf\"\n[[models]]\nname = \"b\"\nsource = \"http://h:1/v1\"\n";
        let s = Settings::from_toml(&two.replace("a.gguf\"\n", "a.gguf\"\noverflow = \"b\"\n"))
            .unwrap();
        assert_eq!(s.models[0].overflow.as_deref(), Some("b"));
        for (overflow, says) in [
            ("nope", "not the name of a configured model"),
            ("a", "names the model itself"),
        ] {
            let text = two.replace(
                "a.gguf\"\n",
                &format!("a.gguf\"\noverflow = \"{overflow}\"\n"),
            );
            let err = Settings::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(says), "{overflow}: {err}");
        }
        let kinds = two
            .replace(
                "a.gguf\"\n",
                "a.gguf\"\noverflow = \"b\"\nkind = \"chat\"\n",
            )
            .replace("/v1\"\n", "/v1\"\nkind = \"embedding\"\n");
        let err = Settings::from_toml(&kinds).unwrap_err();
        assert!(err.to_string().contains("serves chat"), "{err}");
    }

    #[test]
    fn a_draft_names_another_local_chat_model() {
        let models = "[[models]]\nname = \"a\"\nsource = \"a.gguf\"\nengine = \"llama.cpp\"\n[[models]]\nname = \"b\"\nsource = \"b.gguf\"\n[[models]]\nname = \"up\"\nsource = \"http://h:1/v1\"\n";
        let with = |extra: &str| {
            models.replacen(
                "engine = \"llama.cpp\"\n",
                &format!("engine = \"llama.cpp\"\n{extra}\n"),
                1,
            )
        };
        let s = Settings::from_toml(&with("draft = \"b\"")).unwrap();
        assert_eq!(s.models[0].draft.as_deref(), Some("b"));
        assert_eq!(
            (
                s.models[0].draft_max,
                s.models[0].draft_adaptive,
                s.models[0].draft_p_min
            ),
            (16, true, 0.0)
        );
        assert!(s.models[0].draft_file.is_none());
        for (extra, says) in [
            ("draft = \"nope\"", "not the name of a configured model"),
            ("draft = \"a\"", "names the model itself"),
            ("draft = \"up\"", "must be a chat GGUF"),
            ("draft = \"b\"\ndraft_max = 0", "draft_max must be 1 to 64"),
            (
                "draft = \"b\"\ndraft_p_min = 1.5",
                "draft_p_min must be between 0 and 1",
            ),
            (
                "draft = \"b\"\nkind = \"embedding\"",
                "is for a chat GGUF on the llama.cpp engine",
            ),
        ] {
            let err = Settings::from_toml(&with(extra)).unwrap_err();
            assert!(err.to_string().contains(says), "{extra}: {err}");
        }
        let upstream = models.replace(
            "source = \"http://h:1/v1\"\n",
            "source = \"http://h:1/v1\"\ndraft = \"b\"\n",
        );
        let err = Settings::from_toml(&upstream).unwrap_err();
        assert!(err.to_string().contains("served by `upstream`"), "{err}");
    }

    #[test]
    fn named_keys_are_checked() {
        let base = "[[models]]\nname = \"m\"\nsource = \"m.gguf\"\n";
        let ok = Settings::from_toml(&format!(
            "[[auth.keys]]\nname = \"kids-tablet\"\nkey = \"sha256:{}\"\nmodels = [\"m\"]\nrpm = 10\n{base}",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(ok.auth.keys[0].rpm, Some(10));
        for (bad, says) in [
            ("name = \"a b\"\nkey = \"long-enough-key\"\n", "letters, digits"),
            ("name = \"a\"\nkey = \"short\"\n", "at least 8"),
            ("name = \"a\"\nkey = \"sha256:abc\"\n", "64 hexadecimal"),
            ("name = \"a\"\nkey = \"env:LLAMAGATE_NO_SUCH_VAR_X\"\n", "not set"),
            ("name = \"a\"\nkey = \"long-enough-key\"\ntpm = 0\n", "tpm must be at least 1"),
            ("name = \"a\"\nkey = \"long-enough-key\"\nmodels = []\n", "allows nothing"),
            ("name = \"admin\"\nkey = \"long-enough-key\"\n", "reserved"),
            ("name = \"a\"\nkey = \"long-enough-key\"\n[[auth.keys]]\nname = \"a\"\nkey = \"other-long-key\"\n", "used twice"),
        ] {
            let err = Settings::from_toml(&format!("[[auth.keys]]\n{bad}{base}")).unwrap_err();
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn the_store_is_a_file_by_default_and_empty_keeps_it_in_memory() {
        let base = "[[models]]\nname = \"m\"\nsource = \"m.gguf\"\n";
        let default = Settings::from_toml(base).unwrap();
        assert_eq!(default.auth.store_flush_secs, 5);
        if let Some(path) = default.auth.store_path() {
            assert!(path.ends_with("llamagate/llamagate.db"), "{path:?}");
        }
        let memory = Settings::from_toml(&format!("[auth]\nstore = \"\"\n{base}")).unwrap();
        assert_eq!(memory.auth.store_path(), None);
        let file = Settings::from_toml(&format!("[auth]\nstore = \"/x/u.db\"\n{base}")).unwrap();
        assert_eq!(file.auth.store_path(), Some(PathBuf::from("/x/u.db")));
        let err =
            Settings::from_toml(&format!("[auth]\nstore_flush_secs = 0\n{base}")).unwrap_err();
        assert!(err.to_string().contains("store_flush_secs"), "{err}");
    }
}
