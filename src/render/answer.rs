//! Reads a choice's generated text as it arrives and splits it into what every wire format
//! renders: thinking, answer text, and tool calls (each call's name first, then its
//! arguments piece by piece). Thinking is split first ([`ThinkSplitter`]); the answer is
//! then read in the syntax the model writes calls in ([`ToolSyntax`]): its own (Hermes
//! `<tool_call>` blocks, Mistral's `[TOOL_CALLS]` list, a Llama 3 JSON answer), or the
//! portable constrained JSON. Pure: text in, [`AnswerPiece`]s out.

use super::reasoning::{ThinkPiece, ThinkSplitter};
use super::tool_stream::{tool_answer, ToolAnswer, ToolPiece, ToolStream};
use crate::engine::tools::ToolSyntax;

/// A piece of a choice's answer, in the order it was generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerPiece {
    /// Thinking text (reasoning models).
    Reasoning(String),
    /// Answer text.
    Content(String),
    /// A tool call begins (`index` counts the choice's calls from 0).
    Call {
        /// Which call.
        index: usize,
        /// The function's name.
        name: String,
    },
    /// More of a call's arguments (JSON text; a call's pieces concatenate to the whole).
    Arguments {
        /// Which call.
        index: usize,
        /// The text.
        text: String,
    },
}

/// The reader of one choice.
#[derive(Debug, Clone)]
pub struct AnswerReader {
    thinking: Option<ThinkSplitter>,
    calls: Option<Calls>,
}

#[derive(Debug, Clone)]
enum Calls {
    Portable(Portable),
    Native(Native),
}

impl AnswerReader {
    /// A reader for a choice: `thinking` as the renderers get it (`Some(opened)` for a
    /// reasoning model), `tools` the syntax of its calls when the request offers tools.
    pub fn new(thinking: Option<bool>, tools: Option<ToolSyntax>) -> Self {
        Self {
            thinking: thinking.map(ThinkSplitter::new),
            calls: tools.map(|syntax| match syntax {
                ToolSyntax::Json => Calls::Portable(Portable::default()),
                native => Calls::Native(Native::new(native)),
            }),
        }
    }

    /// Whether the answer is read for tool calls.
    pub fn tools(&self) -> bool {
        self.calls.is_some()
    }

    /// Feeds more generated text.
    pub fn push(&mut self, text: String) -> Vec<AnswerPiece> {
        let split = match &mut self.thinking {
            Some(splitter) => splitter.push(&text),
            None => vec![ThinkPiece::Content(text)],
        };
        self.answer(split)
    }

    /// The choice ended: whatever was held back.
    pub fn finish(&mut self) -> Vec<AnswerPiece> {
        let held = match &mut self.thinking {
            Some(splitter) => splitter.finish(),
            None => Vec::new(),
        };
        let mut pieces = self.answer(held);
        match &mut self.calls {
            Some(Calls::Portable(p)) => pieces.extend(p.finish()),
            Some(Calls::Native(n)) => pieces.extend(n.finish()),
            None => {}
        }
        pieces
    }

    /// Whether the answer made tool calls and every one of them is complete (the finish
    /// reason is then `tool_calls` / `tool_use`).
    pub fn called(&self) -> bool {
        match &self.calls {
            Some(Calls::Portable(p)) => p.called,
            Some(Calls::Native(n)) => n.calls > 0 && n.complete == n.calls,
            None => false,
        }
    }

    fn answer(&mut self, split: Vec<ThinkPiece>) -> Vec<AnswerPiece> {
        let mut out = Vec::new();
        for piece in split {
            match piece {
                ThinkPiece::Reasoning(t) => out.push(AnswerPiece::Reasoning(t)),
                ThinkPiece::Content(t) => match &mut self.calls {
                    None => out.push(AnswerPiece::Content(t)),
                    Some(Calls::Portable(p)) => out.extend(p.push(&t)),
                    Some(Calls::Native(n)) => n.push(&t, &mut out),
                },
            }
        }
        out.retain(
            |p| !matches!(p, AnswerPiece::Content(t) | AnswerPiece::Reasoning(t) if t.is_empty()),
        );
        out
    }
}

/// A call read whole: its name, then all its arguments (`{}` when it has none).
fn whole_call(
    index: usize,
    name: String,
    arguments: Option<serde_json::Value>,
) -> [AnswerPiece; 2] {
    [
        AnswerPiece::Call { index, name },
        AnswerPiece::Arguments {
            index,
            text: arguments.map_or_else(|| "{}".into(), |a| a.to_string()),
        },
    ]
}

