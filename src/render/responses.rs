//! OpenAI Responses: [`ResponsesRenderer`] turns engine events into the streamed events
//! (`response.created`, `response.in_progress`, `response.output_item.added`,
//! `response.content_part.added`, `response.output_text.delta`/`.done`,
//! `response.function_call_arguments.delta`/`.done`, `response.content_part.done`,
//! `response.output_item.done`, `response.completed` or `response.incomplete`), numbered
//! by `sequence_number`; [`ResponseAnswer`] keeps the response the last event carries, so
//! the non-streamed answer is exactly the streamed one. One choice, read by an
//! [`AnswerReader`]: thinking is a `reasoning` item, text a `message`, each tool call a
//! `function_call` item whose arguments arrive in `response.function_call_arguments.delta`
//! pieces as they are generated.

use super::answer::{AnswerPiece, AnswerReader};
use crate::engine::tools::ToolSyntax;
use crate::engine::{FinishReason, TokenEvent};
use crate::openai::responses::{
    IncompleteDetails, InputTokensDetails, OutputItem, OutputText, OutputTokensDetails,
    ReasoningText, ResponseEvent, ResponseEventBody, ResponseObject, ResponseUsage,
};

/// What the renderer needs: the response as it starts (status `in_progress`, no output),
/// and whether the output is a tool call.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// The response object to fill in.
    pub response: ResponseObject,
    /// How the output writes tool calls, when the request offers tools.
    pub tools: Option<ToolSyntax>,
    /// For a reasoning model: whether the prompt opened the thinking block (its thinking
    /// goes to a `reasoning` item). `None` for other models.
    pub thinking: Option<bool>,
}

/// The message item being streamed.
struct OpenMessage {
    index: usize,
    id: String,
    text: String,
}

/// The function call being streamed.
struct OpenCall {
    index: usize,
    id: String,
    call_id: String,
    name: String,
    arguments: String,
}

/// Engine events in, Responses events out; no I/O.
pub struct ResponsesRenderer {
    meta: ResponseMeta,
    sequence: usize,
    open: Option<OpenMessage>,
    /// The reasoning item being streamed.
    reasoning: Option<OpenMessage>,
    /// The answer, split into thinking, text and tool calls.
    reader: AnswerReader,
    call: Option<OpenCall>,
    incomplete: bool,
    done: bool,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

impl ResponsesRenderer {
    /// A renderer for one response.
    pub fn new(meta: ResponseMeta) -> Self {
        Self {
            reader: AnswerReader::new(meta.thinking, meta.tools),
            meta,
            sequence: 0,
            open: None,
            reasoning: None,
            call: None,
            incomplete: false,
            done: false,
        }
    }

    fn event(&mut self, body: ResponseEventBody) -> ResponseEvent {
        let event = ResponseEvent {
            sequence_number: self.sequence,
            body,
        };
        self.sequence += 1;
        event
    }

    fn open_message(&mut self) -> Vec<ResponseEvent> {
        let index = self.meta.response.output.len();
        let id = new_id("msg");
        self.meta.response.output.push(OutputItem::Message {
            id: id.clone(),
            status: "in_progress".into(),
            role: "assistant".into(),
            content: Vec::new(),
        });
        self.open = Some(OpenMessage {
            index,
            id: id.clone(),
            text: String::new(),
        });
        let item = self.meta.response.output[index].clone();
        vec![
            self.event(ResponseEventBody::OutputItemAdded {
                output_index: index,
                item,
            }),
            self.event(ResponseEventBody::ContentPartAdded {
                item_id: id,
                output_index: index,
                content_index: 0,
                part: OutputText::new(""),
            }),
        ]
    }

    fn text(&mut self, text: String) -> Vec<ResponseEvent> {
        let mut events = if self.open.is_none() {
            self.open_message()
        } else {
            Vec::new()
        };
        let Some(open) = self.open.as_mut() else {
            return events;
        };
        open.text.push_str(&text);
        let (item_id, output_index) = (open.id.clone(), open.index);
        events.push(self.event(ResponseEventBody::OutputTextDelta {
            item_id,
            output_index,
            content_index: 0,
            delta: text,
            logprobs: Vec::new(),
        }));
        events
    }

