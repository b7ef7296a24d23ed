//! OpenAI chat completions: [`ChatRenderer`] turns engine events into
//! `chat.completion.chunk`s (role chunk, content chunks, a finish chunk per choice, an
//! optional usage chunk), and [`ChatAnswer`] folds those same chunks into the
//! non-streamed `chat.completion`, so both answers always agree. Tool calls stream as
//! OpenAI's do: a delta with the call's index, id and name as soon as the name is
//! written, then its arguments piece by piece ([`AnswerReader`]); thinking goes to
//! `reasoning_content`.

use super::answer::{AnswerPiece, AnswerReader};
use crate::engine::tools::ToolSyntax;
use crate::engine::TokenEvent;
use crate::openai::chat::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionResponse,
    ChatDelta, ChatLogprobs, ChatTokenLogprob, FunctionCall, FunctionCallDelta, ToolCall,
    ToolCallDelta,
};
use crate::openai::common::{system_fingerprint, Usage};

/// What every chunk of one answer shares, and how it is rendered.
#[derive(Debug, Clone)]
pub struct ChatMeta {
    /// `chatcmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's canonical name.
    pub model: String,
    /// Choices.
    pub n: usize,
    /// How the output writes tool calls, when the request offers tools.
    pub tools: Option<ToolSyntax>,
    /// Whether log-probabilities are returned.
    pub logprobs: bool,
    /// Whether a usage chunk ends the stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// For a reasoning model: whether the prompt opened the thinking block (its thinking
    /// goes to `reasoning_content`). `None` for other models.
    pub thinking: Option<bool>,
}

/// Engine events in, chunks out; no I/O.
pub struct ChatRenderer {
    meta: ChatMeta,
    /// Each choice's text, split into thinking, answer and tool calls.
    readers: Vec<AnswerReader>,
    done: bool,
}

/// The first delta of a call: its index, id, type and name.
fn call_start(index: usize, name: String) -> ToolCallDelta {
    ToolCallDelta {
        index,
        id: Some(format!("call_{}", uuid::Uuid::new_v4().simple())),
        kind: Some("function".into()),
        function: FunctionCallDelta {
            name: Some(name),
            arguments: Some(String::new()),
        },
    }
}

/// A later delta of a call: more of its arguments.
fn call_arguments(index: usize, arguments: String) -> ToolCallDelta {
    ToolCallDelta {
        index,
        id: None,
        kind: None,
        function: FunctionCallDelta {
            name: None,
            arguments: Some(arguments),
        },
    }
}

impl ChatRenderer {
    /// A renderer for one answer.
    pub fn new(meta: ChatMeta) -> Self {
        Self {
            readers: vec![AnswerReader::new(meta.thinking, meta.tools); meta.n],
            meta,
            done: false,
        }
    }

