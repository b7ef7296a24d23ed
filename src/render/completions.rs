//! OpenAI legacy completions: [`CompletionRenderer`] turns the tagged events of a
//! request's generations (one per prompt, `n` choices each; choice `i` of prompt `p` has
//! index `p * n + i`) into `text_completion` chunks, and [`CompletionAnswer`] folds the
//! same chunks into the non-streamed answer.

use std::collections::BTreeMap;

use crate::engine::{TokenEvent, TokenLogprob, TokenUsage};
use crate::openai::common::{system_fingerprint, Usage};
use crate::openai::completions::{CompletionChoice, CompletionLogprobs, CompletionResponse};

/// What every chunk of one answer shares, and how it is rendered.
#[derive(Debug, Clone)]
pub struct CompletionMeta {
    /// `cmpl-…`.
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    /// The model's canonical name.
    pub model: String,
    /// Choices per prompt.
    pub n: usize,
    /// The prompts, in order.
    pub prompts: Vec<String>,
    /// Whether each choice starts with its prompt.
    pub echo: bool,
    /// Whether log-probabilities are returned.
    pub logprobs: bool,
    /// Whether a usage chunk ends the stream.
    pub include_usage: bool,
}

impl CompletionMeta {
    fn response(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion".into(),
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: system_fingerprint(),
            choices,
            usage,
        }
    }

    fn index(&self, prompt: usize, choice: usize) -> usize {
        prompt * self.n + choice
    }

    fn choices(&self) -> usize {
        self.prompts.len() * self.n
    }
}

/// OpenAI's legacy log-probabilities of `lps`, text offsets counted from `offset`.
fn legacy_logprobs(lps: &[TokenLogprob], offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = offset;
    for lp in lps {
        out.tokens.push(lp.token.clone());
        out.token_logprobs.push(lp.logprob);
        out.top_logprobs.push(
            lp.top
                .iter()
                .map(|t| (t.token.clone(), t.logprob))
                .collect::<BTreeMap<_, _>>(),
        );
        out.text_offset.push(offset);
        offset += lp.token.len();
    }
    out
}

/// Engine events in, chunks out; no I/O.
pub struct CompletionRenderer {
    meta: CompletionMeta,
    /// Bytes of text each choice has so far (its echoed prompt included).
    offsets: Vec<usize>,
    usage: TokenUsage,
    done: usize,
}

impl CompletionRenderer {
    /// A renderer for one answer.
    pub fn new(meta: CompletionMeta) -> Self {
        let offsets = (0..meta.choices())
            .map(|i| {
                if meta.echo {
                    meta.prompts[i / meta.n].len()
                } else {
                    0
                }
            })
            .collect();
        Self {
            meta,
            offsets,
            usage: TokenUsage::default(),
            done: 0,
        }
    }
}

impl super::Renderer for CompletionRenderer {
    type Input = (usize, TokenEvent);
    type Chunk = CompletionResponse;

    /// Each choice's echoed prompt, when `echo` is on.
    fn start(&mut self) -> Vec<CompletionResponse> {
        if !self.meta.echo {
            return Vec::new();
        }
        (0..self.meta.choices())
            .map(|index| {
                self.meta.response(
                    vec![CompletionChoice {
                        index,
                        text: self.meta.prompts[index / self.meta.n].clone(),
                        logprobs: None,
                        finish_reason: None,
                    }],
                    None,
                )
            })
            .collect()
    }

    /// Whether every generation has ended.
    fn complete(&self) -> bool {
        self.done >= self.meta.prompts.len()
    }

