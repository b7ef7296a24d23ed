//! Reads a tool-using answer as it is generated. Such an answer is JSON constrained to
//! `{"name": "<tool>", "arguments": {…}}` (or, under `auto`, `{"content": "…"}`); this
//! scanner recognises the call's name as soon as its `"arguments":` key has been written
//! and then passes the arguments' JSON text on piece by piece, so every wire format can
//! stream a call the way OpenAI does (name first, then argument fragments) instead of
//! sending it whole at the end. Pure: text in, [`ToolPiece`]s out.

/// What the scanner recognised in the text pushed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPiece {
    /// A call to this tool begins; its arguments follow.
    Call {
        /// The tool's name.
        name: String,
    },
    /// More of the call's arguments (JSON text; the pieces concatenate to the whole).
    Arguments(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Waiting for `{"name": "…", "arguments":`.
    Head,
    /// Inside the arguments value.
    Arguments {
        depth: usize,
        in_string: bool,
        escaped: bool,
        started: bool,
    },
    /// The arguments are complete (or the answer is not a call).
    Tail,
}

/// The scanner of one answer.
#[derive(Debug, Clone)]
pub struct ToolStream {
    text: String,
    /// Bytes of `text` already scanned in the arguments state.
    scanned: usize,
    state: State,
    name: Option<String>,
    /// Where the arguments value begins, once it has.
    value_start: Option<usize>,
}

impl Default for ToolStream {
    fn default() -> Self {
        Self::new()
    }
}

/// Skips JSON whitespace from `at`.
fn ws(s: &[u8], mut at: usize) -> usize {
    while at < s.len() && matches!(s[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// Expects `lit` at `at` (after whitespace): the index after it, `None` if the text so far
/// cannot match, or `Some(None)`-like "need more" as `Err(())`.
fn expect(s: &[u8], at: usize, lit: &[u8]) -> Result<Option<usize>, ()> {
    let at = ws(s, at);
    let have = &s[at.min(s.len())..];
    if have.len() < lit.len() {
        return if lit.starts_with(have) {
            Err(())
        } else {
            Ok(None)
        };
    }
    Ok(have.starts_with(lit).then_some(at + lit.len()))
}

/// A complete JSON string at `at` (after whitespace): its value and the index after it.
fn string(s: &str, at: usize) -> Result<Option<(String, usize)>, ()> {
    let bytes = s.as_bytes();
    let at = ws(bytes, at);
    match bytes.get(at) {
        None => return Err(()),
        Some(b'"') => {}
        Some(_) => return Ok(None),
    }
    let mut escaped = false;
    for (i, b) in bytes.iter().enumerate().skip(at + 1) {
        if escaped {
            escaped = false;
        } else if *b == b'\\' {
            escaped = true;
        } else if *b == b'"' {
            return Ok(serde_json::from_str::<String>(&s[at..=i])
                .ok()
                .map(|v| (v, i + 1)));
        }
    }
    Err(())
}

impl ToolStream {
    /// A scanner for a new answer.
    pub fn new() -> Self {
        Self {
            text: String::new(),
            scanned: 0,
            state: State::Head,
            name: None,
            value_start: None,
        }
    }

    /// The whole text pushed so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The call's name, once recognised.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether the call's arguments are complete.
    pub fn arguments_done(&self) -> bool {
        self.name.is_some() && self.state == State::Tail
    }

    /// Feeds more of the answer; returns what became known.
    pub fn push(&mut self, more: &str) -> Vec<ToolPiece> {
        self.text.push_str(more);
        let mut pieces = Vec::new();
        if self.state == State::Head {
            match self.head() {
                Err(()) => return pieces,
                Ok(None) => {
                    self.state = State::Tail;
                    return pieces;
                }
                Ok(Some((name, start))) => {
                    pieces.push(ToolPiece::Call { name: name.clone() });
                    self.name = Some(name);
                    self.scanned = start;
                    self.state = State::Arguments {
                        depth: 0,
                        in_string: false,
                        escaped: false,
                        started: false,
                    };
                }
            }
        }
        if let State::Arguments { .. } = self.state {
            let from = self.scanned;
            let end = self.scan();
            // Whitespace before the value is not part of the arguments.
            if let Some(start) = self.value_start {
                let from = from.max(start);
                if end > from {
                    pieces.push(ToolPiece::Arguments(self.text[from..end].to_string()));
                }
            }
        }
        pieces
    }

    /// Matches `{"name": "<name>", "arguments":` (or `"parameters":`) at the start of the
    /// text.
    fn head(&self) -> Result<Option<(String, usize)>, ()> {
        let s = self.text.as_bytes();
        let Some(at) = expect(s, 0, b"{")? else {
            return Ok(None);
        };
        let Some(at) = expect(s, at, b"\"name\"")? else {
            return Ok(None);
        };
        let Some(at) = expect(s, at, b":")? else {
            return Ok(None);
        };
        let Some((name, at)) = string(&self.text, at)? else {
            return Ok(None);
        };
        let Some(at) = expect(s, at, b",")? else {
            return Ok(None);
        };
        // `parameters` in Llama 3's syntax.
        let at = match (
            expect(s, at, b"\"arguments\""),
            expect(s, at, b"\"parameters\""),
        ) {
            (Ok(Some(at)), _) | (_, Ok(Some(at))) => at,
            (Err(()), _) | (_, Err(())) => return Err(()),
            _ => return Ok(None),
        };
        let Some(at) = expect(s, at, b":")? else {
            return Ok(None);
        };
        Ok(Some((name, at)))
    }

    /// Scans the arguments from `scanned`; returns the end (exclusive) of the arguments
    /// text seen so far and moves to `Tail` when the value closes.
    fn scan(&mut self) -> usize {
        let bytes = self.text.as_bytes();
        let State::Arguments {
            mut depth,
            mut in_string,
            mut escaped,
            mut started,
        } = self.state
        else {
            return self.scanned;
        };
        let mut i = self.scanned;
        let mut closed = false;
        while i < bytes.len() {
            let b = bytes[i];
            i += 1;
            if !started {
                if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                    continue;
                }
                started = true;
                self.value_start = Some(i - 1);
            }
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == b'"' {
                    in_string = false;
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        closed = true;
                        break;
                    }
                }
                _ => {}
            }
        }
        self.scanned = i;
        self.state = if closed {
            State::Tail
        } else {
            State::Arguments {
                depth,
                in_string,
                escaped,
                started,
            }
        };
        i
    }
}

