//! The saga orchestrator: runs a sequence of steps across aggregates and services, and on a
//! failure that retries cannot cure runs the compensations of every step it started, in
//! reverse order.
//!
//! A saga's state is event-sourced in its own stream `saga-{id}` ([`SagaEvent`]). Every move
//! is recorded before the next one is taken, so a driver that dies (kill -9 at any instant)
//! is replaced by one that folds the stream and carries on where it stopped:
//!
//! - a step is invoked with an idempotency key derived from the saga id and the step name
//!   ([`StepContext::key`]), the same on every attempt and after every crash, so a step
//!   whose outcome was lost (its `StepStarted` is the last record) is invoked again and its
//!   service answers with the first effect instead of making a second one;
//! - a step's success is recorded (`StepSucceeded`, with its output) before the next step
//!   starts; a failure is recorded with its attempt number, so attempts stay bounded across
//!   crashes;
//! - compensation covers every step that was *started*, the failed one included (a timed-out
//!   call may still have taken effect), in reverse order; compensations are retried until
//!   they succeed — never skipped — and the driving job goes back to the queue (its own
//!   backoff, then the dead-letter queue for an operator) when a service stays down.
//!
//! Sagas are driven by durable jobs ([`SagaJobHandler`] on [`SAGA_QUEUE`]): starting a saga
//! is one enqueue, and a job whose worker died is leased again when its visibility timeout
//! expires, which is how every unfinished saga resumes after a restart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_core::codec;
use ficus_core::{DomainEvent, ExpectedVersion, Metadata, NewEvent, StreamId, Version};
use ficus_store::{EventStore, Job, JobQueue, NewJob, StoreError, MAX_READ_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backoff::Backoff;
use crate::saga_metrics::{SagaOutcome, StepOutcome};
use crate::workers::{JobError, JobHandler};

/// The queue saga-driving jobs run on.
pub const SAGA_QUEUE: &str = "sagas";
/// The kind of a saga-driving job.
pub const SAGA_JOB_KIND: &str = "saga.drive";
/// Attempts of a saga-driving job before it goes to the dead-letter queue. Each attempt
/// itself retries steps and compensations, so this only runs out when a compensation's
/// service stays down for a long time.
pub const SAGA_JOB_MAX_ATTEMPTS: u32 = 20;
/// Compensation attempts one drive makes before handing the saga back to the queue.
pub const COMPENSATION_ATTEMPTS_PER_DRIVE: u32 = 5;
/// Longest error text kept in a saga event, in bytes.
pub const SAGA_ERROR_MAX_BYTES: usize = 512;
/// Most steps a saga may declare.
pub const SAGA_MAX_STEPS: usize = 32;
/// Stream prefix of saga state: saga `id` lives in `saga-{id}`.
pub const SAGA_STREAM_PREFIX: &str = "saga";

/// What a saga recorded. Every event is appended with the stream version it was decided at,
/// so two drivers of one saga cannot both move it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum SagaEvent {
    SagaStarted {
        saga_id: String,
        kind: String,
        input: Value,
        at_ms: i64,
    },
    StepStarted {
        step: String,
        /// 1-based, counted over crashes too.
        attempt: u32,
        at_ms: i64,
    },
    StepSucceeded {
        step: String,
        output: Value,
        at_ms: i64,
    },
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        /// The saga gives the step up and compensates (the error is permanent, or the
        /// attempts ran out).
        gave_up: bool,
        at_ms: i64,
    },
    CompensationStarted {
        step: String,
        attempt: u32,
        at_ms: i64,
    },
    Compensated {
        step: String,
        at_ms: i64,
    },
    CompensationFailed {
        step: String,
        attempt: u32,
        error: String,
        at_ms: i64,
    },
    SagaCompleted {
        at_ms: i64,
    },
    /// Every started step was compensated after `failed_step` failed.
    SagaFailed {
        failed_step: String,
        reason: String,
        at_ms: i64,
    },
}

impl DomainEvent for SagaEvent {}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Steps are being run.
    Running,
    /// A step was given up; started steps are being compensated.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step was given up and every started step was compensated.
    Failed,
}

impl SagaStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SagaStatus::Running => "running",
            SagaStatus::Compensating => "compensating",
            SagaStatus::Completed => "completed",
            SagaStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, SagaStatus::Completed | SagaStatus::Failed)
    }
}

/// Where one step is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    /// Invoked; its outcome not recorded yet (or lost in a crash).
    Running,
    /// Failed once or more, will be retried.
    Retrying,
    Succeeded,
    Failed,
    Compensating,
    /// Its compensation failed; it will be tried again.
    CompensationFailed,
    Compensated,
}

