//! Progressive delivery: a route's rollout plan (weights in steps, a dwell per step, bounds on
//! how the new side may behave next to legacy), the sliding windows the comparison reads, and
//! the decision itself as a pure function: window metrics in, hold / advance / complete /
//! rollback out. The controller that runs plans, persists their state and moves the weight is
//! `rollout_ctl.rs`; nothing here does I/O or reads a clock except the windows' `Instant`s.
//!
//! ```toml
//! [routes.rollout]
//! steps = [1, 5, 25, 50, 100]   # percent on the new side, strictly increasing
//! dwell_ms = 300000             # each step is held at least this long
//! window_ms = 60000             # the comparison looks at the last minute
//! min_requests = 50             # evidence needed on the new side before a step is judged
//! [routes.rollout.bounds]
//! max_error_rate = 0.02          # new side's 5xx + transport failures, absolute
//! max_error_rate_increase = 0.01 # ... and at most legacy's rate + 1 point
//! max_p99_ms = 800               # new side's p99, absolute
//! max_p99_ratio = 1.5            # ... and at most 1.5 × legacy's p99
//! max_mismatch_rate = 0.01       # shadow comparisons that differed
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Most steps a plan may have.
pub const MAX_ROLLOUT_STEPS: usize = 20;
/// Longest dwell per step: a week.
pub const MAX_DWELL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Shortest and longest comparison window.
pub const MIN_WINDOW_MS: u64 = 200;
pub const MAX_WINDOW_MS: u64 = 3600 * 1000;
/// Most requests a plan may ask for as evidence.
pub const MAX_MIN_REQUESTS: u64 = 1_000_000;
/// Slices a window is cut into: it slides by one slice, so it covers between
/// `window_ms - window_ms / WINDOW_SLICES` and `window_ms` of the past.
pub const WINDOW_SLICES: usize = 20;
/// Upper bounds of the latency bins the windows count into, ms (one more bin above the last).
/// About 25 % apart, so a p99 read from them is at most that much above the true one.
pub const LATENCY_BINS_MS: [u64; 42] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, 250, 300, 400,
    500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000, 15_000,
    20_000, 30_000, 60_000,
];

/// A route's rollout plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    /// Percent on the new side at each step, strictly increasing, each in 1..=100. Passing the
    /// last step sets 100 %.
    pub steps: Vec<u8>,
    /// Least time each step is held before it may advance, ms.
    pub dwell_ms: u64,
    /// How far back the comparison looks, ms.
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// Requests the new side must have served in the window before a step is judged; with
    /// fewer, the plan holds (an idle route never advances on no evidence). Relative bounds
    /// also need this many on legacy, and the mismatch bound this many comparisons.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    #[serde(default)]
    pub bounds: RolloutBounds,
}

/// What the new side may not exceed. At least one bound must be set. A value exactly at a
/// bound is within it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutBounds {
    /// Largest error rate (5xx and transport failures over requests) of the new side, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate: Option<f64>,
    /// Largest amount the new side's error rate may exceed legacy's by, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    /// Largest p99 latency of the new side, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ms: Option<u64>,
    /// Largest ratio of the new side's p99 to legacy's, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99_ratio: Option<f64>,
    /// Largest share of shadow comparisons that differed, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mismatch_rate: Option<f64>,
}

fn default_window_ms() -> u64 {
    60_000
}

fn default_min_requests() -> u64 {
    20
}

impl RolloutPlan {
    pub fn validate(&self) -> Result<(), String> {
        if self.steps.is_empty() || self.steps.len() > MAX_ROLLOUT_STEPS {
            return Err(format!(
                "rollout steps: 1 to {MAX_ROLLOUT_STEPS} weights, e.g. [1, 5, 25, 50, 100]"
            ));
        }
        if self.steps.iter().any(|w| !(1..=100).contains(w)) {
            return Err("rollout steps are percents in 1..=100".into());
        }
        if self.steps.windows(2).any(|p| p[0] >= p[1]) {
            return Err(format!(
                "rollout steps must be strictly increasing, not {:?}",
                self.steps
            ));
        }
        if self.dwell_ms == 0 || self.dwell_ms > MAX_DWELL_MS {
            return Err(format!("rollout dwell_ms must be 1..={MAX_DWELL_MS}"));
        }
        if !(MIN_WINDOW_MS..=MAX_WINDOW_MS).contains(&self.window_ms) {
            return Err(format!(
                "rollout window_ms must be {MIN_WINDOW_MS}..={MAX_WINDOW_MS}"
            ));
        }
        if self.min_requests == 0 || self.min_requests > MAX_MIN_REQUESTS {
            return Err(format!(
                "rollout min_requests must be 1..={MAX_MIN_REQUESTS}"
            ));
        }
        self.bounds.validate()
    }
}

