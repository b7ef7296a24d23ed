//! `POST /v1/embeddings` bodies, as OpenAI defines them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// An embeddings request. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    /// Model name or alias (an embedding model: see `capabilities` in `/v1/models`).
    pub model: String,
    /// A string, a list of strings, a list of token ids, or a list of token-id lists.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64` (little-endian float32 bytes, as OpenAI sends them).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Shorter embeddings, for models trained for them (`matryoshka = true`); otherwise
    /// only the model's own length is accepted.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub dimensions: Option<i64>,
    /// End-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
}

/// The embeddings of every input, in input order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: String,
    /// One item per input.
    pub data: Vec<EmbeddingData>,
    /// The model's canonical name.
    pub model: String,
    /// Tokens read.
    pub usage: EmbeddingUsage,
}

/// One input's embedding.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: String,
    /// Position of the input in the request.
    pub index: usize,
    /// The vector: a list of numbers, or with `encoding_format: base64` a base64 string of
    /// its little-endian float32 bytes.
    #[schema(value_type = Object)]
    pub embedding: EmbeddingVector,
}

/// A vector as floats or as base64.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`.
    Base64(String),
}

/// Token counts of an embeddings request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingUsage {
    /// Tokens in the inputs.
    pub prompt_tokens: usize,
    /// The same (nothing is generated).
    pub total_tokens: usize,
}
