//! Anthropic Messages: [`MessagesRenderer`] turns engine events into the streamed events
//! (`message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`,
//! `message_delta`, `message_stop`), and [`MessageAnswer`] folds those same events into
//! the non-streamed `Message`. One choice, read by an [`AnswerReader`]: thinking in
//! `thinking` blocks, text in `text` blocks, each tool call a `tool_use` block whose input
//! arrives in `input_json_delta` pieces as it is generated.

use super::answer::{AnswerPiece, AnswerReader};
use crate::anthropic::messages::{
    BlockDelta, ContentBlock, DeltaUsage, Message, MessageDeltaBody, MessageUsage, StreamEvent,
};
use crate::engine::tools::ToolSyntax;
use crate::engine::{FinishReason, TokenEvent};

/// What every event of one answer shares.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    /// `msg_…`.
    pub id: String,
    /// The model's canonical name.
    pub model: String,
    /// Prompt tokens (known when the generation starts).
    pub input_tokens: usize,
    /// How the output writes tool calls, when the request offers tools.
    pub tools: Option<ToolSyntax>,
    /// For a reasoning model: whether the prompt opened the thinking block (its thinking
    /// goes to `thinking` blocks). `None` for other models.
    pub thinking: Option<bool>,
    /// The request's `stop_sequences` (the one that ends the answer is named).
    pub stop_sequences: Vec<String>,
}

/// Engine events in, stream events out; no I/O.
pub struct MessagesRenderer {
    meta: MessageMeta,
    /// The index of the open text block, if one is open.
    open: Option<usize>,
    /// The index of the open thinking block, if one is open.
    open_thinking: Option<usize>,
    /// The index of the open `tool_use` block, if one is open.
    tool_block: Option<usize>,
    /// The answer, split into thinking, text and tool calls.
    reader: AnswerReader,
    /// Blocks started so far.
    blocks: usize,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<String>,
    done: bool,
}

impl MessagesRenderer {
    /// A renderer for one answer.
    pub fn new(meta: MessageMeta) -> Self {
        Self {
            reader: AnswerReader::new(meta.thinking, meta.tools),
            meta,
            open: None,
            open_thinking: None,
            tool_block: None,
            blocks: 0,
            stop_reason: None,
            stop_sequence: None,
            done: false,
        }
    }

    /// Starts a block, closing whichever block is open.
    fn start_block(&mut self, block: ContentBlock, events: &mut Vec<StreamEvent>) -> usize {
        self.close_blocks(events);
        let index = self.blocks;
        self.blocks += 1;
        events.push(StreamEvent::ContentBlockStart {
            index,
            content_block: block,
        });
        index
    }

    fn close_blocks(&mut self, events: &mut Vec<StreamEvent>) {
        for index in [
            self.open_thinking.take(),
            self.open.take(),
            self.tool_block.take(),
        ]
        .into_iter()
        .flatten()
        {
            events.push(StreamEvent::ContentBlockStop { index });
        }
    }

