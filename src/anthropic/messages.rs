//! `POST /v1/messages` and `POST /v1/messages/count_tokens` bodies, and the streamed
//! events, as Anthropic defines them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A Messages request. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// Model name or alias.
    pub model: String,
    /// Most tokens to generate (required by Anthropic's API).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// The conversation: `user` and `assistant` turns, content as a string or blocks
    /// (`text`, `tool_use`, `tool_result`).
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// System prompt: a string or a list of `text` blocks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    /// Sampling temperature in [0, 1]. Default 1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Not supported: 400 with `server.strict_params`, else ignored.
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Text that ends the answer.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub stop_sequences: Option<Value>,
    /// Stream as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Tools: `{"name", "description", "input_schema"}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Extended thinking: accepted; the models served here do not think.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub thinking: Option<Value>,
    /// `{"user_id"}`: accepted and ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Not supported: 400 with `server.strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub service_tier: Option<Value>,
    /// Not supported: 400 with `server.strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub container: Option<Value>,
    /// Not supported: 400 with `server.strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub mcp_servers: Option<Value>,
    /// `{"effort", "format": {"type": "json_schema", "schema"}}`: the format constrains
    /// decoding (structured output); `effort` is accepted.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub output_config: Option<Value>,
    /// Accepted: prompt prefixes are cached automatically (the engine's KV cache).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cache_control: Option<Value>,
    /// Accepted and ignored (`speed`, `inference_geo`, `diagnostics`, `user_profile_id`,
    /// `workspace_id` have no meaning for a local server).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub speed: Option<Value>,
}

/// A `count_tokens` request: a Messages request without `max_tokens`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CountTokensRequest {
    /// Model name or alias.
    pub model: String,
    /// The conversation.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// System prompt.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    /// Tools.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// Tool choice.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Accepted.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub thinking: Option<Value>,
}

/// The answer of `count_tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CountTokensResponse {
    /// Tokens the request's prompt takes (after the chat template).
    pub input_tokens: usize,
}

/// A block of an answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// A reasoning model's thinking.
    Thinking {
        /// The thinking.
        thinking: String,
        /// Always empty: local models' thinking is not signed.
        signature: String,
    },
    /// Text.
    Text {
        /// The text.
        text: String,
    },
    /// A tool call.
    ToolUse {
        /// `toolu_…`.
        id: String,
        /// The tool.
        name: String,
        /// Its arguments.
        #[schema(value_type = Object)]
        input: Value,
    },
}

/// Token counts of a message.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MessageUsage {
    /// Prompt tokens.
    pub input_tokens: usize,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Prompt tokens written to a cache (always 0: the KV cache is reused automatically).
    pub cache_creation_input_tokens: usize,
    /// Prompt tokens read from the KV cache of an earlier request.
    pub cache_read_input_tokens: usize,
}

/// The assistant's answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Message {
    /// `msg_…`.
    pub id: String,
    /// `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: String,
    /// The model's canonical name.
    pub model: String,
    /// Text and tool-use blocks.
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use` (null while streaming).
    pub stop_reason: Option<String>,
    /// The stop sequence that ended the answer, if one did.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: MessageUsage,
}

/// What a `content_block_delta` adds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    /// More thinking.
    ThinkingDelta {
        /// The text.
        thinking: String,
    },
    /// More text.
    TextDelta {
        /// The text.
        text: String,
    },
    /// More of a tool call's JSON input.
    InputJsonDelta {
        /// A piece of the JSON text.
        partial_json: String,
    },
}

/// The end of a streamed message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MessageDeltaBody {
    /// Why it ended.
    pub stop_reason: Option<String>,
    /// The stop sequence that ended it, if one did.
    pub stop_sequence: Option<String>,
}

/// Output tokens, at the end of a streamed message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DeltaUsage {
    /// Generated tokens.
    pub output_tokens: usize,
}

/// One server-sent event of a streamed message (its `type` is also the SSE event name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message, without content yet.
    MessageStart {
        /// The message so far.
        message: Message,
    },
    /// A block begins.
    ContentBlockStart {
        /// Its position in `content`.
        index: usize,
        /// The block, empty.
        content_block: ContentBlock,
    },
    /// Keep-alive.
    Ping,
    /// More of a block.
    ContentBlockDelta {
        /// The block's position.
        index: usize,
        /// What it adds.
        delta: BlockDelta,
    },
    /// A block ends.
    ContentBlockStop {
        /// The block's position.
        index: usize,
    },
    /// The message ends: why, and its output tokens.
    MessageDelta {
        /// Why.
        delta: MessageDeltaBody,
        /// Output tokens.
        usage: DeltaUsage,
    },
    /// The last event.
    MessageStop,
}
