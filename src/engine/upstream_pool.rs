//! The members of an upstream pool and their health: which member takes the next
//! request (least outstanding requests per unit of weight, a recovered member ramping
//! up over its slow start), and when a member is ejected (a refused connection at once;
//! other failures — 5xx, timeouts, a broken stream — after a few in a row) and for how
//! long (doubling backoff, capped). An ejected member is tried again once its ejection
//! ends (half-open: one more failure ejects it again for longer) or as soon as an active
//! health check passes. Pure bookkeeping: no I/O here, the upstream engine does that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

/// One server of a pool, as configured.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Its base URL (`http://host:port/v1`).
    pub url: String,
    /// The model's id there.
    pub model: String,
    /// Bearer key sent to it.
    pub api_key: Option<String>,
    /// Share of the traffic relative to the other members.
    pub weight: u32,
    /// Requests it may run at once (none: no limit of its own).
    pub max_concurrent: Option<usize>,
}

/// How members are ejected and brought back.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Failures in a row (other than a refused connection) that eject a member.
    pub failures_to_eject: u32,
    /// First ejection; each later one in a row doubles it.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// A recovered member's share ramps from a tenth to all of its weight over this.
    pub slow_start: Duration,
    /// Requests that name their end user go to that user's member (rendezvous hashing
    /// by weight) while it can take them.
    pub affinity: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            failures_to_eject: 3,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(60),
            slow_start: Duration::from_secs(30),
            affinity: false,
        }
    }
}

/// Counts of one member, kept for the life of the process per (model, URL): a pool
/// rebuilt by a reload goes on counting where the old one stopped.
#[derive(Debug, Default)]
pub struct MemberCounts {
    /// Attempts sent to it.
    pub requests: AtomicU64,
    /// Attempts that failed on its side (connection, 5xx, timeout, broken stream).
    pub failures: AtomicU64,
    /// Times it was ejected.
    pub ejections: AtomicU64,
    /// Seconds (in microseconds) from sending to its first byte, summed.
    pub response_micros: AtomicU64,
}

/// Counts by (model, member URL).
type CountsByMember = HashMap<(String, String), Arc<MemberCounts>>;

static COUNTS: LazyLock<Mutex<CountsByMember>> = LazyLock::new(Default::default);

fn counts_for(model: &str, url: &str) -> Arc<MemberCounts> {
    COUNTS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((model.to_string(), url.to_string()))
        .or_default()
        .clone()
}

#[derive(Debug, Default)]
struct Health {
    failures_in_a_row: u32,
    ejected_until: Option<Instant>,
    ejections_in_a_row: u32,
    recovered_at: Option<Instant>,
    last_error: Option<String>,
}

/// One member and what is known of it.
#[derive(Debug)]
pub struct Member {
    /// How it is reached.
    pub config: MemberConfig,
    outstanding: AtomicUsize,
    health: Mutex<Health>,
    /// Its counts (shared with earlier pools of the same model and URL).
    pub counts: Arc<MemberCounts>,
}

/// Where a member stands, for `/v1/models` and the gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberStatus {
    /// Its base URL.
    pub url: String,
    /// `healthy`, `ejected` or `recovering` (slow start, or ejection over and not yet
    /// proven).
    pub state: &'static str,
    /// Requests it is running.
    pub outstanding: usize,
    /// Its configured weight.
    pub weight: u32,
    /// Seconds until its ejection ends.
    pub ejected_for_secs: Option<u64>,
    /// The last failure seen, if it is not healthy.
    pub last_error: Option<String>,
    /// Attempts sent to it (process lifetime).
    pub requests: u64,
    /// Attempts that failed on its side.
    pub failures: u64,
    /// Times it was ejected.
    pub ejections: u64,
    /// Microseconds to its first byte, summed over answered attempts.
    pub response_micros: u64,
}

/// A member's place taken for one attempt; dropping it gives the place back.
#[derive(Debug)]
pub struct Taken {
    members: Arc<Members>,
    /// Index of the member.
    pub index: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.members.members[self.index]
            .outstanding
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why no member could take a request.
#[derive(Debug, Clone, PartialEq)]
pub enum NoMember {
    /// Every member not yet tried is ejected; the soonest comes back after this long.
    AllEjected(Duration),
    /// Every healthy member runs its `max_concurrent`.
    AllBusy,
    /// Every member was tried.
    AllTried,
}

/// Weighted rendezvous score of `url` for `user`: `weight / -ln(h)` with `h` the pair's
/// hash in (0, 1); each user's highest-scoring member is theirs.
fn rendezvous(user: &str, url: &str, weight: f64) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (user, url).hash(&mut hasher);
    let h = (hasher.finish() as f64 + 1.0) / (u64::MAX as f64 + 2.0);
    weight / -h.ln()
}

