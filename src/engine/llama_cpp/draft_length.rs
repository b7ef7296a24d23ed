//! How many tokens a draft model guesses ahead per step (speculative decoding), chosen
//! from what drafting has yielded on this machine so far.
//!
//! The best length depends on two things a setting cannot know: how often the draft is
//! right (a Q4_1 of the model's own weights ~97% of guesses, a different quantization
//! ~55%) and how much a forward pass costs as it reads more tokens (on a GPU a pass of 8
//! costs about what a pass of 1 does; on 2 CPU cores it can cost several times more).
//! [`DraftLength`] measures both while it serves: the acceptance rate `p` (an
//! exponentially weighted count of kept guesses and rejections), the draft's time per
//! forward pass `D`, and the model's time `W(n)` for a step that reads `n` tokens
//! (forward pass and sampling, per `n` seen; a least-squares line through them for
//! lengths not yet tried). With `s` sequences generating, guessing `k` ahead yields
//! `s · (1 + p + … + pᵏ)` tokens per step in `k · D + W(s · (k + 1))` seconds, and
//! [`DraftLength::next`] picks the `k` in `0..=max` that gives the most tokens per second,
//! `0` when drafting does not pay at all. It tries the lengths beside its choice now
//! and then (two steps in six), so the measurements follow the machine's load.
//!
//! Drafting off is sticky within an answer: a draft that skipped tokens must read them
//! all before its next guess, which costs about as much as the guesses could save. So
//! from `0` it tries drafting again only when an answer starts (every fourth start, the
//! draft reading the prompt as any drafted answer does), for a trial of a few steps.
//! Timings of the draft catching up like that are not taken as a pass's cost.
//!
//! Pure bookkeeping: the worker reports timings and outcomes, this module decides.

use std::time::Duration;

/// Weight of the newest measurement of a step time.
const TIME_WEIGHT: f64 = 0.25;
/// Decay per step of the acceptance counts (their memory is ~1 / (1 − this) steps).
const ACCEPTANCE_DECAY: f64 = 0.9;
/// A length replaces the current one only if it is estimated this much faster.
const HYSTERESIS: f64 = 1.03;
/// Steps per exploration cycle: one tries a length above the choice, one below.
const CYCLE: u64 = 6;
/// The length tried before anything is measured (the earlier fixed default).
const FIRST_GUESS: usize = 4;
/// With drafting off, one answer start in this many tries it again.
const RETRY_EVERY: u64 = 4;
/// Steps a trial drafts before its measurements may turn drafting off again.
const TRIAL_STEPS: u32 = 8;

/// Chooses the number of tokens to draft per step; see the module header.
#[derive(Debug, Clone)]
pub struct DraftLength {
    max: usize,
    adaptive: bool,
    /// The current choice.
    chosen: usize,
    steps: u64,
    /// Answer starts seen while drafting was off.
    starts: u64,
    /// Steps left in a trial of drafting again.
    trial: u32,
    /// Exponentially weighted guesses kept and rejections (a prior of one each).
    kept: f64,
    rejected: f64,
    /// Seconds per draft forward pass.
    draft_pass: Option<f64>,
    /// Seconds per model step reading `n` tokens, at index `n`.
    step_time: Vec<Option<f64>>,
}

impl DraftLength {
    /// A chooser of lengths up to `max`; with `adaptive` false it always drafts `max`.
    pub fn new(max: usize, adaptive: bool) -> Self {
        Self {
            max,
            adaptive,
            chosen: FIRST_GUESS.min(max),
            steps: 0,
            starts: 0,
            trial: 0,
            kept: 1.0,
            rejected: 1.0,
            draft_pass: None,
            step_time: Vec::new(),
        }
    }

    /// The length of the last choice (not counting exploration).
    pub fn chosen(&self) -> usize {
        if self.adaptive {
            self.chosen
        } else {
            self.max
        }
    }

    /// The estimated probability that the draft's next guess is kept.
    pub fn acceptance(&self) -> f64 {
        self.kept / (self.kept + self.rejected)
    }

    /// How many tokens to guess ahead in this step, for `sequences` sequences generating,
    /// `starting` when one of them has just started its answer.
    pub fn next(&mut self, sequences: usize, starting: bool) -> usize {
        if !self.adaptive {
            return self.max;
        }
        self.steps += 1;
        if sequences == 0 {
            return self.chosen;
        }
        if self.chosen == 0 {
            if starting {
                self.starts += 1;
                if self.starts % RETRY_EVERY == 1 {
                    self.chosen = self.best_drafting(sequences).unwrap_or(1);
                    self.trial = TRIAL_STEPS;
                }
            }
            return self.chosen;
        }
        self.choose(sequences);
        let ahead = match self.steps % CYCLE {
            3 if self.chosen < self.max => self.chosen + 1,
            0 if self.chosen > usize::from(self.trial > 0) => self.chosen - 1,
            _ => self.chosen,
        };
        self.trial = self.trial.saturating_sub(1);
        ahead
    }

