//! `POST /v1/responses`, `GET` and `DELETE /v1/responses/{id}` bodies (OpenAI's Responses
//! API), and the streamed events.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// A Responses request. Fields not listed are ignored.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ResponseRequest {
    /// Model name or alias.
    pub model: String,
    /// A string, or a list of items: messages (`user`, `system`, `developer`, `assistant`;
    /// content a string or `input_text`/`output_text` parts), `function_call` and
    /// `function_call_output`.
    #[schema(value_type = Object)]
    pub input: Value,
    /// A system message put first.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Most tokens to generate.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<i64>,
    /// Sampling temperature in [0, 2]. Default 1.
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass in (0, 1].
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Function tools: `{"type": "function", "name", "description", "parameters", "strict"}`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `auto`, `none`, `required` or `{"type": "function", "name"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Accepted (one call is made per turn).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", "name", "schema"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Returned as sent.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// End-user id, returned as sent.
    #[serde(default)]
    pub user: Option<String>,
    /// Keep the response for `previous_response_id` and `GET` (default true).
    #[serde(default)]
    pub store: Option<bool>,
    /// Continue the conversation of a stored response.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// `{"effort"}`: accepted (no model served here reasons).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<Value>,
    /// Stream the events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Not supported: 400.
    #[serde(default)]
    pub background: Option<bool>,
    /// Only `disabled` (the default) and `auto` are accepted.
    #[serde(default)]
    pub truncation: Option<String>,
    /// Accepted; nothing extra is included.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    pub include: Option<Value>,
    /// Seed for reproducible sampling (llamagate's extension).
    #[serde(default)]
    pub seed: Option<i64>,
}

/// A part of an output message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OutputText {
    /// `output_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text.
    pub text: String,
    /// Always empty.
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

impl OutputText {
    /// A text part.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            kind: "output_text".into(),
            text: text.into(),
            annotations: Vec::new(),
        }
    }
}

/// A piece of a reasoning item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReasoningText {
    /// `reasoning_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The thinking.
    pub text: String,
}

/// An item of a response's `output`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// A reasoning model's thinking.
    Reasoning {
        /// `rs_…`.
        id: String,
        /// Always empty (no summaries are made).
        #[schema(value_type = Vec<Object>)]
        summary: Vec<Value>,
        /// The thinking.
        content: Vec<ReasoningText>,
        /// `in_progress` while streaming, then `completed`.
        status: String,
    },
    /// The assistant's text.
    Message {
        /// `msg_…`.
        id: String,
        /// `in_progress` while streaming, then `completed` or `incomplete`.
        status: String,
        /// `assistant`.
        role: String,
        /// Its text parts.
        content: Vec<OutputText>,
    },
    /// A call of a function tool.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// The id a `function_call_output` answers (`call_…`).
        call_id: String,
        /// The function.
        name: String,
        /// Its arguments, a JSON text.
        arguments: String,
        /// `in_progress` or `completed`.
        status: String,
    },
}

/// `usage.input_tokens_details`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InputTokensDetails {
    /// Prompt tokens served from a reused KV-cache prefix.
    pub cached_tokens: usize,
    /// Prompt tokens written to a cache for later requests (none: the KV cache is reused
    /// implicitly).
    #[serde(default)]
    pub cache_write_tokens: usize,
}

/// `usage.output_tokens_details`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct OutputTokensDetails {
    /// Tokens of reasoning (none: no model served here reasons).
    pub reasoning_tokens: usize,
}

/// Token counts of a response.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResponseUsage {
    /// Prompt tokens.
    pub input_tokens: usize,
    /// Their breakdown.
    pub input_tokens_details: InputTokensDetails,
    /// Generated tokens.
    pub output_tokens: usize,
    /// Their breakdown.
    pub output_tokens_details: OutputTokensDetails,
    /// Both.
    pub total_tokens: usize,
}

/// Why a response is incomplete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// A response (what `POST` returns, `GET` returns again, and the stream's events carry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    /// The failure, when `failed`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Why it is incomplete.
    pub incomplete_details: Option<IncompleteDetails>,
    /// The request's `instructions`.
    pub instructions: Option<String>,
    /// The request's `max_output_tokens`.
    pub max_output_tokens: Option<usize>,
    /// The model's canonical name.
    pub model: String,
    /// Messages and function calls.
    pub output: Vec<OutputItem>,
    /// As requested (default true).
    pub parallel_tool_calls: bool,
    /// The response this one continues.
    pub previous_response_id: Option<String>,
    /// `{"effort": null, "summary": null}`.
    #[schema(value_type = Object)]
    pub reasoning: Value,
    /// Whether it is kept for `GET` and `previous_response_id`.
    pub store: bool,
    /// Sampling temperature used.
    pub temperature: f64,
    /// `{"format": …}` as requested.
    #[schema(value_type = Object)]
    pub text: Value,
    /// As requested.
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    /// As requested.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// Nucleus sampling mass used.
    pub top_p: f64,
    /// `disabled`.
    pub truncation: String,
    /// Token counts (null while in progress).
    pub usage: Option<ResponseUsage>,
    /// As requested.
    pub user: Option<String>,
    /// As requested.
    #[schema(value_type = Object)]
    pub metadata: Value,
}

