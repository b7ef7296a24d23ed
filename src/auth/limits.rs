//! A named key's limits: requests per minute, tokens per minute, requests at once and
//! tokens per UTC day. Minutes are sliding windows of 60 one-second buckets (bounded
//! memory whatever the request rate). A request is admitted (rpm, max_concurrent) when
//! it arrives and reserves tokens once its body is read (tpm, daily_tokens): its own
//! upper estimate, or the rest of the budget when it names no maximum, so that requests
//! running at once cannot together pass a token limit by more than one request's error
//! in its estimate. It is charged what it really used when it ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::NamedKeySettings;

/// Seconds in a window.
const WINDOW: usize = 60;

/// A limit a request was refused by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The setting's name: `rpm`, `tpm`, `max_concurrent`, `daily_tokens`.
    pub limit: &'static str,
    /// Its value.
    pub value: u64,
    /// When a request would be admitted again.
    pub retry_after: Duration,
}

/// Counts per second over the last minute.
#[derive(Debug, Default)]
struct Window {
    /// Per bucket: the second it holds (since the limiter's start) and its count.
    buckets: Vec<(u64, u64)>,
}

impl Window {
    fn new() -> Self {
        Self {
            buckets: vec![(u64::MAX, 0); WINDOW],
        }
    }

    fn live(&self, second: u64) -> impl Iterator<Item = &(u64, u64)> {
        self.buckets
            .iter()
            .filter(move |(s, _)| *s != u64::MAX && *s + (WINDOW as u64) > second)
    }

    fn total(&self, second: u64) -> u64 {
        self.live(second).map(|(_, n)| n).sum()
    }

    fn add(&mut self, second: u64, n: u64) {
        let bucket = &mut self.buckets[(second % WINDOW as u64) as usize];
        if bucket.0 != second {
            *bucket = (second, 0);
        }
        bucket.1 += n;
    }

    /// Seconds until the total drops to `target` or below (at most a minute).
    fn seconds_until(&self, second: u64, target: u64) -> u64 {
        let mut live: Vec<(u64, u64)> = self.live(second).copied().collect();
        live.sort_unstable();
        let mut total: u64 = live.iter().map(|(_, n)| n).sum();
        for (s, n) in live {
            if total <= target {
                break;
            }
            total -= n;
            if total <= target {
                return (s + WINDOW as u64).saturating_sub(second).max(1);
            }
        }
        1
    }
}

#[derive(Debug)]
struct State {
    requests: Window,
    tokens: Window,
    /// Tokens reserved by requests still running.
    reserved: u64,
    running: u64,
    /// The UTC day `day_tokens` counts.
    day: u64,
    day_tokens: u64,
}

/// One key's limits and what it used.
#[derive(Debug)]
pub struct Limiter {
    /// The key's name.
    pub name: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    max_concurrent: Option<u64>,
    daily_tokens: Option<u64>,
    started: Instant,
    state: Mutex<State>,
}

/// What a time is to a limiter: seconds since its start, and the UTC day.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// The moment.
    pub at: Instant,
    /// Days since the Unix epoch (UTC).
    pub day: u64,
    /// Seconds left in that day.
    pub day_left: u64,
}

impl Now {
    /// The current moment.
    pub fn current() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Self {
            at: Instant::now(),
            day: unix / 86_400,
            day_left: 86_400 - unix % 86_400,
        }
    }
}

/// What a key uses at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct LiveUse {
    /// Requests admitted in the last minute.
    pub requests_last_minute: u64,
    /// Tokens charged in the last minute (requests that ended).
    pub tokens_last_minute: u64,
    /// Requests running now.
    pub running: u64,
    /// Tokens charged today (UTC), this run and, from the store, before it.
    pub tokens_today: u64,
}

/// The numbers for OpenAI's `x-ratelimit-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `rpm`, its remaining requests, seconds until one more is free.
    pub requests: Option<(u64, u64, u64)>,
    /// `tpm`, its remaining tokens, seconds until the budget is whole again.
    pub tokens: Option<(u64, u64, u64)>,
}

impl Limiter {
    /// The limiter of one named key.
    pub fn new(key: &NamedKeySettings) -> Self {
        Self {
            name: key.name.clone(),
            rpm: key.rpm.map(u64::from),
            tpm: key.tpm,
            max_concurrent: key.max_concurrent.map(u64::from),
            daily_tokens: key.daily_tokens,
            started: Instant::now(),
            state: Mutex::new(State {
                requests: Window::new(),
                tokens: Window::new(),
                reserved: 0,
                running: 0,
                day: 0,
                day_tokens: 0,
            }),
        }
    }

    /// Whether any limit is set.
    pub fn limits_anything(&self) -> bool {
        self.rpm.is_some()
            || self.tpm.is_some()
            || self.max_concurrent.is_some()
            || self.daily_tokens.is_some()
    }