    /// The draft ran `passes` forward passes reading `tokens` tokens in `elapsed`, for
    /// `sequences` sequences. A first pass that read more than two tokens per sequence
    /// was catching up, and is not a measure of a pass.
    pub fn drafted(&mut self, passes: usize, tokens: usize, sequences: usize, elapsed: Duration) {
        if passes > 0 && tokens <= (passes + 1) * sequences {
            let per_pass = elapsed.as_secs_f64() / passes as f64;
            self.draft_pass = Some(blend(self.draft_pass, per_pass));
        }
    }

    /// A step that only generated (no prompt read in it) read `tokens` tokens and
    /// sampled them in `elapsed`.
    pub fn stepped(&mut self, tokens: usize, elapsed: Duration) {
        if tokens == 0 || tokens > 4096 {
            return;
        }
        if self.step_time.len() <= tokens {
            self.step_time.resize(tokens + 1, None);
        }
        let slot = &mut self.step_time[tokens];
        *slot = Some(blend(*slot, elapsed.as_secs_f64()));
    }

    /// One sequence's guesses were checked: `kept` were kept, and `rejected` says
    /// whether one after them was not (false when all were kept or the answer ended).
    pub fn checked(&mut self, kept: usize, rejected: bool) {
        self.kept = self.kept * ACCEPTANCE_DECAY + kept as f64;
        self.rejected = self.rejected * ACCEPTANCE_DECAY + f64::from(u8::from(rejected));
    }

    /// Estimated tokens per second when guessing `k` ahead for `sequences` sequences.
    fn rate(&self, k: usize, sequences: usize) -> Option<f64> {
        let step = self.step_time(sequences * (k + 1))?;
        let drafting = if k == 0 {
            0.0
        } else {
            k as f64 * self.draft_pass?
        };
        let p = self.acceptance();
        let per_sequence: f64 = (0..=k).map(|i| p.powi(i as i32)).sum();
        let seconds = drafting + step;
        (seconds > 0.0).then(|| sequences as f64 * per_sequence / seconds)
    }