    /// The answer's pieces as blocks: thinking, text and `tool_use` blocks, each closed
    /// when another begins.
    fn pieces(&mut self, pieces: Vec<AnswerPiece>) -> Vec<StreamEvent> {
        let mut events = Vec::new();
        for piece in pieces {
            match piece {
                AnswerPiece::Reasoning(thinking) => {
                    let index = match self.open_thinking {
                        Some(index) => index,
                        None => {
                            let block = ContentBlock::Thinking {
                                thinking: String::new(),
                                signature: String::new(),
                            };
                            let index = self.start_block(block, &mut events);
                            self.open_thinking = Some(index);
                            index
                        }
                    };
                    events.push(StreamEvent::ContentBlockDelta {
                        index,
                        delta: BlockDelta::ThinkingDelta { thinking },
                    });
                }
                AnswerPiece::Content(text) => {
                    let index = match self.open {
                        Some(index) => index,
                        None => {
                            let block = ContentBlock::Text {
                                text: String::new(),
                            };
                            let index = self.start_block(block, &mut events);
                            self.open = Some(index);
                            index
                        }
                    };
                    events.push(StreamEvent::ContentBlockDelta {
                        index,
                        delta: BlockDelta::TextDelta { text },
                    });
                }
                AnswerPiece::Call { name, .. } => {
                    let block = ContentBlock::ToolUse {
                        id: format!("toolu_{}", uuid::Uuid::new_v4().simple()),
                        name,
                        input: serde_json::json!({}),
                    };
                    let index = self.start_block(block, &mut events);
                    self.tool_block = Some(index);
                }
                AnswerPiece::Arguments { text, .. } => {
                    if let Some(index) = self.tool_block {
                        events.push(StreamEvent::ContentBlockDelta {
                            index,
                            delta: BlockDelta::InputJsonDelta { partial_json: text },
                        });
                    }
                }
            }
        }
        events
    }

    /// The end of the answer's content: what was held back, the open block closed.
    fn finish(&mut self, reason: FinishReason) -> Vec<StreamEvent> {
        let held = self.reader.finish();
        let mut events = self.pieces(held);
        self.close_blocks(&mut events);
        self.stop_reason = Some(if self.reader.called() {
            "tool_use"
        } else {
            match reason {
                FinishReason::Length => "max_tokens",
                FinishReason::Stop => "end_turn",
                FinishReason::StopSequence(i) => {
                    self.stop_sequence = self.meta.stop_sequences.get(i).cloned();
                    "stop_sequence"
                }
            }
        });
        events
    }
}

impl super::Renderer for MessagesRenderer {
    type Input = TokenEvent;
    type Chunk = StreamEvent;

    /// `message_start` (with the prompt's tokens) and a first `ping`, as Anthropic sends.
    fn start(&mut self) -> Vec<StreamEvent> {
        vec![
            StreamEvent::MessageStart {
                message: Message {
                    id: self.meta.id.clone(),
                    kind: "message".into(),
                    role: "assistant".into(),
                    model: self.meta.model.clone(),
                    content: Vec::new(),
                    stop_reason: None,
                    stop_sequence: None,
                    usage: MessageUsage {
                        input_tokens: self.meta.input_tokens,
                        output_tokens: 0,
                        ..MessageUsage::default()
                    },
                },
            },
            StreamEvent::Ping,
        ]
    }

    fn complete(&self) -> bool {
        self.done
    }

    fn push(&mut self, event: TokenEvent) -> Vec<StreamEvent> {
        match event {
            TokenEvent::Text { choice, .. } if choice > 0 => Vec::new(),
            TokenEvent::Text { text, .. } => {
                let pieces = self.reader.push(text);
                self.pieces(pieces)
            }
            TokenEvent::Finished { choice, .. } if choice > 0 => Vec::new(),
            TokenEvent::Finished { reason, .. } => self.finish(reason),
            TokenEvent::Done(usage) => {
                self.done = true;
                let mut events = Vec::new();
                if self.stop_reason.is_none() {
                    events.extend(self.finish(FinishReason::Stop));
                }
                events.push(StreamEvent::MessageDelta {
                    delta: MessageDeltaBody {
                        stop_reason: self.stop_reason.map(str::to_string),
                        stop_sequence: self.stop_sequence.clone(),
                    },
                    usage: DeltaUsage {
                        output_tokens: usage.completion_tokens,
                    },
                });
                events.push(StreamEvent::MessageStop);
                events
            }
        }
    }
}

/// The non-streamed `Message`, folded from a renderer's events.
#[derive(Default)]
pub struct MessageAnswer {
    message: Option<Message>,
    /// A tool block's input JSON as it arrives, by block index.
    partial: Vec<(usize, String)>,
    stopped: bool,
}

