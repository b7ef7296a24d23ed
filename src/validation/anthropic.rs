//! Checks Anthropic Messages requests and turns them into the same checked chat request
//! as `/v1/chat/completions` (conversation, sampling, output mode), so both APIs share the
//! scheduler, the engines and the tool machinery. Errors name Anthropic's fields.

use serde_json::Value;

use super::{
    chat_options, check_model, check_range, constrain, is_function_name, positive, sampling,
    CommonSampling, OutputMode, ToolMode, ToolSpec, ValidChatRequest,
};
use crate::anthropic::messages::MessagesRequest;
use crate::config::LimitSettings;
use crate::engine::{ChatTurn, Prompt, Role};
use crate::error::ApiError;

/// The text of a `system` field: a string or a list of `text` blocks.
fn system_text(system: &Option<Value>) -> Result<Option<String>, ApiError> {
    match system {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(blocks)) => {
            let mut text = Vec::new();
            for (j, block) in blocks.iter().enumerate() {
                match (block["type"].as_str(), block["text"].as_str()) {
                    (Some("text"), Some(t)) => text.push(t.to_string()),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("system[{j}]"),
                            format!("`system[{j}]` must be a `text` block."),
                        ))
                    }
                }
            }
            Ok(Some(text.join("\n")))
        }
        Some(_) => Err(ApiError::invalid(
            "system",
            "`system` must be a string or a list of text blocks.",
        )),
    }
}

/// The text of a `tool_result`'s `content`: a string or `text` blocks.
fn tool_result_text(content: &Value, field: &str) -> Result<String, ApiError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .enumerate()
            .map(|(k, b)| match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                _ => Err(ApiError::invalid(
                    format!("{field}.content[{k}]"),
                    format!("`{field}.content[{k}]` must be a `text` block (images are not supported by text models)."),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|parts| parts.join("\n")),
        _ => Err(ApiError::invalid(
            format!("{field}.content"),
            format!("`{field}.content` must be a string or a list of text blocks."),
        )),
    }
}

/// One message of the conversation as chat turns: text, the assistant's `tool_use`
/// blocks as its calls, and each `tool_result` block as a tool turn (before the user's
/// text, as chat templates expect results right after the calls).
fn turns(
    message: &Value,
    i: usize,
    names: &mut std::collections::HashMap<String, String>,
) -> Result<Vec<ChatTurn>, ApiError> {
    let role = match message["role"].as_str() {
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        _ => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("`messages[{i}].role` must be `user` or `assistant`."),
            ))
        }
    };
    let field = format!("messages[{i}].content");
    let blocks = match &message["content"] {
        Value::String(s) => return Ok(vec![ChatTurn::new(role, s.clone())]),
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ApiError::invalid(
                &field,
                format!("`{field}` must be a string or a list of content blocks."),
            ))
        }
    };
    let mut turn = ChatTurn::new(role, String::new());
    let mut results = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let bfield = format!("{field}[{j}]");
        match (block["type"].as_str().unwrap_or(""), role) {
            ("text", _) => turn.content.push_str(block["text"].as_str().ok_or_else(|| {
                ApiError::invalid(&bfield, format!("`{bfield}.text` must be a string."))
            })?),
            ("tool_use", Role::Assistant) => {
                let name = block["name"].as_str().ok_or_else(|| {
                    ApiError::invalid(
                        format!("{bfield}.name"),
                        format!("`{bfield}.name` must be a string."),
                    )
                })?;
                let id = block["id"].as_str().unwrap_or_default().to_string();
                names.insert(id.clone(), name.to_string());
                turn.tool_calls.push(crate::engine::tools::TurnCall {
                    id,
                    name: name.to_string(),
                    arguments: crate::validation::call_arguments(&block["input"]),
                });
            }
            ("tool_result", Role::User) => {
                let id = block["tool_use_id"].as_str().ok_or_else(|| {
                    ApiError::invalid(
                        format!("{bfield}.tool_use_id"),
                        format!("`{bfield}.tool_use_id` is required."),
                    )
                })?;
                let text = tool_result_text(&block["content"], &bfield)?;
                let error = if block["is_error"] == true {
                    "Error: "
                } else {
                    ""
                };
                let mut result = ChatTurn::new(Role::Tool, format!("{error}{text}"));
                result.tool_call_id = Some(id.to_string());
                result.name = names.get(id).cloned();
                results.push(result);
            }
            // Earlier thinking is not part of the visible conversation.
            ("thinking" | "redacted_thinking", Role::Assistant) => {}
            (kind, _) => {
                return Err(ApiError::invalid(
                    format!("{bfield}.type"),
                    format!(
                        "`{bfield}.type` `{}` is not supported in a {} message (text models take `text`, `tool_use` and `tool_result`).",
                        kind.chars().take(40).collect::<String>(),
                        role.as_str()
                    ),
                ))
            }
        }
    }
    if !turn.content.is_empty() || !turn.tool_calls.is_empty() || results.is_empty() {
        results.push(turn);
    }
    Ok(results)
}

