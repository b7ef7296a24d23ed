//! Checks Responses API requests and turns them into the same checked chat request as
//! `/v1/chat/completions`, continuing a stored conversation when `previous_response_id`
//! names one. Errors name the Responses API's fields.

use std::collections::HashMap;

use serde_json::Value;

use super::{
    chat_options, check_model, constrain, content_text, is_function_name, positive, sampling,
    CommonSampling, OutputMode, ToolMode, ToolSpec, ValidChatRequest,
};
use crate::config::LimitSettings;
use crate::engine::{ChatTurn, Prompt, Role};
use crate::error::ApiError;
use crate::openai::responses::ResponseRequest;

/// The conversation a stored response ends: its turns (its own output included) and the
/// names of the function calls in it, by `call_id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// Every turn, oldest first, without instructions.
    pub turns: Vec<ChatTurn>,
    /// `call_id` → function name.
    pub calls: HashMap<String, String>,
}

impl Conversation {
    /// A function call by the assistant: added to its turn when the last turn is the
    /// assistant's (several calls in one turn), else as a new assistant turn.
    pub fn add_call(&mut self, call_id: &str, name: &str, arguments: Value) {
        self.calls.insert(call_id.to_string(), name.to_string());
        let call = crate::engine::tools::TurnCall {
            id: call_id.to_string(),
            name: name.to_string(),
            arguments,
        };
        match self.turns.last_mut() {
            Some(turn) if turn.role == Role::Assistant => turn.tool_calls.push(call),
            _ => {
                let mut turn = ChatTurn::new(Role::Assistant, String::new());
                turn.tool_calls.push(call);
                self.turns.push(turn);
            }
        }
    }
}

/// A checked Responses request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidResponseRequest {
    /// What to run, as a chat request.
    pub chat: ValidChatRequest,
    /// The conversation so far, this request's input included (what a stored response
    /// continues from, with its output added).
    pub conversation: Conversation,
    /// Keep the response.
    pub store: bool,
    /// `text.format` as sent (echoed in the response).
    pub text: Value,
    /// `tool_choice` as sent.
    pub tool_choice: Value,
    /// `tools` as sent.
    pub tools: Vec<Value>,
}

