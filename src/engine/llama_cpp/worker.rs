//! The thread that owns a llama.cpp context and runs every generation of one model.
//!
//! Each loop turn takes new jobs, drops sequences whose client went away, gives free
//! sequence slots to waiting choices (the slot whose cached tokens share the longest
//! prefix with the prompt, so only the new part is read), then runs one forward pass
//! over every running sequence: one token for each that is generating, and prompt
//! chunks for those still reading, up to `batch_tokens` (512 by default) in all. Each sequence
//! with fresh logits samples its next token with llamagate's sampler.
//!
//! With a draft model (speculative decoding), each generating sequence first has the
//! draft guess a few tokens ahead ([`draft_ahead`]); the forward pass then reads the
//! pending token and the guesses together, and the sampler walks their logits in order,
//! keeping each guess it would have sampled itself and stopping at the first it would
//! not (its own token is kept instead). The draft guesses greedily, so this is the
//! standard acceptance rule for a deterministic draft: the output is what decoding alone
//! would give, token for token at temperature 0, and in distribution when sampling
//! (seeded requests draw the same numbers either way).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use llguidance::Matcher;
use tokio::sync::mpsc::UnboundedSender;

use super::Shared;
use crate::engine::json_end::JsonEnd;
use crate::engine::probe::{SamplingProbe, TokenCallback};
use crate::engine::stop::StopMatcher;
use crate::engine::{
    EngineError, FinishReason, SamplingSettings, TokenEvent, TokenLogprob, TokenUsage, TopLogprob,
};

/// One generation handed to the worker.
pub struct Job {
    /// The prompt, tokenized.
    pub tokens: Vec<LlamaToken>,
    /// How to sample (`n` choices, each its own sequence).
    pub sampling: SamplingSettings,
    /// One grammar matcher per choice, when the output is constrained to a JSON schema.
    pub matchers: Option<Vec<Matcher>>,
    /// Called for every generated token.
    pub on_token: Option<TokenCallback>,
    /// Where the events go; closed when the client went away.
    pub out: UnboundedSender<Result<TokenEvent, EngineError>>,
}

/// What the choices of one job share.
struct RequestState {
    out: UnboundedSender<Result<TokenEvent, EngineError>>,
    on_token: Option<TokenCallback>,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// Prompt tokens the first choice found in the KV cache.
    cached_prompt_tokens: Option<usize>,
    choices_left: usize,
    /// Tokens the draft model guessed, and how many of them were kept.
    draft_tokens: usize,
    draft_accepted_tokens: usize,
    /// With a draft model: the length it chose for the latest step of this request.
    draft_length: Option<usize>,
}

impl RequestState {
    fn send(&self, event: TokenEvent) {
        let _ = self.out.send(Ok(event));
    }
}

/// One choice of a job, waiting for or holding a sequence slot.
struct Choice {
    request: Rc<RefCell<RequestState>>,
    index: usize,
    prompt: Rc<[LlamaToken]>,
    sampling: Rc<SamplingSettings>,
    probe: SamplingProbe,
    matcher: Option<Matcher>,
    json_end: Option<JsonEnd>,
    stop: StopMatcher,
    /// Bytes of a character split across tokens.
    partial_utf8: Vec<u8>,
    counts: HashMap<i32, u32>,
    generated: usize,
}

/// A choice running in a sequence slot.
struct Running {
    slot: usize,
    choice: Choice,
    /// Tokens in this slot's KV cache, in order.
    cached: Vec<LlamaToken>,
    /// Tokens to feed next (the rest of the prompt, or the last sampled token and the
    /// draft's guesses after it). Empty only when the whole prompt was in the cache with
    /// the logits after it (`prompt_end`): the first token is sampled from those.
    pending: VecDeque<LlamaToken>,
    /// Of `pending`, the draft's guesses (at its end).
    drafted: usize,
    /// Tokens in this slot's sequence of the draft model's KV cache: always a prefix of
    /// `cached` and the guesses.
    draft_cached: Vec<LlamaToken>,
    /// The logits after this choice's whole prompt (kept with prefix reuse on), so that
    /// the same prompt again in this slot needs no forward pass for its first token.
    prompt_end: Option<Vec<f32>>,
}

/// A sequence slot of the context.
#[derive(Default)]
struct Slot {
    busy: bool,
    /// Tokens its KV cache still holds from the last choice that ran in it.
    cached: Vec<LlamaToken>,
    /// The same for the draft model's KV cache.
    draft_cached: Vec<LlamaToken>,
    /// The last choice's prompt length and the logits after it (see [`Running`]).
    prompt_end: Option<(usize, Vec<f32>)>,
}