    /// A chunk per piece: thinking as `reasoning_content`, the answer as `content`, calls
    /// as `tool_calls` deltas.
    fn piece_chunks(&self, choice: usize, pieces: Vec<AnswerPiece>) -> Vec<ChatCompletionChunk> {
        pieces
            .into_iter()
            .map(|piece| {
                let delta = match piece {
                    AnswerPiece::Reasoning(t) => ChatDelta {
                        reasoning_content: Some(t),
                        ..ChatDelta::default()
                    },
                    AnswerPiece::Content(t) => ChatDelta {
                        content: Some(t),
                        ..ChatDelta::default()
                    },
                    AnswerPiece::Call { index, name } => ChatDelta {
                        tool_calls: Some(vec![call_start(index, name)]),
                        ..ChatDelta::default()
                    },
                    AnswerPiece::Arguments { index, text } => ChatDelta {
                        tool_calls: Some(vec![call_arguments(index, text)]),
                        ..ChatDelta::default()
                    },
                };
                self.one(choice, delta, None)
            })
            .collect()
    }

    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: "chat.completion.chunk".into(),
            created: self.meta.created,
            model: self.meta.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            // `"usage": null` on every chunk when a usage chunk was asked for.
            usage: self.meta.include_usage.then_some(usage),
        }
    }

    fn one(&self, index: usize, delta: ChatDelta, finish: Option<String>) -> ChatCompletionChunk {
        self.chunk(
            vec![ChatChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// The first chunk: every choice's role.
    fn role_chunk(&self) -> ChatCompletionChunk {
        self.chunk(
            (0..self.meta.n)
                .map(|index| ChatChunkChoice {
                    index,
                    delta: ChatDelta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                        reasoning_content: None,
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: None,
                })
                .collect(),
            None,
        )
    }
}

impl super::Renderer for ChatRenderer {
    type Input = TokenEvent;
    type Chunk = ChatCompletionChunk;

    /// Every choice's role.
    fn start(&mut self) -> Vec<ChatCompletionChunk> {
        vec![self.role_chunk()]
    }

    fn complete(&self) -> bool {
        self.done
    }

    /// The chunks one engine event becomes (none for text held back).
    fn push(&mut self, event: TokenEvent) -> Vec<ChatCompletionChunk> {
        if matches!(event, TokenEvent::Done(_)) {
            self.done = true;
        }
        match event {
            TokenEvent::Text { choice, .. } if choice >= self.meta.n => Vec::new(),
            TokenEvent::Text {
                choice,
                text,
                logprobs,
            } => {
                let pieces = self.readers[choice].push(text);
                let mut chunks = self.piece_chunks(choice, pieces);
                if self.meta.logprobs {
                    if chunks.is_empty() {
                        chunks.push(self.one(choice, ChatDelta::default(), None));
                    }
                    chunks[0].choices[0].logprobs = Some(ChatLogprobs {
                        content: logprobs.iter().map(ChatTokenLogprob::from).collect(),
                        refusal: None,
                    });
                }
                chunks
            }
            TokenEvent::Finished { choice, .. } if choice >= self.meta.n => Vec::new(),
            TokenEvent::Finished { choice, reason } => {
                let held = self.readers[choice].finish();
                let mut chunks = self.piece_chunks(choice, held);
                // Calls cut short by the token limit end in `length`.
                let reason = if self.readers[choice].called() {
                    "tool_calls"
                } else {
                    reason.as_str()
                };
                chunks.push(self.one(choice, ChatDelta::default(), Some(reason.into())));
                chunks
            }
            TokenEvent::Done(usage) if self.meta.include_usage => {
                vec![self.chunk(Vec::new(), Some(usage.into()))]
            }
            TokenEvent::Done(_) => Vec::new(),
        }
    }
}

/// The non-streamed answer, folded from the chunks of a renderer whose `include_usage`
/// is on.
pub struct ChatAnswer {
    meta: ChatMeta,
    choices: Vec<ChatChoice>,
    usage: Option<Usage>,
}

impl ChatAnswer {
    /// An empty answer; `meta` as given to the renderer.
    pub fn new(meta: ChatMeta) -> Self {
        let choices = (0..meta.n)
            .map(|index| ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant".into(),
                    content: None,
                    refusal: None,
                    reasoning_content: None,
                    tool_calls: None,
                },
                logprobs: meta.logprobs.then(|| ChatLogprobs {
                    content: Vec::new(),
                    refusal: None,
                }),
                finish_reason: "stop".into(),
            })
            .collect();
        Self {
            meta,
            choices,
            usage: None,
        }
    }
}

impl super::Fold for ChatAnswer {
    type Chunk = ChatCompletionChunk;
    type Answer = ChatCompletionResponse;