impl RolloutBounds {
    fn validate(&self) -> Result<(), String> {
        let b = self;
        if b.max_error_rate.is_none()
            && b.max_error_rate_increase.is_none()
            && b.max_p99_ms.is_none()
            && b.max_p99_ratio.is_none()
            && b.max_mismatch_rate.is_none()
        {
            return Err("a rollout needs at least one bound: max_error_rate, \
                 max_error_rate_increase, max_p99_ms, max_p99_ratio or max_mismatch_rate"
                .into());
        }
        for (name, v) in [
            ("max_error_rate", b.max_error_rate),
            ("max_error_rate_increase", b.max_error_rate_increase),
            ("max_mismatch_rate", b.max_mismatch_rate),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=1.0).contains(v)) {
                return Err(format!("rollout bound {name} is a rate in 0..=1, not {v}"));
            }
        }
        if let Some(r) = b.max_p99_ratio.filter(|r| !(1.0..=1000.0).contains(r)) {
            return Err(format!(
                "rollout bound max_p99_ratio must be 1..=1000, not {r}"
            ));
        }
        if b.max_p99_ms.is_some_and(|ms| ms == 0 || ms > 600_000) {
            return Err("rollout bound max_p99_ms must be 1..=600000".into());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Window metrics and the decision.

/// What one side did within the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SideMetrics {
    pub requests: u64,
    /// 5xx answers and transport failures (for shadow comparisons: mismatches).
    pub errors: u64,
    /// The upper edge of the latency bin holding the 99th percentile; none without requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<u64>,
}

impl SideMetrics {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Both sides and the shadow comparisons over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowMetrics {
    pub legacy: SideMetrics,
    pub new: SideMetrics,
    /// `requests` are comparisons made, `errors` comparisons that differed.
    pub shadow: SideMetrics,
}

/// Where the plan stands, as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepView {
    /// The step has been held for its dwell.
    pub dwell_done: bool,
    /// It is the plan's last step.
    pub last: bool,
}

/// What to do with a running plan now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Stay at this step, for the reason given.
    Hold(String),
    /// Go to the next step.
    Advance,
    /// The last step passed: 100 % on the new side, done.
    Complete,
    /// A bound is broken: back to 0 %, for the reason given.
    Rollback(String),
}

impl Verdict {
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Hold(_) => "hold",
            Verdict::Advance => "advance",
            Verdict::Complete => "succeeded",
            Verdict::Rollback(_) => "rollback",
        }
    }
}

/// The decision: every bound that has enough evidence is checked first, at any time in the
/// step (a broken bound rolls back at once, dwell or not); then the step advances only once
/// its dwell is served and the new side has served `min_requests` within the window.
pub fn decide(plan: &RolloutPlan, m: &WindowMetrics, at: StepView) -> Verdict {
    let b = &plan.bounds;
    let min = plan.min_requests;
    let (new, legacy) = (&m.new, &m.legacy);
    let mut broken = Vec::new();
    if new.requests >= min {
        let rate = new.error_rate();
        if let Some(max) = b.max_error_rate.filter(|max| rate > *max) {
            broken.push(format!(
                "new error rate {} > max_error_rate {}",
                pct(rate),
                pct(max)
            ));
        }
        if let (Some(p99), Some(max)) = (new.p99_ms, b.max_p99_ms) {
            if p99 > max {
                broken.push(format!("new p99 {p99} ms > max_p99_ms {max} ms"));
            }
        }
        // Relative bounds compare with legacy only when legacy has evidence of its own.
        if legacy.requests >= min {
            let base = legacy.error_rate();
            if let Some(inc) = b.max_error_rate_increase.filter(|inc| rate > base + inc) {
                broken.push(format!(
                    "new error rate {} > legacy {} + max_error_rate_increase {}",
                    pct(rate),
                    pct(base),
                    pct(inc)
                ));
            }
            if let (Some(p99), Some(base), Some(ratio)) =
                (new.p99_ms, legacy.p99_ms, b.max_p99_ratio)
            {
                if p99 as f64 > base as f64 * ratio {
                    broken.push(format!(
                        "new p99 {p99} ms > {ratio} × legacy p99 {base} ms (max_p99_ratio)"
                    ));
                }
            }
        }
    }
    if let Some(max) = b.max_mismatch_rate {
        let s = &m.shadow;
        if s.requests >= min && s.error_rate() > max {
            broken.push(format!(
                "shadow mismatch rate {} ({} of {}) > max_mismatch_rate {}",
                pct(s.error_rate()),
                s.errors,
                s.requests,
                pct(max)
            ));
        }
    }
    if !broken.is_empty() {
        return Verdict::Rollback(broken.join("; "));
    }
    if new.requests < min {
        return Verdict::Hold(format!(
            "too few requests to the new side in the window: {} of min_requests {min}",
            new.requests
        ));
    }
    if !at.dwell_done {
        return Verdict::Hold("within bounds; dwelling".into());
    }
    if at.last {
        Verdict::Complete
    } else {
        Verdict::Advance
    }
}