    /// The answer's pieces as output items: thinking into a `reasoning` item, text into a
    /// `message`, each call a `function_call`; an item closes when another begins.
    fn pieces(&mut self, pieces: Vec<AnswerPiece>) -> Vec<ResponseEvent> {
        let mut events = Vec::new();
        for piece in pieces {
            match piece {
                AnswerPiece::Reasoning(delta) => {
                    events.extend(self.close_message());
                    events.extend(self.close_call());
                    if self.reasoning.is_none() {
                        let index = self.meta.response.output.len();
                        let id = new_id("rs");
                        let item = OutputItem::Reasoning {
                            id: id.clone(),
                            summary: Vec::new(),
                            content: Vec::new(),
                            status: "in_progress".into(),
                        };
                        self.meta.response.output.push(item.clone());
                        self.reasoning = Some(OpenMessage {
                            index,
                            id,
                            text: String::new(),
                        });
                        events.push(self.event(ResponseEventBody::OutputItemAdded {
                            output_index: index,
                            item,
                        }));
                    }
                    let Some(open) = self.reasoning.as_mut() else {
                        continue;
                    };
                    open.text.push_str(&delta);
                    let (item_id, output_index) = (open.id.clone(), open.index);
                    events.push(self.event(ResponseEventBody::ReasoningTextDelta {
                        item_id,
                        output_index,
                        content_index: 0,
                        delta,
                    }));
                }
                AnswerPiece::Content(text) => {
                    events.extend(self.close_reasoning());
                    events.extend(self.close_call());
                    events.extend(self.text(text));
                }
                AnswerPiece::Call { name, .. } => {
                    events.extend(self.close_reasoning());
                    events.extend(self.close_message());
                    events.extend(self.close_call());
                    let index = self.meta.response.output.len();
                    let call = OpenCall {
                        index,
                        id: new_id("fc"),
                        call_id: new_id("call"),
                        name,
                        arguments: String::new(),
                    };
                    let item = OutputItem::FunctionCall {
                        id: call.id.clone(),
                        call_id: call.call_id.clone(),
                        name: call.name.clone(),
                        arguments: String::new(),
                        status: "in_progress".into(),
                    };
                    self.meta.response.output.push(item.clone());
                    self.call = Some(call);
                    events.push(self.event(ResponseEventBody::OutputItemAdded {
                        output_index: index,
                        item,
                    }));
                }
                AnswerPiece::Arguments { text: delta, .. } => {
                    let Some(call) = self.call.as_mut() else {
                        continue;
                    };
                    call.arguments.push_str(&delta);
                    let (item_id, output_index) = (call.id.clone(), call.index);
                    events.push(self.event(ResponseEventBody::FunctionCallArgumentsDelta {
                        item_id,
                        output_index,
                        delta,
                    }));
                }
            }
        }
        events
    }

    fn close_reasoning(&mut self) -> Vec<ResponseEvent> {
        let Some(open) = self.reasoning.take() else {
            return Vec::new();
        };
        let item = OutputItem::Reasoning {
            id: open.id.clone(),
            summary: Vec::new(),
            content: vec![ReasoningText {
                kind: "reasoning_text".into(),
                text: open.text.clone(),
            }],
            status: "completed".into(),
        };
        self.meta.response.output[open.index] = item.clone();
        vec![
            self.event(ResponseEventBody::ReasoningTextDone {
                item_id: open.id,
                output_index: open.index,
                content_index: 0,
                text: open.text,
            }),
            self.event(ResponseEventBody::OutputItemDone {
                output_index: open.index,
                item,
            }),
        ]
    }

    fn close_message(&mut self) -> Vec<ResponseEvent> {
        let Some(open) = self.open.take() else {
            return Vec::new();
        };
        let part = OutputText::new(open.text.clone());
        let status = if self.incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let item = OutputItem::Message {
            id: open.id.clone(),
            status: status.into(),
            role: "assistant".into(),
            content: vec![part.clone()],
        };
        self.meta.response.output[open.index] = item.clone();
        vec![
            self.event(ResponseEventBody::OutputTextDone {
                item_id: open.id.clone(),
                output_index: open.index,
                content_index: 0,
                text: open.text,
                logprobs: Vec::new(),
            }),
            self.event(ResponseEventBody::ContentPartDone {
                item_id: open.id,
                output_index: open.index,
                content_index: 0,
                part,
            }),
            self.event(ResponseEventBody::OutputItemDone {
                output_index: open.index,
                item,
            }),
        ]
    }

    /// The end of the call being streamed, if one is.
    fn close_call(&mut self) -> Vec<ResponseEvent> {
        let Some(call) = self.call.take() else {
            return Vec::new();
        };
        let status = if self.incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let item = OutputItem::FunctionCall {
            id: call.id.clone(),
            call_id: call.call_id,
            name: call.name.clone(),
            arguments: call.arguments.clone(),
            status: status.into(),
        };
        self.meta.response.output[call.index] = item.clone();
        vec![
            self.event(ResponseEventBody::FunctionCallArgumentsDone {
                item_id: call.id,
                output_index: call.index,
                name: call.name,
                arguments: call.arguments,
            }),
            self.event(ResponseEventBody::OutputItemDone {
                output_index: call.index,
                item,
            }),
        ]
    }

