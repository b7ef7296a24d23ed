//! The sampler of every mistral.rs generation, plugged in as a logits processor (called
//! once per token, after mistral.rs applied the presence/frequency penalties).
//!
//! mistral.rs has one engine-wide RNG (no per-request seed), reads a missing temperature
//! as 1.0, and reports `log10` of raw logits as log-probabilities on its greedy path. So
//! the probe does the sampling itself — greedy, temperature, `top_p`, with a per-request
//! RNG (seeded when the request has a `seed`) — and hands mistral.rs back the token
//! probabilities with the chosen token set above all others. mistral.rs then runs greedy
//! and picks exactly that token, and the alternatives it reports carry true
//! probabilities, in order. The probe records the natural-log probability of each chosen
//! token and counts tokens exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[cfg(feature = "mistralrs")]
use mistralrs::{CustomLogitsProcessor, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Called once for every token sampled (live throughput and cancellation accounting).
pub type TokenCallback = std::sync::Arc<dyn Fn() + Send + Sync>;

/// Value given to the chosen token in the vector handed back to mistral.rs: above any
/// probability, so its greedy step picks it.
pub const CHOSEN_MARK: f32 = 2.0;

/// Most step records kept waiting for their chunk (tokens that produced no text).
#[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
const MAX_PENDING_RECORDS: usize = 256;

/// One sampled token: its id and natural-log probability (temperature 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRecord {
    /// Token id.
    pub token: u32,
    /// `ln p(token)` under the model's distribution.
    pub logprob: f32,
}

/// Samples, counts and records one generation's tokens.
pub struct SamplingProbe {
    generated: AtomicUsize,
    rng: Mutex<StdRng>,
    temperature: f64,
    top_p: f64,
    records: Option<Mutex<VecDeque<StepRecord>>>,
    on_token: Option<TokenCallback>,
    /// Context length at the last call: a second call on the same context is the
    /// engine sampling again under a grammar mask, not a new token.
    #[cfg_attr(not(feature = "mistralrs"), allow(dead_code))]
    last_context: std::sync::atomic::AtomicUsize,
}