/// A rate as a percent with up to two decimals.
fn pct(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

// ---------------------------------------------------------------------------------------------
// Sliding windows.

#[derive(Clone)]
struct Slice {
    /// Which slice of time (`elapsed / slice_ms`) the counts belong to.
    epoch: u64,
    requests: u64,
    errors: u64,
    latency: [u32; LATENCY_BINS_MS.len() + 1],
}

/// Counts of the last `window_ms`, in `WINDOW_SLICES` slices reused round-robin: memory is
/// fixed whatever the traffic.
struct SlidingWindow {
    window_ms: u64,
    slice_ms: u64,
    base: Instant,
    slices: Vec<Slice>,
}

impl SlidingWindow {
    fn new(window_ms: u64) -> Self {
        let empty = Slice {
            epoch: u64::MAX,
            requests: 0,
            errors: 0,
            latency: [0; LATENCY_BINS_MS.len() + 1],
        };
        Self {
            window_ms,
            slice_ms: (window_ms / WINDOW_SLICES as u64).max(1),
            base: Instant::now(),
            slices: vec![empty; WINDOW_SLICES],
        }
    }

    fn epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.base).as_millis() as u64 / self.slice_ms
    }

    fn record(&mut self, at: Instant, latency: Option<Duration>, bad: bool) {
        let epoch = self.epoch(at);
        let n = self.slices.len();
        let s = &mut self.slices[(epoch % n as u64) as usize];
        if s.epoch != epoch {
            *s = Slice {
                epoch,
                requests: 0,
                errors: 0,
                latency: [0; LATENCY_BINS_MS.len() + 1],
            };
        }
        s.requests += 1;
        s.errors += u64::from(bad);
        if let Some(l) = latency {
            let ms = l.as_millis() as u64;
            let bin = LATENCY_BINS_MS
                .iter()
                .position(|b| ms < *b)
                .unwrap_or(LATENCY_BINS_MS.len());
            s.latency[bin] = s.latency[bin].saturating_add(1);
        }
    }

    fn metrics(&self, at: Instant) -> SideMetrics {
        let now = self.epoch(at);
        let n = self.slices.len() as u64;
        let mut m = SideMetrics::default();
        let mut bins = [0u64; LATENCY_BINS_MS.len() + 1];
        for s in &self.slices {
            if s.epoch > now || now - s.epoch >= n {
                continue;
            }
            m.requests += s.requests;
            m.errors += s.errors;
            for (t, c) in bins.iter_mut().zip(s.latency) {
                *t += u64::from(c);
            }
        }
        let timed: u64 = bins.iter().sum();
        if timed > 0 {
            // The smallest bin edge with at least 99 % of the samples at or below it.
            let need = (timed * 99).div_ceil(100);
            let mut seen = 0;
            for (i, c) in bins.iter().enumerate() {
                seen += c;
                if seen >= need {
                    // Above the last edge there is no edge: report twice the last one.
                    m.p99_ms = Some(LATENCY_BINS_MS.get(i).copied().unwrap_or(120_000));
                    break;
                }
            }
        }
        m
    }
}

/// A window that exists only while its route has a rollout plan. Without one, a request
/// costs one relaxed load of `on` (no lock: the cell is shared by every worker thread, and
/// taking its mutex per request bounced its cache line between the cores).
#[derive(Default)]
pub struct WindowCell(Mutex<Option<SlidingWindow>>, AtomicBool);

