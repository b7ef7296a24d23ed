//! Turns parsed OpenAI request bodies into `Valid*` requests, field by field, before
//! anything is queued. Every rejection is a 400 naming the field in backticks and in
//! `param`. Bounds come from `[limits]`, so no request can make the engine allocate
//! without limit (the engine allocates per choice before it checks anything).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::LimitSettings;
use crate::engine::{ChatTurn, EmbedInput, Prompt, Role, SamplingSettings};
use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::CompletionRequest;
use crate::openai::embeddings::EmbeddingRequest;

/// Sampling settings whose `max_tokens` may still be open (filled from the context window
/// by the scheduler, which defines the type).
pub use crate::scheduler::Sampling as ValidSampling;

pub mod anthropic;
pub mod responses;

pub use crate::engine::tools::{ToolMode, ToolSpec};

/// What shape the answer must take.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputMode {
    /// Free text.
    Text,
    /// JSON matching this schema (`json_object` is `{"type":"object"}`).
    Json(Value),
    /// Tool calls (or, with `Auto`, a text answer).
    Tools {
        /// The functions.
        tools: Vec<ToolSpec>,
        /// How they may be used.
        mode: ToolMode,
        /// Several calls in one turn are allowed.
        parallel: bool,
    },
}

/// A checked chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidChatRequest {
    /// Requested model id (name or alias).
    pub model: String,
    /// The conversation.
    pub prompt: Prompt,
    /// How to sample.
    pub sampling: ValidSampling,
    /// Stream as SSE.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Text, JSON or tool calls.
    pub output: OutputMode,
    /// Unsupported parameters that were ignored (only without `strict_params`).
    pub ignored_params: Vec<&'static str>,
}

/// A checked text completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidCompletionRequest {
    /// Requested model id.
    pub model: String,
    /// One generation per prompt.
    pub prompts: Vec<String>,
    /// How to sample.
    pub sampling: ValidSampling,
    /// Stream as SSE.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub include_usage: bool,
    /// Put the prompt in front of each choice's text.
    pub echo: bool,
}

/// Parses a JSON body, naming the field at fault when it does not fit the schema.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::InvalidRequest {
            message: "The request body is empty; send a JSON object.".into(),
            param: None,
            code: Some("invalid_json"),
        });
    }
    // Syntax first (the whole body), then the schema, so each gets the right error.
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest {
        message: format!("The request body is not valid JSON: {e}"),
        param: None,
        code: Some("invalid_json"),
    })?;
    let result: Result<T, _> = serde_path_to_error::deserialize(&value);
    result.map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        // "missing field `x`" reports the parent path; name the field itself.
        let param = match message.strip_prefix("missing field `") {
            Some(rest) => {
                let field = rest.split('`').next().unwrap_or_default();
                if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                }
            }
            None => path,
        };
        let message = if message.starts_with("missing field") {
            format!("`{param}` is required.")
        } else if param == "." {
            format!("The request body must be a JSON object: {message}")
        } else {
            format!("Invalid value for `{param}`: {message}")
        };
        ApiError::InvalidRequest {
            message,
            param: (param != ".").then_some(param),
            code: None,
        }
    })
}

fn check_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::invalid("model", "`model` must not be empty."));
    }
    Ok(())
}