impl MessageAnswer {
    /// An empty answer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl super::Fold for MessageAnswer {
    type Chunk = StreamEvent;
    type Answer = Message;

    fn absorb(&mut self, event: StreamEvent) {
        match event {
            StreamEvent::MessageStart { message } => self.message = Some(message),
            StreamEvent::ContentBlockStart { content_block, .. } => {
                if let Some(m) = &mut self.message {
                    m.content.push(content_block);
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let Some(m) = &mut self.message else { return };
                match (m.content.get_mut(index), delta) {
                    (Some(ContentBlock::Text { text }), BlockDelta::TextDelta { text: more }) => {
                        text.push_str(&more)
                    }
                    (
                        Some(ContentBlock::Thinking { thinking, .. }),
                        BlockDelta::ThinkingDelta { thinking: more },
                    ) => thinking.push_str(&more),
                    (
                        Some(ContentBlock::ToolUse { .. }),
                        BlockDelta::InputJsonDelta { partial_json },
                    ) => match self.partial.iter_mut().find(|(i, _)| *i == index) {
                        Some((_, json)) => json.push_str(&partial_json),
                        None => self.partial.push((index, partial_json)),
                    },
                    _ => {}
                }
            }
            StreamEvent::ContentBlockStop { index } => {
                let Some(m) = &mut self.message else { return };
                if let Some(ContentBlock::ToolUse { input, .. }) = m.content.get_mut(index) {
                    if let Some((_, json)) = self.partial.iter().find(|(i, _)| *i == index) {
                        *input =
                            serde_json::from_str(json).unwrap_or_else(|_| serde_json::json!({}));
                    }
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(m) = &mut self.message {
                    m.stop_reason = delta.stop_reason;
                    m.stop_sequence = delta.stop_sequence;
                    m.usage.output_tokens = usage.output_tokens;
                }
            }
            StreamEvent::MessageStop => self.stopped = true,
            StreamEvent::Ping => {}
        }
    }

    /// `None` when the stream ended before `message_stop`.
    fn finish(self) -> Option<Message> {
        self.message.filter(|_| self.stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::TokenUsage;
    use crate::render::{Fold, Renderer};

    fn meta(tools: bool) -> MessageMeta {
        MessageMeta {
            id: "msg_1".into(),
            model: "m".into(),
            input_tokens: 7,
            tools: tools.then_some(ToolSyntax::Json),
            thinking: None,
            stop_sequences: vec!["END".into()],
        }
    }

    #[test]
    fn a_stop_sequence_is_named() {
        let (_, m) = run(
            false,
            vec![
                text("a"),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::StopSequence(0),
                },
                done(1),
            ],
        );
        let m = m.unwrap();
        assert_eq!(m.stop_reason.as_deref(), Some("stop_sequence"));
        assert_eq!(m.stop_sequence.as_deref(), Some("END"));
    }

    #[test]
    fn thinking_comes_in_its_own_block_before_the_text() {
        let mut r = MessagesRenderer::new(MessageMeta {
            thinking: Some(true),
            ..meta(false)
        });
        let mut all = r.start();
        for e in [
            text("Let me"),
            text(" see.</think>"),
            text("\n\nHi!"),
            TokenEvent::Finished {
                choice: 0,
                reason: FinishReason::Stop,
            },
            done(4),
        ] {
            all.extend(r.push(e));
        }
        let mut answer = MessageAnswer::new();
        for e in all.clone() {
            answer.absorb(e);
        }
        let m = answer.finish().unwrap();
        assert_eq!(
            m.content,
            vec![
                ContentBlock::Thinking {
                    thinking: "Let me see.".into(),
                    signature: String::new()
                },
                ContentBlock::Text { text: "Hi!".into() }
            ]
        );
        // Every block that starts stops.
        let starts = all
            .iter()
            .filter(|e| matches!(e, StreamEvent::ContentBlockStart { .. }))
            .count();
        let stops = all
            .iter()
            .filter(|e| matches!(e, StreamEvent::ContentBlockStop { .. }))
            .count();
        assert_eq!((starts, stops), (2, 2));
    }

    fn text(t: &str) -> TokenEvent {
        TokenEvent::Text {
            choice: 0,
            text: t.into(),
            logprobs: Vec::new(),
        }
    }

    fn done(out: usize) -> TokenEvent {
        TokenEvent::Done(TokenUsage {
            prompt_tokens: 7,
            completion_tokens: out,
            cached_prompt_tokens: 0,
            ..Default::default()
        })
    }

    fn run(tools: bool, events: Vec<TokenEvent>) -> (Vec<StreamEvent>, Option<Message>) {
        let mut r = MessagesRenderer::new(meta(tools));
        let mut all = r.start();
        for e in events {
            all.extend(r.push(e));
        }
        let mut answer = MessageAnswer::new();
        for e in all.clone() {
            answer.absorb(e);
        }
        (all, answer.finish())
    }

    fn names(events: &[StreamEvent]) -> Vec<String> {
        events
            .iter()
            .map(|e| {
                serde_json::to_value(e).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn text_streams_in_anthropic_order_and_folds_into_a_message() {
        let (events, message) = run(
            false,
            vec![
                text("Hel"),
                text("lo"),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Stop,
                },
                done(2),
            ],
        );
        assert_eq!(
            names(&events),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        let m = message.unwrap();
        assert_eq!(
            m.content,
            vec![ContentBlock::Text {
                text: "Hello".into()
            }]
        );
        assert_eq!(m.stop_reason.as_deref(), Some("end_turn"));
        assert_eq!((m.usage.input_tokens, m.usage.output_tokens), (7, 2));
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], "message");
        assert_eq!(json["content"][0]["type"], "text");
        assert!(json["stop_sequence"].is_null());
    }

    #[test]
    fn length_is_max_tokens() {
        let (_, m) = run(
            false,
            vec![
                text("a"),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Length,
                },
                done(1),
            ],
        );
        assert_eq!(m.unwrap().stop_reason.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn a_tool_answer_becomes_a_tool_use_block() {
        let (events, m) = run(
            true,
            vec![
                text(r#"{"name": "get_weather", "#),
                text(r#""arguments": {"city": "#),
                text(r#""Paris"}}"#),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Stop,
                },
                done(9),
            ],
        );
        let m = m.unwrap();
        assert_eq!(m.stop_reason.as_deref(), Some("tool_use"));
        let ContentBlock::ToolUse { id, name, input } = &m.content[0] else {
            panic!("{m:?}")
        };
        assert!(id.starts_with("toolu_"));
        assert_eq!(name, "get_weather");
        assert_eq!(input, &serde_json::json!({"city": "Paris"}));
        let start = serde_json::to_value(&events[2]).unwrap();
        assert_eq!(start["content_block"]["input"], serde_json::json!({}));
        assert_eq!(
            serde_json::to_value(&events[3]).unwrap()["delta"]["type"],
            "input_json_delta"
        );
    }

    #[test]
    fn an_auto_text_answer_is_text() {
        let (_, m) = run(
            true,
            vec![
                text(r#"{"content": "No tool needed."}"#),
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Stop,
                },
                done(5),
            ],
        );
        let m = m.unwrap();
        assert_eq!(
            m.content,
            vec![ContentBlock::Text {
                text: "No tool needed.".into()
            }]
        );
        assert_eq!(m.stop_reason.as_deref(), Some("end_turn"));
    }

    #[test]
    fn an_answer_cut_short_folds_to_nothing() {
        let mut r = MessagesRenderer::new(meta(false));
        let mut answer = MessageAnswer::new();
        for e in r.start().into_iter().chain(r.push(text("a"))) {
            answer.absorb(e);
        }
        assert!(answer.finish().is_none());
    }
}