enum Outcome {
    Continue,
    Finished,
}

/// The shape of a model's context.
pub struct Limits {
    /// Sequence slots (requests generating at once).
    pub sequences: usize,
    /// Tokens each sequence may hold.
    pub context_per_sequence: usize,
    /// Whether a new prompt reuses the longest cached prefix.
    pub reuse_prefix: bool,
    /// Tokens one forward pass takes at most (`batch_tokens`).
    pub batch: usize,
}

/// A draft model for speculative decoding: its own context, with a sequence per slot.
pub struct Draft<'a> {
    /// The draft model's context (same shape as the model's).
    pub context: LlamaContext<'a>,
    /// How many tokens to guess ahead per step.
    pub length: super::draft_length::DraftLength,
    /// Guessing stops when the draft's most likely token is less likely than this.
    pub p_min: f32,
}

/// How long a busy period waits for more work before its thread ends (and with it the
/// OpenMP team, see [`super::bursts`]).
const LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// How a busy period ended.
enum Ended {
    /// Nothing is left to do; wait for the next job.
    Idle,
    /// The model was unloaded (the job sender is dropped) and nothing is left to do.
    Unloaded,
}

/// Runs until the model is unloaded (the job sender is dropped). This thread only waits
/// for work; each busy period runs on a fresh thread (see [`super::bursts`]), so an idle
/// model holds no OpenMP team.
pub fn run(
    shared: &Shared,
    mut context: LlamaContext<'_>,
    mut draft: Option<Draft<'_>>,
    limits: Limits,
    jobs: Receiver<Job>,
) {
    let mut slots: Vec<Slot> = (0..limits.sequences).map(|_| Slot::default()).collect();
    let capacity = limits.batch.max(limits.sequences);
    let mut batch = LlamaBatch::new(capacity, 1);
    loop {
        let Ok(first) = jobs.recv() else { return };
        let period = || {
            busy(
                shared,
                &mut context,
                draft.as_mut(),
                &limits,
                &mut slots,
                &mut batch,
                &jobs,
                first,
            )
        };
        // SAFETY: the contexts, batch, slots and job receiver are used by the busy
        // period's thread alone while this one waits for it, and none is tied to a thread.
        if let Ended::Unloaded = unsafe { super::bursts::on_fresh_thread(period) } {
            return;
        }
    }
}