/// The portable syntax: the whole answer is one constrained JSON object.
#[derive(Debug, Clone, Default)]
struct Portable {
    stream: ToolStream,
    called: bool,
}

impl Portable {
    fn push(&mut self, text: &str) -> Vec<AnswerPiece> {
        self.stream
            .push(text)
            .into_iter()
            .map(|piece| match piece {
                ToolPiece::Call { name } => AnswerPiece::Call { index: 0, name },
                ToolPiece::Arguments(text) => AnswerPiece::Arguments { index: 0, text },
            })
            .collect()
    }

    fn finish(&mut self) -> Vec<AnswerPiece> {
        if self.stream.name().is_some() {
            self.called = self.stream.arguments_done();
            return Vec::new();
        }
        // Not followed as it came (keys in another order), or a text answer under `auto`.
        match tool_answer(self.stream.text()) {
            ToolAnswer::Call { name, arguments } => {
                self.called = true;
                whole_call(0, name, arguments).to_vec()
            }
            ToolAnswer::Content(t) | ToolAnswer::Raw(t) => vec![AnswerPiece::Content(t)],
        }
    }
}

/// Where a JSON value ends, found as its text arrives.
#[derive(Debug, Clone, Default)]
struct JsonEnd {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl JsonEnd {
    /// Scans `text` (the value's next bytes); the byte offset just past its end, if it
    /// ends in `text`.
    fn scan(&mut self, text: &str) -> Option<usize> {
        for (i, b) in text.bytes().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Some(i + 1);
                    }
                }
                _ => {}
            }
        }
        None
    }
}

/// One call object being read.
#[derive(Debug, Clone, Default)]
struct OpenCall {
    end: JsonEnd,
    stream: ToolStream,
    /// Its index, once its name was read.
    index: Option<usize>,
    /// What introduced it (the opener and whitespace), given back as text if it turns out
    /// not to be a call.
    lead: String,
}

#[derive(Debug, Clone)]
enum Mode {
    /// Answer text; the opener is watched for.
    Text,
    /// After the opener: the call (or list) should begin.
    Open(String),
    /// Mistral: inside the list of calls.
    List,
    /// Inside a call object.
    Call(Box<OpenCall>),
    /// Hermes: after a call object, before `</tool_call>`.
    Close,
    /// Text that cannot hold calls any more (a Llama 3 answer that is not a call).
    Plain,
}

/// A model's own call syntax.
#[derive(Debug, Clone)]
struct Native {
    syntax: ToolSyntax,
    /// Text received and not yet read.
    held: String,
    mode: Mode,
    /// Calls begun and calls complete.
    calls: usize,
    complete: usize,
    /// Llama 3: whether the answer's first character has been seen.
    begun: bool,
    /// A call just ended: whitespace that follows is not text.
    after_call: bool,
}

const HERMES_CLOSE: &str = "</tool_call>";
const PYTHON_TAG: &str = "<|python_tag|>";

/// Skips leading JSON whitespace of `s`, moving it into `into`.
fn skip_ws(s: &mut String, into: &mut String) {
    let n = s.len() - s.trim_start().len();
    into.extend(s.drain(..n));
}

impl Native {
    fn new(syntax: ToolSyntax) -> Self {
        Self {
            syntax,
            held: String::new(),
            mode: Mode::Text,
            calls: 0,
            complete: 0,
            begun: false,
            after_call: false,
        }
    }

    fn push(&mut self, text: &str, out: &mut Vec<AnswerPiece>) {
        self.held.push_str(text);
        while self.step(out) {}
    }