/// The members of one pool.
#[derive(Debug)]
pub struct Members {
    members: Vec<Member>,
    policy: Policy,
    turn: AtomicUsize,
}

impl Members {
    /// A pool of `configs` for model `model` (its name here, for the counts).
    pub fn new(model: &str, configs: Vec<MemberConfig>, policy: Policy) -> Arc<Self> {
        Arc::new(Self {
            members: configs
                .into_iter()
                .map(|config| Member {
                    counts: counts_for(model, &config.url),
                    config,
                    outstanding: AtomicUsize::new(0),
                    health: Mutex::new(Health::default()),
                })
                .collect(),
            policy,
            turn: AtomicUsize::new(0),
        })
    }

    /// The members, in configured order.
    pub fn all(&self) -> &[Member] {
        &self.members
    }

    /// Members in the pool.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the pool has no member (never, once configured).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn health(&self, index: usize) -> std::sync::MutexGuard<'_, Health> {
        self.members[index]
            .health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Picks the member for the next attempt, skipping `tried`: the one with the fewest
    /// outstanding requests per unit of (slow-start ramped) weight, ties taken in turn.
    ///
    /// With session affinity on and a `user`, the member is the one with the highest
    /// weighted rendezvous score for that user among those that can take the request: the
    /// same one for every request of that user while it stays healthy, and only that
    /// user's requests move when it leaves.
    pub fn pick(
        self: &Arc<Self>,
        tried: &[usize],
        now: Instant,
        user: Option<&str>,
    ) -> Result<Taken, NoMember> {
        let user = user.filter(|_| self.policy.affinity);
        let count = self.members.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(f64, usize)> = None;
        let mut soonest: Option<Duration> = None;
        let mut busy = false;
        for k in 0..count {
            let i = (start + k) % count;
            if tried.contains(&i) {
                continue;
            }
            let member = &self.members[i];
            let ramp = {
                let h = self.health(i);
                if let Some(until) = h.ejected_until.filter(|u| *u > now) {
                    let left = until - now;
                    soonest = Some(soonest.map_or(left, |s| s.min(left)));
                    continue;
                }
                match h.recovered_at {
                    Some(at) if !self.policy.slow_start.is_zero() => {
                        let part = now.saturating_duration_since(at).as_secs_f64()
                            / self.policy.slow_start.as_secs_f64();
                        part.clamp(0.1, 1.0)
                    }
                    _ => 1.0,
                }
            };
            let outstanding = member.outstanding.load(Ordering::Acquire);
            if member
                .config
                .max_concurrent
                .is_some_and(|max| outstanding >= max)
            {
                busy = true;
                continue;
            }
            let weight = f64::from(member.config.weight.max(1));
            // Lower is better: outstanding per unit of weight, or the user's rendezvous rank.
            let score = match user {
                Some(user) => -rendezvous(user, &member.config.url, weight),
                None => (outstanding + 1) as f64 / (weight * ramp),
            };
            if best.is_none_or(|(b, _)| score < b) {
                best = Some((score, i));
            }
        }
        match best {
            Some((_, index)) => {
                let member = &self.members[index];
                member.outstanding.fetch_add(1, Ordering::AcqRel);
                member.counts.requests.fetch_add(1, Ordering::Relaxed);
                Ok(Taken {
                    members: self.clone(),
                    index,
                })
            }
            None if busy => Err(NoMember::AllBusy),
            None => match soonest {
                Some(wait) => Err(NoMember::AllEjected(wait)),
                None => Err(NoMember::AllTried),
            },
        }
    }

    /// Member `index` answered (its first byte came, or a health check passed): it is
    /// healthy again; one that was ejected starts its slow start.
    pub fn succeeded(&self, index: usize, now: Instant) {
        let mut h = self.health(index);
        h.failures_in_a_row = 0;
        if h.ejected_until.take().is_some() {
            h.ejections_in_a_row = 0;
            h.recovered_at = Some(now);
            tracing::info!(upstream = %self.members[index].config.url, "upstream member recovered");
        }
        h.last_error = None;
    }