/// One step as the saga's stream tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
    pub output: Option<Value>,
}

/// A saga's state, folded from its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub saga_id: String,
    pub kind: String,
    pub input: Value,
    pub status: SagaStatus,
    /// In the order they were first started.
    pub steps: Vec<StepState>,
    /// The step given up and why, once compensating.
    pub failure: Option<(String, String)>,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
    /// Stream version of the last event folded.
    pub version: Version,
}

impl SagaState {
    /// The state after `SagaStarted`; `None` for any other first event.
    fn start(event: &SagaEvent) -> Option<SagaState> {
        match event {
            SagaEvent::SagaStarted {
                saga_id,
                kind,
                input,
                at_ms,
            } => Some(SagaState {
                saga_id: saga_id.clone(),
                kind: kind.clone(),
                input: input.clone(),
                status: SagaStatus::Running,
                steps: Vec::new(),
                failure: None,
                started_at_ms: *at_ms,
                updated_at_ms: *at_ms,
                version: 0,
            }),
            _ => None,
        }
    }

    pub fn step(&self, name: &str) -> Option<&StepState> {
        self.steps.iter().find(|s| s.name == name)
    }

    fn step_mut(&mut self, name: &str) -> &mut StepState {
        if let Some(i) = self.steps.iter().position(|s| s.name == name) {
            return &mut self.steps[i];
        }
        self.steps.push(StepState {
            name: name.to_owned(),
            status: StepStatus::Pending,
            attempts: 0,
            compensation_attempts: 0,
            last_error: None,
            output: None,
        });
        self.steps.last_mut().expect("just pushed")
    }

    /// Outputs of the steps that succeeded, by step name.
    pub fn outputs(&self) -> BTreeMap<String, Value> {
        self.steps
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
            .collect()
    }