    /// Reads as much of `held` as can be read now; `false` when more text is needed.
    fn step(&mut self, out: &mut Vec<AnswerPiece>) -> bool {
        match &mut self.mode {
            Mode::Text if self.syntax == ToolSyntax::Llama3 => {
                if self.begun {
                    self.mode = Mode::Plain;
                    return true;
                }
                let start = self.held.trim_start();
                if start.is_empty() || (PYTHON_TAG.starts_with(start) && start != PYTHON_TAG) {
                    return false;
                }
                let start = start.strip_prefix(PYTHON_TAG).unwrap_or(start).trim_start();
                if start.is_empty() {
                    return false;
                }
                self.begun = true;
                if start.starts_with('{') {
                    let lead_len = self.held.len() - start.len();
                    let lead: String = self.held.drain(..lead_len).collect();
                    self.mode = Mode::Call(Box::new(OpenCall {
                        lead,
                        ..OpenCall::default()
                    }));
                } else {
                    self.mode = Mode::Plain;
                }
                true
            }
            Mode::Text => {
                if self.after_call {
                    // Whitespace between and after calls is not text.
                    let n = self.held.len() - self.held.trim_start().len();
                    self.held.drain(..n);
                    if self.held.is_empty() {
                        return false;
                    }
                    self.after_call = false;
                }
                let opener = self.syntax.opener();
                if let Some(at) = self.held.find(opener) {
                    out.push(AnswerPiece::Content(self.held[..at].to_string()));
                    self.held.drain(..at + opener.len());
                    self.mode = Mode::Open(opener.to_string());
                    return true;
                }
                let keep = crate::engine::stop::longest_suffix_prefix(&self.held, opener);
                let emit = self.held.len() - keep;
                out.push(AnswerPiece::Content(self.held.drain(..emit).collect()));
                false
            }
            Mode::Open(lead) => {
                skip_ws(&mut self.held, lead);
                let want = if self.syntax == ToolSyntax::Mistral {
                    '['
                } else {
                    '{'
                };
                match self.held.chars().next() {
                    None => false,
                    Some(c) if c == want && want == '[' => {
                        self.held.drain(..1);
                        self.mode = Mode::List;
                        true
                    }
                    Some(c) if c == want => {
                        let lead = std::mem::take(lead);
                        self.mode = Mode::Call(Box::new(OpenCall {
                            lead,
                            ..OpenCall::default()
                        }));
                        true
                    }
                    Some(_) => {
                        // Not a call after all: the opener was text.
                        out.push(AnswerPiece::Content(std::mem::take(lead)));
                        self.mode = Mode::Text;
                        true
                    }
                }
            }
            Mode::List => {
                let mut skipped = String::new();
                loop {
                    skip_ws(&mut self.held, &mut skipped);
                    if self.held.starts_with(',') {
                        self.held.drain(..1);
                    } else {
                        break;
                    }
                }
                match self.held.chars().next() {
                    None => false,
                    Some('{') => {
                        self.mode = Mode::Call(Box::default());
                        true
                    }
                    Some(']') => {
                        self.held.drain(..1);
                        self.mode = Mode::Text;
                        true
                    }
                    Some(_) => {
                        self.mode = Mode::Text;
                        true
                    }
                }
            }
            Mode::Call(call) => {
                let end = call.end.scan(&self.held);
                let upto = end.unwrap_or(self.held.len());
                let piece: String = self.held.drain(..upto).collect();
                for p in call.stream.push(&piece) {
                    match p {
                        ToolPiece::Call { name } => {
                            call.index = Some(self.calls);
                            out.push(AnswerPiece::Call {
                                index: self.calls,
                                name,
                            });
                            self.calls += 1;
                        }
                        ToolPiece::Arguments(text) => out.push(AnswerPiece::Arguments {
                            index: call.index.unwrap_or(0),
                            text,
                        }),
                    }
                }
                if end.is_none() {
                    return false;
                }
                if call.index.is_none() {
                    // Keys in another order: read whole.
                    let whole = call.stream.text();
                    match tool_answer(whole) {
                        ToolAnswer::Call { name, arguments } => {
                            out.extend(whole_call(self.calls, name, arguments));
                            self.calls += 1;
                            self.complete += 1;
                        }
                        // Not a call after all: the text as written.
                        ToolAnswer::Content(_) | ToolAnswer::Raw(_) => {
                            out.push(AnswerPiece::Content(format!("{}{whole}", call.lead)))
                        }
                    }
                } else {
                    self.complete += 1;
                }
                self.after_call = true;
                self.mode = match self.syntax {
                    ToolSyntax::Hermes => Mode::Close,
                    ToolSyntax::Mistral => Mode::List,
                    _ => Mode::Plain,
                };
                true
            }
            Mode::Close => {
                let mut skipped = String::new();
                skip_ws(&mut self.held, &mut skipped);
                if self.held.is_empty() || (HERMES_CLOSE.starts_with(self.held.as_str())) {
                    return false;
                }
                if self.held.starts_with(HERMES_CLOSE) {
                    self.held.drain(..HERMES_CLOSE.len());
                }
                self.mode = Mode::Text;
                true
            }
            Mode::Plain => {
                if std::mem::take(&mut self.after_call) {
                    let n = self.held.len() - self.held.trim_start().len();
                    self.held.drain(..n);
                    self.after_call = self.held.is_empty();
                }
                out.push(AnswerPiece::Content(std::mem::take(&mut self.held)));
                false
            }
        }
    }