/// Runs jobs, starting with `first`, until nothing is left to do.
#[allow(clippy::too_many_arguments)]
fn busy(
    shared: &Shared,
    context: &mut LlamaContext<'_>,
    mut draft: Option<&mut Draft<'_>>,
    limits: &Limits,
    slots: &mut [Slot],
    batch: &mut LlamaBatch,
    jobs: &Receiver<Job>,
    first: Job,
) -> Ended {
    let &Limits {
        sequences,
        context_per_sequence,
        reuse_prefix,
        batch: batch_tokens,
    } = limits;
    let mut waiting: VecDeque<Choice> = VecDeque::new();
    let mut running: Vec<Running> = Vec::new();
    let capacity = batch_tokens.max(sequences);
    let vocab = shared.model.vocab();
    enqueue(first, &mut waiting);

    loop {
        // Take new work; end the period when there is nothing to do.
        loop {
            match jobs.try_recv() {
                Ok(job) => enqueue(job, &mut waiting),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if running.is_empty() && waiting.is_empty() => {
                    return Ended::Unloaded
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if running.is_empty() && waiting.is_empty() {
            // A client that sends its next request right after an answer (an agent, a
            // chat turn, a benchmark) finds this thread and its OpenMP team still here.
            match jobs.recv_timeout(LINGER) {
                Ok(job) => enqueue(job, &mut waiting),
                Err(RecvTimeoutError::Timeout) => return Ended::Idle,
                Err(RecvTimeoutError::Disconnected) => return Ended::Unloaded,
            }
        }

        // Clients that went away free their slots (the KV they filled stays reusable).
        waiting.retain(|c| !c.request.borrow().out.is_closed());
        let gone: Vec<usize> = (0..running.len())
            .filter(|&i| running[i].choice.request.borrow().out.is_closed())
            .collect();
        release_all(&mut running, slots, gone);

        admit(
            &mut waiting,
            &mut running,
            slots,
            context,
            draft.as_deref_mut().map(|d| &mut d.context),
            reuse_prefix,
        );
        // A prompt wholly in the cache, with the logits after it kept: its first token
        // needs no forward pass.
        let mut finished: Vec<usize> = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            if r.pending.is_empty() {
                if let Some(logits) = r.prompt_end.take() {
                    let outcome = step(
                        r,
                        &logits,
                        &vocab,
                        context_per_sequence,
                        shared.tool_opener_token,
                    );
                    r.prompt_end = Some(logits);
                    if let Outcome::Finished = outcome {
                        finished.push(i);
                    }
                }
            }
        }
        release_all(&mut running, slots, finished);
        if running.is_empty() {
            continue;
        }
        let step_started = std::time::Instant::now();
        if let Some(draft) = draft.as_deref_mut() {
            let generating = running.iter().filter(|r| generates(r));
            let starting = generating.clone().any(|r| r.choice.generated <= 1);
            let ahead = draft.length.next(generating.count(), starting);
            if ahead > 0 {
                let (passes, read, sequences) = draft_ahead(
                    draft,
                    &mut running,
                    batch,
                    capacity,
                    context_per_sequence,
                    ahead,
                );
                draft
                    .length
                    .drafted(passes, read, sequences, step_started.elapsed());
            }
        }

        // One forward pass: room for the decode steps first (with their guesses), then
        // prompt chunks in the room left; the tokens go into the batch in slot order.
        batch.clear();
        // (running index, first logits row, rows): one row, or one per token read when
        // there are guesses to check.
        let mut rows: Vec<(usize, i32, usize)> = Vec::new();
        let mut room = capacity;
        let mut order: Vec<usize> = (0..running.len()).collect();
        order.sort_by_key(|&i| running[i].pending.len());
        let mut takes = vec![0; running.len()];
        let mut reads_prompt = false;
        for &i in &order {
            let r = &mut running[i];
            let take = r.pending.len().min(room);
            reads_prompt |= take > 0 && r.cached.len() < r.choice.prompt.len();
            if r.drafted > 0 && take < r.pending.len() {
                // No room for every guess: check those that fit (guesses are optional).
                r.pending.truncate(take.max(1));
                r.drafted = take.saturating_sub(1);
            }
            takes[i] = take;
            room -= take;
        }
        // llama.cpp reads sequences of separate KV streams in one pass only when they come
        // in increasing order of their ids (`split_equal`, sequential): out of order, a
        // step of 4 sequences took up to 4 passes (docs/BENCHMARKS.md).
        order.sort_by_key(|&i| running[i].slot);
        let mut failed = false;
        for i in order {
            let r = &mut running[i];
            let take = takes[i];
            if take == 0 {
                continue;
            }
            let checks = r.drafted > 0;
            let finishes_prompt = take == r.pending.len();
            let mut first_row = None;
            for k in 0..take {
                let Some(token) = r.pending.pop_front() else {
                    break;
                };
                let position = r.cached.len() as i32;
                let wants_logits = checks || (finishes_prompt && k + 1 == take);
                if batch
                    .add(token, position, &[r.slot as i32], wants_logits)
                    .is_err()
                {
                    failed = true;
                    break;
                }
                if wants_logits && first_row.is_none() {
                    first_row = Some(batch.n_tokens() - 1);
                }
                r.cached.push(token);
            }
            if let Some(first) = first_row {
                rows.push((i, first, if checks { take } else { 1 }));
            }
        }
        if failed || batch.n_tokens() == 0 {
            fail_all(&mut running, slots, context, "batch overflow");
            continue;
        }
        let drafted_in = step_started.elapsed();
        let batch_tokens = batch.n_tokens();
        let decode_result = context.decode(batch);
        let decoded_in = step_started.elapsed();
        if let Err(e) = decode_result {
            tracing::error!(error = %e, "llama.cpp decode failed");
            fail_all(&mut running, slots, context, "the forward pass failed");
            continue;
        }

        let mut finished: Vec<usize> = Vec::new();
        for (i, first, count) in rows {
            let r = &mut running[i];
            let outcome = if count == 1 {
                if reuse_prefix && r.choice.generated == 0 {
                    r.prompt_end = Some(context.get_logits_ith(first).to_vec());
                }
                step(
                    r,
                    context.get_logits_ith(first),
                    &vocab,
                    context_per_sequence,
                    shared.tool_opener_token,
                )
            } else {
                let checked = check_guesses(
                    r,
                    context,
                    draft.as_deref_mut().map(|d| &mut d.context),
                    first,
                    count,
                    &vocab,
                    context_per_sequence,
                    shared.tool_opener_token,
                );
                if let Some(draft) = draft.as_deref_mut() {
                    draft.length.checked(checked.kept, checked.rejected);
                }
                checked.outcome
            };
            if let Outcome::Finished = outcome {
                finished.push(i);
            }
        }
        if let Some(draft) = draft.as_deref_mut() {
            for r in &running {
                r.choice.request.borrow_mut().draft_length = Some(draft.length.chosen());
            }
            if !reads_prompt {
                draft
                    .length
                    .stepped(batch_tokens as usize, step_started.elapsed() - drafted_in);
            }
        }
        // The profiling hook of docs/BENCHMARKS.md's per-token breakdown (enable with
        // LLAMAGATE_LOG=llamagate::engine::llama_cpp::worker=trace): drafting, the
        // forward pass, then sampling, detokenizing, stop matching and sending.
        tracing::trace!(
            draft_us = drafted_in.as_micros() as u64,
            decode_us = (decoded_in - drafted_in).as_micros() as u64,
            sample_us = (step_started.elapsed() - decoded_in).as_micros() as u64,
            batch_tokens,
            draft_length = draft.as_deref().map_or(0, |d| d.length.chosen()),
            "forward pass"
        );
        release_all(&mut running, slots, finished);
    }
}

/// Has the draft model guess ahead for every sequence that is generating: it first
/// reads what it has not seen yet (the prompt, the tokens kept since its last guesses),
/// then guesses greedily, one forward pass per token for all those sequences together.
/// Each stops at its limit (`ahead`, the tokens left to its request, its context) or
/// when its best guess is less likely than `draft.p_min`. The guesses are put after the
/// sequence's pending token, for the model to check in its next forward pass. Returns
/// the draft's forward passes, the tokens they read and the sequences that guessed.
fn draft_ahead(
    draft: &mut Draft<'_>,
    running: &mut [Running],
    batch: &mut LlamaBatch,
    capacity: usize,
    context_per_sequence: usize,
    ahead: usize,
) -> (usize, usize, usize) {
    struct Guessing {
        index: usize,
        /// Tokens the draft must still read, the last one with logits.
        feed: VecDeque<LlamaToken>,
        row: Option<i32>,
        guesses: Vec<LlamaToken>,
        limit: usize,
        done: bool,
    }
    let mut guessing: Vec<Guessing> = Vec::new();
    for (index, r) in running.iter().enumerate() {
        if !generates(r) {
            continue;
        }
        // Reading the pending token and k guesses yields up to k + 1 tokens.
        let sampling = &r.choice.sampling;
        let left = sampling
            .max_tokens
            .map_or(usize::MAX, |m| m.saturating_sub(r.choice.generated));
        let room = context_per_sequence.saturating_sub(r.cached.len() + 2);
        let limit = ahead.min(left.saturating_sub(1)).min(room);
        if limit == 0 || r.draft_cached.len() > r.cached.len() {
            continue;
        }
        let mut feed: VecDeque<LlamaToken> =
            r.cached[r.draft_cached.len()..].iter().copied().collect();
        feed.extend(r.pending.iter().copied());
        guessing.push(Guessing {
            index,
            feed,
            row: None,
            guesses: Vec::new(),
            limit,
            done: false,
        });
    }
    // In slot order, so each pass is one of llama.cpp's (see `busy`).
    guessing.sort_by_key(|g| running[g.index].slot);
    let mut passes = 0;
    let mut read = 0;
    while guessing.iter().any(|g| !g.done) {
        passes += 1;
        batch.clear();
        let mut room = capacity;
        let mut failed = false;
        for g in guessing.iter_mut().filter(|g| !g.done) {
            let r = &mut running[g.index];
            while room > 0 {
                let Some(token) = g.feed.pop_front() else {
                    break;
                };
                let last = g.feed.is_empty();
                let position = r.draft_cached.len() as i32;
                if batch.add(token, position, &[r.slot as i32], last).is_err() {
                    failed = true;
                    break;
                }
                if last {
                    g.row = Some(batch.n_tokens() - 1);
                }
                r.draft_cached.push(token);
                room -= 1;
            }
        }
        if failed || batch.n_tokens() == 0 || draft.context.decode(batch).is_err() {
            // The draft's cache no longer matches what it was told: it starts over, and
            // this step checks no guesses.
            tracing::warn!("the draft model's forward pass failed; drafting again from scratch");
            for g in &guessing {
                let r = &mut running[g.index];
                let _ = draft
                    .context
                    .clear_kv_cache_seq(Some(r.slot as u32), None, None);
                r.draft_cached.clear();
            }
            return (0, 0, 0);
        }
        read += batch.n_tokens() as usize;
        for g in guessing.iter_mut() {
            let Some(row) = g.row.take() else { continue };
            let (best, p) = most_likely(draft.context.get_logits_ith(row));
            if p < draft.p_min {
                g.done = true;
                continue;
            }
            g.guesses.push(best);
            if g.guesses.len() >= g.limit {
                g.done = true;
            } else {
                g.feed.push_back(best);
            }
        }
    }
    let sequences = guessing.len();
    for g in guessing {
        let r = &mut running[g.index];
        r.drafted = g.guesses.len();
        r.pending.extend(g.guesses);
    }
    (passes, read, sequences)
}

/// Whether a sequence is generating (its prompt read, one sampled token pending), so the
/// draft can guess after it.
fn generates(r: &Running) -> bool {
    r.pending.len() == 1 && r.cached.len() >= r.choice.prompt.len()
}

/// What checking a sequence's guesses gave.
struct Checked {
    outcome: Outcome,
    /// Guesses kept.
    kept: usize,
    /// Whether a guess was not kept (false when all were, or the answer ended first).
    rejected: bool,
}

/// The most likely token of `logits` and its probability.
fn most_likely(logits: &[f32]) -> (LlamaToken, f32) {
    let best = crate::engine::probe::argmax_finite(logits);
    let top = logits.get(best).copied().unwrap_or(0.0);
    let sum: f32 = logits.iter().map(|l| (l - top).exp()).sum();
    (
        LlamaToken(best as i32),
        if sum > 0.0 { 1.0 / sum } else { 0.0 },
    )
}

/// Samples through the logits of a pending token and the guesses read after it (`count`
/// rows from `first`), keeping each guess the sampler picks itself; at the first it does
/// not, its own pick is kept instead and the cache entries of the guesses after it are
/// removed (from the model's and the draft's caches).
#[allow(clippy::too_many_arguments)]
fn check_guesses(
    r: &mut Running,
    context: &mut LlamaContext<'_>,
    draft: Option<&mut LlamaContext<'_>>,
    first: i32,
    count: usize,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: usize,
    shown: Option<LlamaToken>,
) -> Checked {
    // The cache holds the pending token, then the guesses.
    let guesses = r.cached.split_off(r.cached.len() - (count - 1));
    let mut kept = 0;
    let mut rejected = false;
    let mut outcome = Outcome::Continue;
    for (j, row) in (first..).take(count).enumerate() {
        outcome = step(
            r,
            context.get_logits_ith(row),
            vocab,
            context_per_sequence,
            shown,
        );
        if let Outcome::Finished = outcome {
            break;
        }
        match guesses.get(j) {
            Some(&guess) if r.pending.back() == Some(&guess) => {
                // The guess is what was sampled: it is in the cache already.
                r.pending.pop_back();
                r.cached.push(guess);
                kept += 1;
            }
            Some(_) => {
                rejected = true;
                break;
            }
            None => break,
        }
    }
    {
        let mut request = r.choice.request.borrow_mut();
        request.draft_tokens += count - 1;
        request.draft_accepted_tokens += kept;
    }
    r.drafted = 0;
    let slot = Some(r.slot as u32);
    if kept < count - 1 {
        let from = u32::try_from(r.cached.len()).ok();
        if !from.is_some_and(|from| {
            context
                .clear_kv_cache_seq(slot, Some(from), None)
                .unwrap_or(false)
        }) {
            // Its cache still holds rejected guesses: this choice cannot go on.
            let _ = context.clear_kv_cache_seq(slot, None, None);
            r.cached.clear();
            let _ = r
                .choice
                .request
                .borrow()
                .out
                .send(Err(EngineError::Generation(
                    "llama.cpp: could not remove rejected draft tokens from the cache".into(),
                )));
            return Checked {
                outcome: Outcome::Finished,
                kept,
                rejected,
            };
        }
    }
    if let Some(draft) = draft {
        let keep = common_prefix(&r.draft_cached, &r.cached);
        if keep < r.draft_cached.len() {
            let cleared = u32::try_from(keep).ok().is_some_and(|keep| {
                draft
                    .clear_kv_cache_seq(slot, Some(keep), None)
                    .unwrap_or(false)
            });
            if cleared {
                r.draft_cached.truncate(keep);
            } else {
                let _ = draft.clear_kv_cache_seq(slot, None, None);
                r.draft_cached.clear();
            }
        }
    }
    Checked {
        outcome,
        kept,
        rejected,
    }
}

fn enqueue(job: Job, waiting: &mut VecDeque<Choice>) {
    let n = job.sampling.n.max(1);
    let request = Rc::new(RefCell::new(RequestState {
        out: job.out,
        on_token: job.on_token,
        prompt_tokens: job.tokens.len(),
        completion_tokens: 0,
        cached_prompt_tokens: None,
        choices_left: n,
        draft_tokens: 0,
        draft_accepted_tokens: 0,
        draft_length: None,
    }));
    let prompt: Rc<[LlamaToken]> = job.tokens.into();
    let sampling = Rc::new(job.sampling);
    let mut matchers = job.matchers.map(|m| m.into_iter());
    for index in 0..n {
        let matcher = matchers.as_mut().and_then(Iterator::next);
        let s = &sampling;
        waiting.push_back(Choice {
            request: request.clone(),
            index,
            prompt: prompt.clone(),
            probe: SamplingProbe::new(
                s.temperature,
                s.top_p,
                s.seed.map(|seed| seed.wrapping_add(index as u64)),
                false,
            ),
            json_end: matcher.as_ref().map(|_| JsonEnd::default()),
            matcher,
            stop: StopMatcher::new(&s.stop),
            sampling: sampling.clone(),
            partial_utf8: Vec::new(),
            counts: HashMap::new(),
            generated: 0,
        });
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Gives free slots to waiting choices, reusing the longest cached prefix.
fn admit(
    waiting: &mut VecDeque<Choice>,
    running: &mut Vec<Running>,
    slots: &mut [Slot],
    context: &mut LlamaContext<'_>,
    mut draft: Option<&mut LlamaContext<'_>>,
    reuse_prefix: bool,
) {
    while !waiting.is_empty() {
        let Some(choice) = waiting.front() else { break };
        let best = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .map(|(i, s)| {
                let shared = if reuse_prefix {
                    common_prefix(&s.cached, &choice.prompt)
                } else {
                    0
                };
                (i, shared)
            })
            .max_by_key(|&(i, shared)| (shared, std::cmp::Reverse(i)));
        let Some((slot, shared)) = best else { break };
        let Some(choice) = waiting.pop_front() else {
            break;
        };
        // The logits after the prompt start the generation: kept from the last choice
        // in this slot if it had the same prompt, else its last token is read again.
        let prompt_end = slots[slot]
            .prompt_end
            .take()
            .filter(|(len, _)| *len == choice.prompt.len() && shared == *len)
            .map(|(_, logits)| logits);
        let keep = if prompt_end.is_some() {
            shared
        } else {
            shared.min(choice.prompt.len() - 1)
        };
        let cleared = u32::try_from(keep).ok().is_some_and(|keep| {
            context
                .clear_kv_cache_seq(Some(slot as u32), Some(keep), None)
                .unwrap_or(false)
        });
        let (keep, prompt_end) = if cleared {
            (keep, prompt_end)
        } else {
            let _ = context.clear_kv_cache_seq(Some(slot as u32), None, None);
            (0, None)
        };
        if keep > 0 {
            tracing::debug!(
                slot,
                reused = keep,
                prompt = choice.prompt.len(),
                "prompt prefix reused"
            );
        }
        choice
            .request
            .borrow_mut()
            .cached_prompt_tokens
            .get_or_insert(keep);
        slots[slot].busy = true;
        let mut cached = std::mem::take(&mut slots[slot].cached);
        cached.truncate(keep);
        // The draft keeps what it read of this prompt too (it reads the rest later).
        let mut draft_cached = std::mem::take(&mut slots[slot].draft_cached);
        if let Some(draft) = draft.as_deref_mut() {
            let keep = if reuse_prefix {
                common_prefix(&draft_cached, &choice.prompt)
            } else {
                0
            };
            let cleared = u32::try_from(keep).ok().is_some_and(|keep| {
                draft
                    .clear_kv_cache_seq(Some(slot as u32), Some(keep), None)
                    .unwrap_or(false)
            });
            if cleared {
                draft_cached.truncate(keep);
            } else {
                let _ = draft.clear_kv_cache_seq(Some(slot as u32), None, None);
                draft_cached.clear();
            }
        }
        let pending = choice.prompt[keep..].iter().copied().collect();
        running.push(Running {
            slot,
            choice,
            cached,
            pending,
            drafted: 0,
            draft_cached,
            prompt_end,
        });
    }
}

/// Ends the running choices at `indices` (in any order): each slot is freed and keeps
/// what its choice left in the caches, for a later prompt that shares it.
fn release_all(running: &mut Vec<Running>, slots: &mut [Slot], mut indices: Vec<usize>) {
    indices.sort_unstable();
    for i in indices.into_iter().rev() {
        let r = running.swap_remove(i);
        let slot = &mut slots[r.slot];
        slot.busy = false;
        slot.prompt_end = r.prompt_end.map(|logits| (r.choice.prompt.len(), logits));
        slot.cached = r.cached;
        slot.draft_cached = r.draft_cached;
    }
}

fn fail_all(
    running: &mut Vec<Running>,
    slots: &mut [Slot],
    context: &mut LlamaContext<'_>,
    why: &str,
) {
    for r in running.drain(..) {
        let request = r.choice.request.borrow();
        let _ = request
            .out
            .send(Err(EngineError::Generation(format!("llama.cpp: {why}"))));
        slots[r.slot].busy = false;
        slots[r.slot].cached.clear();
        let _ = context.clear_kv_cache_seq(Some(r.slot as u32), None, None);
    }
}

/// Samples one token for `r` from `logits` and reports it.
fn step(
    r: &mut Running,
    logits: &[f32],
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
    context_per_sequence: usize,
    // A control token written out as text: the opener of the model's tool calls.
    shown: Option<LlamaToken>,
) -> Outcome {
    let choice = &mut r.choice;
    let sampling = choice.sampling.clone();
    // Copied only when something changes them (penalties, a grammar's mask).
    let mut logits = std::borrow::Cow::Borrowed(logits);
    if sampling.presence_penalty != 0.0 || sampling.frequency_penalty != 0.0 {
        let logits = logits.to_mut();
        for (&token, &count) in &choice.counts {
            if let Some(l) = logits.get_mut(token as usize) {
                *l -= sampling.presence_penalty + sampling.frequency_penalty * count as f32;
            }
        }
    }
    if let Some(matcher) = choice.matcher.as_mut() {
        if !matcher.is_stopped() {
            match matcher.compute_mask_or_eos() {
                Ok(mask) => {
                    for (id, l) in logits.to_mut().iter_mut().enumerate() {
                        if !mask.is_allowed(id as u32) {
                            *l = f32::NEG_INFINITY;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "grammar failed; ending the choice");
                    return finish(choice, FinishReason::Stop);
                }
            }
        }
    }
    let (chosen, probs) = choice.probe.pick_token(&logits, sampling.logprobs);
    let token = LlamaToken(chosen as i32);
    choice.generated += 1;
    *choice.counts.entry(token.0).or_default() += 1;
    {
        let mut request = choice.request.borrow_mut();
        request.completion_tokens += 1;
        if let Some(callback) = &request.on_token {
            callback();
        }
    }
    if let Some(matcher) = choice.matcher.as_mut() {
        if !matcher.is_stopped() && matcher.consume_token(chosen as u32).is_err() {
            return finish(choice, FinishReason::Stop);
        }
    }
    if vocab.is_eog(token) {
        return finish(choice, FinishReason::Stop);
    }

    let piece = vocab.token_to_piece(token, shown == Some(token), None);
    let logprobs = if sampling.logprobs {
        vec![token_logprob(
            &piece,
            chosen,
            &probs,
            sampling.top_logprobs,
            vocab,
        )]
    } else {
        Vec::new()
    };
    choice.partial_utf8.extend_from_slice(&piece);
    let text = take_valid_utf8(&mut choice.partial_utf8);
    let (text, json_done) = match choice.json_end.as_mut() {
        Some(end) => match end.push(&text) {
            Some(at) => (text[..at].to_string(), true),
            None => (text, false),
        },
        None => (text, false),
    };
    let outcome = choice.stop.push(&text);
    let mut emit = outcome.emit;
    if json_done && !outcome.stopped {
        emit.push_str(&choice.stop.flush());
    }
    if !emit.is_empty() || !logprobs.is_empty() {
        choice.request.borrow().send(TokenEvent::Text {
            choice: choice.index,
            text: emit,
            logprobs,
        });
    }
    if outcome.stopped || json_done {
        choice.partial_utf8.clear();
        let reason = if outcome.stopped {
            choice.stop.reason()
        } else {
            FinishReason::Stop
        };
        return finish(choice, reason);
    }
    if sampling.max_tokens.is_some_and(|m| choice.generated >= m)
        || r.cached.len() + 1 >= context_per_sequence
    {
        return finish(choice, FinishReason::Length);
    }
    r.pending.push_back(token);
    Outcome::Continue
}

/// The longest valid UTF-8 prefix of `bytes`, removed from it; invalid bytes that can
/// never complete a character become U+FFFD.
fn take_valid_utf8(bytes: &mut Vec<u8>) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let s = s.to_string();
            bytes.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            // An incomplete character at the end: keep it for the next token.
            let valid = e.valid_up_to();
            let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
            bytes.drain(..valid);
            text
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            bytes.clear();
            text
        }
    }
}

fn token_logprob(
    piece: &[u8],
    chosen: usize,
    probs: &[f32],
    top: usize,
    vocab: &llama_cpp_2::vocab::LlamaVocab<'_>,
) -> TokenLogprob {
    let ln = |p: f32| {
        let l = p.ln();
        if l.is_finite() {
            l
        } else {
            -9999.0
        }
    };
    let mut best: Vec<usize> = Vec::new();
    if top > 0 && !probs.is_empty() {
        let mut ids: Vec<usize> = (0..probs.len()).collect();
        let k = top.min(ids.len());
        ids.select_nth_unstable_by(k - 1, |&a, &b| probs[b].total_cmp(&probs[a]));
        ids.truncate(k);
        ids.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        best = ids;
    }
    TokenLogprob {
        token: String::from_utf8_lossy(piece).into_owned(),
        logprob: ln(probs.get(chosen).copied().unwrap_or(0.0)),
        top: best
            .into_iter()
            .map(|id| TopLogprob {
                token: String::from_utf8_lossy(&vocab.token_to_piece(
                    LlamaToken(id as i32),
                    false,
                    None,
                ))
                .into_owned(),
                logprob: ln(probs[id]),
            })
            .collect(),
    }
}

/// Ends a choice: flushes held-back text, reports the reason, and `Done` after the last
/// choice of its request.
fn finish(choice: &mut Choice, reason: FinishReason) -> Outcome {
    let mut rest = String::from_utf8_lossy(&std::mem::take(&mut choice.partial_utf8)).into_owned();
    if !choice.stop.stopped() {
        let held = choice.stop.push(&rest);
        rest = held.emit;
        if !held.stopped {
            rest.push_str(&choice.stop.flush());
        }
    } else {
        rest.clear();
    }
    let mut request = choice.request.borrow_mut();
    if !rest.is_empty() {
        request.send(TokenEvent::Text {
            choice: choice.index,
            text: rest,
            logprobs: Vec::new(),
        });
    }
    request.send(TokenEvent::Finished {
        choice: choice.index,
        reason,
    });
    request.choices_left -= 1;
    if request.choices_left == 0 {
        let usage = TokenUsage {
            prompt_tokens: request.prompt_tokens,
            completion_tokens: request.completion_tokens,
            cached_prompt_tokens: request.cached_prompt_tokens.unwrap_or(0),
            draft_tokens: request.draft_tokens,
            draft_accepted_tokens: request.draft_accepted_tokens,
            draft_length: request.draft_length,
        };
        request.send(TokenEvent::Done(usage));
    }
    Outcome::Finished
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_tokens_is_held_back() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_valid_utf8(&mut bytes), "");
        bytes.extend_from_slice(&"é".as_bytes()[1..]);
        assert_eq!(take_valid_utf8(&mut bytes), "é");
        assert!(bytes.is_empty());
        let mut broken = vec![b'a', 0xFF, b'b'];
        assert_eq!(take_valid_utf8(&mut broken), "a\u{FFFD}b");
    }

    #[test]
    fn most_likely_gives_the_best_token_and_its_probability() {
        let (token, p) = most_likely(&[0.0, 2.0_f32.ln(), 0.0]);
        assert_eq!(token, LlamaToken(1));
        assert!((p - 0.5).abs() < 1e-6, "{p}");
        let (token, p) = most_likely(&[f32::NEG_INFINITY, 3.0]);
        assert_eq!((token, p), (LlamaToken(1), 1.0));
    }

    #[test]
    fn common_prefix_counts_shared_tokens() {
        let t = |v: &[i32]| v.iter().map(|&x| LlamaToken(x)).collect::<Vec<_>>();
        assert_eq!(common_prefix(&t(&[1, 2, 3]), &t(&[1, 2, 4])), 2);
        assert_eq!(common_prefix(&t(&[]), &t(&[1])), 0);
    }
}