    fn second(&self, now: Now) -> u64 {
        now.at.saturating_duration_since(self.started).as_secs()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request (rpm, max_concurrent): it counts from now, and runs until the
    /// lease is dropped.
    pub fn admit(self: &Arc<Self>, now: Now) -> Result<Lease, Refusal> {
        let second = self.second(now);
        let mut state = self.state();
        if let Some(max) = self.max_concurrent {
            if state.running >= max {
                return Err(Refusal {
                    limit: "max_concurrent",
                    value: max,
                    retry_after: Duration::from_secs(1),
                });
            }
        }
        if let Some(rpm) = self.rpm {
            if state.requests.total(second) >= rpm {
                return Err(Refusal {
                    limit: "rpm",
                    value: rpm,
                    retry_after: Duration::from_secs(state.requests.seconds_until(second, rpm - 1)),
                });
            }
        }
        state.requests.add(second, 1);
        state.running += 1;
        Ok(Lease {
            limiter: self.clone(),
            reserved: 0,
            charge: None,
        })
    }

    /// Starts today's count at `tokens`: what the usage store says the key used today
    /// before a restart, so a restart does not hand out a second `daily_tokens`.
    pub fn seed_today(&self, tokens: u64, now: Now) {
        let mut state = self.state();
        state.day = now.day;
        state.day_tokens = tokens;
    }

    /// What the key uses now (for `/admin/keys`; counted only while it has a limit).
    pub fn live(&self, now: Now) -> LiveUse {
        let second = self.second(now);
        let mut state = self.state();
        Self::roll_day(&mut state, now);
        LiveUse {
            requests_last_minute: state.requests.total(second),
            tokens_last_minute: state.tokens.total(second),
            running: state.running,
            tokens_today: state.day_tokens,
        }
    }

    /// What is left, for the response's headers.
    pub fn snapshot(&self, now: Now) -> Snapshot {
        let second = self.second(now);
        let mut state = self.state();
        Self::roll_day(&mut state, now);
        let requests = self.rpm.map(|rpm| {
            let used = state.requests.total(second);
            let reset = if used == 0 {
                0
            } else {
                state.requests.seconds_until(second, used - 1)
            };
            (rpm, rpm.saturating_sub(used), reset)
        });
        let tokens = self.tpm.map(|tpm| {
            let used = state.tokens.total(second) + state.reserved;
            let reset = if used == 0 {
                0
            } else {
                state.tokens.seconds_until(second, 0)
            };
            (tpm, tpm.saturating_sub(used), reset)
        });
        Snapshot { requests, tokens }
    }

    fn roll_day(state: &mut State, now: Now) {
        if state.day != now.day {
            state.day = now.day;
            state.day_tokens = 0;
        }
    }
}

/// A running request of a key: holds its concurrency place and token reservation.
#[derive(Debug)]
pub struct Lease {
    limiter: Arc<Limiter>,
    reserved: u64,
    /// Tokens used and when, once finished.
    charge: Option<(u64, Now)>,
}

impl Lease {
    /// The key's limiter.
    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.limiter
    }

    /// Reserves tokens for the request (tpm, daily_tokens): `estimate` when it has an
    /// upper bound, else the rest of the budget. Refused when nothing is left.
    pub fn reserve(&mut self, estimate: Option<u64>, now: Now) -> Result<(), Refusal> {
        let limiter = &self.limiter;
        if limiter.tpm.is_none() && limiter.daily_tokens.is_none() {
            return Ok(());
        }
        let second = limiter.second(now);
        let mut state = limiter.state();
        Limiter::roll_day(&mut state, now);
        let mut room = u64::MAX;
        if let Some(tpm) = limiter.tpm {
            let used = state.tokens.total(second) + state.reserved;
            if used >= tpm {
                let retry = if state.tokens.total(second) >= tpm {
                    state
                        .tokens
                        .seconds_until(second, tpm.saturating_sub(state.reserved + 1))
                } else {
                    1
                };
                return Err(Refusal {
                    limit: "tpm",
                    value: tpm,
                    retry_after: Duration::from_secs(retry),
                });
            }
            room = room.min(tpm - used);
        }
        if let Some(daily) = limiter.daily_tokens {
            let used = state.day_tokens + state.reserved;
            if used >= daily {
                return Err(Refusal {
                    limit: "daily_tokens",
                    value: daily,
                    retry_after: Duration::from_secs(if state.day_tokens >= daily {
                        now.day_left.max(1)
                    } else {
                        1
                    }),
                });
            }
            room = room.min(daily - used);
        }
        let take = estimate.map_or(room, |e| e.clamp(1, room.max(1)));
        state.reserved += take;
        self.reserved += take;
        Ok(())
    }