/// The answer of `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResponseDeleted {
    /// The id.
    pub id: String,
    /// `response`.
    pub object: String,
    /// `true`.
    pub deleted: bool,
}

/// One streamed event; `sequence_number` counts from 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ResponseEvent {
    /// Position in the stream.
    pub sequence_number: usize,
    /// The event.
    #[serde(flatten)]
    pub body: ResponseEventBody,
}

/// What a streamed event says (its `type` is also the SSE event name).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type")]
pub enum ResponseEventBody {
    /// The response exists.
    #[serde(rename = "response.created")]
    Created {
        /// It, in progress.
        response: ResponseObject,
    },
    /// It is being generated.
    #[serde(rename = "response.in_progress")]
    InProgress {
        /// It, in progress.
        response: ResponseObject,
    },
    /// An output item begins.
    #[serde(rename = "response.output_item.added")]
    OutputItemAdded {
        /// Its position in `output`.
        output_index: usize,
        /// The item, empty.
        item: OutputItem,
    },
    /// A message's text part begins.
    #[serde(rename = "response.content_part.added")]
    ContentPartAdded {
        /// The message's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position in `content`.
        content_index: usize,
        /// The part, empty.
        part: OutputText,
    },
    /// More text.
    #[serde(rename = "response.output_text.delta")]
    OutputTextDelta {
        /// The message's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position.
        content_index: usize,
        /// The text.
        delta: String,
        /// Always empty.
        #[schema(value_type = Vec<Object>)]
        logprobs: Vec<Value>,
    },
    /// The text part is complete.
    #[serde(rename = "response.output_text.done")]
    OutputTextDone {
        /// The message's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position.
        content_index: usize,
        /// All of it.
        text: String,
        /// Always empty.
        #[schema(value_type = Vec<Object>)]
        logprobs: Vec<Value>,
    },
    /// The part is complete.
    #[serde(rename = "response.content_part.done")]
    ContentPartDone {
        /// The message's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position.
        content_index: usize,
        /// The part.
        part: OutputText,
    },
    /// More thinking.
    #[serde(rename = "response.reasoning_text.delta")]
    ReasoningTextDelta {
        /// The reasoning item's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position.
        content_index: usize,
        /// The text.
        delta: String,
    },
    /// The thinking is complete.
    #[serde(rename = "response.reasoning_text.done")]
    ReasoningTextDone {
        /// The reasoning item's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The part's position.
        content_index: usize,
        /// All of it.
        text: String,
    },
    /// More of a function call's arguments.
    #[serde(rename = "response.function_call_arguments.delta")]
    FunctionCallArgumentsDelta {
        /// The call item's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// A piece of the arguments' JSON text.
        delta: String,
    },
    /// The arguments are complete.
    #[serde(rename = "response.function_call_arguments.done")]
    FunctionCallArgumentsDone {
        /// The call item's id.
        item_id: String,
        /// Its position in `output`.
        output_index: usize,
        /// The function.
        name: String,
        /// All of them.
        arguments: String,
    },
    /// An output item is complete.
    #[serde(rename = "response.output_item.done")]
    OutputItemDone {
        /// Its position in `output`.
        output_index: usize,
        /// The item.
        item: OutputItem,
    },
    /// The response is complete.
    #[serde(rename = "response.completed")]
    Completed {
        /// It.
        response: ResponseObject,
    },
    /// The response stopped at `max_output_tokens`.
    #[serde(rename = "response.incomplete")]
    Incomplete {
        /// It.
        response: ResponseObject,
    },
    /// The generation failed after the stream began.
    #[serde(rename = "error")]
    Error {
        /// Machine-readable code.
        code: Option<String>,
        /// What went wrong.
        message: String,
        /// The request field at fault, if any.
        param: Option<String>,
    },
    /// The response failed (after an `error` event).
    #[serde(rename = "response.failed")]
    Failed {
        /// It, with `status` `failed` and its `error`.
        response: ResponseObject,
    },
}
