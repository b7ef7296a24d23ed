//! Tool calls at the engine seam: the functions a request offers ([`ToolChoice`]), the
//! syntax a model writes its calls in ([`ToolSyntax`], recognised from its chat template),
//! the grammar that makes a native call valid, and the portable form used for models whose
//! template has no tool section (a system turn describing the tools and constrained JSON).

use serde_json::{json, Value};

use super::{ChatOptions, ChatTurn, Prompt, Role};

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON schema of its arguments.
    pub parameters: Value,
}

/// How the tools may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolMode {
    /// The model chooses between answering and calling tools.
    Auto,
    /// The model must call one of the tools.
    Required,
    /// The model must call this tool.
    Named(String),
}

/// The tools a request offers and how they may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolChoice {
    /// The functions.
    pub tools: Vec<ToolSpec>,
    /// How they may be used.
    pub mode: ToolMode,
    /// Several calls in one turn are allowed.
    pub parallel: bool,
}

impl ToolChoice {
    /// The functions a call may name under this mode.
    fn callable(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.iter().filter(move |t| match &self.mode {
            ToolMode::Named(name) => &t.name == name,
            _ => true,
        })
    }

    /// The tools as chat templates take them (OpenAI's `{"type":"function","function":…}`).
    pub fn template_value(&self) -> Value {
        Value::Array(
            self.tools
                .iter()
                .map(|t| {
                    json!({"type": "function", "function": {
                        "name": t.name, "description": t.description, "parameters": t.parameters
                    }})
                })
                .collect(),
        )
    }
}

/// A call the assistant made earlier in the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCall {
    /// The call's id (`call_…`, `toolu_…`).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// Its arguments (an object, or the text as sent when it was not JSON).
    pub arguments: Value,
}

