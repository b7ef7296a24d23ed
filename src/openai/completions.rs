//! `POST /v1/completions` bodies (legacy text completions).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::common::{StreamOptions, Usage};

/// A text completion request. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    /// Model name or alias.
    pub model: String,
    /// A string or a list of strings.
    #[schema(value_type = Object)]
    pub prompt: Value,
    /// Most tokens to generate. Default 16.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// Sampling temperature in [0, 2]. Default 1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1]. Default 1.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Choices per prompt. Default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<i64>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Options for streaming.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 stop sequences; a string or a list.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Penalty in [-2, 2] for tokens already present.
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    /// Penalty in [-2, 2] proportional to frequency.
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    /// Alternatives per token (0-5) with log-probabilities.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<i64>,
    /// Also return the prompt in front of the completion.
    #[serde(default)]
    pub echo: Option<bool>,
    /// Text after the completion; not supported (must be absent or empty).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Candidates generated server-side; only `best_of == n` is supported.
    #[serde(default)]
    pub best_of: Option<i64>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// End-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// A text completion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletionResponse {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// Canonical model name.
    pub model: String,
    /// Build identity.
    pub system_fingerprint: String,
    /// `n` per prompt, prompt-major.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (absent on streamed chunks except the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// One completion choice.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompletionChoice {
    /// Position in `choices`.
    pub index: usize,
    /// The text.
    pub text: String,
    /// Log-probabilities when requested.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null on intermediate streamed chunks.
    pub finish_reason: Option<String>,
}

/// Legacy log-probability format.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CompletionLogprobs {
    /// The tokens.
    pub tokens: Vec<String>,
    /// Log-probability of each token.
    pub token_logprobs: Vec<f32>,
    /// Alternatives per token.
    pub top_logprobs: Vec<std::collections::BTreeMap<String, f32>>,
    /// Character offset of each token in the text.
    pub text_offset: Vec<usize>,
}