    fn finish(&mut self) -> Vec<AnswerPiece> {
        let held = std::mem::take(&mut self.held);
        let text = match std::mem::replace(&mut self.mode, Mode::Plain) {
            Mode::Text | Mode::Plain => held,
            Mode::Open(lead) => lead + &held,
            // A call cut short: what was streamed of it stays a call.
            Mode::Call(call) if call.index.is_some() => String::new(),
            Mode::Call(call) => format!("{}{}{held}", call.lead, call.stream.text()),
            Mode::List | Mode::Close => String::new(),
        };
        if text.is_empty() {
            Vec::new()
        } else {
            vec![AnswerPiece::Content(text)]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `size` bytes (on char boundaries) and collects the
    /// pieces, merged: consecutive content, and each call's arguments, joined.
    fn read(reader: &mut AnswerReader, text: &str, size: usize) -> Vec<AnswerPiece> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let mut cut = size.min(rest.len());
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            out.extend(reader.push(rest[..cut].to_string()));
            rest = &rest[cut..];
        }
        out.extend(reader.finish());
        merge(out)
    }

    fn merge(pieces: Vec<AnswerPiece>) -> Vec<AnswerPiece> {
        let mut out: Vec<AnswerPiece> = Vec::new();
        for p in pieces {
            match (out.last_mut(), p) {
                (Some(AnswerPiece::Content(a)), AnswerPiece::Content(b)) => a.push_str(&b),
                (Some(AnswerPiece::Reasoning(a)), AnswerPiece::Reasoning(b)) => a.push_str(&b),
                (
                    Some(AnswerPiece::Arguments { index: i, text: a }),
                    AnswerPiece::Arguments { index: j, text: b },
                ) if *i == j => a.push_str(&b),
                (_, p) => out.push(p),
            }
        }
        out
    }

    fn call(index: usize, name: &str, arguments: &str) -> [AnswerPiece; 2] {
        [
            AnswerPiece::Call {
                index,
                name: name.into(),
            },
            AnswerPiece::Arguments {
                index,
                text: arguments.into(),
            },
        ]
    }

    /// Every split of the text gives the same pieces.
    fn check(syntax: ToolSyntax, thinking: Option<bool>, text: &str, want: &[AnswerPiece]) {
        for size in [1, 2, 3, 5, 7, 11, 64, text.len().max(1)] {
            let mut reader = AnswerReader::new(thinking, Some(syntax));
            assert_eq!(read(&mut reader, text, size), want, "size {size}: {text}");
        }
    }