    /// Records the time member `index` took to its first byte.
    pub fn responded_in(&self, index: usize, took: Duration) {
        self.members[index]
            .counts
            .response_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Member `index` failed a request (`refused`: its connection was refused, so it is
    /// down). In a pool of one there is nowhere else to go: it is never ejected.
    pub fn failed(&self, index: usize, error: &str, refused: bool, now: Instant) {
        self.members[index]
            .counts
            .failures
            .fetch_add(1, Ordering::Relaxed);
        self.note_failure(index, error, refused, now);
    }

    /// Member `index` failed its health check: ejected, unless it already is (its
    /// ejection is neither extended nor counted again while it lasts).
    pub fn check_failed(&self, index: usize, error: &str, now: Instant) {
        self.note_failure(index, error, true, now);
    }

    fn note_failure(&self, index: usize, error: &str, down: bool, now: Instant) {
        let member = &self.members[index];
        let mut h = self.health(index);
        h.last_error = Some(error.chars().take(300).collect());
        if h.ejected_until.is_some_and(|u| u > now) {
            return;
        }
        h.failures_in_a_row += 1;
        if self.members.len() < 2 {
            return;
        }
        // A member on probation (its ejection over, not yet proven) goes straight back.
        let probation = h.ejected_until.is_some();
        if down || probation || h.failures_in_a_row >= self.policy.failures_to_eject {
            let doubling = 2u32.saturating_pow(h.ejections_in_a_row.min(16));
            let length = self
                .policy
                .base_ejection
                .saturating_mul(doubling)
                .min(self.policy.max_ejection);
            h.ejections_in_a_row += 1;
            h.ejected_until = Some(now + length);
            h.recovered_at = None;
            member.counts.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %member.config.url, seconds = length.as_secs_f64(), error = %error, "upstream member ejected");
        }
    }

    /// Where every member stands.
    pub fn status(&self, now: Instant) -> Vec<MemberStatus> {
        (0..self.members.len())
            .map(|i| {
                let member = &self.members[i];
                let h = self.health(i);
                let ejected_for = h.ejected_until.and_then(|u| u.checked_duration_since(now));
                let ramping = h
                    .recovered_at
                    .is_some_and(|at| now.saturating_duration_since(at) < self.policy.slow_start);
                let state = match (ejected_for, h.ejected_until, ramping) {
                    (Some(_), _, _) => "ejected",
                    (None, Some(_), _) | (None, None, true) => "recovering",
                    _ => "healthy",
                };
                MemberStatus {
                    url: member.config.url.clone(),
                    state,
                    outstanding: member.outstanding.load(Ordering::Acquire),
                    weight: member.config.weight,
                    ejected_for_secs: ejected_for.map(|d| d.as_secs().max(1)),
                    last_error: h.last_error.clone().filter(|_| state != "healthy"),
                    requests: member.counts.requests.load(Ordering::Relaxed),
                    failures: member.counts.failures.load(Ordering::Relaxed),
                    ejections: member.counts.ejections.load(Ordering::Relaxed),
                    response_micros: member.counts.response_micros.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, weights: &[u32], max: Option<usize>) -> Arc<Members> {
        let configs = weights
            .iter()
            .enumerate()
            .map(|(i, w)| MemberConfig {
                url: format!("http://m{i}/v1"),
                model: "x".into(),
                api_key: None,
                weight: *w,
                max_concurrent: max,
            })
            .collect();
        Members::new(name, configs, Policy::default())
    }

    #[test]
    fn least_outstanding_per_weight_wins() {
        let p = pool("lo", &[1, 3], None);
        let now = Instant::now();
        let mut held = Vec::new();
        let mut counts = [0usize; 2];
        for _ in 0..8 {
            let t = p.pick(&[], now, None).unwrap();
            counts[t.index] += 1;
            held.push(t);
        }
        // Weight 3 takes three times the requests of weight 1.
        assert_eq!(counts, [2, 6]);
        drop(held);
        assert!(p
            .all()
            .iter()
            .all(|m| m.outstanding.load(Ordering::Acquire) == 0));
    }

    #[test]
    fn a_refused_member_is_ejected_at_once_and_comes_back_after_backoff() {
        let p = pool("ej", &[1, 1], None);
        let now = Instant::now();
        p.failed(0, "connection refused", true, now);
        for _ in 0..4 {
            assert_eq!(p.pick(&[], now, None).unwrap().index, 1);
        }
        assert_eq!(p.status(now)[0].state, "ejected");
        assert_eq!(p.status(now)[0].ejected_for_secs, Some(2));
        // Ejection over: on probation; one more failure ejects it for twice as long.
        let later = now + Duration::from_secs(3);
        assert_eq!(p.status(later)[0].state, "recovering");
        p.failed(0, "HTTP 500", false, later);
        assert_eq!(p.status(later)[0].ejected_for_secs, Some(4));
        // A success (a health check) brings it back, ramping up.
        p.succeeded(0, later);
        let s = p.status(later);
        assert_eq!(s[0].state, "recovering");
        assert_eq!(s[0].ejections, 2);
        assert_eq!(
            p.status(later + Duration::from_secs(31))[0].state,
            "healthy"
        );
    }

    #[test]
    fn failed_checks_while_ejected_neither_extend_nor_count() {
        let p = pool("checks", &[1, 1], None);
        let now = Instant::now();
        p.check_failed(0, "health check: cannot connect", now);
        p.check_failed(
            0,
            "health check: cannot connect",
            now + Duration::from_secs(1),
        );
        let s = &p.status(now + Duration::from_secs(1))[0];
        assert_eq!(
            (s.ejections, s.failures, s.ejected_for_secs),
            (1, 0, Some(1))
        );
        // Past the ejection a failed check ejects it again, for twice as long.
        p.check_failed(0, "health check: HTTP 500", now + Duration::from_secs(2));
        let s = &p.status(now + Duration::from_secs(2))[0];
        assert_eq!((s.ejections, s.ejected_for_secs), (2, Some(4)));
    }

    #[test]
    fn other_failures_eject_after_three_in_a_row() {
        let p = pool("three", &[1, 1], None);
        let now = Instant::now();
        p.failed(0, "HTTP 502", false, now);
        p.failed(0, "HTTP 502", false, now);
        p.succeeded(0, now);
        p.failed(0, "HTTP 502", false, now);
        p.failed(0, "HTTP 502", false, now);
        assert_eq!(p.status(now)[0].state, "healthy");
        p.failed(0, "HTTP 502", false, now);
        assert_eq!(p.status(now)[0].state, "ejected");
    }

    #[test]
    fn all_ejected_says_when_to_retry_and_a_pool_of_one_never_ejects() {
        let p = pool("all", &[1, 1], None);
        let now = Instant::now();
        p.failed(0, "down", true, now);
        p.failed(1, "down", true, now);
        assert_eq!(
            p.pick(&[], now, None).unwrap_err(),
            NoMember::AllEjected(Duration::from_secs(2))
        );
        assert_eq!(p.pick(&[0, 1], now, None).unwrap_err(), NoMember::AllTried);
        let one = pool("one", &[1], None);
        one.failed(0, "down", true, now);
        assert_eq!(one.pick(&[], now, None).unwrap().index, 0);
    }

    #[test]
    fn max_concurrent_and_slow_start_bound_a_member() {
        let p = pool("busy", &[1, 1], Some(1));
        let now = Instant::now();
        let a = p.pick(&[], now, None).unwrap();
        let b = p.pick(&[], now, None).unwrap();
        assert_ne!(a.index, b.index);
        assert_eq!(p.pick(&[], now, None).unwrap_err(), NoMember::AllBusy);
        drop((a, b));
        // Member 0 just recovered: at a tenth of its weight it takes one request in
        // eleven against a full member.
        let q = pool("ramp", &[10, 10], None);
        q.failed(0, "down", true, now);
        q.succeeded(0, now);
        let mut held = Vec::new();
        let mut to_new = 0;
        for _ in 0..22 {
            let t = q.pick(&[], now, None).unwrap();
            to_new += usize::from(t.index == 0);
            held.push(t);
        }
        assert_eq!(to_new, 2);
    }

    #[test]
    fn a_users_requests_stay_on_one_member_while_it_is_healthy() {
        let configs: Vec<MemberConfig> = (0..3)
            .map(|i| MemberConfig {
                url: format!("http://s{i}/v1"),
                model: "x".into(),
                api_key: None,
                weight: 1,
                max_concurrent: None,
            })
            .collect();
        let policy = Policy {
            affinity: true,
            ..Policy::default()
        };
        let p = Members::new("affinity", configs, policy);
        let now = Instant::now();
        let homes: Vec<usize> = (0..30)
            .map(|u| p.pick(&[], now, Some(&format!("user-{u}"))).unwrap().index)
            .collect();
        // Held places do not move a user (affinity beats load).
        let held: Vec<Taken> = (0..5)
            .map(|_| p.pick(&[], now, Some("user-0")).unwrap())
            .collect();
        assert!(held.iter().all(|t| t.index == homes[0]));
        drop(held);
        // Users spread over the members.
        for m in 0..3 {
            assert!(homes.contains(&m), "{homes:?}");
        }
        // A member ejected: only its users move.
        p.failed(homes[0], "down", true, now);
        for (u, home) in homes.iter().enumerate() {
            let now_at = p.pick(&[], now, Some(&format!("user-{u}"))).unwrap().index;
            if *home == homes[0] {
                assert_ne!(now_at, *home);
            } else {
                assert_eq!(now_at, *home);
            }
        }
    }

    #[test]
    fn counts_outlive_a_rebuilt_pool() {
        let now = Instant::now();
        let first = pool("kept", &[1, 1], None);
        drop(first.pick(&[], now, None).unwrap());
        let second = pool("kept", &[1, 1], None);
        drop(second.pick(&[], now, None).unwrap());
        let total: u64 = second.status(now).iter().map(|s| s.requests).sum();
        assert_eq!(total, 2);
    }
}