/// Tools in Anthropic's form: `{"name", "description", "input_schema"}`; server tools
/// (a `type` other than `custom`) are refused.
fn tools(tools: &Option<Value>, limits: &LimitSettings) -> Result<Vec<ToolSpec>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::invalid("tools", "`tools` must be a list.")),
    };
    if list.len() > limits.max_tools {
        return Err(ApiError::invalid(
            "tools",
            format!(
                "`tools` may hold at most {} tools (limits.max_tools).",
                limits.max_tools
            ),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, t)| {
            if let Some(kind) = t["type"].as_str().filter(|k| *k != "custom") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    format!("`tools[{i}].type` `{}`: server tools are not supported; define the tool with `input_schema`.", kind.chars().take(40).collect::<String>()),
                ));
            }
            let name = t["name"].as_str().unwrap_or("");
            if !is_function_name(name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].name"),
                    format!("`tools[{i}].name` must be 1-64 letters, digits, `_` or `-`."),
                ));
            }
            if !t["input_schema"].is_object() {
                return Err(ApiError::invalid(
                    format!("tools[{i}].input_schema"),
                    format!("`tools[{i}].input_schema` must be a JSON Schema object."),
                ));
            }
            Ok(ToolSpec {
                name: name.to_string(),
                description: t["description"].as_str().unwrap_or("").to_string(),
                parameters: t["input_schema"].clone(),
            })
        })
        .collect()
}

/// `tool_choice` → how the tools may be used (`None`: not at all).
fn tool_mode(choice: &Option<Value>, tools: &[ToolSpec]) -> Result<Option<ToolMode>, ApiError> {
    let Some(choice) = choice.as_ref().filter(|c| !c.is_null()) else {
        return Ok(Some(ToolMode::Auto));
    };
    match choice["type"].as_str() {
        Some("auto") => Ok(Some(ToolMode::Auto)),
        Some("any") => Ok(Some(ToolMode::Required)),
        Some("none") => Ok(None),
        Some("tool") => {
            let name = choice["name"].as_str().unwrap_or("");
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice.name",
                    format!(
                        "`tool_choice.name` `{}` is not in `tools`.",
                        name.chars().take(64).collect::<String>()
                    ),
                ));
            }
            Ok(Some(ToolMode::Named(name.to_string())))
        }
        _ => Err(ApiError::invalid(
            "tool_choice.type",
            "`tool_choice.type` must be `auto`, `any`, `tool` or `none`.",
        )),
    }
}

/// `output_config.format`: `{"type": "json_schema", "schema": {...}}` → the schema the
/// answer's text must match; `effort` is accepted (no model served here reasons).
fn output_format(config: &Option<Value>) -> Result<Option<Value>, ApiError> {
    let Some(config) = config.as_ref().filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    if !config.is_object() {
        return Err(ApiError::invalid(
            "output_config",
            "`output_config` must be an object.",
        ));
    }
    if let Some(effort) = config.get("effort").filter(|e| !e.is_null()) {
        if !matches!(
            effort.as_str(),
            Some("low" | "medium" | "high" | "xhigh" | "max")
        ) {
            return Err(ApiError::invalid(
                "output_config.effort",
                "`output_config.effort` must be `low`, `medium`, `high`, `xhigh` or `max`.",
            ));
        }
    }
    match config.get("format").filter(|f| !f.is_null()) {
        None => Ok(None),
        Some(format) if format["type"] == "json_schema" && format["schema"].is_object() => {
            Ok(Some(format["schema"].clone()))
        }
        Some(_) => Err(ApiError::invalid(
            "output_config.format",
            "`output_config.format` must be {\"type\": \"json_schema\", \"schema\": {...}}.",
        )),
    }
}

