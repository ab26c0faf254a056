//! What this process's saga orchestrator has recorded, for `/metrics` and the console: sagas
//! started and finished by outcome, step outcomes, compensations, and how long steps take.
//!
//! Counted when the record is durable (after the append), so a count never names a step
//! whose record was lost to a crash or to a concurrent driver. Labels are the registered
//! sagas' static kinds and step names, so the series are bounded by the code, not by input.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the step-duration histogram, seconds.
pub const STEP_BUCKETS_S: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SagaOutcome {
    Completed,
    /// A step was given up and every started step was compensated.
    Failed,
}

impl SagaOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaOutcome::Completed => "completed",
            SagaOutcome::Failed => "failed",
        }
    }
}

/// How one attempt of a step (or of its compensation) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StepOutcome {
    Succeeded,
    /// Failed; another attempt follows.
    Retried,
    /// Failed for good: the saga compensates.
    GaveUp,
    /// A compensation that undid its step.
    Compensated,
    /// A compensation that failed; it is tried again.
    CompensationFailed,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Retried => "retried",
            StepOutcome::GaveUp => "gave_up",
            StepOutcome::Compensated => "compensated",
            StepOutcome::CompensationFailed => "compensation_failed",
        }
    }
}

/// One step's duration histogram: cumulative counts per [`STEP_BUCKETS_S`] bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepDurations {
    pub buckets: [u64; STEP_BUCKETS_S.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

/// A copy of the counters at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SagaMetricsSnapshot {
    /// Saga kind → sagas this process started.
    pub started: BTreeMap<&'static str, u64>,
    /// (kind, outcome) → sagas this process finished.
    pub finished: BTreeMap<(&'static str, SagaOutcome), u64>,
    /// (kind, step, outcome) → attempts.
    pub steps: BTreeMap<(&'static str, &'static str, StepOutcome), u64>,
    /// (kind, step) → how long its invocations took (compensations not included).
    pub durations: BTreeMap<(&'static str, &'static str), StepDurations>,
}

/// The orchestrator's counters; clones of one orchestrator share them.
#[derive(Debug, Default)]
pub struct SagaMetrics {
    inner: Mutex<SagaMetricsSnapshot>,
}

impl SagaMetrics {
    fn with(&self, f: impl FnOnce(&mut SagaMetricsSnapshot)) {
        // A poisoned lock only means another thread panicked mid-count; the counts stay usable.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    pub fn started(&self, kind: &'static str) {
        self.with(|m| *m.started.entry(kind).or_default() += 1);
    }

    pub fn finished(&self, kind: &'static str, outcome: SagaOutcome) {
        self.with(|m| *m.finished.entry((kind, outcome)).or_default() += 1);
    }

    /// An attempt of `step` ended with `outcome`; `took` is the invocation's duration (for
    /// steps, not compensations).
    pub fn step(
        &self,
        kind: &'static str,
        step: &'static str,
        outcome: StepOutcome,
        took: Option<Duration>,
    ) {
        self.with(|m| {
            *m.steps.entry((kind, step, outcome)).or_default() += 1;
            if let Some(took) = took {
                let d = m.durations.entry((kind, step)).or_default();
                let s = took.as_secs_f64();
                for (i, le) in STEP_BUCKETS_S.iter().enumerate() {
                    if s <= *le {
                        d.buckets[i] += 1;
                    }
                }
                d.count += 1;
                d.sum_seconds += s;
            }
        });
    }

    pub fn snapshot(&self) -> SagaMetricsSnapshot {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_cumulative_per_bound() {
        let m = SagaMetrics::default();
        m.step(
            "k",
            "s",
            StepOutcome::Succeeded,
            Some(Duration::from_millis(30)),
        );
        m.step(
            "k",
            "s",
            StepOutcome::Retried,
            Some(Duration::from_secs(40)),
        );
        m.step("k", "s", StepOutcome::Compensated, None);
        let snap = m.snapshot();
        let d = &snap.durations[&("k", "s")];
        assert_eq!(d.count, 2);
        // 30 ms is above 25 ms and within 50 ms; 40 s is above every bound.
        assert_eq!(d.buckets[2], 0);
        assert_eq!(d.buckets[3], 1);
        assert_eq!(d.buckets[STEP_BUCKETS_S.len() - 1], 1);
        assert_eq!(snap.steps.len(), 3);
        assert!((d.sum_seconds - 40.03).abs() < 1e-9);
    }
}