    fn absorb(&mut self, chunk: ChatCompletionChunk) {
        if let Some(Some(usage)) = chunk.usage {
            self.usage = Some(usage);
        }
        for c in chunk.choices {
            let Some(choice) = self.choices.get_mut(c.index) else {
                continue;
            };
            if let Some(text) = c.delta.content {
                choice
                    .message
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            if let Some(text) = c.delta.reasoning_content {
                choice
                    .message
                    .reasoning_content
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            if let Some(deltas) = c.delta.tool_calls {
                let calls = choice.message.tool_calls.get_or_insert_with(Vec::new);
                for delta in deltas {
                    // A delta with an id starts a call; the others extend the last one.
                    if delta.id.is_some() || calls.len() <= delta.index {
                        calls.push(ToolCall {
                            index: None,
                            id: delta.id.unwrap_or_default(),
                            kind: delta.kind.unwrap_or_else(|| "function".into()),
                            function: FunctionCall {
                                name: delta.function.name.unwrap_or_default(),
                                arguments: delta.function.arguments.unwrap_or_default(),
                            },
                        });
                    } else if let Some(call) = calls.get_mut(delta.index) {
                        if let Some(more) = delta.function.arguments {
                            call.function.arguments.push_str(&more);
                        }
                    }
                }
            }
            if let (Some(lps), Some(into)) = (c.logprobs, choice.logprobs.as_mut()) {
                into.content.extend(lps.content);
            }
            if let Some(reason) = c.finish_reason {
                choice.finish_reason = reason;
            }
        }
    }

    /// `None` when the stream ended before its usage (the generation ended early).
    fn finish(self) -> Option<ChatCompletionResponse> {
        let usage = self.usage?;
        let mut choices = self.choices;
        for c in &mut choices {
            // A tool call carries no content; plain text always some (maybe empty).
            if c.message.tool_calls.is_none() && c.message.content.is_none() {
                c.message.content = Some(String::new());
            }
            if c.message.tool_calls.is_some() && c.message.content.as_deref() == Some("") {
                c.message.content = None;
            }
        }
        Some(ChatCompletionResponse {
            id: self.meta.id,
            object: "chat.completion".into(),
            created: self.meta.created,
            model: self.meta.model,
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, TokenLogprob, TokenUsage};
    use crate::render::{Fold, Renderer};

    fn meta(n: usize, tools: bool, include_usage: bool) -> ChatMeta {
        ChatMeta {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            n,
            tools: tools.then_some(ToolSyntax::Json),
            logprobs: false,
            include_usage,
            thinking: None,
        }
    }

    #[test]
    fn a_reasoning_model_thinks_apart_from_its_answer() {
        let events = vec![
            text(0, "<think>"),
            text(0, "2+2 is"),
            text(0, " 4</thi"),
            text(0, "nk>\n\n"),
            text(0, "Four."),
            TokenEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
            },
            done(),
        ];
        let m = ChatMeta {
            thinking: Some(false),
            ..meta(1, false, true)
        };
        let chunks = run(m.clone(), events.clone());
        let deltas: Vec<&ChatDelta> = chunks
            .iter()
            .flat_map(|c| c.choices.iter().map(|c| &c.delta))
            .collect();
        assert!(deltas
            .iter()
            .all(|d| d.content.as_deref().is_none_or(|t| !t.contains("think"))));
        let answer = fold(m, events).unwrap();
        let message = &answer.choices[0].message;
        assert_eq!(message.reasoning_content.as_deref(), Some("2+2 is 4"));
        assert_eq!(message.content.as_deref(), Some("Four."));
        let json = serde_json::to_value(&answer).unwrap();
        assert_eq!(
            json["choices"][0]["message"]["reasoning_content"],
            "2+2 is 4"
        );
        // Other models never carry the field.
        let plain = fold(
            meta(1, false, true),
            vec![text(0, "<think>x</think>y"), done()],
        )
        .unwrap();
        assert!(plain.choices[0].message.reasoning_content.is_none());
    }

    fn text(choice: usize, t: &str) -> TokenEvent {
        TokenEvent::Text {
            choice,
            text: t.into(),
            logprobs: Vec::new(),
        }
    }

    fn done() -> TokenEvent {
        TokenEvent::Done(TokenUsage {
            prompt_tokens: 3,
            completion_tokens: 4,
            cached_prompt_tokens: 0,
            ..Default::default()
        })
    }

    fn run(meta: ChatMeta, events: Vec<TokenEvent>) -> Vec<ChatCompletionChunk> {
        let mut r = ChatRenderer::new(meta);
        let mut out = r.start();
        for e in events {
            out.extend(r.push(e));
        }
        out
    }

    fn fold(meta: ChatMeta, events: Vec<TokenEvent>) -> Option<ChatCompletionResponse> {
        let mut answer = ChatAnswer::new(meta.clone());
        for c in run(meta, events) {
            answer.absorb(c);
        }
        answer.finish()
    }

    #[test]
    fn text_then_finish_then_usage() {
        let events = vec![
            text(0, "Hel"),
            text(1, "A"),
            text(0, "lo"),
            TokenEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
            },
            TokenEvent::Finished {
                choice: 1,
                reason: FinishReason::Length,
            },
            done(),
        ];
        let chunks = run(meta(2, false, true), events.clone());
        assert_eq!(chunks[0].choices.len(), 2, "role chunk for every choice");
        assert_eq!(chunks.len(), 1 + 3 + 2 + 1);
        assert!(chunks[..chunks.len() - 1]
            .iter()
            .all(|c| c.usage == Some(None)));
        assert_eq!(
            chunks.last().unwrap().usage.unwrap().unwrap().total_tokens,
            7
        );
        let answer = fold(meta(2, false, true), events).unwrap();
        assert_eq!(answer.choices[0].message.content.as_deref(), Some("Hello"));
        assert_eq!(answer.choices[0].finish_reason, "stop");
        assert_eq!(answer.choices[1].message.content.as_deref(), Some("A"));
        assert_eq!(answer.choices[1].finish_reason, "length");
        // Without include_usage no chunk carries a usage field, and none ends the stream.
        let quiet = run(meta(1, false, false), vec![text(0, "x"), done()]);
        assert!(quiet.iter().all(|c| c.usage.is_none()));
        assert_eq!(quiet.len(), 2);
    }

    #[test]
    fn a_tool_call_streams_its_name_then_its_arguments() {
        let events = vec![
            text(0, r#"{"name":"get_weather","#),
            text(0, r#""arguments":{"city":"#),
            text(0, r#""Paris"}}"#),
            TokenEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
            },
            done(),
        ];
        let chunks = run(meta(1, true, true), events.clone());
        let first = &chunks[1].choices[0].delta.tool_calls.as_ref().unwrap()[0];
        assert_eq!(first.index, 0);
        assert!(first.id.as_deref().unwrap().starts_with("call_"));
        assert_eq!(first.function.name.as_deref(), Some("get_weather"));
        let json = serde_json::to_value(&chunks[2]).unwrap();
        let piece = &json["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(piece["function"]["arguments"], r#"{"city":"#);
        assert!(piece.get("id").is_none() && piece["function"].get("name").is_none());
        assert_eq!(
            chunks[4].choices[0].finish_reason.as_deref(),
            Some("tool_calls")
        );
        let answer = fold(meta(1, true, true), events).unwrap();
        let c = &answer.choices[0];
        assert_eq!(c.finish_reason, "tool_calls");
        assert!(c.message.content.is_none());
        let call = &c.message.tool_calls.as_ref().unwrap()[0];
        assert_eq!(call.index, None);
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(call.function.arguments, r#"{"city":"Paris"}"#);
        // `auto` answered with text instead.
        let answer = fold(
            meta(1, true, true),
            vec![
                text(0, r#"{"content":"Hi"}"#),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Stop,
                },
                done(),
            ],
        )
        .unwrap();
        assert_eq!(answer.choices[0].message.content.as_deref(), Some("Hi"));
        assert_eq!(answer.choices[0].finish_reason, "stop");
    }

    #[test]
    fn logprobs_travel_with_their_text_and_an_early_end_is_no_answer() {
        let mut m = meta(1, false, true);
        m.logprobs = true;
        let lp = TokenLogprob {
            token: "a".into(),
            logprob: -0.1,
            top: Vec::new(),
        };
        let events = vec![
            TokenEvent::Text {
                choice: 0,
                text: "a".into(),
                logprobs: vec![lp],
            },
            TokenEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
            },
            done(),
        ];
        let chunks = run(m.clone(), events.clone());
        assert_eq!(
            chunks[1].choices[0]
                .logprobs
                .as_ref()
                .unwrap()
                .content
                .len(),
            1
        );
        let answer = fold(m.clone(), events).unwrap();
        assert_eq!(
            answer.choices[0].logprobs.as_ref().unwrap().content[0].token,
            "a"
        );
        assert!(
            fold(m, vec![text(0, "a")]).is_none(),
            "no Done: ended early"
        );
    }
}