    /// Ends the request, charging the tokens it used.
    pub fn finish(mut self, tokens: u64, now: Now) {
        self.charge = Some((tokens, now));
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let limiter = &self.limiter;
        let mut state = limiter.state();
        if let Some((tokens, now)) = self.charge.take() {
            Limiter::roll_day(&mut state, now);
            state.tokens.add(limiter.second(now), tokens);
            state.day_tokens += tokens;
        }
        state.reserved -= self.reserved.min(state.reserved);
        state.running = state.running.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(limits: serde_json::Value) -> Arc<Limiter> {
        let mut settings = serde_json::json!({"name": "k", "key": "secret-key"});
        settings
            .as_object_mut()
            .unwrap()
            .extend(limits.as_object().unwrap().clone());
        Arc::new(Limiter::new(&serde_json::from_value(settings).unwrap()))
    }

    fn at(limiter: &Limiter, secs: u64) -> Now {
        Now {
            at: limiter.started + Duration::from_secs(secs),
            day: 1,
            day_left: 1000,
        }
    }

    #[test]
    fn rpm_slides_over_the_minute() {
        let l = key(serde_json::json!({"rpm": 2}));
        let a = l.admit(at(&l, 0)).unwrap();
        let b = l.admit(at(&l, 30)).unwrap();
        drop((a, b));
        let refused = l.admit(at(&l, 59)).unwrap_err();
        assert_eq!((refused.limit, refused.value), ("rpm", 2));
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(l.admit(at(&l, 60)).is_ok(), "the first left the window");
        assert_eq!(l.snapshot(at(&l, 61)).requests, Some((2, 0, 29)));
    }

    #[test]
    fn max_concurrent_counts_running_requests() {
        let l = key(serde_json::json!({"max_concurrent": 1}));
        let a = l.admit(at(&l, 0)).unwrap();
        assert_eq!(l.admit(at(&l, 0)).unwrap_err().limit, "max_concurrent");
        a.finish(5, at(&l, 1));
        let b = l.admit(at(&l, 1)).unwrap();
        drop(b);
        assert!(l.admit(at(&l, 1)).is_ok());
    }

    #[test]
    fn token_reservations_bound_what_runs_at_once() {
        let l = key(serde_json::json!({"tpm": 100}));
        let mut a = l.admit(at(&l, 0)).unwrap();
        a.reserve(Some(60), at(&l, 0)).unwrap();
        let mut b = l.admit(at(&l, 0)).unwrap();
        b.reserve(Some(60), at(&l, 0)).unwrap();
        // 120 reserved: nothing left, whatever the estimate.
        let mut c = l.admit(at(&l, 0)).unwrap();
        let refused = c.reserve(Some(1), at(&l, 0)).unwrap_err();
        assert_eq!((refused.limit, refused.retry_after.as_secs()), ("tpm", 1));
        drop(c);
        a.finish(10, at(&l, 1));
        b.finish(10, at(&l, 2));
        // No maximum named: it takes the rest of the budget, and the next waits.
        let mut d = l.admit(at(&l, 3)).unwrap();
        d.reserve(None, at(&l, 3)).unwrap();
        let mut e = l.admit(at(&l, 3)).unwrap();
        assert!(e.reserve(Some(1), at(&l, 3)).is_err());
        drop(e);
        d.finish(70, at(&l, 4));
        // 90 used: room for one more; at 100, refused until the first leaves the window.
        let mut f = l.admit(at(&l, 5)).unwrap();
        f.reserve(Some(50), at(&l, 5)).unwrap();
        f.finish(10, at(&l, 5));
        let mut g = l.admit(at(&l, 6)).unwrap();
        let refused = g.reserve(Some(1), at(&l, 6)).unwrap_err();
        assert_eq!(refused.retry_after.as_secs(), 55);
        assert_eq!(l.snapshot(at(&l, 6)).tokens.unwrap().1, 0);
    }

    #[test]
    fn daily_tokens_reset_at_midnight() {
        let l = key(serde_json::json!({"daily_tokens": 10}));
        let mut a = l.admit(at(&l, 0)).unwrap();
        a.reserve(Some(4), at(&l, 0)).unwrap();
        a.finish(12, at(&l, 0));
        let mut b = l.admit(at(&l, 1)).unwrap();
        let refused = b.reserve(Some(1), at(&l, 1)).unwrap_err();
        assert_eq!(
            (refused.limit, refused.retry_after.as_secs()),
            ("daily_tokens", 1000)
        );
        let tomorrow = Now {
            day: 2,
            ..at(&l, 2)
        };
        assert!(b.reserve(Some(1), tomorrow).is_ok());
    }

    #[test]
    fn a_seeded_day_counts_what_was_used_before_a_restart() {
        let l = key(serde_json::json!({"daily_tokens": 10, "rpm": 5}));
        l.seed_today(9, at(&l, 0));
        let mut a = l.admit(at(&l, 0)).unwrap();
        a.reserve(Some(1), at(&l, 0)).unwrap();
        a.finish(1, at(&l, 0));
        let live = l.live(at(&l, 1));
        assert_eq!(
            (live.tokens_today, live.requests_last_minute, live.running),
            (10, 1, 0)
        );
        let mut b = l.admit(at(&l, 1)).unwrap();
        assert_eq!(
            b.reserve(Some(1), at(&l, 1)).unwrap_err().limit,
            "daily_tokens"
        );
    }
}
