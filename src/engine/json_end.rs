//! Finds where a JSON object or array written by the model is complete, so a constrained
//! generation can end right there with `finish_reason: "stop"` (mistral.rs keeps decoding
//! to `max_tokens` after the JSON is done).

/// Tracks text as it streams in.
#[derive(Debug, Clone, Default)]
pub struct JsonEnd {
    depth: usize,
    started: bool,
    in_string: bool,
    escaped: bool,
    done: bool,
}

impl JsonEnd {
    /// Feeds `text`; returns the byte length of `text` up to and including the end of the
    /// top-level JSON value, once it is complete.
    pub fn push(&mut self, text: &str) -> Option<usize> {
        if self.done {
            return Some(0);
        }
        for (i, c) in text.char_indices() {
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => {
                    self.started = true;
                    self.depth += 1;
                }
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.started && self.depth == 0 {
                        self.done = true;
                        return Some(i + c.len_utf8());
                    }
                }
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_after_the_closing_brace_across_pieces() {
        let mut j = JsonEnd::default();
        assert_eq!(j.push("{\"a\": \"}{\\\"\", "), None);
        assert_eq!(j.push("\"b\": [1, {\"c\": 2}]"), None);
        assert_eq!(j.push("} trailing"), Some(1));
    }
}