/// How a model writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolSyntax {
    /// llamagate's portable form for templates without tools: the whole answer is
    /// `{"name": …, "arguments": …}` (or, under `auto`, `{"content": …}`).
    Json,
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>`, one block per call (Hermes,
    /// Qwen 2.5/3, SmolLM3 and most ChatML tool templates).
    Hermes,
    /// `[TOOL_CALLS][{"name": …, "arguments": …}, …]` (Mistral).
    Mistral,
    /// The answer is `{"name": …, "parameters": …}`, possibly after `<|python_tag|>`
    /// (Llama 3.1–3.3).
    Llama3,
}

impl ToolSyntax {
    /// The native syntax a chat template renders tools for, if it has a tool section of a
    /// known kind.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        if source.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if source.contains("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if source.contains("<|python_tag|>")
            || (source.contains("<|start_header_id|>") && source.contains("\"parameters\""))
        {
            Some(Self::Llama3)
        } else {
            None
        }
    }

    /// The text that opens a call (or the list of calls).
    pub fn opener(self) -> &'static str {
        match self {
            Self::Json | Self::Llama3 => "",
            Self::Hermes => "<tool_call>",
            Self::Mistral => "[TOOL_CALLS]",
        }
    }

    /// The key that holds a call's arguments.
    pub fn arguments_key(self) -> &'static str {
        match self {
            Self::Llama3 => "parameters",
            _ => "arguments",
        }
    }
}

/// Whitespace allowed between JSON tokens in constrained output: what llama.cpp's own
/// JSON grammars allow (a space, or one or two newlines and some indentation). Unbounded
/// whitespace lets a small model at a high temperature pad its answer until `max_tokens`.
pub const JSON_WHITESPACE: &str = "(?: |\\n{1,2}[ \\t]{0,20})";

/// `schema` with the engine's own JSON options (llguidance's `x-guidance`).
pub fn with_json_options(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(object) = schema.as_object_mut() {
        object.insert(
            "x-guidance".into(),
            json!({ "whitespace_pattern": JSON_WHITESPACE }),
        );
    }
    schema
}

/// A Lark grammar (llguidance's dialect) for the calls of `choice` in a native `syntax`:
/// under `required` or a named tool the answer is one call (or several with `parallel`),
/// each call's arguments valid against its schema; under `auto` the answer is free text
/// that does not start like a call, or calls as under `required`. `opener` is how the
/// grammar writes the syntax's opener (a special token as `<[id]>`, or text). `None` for the
/// portable syntax.
pub fn native_grammar(syntax: ToolSyntax, choice: &ToolChoice, opener: &str) -> Option<String> {
    let key = syntax.arguments_key();
    let mut rules = Vec::new();
    let names: Vec<String> = choice
        .callable()
        .enumerate()
        .map(|(i, tool)| {
            let object = with_json_options(&json!({
                "type": "object",
                "properties": {"name": {"const": tool.name}, key: tool.parameters},
                "required": ["name", key],
                "additionalProperties": false
            }));
            rules.push(format!("fn{i}: %json {object}"));
            format!("fn{i}")
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    let call = names.join(" | ");
    let repeat = if choice.parallel { "+" } else { "" };
    let (calls, starts_like_a_call) = match syntax {
        ToolSyntax::Json => return None,
        ToolSyntax::Hermes => (
            format!("(\"<tool_call>\\n\" call \"\\n</tool_call>\" \"\\n\"?){repeat}"),
            "/<tool_call>(?s:.*)/",
        ),
        ToolSyntax::Mistral => {
            let list = if choice.parallel {
                "\"[\" call (\", \" call)* \"]\""
            } else {
                "\"[\" call \"]\""
            };
            (format!("{opener} {list}"), "/\\[TOOL_CALLS\\](?s:.*)/")
        }
        ToolSyntax::Llama3 => ("call".to_string(), "/[ \\t\\n]*\\{(?s:.*)/"),
    };
    let start = match choice.mode {
        ToolMode::Auto => "start: TEXT | calls".to_string(),
        _ => "start: calls".to_string(),
    };
    let mut grammar = format!("{start}\ncalls: {calls}\ncall: {call}\n");
    if choice.mode == ToolMode::Auto {
        grammar.push_str(&format!("TEXT: /(?s:.+)/ & ~{starts_like_a_call}\n"));
    }
    for rule in rules {
        grammar.push_str(&rule);
        grammar.push('\n');
    }
    Some(grammar)
}

/// The prompt as a model without a tool-aware template reads it: the tools described in a
/// first system turn, earlier calls written as the JSON the model would have produced and
/// their results as user turns. Prompts without tools or tool turns are returned as they
/// are.
pub fn portable_prompt(prompt: &Prompt) -> Prompt {
    let Prompt::Chat(turns, options) = prompt else {
        return prompt.clone();
    };
    let has_tool_turns = turns
        .iter()
        .any(|t| t.role == Role::Tool || !t.tool_calls.is_empty());
    if options.tools.is_none() && !has_tool_turns {
        return prompt.clone();
    }
    let mut names = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(turns.len() + 1);
    if let Some(choice) = &options.tools {
        out.push(instructions(choice));
    }
    for turn in turns {
        let mut content = turn.content.clone();
        for call in &turn.tool_calls {
            names.insert(call.id.clone(), call.name.clone());
            content.push_str(&json!({"name": call.name, "arguments": call.arguments}).to_string());
        }
        let role = if turn.role == Role::Tool {
            let id = turn.tool_call_id.clone().unwrap_or_default();
            let name = turn
                .name
                .clone()
                .or_else(|| names.get(&id).cloned())
                .unwrap_or_else(|| "the tool".into());
            content = format!("Result of {name} (call {id}): {content}");
            Role::User
        } else {
            turn.role
        };
        out.push(ChatTurn::new(role, content));
    }
    Prompt::Chat(
        out,
        ChatOptions {
            tools: None,
            ..options.clone()
        },
    )
}

/// The system turn that tells the model about the tools and the JSON it must write.
fn instructions(choice: &ToolChoice) -> ChatTurn {
    let mut text = String::from("You can call these functions:\n");
    for t in &choice.tools {
        text.push_str(&format!(
            "- {}: {} Arguments (JSON Schema): {}\n",
            t.name, t.description, t.parameters
        ));
    }
    text.push_str(match choice.mode {
        ToolMode::Auto => "To call a function, reply with {\"name\": ..., \"arguments\": {...}}; otherwise reply with {\"content\": \"your answer\"}.",
        _ => "Reply with {\"name\": ..., \"arguments\": {...}} to call a function.",
    });
    ChatTurn::new(Role::System, text)
}

/// The JSON schema that constrains a tool-using answer in the portable syntax.
pub fn portable_schema(choice: &ToolChoice) -> Value {
    let call = |t: &ToolSpec| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false
        })
    };
    let mut options: Vec<Value> = choice.callable().map(call).collect();
    if choice.mode == ToolMode::Auto {
        options.push(json!({
            "type": "object",
            "properties": {"content": {"type": "string"}},
            "required": ["content"],
            "additionalProperties": false
        }));
    }
    if options.len() == 1 {
        options.remove(0)
    } else {
        json!({"anyOf": options})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(mode: ToolMode, parallel: bool) -> ToolChoice {
        ToolChoice {
            tools: vec![
                ToolSpec {
                    name: "get_weather".into(),
                    description: "Weather in a city.".into(),
                    parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                },
                ToolSpec {
                    name: "get_time".into(),
                    description: String::new(),
                    parameters: json!({"type": "object", "properties": {}}),
                },
            ],
            mode,
            parallel,
        }
    }

    #[test]
    fn template_syntax_is_recognised() {
        let hermes = "{% if tools %}<tools>{{ tools | tojson }}</tools> <tool_call>{% endif %}";
        assert_eq!(ToolSyntax::of_template(hermes), Some(ToolSyntax::Hermes));
        let mistral = "{% if tools %}[AVAILABLE_TOOLS]{% endif %}{{ '[TOOL_CALLS]' }}";
        assert_eq!(ToolSyntax::of_template(mistral), Some(ToolSyntax::Mistral));
        let llama = "{% if tools %}<|start_header_id|>{\"name\": function name, \"parameters\": …}{% endif %}<|python_tag|>";
        assert_eq!(ToolSyntax::of_template(llama), Some(ToolSyntax::Llama3));
        assert_eq!(
            ToolSyntax::of_template(super::super::chat_template::CHATML),
            None
        );
        assert_eq!(ToolSyntax::of_template("{{ tools }} call me"), None);
    }

    #[test]
    fn grammars_name_only_the_callable_tools() {
        let named = native_grammar(
            ToolSyntax::Hermes,
            &choice(ToolMode::Named("get_time".into()), false),
            "",
        )
        .unwrap();
        assert!(
            named.contains("get_time") && !named.contains("get_weather"),
            "{named}"
        );
        assert!(named.starts_with("start: calls\n"));
        let auto = native_grammar(ToolSyntax::Hermes, &choice(ToolMode::Auto, true), "").unwrap();
        assert!(auto.starts_with("start: TEXT | calls\n"), "{auto}");
        assert!(auto.contains("\"\\n\"?)+"), "{auto}");
        let mistral = native_grammar(
            ToolSyntax::Mistral,
            &choice(ToolMode::Required, false),
            "<[9]>",
        )
        .unwrap();
        assert!(
            mistral.contains("calls: <[9]> \"[\" call \"]\""),
            "{mistral}"
        );
        let llama =
            native_grammar(ToolSyntax::Llama3, &choice(ToolMode::Required, false), "").unwrap();
        assert!(llama.contains("\"parameters\""), "{llama}");
        assert!(native_grammar(ToolSyntax::Json, &choice(ToolMode::Required, false), "").is_none());
    }

    #[test]
    fn the_portable_prompt_flattens_calls_and_results() {
        let mut call = ChatTurn::new(Role::Assistant, String::new());
        call.tool_calls.push(TurnCall {
            id: "call_1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        });
        let mut result = ChatTurn::new(Role::Tool, "18 C".into());
        result.tool_call_id = Some("call_1".into());
        let prompt = Prompt::Chat(
            vec![ChatTurn::new(Role::User, "weather?".into()), call, result],
            ChatOptions {
                tools: Some(std::sync::Arc::new(choice(ToolMode::Auto, false))),
                ..ChatOptions::default()
            },
        );
        let Prompt::Chat(turns, options) = portable_prompt(&prompt) else {
            panic!()
        };
        assert!(options.tools.is_none());
        assert_eq!(turns[0].role, Role::System);
        assert!(turns[0].content.contains("get_weather"));
        assert_eq!(
            turns[2].content,
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#
        );
        assert_eq!(turns[3].role, Role::User);
        assert_eq!(
            turns[3].content,
            "Result of get_weather (call call_1): 18 C"
        );
        let plain = Prompt::chat(vec![ChatTurn::new(Role::User, "hi".into())]);
        assert_eq!(portable_prompt(&plain), plain);
    }

    #[test]
    fn the_portable_schema_offers_content_only_under_auto() {
        let auto = portable_schema(&choice(ToolMode::Auto, false));
        assert_eq!(auto["anyOf"].as_array().unwrap().len(), 3);
        let named = portable_schema(&choice(ToolMode::Named("get_time".into()), false));
        assert_eq!(named["properties"]["name"]["const"], "get_time");
    }
}
