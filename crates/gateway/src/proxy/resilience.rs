//! Per-route protection of the proxy path: a circuit breaker, a bulkhead and a rate limit.
//!
//! - The **breaker** counts the last `window` calls. When at least `min_calls` were seen and
//!   the share of failures (5xx, transport errors, timeouts) or of slow calls reaches its
//!   threshold, it opens: calls fail fast with `503 circuit_open` and `Retry-After` for
//!   `open_ms`. Then it lets `half_open_probes` calls through; if they all succeed it closes,
//!   if one fails it opens again.
//! - The **bulkhead** bounds the calls in flight to a route's upstream; a call waits at most
//!   `max_wait_ms` for a slot, then gets `503 bulkhead_full`. A slow upstream cannot take all
//!   the gateway's capacity from the others.
//! - The **rate limit** is a token bucket per client key (the client IP, a header, or the
//!   bearer token's user): `requests` per `window_s`, answered past the limit with `429`,
//!   `Retry-After`, and the `RateLimit-Policy` / `RateLimit` fields of
//!   draft-ietf-httpapi-ratelimit-headers-10 on every answer of the route.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Client keys a rate limiter remembers; past this the oldest half is forgotten.
pub const MAX_RATE_KEYS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    #[serde(default = "d_window")]
    pub window: usize,
    #[serde(default = "d_min_calls")]
    pub min_calls: usize,
    /// Failure share (0..1] that opens the breaker.
    #[serde(default = "d_rate")]
    pub failure_rate: f64,
    /// A call slower than this counts as slow.
    #[serde(default = "d_slow_ms")]
    pub slow_call_ms: u64,
    /// Slow-call share (0..1] that opens the breaker.
    #[serde(default = "d_slow_rate")]
    pub slow_rate: f64,
    #[serde(default = "d_open_ms")]
    pub open_ms: u64,
    #[serde(default = "d_probes")]
    pub half_open_probes: usize,
}

fn d_window() -> usize {
    20
}
fn d_min_calls() -> usize {
    10
}
fn d_rate() -> f64 {
    0.5
}
fn d_slow_ms() -> u64 {
    5_000
}
fn d_slow_rate() -> f64 {
    1.0
}
fn d_open_ms() -> u64 {
    5_000
}
fn d_probes() -> usize {
    3
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConfig {
    pub max_concurrent: usize,
    #[serde(default)]
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests allowed per window and key.
    pub requests: u32,
    pub window_s: u32,
    /// `ip`, `header:NAME` or `user`.
    #[serde(default = "d_key")]
    pub key: String,
}

fn d_key() -> String {
    "ip".into()
}

impl BreakerConfig {
    pub fn validate(&self) -> Result<(), String> {
        let share = |x: f64| x > 0.0 && x <= 1.0;
        if self.window == 0 || self.window > 10_000 || self.min_calls > self.window {
            return Err("breaker: window must be 1..=10000 and min_calls at most window".into());
        }
        if !share(self.failure_rate) || !share(self.slow_rate) {
            return Err("breaker: failure_rate and slow_rate are shares in (0, 1]".into());
        }
        if self.open_ms == 0 || self.half_open_probes == 0 {
            return Err("breaker: open_ms and half_open_probes must be positive".into());
        }
        Ok(())
    }
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.requests == 0 || self.window_s == 0 || self.window_s > 86_400 {
            return Err("rate_limit: requests > 0 and window_s in 1..=86400".into());
        }
        if self.key != "ip" && self.key != "user" && !self.key.starts_with("header:") {
            return Err("rate_limit: key is \"ip\", \"user\" or \"header:NAME\"".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Extra attempts after the first, at most 5.
    pub attempts: u32,
    #[serde(default = "d_retry_base")]
    pub base_ms: u64,
    #[serde(default = "d_retry_max")]
    pub max_ms: u64,
    /// Retries allowed per request sent, over time (e.g. 0.2: at most one retry per five
    /// requests, plus a small reserve), so retries cannot multiply an outage.
    #[serde(default = "d_retry_ratio")]
    pub budget_ratio: f64,
}

fn d_retry_base() -> u64 {
    10
}
fn d_retry_max() -> u64 {
    200
}
fn d_retry_ratio() -> f64 {
    0.2
}

impl RetryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts > 5 || self.base_ms > self.max_ms || self.max_ms > 10_000 {
            return Err("retry: attempts at most 5, base_ms <= max_ms <= 10000".into());
        }
        if !(self.budget_ratio > 0.0 && self.budget_ratio <= 1.0) {
            return Err("retry: budget_ratio is a share in (0, 1]".into());
        }
        Ok(())
    }
}

/// Retries a route may still spend: every request deposits `budget_ratio`, every retry takes
/// one. Starts with (and never holds more than) a small reserve.
pub struct RetryBudget {
    ratio: f64,
    tokens: Mutex<f64>,
}

/// Retries the budget holds at most (and starts with).
pub const RETRY_RESERVE: f64 = 10.0;

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        Self {
            ratio,
            tokens: Mutex::new(RETRY_RESERVE),
        }
    }

    pub fn deposit(&self) {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        *t = (*t + self.ratio).min(RETRY_RESERVE);
    }

    /// Takes one retry if the budget has one.
    pub fn withdraw(&self) -> bool {
        let mut t = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerMode {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: usize, succeeded: usize },
}

