//! Stop sequences, matched on the gateway side so that streamed and non-streamed output
//! agree and the stop text is never sent: text that could be the start of a stop sequence
//! is held back until it either completes one (the choice ends) or cannot (it is released).

/// Stop-sequence state of one choice.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    /// The stop sequences and their positions in the request's list.
    stops: Vec<(usize, String)>,
    pending: String,
    stopped: bool,
    matched: Option<usize>,
}

/// What to do with a piece of generated text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that is safe to send now.
    pub emit: String,
    /// A stop sequence was found; the choice is over.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for these stop sequences (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .map(|(i, s)| (i, s.clone()))
                .collect(),
            pending: String::new(),
            stopped: false,
            matched: None,
        }
    }

    /// Whether a stop sequence already ended this choice.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The position, in the request's list, of the stop sequence that ended the choice.
    pub fn matched(&self) -> Option<usize> {
        self.matched
    }

    /// Why the choice ends when this matcher stopped it.
    pub fn reason(&self) -> super::FinishReason {
        match self.matched {
            Some(i) => super::FinishReason::StopSequence(i),
            None => super::FinishReason::Stop,
        }
    }

    /// Feeds new text; returns what may be sent and whether the choice stopped.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome {
                emit: String::new(),
                stopped: true,
            };
        }
        if self.stops.is_empty() {
            return StopOutcome {
                emit: text.to_string(),
                stopped: false,
            };
        }
        self.pending.push_str(text);
        let first_match = self
            .stops
            .iter()
            .filter_map(|(i, s)| self.pending.find(s.as_str()).map(|pos| (pos, *i)))
            .min();
        if let Some((pos, index)) = first_match {
            self.pending.truncate(pos);
            self.stopped = true;
            self.matched = Some(index);
            return StopOutcome {
                emit: std::mem::take(&mut self.pending),
                stopped: true,
            };
        }
        let hold = self
            .stops
            .iter()
            .map(|(_, s)| longest_suffix_prefix(&self.pending, s))
            .max()
            .unwrap_or(0);
        let split = self.pending.len() - hold;
        let rest = self.pending.split_off(split);
        StopOutcome {
            emit: std::mem::replace(&mut self.pending, rest),
            stopped: false,
        }
    }

    /// Releases any held-back text (the choice ended for another reason).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest proper prefix of `stop` that `text` ends with (what to hold back
/// while `stop` may still be completing).
pub fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let mut best = 0;
    for (k, _) in stop.char_indices().skip(1) {
        if text.ends_with(&stop[..k]) {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_inside_one_piece() {
        assert_eq!(feed(&["END"], &["abcENDxyz"]), ("abc".into(), true));
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        assert_eq!(
            feed(&["END"], &["ab", "cE", "N", "Dzz"]),
            ("abc".into(), true)
        );
    }

    #[test]
    fn false_start_is_released() {
        assert_eq!(feed(&["END"], &["aE", "Nx", "y"]), ("aENxy".into(), false));
    }

    #[test]
    fn earliest_of_several_wins() {
        assert_eq!(feed(&["zz", "b"], &["a", "bzz"]), ("a".into(), true));
    }

    #[test]
    fn multibyte_text_is_split_on_char_boundaries() {
        assert_eq!(
            feed(&["é!"], &["caf", "é", "?é", "!"]),
            ("café?".into(), true)
        );
        assert_eq!(feed(&["日本"], &["今日", "は"]), ("今日は".into(), false));
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(feed(&[], &["a", "b"]), ("ab".into(), false));
    }

    #[test]
    fn the_matching_stop_is_named_by_its_position_in_the_request() {
        let stops = vec![String::new(), "END".to_string(), "!".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert!(!m.push("wow EN").stopped);
        assert_eq!(m.reason(), crate::engine::FinishReason::Stop);
        assert!(m.push("D!").stopped);
        assert_eq!(m.matched(), Some(1), "the earliest match in the text wins");
        assert_eq!(m.reason(), crate::engine::FinishReason::StopSequence(1));
    }
}