    /// The measured time of a step reading `n` tokens, else the least-squares line
    /// through those measured (at least two lengths), never below zero.
    fn step_time(&self, n: usize) -> Option<f64> {
        if let Some(Some(t)) = self.step_time.get(n) {
            return Some(*t);
        }
        // One pass, no allocation: this runs for every candidate length of every step.
        let (mut count, mut sum_n, mut sum_t, mut sum_nn, mut sum_nt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (m, t) in self.step_time.iter().enumerate() {
            if let Some(t) = *t {
                let m = m as f64;
                count += 1.0;
                sum_n += m;
                sum_t += t;
                sum_nn += m * m;
                sum_nt += m * t;
            }
        }
        let spread = count * sum_nn - sum_n * sum_n;
        if count < 2.0 || spread <= 0.0 {
            return None;
        }
        let slope = (count * sum_nt - sum_n * sum_t) / spread;
        let (mean_n, mean_t) = (sum_n / count, sum_t / count);
        Some((mean_t + slope * (n as f64 - mean_n)).max(0.0))
    }

    /// The fastest estimated length of at least `from`.
    fn fastest(&self, from: usize, sequences: usize) -> Option<(usize, f64)> {
        (from..=self.max)
            .filter_map(|k| self.rate(k, sequences).map(|r| (k, r)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// The fastest estimated length that drafts.
    fn best_drafting(&self, sequences: usize) -> Option<usize> {
        self.fastest(1, sequences).map(|(k, _)| k)
    }

    /// Moves the choice to the fastest estimated length, if clearly faster than the
    /// current one (which is measured first, if it is not yet).
    fn choose(&mut self, sequences: usize) {
        let Some(current) = self.rate(self.chosen, sequences) else {
            return;
        };
        let from = usize::from(self.trial > 0);
        if let Some((k, r)) = self.fastest(from, sequences) {
            if r > current * HYSTERESIS {
                self.chosen = k;
            }
        }
    }
}

/// An exponentially weighted mean with `newest` added.
fn blend(mean: Option<f64>, newest: f64) -> f64 {
    match mean {
        Some(m) => m + TIME_WEIGHT * (newest - m),
        None => newest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `steps` steps of one sequence on a simulated machine: a draft pass costs
    /// `draft_ms`, a step reading n tokens `step_ms(n)`, and each guess is kept while
    /// the pattern says so (`keep(step, i)`). Returns the choices made.
    fn simulate(
        length: &mut DraftLength,
        steps: usize,
        draft_ms: f64,
        step_ms: impl Fn(usize) -> f64,
        keep: impl Fn(usize, usize) -> bool,
    ) -> Vec<usize> {
        let mut chosen = Vec::new();
        for step in 0..steps {
            // Each answer is 32 steps long.
            let k = length.next(1, step % 32 == 0);
            if k > 0 {
                let elapsed = Duration::from_secs_f64(k as f64 * draft_ms / 1000.0);
                length.drafted(k, k + 1, 1, elapsed);
            }
            length.stepped(k + 1, Duration::from_secs_f64(step_ms(k + 1) / 1000.0));
            if k > 0 {
                let kept = (0..k).take_while(|&i| keep(step, i)).count();
                length.checked(kept, kept < k);
            }
            chosen.push(length.chosen());
        }
        chosen
    }

    #[test]
    fn a_fixed_length_is_always_the_maximum() {
        let mut length = DraftLength::new(6, false);
        assert_eq!(length.next(1, true), 6);
        length.checked(0, true);
        assert_eq!(length.next(1, false), 6);
        assert_eq!(length.chosen(), 6);
    }

    #[test]
    fn a_draft_that_is_nearly_always_right_on_cheap_passes_drafts_far() {
        // A GPU-like machine: a pass of n tokens costs about what one costs.
        let mut length = DraftLength::new(16, true);
        let chosen = simulate(
            &mut length,
            200,
            2.0,
            |n| 20.0 + 0.2 * n as f64,
            |s, i| (s + i) % 25 != 0,
        );
        assert!(*chosen.last().unwrap() >= 8, "{chosen:?}");
    }

    #[test]
    fn a_draft_that_is_often_wrong_on_costly_passes_drafts_little_or_nothing() {
        // 2 CPU cores: each token read costs most of a step, the draft half a step.
        let mut length = DraftLength::new(16, true);
        let chosen = simulate(
            &mut length,
            200,
            6.0,
            |n| 12.0 * n as f64,
            |s, i| (s * 7 + i * 3) % 10 < 5,
        );
        assert_eq!(*chosen.last().unwrap(), 0, "{chosen:?}");
    }

    #[test]
    fn the_choice_is_the_best_length_for_the_costs_measured() {
        // 97% kept, draft 10 ms, a step 24 ms + 2 ms per extra token read: the rate
        // E(k) / (10k + 24 + 2k) peaks at k = 5 or 6 (1.70 vs 1.69 tokens per 24 ms).
        let mut length = DraftLength::new(16, true);
        let chosen = simulate(
            &mut length,
            300,
            10.0,
            |n| 22.0 + 2.0 * n as f64,
            |s, i| (s * 31 + i) % 33 != 0,
        );
        let last = *chosen.last().unwrap();
        assert!((4..=8).contains(&last), "{chosen:?}");
    }

    #[test]
    fn the_choice_follows_a_change_in_acceptance() {
        let mut length = DraftLength::new(16, true);
        let costs = |n: usize| 20.0 + 1.0 * n as f64;
        simulate(&mut length, 100, 3.0, costs, |_, _| true);
        let far = length.chosen();
        simulate(&mut length, 100, 3.0, costs, |_, i| i == 0);
        assert!(length.chosen() < far, "{far} -> {}", length.chosen());
        assert!(length.acceptance() < 0.7);
    }

    #[test]
    fn catching_up_is_not_a_pass_and_drafting_off_waits_for_an_answer_to_start() {
        let mut length = DraftLength::new(4, true);
        length.drafted(1, 60, 1, Duration::from_millis(200));
        assert_eq!(length.draft_pass, None);
        length.drafted(3, 4, 1, Duration::from_millis(30));
        assert_eq!(length.draft_pass, Some(0.010));
        // Drafting never pays here: a pass of n tokens costs n steps.
        length.checked(0, true);
        length.checked(0, true);
        length.stepped(1, Duration::from_millis(10));
        length.stepped(5, Duration::from_millis(50));
        length.next(1, false);
        assert_eq!(length.chosen(), 0);
        for _ in 0..20 {
            assert_eq!(length.next(1, false), 0, "no retry mid-answer");
        }
        assert_eq!(length.next(1, true), 1, "a trial at the next start");
        for _ in 0..TRIAL_STEPS {
            assert!(length.next(1, false) >= 1, "the trial lasts");
        }
        length.next(1, false);
        assert_eq!(length.chosen(), 0, "and ends when it does not pay");
        for _ in 1..RETRY_EVERY {
            assert_eq!(length.next(1, true), 0, "one start in four");
        }
        assert_eq!(length.next(1, true), 1);
    }

    #[test]
    fn exploration_stays_within_zero_and_the_maximum() {
        let mut length = DraftLength::new(1, true);
        for step in 0..30 {
            let k = length.next(1, step % 5 == 0);
            assert!(k <= 1);
            length.stepped(k + 1, Duration::from_millis(10));
            length.drafted(k, k + 1, 1, Duration::from_millis(5 * k as u64));
            if k > 0 {
                length.checked(0, true);
            }
        }
        assert_eq!(length.chosen(), 0);
    }

    #[test]
    fn nothing_is_chosen_from_no_measurements() {
        let mut length = DraftLength::new(16, true);
        assert_eq!(length.next(1, true), 4);
        length.stepped(1, Duration::from_millis(10));
        assert_eq!(length.next(1, false), 4, "4 is not measured yet");
        assert_eq!(length.chosen(), 4);
        let mut length = DraftLength::new(16, true);
        assert_eq!(length.step_time(3), None);
        length.stepped(2, Duration::from_millis(10));
        length.stepped(4, Duration::from_millis(20));
        let t = length.step_time(6).unwrap();
        assert!((t - 0.030).abs() < 1e-9, "{t}");
    }
}