impl SamplingProbe {
    /// A sampler at `temperature` (0 = greedy) and `top_p`, seeded with `seed` or from
    /// the OS. With `record`, every chosen token's log-probability is kept for the stream.
    pub fn new(temperature: f64, top_p: f64, seed: Option<u64>, record: bool) -> Self {
        Self {
            generated: AtomicUsize::new(0),
            rng: Mutex::new(match seed {
                Some(seed) => StdRng::seed_from_u64(seed),
                None => StdRng::from_os_rng(),
            }),
            temperature,
            top_p,
            records: record.then(|| Mutex::new(VecDeque::new())),
            on_token: None,
            last_context: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Also calls `callback` for every sampled token.
    pub fn with_callback(mut self, callback: Option<TokenCallback>) -> Self {
        self.on_token = callback;
        self
    }

    /// Tokens sampled so far, all choices together.
    pub fn generated(&self) -> usize {
        self.generated.load(Ordering::Relaxed)
    }

    /// Takes the record of `token` (the oldest one), dropping older records that no chunk
    /// claimed; returns the claimed record and the dropped ones (oldest first).
    pub fn claim(&self, token: u32) -> (Option<StepRecord>, Vec<StepRecord>) {
        let Some(records) = &self.records else {
            return (None, Vec::new());
        };
        let mut records = records.lock().unwrap_or_else(|e| e.into_inner());
        match records.iter().position(|r| r.token == token) {
            Some(pos) => {
                let skipped: Vec<StepRecord> = records.drain(..pos).collect();
                (records.pop_front(), skipped)
            }
            None => (None, Vec::new()),
        }
    }

    /// [`Self::pick`] without the work nobody reads: a greedy pick whose probabilities are
    /// not wanted (no logprobs) is the first largest finite logit — the token `pick`
    /// chooses, without a softmax over the vocabulary — and comes with no probabilities.
    /// A sampled pick without probabilities computes only the distribution it draws from
    /// (one softmax at the request's temperature, not a second one at temperature 1): the
    /// same draws, so the same token for the same seed.
    pub fn pick_token(&self, logits: &[f32], want_probs: bool) -> (usize, Vec<f32>) {
        if want_probs {
            return self.pick(logits);
        }
        if self.temperature <= 0.0 {
            return (argmax_finite(logits), Vec::new());
        }
        let dist = softmax(logits, self.temperature as f32);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        (nucleus_sample(&dist, self.top_p, &mut *rng), Vec::new())
    }

    /// Picks a token from raw logits; returns its index and the temperature-1 probabilities.
    pub fn pick(&self, logits: &[f32]) -> (usize, Vec<f32>) {
        let probs = softmax(logits, 1.0);
        if probs.is_empty() {
            return (0, probs);
        }
        let chosen = if self.temperature <= 0.0 {
            argmax(&probs)
        } else {
            let tempered;
            let dist = if (self.temperature - 1.0).abs() < 1e-9 {
                &probs
            } else {
                tempered = softmax(logits, self.temperature as f32);
                &tempered
            };
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            nucleus_sample(dist, self.top_p, &mut *rng)
        };
        (chosen, probs)
    }
}

fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let t = temperature.max(1e-5);
    let max = logits
        .iter()
        .copied()
        .filter(|l| l.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return vec![0.0; logits.len()];
    }
    let mut out: Vec<f32> = logits
        .iter()
        .map(|&l| {
            if l.is_finite() {
                ((l - max) / t).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f32 = out.iter().sum();
    if total > 0.0 {
        out.iter_mut().for_each(|p| *p /= total);
    }
    out
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// The first largest finite value (0 when there is none): the index `argmax` finds in
/// the softmax of `values`, whose order the softmax keeps.
pub(crate) fn argmax_finite(values: &[f32]) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map_or(0, |(i, _)| i)
}

/// Samples from the smallest set of most likely tokens whose mass reaches `top_p`,
/// walking them from the most likely. Only as much of the vocabulary is ordered as the
/// walk needs (selection, then a sort of that part; usually a few dozen tokens), not
/// all of it: the picks are those of a full sort. With `top_p` ≥ 1 the mass is the sum
/// of every probability.
fn nucleus_sample(probs: &[f32], top_p: f64, rng: &mut impl Rng) -> usize {
    let mut order: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
    if order.is_empty() {
        return argmax(probs);
    }
    let by_likelihood = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    // order[..sorted] holds the `sorted` most likely tokens, in order.
    let mut sorted = 0;
    let need = |order: &mut Vec<usize>, sorted: &mut usize, upto: usize| {
        if upto < *sorted {
            return;
        }
        let want = (upto + 1).max(*sorted * 4).max(64).min(order.len());
        if want < order.len() {
            order[*sorted..].select_nth_unstable_by(want - *sorted - 1, by_likelihood);
        }
        order[*sorted..want].sort_unstable_by(by_likelihood);
        *sorted = want;
    };
    let (kept, mass) = if top_p < 1.0 {
        let mut kept = 0;
        let mut mass = 0.0f64;
        while kept < order.len() {
            need(&mut order, &mut sorted, kept);
            mass += f64::from(probs[order[kept]]);
            kept += 1;
            if mass >= top_p {
                break;
            }
        }
        (kept, mass)
    } else {
        let mass: f64 = order.iter().map(|&i| f64::from(probs[i])).sum();
        (order.len(), mass)
    };
    let draw = rng.random::<f64>() * mass;
    let mut acc = 0.0f64;
    for k in 0..kept {
        need(&mut order, &mut sorted, k);
        acc += f64::from(probs[order[k]]);
        if draw < acc {
            return order[k];
        }
    }
    need(&mut order, &mut sorted, kept - 1);
    order[kept - 1]
}

/// How the greedy pick of a mistral.rs step is handed back to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handback {
    /// mistral.rs's own greedy step over the untouched logits picks this token (it is the
    /// only largest value and every value is finite): the logits go back as they came.
    Untouched(usize),
    /// Another token would win there (a tie it breaks the other way, a NaN or an
    /// infinity): the logits are copied with this token marked.
    Marked(usize),
}

/// The greedy pick of `logits` (the first largest finite value, as [`argmax_finite`]) and
/// whether mistral.rs's argmax — the *last* largest under `partial_cmp` — agrees, in one
/// pass over the vocabulary.
fn greedy_handback(logits: &[f32]) -> Handback {
    let mut best: Option<(usize, f32)> = None;
    let mut clean = true;
    let mut tied = false;
    for (i, &v) in logits.iter().enumerate() {
        if !v.is_finite() {
            clean = false;
            continue;
        }
        match best {
            Some((_, b)) if v < b => {}
            Some((_, b)) if v == b => tied = true,
            _ => {
                best = Some((i, v));
                tied = false;
            }
        }
    }
    let chosen = best.map_or(0, |(i, _)| i);
    if clean && !tied && best.is_some() {
        Handback::Untouched(chosen)
    } else {
        Handback::Marked(chosen)
    }
}

/// `logits` with `chosen` above every other value and no NaN or infinity left (mistral.rs's
/// argmax compares with `partial_cmp`, which a NaN would upset): its greedy step picks
/// `chosen`.
fn mark_chosen(mut logits: Vec<f32>, chosen: usize) -> Vec<f32> {
    for v in logits.iter_mut() {
        if !v.is_finite() {
            *v = f32::MIN;
        }
    }
    if let Some(v) = logits.get_mut(chosen) {
        *v = f32::INFINITY;
    }
    logits
}

#[cfg(feature = "mistralrs")]
impl SamplingProbe {
    /// A step whose probabilities nobody reads (no logprobs). Greedy: the logits are read
    /// where they lie (mistral.rs 0.8 hands its processors host F32 logits) and, in the
    /// usual case, handed back untouched — no copy, no softmax. Sampled: one softmax at
    /// the request's temperature, and the logits copied with the pick marked.
    fn apply_unrecorded(&self, logits: &Tensor) -> mistralrs::Result<Tensor> {
        if self.temperature <= 0.0 {
            let handback = {
                let (storage, layout) = logits.storage_and_layout();
                match (&*storage, layout.contiguous_offsets()) {
                    (candle_core::Storage::Cpu(cpu), Some((start, end))) => {
                        match cpu.as_slice::<f32>() {
                            Ok(values) => values.get(start..end).map(greedy_handback),
                            Err(_) => None,
                        }
                    }
                    _ => None,
                }
            };
            let handback = match handback {
                Some(h) => h,
                None => greedy_handback(&logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?),
            };
            return match handback {
                Handback::Untouched(_) => Ok(logits.clone()),
                Handback::Marked(chosen) => {
                    let values = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
                    self.handback(mark_chosen(values, chosen), logits)
                }
            };
        }
        let values: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
        let (chosen, _) = self.pick_token(&values, false);
        self.handback(mark_chosen(values, chosen), logits)
    }

    fn handback(&self, values: Vec<f32>, like: &Tensor) -> mistralrs::Result<Tensor> {
        let n = values.len();
        Tensor::from_vec(values, n, like.device())?.to_dtype(like.dtype())
    }
}

#[cfg(feature = "mistralrs")]
impl CustomLogitsProcessor for SamplingProbe {
    fn apply(&self, logits: &Tensor, context: &[u32]) -> mistralrs::Result<Tensor> {
        let resample = self.last_context.swap(context.len(), Ordering::Relaxed) == context.len();
        if resample {
            if let Some(records) = &self.records {
                records.lock().unwrap_or_else(|e| e.into_inner()).pop_back();
            }
        } else {
            self.generated.fetch_add(1, Ordering::Relaxed);
            if let Some(callback) = &self.on_token {
                callback();
            }
        }
        let Some(records) = &self.records else {
            return self.apply_unrecorded(logits);
        };
        // Logprobs asked for: mistral.rs reports its alternatives from what it is handed
        // back, so it gets the true probabilities, with the pick marked above them all.
        let values: Vec<f32> = logits.to_dtype(mistralrs::DType::F32)?.to_vec1()?;
        let (chosen, mut probs) = self.pick(&values);
        {
            let mut records = records.lock().unwrap_or_else(|e| e.into_inner());
            if records.len() >= MAX_PENDING_RECORDS {
                records.pop_front();
            }
            records.push_back(StepRecord {
                token: chosen as u32,
                logprob: probs
                    .get(chosen)
                    .map(|p| p.max(f32::MIN_POSITIVE).ln())
                    .unwrap_or(f32::MIN),
            });
        }
        if probs.is_empty() {
            return Ok(logits.clone());
        }
        probs[chosen] = CHOSEN_MARK;
        self.handback(probs, logits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect()
    }

    #[test]
    fn same_seed_same_picks_and_unseeded_varies() {
        let a = SamplingProbe::new(1.0, 1.0, Some(7), false);
        let b = SamplingProbe::new(1.0, 1.0, Some(7), false);
        let pa: Vec<usize> = (0..30).map(|_| a.pick(&logits()).0).collect();
        let pb: Vec<usize> = (0..30).map(|_| b.pick(&logits()).0).collect();
        assert_eq!(pa, pb);
        assert!(
            pa.iter().any(|&x| x != pa[0]),
            "sampling should vary: {pa:?}"
        );
    }

    /// The sampler before it ordered only what it walks: a sort of the whole vocabulary.
    fn nucleus_by_full_sort(probs: &[f32], top_p: f64, rng: &mut impl Rng) -> usize {
        let mut order: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] > 0.0).collect();
        if order.is_empty() {
            return argmax(probs);
        }
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
        let mut kept = 0;
        let mut mass = 0.0f64;
        for &i in &order {
            kept += 1;
            mass += f64::from(probs[i]);
            if mass >= top_p {
                break;
            }
        }
        let draw = rng.random::<f64>() * mass;
        let mut acc = 0.0f64;
        for &i in &order[..kept] {
            acc += f64::from(probs[i]);
            if draw < acc {
                return i;
            }
        }
        order[kept - 1]
    }

    #[test]
    fn ordering_only_the_walked_part_picks_as_a_full_sort() {
        let mut gen = StdRng::seed_from_u64(3);
        for case in 0..40 {
            // Vocabularies large and small, peaked and flat, with ties and zeros.
            let n = [5, 70, 1000, 49_152][case % 4];
            let sharp = [0.5f32, 2.0, 8.0][case % 3];
            let logits: Vec<f32> = (0..n)
                .map(|i| match i % 17 {
                    0 => f32::NEG_INFINITY,
                    1 => 1.0,
                    _ => gen.random::<f32>() * sharp * 4.0,
                })
                .collect();
            let probs = softmax(&logits, 1.0);
            for top_p in [0.05, 0.5, 0.9, 0.95, 0.999] {
                let (mut a, mut b) = (
                    StdRng::seed_from_u64(case as u64),
                    StdRng::seed_from_u64(case as u64),
                );
                for _ in 0..12 {
                    assert_eq!(
                        nucleus_sample(&probs, top_p, &mut a),
                        nucleus_by_full_sort(&probs, top_p, &mut b),
                        "n {n}, top_p {top_p}"
                    );
                }
            }
        }
    }

    #[test]
    fn without_a_nucleus_draws_follow_the_probabilities() {
        // top_p = 1: every token, its mass summed in vocabulary order (so a seed's picks
        // may differ from a full sort's where a draw falls within ~1e-7 of a boundary).
        let probs = [0.03f32, 0.5, 0.07, 0.25, 0.15];
        let mut rng = StdRng::seed_from_u64(11);
        let mut seen = [0usize; 5];
        let draws = 40_000;
        for _ in 0..draws {
            seen[nucleus_sample(&probs, 1.0, &mut rng)] += 1;
        }
        for (p, n) in probs.iter().zip(seen) {
            let share = n as f32 / draws as f32;
            assert!((share - p).abs() < 0.01, "{share} for {p}");
        }
    }

    #[test]
    fn a_greedy_pick_without_probabilities_is_the_same_token() {
        let mut gen = StdRng::seed_from_u64(5);
        for _ in 0..50 {
            let mut logits: Vec<f32> = (0..2000)
                .map(|_| gen.random::<f32>() * 30.0 - 10.0)
                .collect();
            logits[7] = f32::NEG_INFINITY;
            logits[8] = f32::NAN;
            let greedy = SamplingProbe::new(0.0, 1.0, None, false);
            let (fast, none) = greedy.pick_token(&logits, false);
            assert!(none.is_empty());
            assert_eq!(fast, greedy.pick(&logits).0);
            let (with, probs) = greedy.pick_token(&logits, true);
            assert_eq!((with, probs.len()), (fast, logits.len()));
        }
        let none = [f32::NEG_INFINITY; 4];
        let greedy = SamplingProbe::new(0.0, 1.0, None, false);
        assert_eq!(greedy.pick_token(&none, false).0, greedy.pick(&none).0);
        assert_eq!(greedy.pick_token(&[], false).0, 0);
    }

    /// mistral.rs 0.8.1's greedy step (`sampler.rs` `argmax_f32`): the last largest value
    /// under `partial_cmp`, a NaN comparing equal to everything.
    fn mistralrs_argmax(values: &[f32]) -> usize {
        values
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
            .map_or(0, |(i, _)| i)
    }

    #[test]
    fn what_is_handed_back_makes_mistralrs_pick_the_greedy_token() {
        let mut gen = StdRng::seed_from_u64(9);
        for case in 0..300 {
            let n = [1, 3, 50, 2000][case % 4];
            // Coarse values make ties common; some cases get NaNs and infinities.
            let mut logits: Vec<f32> = (0..n)
                .map(|_| (gen.random::<f32>() * 8.0).round() - 4.0)
                .collect();
            if case % 3 == 0 && n > 2 {
                logits[gen.random_range(0..n)] = f32::NAN;
                logits[gen.random_range(0..n)] = f32::INFINITY;
                logits[gen.random_range(0..n)] = f32::NEG_INFINITY;
            }
            let want = argmax_finite(&logits);
            let handed = match greedy_handback(&logits) {
                Handback::Untouched(chosen) => {
                    assert_eq!(chosen, want);
                    logits.clone()
                }
                Handback::Marked(chosen) => {
                    assert_eq!(chosen, want);
                    mark_chosen(logits.clone(), chosen)
                }
            };
            assert_eq!(mistralrs_argmax(&handed), want, "case {case}: {logits:?}");
        }
        // The usual case goes back untouched; ties, NaNs and infinities are marked.
        assert_eq!(greedy_handback(&[0.5, 2.0, -1.0]), Handback::Untouched(1));
        assert_eq!(greedy_handback(&[2.0, 1.0, 2.0]), Handback::Marked(0));
        assert_eq!(greedy_handback(&[1.0, f32::NAN, 0.0]), Handback::Marked(0));
        assert_eq!(
            greedy_handback(&[1.0, f32::INFINITY, 0.0]),
            Handback::Marked(0)
        );
        assert_eq!(
            greedy_handback(&[f32::NEG_INFINITY; 3]),
            Handback::Marked(0)
        );
        assert_eq!(greedy_handback(&[]), Handback::Marked(0));
    }

    #[test]
    fn a_sampled_pick_without_probabilities_draws_as_with_them() {
        let mut gen = StdRng::seed_from_u64(21);
        for (temperature, top_p) in [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (0.2, 1.0)] {
            let logits: Vec<f32> = (0..5000).map(|_| gen.random::<f32>() * 12.0).collect();
            let a = SamplingProbe::new(temperature, top_p, Some(4), false);
            let b = SamplingProbe::new(temperature, top_p, Some(4), false);
            for _ in 0..40 {
                let (fast, none) = a.pick_token(&logits, false);
                assert!(none.is_empty());
                assert_eq!(fast, b.pick(&logits).0, "t {temperature}, top_p {top_p}");
            }
        }
    }

    #[test]
    fn greedy_and_tiny_top_p_pick_the_best() {
        let l = vec![0.0, 5.0, 1.0, f32::NEG_INFINITY];
        assert_eq!(SamplingProbe::new(0.0, 1.0, None, false).pick(&l).0, 1);
        let p = SamplingProbe::new(1.0, 0.01, Some(1), false);
        for _ in 0..10 {
            assert_eq!(p.pick(&l).0, 1);
        }
    }

    #[test]
    fn probabilities_sum_to_one() {
        let (_, probs) = SamplingProbe::new(0.0, 1.0, None, false).pick(&logits());
        let sum: f32 = probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4);
    }

    #[cfg(feature = "mistralrs")]
    #[test]
    fn apply_without_logprobs_hands_greedy_logits_back_untouched() {
        let greedy = SamplingProbe::new(0.0, 1.0, None, false);
        let t = Tensor::new(&[1f32, 3.0, 2.0], &mistralrs::Device::Cpu).unwrap();
        let out: Vec<f32> = greedy.apply(&t, &[7]).unwrap().to_vec1().unwrap();
        assert_eq!(out, [1.0, 3.0, 2.0]);
        // A tie mistral.rs would break the other way: the first one is marked.
        let tie = Tensor::new(&[3f32, 1.0, 3.0], &mistralrs::Device::Cpu).unwrap();
        let out: Vec<f32> = greedy.apply(&tie, &[7, 1]).unwrap().to_vec1().unwrap();
        assert_eq!(mistralrs_argmax(&out), 0);
        // A view that does not start at the storage's beginning is read where it lies.
        let wide = Tensor::new(
            &[[9f32, 9.0, 9.0], [1.0, 3.0, 2.0]],
            &mistralrs::Device::Cpu,
        )
        .unwrap()
        .get(1)
        .unwrap();
        let out: Vec<f32> = greedy.apply(&wide, &[7, 1, 1]).unwrap().to_vec1().unwrap();
        assert_eq!(out, [1.0, 3.0, 2.0]);
        assert_eq!(greedy.generated(), 3);
        // Sampled: the pick is marked above the rest.
        let sampled = SamplingProbe::new(1.0, 0.01, Some(3), false);
        let out: Vec<f32> = sampled.apply(&t, &[7]).unwrap().to_vec1().unwrap();
        assert_eq!(mistralrs_argmax(&out), 1);
    }

    #[cfg(feature = "mistralrs")]
    #[test]
    fn apply_marks_the_choice_counts_and_records() {
        let p = SamplingProbe::new(0.0, 1.0, None, true);
        let t = Tensor::new(&[1f32, 3.0, 2.0], &mistralrs::Device::Cpu).unwrap();
        let out: Vec<f32> = p.apply(&t, &[7]).unwrap().to_vec1().unwrap();
        assert_eq!(out[1], CHOSEN_MARK);
        p.apply(&t, &[7, 1]).unwrap();
        assert_eq!(p.generated(), 2);
        // Sampling again on the same context (a grammar mask) is not a new token.
        p.apply(&t, &[7, 1]).unwrap();
        assert_eq!(p.generated(), 2);
        let (rec, skipped) = p.claim(1);
        assert_eq!(rec.unwrap().token, 1);
        assert!(rec.unwrap().logprob < 0.0 && rec.unwrap().logprob > -1.0);
        assert!(skipped.is_empty());
    }
}
