//! `GET /v1/models` bodies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A model the gateway serves, with llamagate's extra fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ModelObject {
    /// The model's name.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Unix seconds when the gateway started.
    pub created: u64,
    /// Always `llamagate`.
    pub owned_by: String,
    /// `unloaded`, `loading`, `ready`, `draining` or `failed`.
    pub status: String,
    /// Other names routed to this model.
    pub aliases: Vec<String>,
    /// Where the weights come from (file name or hf:// reference).
    pub source: String,
    /// The engine that runs it: `mistralrs`, `llama.cpp` or `upstream`.
    pub engine: String,
    /// Why that engine: `configured`, or the reason `auto` chose it.
    pub engine_reason: String,
    /// Configured device (`remote` for upstream models); once loaded, where it runs
    /// (`vulkan:0 (card name)`).
    pub device: String,
    /// Once loaded on a GPU (llama.cpp): the layers there, of `layers`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub gpu_layers: Option<u32>,
    /// Once loaded on a GPU (llama.cpp): all its layers, the output layer included.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub layers: Option<u32>,
    /// Context window in tokens, once known (after the first load).
    pub context_length: Option<usize>,
    /// Why the context is what it is, once loading: `configured`, `trained` (the model's
    /// own) or `fitted` (shrunk to fit the device's memory budget; `context_length` not set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_source: Option<String>,
    /// While `status` is `downloading` (a pull): bytes on disk so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<u64>,
    /// While `status` is `downloading`: bytes in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_total_bytes: Option<u64>,
    /// The context the model was trained for, when `context_source` is `fitted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_context_length: Option<u64>,
    /// Quantization of the weights (`Q4_1`, `Q8_0`, ...), from the GGUF header.
    pub quantization: Option<String>,
    /// Size of the model file in bytes.
    pub size_bytes: Option<u64>,
    /// Parameters, from the GGUF header.
    pub parameters: Option<u64>,
    /// Memory reserved for the model while loaded (the footprint estimate).
    pub memory_bytes: u64,
    /// Unix seconds when it was loaded, while loaded.
    pub loaded_at: Option<u64>,
    /// Whether it is loaded at start and never unloaded.
    pub pinned: bool,
    /// The model that drafts tokens for it (speculative decoding), if configured; its
    /// weights are in this model's `memory_bytes`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub draft: Option<String>,
    /// The last load error, when `status` is `failed`.
    pub error: Option<String>,
    /// What the model can do through this server.
    pub capabilities: Capabilities,
    /// For a pool of upstream servers (`sources`), once loaded: each member and where it
    /// stands.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub upstreams: Vec<UpstreamObject>,
}

/// One server of an upstream pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct UpstreamObject {
    /// Its base URL.
    pub url: String,
    /// `healthy`, `ejected` (after failures, for `ejected_for_secs`) or `recovering`
    /// (its ejection is over or a health check passed: on probation, its share of the
    /// traffic ramping up).
    pub state: String,
    /// Requests it runs now.
    pub outstanding: usize,
    /// Its share of the traffic.
    pub weight: u32,
    /// Seconds until its ejection ends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for_secs: Option<u64>,
    /// Its last failure, while not healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Attempts sent to it since the server started.
    pub requests: u64,
    /// Attempts that failed on its side.
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
}

/// What a model supports, stated honestly.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// Context window in tokens, once known (for an embedding model: tokens per input).
    pub context_length: Option<usize>,
    /// Serves `/v1/chat/completions` and `/v1/completions`.
    pub chat: bool,
    /// Serves `/v1/embeddings`.
    pub embeddings: bool,
    /// Length of its embeddings, once known.
    pub embedding_length: Option<usize>,
    /// `tools` / `tool_choice`, answered by constrained decoding to the call's JSON.
    pub tools: bool,
    /// `response_format` `json_object` and `json_schema` (constrained decoding).
    pub json_schema: bool,
    /// `logprobs` / `top_logprobs`.
    pub logprobs: bool,
    /// Image inputs: never for these text models.
    pub vision: bool,
    /// Audio input or output.
    pub audio: bool,
}

/// The model list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    /// The models.
    pub data: Vec<ModelObject>,
}