    /// The end of the answer: what was held back, every open item closed.
    fn finish(&mut self, reason: FinishReason) -> Vec<ResponseEvent> {
        self.incomplete = reason == FinishReason::Length;
        let held = self.reader.finish();
        let mut events = self.pieces(held);
        events.extend(self.close_reasoning());
        events.extend(self.close_message());
        events.extend(self.close_call());
        events
    }
}

impl super::Renderer for ResponsesRenderer {
    type Input = TokenEvent;
    type Chunk = ResponseEvent;

    fn start(&mut self) -> Vec<ResponseEvent> {
        let response = self.meta.response.clone();
        vec![
            self.event(ResponseEventBody::Created {
                response: response.clone(),
            }),
            self.event(ResponseEventBody::InProgress { response }),
        ]
    }

    fn complete(&self) -> bool {
        self.done
    }

    /// An `error` event, then `response.failed` with the response as it stood.
    fn fail(&mut self, code: &str, message: &str) -> Vec<ResponseEvent> {
        self.done = true;
        let error = self.event(ResponseEventBody::Error {
            code: Some(code.to_string()),
            message: message.to_string(),
            param: None,
        });
        // The response's error takes one of the Responses API's own codes.
        let kind = match code {
            "rate_limit_exceeded" => code,
            _ => "server_error",
        };
        let response = &mut self.meta.response;
        response.status = "failed".into();
        response.error = Some(serde_json::json!({"code": kind, "message": message}));
        let response = response.clone();
        vec![error, self.event(ResponseEventBody::Failed { response })]
    }

    fn push(&mut self, event: TokenEvent) -> Vec<ResponseEvent> {
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
                let mut events = self.close_message();
                let response = &mut self.meta.response;
                response.usage = Some(ResponseUsage {
                    input_tokens: usage.prompt_tokens,
                    input_tokens_details: InputTokensDetails {
                        cached_tokens: usage.cached_prompt_tokens.min(usage.prompt_tokens),
                        cache_write_tokens: 0,
                    },
                    output_tokens: usage.completion_tokens,
                    output_tokens_details: OutputTokensDetails::default(),
                    total_tokens: usage.prompt_tokens + usage.completion_tokens,
                });
                if self.incomplete {
                    response.status = "incomplete".into();
                    response.incomplete_details = Some(IncompleteDetails {
                        reason: "max_output_tokens".into(),
                    });
                } else {
                    response.status = "completed".into();
                }
                let response = response.clone();
                let body = if self.incomplete {
                    ResponseEventBody::Incomplete { response }
                } else {
                    ResponseEventBody::Completed { response }
                };
                events.push(self.event(body));
                events
            }
        }
    }
}

/// The non-streamed response: the one the stream's last event carries.
#[derive(Default)]
pub struct ResponseAnswer {
    response: Option<ResponseObject>,
}

impl ResponseAnswer {
    /// An empty answer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl super::Fold for ResponseAnswer {
    type Chunk = ResponseEvent;
    type Answer = ResponseObject;

    fn absorb(&mut self, event: ResponseEvent) {
        if let ResponseEventBody::Completed { response }
        | ResponseEventBody::Incomplete { response } = event.body
        {
            self.response = Some(response);
        }
    }

    /// `None` when the stream ended before its last event.
    fn finish(self) -> Option<ResponseObject> {
        self.response
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::engine::TokenUsage;
    use crate::render::{Fold, Renderer};

    pub(in crate::render) fn response() -> ResponseObject {
        ResponseObject {
            id: "resp_1".into(),
            object: "response".into(),
            created_at: 1,
            status: "in_progress".into(),
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model: "m".into(),
            output: Vec::new(),
            parallel_tool_calls: true,
            previous_response_id: None,
            reasoning: serde_json::json!({"effort": null, "summary": null}),
            store: true,
            temperature: 1.0,
            text: serde_json::json!({"format": {"type": "text"}}),
            tool_choice: serde_json::json!("auto"),
            tools: Vec::new(),
            top_p: 1.0,
            truncation: "disabled".into(),
            usage: None,
            user: None,
            metadata: serde_json::json!({}),
        }
    }

    pub(in crate::render) fn text(t: &str) -> TokenEvent {
        TokenEvent::Text {
            choice: 0,
            text: t.into(),
            logprobs: Vec::new(),
        }
    }

    fn run(tools: bool, events: Vec<TokenEvent>) -> (Vec<ResponseEvent>, Option<ResponseObject>) {
        run_with(
            ResponseMeta {
                response: response(),
                tools: tools.then_some(ToolSyntax::Json),
                thinking: None,
            },
            events,
        )
    }

    fn run_with(
        meta: ResponseMeta,
        events: Vec<TokenEvent>,
    ) -> (Vec<ResponseEvent>, Option<ResponseObject>) {
        let mut r = ResponsesRenderer::new(meta);
        let mut all = r.start();
        for e in events {
            all.extend(r.push(e));
        }
        let mut answer = ResponseAnswer::new();
        for e in all.clone() {
            answer.absorb(e);
        }
        (all, answer.finish())
    }

    pub(in crate::render) fn finished(reason: FinishReason) -> TokenEvent {
        TokenEvent::Finished { choice: 0, reason }
    }

    pub(in crate::render) fn done() -> TokenEvent {
        TokenEvent::Done(TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 3,
            cached_prompt_tokens: 4,
            ..Default::default()
        })
    }