    /// The chunks one event of prompt `prompt`'s generation becomes.
    fn push(&mut self, (prompt, event): (usize, TokenEvent)) -> Vec<CompletionResponse> {
        match event {
            TokenEvent::Text {
                choice,
                text,
                logprobs,
            } if choice < self.meta.n && prompt < self.meta.prompts.len() => {
                let index = self.meta.index(prompt, choice);
                let lp = self
                    .meta
                    .logprobs
                    .then(|| legacy_logprobs(&logprobs, self.offsets[index]));
                self.offsets[index] += text.len();
                vec![self.meta.response(
                    vec![CompletionChoice {
                        index,
                        text,
                        logprobs: lp,
                        finish_reason: None,
                    }],
                    None,
                )]
            }
            TokenEvent::Finished { choice, reason }
                if choice < self.meta.n && prompt < self.meta.prompts.len() =>
            {
                vec![self.meta.response(
                    vec![CompletionChoice {
                        index: self.meta.index(prompt, choice),
                        text: String::new(),
                        logprobs: None,
                        finish_reason: Some(reason.as_str().into()),
                    }],
                    None,
                )]
            }
            TokenEvent::Done(u) => {
                self.usage.prompt_tokens += u.prompt_tokens;
                self.usage.completion_tokens += u.completion_tokens;
                self.usage.cached_prompt_tokens += u.cached_prompt_tokens;
                self.usage.draft_tokens += u.draft_tokens;
                self.usage.draft_accepted_tokens += u.draft_accepted_tokens;
                self.usage.draft_length = u.draft_length.or(self.usage.draft_length);
                self.done += 1;
                if self.complete() && self.meta.include_usage {
                    vec![self.meta.response(Vec::new(), Some(self.usage.into()))]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

/// The non-streamed answer, folded from the chunks of a renderer whose `include_usage`
/// is on.
pub struct CompletionAnswer {
    meta: CompletionMeta,
    choices: Vec<CompletionChoice>,
    usage: Option<Usage>,
}

impl CompletionAnswer {
    /// An empty answer; `meta` as given to the renderer.
    pub fn new(meta: CompletionMeta) -> Self {
        let choices = (0..meta.choices())
            .map(|index| CompletionChoice {
                index,
                text: String::new(),
                logprobs: meta.logprobs.then(CompletionLogprobs::default),
                finish_reason: Some("stop".into()),
            })
            .collect();
        Self {
            meta,
            choices,
            usage: None,
        }
    }
}

impl super::Fold for CompletionAnswer {
    type Chunk = CompletionResponse;
    type Answer = CompletionResponse;

    fn absorb(&mut self, chunk: CompletionResponse) {
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
        for c in chunk.choices {
            let Some(choice) = self.choices.get_mut(c.index) else {
                continue;
            };
            choice.text.push_str(&c.text);
            if let (Some(lp), Some(into)) = (c.logprobs, choice.logprobs.as_mut()) {
                into.tokens.extend(lp.tokens);
                into.token_logprobs.extend(lp.token_logprobs);
                into.top_logprobs.extend(lp.top_logprobs);
                into.text_offset.extend(lp.text_offset);
            }
            if c.finish_reason.is_some() {
                choice.finish_reason = c.finish_reason;
            }
        }
    }

    /// `None` when the stream ended before every generation did.
    fn finish(self) -> Option<CompletionResponse> {
        let usage = self.usage?;
        Some(self.meta.response(self.choices, Some(usage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FinishReason;
    use crate::render::{Fold, Renderer};

    fn meta(echo: bool) -> CompletionMeta {
        CompletionMeta {
            id: "cmpl-1".into(),
            created: 1,
            model: "m".into(),
            n: 2,
            prompts: vec!["ab".into(), "cde".into()],
            echo,
            logprobs: true,
            include_usage: true,
        }
    }

    fn text(choice: usize, t: &str) -> TokenEvent {
        TokenEvent::Text {
            choice,
            text: t.into(),
            logprobs: vec![TokenLogprob {
                token: t.into(),
                logprob: -1.0,
                top: Vec::new(),
            }],
        }
    }

    fn done() -> TokenEvent {
        TokenEvent::Done(TokenUsage {
            prompt_tokens: 2,
            completion_tokens: 3,
            cached_prompt_tokens: 0,
            ..Default::default()
        })
    }

    fn events() -> Vec<(usize, TokenEvent)> {
        vec![
            (1, text(0, "x")),
            (0, text(1, "y")),
            (1, text(0, "zz")),
            (
                1,
                TokenEvent::Finished {
                    choice: 0,
                    reason: FinishReason::Length,
                },
            ),
            (1, done()),
            (0, done()),
        ]
    }

    fn fold(meta: CompletionMeta, events: Vec<(usize, TokenEvent)>) -> Option<CompletionResponse> {
        let mut r = CompletionRenderer::new(meta.clone());
        let mut answer = CompletionAnswer::new(meta);
        for c in r.start() {
            answer.absorb(c);
        }
        for (p, e) in events {
            for c in r.push((p, e)) {
                answer.absorb(c);
            }
        }
        answer.finish()
    }

    #[test]
    fn choices_are_indexed_by_prompt_then_choice_and_usage_is_summed() {
        let mut r = CompletionRenderer::new(meta(false));
        assert!(r.start().is_empty());
        let mut chunks = Vec::new();
        for (p, e) in events() {
            chunks.extend(r.push((p, e)));
        }
        assert!(r.complete());
        assert_eq!(chunks[0].choices[0].index, 2, "prompt 1, choice 0");
        assert_eq!(chunks[1].choices[0].index, 1, "prompt 0, choice 1");
        let usage = chunks.last().unwrap().usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (4, 6));
        let answer = fold(meta(false), events()).unwrap();
        assert_eq!(answer.choices.len(), 4);
        assert_eq!(answer.choices[2].text, "xzz");
        assert_eq!(answer.choices[2].finish_reason.as_deref(), Some("length"));
        assert_eq!(
            answer.choices[2].logprobs.as_ref().unwrap().text_offset,
            [0, 1]
        );
        assert_eq!(answer.choices[1].text, "y");
    }

    #[test]
    fn echo_comes_first_and_offsets_count_it() {
        let answer = fold(meta(true), events()).unwrap();
        assert_eq!(answer.choices[2].text, "cdexzz");
        assert_eq!(answer.choices[0].text, "ab");
        assert_eq!(
            answer.choices[2].logprobs.as_ref().unwrap().text_offset,
            [3, 4],
            "offsets into the returned text, prompt included"
        );
    }

    #[test]
    fn a_generation_that_never_ends_is_no_answer() {
        let mut partial = events();
        partial.pop();
        assert!(fold(meta(false), partial).is_none());
    }
}