    fn evolve(&mut self, event: &SagaEvent) {
        match event {
            SagaEvent::SagaStarted { .. } => {}
            SagaEvent::StepStarted {
                step,
                attempt,
                at_ms,
            } => {
                let s = self.step_mut(step);
                s.status = StepStatus::Running;
                s.attempts = (*attempt).max(s.attempts);
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::StepSucceeded {
                step,
                output,
                at_ms,
            } => {
                let s = self.step_mut(step);
                s.status = StepStatus::Succeeded;
                s.output = Some(output.clone());
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::StepFailed {
                step,
                error,
                gave_up,
                at_ms,
                ..
            } => {
                let s = self.step_mut(step);
                s.last_error = Some(error.clone());
                if *gave_up {
                    s.status = StepStatus::Failed;
                    self.status = SagaStatus::Compensating;
                    self.failure = Some((step.clone(), error.clone()));
                } else {
                    s.status = StepStatus::Retrying;
                }
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::CompensationStarted {
                step,
                attempt,
                at_ms,
            } => {
                let s = self.step_mut(step);
                s.status = StepStatus::Compensating;
                s.compensation_attempts = (*attempt).max(s.compensation_attempts);
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::Compensated { step, at_ms } => {
                self.step_mut(step).status = StepStatus::Compensated;
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::CompensationFailed {
                step, error, at_ms, ..
            } => {
                let s = self.step_mut(step);
                s.status = StepStatus::CompensationFailed;
                s.last_error = Some(error.clone());
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::SagaCompleted { at_ms } => {
                self.status = SagaStatus::Completed;
                self.updated_at_ms = *at_ms;
            }
            SagaEvent::SagaFailed { at_ms, .. } => {
                self.status = SagaStatus::Failed;
                self.updated_at_ms = *at_ms;
            }
        }
    }
}

/// How a step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// Worth another attempt (a service is down, a timeout, a conflict).
    #[error("{0}")]
    Retry(String),
    /// Will not succeed (a business refusal): compensate now.
    #[error("{0}")]
    Permanent(String),
}

/// One step's name and limits.
#[derive(Debug, Clone)]
pub struct StepPolicy {
    pub name: &'static str,
    /// Longest one invocation (or one compensation) may take; past it the attempt fails
    /// (retryable).
    pub timeout: Duration,
    /// Invocations before the step is given up (≥ 1), crashes included.
    pub max_attempts: u32,
    /// Pause between attempts: exponential, full jitter.
    pub backoff: Backoff,
}

/// What a step or compensation is given.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub saga_id: String,
    pub step: String,
    /// `{saga_id}:{step}`: the same on every attempt and after every crash, so the service
    /// it is passed to can refuse a second effect. A compensation names its step's effect
    /// with it.
    pub key: String,
    /// `{saga_id}:{step}:undo`: the compensation's own idempotency key.
    pub undo_key: String,
    /// The step given up and why, during compensation.
    pub failure: Option<(String, String)>,
    pub attempt: u32,
    pub input: Value,
    /// Outputs of the steps that succeeded so far.
    pub outputs: BTreeMap<String, Value>,
}

/// A kind of saga: its steps, and what each does and undoes. Both must be idempotent per
/// `ctx.key`, and a compensation must succeed when there is nothing to undo (its step failed
/// before any effect) and make a late-arriving step effect impossible or harmless.
#[async_trait]
pub trait Saga: Send + Sync + 'static {
    fn kind(&self) -> &'static str;
    /// The steps in the order they run (at most [`SAGA_MAX_STEPS`]).
    fn steps(&self) -> &[StepPolicy];
    async fn run(&self, ctx: &StepContext) -> Result<Value, StepError>;
    async fn compensate(&self, ctx: &StepContext) -> Result<(), StepError>;
}

/// Why a saga could not be started, read or driven.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No saga with this id. (404 `saga_not_found`)
    #[error("saga {0} not found")]
    NotFound(String),
    /// A malformed saga id or kind. (400 `invalid_field`)
    #[error("{0}")]
    Invalid(String),
    /// A stored saga event does not decode or the stream is not a saga's. (500)
    #[error("{0}")]
    Corrupt(String),
    /// The store failed. (503)
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A compensation is still failing; the saga is handed back to the job queue.
    #[error("compensation of {step} keeps failing: {error}")]
    CompensationPending { step: String, error: String },
}

fn clip(mut s: String) -> String {
    if s.len() > SAGA_ERROR_MAX_BYTES {
        let mut end = SAGA_ERROR_MAX_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The stream of saga `id`.
pub fn saga_stream(saga_id: &str) -> Result<StreamId, SagaError> {
    StreamId::for_aggregate(SAGA_STREAM_PREFIX, saga_id)
        .map_err(|e| SagaError::Invalid(e.to_string()))
}

/// When a [`RecordHook`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordMoment {
    /// The event is about to be appended: whatever led to it (a step's effect) is done and
    /// not yet recorded.
    Before,
    /// The event is durable.
    After,
}

/// A hook the orchestrator calls around every record, for crash tests (which abort the
/// process in it): `(saga_id, version of the event, moment)`.
pub type RecordHook = Arc<dyn Fn(&str, Version, RecordMoment) + Send + Sync>;

/// Starts, drives and reads sagas of the registered kinds.
#[derive(Clone)]
pub struct SagaOrchestrator {
    store: Arc<dyn EventStore>,
    sagas: BTreeMap<&'static str, Arc<dyn Saga>>,
    record_hook: Option<RecordHook>,
    now_ms: fn() -> i64,
    metrics: Arc<crate::saga_metrics::SagaMetrics>,
}

impl SagaOrchestrator {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            sagas: BTreeMap::new(),
            record_hook: None,
            now_ms: ficus_store::now_ms,
            metrics: Default::default(),
        }
    }

    /// What this orchestrator (and its clones) recorded: sagas, steps, compensations.
    pub fn metrics(&self) -> &Arc<crate::saga_metrics::SagaMetrics> {
        &self.metrics
    }

    /// This orchestrator also driving sagas of `saga.kind()`.
    pub fn with(mut self, saga: Arc<dyn Saga>) -> Self {
        assert!(
            !saga.steps().is_empty() && saga.steps().len() <= SAGA_MAX_STEPS,
            "a saga has 1..={SAGA_MAX_STEPS} steps"
        );
        self.sagas.insert(saga.kind(), saga);
        self
    }

    /// Calls `hook` before and after every saga event is appended (crash tests abort the
    /// process there).
    pub fn with_record_hook(mut self, hook: RecordHook) -> Self {
        self.record_hook = Some(hook);
        self
    }

    /// The job that starts (or resumes) saga `saga_id` of `kind` with `input`. Enqueue it —
    /// alone, or in the same transaction as the command that calls for the saga — and the
    /// worker pool on [`SAGA_QUEUE`] drives the saga to its end.
    pub fn start_job(saga_id: &str, kind: &str, input: Value) -> NewJob {
        NewJob {
            max_attempts: SAGA_JOB_MAX_ATTEMPTS,
            unique_key: Some(format!("saga:{saga_id}")),
            ..NewJob::new(
                SAGA_QUEUE,
                SAGA_JOB_KIND,
                serde_json::json!({"saga_id": saga_id, "kind": kind, "input": input}),
            )
        }
    }

    /// Enqueues the start job of a saga: the saga is durable (it will run) when this returns.
    pub async fn start(
        &self,
        jobs: &dyn JobQueue,
        saga_id: &str,
        kind: &str,
        input: Value,
    ) -> Result<(), SagaError> {
        saga_stream(saga_id)?;
        if !self.sagas.contains_key(kind) {
            return Err(SagaError::Invalid(format!("unknown saga kind {kind:?}")));
        }
        jobs.enqueue(vec![Self::start_job(saga_id, kind, input)], (self.now_ms)())
            .await?;
        Ok(())
    }

    /// The saga's state, `None` when it was never started.
    pub async fn load(&self, saga_id: &str) -> Result<Option<SagaState>, SagaError> {
        let stream = saga_stream(saga_id)?;
        let mut state: Option<SagaState> = None;
        let mut from = 1;
        loop {
            let page = self
                .store
                .read_stream(&stream, from, MAX_READ_LIMIT)
                .await?;
            for e in &page {
                let event: SagaEvent =
                    codec::decode(e.event_type.as_str(), e.schema_version, &e.payload).map_err(
                        |err| SagaError::Corrupt(format!("{stream}@{}: {err}", e.version)),
                    )?;
                match &mut state {
                    None => {
                        state = Some(SagaState::start(&event).ok_or_else(|| {
                            SagaError::Corrupt(format!("{stream} does not open with SagaStarted"))
                        })?)
                    }
                    Some(s) => s.evolve(&event),
                }
                if let Some(s) = &mut state {
                    s.version = e.version;
                }
            }
            match page.last() {
                Some(last) if page.len() >= MAX_READ_LIMIT => from = last.version + 1,
                _ => return Ok(state),
            }
        }
    }

    /// Appends `event` at `expected`; `Ok(false)` when another driver moved the saga first.
    async fn record(
        &self,
        saga_id: &str,
        expected: ExpectedVersion,
        event: SagaEvent,
    ) -> Result<bool, SagaError> {
        let stream = saga_stream(saga_id)?;
        let (event_type, payload) =
            codec::encode(&event).map_err(|e| SagaError::Corrupt(e.to_string()))?;
        let new = NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type,
            schema_version: SagaEvent::SCHEMA_VERSION,
            metadata: Metadata {
                correlation_id: Some(format!("saga:{saga_id}")),
                ..Default::default()
            },
            payload,
        };
        if let Some(hook) = &self.record_hook {
            let version = match expected {
                ExpectedVersion::Exact(v) => v + 1,
                _ => 1,
            };
            hook(saga_id, version, RecordMoment::Before);
        }
        match self.store.append(&stream, expected, vec![new]).await {
            Ok(r) => {
                if let Some(hook) = &self.record_hook {
                    hook(saga_id, r.last_version, RecordMoment::After);
                }
                Ok(true)
            }
            Err(StoreError::WrongExpectedVersion { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Drives saga `saga_id` until it is finished, starting it (as `kind` with `input`) if
    /// its stream does not exist yet. Safe to call again at any time, from any process: it
    /// folds the stream and continues from the last record.
    pub async fn drive(
        &self,
        saga_id: &str,
        kind: &str,
        input: Value,
    ) -> Result<SagaState, SagaError> {
        if self.load(saga_id).await?.is_none() {
            let started = SagaEvent::SagaStarted {
                saga_id: saga_id.to_owned(),
                kind: kind.to_owned(),
                input,
                at_ms: (self.now_ms)(),
            };
            // Lost to a concurrent starter: that one's record stands, fold it below.
            if self
                .record(saga_id, ExpectedVersion::NoStream, started)
                .await?
            {
                if let Some(saga) = self.sagas.get(kind) {
                    self.metrics.started(saga.kind());
                }
            }
        }
        let mut compensation_tries = 0u32;
        loop {
            let state = self
                .load(saga_id)
                .await?
                .ok_or_else(|| SagaError::NotFound(saga_id.to_owned()))?;
            if state.status.is_finished() {
                return Ok(state);
            }
            let saga = self
                .sagas
                .get(state.kind.as_str())
                .ok_or_else(|| SagaError::Invalid(format!("unknown saga kind {:?}", state.kind)))?
                .clone();
            let expected = ExpectedVersion::Exact(state.version);
            let now = (self.now_ms)();
            match state.status {
                SagaStatus::Running => {
                    let next = saga.steps().iter().find(|p| {
                        state
                            .step(p.name)
                            .is_none_or(|s| s.status != StepStatus::Succeeded)
                    });
                    let Some(policy) = next else {
                        if self
                            .record(saga_id, expected, SagaEvent::SagaCompleted { at_ms: now })
                            .await?
                        {
                            self.metrics.finished(saga.kind(), SagaOutcome::Completed);
                        }
                        continue;
                    };
                    self.attempt_step(&*saga, &state, policy).await?;
                }
                SagaStatus::Compensating => {
                    // Reverse order of the steps' places in the saga; every started one.
                    let next = saga.steps().iter().rev().find(|p| {
                        state.step(p.name).is_some_and(|s| {
                            s.status != StepStatus::Compensated && s.status != StepStatus::Pending
                        })
                    });
                    let Some(policy) = next else {
                        let (failed_step, reason) = state.failure.clone().unwrap_or_default();
                        let failed = SagaEvent::SagaFailed {
                            failed_step,
                            reason,
                            at_ms: now,
                        };
                        if self.record(saga_id, expected, failed).await? {
                            self.metrics.finished(saga.kind(), SagaOutcome::Failed);
                        }
                        continue;
                    };
                    compensation_tries += 1;
                    if let Err(error) = self.attempt_compensation(&*saga, &state, policy).await? {
                        if compensation_tries >= COMPENSATION_ATTEMPTS_PER_DRIVE {
                            return Err(SagaError::CompensationPending {
                                step: policy.name.to_owned(),
                                error,
                            });
                        }
                    }
                }
                SagaStatus::Completed | SagaStatus::Failed => unreachable!("checked above"),
            }
        }
    }

    fn context(state: &SagaState, step: &str, attempt: u32) -> StepContext {
        let key = format!("{}:{step}", state.saga_id);
        StepContext {
            saga_id: state.saga_id.clone(),
            step: step.to_owned(),
            undo_key: format!("{key}:undo"),
            key,
            failure: state.failure.clone(),
            attempt,
            input: state.input.clone(),
            outputs: state.outputs(),
        }
    }

    /// Records the start of the step's next attempt, runs it within its timeout, records the
    /// outcome, and pauses before a retry.
    async fn attempt_step(
        &self,
        saga: &dyn Saga,
        state: &SagaState,
        policy: &StepPolicy,
    ) -> Result<(), SagaError> {
        let saga_id = &state.saga_id;
        let step = state.step(policy.name);
        let attempts = step.map_or(0, |s| s.attempts);
        let mut version = state.version;
        let attempt = if step.is_some_and(|s| s.status == StepStatus::Running) {
            // Started, outcome unknown: its driver died (or is still at it, when a lease ran
            // out). Invoked again under the same attempt and key — idempotent on the step's
            // side — rather than counted as a new attempt, so a slow driver cannot make another
            // give the step up. A crash loop is bounded by the driving job's attempts.
            attempts
        } else {
            let attempt = attempts + 1;
            let started = SagaEvent::StepStarted {
                step: policy.name.to_owned(),
                attempt,
                at_ms: (self.now_ms)(),
            };
            if !self
                .record(saga_id, ExpectedVersion::Exact(version), started)
                .await?
            {
                return Ok(());
            }
            version += 1;
            attempt
        };
        let ctx = Self::context(state, policy.name, attempt);
        let invoked = std::time::Instant::now();
        let outcome = match tokio::time::timeout(policy.timeout, saga.run(&ctx)).await {
            Ok(r) => r,
            Err(_) => Err(StepError::Retry(format!(
                "timed out after {} ms",
                policy.timeout.as_millis()
            ))),
        };
        let took = invoked.elapsed();
        let now = (self.now_ms)();
        let counted = match &outcome {
            Ok(_) => StepOutcome::Succeeded,
            Err(StepError::Permanent(_)) => StepOutcome::GaveUp,
            Err(_) if attempt >= policy.max_attempts.max(1) => StepOutcome::GaveUp,
            Err(_) => StepOutcome::Retried,
        };
        let (event, pause) = match outcome {
            Ok(output) => (
                SagaEvent::StepSucceeded {
                    step: policy.name.to_owned(),
                    output,
                    at_ms: now,
                },
                None,
            ),
            Err(e) => {
                let gave_up =
                    matches!(e, StepError::Permanent(_)) || attempt >= policy.max_attempts.max(1);
                tracing::info!(saga_id = %saga_id, step = policy.name, attempt, gave_up, error = %e,
                    "saga step failed");
                let pause = (!gave_up).then(|| {
                    Duration::from_millis(policy.backoff.delay_ms(attempt, &mut rand::thread_rng()))
                });
                (
                    SagaEvent::StepFailed {
                        step: policy.name.to_owned(),
                        attempt,
                        error: clip(e.to_string()),
                        gave_up,
                        at_ms: now,
                    },
                    pause,
                )
            }
        };
        if self
            .record(saga_id, ExpectedVersion::Exact(version), event)
            .await?
        {
            self.metrics
                .step(saga.kind(), policy.name, counted, Some(took));
            if let Some(p) = pause {
                tokio::time::sleep(p).await;
            }
        }
        Ok(())
    }

    /// Runs one attempt of the step's compensation; `Ok(Err(error))` when it failed (recorded;
    /// the caller pauses and tries again).
    async fn attempt_compensation(
        &self,
        saga: &dyn Saga,
        state: &SagaState,
        policy: &StepPolicy,
    ) -> Result<Result<(), String>, SagaError> {
        let saga_id = &state.saga_id;
        let step = state.step(policy.name);
        let mut attempt = step.map_or(0, |s| s.compensation_attempts);
        let mut version = state.version;
        // A compensation started whose outcome is unknown is invoked again under the same
        // attempt (see `attempt_step`).
        if !step.is_some_and(|s| s.status == StepStatus::Compensating) {
            attempt += 1;
            let started = SagaEvent::CompensationStarted {
                step: policy.name.to_owned(),
                attempt,
                at_ms: (self.now_ms)(),
            };
            if !self
                .record(saga_id, ExpectedVersion::Exact(version), started)
                .await?
            {
                return Ok(Ok(()));
            }
            version += 1;
        }
        let ctx = Self::context(state, policy.name, attempt);
        let outcome = match tokio::time::timeout(policy.timeout, saga.compensate(&ctx)).await {
            Ok(r) => r,
            Err(_) => Err(StepError::Retry(format!(
                "timed out after {} ms",
                policy.timeout.as_millis()
            ))),
        };
        let now = (self.now_ms)();
        match outcome {
            Ok(()) => {
                let done = SagaEvent::Compensated {
                    step: policy.name.to_owned(),
                    at_ms: now,
                };
                if self
                    .record(saga_id, ExpectedVersion::Exact(version), done)
                    .await?
                {
                    self.metrics
                        .step(saga.kind(), policy.name, StepOutcome::Compensated, None);
                }
                Ok(Ok(()))
            }
            Err(e) => {
                // Even a "permanent" refusal is retried: a compensation is never skipped.
                tracing::warn!(saga_id = %saga_id, step = policy.name, attempt, error = %e,
                    "saga compensation failed; retrying");
                let error = clip(e.to_string());
                let failed = SagaEvent::CompensationFailed {
                    step: policy.name.to_owned(),
                    attempt,
                    error: error.clone(),
                    at_ms: now,
                };
                if self
                    .record(saga_id, ExpectedVersion::Exact(version), failed)
                    .await?
                {
                    self.metrics.step(
                        saga.kind(),
                        policy.name,
                        StepOutcome::CompensationFailed,
                        None,
                    );
                    let pause = policy.backoff.delay_ms(attempt, &mut rand::thread_rng());
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                Ok(Err(error))
            }
        }
    }
}

/// Drives sagas from their jobs on [`SAGA_QUEUE`].
pub struct SagaJobHandler {
    pub orchestrator: SagaOrchestrator,
}

#[async_trait]
impl JobHandler for SagaJobHandler {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        if job.kind != SAGA_JOB_KIND {
            return Err(JobError::Permanent(format!(
                "unknown job kind {:?}",
                job.kind
            )));
        }
        let p = &job.payload;
        let (Some(saga_id), Some(kind)) = (p["saga_id"].as_str(), p["kind"].as_str()) else {
            return Err(JobError::Permanent("malformed saga job".into()));
        };
        match self
            .orchestrator
            .drive(saga_id, kind, p["input"].clone())
            .await
        {
            Ok(_) => Ok(()),
            Err(e @ (SagaError::Invalid(_) | SagaError::Corrupt(_) | SagaError::NotFound(_))) => {
                Err(JobError::Permanent(e.to_string()))
            }
            Err(e) => Err(JobError::Retry(e.to_string())),
        }
    }
}
