//! Pieces shared by the chat and text completion formats.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Usage {
    /// Tokens in the prompt (after the chat template).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Sum of both.
    pub total_tokens: usize,
    /// Breakdown of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prompt cache (a reused prefix) instead of recomputed.
    #[serde(default)]
    pub cached_tokens: usize,
}

impl From<crate::engine::TokenUsage> for Usage {
    fn from(u: crate::engine::TokenUsage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens.min(u.prompt_tokens),
            },
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the request's usage before `[DONE]`.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The identity of this build in `system_fingerprint`.
pub fn system_fingerprint() -> String {
    format!("llamagate-{}", env!("CARGO_PKG_VERSION"))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh response id with OpenAI's prefix (`chatcmpl-`, `cmpl-`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}