/// Checks a Messages request.
pub fn validate_messages(
    req: MessagesRequest,
    limits: &LimitSettings,
    strict: bool,
) -> Result<ValidChatRequest, ApiError> {
    check_model(&req.model)?;
    let max_tokens = match positive("max_tokens", req.max_tokens)? {
        Some(n) => n,
        None => {
            return Err(ApiError::InvalidRequest {
                message: "`max_tokens` is required.".into(),
                param: Some("max_tokens".into()),
                code: Some("missing_required_parameter"),
            })
        }
    };
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
                "`messages` may hold at most {} messages.",
                limits.max_messages
            ),
        ));
    }
    let mut turns = Vec::with_capacity(req.messages.len() + 2);
    if let Some(system) = system_text(&req.system)? {
        turns.push(ChatTurn::new(Role::System, system));
    }
    let mut names = std::collections::HashMap::new();
    for (i, message) in req.messages.iter().enumerate() {
        turns.extend(self::turns(message, i, &mut names)?);
    }
    let bytes: usize = turns.iter().map(ChatTurn::text_bytes).sum();
    if bytes > limits.max_prompt_bytes {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "`messages` hold more than {} bytes of text (limits.max_prompt_bytes).",
                limits.max_prompt_bytes
            ),
        ));
    }
    check_range("temperature", req.temperature, 0.0, 1.0, false)?;
    if strict {
        for (name, present) in [
            ("top_k", req.top_k.is_some()),
            (
                "service_tier",
                req.service_tier.as_ref().is_some_and(|v| !v.is_null()),
            ),
            (
                "container",
                req.container.as_ref().is_some_and(|v| !v.is_null()),
            ),
            (
                "mcp_servers",
                req.mcp_servers.as_ref().is_some_and(|v| !v.is_null()),
            ),
        ] {
            if present {
                return Err(ApiError::invalid(
                    name,
                    format!("`{name}` is not supported by this server and would be ignored; remove it (or turn off server.strict_params)."),
                ));
            }
        }
    }
    let stop = match &req.stop_sequences {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
            Some(Value::Array(list.clone()))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "stop_sequences",
                "`stop_sequences` must be a list of strings.",
            ))
        }
    };
    let mut sampling = sampling(
        CommonSampling {
            temperature: req.temperature,
            top_p: req.top_p,
            n: None,
            presence_penalty: None,
            frequency_penalty: None,
            seed: None,
            stop: &stop,
            max_tokens: Some(max_tokens),
            logprobs: false,
            top_logprobs: 0,
            user: req
                .metadata
                .as_ref()
                .and_then(|m| m.get("user_id"))
                .and_then(serde_json::Value::as_str),
        },
        limits,
    )
    .map_err(|e| match e {
        // Chat's message names `stop`; this API calls it `stop_sequences`.
        ApiError::InvalidRequest {
            message,
            param: Some(p),
            code,
        } if p.starts_with("stop") => ApiError::InvalidRequest {
            message: message.replace("`stop`", "`stop_sequences`"),
            param: Some(p.replacen("stop", "stop_sequences", 1)),
            code,
        },
        other => other,
    })?;
    let specs = tools(&req.tools, limits)?;
    let format = output_format(&req.output_config)?;
    let output = match tool_mode(&req.tool_choice, &specs)? {
        Some(mode) if !specs.is_empty() => OutputMode::Tools {
            tools: specs,
            mode,
            parallel: req
                .tool_choice
                .as_ref()
                .and_then(|c| c.get("disable_parallel_tool_use"))
                .and_then(Value::as_bool)
                != Some(true),
        },
        _ => match format {
            Some(schema) => OutputMode::Json(schema),
            None => OutputMode::Text,
        },
    };
    let effort = req
        .output_config
        .as_ref()
        .and_then(|c| c.get("effort"))
        .and_then(Value::as_str);
    let mut options = chat_options(effort, &None, "output_config.effort")?;
    // `thinking: {"type": "enabled" | "disabled"}` switches templates that can.
    match req
        .thinking
        .as_ref()
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
    {
        Some("enabled" | "adaptive") => options.enable_thinking = Some(true),
        Some("disabled") => options.enable_thinking = Some(false),
        _ => {}
    }
    constrain(&output, &mut sampling, &mut options);
    Ok(ValidChatRequest {
        model: req.model,
        prompt: Prompt::Chat(turns, options),
        sampling,
        stream: req.stream.unwrap_or(false),
        include_usage: true,
        output,
        ignored_params: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::parse_json;

    fn check(json: &str) -> Result<ValidChatRequest, ApiError> {
        let req: MessagesRequest = parse_json(json.as_bytes())?;
        validate_messages(req, &LimitSettings::default(), true)
    }

    fn param(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_conversation_with_tools_becomes_chat_turns() {
        let v = check(
            r#"{"model":"m","max_tokens":50,"system":[{"type":"text","text":"Be brief.","cache_control":{"type":"ephemeral"}}],
            "messages":[{"role":"user","content":"Weather in Paris?"},
              {"role":"assistant","content":[{"type":"text","text":"Checking."},{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{"city":"Paris"}}]},
              {"role":"user","content":[{"type":"tool_result","tool_use_id":"toolu_1","content":[{"type":"text","text":"18 C"}]}]}],
            "tools":[{"name":"get_weather","description":"Weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],
            "tool_choice":{"type":"any"},"stop_sequences":["END"],"temperature":0.5,"metadata":{"user_id":"u"}}"#,
        )
        .unwrap();
        let Prompt::Chat(turns, _) = &v.prompt else {
            panic!()
        };
        assert_eq!(turns[0].content, "Be brief.");
        assert_eq!(turns[2].content, "Checking.");
        assert_eq!(turns[2].tool_calls[0].name, "get_weather");
        assert_eq!(turns[2].tool_calls[0].id, "toolu_1");
        assert_eq!(
            turns[2].tool_calls[0].arguments,
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(turns[3].role, Role::Tool);
        assert_eq!(turns[3].content, "18 C");
        assert_eq!(turns[3].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(turns[3].name.as_deref(), Some("get_weather"));
        assert_eq!(turns.len(), 4);
        assert!(matches!(
            v.output,
            OutputMode::Tools {
                mode: ToolMode::Required,
                ..
            }
        ));
        assert_eq!(v.sampling.settings.stop, vec!["END".to_string()]);
        assert_eq!(v.sampling.max_tokens, Some(50));
    }

    #[test]
    fn mistakes_name_anthropic_fields() {
        for (body, field) in [
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","max_tokens":0,"messages":[{"role":"user","content":"x"}]}"#,
                "max_tokens",
            ),
            (r#"{"model":"m","max_tokens":5,"messages":[]}"#, "messages"),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"system","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":[{"type":"image","source":{}}]}]}"#,
                "messages[0].content[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"temperature":1.5}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"top_k":5}"#,
                "top_k",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"stop_sequences":"END"}"#,
                "stop_sequences",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f"}]}"#,
                "tools[0].input_schema",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"tool","name":"g"}}"#,
                "tool_choice.name",
            ),
            (
                r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"system":[{"type":"image"}]}"#,
                "system[0]",
            ),
        ] {
            assert_eq!(param(check(body).unwrap_err()), field, "{body}");
        }
    }

    #[test]
    fn output_config_format_constrains_the_text() {
        let v = check(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"output_config":{"effort":"low","format":{"type":"json_schema","schema":{"type":"object"}}},"speed":"fast","cache_control":{"type":"ephemeral"}}"#).unwrap();
        assert_eq!(
            v.output,
            OutputMode::Json(serde_json::json!({"type": "object"}))
        );
        let bad = check(
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"output_config":{"format":{"type":"xml"}}}"#,
        );
        assert_eq!(param(bad.unwrap_err()), "output_config.format");
    }

    #[test]
    fn thinking_switches_the_template() {
        let v = check(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"disabled"}}"#).unwrap();
        let Prompt::Chat(_, options) = &v.prompt else {
            panic!()
        };
        assert_eq!(options.enable_thinking, Some(false));
        let v = check(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"thinking":{"type":"enabled","budget_tokens":1024},"output_config":{"effort":"high"}}"#).unwrap();
        let Prompt::Chat(_, options) = &v.prompt else {
            panic!()
        };
        assert_eq!(
            (options.enable_thinking, options.reasoning_effort.as_deref()),
            (Some(true), Some("high"))
        );
    }

    #[test]
    fn tool_choice_none_means_plain_text() {
        let v = check(r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}],"tools":[{"name":"f","input_schema":{"type":"object"}}],"tool_choice":{"type":"none"}}"#).unwrap();
        assert_eq!(v.output, OutputMode::Text);
        assert!(v.sampling.json_schema.is_none());
    }
}