    fn types(events: &[ResponseEvent]) -> Vec<String> {
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
    fn text_streams_the_full_event_sequence() {
        let (events, response) = run(
            false,
            vec![
                text("Hel"),
                text("lo"),
                finished(FinishReason::Stop),
                done(),
            ],
        );
        assert_eq!(
            types(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let numbers: Vec<usize> = events.iter().map(|e| e.sequence_number).collect();
        assert_eq!(numbers, (0..events.len()).collect::<Vec<_>>());
        let r = response.unwrap();
        assert_eq!(r.status, "completed");
        let OutputItem::Message {
            content, status, ..
        } = &r.output[0]
        else {
            panic!()
        };
        assert_eq!(content[0].text, "Hello");
        assert_eq!(status, "completed");
        let usage = r.usage.unwrap();
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.total_tokens),
            (10, 3, 13)
        );
        assert_eq!(usage.input_tokens_details.cached_tokens, 4);
        let json = serde_json::to_value(&events[4]).unwrap();
        assert_eq!(json["delta"], "Hel");
        assert_eq!(json["content_index"], 0);
    }

    #[test]
    fn thinking_is_a_reasoning_item_before_the_message() {
        let meta = ResponseMeta {
            response: response(),
            tools: None,
            thinking: Some(false),
        };
        let (events, r) = run_with(
            meta,
            vec![
                text("<think>Hm"),
                text("m.</think>"),
                text("\n\nOK"),
                finished(FinishReason::Stop),
                done(),
            ],
        );
        let r = r.unwrap();
        let OutputItem::Reasoning {
            content, status, ..
        } = &r.output[0]
        else {
            panic!("{r:?}")
        };
        assert_eq!(content[0].text, "Hmm.");
        assert_eq!(status, "completed");
        let OutputItem::Message { content, .. } = &r.output[1] else {
            panic!()
        };
        assert_eq!(content[0].text, "OK");
        let kinds = types(&events);
        assert!(kinds.contains(&"response.reasoning_text.delta".to_string()));
        let done_at = kinds
            .iter()
            .position(|k| k == "response.reasoning_text.done")
            .unwrap();
        let text_at = kinds
            .iter()
            .position(|k| k == "response.output_text.delta")
            .unwrap();
        assert!(done_at < text_at);
    }

    #[test]
    fn max_tokens_is_incomplete() {
        let (events, response) = run(
            false,
            vec![text("a"), finished(FinishReason::Length), done()],
        );
        assert_eq!(types(&events).last().unwrap(), "response.incomplete");
        let r = response.unwrap();
        assert_eq!(r.status, "incomplete");
        assert_eq!(r.incomplete_details.unwrap().reason, "max_output_tokens");
    }

    #[test]
    fn a_tool_answer_is_a_function_call_item() {
        let (events, response) = run(
            true,
            vec![
                text(r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#),
                finished(FinishReason::Stop),
                done(),
            ],
        );
        assert_eq!(
            types(&events)[2..6],
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done"
            ]
        );
        let r = response.unwrap();
        let OutputItem::FunctionCall {
            name,
            arguments,
            call_id,
            id,
            status,
        } = &r.output[0]
        else {
            panic!()
        };
        assert_eq!(name, "get_weather");
        assert_eq!(arguments, r#"{"city":"Paris"}"#);
        assert!(call_id.starts_with("call_") && id.starts_with("fc_"));
        assert_eq!(status, "completed");
    }

    #[test]
    fn an_auto_text_answer_is_a_message() {
        let (_, response) = run(
            true,
            vec![
                text(r#"{"content":"Hi there"}"#),
                finished(FinishReason::Stop),
                done(),
            ],
        );
        let r = response.unwrap();
        let OutputItem::Message { content, .. } = &r.output[0] else {
            panic!()
        };
        assert_eq!(content[0].text, "Hi there");
    }

    #[test]
    fn a_stream_cut_short_has_no_answer() {
        let (_, response) = run(false, vec![text("a")]);
        assert!(response.is_none());
    }
}