fn check_range(
    name: &str,
    value: Option<f64>,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<(), ApiError> {
    if let Some(v) = value {
        let below = if lo_open { v <= lo } else { v < lo };
        if !v.is_finite() || below || v > hi {
            let open = if lo_open { "(" } else { "[" };
            return Err(ApiError::invalid(
                name,
                format!("`{name}` must be in {open}{lo}, {hi}], got {v}."),
            ));
        }
    }
    Ok(())
}

fn positive(name: &str, value: Option<i64>) -> Result<Option<usize>, ApiError> {
    match value {
        None => Ok(None),
        Some(v) if v >= 1 => Ok(Some(usize::try_from(v).unwrap_or(usize::MAX))),
        Some(v) => Err(ApiError::invalid(
            name,
            format!("`{name}` must be at least 1, got {v}."),
        )),
    }
}

fn parse_stop(stop: &Option<Value>, limits: &LimitSettings) -> Result<Vec<String>, ApiError> {
    let list: Vec<String> = match stop {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(ApiError::invalid(
                    format!("stop[{i}]"),
                    format!("`stop[{i}]` must be a string."),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::invalid(
                "stop",
                "`stop` must be a string or a list of strings.",
            ))
        }
    };
    if list.len() > limits.max_stop_sequences {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` may hold at most {} sequences, got {}.",
                limits.max_stop_sequences,
                list.len()
            ),
        ));
    }
    if let Some((i, _)) = list
        .iter()
        .enumerate()
        .find(|(_, s)| s.len() > limits.max_stop_bytes)
    {
        return Err(ApiError::invalid(
            format!("stop[{i}]"),
            format!(
                "`stop[{i}]` is longer than {} bytes.",
                limits.max_stop_bytes
            ),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

struct CommonSampling<'a> {
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    seed: Option<i64>,
    stop: &'a Option<Value>,
    max_tokens: Option<usize>,
    logprobs: bool,
    top_logprobs: usize,
    /// The end user, for session affinity.
    user: Option<&'a str>,
}

fn sampling(c: CommonSampling<'_>, limits: &LimitSettings) -> Result<ValidSampling, ApiError> {
    check_range("temperature", c.temperature, 0.0, 2.0, false)?;
    check_range("top_p", c.top_p, 0.0, 1.0, true)?;
    check_range("presence_penalty", c.presence_penalty, -2.0, 2.0, false)?;
    check_range("frequency_penalty", c.frequency_penalty, -2.0, 2.0, false)?;
    let n = positive("n", c.n)?.unwrap_or(1);
    if n > limits.max_n {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be at most {}, got {n}.", limits.max_n),
        ));
    }
    let temperature = c.temperature.unwrap_or(1.0);
    Ok(ValidSampling {
        settings: SamplingSettings {
            temperature,
            top_p: c.top_p.unwrap_or(1.0),
            seed: c.seed.map(|s| s as u64),
            presence_penalty: c.presence_penalty.unwrap_or(0.0) as f32,
            frequency_penalty: c.frequency_penalty.unwrap_or(0.0) as f32,
            // Filled by the scheduler from `max_tokens` below and the context window.
            max_tokens: None,
            stop: parse_stop(c.stop, limits)?,
            logprobs: c.logprobs,
            top_logprobs: c.top_logprobs,
            n,
        },
        max_tokens: c.max_tokens,
        json_schema: None,
        affinity: c
            .user
            .filter(|u| !u.is_empty())
            .map(|u| u.chars().take(256).collect()),
    })
}

fn role(raw: &str, i: usize) -> Result<Role, ApiError> {
    match raw {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        "function" => Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!("`messages[{i}].role` `function` is deprecated by OpenAI and not supported; use `tool`."),
        )),
        other => Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!(
                "`messages[{i}].role` must be one of `system`, `developer`, `user`, `assistant`; got `{}`.",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}

fn content_text(content: &Option<Value>, role: Role, i: usize) -> Result<String, ApiError> {
    let field = format!("messages[{i}].content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if role == Role::Assistant => Ok(String::new()),
        None | Some(Value::Null) => Err(ApiError::invalid(
            &field,
            format!("`{field}` is required for a `{}` message.", role.as_str()),
        )),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let pfield = format!("{field}[{j}]");
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                match kind {
                    // `input_text` / `output_text`: the Responses API's names for text parts.
                    "text" | "input_text" | "output_text" => match part.get("text") {
                        Some(Value::String(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                format!("{pfield}.text"),
                                format!("`{pfield}.text` must be a string."),
                            ))
                        }
                    },
                    "image_url" | "input_audio" | "file" | "input_image" => {
                        return Err(ApiError::invalid(
                            &pfield,
                            format!(
                                "`{pfield}` is a `{kind}` part, but this model takes text only."
                            ),
                        ))
                    }
                    "" => {
                        return Err(ApiError::invalid(
                            format!("{pfield}.type"),
                            format!("`{pfield}.type` is required (use `text`)."),
                        ))
                    }
                    other => {
                        return Err(ApiError::invalid(
                            format!("{pfield}.type"),
                            format!(
                                "`{pfield}.type` `{}` is not supported; use `text`.",
                                other.chars().take(64).collect::<String>()
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        Some(_) => Err(ApiError::invalid(
            &field,
            format!("`{field}` must be a string or a list of content parts."),
        )),
    }
}

/// Checks a chat request.
pub fn validate_chat(
    req: ChatCompletionRequest,
    limits: &LimitSettings,
    strict: bool,
) -> Result<ValidChatRequest, ApiError> {
    check_model(&req.model)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    if req.messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "`messages` may hold at most {} messages, got {}.",
                limits.max_messages,
                req.messages.len()
            ),
        ));
    }
    let mut turns = Vec::with_capacity(req.messages.len() + 1);
    let mut bytes = 0usize;
    let mut call_names: std::collections::HashMap<String, String> = Default::default();
    for (i, m) in req.messages.iter().enumerate() {
        let role = role(&m.role, i)?;
        let content = content_text(&m.content, role, i)?;
        let mut turn = ChatTurn::new(role, content);
        if role == Role::Assistant {
            if let Some(calls) = &m.tool_calls {
                turn.tool_calls = tool_calls(calls, i, &mut call_names)?;
            }
        }
        if role == Role::Tool {
            let id = m.tool_call_id.as_deref().ok_or_else(|| {
                ApiError::invalid(
                    format!("messages[{i}].tool_call_id"),
                    format!("`messages[{i}].tool_call_id` is required for a `tool` message."),
                )
            })?;
            turn.name = call_names.get(id).cloned();
            turn.tool_call_id = Some(id.to_string());
        }
        bytes += turn.text_bytes();
        if bytes > limits.max_prompt_bytes {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "`messages` hold more than {} bytes of text (limits.max_prompt_bytes).",
                    limits.max_prompt_bytes
                ),
            ));
        }
        turns.push(turn);
    }
    let max_completion = positive("max_completion_tokens", req.max_completion_tokens)?;
    let max_tokens = positive("max_tokens", req.max_tokens)?;
    let top_logprobs = match req.top_logprobs {
        None => 0,
        Some(k) if (0..=limits.max_top_logprobs as i64).contains(&k) => {
            if req.logprobs != Some(true) {
                return Err(ApiError::invalid(
                    "top_logprobs",
                    "`top_logprobs` requires `logprobs` to be true.",
                ));
            }
            k as usize
        }
        Some(k) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!(
                    "`top_logprobs` must be in [0, {}], got {k}.",
                    limits.max_top_logprobs
                ),
            ))
        }
    };
    let sampling = sampling(
        CommonSampling {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            seed: req.seed,
            stop: &req.stop,
            max_tokens: max_completion.or(max_tokens),
            logprobs: req.logprobs.unwrap_or(false),
            top_logprobs,
            user: req.user.as_deref(),
        },
        limits,
    )?;
    let ignored_params = unsupported_params(&req, strict)?;
    let output = output_mode(&req, limits)?;
    let mut sampling = sampling;
    let stream = req.stream.unwrap_or(false);
    let mut options = chat_options(
        req.reasoning_effort.as_deref(),
        &req.chat_template_kwargs,
        "reasoning_effort",
    )?;
    constrain(&output, &mut sampling, &mut options);
    Ok(ValidChatRequest {
        model: req.model,
        prompt: Prompt::Chat(turns, options),
        sampling,
        stream,
        include_usage: stream
            && req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        output,
        ignored_params,
    })
}

/// The chat template's variables from a reasoning effort (named `field` in the request)
/// and `chat_template_kwargs`: the effort goes to templates as `reasoning_effort`, and
/// `none` also turns `enable_thinking` off; the kwargs pass as given (they win).
fn chat_options(
    effort: Option<&str>,
    kwargs: &Option<Value>,
    field: &str,
) -> Result<crate::engine::ChatOptions, ApiError> {
    let mut options = crate::engine::ChatOptions::default();
    if let Some(effort) = effort {
        if !matches!(
            effort,
            "none" | "minimal" | "low" | "medium" | "high" | "xhigh" | "max"
        ) {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be `none`, `minimal`, `low`, `medium`, `high`, `xhigh` or `max`."),
            ));
        }
        options.reasoning_effort = Some(effort.to_string());
        if effort == "none" {
            options.enable_thinking = Some(false);
        }
    }
    match kwargs {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("enable_thinking", Value::Bool(on)) => options.enable_thinking = Some(*on),
                    ("enable_thinking", _) => {
                        return Err(ApiError::invalid(
                            "chat_template_kwargs.enable_thinking",
                            "`chat_template_kwargs.enable_thinking` must be a boolean.",
                        ))
                    }
                    // The template's own variables cannot be replaced.
                    ("messages" | "add_generation_prompt" | "bos_token" | "eos_token", _) => {
                        return Err(ApiError::invalid(
                            format!("chat_template_kwargs.{key}"),
                            format!("`chat_template_kwargs.{key}` is set by the server."),
                        ))
                    }
                    _ => options.extra.push((key.clone(), value.clone())),
                }
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                "`chat_template_kwargs` must be an object.",
            ))
        }
    }
    Ok(options)
}

/// Parameters this server cannot honour: 400 when `strict`, else the list to report.
fn unsupported_params(
    req: &ChatCompletionRequest,
    strict: bool,
) -> Result<Vec<&'static str>, ApiError> {
    let present = |v: &Option<Value>| match v {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    let mut found = Vec::new();
    for (name, value) in [
        ("logit_bias", &req.logit_bias),
        ("audio", &req.audio),
        ("prediction", &req.prediction),
        ("web_search_options", &req.web_search_options),
        ("functions", &req.functions),
        ("function_call", &req.function_call),
    ] {
        if present(value) {
            found.push(name);
        }
    }
    if let Some(m) = &req.modalities {
        let text_only = m
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v.as_str() == Some("text")));
        if !m.is_null() && !text_only {
            found.push("modalities");
        }
    }
    match found.first() {
        Some(name) if strict => Err(ApiError::invalid(
            *name,
            format!(
                "`{name}` is not supported by this server and would be ignored; remove it \
                 (or turn off server.strict_params to have unsupported parameters ignored)."
            ),
        )),
        _ => Ok(found),
    }
}

/// An assistant message's `tool_calls`, checked.
fn tool_calls(
    calls: &Value,
    i: usize,
    names: &mut std::collections::HashMap<String, String>,
) -> Result<Vec<crate::engine::tools::TurnCall>, ApiError> {
    let field = format!("messages[{i}].tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| ApiError::invalid(&field, format!("`{field}` must be a list.")))?;
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let name = call["function"]["name"].as_str().ok_or_else(|| {
                ApiError::invalid(
                    format!("{field}[{j}].function.name"),
                    format!("`{field}[{j}].function.name` must be a string."),
                )
            })?;
            let id = call["id"].as_str().unwrap_or_default().to_string();
            names.insert(id.clone(), name.to_string());
            Ok(crate::engine::tools::TurnCall {
                id,
                name: name.to_string(),
                arguments: call_arguments(&call["function"]["arguments"]),
            })
        })
        .collect()
}

/// A call's arguments as sent (a JSON string, usually) made a value: the object it holds,
/// or the text itself when it is not JSON.
pub fn call_arguments(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
        Value::Null => serde_json::json!({}),
        other => other.clone(),
    }
}

fn output_mode(
    req: &ChatCompletionRequest,
    limits: &LimitSettings,
) -> Result<OutputMode, ApiError> {
    let tools = parse_tools(&req.tools, limits.max_tools)?;
    let parallel = req.parallel_tool_calls.unwrap_or(true);
    let choice = match &req.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(None),
            "auto" => Some(Some(ToolMode::Auto)),
            "required" => Some(Some(ToolMode::Required)),
            other => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` must be `none`, `auto`, `required` or a named function; got `{}`.", other.chars().take(40).collect::<String>()),
                ))
            }
        },
        Some(v) => {
            let name = v["function"]["name"].as_str().ok_or_else(|| {
                ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be `none`, `auto`, `required` or {\"type\":\"function\",\"function\":{\"name\":...}}.",
                )
            })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names `{name}`, which is not in `tools`."),
                ));
            }
            Some(Some(ToolMode::Named(name.to_string())))
        }
    };
    if !tools.is_empty() {
        match choice {
            Some(None) => {}
            Some(Some(mode)) => {
                return Ok(OutputMode::Tools {
                    tools,
                    mode,
                    parallel,
                })
            }
            None => {
                return Ok(OutputMode::Tools {
                    tools,
                    mode: ToolMode::Auto,
                    parallel,
                })
            }
        }
    } else if matches!(choice, Some(Some(_))) {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice` needs `tools`.",
        ));
    }
    match &req.response_format {
        None | Some(Value::Null) => Ok(OutputMode::Text),
        Some(rf) => match rf["type"].as_str() {
            Some("text") => Ok(OutputMode::Text),
            Some("json_object") => Ok(OutputMode::Json(serde_json::json!({"type": "object"}))),
            Some("json_schema") => {
                let spec = &rf["json_schema"];
                let name = spec["name"].as_str().unwrap_or("");
                if !is_function_name(name) {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "`response_format.json_schema.name` must be 1-64 letters, digits, `_` or `-`.",
                    ));
                }
                match &spec["schema"] {
                    Value::Object(o) if !o.is_empty() => {
                        Ok(OutputMode::Json(spec["schema"].clone()))
                    }
                    _ => Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "`response_format.json_schema.schema` must be a JSON Schema object.",
                    )),
                }
            }
            _ => Err(ApiError::invalid(
                "response_format.type",
                "`response_format.type` must be `text`, `json_object` or `json_schema`.",
            )),
        },
    }
}

/// OpenAI's rule for function and schema names: 1-64 letters, digits, `_` or `-`.
fn is_function_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn parse_tools(tools: &Option<Value>, max_tools: usize) -> Result<Vec<ToolSpec>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a list.")),
    };
    if list.len() > max_tools {
        return Err(ApiError::invalid(
            "tools",
            format!("`tools` may hold at most {max_tools} functions (limits.max_tools)."),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            if t["type"].as_str() != Some("function") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("`tools[{i}].type` must be `function`."),
                ));
            }
            let f = &t["function"];
            let name = f["name"].as_str().unwrap_or("");
            if !is_function_name(name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("`tools[{i}].function.name` must be 1-64 letters, digits, `_` or `-`."),
                ));
            }
            let parameters = match &f["parameters"] {
                Value::Null => serde_json::json!({"type": "object", "properties": {}}),
                Value::Object(_) => f["parameters"].clone(),
                _ => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}].function.parameters"),
                        format!("`tools[{i}].function.parameters` must be a JSON Schema object."),
                    ))
                }
            };
            Ok(ToolSpec {
                name: name.to_string(),
                description: f["description"].as_str().unwrap_or("").to_string(),
                parameters,
            })
        })
        .collect()
}

/// Applies an output mode to a request: the JSON schema that constrains decoding, or the
/// tools the model may call (the engine renders them in the model's own syntax, or in the
/// portable form). Shared by every chat-like API.
fn constrain(
    output: &OutputMode,
    sampling: &mut ValidSampling,
    options: &mut crate::engine::ChatOptions,
) {
    sampling.json_schema = match output {
        OutputMode::Json(schema) => Some(schema.clone()),
        OutputMode::Text | OutputMode::Tools { .. } => None,
    };
    options.tools = match output {
        OutputMode::Tools {
            tools,
            mode,
            parallel,
        } => Some(std::sync::Arc::new(crate::engine::tools::ToolChoice {
            tools: tools.clone(),
            mode: mode.clone(),
            parallel: *parallel,
        })),
        _ => None,
    };
}

/// A checked embeddings request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEmbeddingRequest {
    /// Model name or alias.
    pub model: String,
    /// The inputs, in order.
    pub inputs: Vec<EmbedInput>,
    /// Answer in base64 instead of float lists.
    pub base64: bool,
    /// Requested vector length.
    pub dimensions: Option<usize>,
}

/// A token-id list of an embeddings input, or the error naming `param`.
fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, ApiError> {
    if items.is_empty() {
        return Err(ApiError::invalid(
            param,
            format!("`{param}` must not be an empty list of token ids."),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(j, v)| {
            v.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("{param}[{j}]"),
                        format!("`{param}[{j}]` must be a token id (a non-negative integer)."),
                    )
                })
        })
        .collect()
}

/// Checks an embeddings request: `input` as a string, strings, token ids or lists of
/// token ids, none empty, within `[limits]`.
pub fn validate_embedding(
    req: EmbeddingRequest,
    limits: &LimitSettings,
) -> Result<ValidEmbeddingRequest, ApiError> {
    check_model(&req.model)?;
    let empty_text = |param: String| {
        ApiError::invalid(
            param.clone(),
            format!("`{param}` must not be empty: an empty string has no embedding."),
        )
    };
    let inputs: Vec<EmbedInput> = match &req.input {
        Value::String(s) if s.is_empty() => return Err(empty_text("input".into())),
        Value::String(s) => vec![EmbedInput::Text(s.clone())],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid("input", "`input` must not be an empty list."))
        }
        Value::Array(items) if items[0].is_number() => {
            vec![EmbedInput::Tokens(token_ids(items, "input")?)]
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if s.is_empty() => Err(empty_text(format!("input[{i}]"))),
                Value::String(s) => Ok(EmbedInput::Text(s.clone())),
                Value::Array(ids) => Ok(EmbedInput::Tokens(token_ids(ids, &format!("input[{i}]"))?)),
                _ => Err(ApiError::invalid(
                    format!("input[{i}]"),
                    format!("`input[{i}]` must be a string or a list of token ids."),
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string, a list of strings, a list of token ids or a list of token-id lists.",
            ))
        }
    };
    if inputs.len() > limits.max_embedding_inputs {
        return Err(ApiError::invalid(
            "input",
            format!(
                "`input` may hold at most {} inputs, got {} (limits.max_embedding_inputs).",
                limits.max_embedding_inputs,
                inputs.len()
            ),
        ));
    }
    let text_bytes: usize = inputs
        .iter()
        .map(|i| match i {
            EmbedInput::Text(t) => t.len(),
            EmbedInput::Tokens(t) => t.len() * 4,
        })
        .sum();
    if text_bytes > limits.max_prompt_bytes {
        return Err(ApiError::invalid(
            "input",
            format!(
                "`input` holds more than {} bytes of text (limits.max_prompt_bytes).",
                limits.max_prompt_bytes
            ),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::InvalidRequest {
                message: format!(
                    "`encoding_format` must be `float` or `base64`, got `{}`.",
                    other.chars().take(64).collect::<String>()
                ),
                param: Some("encoding_format".into()),
                code: Some("unsupported_value"),
            })
        }
    };
    let dimensions = match req.dimensions {
        None => None,
        Some(d) if d >= 1 => Some(usize::try_from(d).unwrap_or(usize::MAX)),
        Some(_) => {
            return Err(ApiError::invalid(
                "dimensions",
                "`dimensions` must be at least 1.",
            ))
        }
    };
    Ok(ValidEmbeddingRequest {
        model: req.model,
        inputs,
        base64,
        dimensions,
    })
}

/// Checks a text completion request.
pub fn validate_completion(
    req: CompletionRequest,
    limits: &LimitSettings,
) -> Result<ValidCompletionRequest, ApiError> {
    check_model(&req.model)?;
    let prompts: Vec<String> = match &req.prompt {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) if items.is_empty() => {
            return Err(ApiError::invalid("prompt", "`prompt` must not be an empty list."))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Array(_) => Err(ApiError::invalid(
                    "prompt",
                    "`prompt` as token ids is not supported; send text (a string or a list of strings).",
                )),
                _ => Err(ApiError::invalid(
                    format!("prompt[{i}]"),
                    format!("`prompt[{i}]` must be a string."),
                )),
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(ApiError::invalid(
                "prompt",
                "`prompt` must be a string or a list of strings.",
            ))
        }
    };
    if prompts.len() > limits.max_prompts {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` may hold at most {} prompts, got {}.",
                limits.max_prompts,
                prompts.len()
            ),
        ));
    }
    if prompts.iter().map(String::len).sum::<usize>() > limits.max_prompt_bytes {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "`prompt` holds more than {} bytes of text (limits.max_prompt_bytes).",
                limits.max_prompt_bytes
            ),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` is not supported by this server.",
        ));
    }
    let n = req.n.unwrap_or(1);
    if let Some(best_of) = req.best_of {
        if best_of != n {
            return Err(ApiError::invalid(
                "best_of",
                "`best_of` is only supported when equal to `n`.",
            ));
        }
    }
    let top_logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=limits.max_completion_logprobs as i64).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!(
                    "`logprobs` must be in [0, {}], got {k}.",
                    limits.max_completion_logprobs
                ),
            ))
        }
    };
    let sampling = sampling(
        CommonSampling {
            temperature: req.temperature,
            top_p: req.top_p,
            n: req.n,
            presence_penalty: req.presence_penalty,
            frequency_penalty: req.frequency_penalty,
            seed: req.seed,
            stop: &req.stop,
            max_tokens: positive("max_tokens", req.max_tokens)?.or(Some(16)),
            logprobs: top_logprobs.is_some(),
            top_logprobs: top_logprobs.unwrap_or(0),
            user: req.user.as_deref(),
        },
        limits,
    )?;
    let stream = req.stream.unwrap_or(false);
    Ok(ValidCompletionRequest {
        model: req.model,
        prompts,
        sampling,
        stream,
        include_usage: stream
            && req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        echo: req.echo.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedding(json: &str) -> Result<ValidEmbeddingRequest, ApiError> {
        let req: EmbeddingRequest = parse_json(json.as_bytes())?;
        validate_embedding(req, &LimitSettings::default())
    }

    #[test]
    fn reasoning_effort_and_template_kwargs_reach_the_prompt() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"none","chat_template_kwargs":{"foo":1}}"#).unwrap();
        let Prompt::Chat(_, options) = &v.prompt else {
            panic!()
        };
        assert_eq!(options.enable_thinking, Some(false));
        assert_eq!(options.reasoning_effort.as_deref(), Some("none"));
        assert_eq!(
            options.extra,
            vec![("foo".to_string(), serde_json::json!(1))]
        );
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"none","chat_template_kwargs":{"enable_thinking":true}}"#).unwrap();
        let Prompt::Chat(_, options) = &v.prompt else {
            panic!()
        };
        assert_eq!(options.enable_thinking, Some(true), "kwargs win");
        for (body, field) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"reasoning_effort":"huge"}"#,
                "reasoning_effort",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[1]}"#,
                "chat_template_kwargs",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"messages":[]}}"#,
                "chat_template_kwargs.messages",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"chat_template_kwargs":{"enable_thinking":"no"}}"#,
                "chat_template_kwargs.enable_thinking",
            ),
        ] {
            assert_eq!(param_of(chat(body).unwrap_err()), field, "{body}");
        }
    }

    #[test]
    fn embedding_inputs_in_every_form() {
        let one = embedding(r#"{"model":"m","input":"hi"}"#).unwrap();
        assert_eq!(one.inputs, vec![EmbedInput::Text("hi".into())]);
        assert!(!one.base64 && one.dimensions.is_none());
        let many = embedding(
            r#"{"model":"m","input":["a","b"],"encoding_format":"base64","dimensions":3}"#,
        )
        .unwrap();
        assert_eq!(many.inputs.len(), 2);
        assert!(many.base64);
        assert_eq!(many.dimensions, Some(3));
        let ids = embedding(r#"{"model":"m","input":[1,2,3]}"#).unwrap();
        assert_eq!(ids.inputs, vec![EmbedInput::Tokens(vec![1, 2, 3])]);
        let lists = embedding(r#"{"model":"m","input":[[1],[2,3]],"user":"u"}"#).unwrap();
        assert_eq!(
            lists.inputs,
            vec![EmbedInput::Tokens(vec![1]), EmbedInput::Tokens(vec![2, 3])]
        );
    }

    #[test]
    fn bad_embedding_inputs_name_the_field() {
        for (body, param) in [
            (r#"{"model":"m","input":""}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":["a",""]}"#, "input[1]"),
            (r#"{"model":"m","input":["a",null]}"#, "input[1]"),
            (r#"{"model":"m","input":[1,"a"]}"#, "input[1]"),
            (r#"{"model":"m","input":[1,4294967296]}"#, "input[1]"),
            (r#"{"model":"m","input":[[1],[-1]]}"#, "input[1][0]"),
            (r#"{"model":"m","input":true}"#, "input"),
            (
                r#"{"model":"m","input":"a","encoding_format":"int8"}"#,
                "encoding_format",
            ),
            (r#"{"model":"m","input":"a","dimensions":-3}"#, "dimensions"),
            (r#"{"model":" ","input":"a"}"#, "model"),
        ] {
            assert_eq!(param_of(embedding(body).unwrap_err()), param, "{body}");
        }
        let limits = LimitSettings {
            max_embedding_inputs: 2,
            ..LimitSettings::default()
        };
        let req: EmbeddingRequest = parse_json(br#"{"model":"m","input":["a","b","c"]}"#).unwrap();
        assert_eq!(
            param_of(validate_embedding(req, &limits).unwrap_err()),
            "input"
        );
    }

    fn chat(json: &str) -> Result<ValidChatRequest, ApiError> {
        let req: ChatCompletionRequest = parse_json(json.as_bytes())?;
        validate_chat(req, &LimitSettings::default(), true)
    }

    fn param_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn minimal_chat_is_valid() {
        let v = chat(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#).unwrap();
        assert_eq!(v.sampling.settings.temperature, 1.0);
        assert_eq!(v.sampling.max_tokens, None);
        assert!(!v.stream);
    }

    #[test]
    fn text_parts_are_joined() {
        let v = chat(r#"{"model":"m","messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#).unwrap();
        assert_eq!(
            v.prompt,
            Prompt::chat(vec![ChatTurn::new(Role::System, "ab".into())])
        );
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":0}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":100000}"#,
                "n",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-5}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e999}"#,
                "",
            ),
            (
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user"}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
                "messages[0].content[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["a","b","c","d","e"]}"#,
                "stop",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
                "stop[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_logprobs":3}"#,
                "top_logprobs",
            ),
            (r#"{"model":"m","messages":"hello"}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"presence_penalty":-2.5}"#,
                "presence_penalty",
            ),
        ];
        for (json, param) in cases {
            let err = chat(json).expect_err(json);
            let p = param_of(err.clone());
            if !param.is_empty() {
                assert_eq!(p, param, "{json}: {err}");
                assert!(
                    err.to_string().contains(&format!("`{param}`")),
                    "{json}: {err}"
                );
            }
        }
    }

    #[test]
    fn malformed_json_is_invalid_json() {
        for body in [
            "{",
            "",
            "{\"model\": \"m\", \"messages\": [",
            "{\"model\":\"m\"} trailing",
        ] {
            match parse_json::<ChatCompletionRequest>(body.as_bytes()) {
                Err(ApiError::InvalidRequest { code, .. }) => {
                    assert_eq!(code, Some("invalid_json"), "{body}")
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let body = format!(r#"{{"model":"m","messages":[{{"role":"user","content":{deep}}}]}}"#);
        assert!(parse_json::<ChatCompletionRequest>(body.as_bytes()).is_err());
    }

    #[test]
    fn completions_prompt_forms() {
        let parse = |j: &str| {
            let r: CompletionRequest = parse_json(j.as_bytes())?;
            validate_completion(r, &LimitSettings::default())
        };
        let v = parse(r#"{"model":"m","prompt":["a","b"]}"#).unwrap();
        assert_eq!(v.prompts, vec!["a", "b"]);
        assert_eq!(v.sampling.max_tokens, Some(16));
        assert_eq!(
            param_of(parse(r#"{"model":"m","prompt":[1,2]}"#).unwrap_err()),
            "prompt"
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m","prompt":"x","suffix":"y"}"#).unwrap_err()),
            "suffix"
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m","prompt":"x","logprobs":9}"#).unwrap_err()),
            "logprobs"
        );
    }

    #[test]
    fn tool_and_logprob_bounds_come_from_limits() {
        let limits = LimitSettings {
            max_tools: 2,
            max_completion_logprobs: 1,
            ..LimitSettings::default()
        };
        let tool = |name: &str| serde_json::json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
        let chat = |tools: Vec<serde_json::Value>| {
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools});
            validate_chat(
                parse_json(&serde_json::to_vec(&body).unwrap()).unwrap(),
                &limits,
                true,
            )
        };
        assert!(chat(vec![tool("a"), tool("b")]).is_ok());
        let err = chat(vec![tool("a"), tool("b"), tool("c")]).unwrap_err();
        assert!(err.to_string().contains("at most 2"), "{err}");
        assert_eq!(param_of(err), "tools");
        let completion = |k: i64| {
            let body = serde_json::json!({"model": "m", "prompt": "x", "logprobs": k});
            validate_completion(
                parse_json(&serde_json::to_vec(&body).unwrap()).unwrap(),
                &limits,
            )
        };
        assert!(completion(1).is_ok());
        assert_eq!(param_of(completion(2).unwrap_err()), "logprobs");
    }
}

#[cfg(test)]
mod fuzz {
    //! Property tests: the parser and validators never panic and only ever answer with
    //! a request error, whatever the bytes or JSON.
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,40}".prop_map(Value::String),
            Just(Value::String("<|im_start|>system".into())),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec(("[a-z_]{1,12}", inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    const FIELDS: &[&str] = &[
        "model",
        "messages",
        "prompt",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "seed",
        "user",
        "echo",
        "suffix",
        "best_of",
        "input",
        "encoding_format",
        "dimensions",
        "system",
        "tools",
        "tool_choice",
        "stop_sequences",
        "output_config",
        "instructions",
        "max_output_tokens",
        "text",
        "reasoning",
        "truncation",
    ];

    fn request_body() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec((proptest::sample::select(FIELDS), json_value()), 0..12).prop_map(
            |fields| {
                let mut obj: serde_json::Map<String, Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                obj.entry("model").or_insert(Value::from("m"));
                serde_json::to_vec(&Value::Object(obj)).unwrap()
            },
        )
    }

    fn only_request_errors<T>(r: Result<T, ApiError>) -> Result<(), TestCaseError> {
        match r {
            Ok(_) | Err(ApiError::InvalidRequest { .. }) => Ok(()),
            Err(other) => Err(TestCaseError::fail(format!("unexpected error {other:?}"))),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_rejected_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            only_request_errors(parse_json::<ChatCompletionRequest>(&bytes))?;
            only_request_errors(parse_json::<CompletionRequest>(&bytes))?;
            only_request_errors(parse_json::<EmbeddingRequest>(&bytes))?;
            only_request_errors(parse_json::<crate::anthropic::messages::MessagesRequest>(&bytes))?;
            only_request_errors(parse_json::<crate::openai::responses::ResponseRequest>(&bytes))?;
        }

        #[test]
        fn arbitrary_fields_validate_or_fail_cleanly(body in request_body()) {
            let limits = LimitSettings::default();
            only_request_errors(parse_json::<ChatCompletionRequest>(&body).and_then(|r| validate_chat(r, &limits, true)))?;
            only_request_errors(parse_json::<CompletionRequest>(&body).and_then(|r| validate_completion(r, &limits)))?;
            only_request_errors(parse_json::<EmbeddingRequest>(&body).and_then(|r| validate_embedding(r, &limits)))?;
            only_request_errors(parse_json::<crate::anthropic::messages::MessagesRequest>(&body)
                .and_then(|r| anthropic::validate_messages(r, &limits, true)))?;
            only_request_errors(parse_json::<crate::openai::responses::ResponseRequest>(&body)
                .and_then(|r| responses::validate_response(&r, &limits, None)))?;
        }

        #[test]
        fn valid_sampling_values_stay_in_range(t in 0.0f64..=2.0, p in 0.001f64..=1.0, n in 1i64..=8) {
            let body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                "temperature": t, "top_p": p, "n": n});
            let v = validate_chat(parse_json(&serde_json::to_vec(&body).unwrap())?, &LimitSettings::default(), true)?;
            prop_assert!((0.0..=2.0).contains(&v.sampling.settings.temperature));
            prop_assert_eq!(v.sampling.settings.n, n as usize);
        }
    }
}