fn items_to_turns(input: &Value, conversation: &mut Conversation) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            conversation
                .turns
                .push(ChatTurn::new(Role::User, s.clone()));
            return Ok(());
        }
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => {
            return Err(ApiError::invalid(
                "input",
                "`input` must not be an empty list.",
            ))
        }
        _ => {
            return Err(ApiError::invalid(
                "input",
                "`input` must be a string or a list of items.",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let field = format!("input[{i}]");
        let kind = item["type"]
            .as_str()
            .unwrap_or(if item.get("role").is_some() {
                "message"
            } else {
                ""
            });
        match kind {
            "message" => {
                let role = match item["role"].as_str() {
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    Some("system" | "developer") => Role::System,
                    _ => {
                        return Err(ApiError::invalid(
                            format!("{field}.role"),
                            format!("`{field}.role` must be `user`, `assistant`, `system` or `developer`."),
                        ))
                    }
                };
                let content = content_text(&Some(item["content"].clone()), role, i)
                    .map_err(|e| rename_field(e, &format!("messages[{i}]"), &field))?;
                conversation.turns.push(ChatTurn::new(role, content));
            }
            "function_call" => {
                let name = item["name"].as_str().ok_or_else(|| {
                    ApiError::invalid(format!("{field}.name"), format!("`{field}.name` must be a string."))
                })?;
                let call_id = item["call_id"].as_str().ok_or_else(|| {
                    ApiError::invalid(format!("{field}.call_id"), format!("`{field}.call_id` must be a string."))
                })?;
                let arguments = crate::validation::call_arguments(&item["arguments"]);
                conversation.add_call(call_id, name, arguments);
            }
            "function_call_output" => {
                let call_id = item["call_id"].as_str().ok_or_else(|| {
                    ApiError::invalid(format!("{field}.call_id"), format!("`{field}.call_id` must be a string."))
                })?;
                let output = match &item["output"] {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let mut result = ChatTurn::new(Role::Tool, output);
                result.name = conversation.calls.get(call_id).cloned();
                result.tool_call_id = Some(call_id.to_string());
                conversation.turns.push(result);
            }
            // Earlier reasoning is not part of the visible conversation.
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid(
                    format!("{field}.type"),
                    format!(
                        "`{field}.type` `{}` is not supported; use `message`, `function_call` or `function_call_output`.",
                        other.chars().take(40).collect::<String>()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Chat's content check names `messages[i]`; here the field is `input[i]`.
fn rename_field(e: ApiError, from: &str, to: &str) -> ApiError {
    match e {
        ApiError::InvalidRequest {
            message,
            param,
            code,
        } => ApiError::InvalidRequest {
            message: message.replace(from, to),
            param: param.map(|p| p.replacen(from, to, 1)),
            code,
        },
        other => other,
    }
}

/// Function tools in the Responses form (flat: `name`, `parameters` at the top level);
/// built-in tools are refused.
fn tools(
    tools: &Option<Value>,
    limits: &LimitSettings,
) -> Result<(Vec<ToolSpec>, Vec<Value>), ApiError> {
    let list = match tools {
        None | Some(Value::Null) => return Ok((Vec::new(), Vec::new())),
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
    let specs = list
        .iter()
        .enumerate()
        .map(|(i, t)| {
            match t["type"].as_str() {
                Some("function") => {}
                other => {
                    return Err(ApiError::InvalidRequest {
                        message: format!(
                            "`tools[{i}].type` `{}` is not supported by this server: only `function` tools (built-in tools such as web_search or file_search are OpenAI's).",
                            other.unwrap_or("").chars().take(40).collect::<String>()
                        ),
                        param: Some(format!("tools[{i}].type")),
                        code: Some("unsupported_value"),
                    })
                }
            }
            let name = t["name"].as_str().unwrap_or("");
            if !is_function_name(name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].name"),
                    format!("`tools[{i}].name` must be 1-64 letters, digits, `_` or `-`."),
                ));
            }
            let parameters = match &t["parameters"] {
                Value::Null => serde_json::json!({"type": "object", "properties": {}}),
                p @ Value::Object(_) => p.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        format!("tools[{i}].parameters"),
                        format!("`tools[{i}].parameters` must be a JSON Schema object."),
                    ))
                }
            };
            Ok(ToolSpec {
                name: name.to_string(),
                description: t["description"].as_str().unwrap_or("").to_string(),
                parameters,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((specs, list.clone()))
}

fn tool_mode(choice: &Option<Value>, tools: &[ToolSpec]) -> Result<Option<ToolMode>, ApiError> {
    match choice.as_ref().filter(|c| !c.is_null()) {
        None => Ok(Some(ToolMode::Auto)),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(Some(ToolMode::Auto)),
            "required" => Ok(Some(ToolMode::Required)),
            "none" => Ok(None),
            _ => Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}.",
            )),
        },
        Some(c) if c["type"] == "function" => {
            let name = c["name"].as_str().unwrap_or("");
            if !tools.iter().any(|t| t.name == name) {
                return Err(ApiError::invalid(
                    "tool_choice.name",
                    format!("`tool_choice.name` `{}` is not in `tools`.", name.chars().take(64).collect::<String>()),
                ));
            }
            Ok(Some(ToolMode::Named(name.to_string())))
        }
        Some(_) => Err(ApiError::InvalidRequest {
            message: "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}; built-in tools are not supported.".into(),
            param: Some("tool_choice".into()),
            code: Some("unsupported_value"),
        }),
    }
}

/// `text.format` → the schema the answer must match, if any.
fn text_format(text: &Option<Value>) -> Result<Option<Value>, ApiError> {
    let Some(format) = text
        .as_ref()
        .and_then(|t| t.get("format"))
        .filter(|f| !f.is_null())
    else {
        return Ok(None);
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(serde_json::json!({"type": "object"}))),
        Some("json_schema") => {
            if !is_function_name(format["name"].as_str().unwrap_or("")) {
                return Err(ApiError::invalid(
                    "text.format.name",
                    "`text.format.name` must be 1-64 letters, digits, `_` or `-`.",
                ));
            }
            match &format["schema"] {
                s @ Value::Object(o) if !o.is_empty() => Ok(Some(s.clone())),
                _ => Err(ApiError::invalid(
                    "text.format.schema",
                    "`text.format.schema` must be a JSON Schema object.",
                )),
            }
        }
        _ => Err(ApiError::invalid(
            "text.format.type",
            "`text.format.type` must be `text`, `json_object` or `json_schema`.",
        )),
    }
}

/// Checks a Responses request; `previous` is the stored conversation that
/// `previous_response_id` names (the caller looked it up).
pub fn validate_response(
    req: &ResponseRequest,
    limits: &LimitSettings,
    previous: Option<Conversation>,
) -> Result<ValidResponseRequest, ApiError> {
    check_model(&req.model)?;
    if req.background == Some(true) {
        return Err(ApiError::InvalidRequest {
            message: "`background` responses are not supported by this server.".into(),
            param: Some("background".into()),
            code: Some("unsupported_parameter"),
        });
    }
    if !matches!(req.truncation.as_deref(), None | Some("disabled" | "auto")) {
        return Err(ApiError::invalid(
            "truncation",
            "`truncation` must be `disabled` or `auto`.",
        ));
    }
    if let Some(effort) = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .filter(|e| !e.is_null())
    {
        if !matches!(
            effort.as_str(),
            Some("none" | "minimal" | "low" | "medium" | "high" | "xhigh")
        ) {
            return Err(ApiError::invalid(
                "reasoning.effort",
                "`reasoning.effort` must be `none`, `minimal`, `low`, `medium`, `high` or `xhigh`.",
            ));
        }
    }
    let mut conversation = previous.unwrap_or_default();
    items_to_turns(&req.input, &mut conversation)?;
    if conversation.turns.len() > limits.max_messages {
        return Err(ApiError::invalid(
            "input",
            format!(
                "the conversation may hold at most {} items.",
                limits.max_messages
            ),
        ));
    }
    let mut turns = conversation.turns.clone();
    if let Some(instructions) = req.instructions.as_ref().filter(|i| !i.is_empty()) {
        turns.insert(0, ChatTurn::new(Role::System, instructions.clone()));
    }
    let bytes: usize = turns.iter().map(ChatTurn::text_bytes).sum();
    if bytes > limits.max_prompt_bytes {
        return Err(ApiError::invalid(
            "input",
            format!(
                "`input` holds more than {} bytes of text (limits.max_prompt_bytes).",
                limits.max_prompt_bytes
            ),
        ));
    }
    let max_tokens = positive("max_output_tokens", req.max_output_tokens)?;
    let mut sampling = sampling(
        CommonSampling {
            temperature: req.temperature,
            top_p: req.top_p,
            n: None,
            presence_penalty: None,
            frequency_penalty: None,
            seed: req.seed,
            stop: &None,
            max_tokens,
            logprobs: false,
            top_logprobs: 0,
            user: req.user.as_deref(),
        },
        limits,
    )?;
    let (specs, raw_tools) = tools(&req.tools, limits)?;
    let format = text_format(&req.text)?;
    let output = match tool_mode(&req.tool_choice, &specs)? {
        Some(mode) if !specs.is_empty() => OutputMode::Tools {
            tools: specs,
            mode,
            parallel: req.parallel_tool_calls.unwrap_or(true),
        },
        Some(ToolMode::Auto) | None => match format {
            Some(schema) => OutputMode::Json(schema),
            None => OutputMode::Text,
        },
        Some(_) => {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` needs `tools`.",
            ))
        }
    };
    let effort = req
        .reasoning
        .as_ref()
        .and_then(|r| r.get("effort"))
        .and_then(Value::as_str);
    let mut options = chat_options(effort, &None, "reasoning.effort")?;
    constrain(&output, &mut sampling, &mut options);
    Ok(ValidResponseRequest {
        chat: ValidChatRequest {
            model: req.model.clone(),
            prompt: Prompt::Chat(turns, options),
            sampling,
            stream: req.stream.unwrap_or(false),
            include_usage: true,
            output,
            ignored_params: Vec::new(),
        },
        conversation,
        store: req.store.unwrap_or(true),
        text: req
            .text
            .clone()
            .filter(|t| t.get("format").is_some_and(|f| !f.is_null()))
            .unwrap_or_else(|| serde_json::json!({"format": {"type": "text"}})),
        tool_choice: req
            .tool_choice
            .clone()
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| Value::String("auto".into())),
        tools: raw_tools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::parse_json;

    fn check(json: &str, previous: Option<Conversation>) -> Result<ValidResponseRequest, ApiError> {
        let req: ResponseRequest = parse_json(json.as_bytes())?;
        validate_response(&req, &LimitSettings::default(), previous)
    }

    fn param(e: ApiError) -> String {
        match e {
            ApiError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn items_become_turns_and_continue_a_conversation() {
        let v = check(
            r#"{"model":"m","instructions":"Be brief.","input":[
                {"role":"user","content":"Weather in Paris?"},
                {"type":"function_call","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
                {"type":"function_call_output","call_id":"call_1","output":"18 C"},
                {"type":"message","role":"user","content":[{"type":"input_text","text":"Thanks"}]}],
              "tools":[{"type":"function","name":"get_weather","parameters":{"type":"object"},"strict":true}],
              "max_output_tokens":40,"store":false}"#,
            None,
        )
        .unwrap();
        let turns = &v.conversation.turns;
        assert_eq!(turns.len(), 4);
        assert_eq!(turns[1].role, Role::Assistant);
        assert_eq!(
            turns[1].tool_calls[0].arguments,
            serde_json::json!({"city": "Paris"})
        );
        assert_eq!(turns[2].role, Role::Tool);
        assert_eq!(turns[2].content, "18 C");
        assert_eq!(turns[2].name.as_deref(), Some("get_weather"));
        assert!(!v.store);
        let Prompt::Chat(prompt, _) = &v.chat.prompt else {
            panic!()
        };
        assert_eq!(prompt[0].content, "Be brief.");
        assert!(matches!(
            v.chat.output,
            OutputMode::Tools {
                mode: ToolMode::Auto,
                ..
            }
        ));
        // Continuing: the earlier turns come first, instructions are not carried over.
        let next = check(
            r#"{"model":"m","input":"And Rome?"}"#,
            Some(v.conversation.clone()),
        )
        .unwrap();
        assert_eq!(next.conversation.turns.len(), 5);
        let Prompt::Chat(prompt, _) = &next.chat.prompt else {
            panic!()
        };
        assert_eq!(prompt[0].content, "Weather in Paris?");
        assert_eq!(next.text, serde_json::json!({"format": {"type": "text"}}));
    }

    #[test]
    fn mistakes_name_the_field() {
        for (body, field) in [
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":42}"#, "input"),
            (
                r#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#,
                "input[0].content[0]",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#,
                "input[0].type",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
                "tools[0].type",
            ),
            (
                r#"{"model":"m","input":"x","tool_choice":{"type":"file_search"}}"#,
                "tool_choice",
            ),
            (
                r#"{"model":"m","input":"x","tool_choice":"required"}"#,
                "tool_choice",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","name":"a"}}}"#,
                "text.format.schema",
            ),
            (
                r#"{"model":"m","input":"x","background":true}"#,
                "background",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"x","temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","input":"x","reasoning":{"effort":"huge"}}"#,
                "reasoning.effort",
            ),
        ] {
            assert_eq!(param(check(body, None).unwrap_err()), field, "{body}");
        }
    }
}
