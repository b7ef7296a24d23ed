//! `POST /v1/chat/completions` bodies.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::common::{StreamOptions, Usage};

/// A chat completion request. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// Model name or alias, as listed by `/v1/models`.
    pub model: String,
    /// The conversation so far.
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    /// Most tokens to generate (deprecated by OpenAI in favour of `max_completion_tokens`).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// Most tokens to generate.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature in [0, 2]; 0 is greedy and deterministic. Default 1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1]. Default 1.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Number of choices. Default 1.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 8)]
    pub n: Option<i64>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Options for streaming.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Up to 4 sequences where generation stops; a string or a list of strings.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Penalty in [-2, 2] for tokens already present.
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    /// Penalty in [-2, 2] proportional to how often tokens appeared.
    #[serde(default)]
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    /// Return log-probabilities of the generated tokens.
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// Alternatives per token (0-20) with their log-probabilities; needs `logprobs`.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    /// Seed for reproducible sampling.
    #[serde(default)]
    pub seed: Option<i64>,
    /// An end-user id; accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// For reasoning models whose template takes it (`none` turns thinking off for
    /// templates with `enable_thinking`).
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    /// Extra variables for the chat template, e.g. `{"enable_thinking": false}` (vLLM's and
    /// llama.cpp's server's extension).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<Value>,
    /// `{"type":"text"}`, `{"type":"json_object"}` or
    /// `{"type":"json_schema","json_schema":{"name":...,"schema":{...},"strict":true}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Functions the model may call: `[{"type":"function","function":{"name","description","parameters"}}]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `none`, `auto`, `required`, or `{"type":"function","function":{"name":...}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Accepted; at most one call is made per turn.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Not supported: 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Value>,
    /// Not supported (text models): 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub audio: Option<Value>,
    /// Only `["text"]` is supported.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub modalities: Option<Value>,
    /// Not supported: 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub prediction: Option<Value>,
    /// Not supported: 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub web_search_options: Option<Value>,
    /// Deprecated by OpenAI; use `tools`. 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub functions: Option<Value>,
    /// Deprecated by OpenAI; use `tool_choice`. 400 with `strict_params`, else ignored.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub function_call: Option<Value>,
}

/// Who says a message (documentation type; parsed as a string and checked).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions.
    System,
    /// Instructions (newer name).
    Developer,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A function's result.
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(value_type = ChatRole)]
    pub role: String,
    /// A string, or a list of `{"type":"text","text":...}` parts.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
    /// An optional participant name.
    #[serde(default)]
    pub name: Option<String>,
    /// Calls an assistant message made (history).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionResponse {
    /// Unique id, `chatcmpl-...`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's canonical name.
    pub model: String,
    /// Build identity.
    pub system_fingerprint: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    /// Position in `choices`.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Log-probabilities when requested.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: String,
    /// The text.
    pub content: Option<String>,
    /// Always null: this server does not refuse.
    pub refusal: Option<String>,
    /// A reasoning model's thinking (the `<think>` block), apart from `content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Function calls, when the model called one (`finish_reason: "tool_calls"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// A function call made by the model.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCall {
    /// Position in `tool_calls` (streamed deltas only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// `call_...`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function and its JSON arguments.
    pub function: FunctionCall,
}

/// Function name and arguments.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// Its arguments, as a JSON string.
    pub arguments: String,
}

/// Log-probabilities of a chat choice.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
    /// Always null.
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

/// Log-probability of one token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatTokenLogprob {
    /// The token.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Option<Vec<u8>>,
    /// Most likely alternatives.
    pub top_logprobs: Vec<ChatTopLogprob>,
}

/// An alternative token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatTopLogprob {
    /// The token.
    pub token: String,
    /// Natural log of its probability.
    pub logprob: f32,
    /// UTF-8 bytes of the token.
    pub bytes: Option<Vec<u8>>,
}

impl From<&crate::engine::TokenLogprob> for ChatTokenLogprob {
    fn from(lp: &crate::engine::TokenLogprob) -> Self {
        Self {
            token: lp.token.clone(),
            logprob: lp.logprob,
            bytes: Some(lp.token.as_bytes().to_vec()),
            top_logprobs: lp
                .top
                .iter()
                .map(|t| ChatTopLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: Some(t.token.as_bytes().to_vec()),
                })
                .collect(),
        }
    }
}

/// One streamed chunk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// Same id on every chunk of a response.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's canonical name.
    pub model: String,
    /// Build identity.
    pub system_fingerprint: String,
    /// Deltas; empty on the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Null except on the last chunk when `stream_options.include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// A choice's delta in a chunk.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChatChunkChoice {
    /// Choice index.
    pub index: usize,
    /// What changed.
    pub delta: ChatDelta,
    /// Log-probabilities of the tokens in this delta.
    pub logprobs: Option<ChatLogprobs>,
    /// Set on the choice's last chunk.
    pub finish_reason: Option<String>,
}

/// New content of a choice.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ChatDelta {
    /// `assistant` on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// More of a reasoning model's thinking (`reasoning_content`, as llama.cpp's server,
    /// vLLM and DeepSeek send it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// Function calls: the first delta of a call carries its `id`, `type` and name, the
    /// next ones pieces of its `arguments`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A piece of a streamed function call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Position in `tool_calls`.
    pub index: usize,
    /// `call_...`, on the call's first delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the call's first delta.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its name (first delta) and pieces of its arguments.
    pub function: FunctionCallDelta,
}

/// A piece of a streamed function call's function.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FunctionCallDelta {
    /// The function's name, on the call's first delta.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}
