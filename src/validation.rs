//! Turns parsed OpenAI request bodies into `Valid*` requests, field by field, before
//! anything is queued. Every rejection is a 400 naming the field in backticks and in
//! `param`. Bounds come from `[limits]`, so no request can make the engine allocate
//! without limit (the engine allocates per choice before it checks anything).

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::LimitSettings;
use crate::engine::{ChatTurn, Prompt, Role, SamplingSettings};
use crate::error::ApiError;
use crate::openai::chat::ChatCompletionRequest;
use crate::openai::completions::CompletionRequest;

/// Sampling settings whose `max_tokens` may still be open (filled from the context window).
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling {
    /// Everything but `max_tokens`.
    pub settings: SamplingSettings,
    /// The client's limit, if any.
    pub max_tokens: Option<usize>,
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
            max_tokens: 0,
            stop: parse_stop(c.stop, limits)?,
            logprobs: c.logprobs,
            top_logprobs: c.top_logprobs,
            n,
        },
        max_tokens: c.max_tokens,
    })
}

fn role(raw: &str, i: usize) -> Result<Role, ApiError> {
    match raw {
        "system" | "developer" => Ok(Role::System),
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" | "function" => Err(ApiError::invalid(
            format!("messages[{i}].role"),
            format!("`messages[{i}].role` `{raw}` is not supported: this server does not offer tool calling yet."),
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
                    "text" => match part.get("text") {
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
    let mut turns = Vec::with_capacity(req.messages.len());
    let mut bytes = 0usize;
    for (i, m) in req.messages.iter().enumerate() {
        let role = role(&m.role, i)?;
        let content = content_text(&m.content, role, i)?;
        bytes += content.len();
        if bytes > limits.max_prompt_bytes {
            return Err(ApiError::invalid(
                "messages",
                format!(
                    "`messages` hold more than {} bytes of text (limits.max_prompt_bytes).",
                    limits.max_prompt_bytes
                ),
            ));
        }
        turns.push(ChatTurn { role, content });
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
        },
        limits,
    )?;
    let stream = req.stream.unwrap_or(false);
    Ok(ValidChatRequest {
        model: req.model,
        prompt: Prompt::Chat(turns),
        sampling,
        stream,
        include_usage: stream
            && req
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
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
        Some(k) if (0..=5).contains(&k) => Some(k as usize),
        Some(k) => {
            return Err(ApiError::invalid(
                "logprobs",
                format!("`logprobs` must be in [0, 5], got {k}."),
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

    fn chat(json: &str) -> Result<ValidChatRequest, ApiError> {
        let req: ChatCompletionRequest = parse_json(json.as_bytes())?;
        validate_chat(req, &LimitSettings::default())
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
            Prompt::Chat(vec![ChatTurn {
                role: Role::System,
                content: "ab".into()
            }])
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
}
