//! Splits a reasoning model's output into its thinking and its answer. Models whose chat
//! template thinks in `<think>…</think>` (DeepSeek-R1 distills, Qwen3, SmolLM3, QwQ) write
//! the thinking first; some templates open the tag in the prompt already, so the output
//! starts inside it and only `</think>` appears. [`ThinkSplitter`] follows the tags across
//! token boundaries (a tag split over two tokens is held back until it is whole) so each
//! wire format can put the thinking in its own field (`reasoning_content`, `reasoning`
//! items, `thinking` blocks) and never in the answer. Pure: text in, pieces out.

/// A piece of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinkPiece {
    /// Thinking.
    Reasoning(String),
    /// The answer.
    Content(String),
}

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before anything but whitespace: an opening tag may still come.
    Start,
    /// Inside the thinking.
    Thinking,
    /// Just after the thinking: whitespace before the answer is dropped.
    AfterThinking,
    /// After the thinking (or with none): everything is answer.
    Answer,
}

/// The splitter of one answer.
#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    state: State,
    /// Text that may be the beginning of a tag.
    held: String,
}

impl ThinkSplitter {
    /// A splitter; `opened` when the prompt already opened the thinking tag.
    pub fn new(opened: bool) -> Self {
        Self {
            state: if opened {
                State::Thinking
            } else {
                State::Start
            },
            held: String::new(),
        }
    }

    /// Feeds more output; returns what can be told apart so far.
    pub fn push(&mut self, more: &str) -> Vec<ThinkPiece> {
        self.held.push_str(more);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if trimmed.starts_with(OPEN) {
                        let at = self.held.len() - trimmed.len() + OPEN.len();
                        self.held.drain(..at);
                        self.state = State::Thinking;
                        continue;
                    }
                    if OPEN.starts_with(trimmed) {
                        return out; // maybe the tag, not whole yet
                    }
                    self.state = State::Answer;
                }
                State::Thinking => {
                    if let Some(at) = self.held.find(CLOSE) {
                        let thought: String = self.held.drain(..at).collect();
                        self.held.drain(..CLOSE.len());
                        if !thought.is_empty() {
                            out.push(ThinkPiece::Reasoning(thought));
                        }
                        self.state = State::AfterThinking;
                        continue;
                    }
                    let keep = crate::engine::stop::longest_suffix_prefix(&self.held, CLOSE);
                    let ready = self.held.len() - keep;
                    if ready > 0 {
                        out.push(ThinkPiece::Reasoning(self.held.drain(..ready).collect()));
                    }
                    return out;
                }
                State::AfterThinking => {
                    // The answer usually starts after a blank line: not part of it.
                    let rest = self.held.trim_start().to_string();
                    self.held = rest;
                    if self.held.is_empty() {
                        return out;
                    }
                    self.state = State::Answer;
                }
                State::Answer => {
                    if !self.held.is_empty() {
                        out.push(ThinkPiece::Content(std::mem::take(&mut self.held)));
                    }
                    return out;
                }
            }
        }
    }

    /// The end of the output: whatever was held back.
    pub fn finish(&mut self) -> Vec<ThinkPiece> {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return Vec::new();
        }
        match self.state {
            State::Thinking => vec![ThinkPiece::Reasoning(held)],
            State::Start | State::AfterThinking | State::Answer => vec![ThinkPiece::Content(held)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(opened: bool, pieces: &[&str]) -> (String, String) {
        let mut s = ThinkSplitter::new(opened);
        let mut out: Vec<ThinkPiece> = pieces.iter().flat_map(|p| s.push(p)).collect();
        out.extend(s.finish());
        let (mut reasoning, mut content) = (String::new(), String::new());
        for p in out {
            match p {
                ThinkPiece::Reasoning(t) => reasoning.push_str(&t),
                ThinkPiece::Content(t) => content.push_str(&t),
            }
        }
        (reasoning, content)
    }

    /// Output in the shape DeepSeek-R1 distills write it (both tags, the tag a token of its
    /// own, a blank line before the answer), split into token-sized pieces. Written for this
    /// test: no reasoning model is available from the registries this project may use.
    const R1: &[&str] = &[
        "<think>", "\n", "Okay", ",", " so", " I", " need", " to", " figure", " out", " what", " ",
        "2", " plus", " ", "2", " is", ".", "\n", "</think>", "\n\n", "2", " +", " ", "2", " =",
        " ", "4", ".",
    ];

    #[test]
    fn an_r1_style_answer_splits_at_the_tags() {
        let (reasoning, content) = split(false, R1);
        assert_eq!(
            reasoning,
            "\nOkay, so I need to figure out what 2 plus 2 is.\n"
        );
        assert_eq!(content, "2 + 2 = 4.");
    }

    #[test]
    fn tags_split_across_tokens_are_followed() {
        let text = "<think>hmm, 3 < 4</think>\n\nYes.";
        for cut in 1..text.len() {
            for cut2 in cut..text.len() {
                let (r, c) = split(false, &[&text[..cut], &text[cut..cut2], &text[cut2..]]);
                assert_eq!(
                    (r.as_str(), c.as_str()),
                    ("hmm, 3 < 4", "Yes."),
                    "cuts {cut} {cut2}"
                );
            }
        }
    }

    #[test]
    fn a_template_that_opens_the_tag_starts_inside_it() {
        // Qwen3 / QwQ-style: the prompt ends with `<think>\n`; the output only closes it.
        let (r, c) = split(
            true,
            &["Let me think", ".</th", "ink>\n\nThe answer", " is 4."],
        );
        assert_eq!(r, "Let me think.");
        assert_eq!(c, "The answer is 4.");
    }

    #[test]
    fn no_tags_is_all_answer_and_unfinished_thinking_stays_thinking() {
        assert_eq!(
            split(false, &["Hello", " <there>"]),
            (String::new(), "Hello <there>".into())
        );
        assert_eq!(split(false, &["  <thi"]), (String::new(), "  <thi".into()));
        assert_eq!(
            split(false, &["<think>still going"]),
            ("still going".into(), String::new())
        );
        assert_eq!(
            split(false, &["<think></think>Done"]),
            (String::new(), "Done".into())
        );
    }
}