impl WindowCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SlidingWindow>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one request (or comparison) if the window is on.
    pub fn record(&self, latency: Option<Duration>, bad: bool) {
        if !self.1.load(Ordering::Relaxed) {
            return;
        }
        if let Some(w) = self.lock().as_mut() {
            w.record(Instant::now(), latency, bad);
        }
    }

    /// Turns the window on for `window_ms` (a different length starts it afresh), or off.
    pub fn configure(&self, window_ms: Option<u64>) {
        let mut w = self.lock();
        match window_ms {
            None => *w = None,
            Some(ms) if w.as_ref().is_some_and(|w| w.window_ms == ms) => {}
            Some(ms) => *w = Some(SlidingWindow::new(ms)),
        }
        self.1.store(w.is_some(), Ordering::Relaxed);
    }

    /// Forgets what was counted (a rollout that starts again judges only its own traffic).
    pub fn reset(&self) {
        let mut w = self.lock();
        if let Some(ms) = w.as_ref().map(|w| w.window_ms) {
            *w = Some(SlidingWindow::new(ms));
        }
    }

    pub fn metrics(&self) -> SideMetrics {
        self.lock()
            .as_ref()
            .map(|w| w.metrics(Instant::now()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bounds: RolloutBounds) -> RolloutPlan {
        RolloutPlan {
            steps: vec![1, 5, 25, 50, 100],
            dwell_ms: 1000,
            window_ms: 10_000,
            min_requests: 20,
            bounds,
        }
    }

    fn side(requests: u64, errors: u64, p99_ms: u64) -> SideMetrics {
        SideMetrics {
            requests,
            errors,
            p99_ms: (requests > 0).then_some(p99_ms),
        }
    }

    const MID: StepView = StepView {
        dwell_done: true,
        last: false,
    };

    fn error_bound(max: f64) -> RolloutBounds {
        RolloutBounds {
            max_error_rate: Some(max),
            ..Default::default()
        }
    }

    #[test]
    fn too_few_requests_hold_even_when_failing() {
        let p = plan(error_bound(0.05));
        let m = WindowMetrics {
            new: side(19, 19, 5),
            legacy: side(1000, 0, 5),
            ..Default::default()
        };
        let v = decide(&p, &m, MID);
        assert!(
            matches!(&v, Verdict::Hold(r) if r.contains("19 of min_requests 20")),
            "{v:?}"
        );
        // An idle route never advances.
        let idle = decide(&p, &WindowMetrics::default(), MID);
        assert_eq!(idle.outcome(), "hold");
    }

    #[test]
    fn exactly_at_a_bound_is_within_it() {
        let p = plan(RolloutBounds {
            max_error_rate: Some(0.05),
            max_p99_ms: Some(100),
            max_p99_ratio: Some(2.0),
            max_error_rate_increase: Some(0.05),
            max_mismatch_rate: Some(0.1),
        });
        let at = WindowMetrics {
            new: side(20, 1, 100),
            legacy: side(20, 0, 50),
            shadow: side(20, 2, 0),
        };
        assert_eq!(decide(&p, &at, MID), Verdict::Advance);
        let over = WindowMetrics {
            new: side(20, 2, 100),
            ..at
        };
        assert!(
            matches!(decide(&p, &over, MID), Verdict::Rollback(r) if r.contains("max_error_rate "))
        );
        let slow = WindowMetrics {
            new: side(20, 1, 120),
            ..at
        };
        let v = decide(&p, &slow, MID);
        assert!(
            matches!(&v, Verdict::Rollback(r) if r.contains("max_p99_ms") && r.contains("max_p99_ratio")),
            "{v:?}"
        );
        let mismatching = WindowMetrics {
            shadow: side(20, 3, 0),
            ..at
        };
        assert!(
            matches!(decide(&p, &mismatching, MID), Verdict::Rollback(r) if r.contains("mismatch"))
        );
    }

    #[test]
    fn legacy_failing_too_is_judged_relatively() {
        let p = plan(RolloutBounds {
            max_error_rate_increase: Some(0.02),
            ..Default::default()
        });
        let both_failing = WindowMetrics {
            new: side(100, 30, 5),
            legacy: side(100, 30, 5),
            ..Default::default()
        };
        assert_eq!(decide(&p, &both_failing, MID), Verdict::Advance);
        let worse = WindowMetrics {
            new: side(100, 40, 5),
            ..both_failing
        };
        assert!(
            matches!(decide(&p, &worse, MID), Verdict::Rollback(r) if r.contains("legacy 30.00 %"))
        );
        // The absolute bound still holds the new side to its own standard.
        let p = plan(RolloutBounds {
            max_error_rate_increase: Some(0.02),
            max_error_rate: Some(0.1),
            ..Default::default()
        });
        assert_eq!(decide(&p, &both_failing, MID).outcome(), "rollback");
    }

    #[test]
    fn relative_bounds_need_legacy_evidence() {
        let p = plan(RolloutBounds {
            max_p99_ratio: Some(1.5),
            ..Default::default()
        });
        // At 100 % legacy sees nothing: there is nothing to compare with.
        let m = WindowMetrics {
            new: side(100, 0, 500),
            legacy: side(3, 0, 5),
            ..Default::default()
        };
        assert_eq!(decide(&p, &m, MID), Verdict::Advance);
        let m = WindowMetrics {
            legacy: side(100, 0, 5),
            ..m
        };
        assert_eq!(decide(&p, &m, MID).outcome(), "rollback");
    }

    #[test]
    fn dwell_then_advance_then_complete() {
        let p = plan(error_bound(0.05));
        let ok = WindowMetrics {
            new: side(50, 0, 5),
            ..Default::default()
        };
        let dwelling = StepView {
            dwell_done: false,
            last: false,
        };
        assert!(matches!(decide(&p, &ok, dwelling), Verdict::Hold(r) if r.contains("dwelling")));
        assert_eq!(decide(&p, &ok, MID), Verdict::Advance);
        let last = StepView {
            dwell_done: true,
            last: true,
        };
        assert_eq!(decide(&p, &ok, last), Verdict::Complete);
        // A broken bound rolls back before the dwell is served.
        let bad = WindowMetrics {
            new: side(50, 10, 5),
            ..Default::default()
        };
        assert_eq!(decide(&p, &bad, dwelling).outcome(), "rollback");
    }

    #[test]
    fn plans_are_validated() {
        let good = plan(error_bound(0.05));
        assert_eq!(good.validate(), Ok(()));
        for (p, why) in [
            (
                RolloutPlan {
                    steps: vec![],
                    ..good.clone()
                },
                "1 to 20",
            ),
            (
                RolloutPlan {
                    steps: vec![5, 5, 10],
                    ..good.clone()
                },
                "strictly increasing",
            ),
            (
                RolloutPlan {
                    steps: vec![0, 10],
                    ..good.clone()
                },
                "1..=100",
            ),
            (
                RolloutPlan {
                    steps: vec![10, 101],
                    ..good.clone()
                },
                "1..=100",
            ),
            (
                RolloutPlan {
                    dwell_ms: 0,
                    ..good.clone()
                },
                "dwell_ms",
            ),
            (
                RolloutPlan {
                    window_ms: 10,
                    ..good.clone()
                },
                "window_ms",
            ),
            (
                RolloutPlan {
                    min_requests: 0,
                    ..good.clone()
                },
                "min_requests",
            ),
            (plan(RolloutBounds::default()), "at least one bound"),
            (plan(error_bound(1.5)), "0..=1"),
            (
                plan(RolloutBounds {
                    max_p99_ratio: Some(0.5),
                    ..Default::default()
                }),
                "max_p99_ratio",
            ),
        ] {
            let err = p.validate().unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn the_window_slides_and_reads_a_p99() {
        let mut w = SlidingWindow::new(1000);
        let t0 = w.base;
        for i in 0..100u64 {
            let ms = if i < 98 { 3 } else { 700 };
            w.record(t0, Some(Duration::from_millis(ms)), i % 10 == 0);
        }
        let m = w.metrics(t0);
        assert_eq!((m.requests, m.errors), (100, 10));
        assert_eq!(
            m.p99_ms,
            Some(800),
            "99th of 100 is a 700 ms one, in the ≤800 bin"
        );
        // Half a window on, the counts are still seen; a whole window on, they are gone.
        assert_eq!(w.metrics(t0 + Duration::from_millis(500)).requests, 100);
        let later = t0 + Duration::from_millis(1000);
        assert_eq!(w.metrics(later), SideMetrics::default());
        w.record(later, Some(Duration::from_millis(1)), false);
        assert_eq!(w.metrics(later).requests, 1);
        assert_eq!(w.metrics(later).p99_ms, Some(2));
    }
}