impl BreakerMode {
    pub fn name(&self) -> &'static str {
        match self {
            BreakerMode::Closed => "closed",
            BreakerMode::Open { .. } => "open",
            BreakerMode::HalfOpen { .. } => "half_open",
        }
    }
}

struct BreakerState {
    mode: BreakerMode,
    /// (failed, slow) of the last calls, newest last.
    window: VecDeque<(bool, bool)>,
    opened: u64,
}

pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

/// Admission to a call through a breaker; report its outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Closed,
    Probe,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Mutex::new(BreakerState {
                mode: BreakerMode::Closed,
                window: VecDeque::new(),
                opened: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn mode(&self) -> BreakerMode {
        self.lock().mode
    }

    pub fn times_opened(&self) -> u64 {
        self.lock().opened
    }

    /// Lets a call through, or says how long until the breaker may let one through.
    pub fn admit(&self, now: Instant) -> Result<Admission, Duration> {
        let mut s = self.lock();
        match s.mode {
            BreakerMode::Closed => Ok(Admission::Closed),
            BreakerMode::Open { until } if now < until => Err(until - now),
            BreakerMode::Open { .. } => {
                s.mode = BreakerMode::HalfOpen {
                    in_flight: 1,
                    succeeded: 0,
                };
                Ok(Admission::Probe)
            }
            BreakerMode::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight + succeeded < self.config.half_open_probes {
                    s.mode = BreakerMode::HalfOpen {
                        in_flight: in_flight + 1,
                        succeeded,
                    };
                    Ok(Admission::Probe)
                } else {
                    Err(Duration::from_millis(100))
                }
            }
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, admission: Admission, failed: bool, elapsed: Duration, now: Instant) {
        let slow = elapsed >= Duration::from_millis(self.config.slow_call_ms);
        let mut s = self.lock();
        let open_until = now + Duration::from_millis(self.config.open_ms);
        match (admission, s.mode) {
            (
                Admission::Probe,
                BreakerMode::HalfOpen {
                    in_flight,
                    succeeded,
                },
            ) => {
                if failed || slow {
                    s.mode = BreakerMode::Open { until: open_until };
                    s.opened += 1;
                } else if succeeded + 1 >= self.config.half_open_probes {
                    s.mode = BreakerMode::Closed;
                    s.window.clear();
                } else {
                    s.mode = BreakerMode::HalfOpen {
                        in_flight: in_flight.saturating_sub(1),
                        succeeded: succeeded + 1,
                    };
                }
            }
            (Admission::Closed, BreakerMode::Closed) => {
                s.window.push_back((failed, slow));
                while s.window.len() > self.config.window {
                    s.window.pop_front();
                }
                let n = s.window.len();
                if n >= self.config.min_calls {
                    let failures = s.window.iter().filter(|(f, _)| *f).count() as f64;
                    let slows = s.window.iter().filter(|(_, sl)| *sl).count() as f64;
                    if failures / n as f64 >= self.config.failure_rate
                        || slows / n as f64 >= self.config.slow_rate
                    {
                        s.mode = BreakerMode::Open { until: open_until };
                        s.opened += 1;
                        s.window.clear();
                    }
                }
            }
            // A late answer from before the breaker changed mode: its moment has passed.
            _ => {}
        }
    }
}

/// Keeps a map bounded: when it holds `max` entries and `key` is new, the older half (by
/// `last_used`) is dropped.
pub fn make_room<V>(
    map: &mut HashMap<String, V>,
    key: &str,
    max: usize,
    last_used: impl Fn(&V) -> Instant,
) {
    if map.len() < max || map.contains_key(key) {
        return;
    }
    let mut by_age: Vec<(Instant, String)> =
        map.iter().map(|(k, v)| (last_used(v), k.clone())).collect();
    by_age.sort();
    for (_, k) in by_age.into_iter().take(max / 2) {
        map.remove(&k);
    }
}

/// A token bucket per client key.
pub struct RateLimiter {
    pub config: RateLimitConfig,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// The outcome of asking the rate limiter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Requests left in the current window for this key.
    pub remaining: u32,
    /// Seconds until the bucket is full again (the draft's `t`).
    pub reset_s: u32,
    /// Seconds until one more request is allowed, when refused.
    pub retry_after_s: u32,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &str, now: Instant) -> RateDecision {
        let capacity = self.config.requests as f64;
        let per_sec = capacity / self.config.window_s as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // The keys quiet longest have full buckets anyway: forgetting them changes nothing.
        make_room(&mut buckets, key, MAX_RATE_KEYS, |(_, t)| *t);
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(capacity);
        *at = now;
        let allowed = *tokens >= 1.0;
        if allowed {
            *tokens -= 1.0;
        }
        let reset_s = ((capacity - *tokens) / per_sec).ceil() as u32;
        let retry_after_s = if allowed {
            0
        } else {
            ((1.0 - *tokens) / per_sec).ceil().max(1.0) as u32
        };
        RateDecision {
            allowed,
            remaining: tokens.floor() as u32,
            reset_s,
            retry_after_s,
        }
    }

    /// `RateLimit-Policy` and `RateLimit` field values (draft-ietf-httpapi-ratelimit-headers-10).
    pub fn headers(&self, d: &RateDecision) -> (String, String) {
        (
            format!(
                "\"default\";q={};w={}",
                self.config.requests, self.config.window_s
            ),
            format!("\"default\";r={};t={}", d.remaining, d.reset_s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call_ms: 1000,
            slow_rate: 1.0,
            open_ms: 1000,
            half_open_probes: 2,
        })
    }

    #[test]
    fn breaker_opens_fails_fast_and_recovers_through_half_open() {
        let b = breaker();
        let t0 = Instant::now();
        let fast = Duration::from_millis(1);
        for failed in [false, true, false, true] {
            let a = b.admit(t0).unwrap();
            b.record(a, failed, fast, t0);
        }
        assert_eq!(b.mode().name(), "open");
        let wait = b.admit(t0 + Duration::from_millis(200)).unwrap_err();
        assert_eq!(wait, Duration::from_millis(800));
        // After open_ms: probes; one failure reopens.
        let t1 = t0 + Duration::from_millis(1001);
        let p = b.admit(t1).unwrap();
        assert_eq!(p, Admission::Probe);
        b.record(p, true, fast, t1);
        assert_eq!(b.mode().name(), "open");
        assert_eq!(b.times_opened(), 2);
        // Two good probes close it.
        let t2 = t1 + Duration::from_millis(1001);
        let (p1, p2) = (b.admit(t2).unwrap(), b.admit(t2).unwrap());
        assert!(
            b.admit(t2).is_err(),
            "no more than half_open_probes at once"
        );
        b.record(p1, false, fast, t2);
        b.record(p2, false, fast, t2);
        assert_eq!(b.mode().name(), "closed");
    }

    #[test]
    fn slow_calls_can_open_the_breaker() {
        let b = Breaker::new(BreakerConfig {
            slow_rate: 0.5,
            slow_call_ms: 100,
            ..breaker().config
        });
        let t = Instant::now();
        for ms in [10, 200, 300, 20] {
            let a = b.admit(t).unwrap();
            b.record(a, false, Duration::from_millis(ms), t);
        }
        assert_eq!(b.mode().name(), "open");
    }

    #[test]
    fn the_retry_budget_caps_retries_at_its_ratio() {
        let b = RetryBudget::new(0.2);
        // The reserve first, then one retry per five requests.
        let mut retries = 0;
        for _ in 0..100 {
            b.deposit();
            if b.withdraw() {
                retries += 1;
            }
        }
        assert!(retries <= 10 + 20, "{retries} retries for 100 requests");
        assert!(retries >= 20);
    }

    #[test]
    fn token_bucket_refuses_past_the_quota_and_refills() {
        let r = RateLimiter::new(RateLimitConfig {
            requests: 3,
            window_s: 3,
            key: "ip".into(),
        });
        let t = Instant::now();
        let d: Vec<bool> = (0..4).map(|_| r.check("a", t).allowed).collect();
        assert_eq!(d, [true, true, true, false]);
        let refused = r.check("a", t);
        assert_eq!((refused.remaining, refused.retry_after_s), (0, 1));
        assert!(r.check("b", t).allowed, "keys are separate");
        assert!(r.check("a", t + Duration::from_millis(1001)).allowed);
        let (policy, state) = r.headers(&r.check("c", t));
        assert_eq!(policy, "\"default\";q=3;w=3");
        assert_eq!(state, "\"default\";r=2;t=1");
    }
}