/// What a tool-using answer whose call was not streamed turned out to be, read whole when
/// it ends.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolAnswer {
    /// A call the scanner could not follow (keys in another order): its name and its
    /// `arguments` (or Llama 3's `parameters`) value, if any.
    Call {
        /// The tool's name.
        name: String,
        /// Its arguments, as written.
        arguments: Option<serde_json::Value>,
    },
    /// Under `auto`, the answer's `content`.
    Content(String),
    /// Not the constrained JSON at all (a generation cut short): the text as it is.
    Raw(String),
}

/// Reads a tool-using answer's JSON whole: a call (its arguments under `arguments`, or
/// `parameters` as [`ToolStream`] also accepts), or (with `auto`) text.
pub fn tool_answer(text: &str) -> ToolAnswer {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return ToolAnswer::Raw(text.to_string());
    };
    match (value["name"].as_str(), value["content"].as_str()) {
        (Some(name), _) => ToolAnswer::Call {
            name: name.to_string(),
            arguments: value
                .get("arguments")
                .or_else(|| value.get("parameters"))
                .cloned(),
        },
        (None, Some(content)) => ToolAnswer::Content(content.to_string()),
        _ => ToolAnswer::Raw(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(pieces: &[&str]) -> (Vec<ToolPiece>, ToolStream) {
        let mut s = ToolStream::new();
        let mut out = Vec::new();
        for p in pieces {
            out.extend(s.push(p));
        }
        (out, s)
    }

    fn arguments(pieces: &[ToolPiece]) -> String {
        pieces
            .iter()
            .filter_map(|p| match p {
                ToolPiece::Arguments(a) => Some(a.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn name_first_then_argument_fragments() {
        let (out, s) = feed(&[
            "{\"na",
            "me\": \"get_",
            "weather\", ",
            "\"arguments\": ",
            "{\"city\"",
            ": \"Par",
            "is\"}",
            "}",
        ]);
        assert_eq!(
            out[0],
            ToolPiece::Call {
                name: "get_weather".into()
            }
        );
        assert!(out.len() >= 4, "{out:?}");
        assert_eq!(arguments(&out), r#"{"city": "Paris"}"#);
        assert!(s.arguments_done());
    }

    #[test]
    fn every_split_gives_the_same_result() {
        let text = r#"{ "name" : "f_1", "arguments" : {"a": [1, {"b": "x}\"y"}], "c": "{"} }"#;
        for cut in 0..text.len() {
            let (out, s) = feed(&[&text[..cut], &text[cut..]]);
            assert_eq!(out[0], ToolPiece::Call { name: "f_1".into() }, "cut {cut}");
            assert_eq!(
                arguments(&out),
                r#"{"a": [1, {"b": "x}\"y"}], "c": "{"}"#,
                "cut {cut}"
            );
            assert!(s.arguments_done());
        }
        // One character at a time.
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        let (out, _) = feed(&refs);
        assert_eq!(arguments(&out), r#"{"a": [1, {"b": "x}\"y"}], "c": "{"}"#);
    }

    #[test]
    fn a_content_answer_is_not_a_call() {
        let (out, s) = feed(&["{\"content\": \"hi\"}"]);
        assert!(out.is_empty());
        assert!(s.name().is_none() && !s.arguments_done());
        assert_eq!(s.text(), "{\"content\": \"hi\"}");
        let (out, _) = feed(&["not json at all"]);
        assert!(out.is_empty());
    }

    #[test]
    fn escaped_names_are_decoded() {
        let (out, _) = feed(&[r#"{"name":"a\u005fb","arguments":{}}"#]);
        assert_eq!(out[0], ToolPiece::Call { name: "a_b".into() });
        assert_eq!(arguments(&out), "{}");
    }
}