    // What Qwen2.5-7B-Instruct (Hermes syntax) writes for two calls in one turn.
    #[test]
    fn hermes_calls_stream_one_after_another() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"CET\"}}\n</tool_call>";
        let mut want = call(0, "get_weather", r#"{"city": "Paris"}"#).to_vec();
        want.extend(call(1, "get_time", r#"{"zone": "CET"}"#));
        check(ToolSyntax::Hermes, None, text, &want);
        let mut reader = AnswerReader::new(None, Some(ToolSyntax::Hermes));
        read(&mut reader, text, 4);
        assert!(reader.called());
    }

    // Qwen3 thinks first, then calls (its template opens nothing: the model writes
    // `<think>` itself).
    #[test]
    fn thinking_then_text_then_a_call() {
        let text = "<think>\nThe user wants the weather.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let mut want = vec![
            AnswerPiece::Reasoning("\nThe user wants the weather.\n".into()),
            AnswerPiece::Content("Let me check.\n".into()),
        ];
        want.extend(call(0, "get_weather", r#"{"city": "Paris"}"#));
        check(ToolSyntax::Hermes, Some(false), text, &want);
    }

    #[test]
    fn hermes_text_without_calls_is_text() {
        let text = "Use <b>bold</b> or <tool_cal… no call here.";
        check(
            ToolSyntax::Hermes,
            None,
            text,
            &[AnswerPiece::Content(text.into())],
        );
        let mut reader = AnswerReader::new(None, Some(ToolSyntax::Hermes));
        read(&mut reader, text, 3);
        assert!(!reader.called());
    }

    #[test]
    fn a_hermes_call_cut_short_is_not_complete() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa";
        let mut reader = AnswerReader::new(None, Some(ToolSyntax::Hermes));
        let pieces = read(&mut reader, text, 5);
        assert_eq!(pieces, call(0, "get_weather", r#"{"city": "Pa"#).to_vec());
        assert!(!reader.called());
        // Cut before the name: given back as text.
        let mut reader = AnswerReader::new(None, Some(ToolSyntax::Hermes));
        let pieces = read(&mut reader, "<tool_call>\n{\"na", 5);
        assert_eq!(
            pieces,
            vec![AnswerPiece::Content("<tool_call>\n{\"na".into())]
        );
    }

    #[test]
    fn hermes_keys_in_another_order_are_read_whole() {
        let text = "<tool_call>\n{\"arguments\": {\"city\": \"Paris\"}, \"name\": \"get_weather\"}\n</tool_call>";
        check(
            ToolSyntax::Hermes,
            None,
            text,
            &call(0, "get_weather", r#"{"city":"Paris"}"#),
        );
    }

    // Mistral Nemo / Small: a list after `[TOOL_CALLS]`, with ids of its own.
    #[test]
    fn mistral_lists_several_calls() {
        let text = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}, \"id\": \"abcdefghi\"}, {\"name\": \"get_time\", \"arguments\": {}, \"id\": \"bcdefghij\"}]";
        let mut want = call(0, "get_weather", r#"{"city": "Paris"}"#).to_vec();
        want.extend(call(1, "get_time", "{}"));
        check(ToolSyntax::Mistral, None, text, &want);
    }

    // Llama 3.1 / 3.2: the answer is the call, `parameters` for the arguments, sometimes
    // after `<|python_tag|>`.
    #[test]
    fn llama3_answers_that_are_calls() {
        let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
        check(
            ToolSyntax::Llama3,
            None,
            text,
            &call(0, "get_weather", r#"{"city": "Paris"}"#),
        );
        let tagged = format!("<|python_tag|>{text}");
        check(
            ToolSyntax::Llama3,
            None,
            &tagged,
            &call(0, "get_weather", r#"{"city": "Paris"}"#),
        );
        // Keys in another order are read whole, `parameters` and all.
        check(
            ToolSyntax::Llama3,
            None,
            "{\"parameters\": {\"city\": \"Paris\"}, \"name\": \"get_weather\"}",
            &call(0, "get_weather", r#"{"city":"Paris"}"#),
        );
        check(
            ToolSyntax::Llama3,
            None,
            "The weather is {unknown}.",
            &[AnswerPiece::Content("The weather is {unknown}.".into())],
        );
    }

    #[test]
    fn the_portable_syntax_reads_calls_and_content() {
        check(
            ToolSyntax::Json,
            None,
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            &call(0, "get_weather", r#"{"city": "Paris"}"#),
        );
        check(
            ToolSyntax::Json,
            None,
            r#"{"content": "Hello"}"#,
            &[AnswerPiece::Content("Hello".into())],
        );
        let mut reader = AnswerReader::new(None, Some(ToolSyntax::Json));
        read(&mut reader, r#"{"arguments": {}, "name": "get_time"}"#, 4);
        assert!(reader.called());
    }

    // DeepSeek-R1 distills: the template ends the prompt with `<think>\n`, so the output
    // starts inside the thinking and only closes it.
    #[test]
    fn r1_thinking_opened_by_the_template() {
        let text = "Okay, the user asks for 2+2. That is 4.\n</think>\n\nThe answer is **4**.";
        for size in [1, 3, 8, 100] {
            let mut reader = AnswerReader::new(Some(true), None);
            assert_eq!(
                read(&mut reader, text, size),
                [
                    AnswerPiece::Reasoning("Okay, the user asks for 2+2. That is 4.\n".into()),
                    AnswerPiece::Content("The answer is **4**.".into()),
                ]
            );
        }
    }

    // Qwen3 with `enable_thinking: false`: the template closes an empty block in the
    // prompt, the model answers directly; SmolLM3's `/no_think` likewise.
    #[test]
    fn a_reasoning_model_with_thinking_off_answers_directly() {
        let mut reader = AnswerReader::new(Some(false), Some(ToolSyntax::Hermes));
        assert_eq!(
            read(&mut reader, "Paris is the capital of France.", 4),
            [AnswerPiece::Content(
                "Paris is the capital of France.".into()
            )]
        );
    }

    #[test]
    fn without_tools_everything_is_content() {
        let mut reader = AnswerReader::new(None, None);
        let text = "<tool_call>{}</tool_call>";
        assert_eq!(
            read(&mut reader, text, 3),
            vec![AnswerPiece::Content(text.into())]
        );
        assert!(!reader.tools() && !reader.called());
    }
}
