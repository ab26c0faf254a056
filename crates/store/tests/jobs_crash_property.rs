//! Property test, run on both job queue adapters (mem and SQLite): with workers crashing at
//! random points, every job is processed to effect exactly once or sits in the dead-letter
//! queue — none lost, none doubled.
//!
//! Deterministic: time is a simulated clock (`now`) and the whole run is a proptest-generated
//! plan (the jobs, then a sequence of worker actions), so proptest shrinks a failure to a
//! minimal plan and prints it. Every answer of the queue is checked against a small model of
//! what it may answer; the model never predicts lease *order*, only which jobs are eligible.
//!
//! The effect is idempotent by job id, as a real handler's is (the notification handler
//! appends with `expected_version = no_stream`): a second application is a no-op.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ficus_store::mem::MemJobQueue;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{Failure, Job, JobId, JobQueue, JobState, Lease, NewJob, StoreError};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

/// Longest a single property case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);
/// The simulated clock's start.
const BASE: i64 = 1_000_000;
/// The visibility timeout every lease is taken with.
const VIS: i64 = 1_000;
const WORKERS: usize = 3;
const QUEUES: [&str; 2] = ["crash-a", "crash-b"];
/// Longest initial delay of a job, and longest retry delay.
const MAX_DELAY_MS: i64 = 3_000;
const MAX_RETRY_DELAY_MS: i64 = 1_500;
/// Trace lines shown with a failure.
const TRACE_TAIL: usize = 60;

// ---------------------------------------------------------------------------------------------
// The plan
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct JobSpec {
    queue: usize,
    max_attempts: u32,
    priority: i32,
    delay_ms: Option<i64>,
}

/// What a worker does with the oldest job it holds.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// (a) Applies the effect and completes.
    Complete,
    /// (b) Applies the effect, then dies before completing: the lease is abandoned.
    EffectThenCrash,
    /// (c) Dies before applying the effect.
    CrashBeforeEffect,
    /// (d) Fails retryably: `RetryAt(now + delay)`, or `Dead` on its last attempt (as the
    /// runtime's worker decides).
    Retry { delay_ms: i64 },
    /// (e) Fails permanently: `Dead`.
    Permanent,
    /// (f) Runs past its lease (by `overrun_ms`); meanwhile `thief = (worker, max)` may lease
    /// the job's queue. Then applies the effect and tries to complete.
    TooLong {
        overrun_ms: i64,
        thief: Option<(usize, usize)>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Lease {
        worker: usize,
        queue: usize,
        max: usize,
    },
    Work {
        worker: usize,
        outcome: Outcome,
    },
    Advance {
        ms: i64,
    },
    /// The worker dies with everything it holds.
    CrashWorker {
        worker: usize,
    },
}

#[derive(Debug, Clone)]
struct Plan {
    jobs: Vec<JobSpec>,
    actions: Vec<Action>,
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        0..QUEUES.len(),
        1u32..5,
        prop_oneof![3 => Just(0i32), 1 => -2i32..3],
        proptest::option::weighted(0.3, 1i64..=MAX_DELAY_MS),
    )
        .prop_map(|(queue, max_attempts, priority, delay_ms)| JobSpec {
            queue,
            max_attempts,
            priority,
            delay_ms,
        })
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Complete),
        2 => Just(Outcome::EffectThenCrash),
        2 => Just(Outcome::CrashBeforeEffect),
        2 => (1i64..=MAX_RETRY_DELAY_MS).prop_map(|delay_ms| Outcome::Retry { delay_ms }),
        1 => Just(Outcome::Permanent),
        2 => (0i64..VIS, proptest::option::of((0..WORKERS, 1usize..5)))
            .prop_map(|(overrun_ms, thief)| Outcome::TooLong { overrun_ms, thief }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0..WORKERS, 0..QUEUES.len(), 1usize..5)
            .prop_map(|(worker, queue, max)| Action::Lease { worker, queue, max }),
        5 => (0..WORKERS, outcome()).prop_map(|(worker, outcome)| Action::Work { worker, outcome }),
        2 => (0i64..2_500).prop_map(|ms| Action::Advance { ms }),
        1 => (0..WORKERS).prop_map(|worker| Action::CrashWorker { worker }),
    ]
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        proptest::collection::vec(job_spec(), 1..60),
        proptest::collection::vec(action(), 0..250),
    )
        .prop_map(|(jobs, actions)| Plan { jobs, actions })
}

// ---------------------------------------------------------------------------------------------
// The model and the simulation
// ---------------------------------------------------------------------------------------------

/// Where the model says a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Ready { run_at: i64 },
    Leased { token: i64, expires: i64 },
    Dead,
    Done,
}

#[derive(Debug, Clone)]
struct ModelJob {
    queue: usize,
    max_attempts: u32,
    attempts: u32,
    state: M,
}

impl ModelJob {
    /// A lease call at `now` must consider it (to lease it, or to dead-letter it).
    fn eligible(&self, now: i64) -> bool {
        match self.state {
            M::Ready { run_at } => run_at <= now,
            M::Leased { expires, .. } => expires <= now,
            M::Dead | M::Done => false,
        }
    }

    /// A lease call at `now` may hand it out.
    fn leasable(&self, now: i64) -> bool {
        self.eligible(now)
            && (matches!(self.state, M::Ready { .. }) || self.attempts < self.max_attempts)
    }
}

/// A job a worker holds, as the lease call returned it.
#[derive(Debug, Clone, Copy)]
struct Held {
    lease: Lease,
    queue: usize,
    attempts: u32,
    max_attempts: u32,
    expires: i64,
}

#[derive(Debug, Clone, Copy)]
enum Adapter {
    Mem,
    Sqlite,
}

struct Sim {
    adapter: Adapter,
    q: Arc<dyn JobQueue>,
    now: i64,
    jobs: BTreeMap<JobId, ModelJob>,
    hands: Vec<VecDeque<Held>>,
    /// The effect's "stream" per job: appended only when empty (`no_stream`), so its length is
    /// the number of times the effect was committed.
    effects: HashMap<JobId, Vec<u32>>,
    /// Every application of the effect, committed or a no-op.
    raw_attempts: HashMap<JobId, u32>,
    /// Every lease token handed out per job, in order.
    handed: HashMap<JobId, Vec<i64>>,
    /// Successful `complete` calls per job.
    completed: HashMap<JobId, u32>,
    trace: Vec<String>,
}

macro_rules! ensure {
    ($sim:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($sim.failure(format!($($fmt)+)));
        }
    };
}

impl Sim {
    fn new(adapter: Adapter, q: Arc<dyn JobQueue>) -> Self {
        Self {
            adapter,
            q,
            now: BASE,
            jobs: BTreeMap::new(),
            hands: vec![VecDeque::new(); WORKERS],
            effects: HashMap::new(),
            raw_attempts: HashMap::new(),
            handed: HashMap::new(),
            completed: HashMap::new(),
            trace: Vec::new(),
        }
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("t+{}: {line}", self.now - BASE));
    }

    fn failure(&self, msg: String) -> TestCaseError {
        let from = self.trace.len().saturating_sub(TRACE_TAIL);
        TestCaseError::fail(format!(
            "[{:?}] {msg}\n  at t+{} ms; last operations:\n    {}",
            self.adapter,
            self.now - BASE,
            self.trace[from..].join("\n    ")
        ))
    }

    fn store_err(&self, op: &str, e: StoreError) -> TestCaseError {
        self.failure(format!("{op} failed: {e}"))
    }

    async fn run(&mut self, plan: &Plan) -> Result<(), TestCaseError> {
        self.enqueue(&plan.jobs).await?;
        for a in &plan.actions {
            self.step(*a).await?;
        }
        self.check_snapshot().await?;
        self.drain().await?;
        self.check_final().await
    }

    async fn enqueue(&mut self, specs: &[JobSpec]) -> Result<(), TestCaseError> {
        let new: Vec<NewJob> = specs
            .iter()
            .enumerate()
            .map(|(n, s)| NewJob {
                priority: s.priority,
                run_at_ms: s.delay_ms.map(|d| self.now + d),
                max_attempts: s.max_attempts,
                ..NewJob::new(QUEUES[s.queue], "crashy", json!({ "n": n }))
            })
            .collect();
        let got = match self.q.enqueue(new, self.now).await {
            Ok(g) => g,
            Err(e) => return Err(self.store_err("enqueue", e)),
        };
        ensure!(
            self,
            got.len() == specs.len(),
            "enqueue of {} jobs answered {}",
            specs.len(),
            got.len()
        );
        for (s, e) in specs.iter().zip(&got) {
            ensure!(
                self,
                e.created,
                "job without a unique key not created: {e:?}"
            );
            let fresh = self
                .jobs
                .insert(
                    e.id,
                    ModelJob {
                        queue: s.queue,
                        max_attempts: s.max_attempts,
                        attempts: 0,
                        state: M::Ready {
                            run_at: self.now + s.delay_ms.unwrap_or(0),
                        },
                    },
                )
                .is_none();
            ensure!(self, fresh, "enqueue gave id {} twice", e.id);
        }
        let ids: Vec<JobId> = got.iter().map(|e| e.id).collect();
        self.log(format!("enqueued {ids:?}"));
        Ok(())
    }

    async fn step(&mut self, a: Action) -> Result<(), TestCaseError> {
        match a {
            Action::Lease { worker, queue, max } => {
                let (got, _) = self.lease(worker, queue, max).await?;
                self.hands[worker].extend(got);
            }
            Action::Work { worker, outcome } => self.work(worker, outcome).await?,
            Action::Advance { ms } => {
                self.now += ms;
                self.log(format!("clock +{ms}"));
            }
            Action::CrashWorker { worker } => {
                let lost: Vec<JobId> = self.hands[worker].drain(..).map(|h| h.lease.id).collect();
                self.log(format!("w{worker} CRASHES holding {lost:?}"));
            }
        }
        Ok(())
    }

    async fn work(&mut self, worker: usize, outcome: Outcome) -> Result<(), TestCaseError> {
        let Some(h) = self.hands[worker].pop_front() else {
            return Ok(());
        };
        let id = h.lease.id;
        match outcome {
            Outcome::Complete => {
                self.apply_effect(worker, id);
                self.complete(worker, h).await?;
            }
            Outcome::EffectThenCrash => {
                self.apply_effect(worker, id);
                self.log(format!("w{worker} crashes after the effect of {id}"));
            }
            Outcome::CrashBeforeEffect => {
                self.log(format!("w{worker} crashes before the effect of {id}"));
            }
            Outcome::Retry { delay_ms } => {
                let failure = if h.attempts < h.max_attempts {
                    Failure::RetryAt {
                        at_ms: self.now + delay_ms,
                    }
                } else {
                    Failure::Dead
                };
                self.fail(worker, h, failure).await?;
            }
            Outcome::Permanent => self.fail(worker, h, Failure::Dead).await?,
            Outcome::TooLong { overrun_ms, thief } => {
                self.now = self.now.max(h.expires + overrun_ms);
                self.log(format!(
                    "w{worker} ran too long on {id} (lease expired at t+{})",
                    h.expires - BASE
                ));
                if let Some((tw, max)) = thief {
                    let (got, _) = self.lease(tw, h.queue, max).await?;
                    self.hands[tw].extend(got);
                }
                self.apply_effect(worker, id);
                self.complete(worker, h).await?;
            }
        }
        Ok(())
    }

    /// The handler's effect: idempotent by job id, like an append with `no_stream`.
    fn apply_effect(&mut self, worker: usize, id: JobId) {
        let n = self.raw_attempts.entry(id).or_default();
        *n += 1;
        let attempt = *n;
        let stream = self.effects.entry(id).or_default();
        let committed = stream.is_empty();
        if committed {
            stream.push(attempt);
        }
        self.log(format!(
            "w{worker} effect of {id} (application #{attempt}): {}",
            if committed {
                "committed"
            } else {
                "already there, no-op"
            }
        ));
    }

    /// Leases through the queue and checks the answer against the model. Returns the jobs
    /// leased and how many expired last-attempt leases went to the dead-letter queue.
    async fn lease(
        &mut self,
        worker: usize,
        queue: usize,
        max: usize,
    ) -> Result<(Vec<Held>, usize), TestCaseError> {
        let now = self.now;
        let got: Vec<Job> = match self.q.lease(QUEUES[queue], max, now, VIS).await {
            Ok(g) => g,
            Err(e) => return Err(self.store_err("lease", e)),
        };
        ensure!(
            self,
            got.len() <= max,
            "lease(max={max}) returned {}",
            got.len()
        );
        let mut held = Vec::with_capacity(got.len());
        let mut seen = HashSet::new();
        for j in &got {
            ensure!(self, seen.insert(j.id), "lease returned job {} twice", j.id);
            let Some(m) = self.jobs.get(&j.id).cloned() else {
                return Err(self.failure(format!("lease returned unknown job {j:?}")));
            };
            ensure!(
                self,
                m.queue == queue && j.queue == QUEUES[queue],
                "lease of {} returned job {} of {}",
                QUEUES[queue],
                j.id,
                j.queue
            );
            ensure!(
                self,
                m.leasable(now),
                "w{worker} was leased job {} which the model says is {:?} (attempts {}/{}) — \
                 a live lease doubled, or a finished job resurrected",
                j.id,
                m.state,
                m.attempts,
                m.max_attempts
            );
            let Some(lease) = j
                .lease
                .filter(|l| l.id == j.id && j.state == JobState::Leased)
            else {
                return Err(self.failure(format!("leased job without a proper lease: {j:?}")));
            };
            ensure!(
                self,
                j.lease_expires_at_ms == Some(now + VIS),
                "lease expiry {:?}, expected {}",
                j.lease_expires_at_ms,
                now + VIS
            );
            ensure!(
                self,
                j.attempts == m.attempts + 1 && j.max_attempts == m.max_attempts,
                "job {} leased with attempts {}/{}, model {}+1/{}",
                j.id,
                j.attempts,
                j.max_attempts,
                m.attempts,
                m.max_attempts
            );
            ensure!(
                self,
                j.attempts <= j.max_attempts,
                "job {} leased for attempt {} of {}",
                j.id,
                j.attempts,
                j.max_attempts
            );
            let tokens = self.handed.entry(j.id).or_default();
            let reused = tokens.contains(&lease.token);
            tokens.push(lease.token);
            ensure!(self, !reused, "job {} got a lease token twice", j.id);
            let m = self.jobs.get_mut(&j.id).expect("checked above");
            m.attempts = j.attempts;
            m.state = M::Leased {
                token: lease.token,
                expires: now + VIS,
            };
            held.push(Held {
                lease,
                queue,
                attempts: j.attempts,
                max_attempts: j.max_attempts,
                expires: now + VIS,
            });
        }

        // Expired leases on their last attempt may have gone to the dead-letter queue.
        let doomed: Vec<(JobId, M, u32)> = self
            .jobs
            .iter()
            .filter(|(id, m)| {
                m.queue == queue
                    && !seen.contains(id)
                    && m.eligible(now)
                    && matches!(m.state, M::Leased { .. })
                    && m.attempts >= m.max_attempts
            })
            .map(|(id, m)| (*id, m.state, m.attempts))
            .collect();
        let mut dead = Vec::new();
        for (id, state, attempts) in doomed {
            let g = match self.q.get(id).await {
                Ok(g) => g,
                Err(e) => return Err(self.store_err("get", e)),
            };
            match g {
                Some(j) if j.state == JobState::Dead => {
                    ensure!(
                        self,
                        j.attempts == attempts && j.last_error.is_some(),
                        "dead-lettered on expiry with attempts {} (model {attempts}), error {:?}",
                        j.attempts,
                        j.last_error
                    );
                    self.jobs.get_mut(&id).expect("known").state = M::Dead;
                    dead.push(id);
                }
                Some(j)
                    if j.state == JobState::Leased
                        && matches!(state, M::Leased { token, .. }
                            if j.lease == Some(Lease { id, token })) => {}
                other => {
                    return Err(self.failure(format!(
                        "job {id}, model {state:?}, after a lease call is {other:?}"
                    )))
                }
            }
        }

        // Liveness: a lease call that used fewer than `max` slots left nothing it should see.
        if held.len() + dead.len() < max {
            let left: Vec<JobId> = self
                .jobs
                .iter()
                .filter(|(_, m)| m.queue == queue && m.eligible(now))
                .map(|(id, _)| *id)
                .collect();
            ensure!(
                self,
                left.is_empty(),
                "lease(max={max}) leased {} and dead-lettered {} but left eligible jobs {left:?}",
                held.len(),
                dead.len()
            );
        }
        let ids: Vec<(JobId, u32)> = held.iter().map(|h| (h.lease.id, h.attempts)).collect();
        self.log(format!(
            "w{worker} lease {}(max {max}) -> (id, attempt) {ids:?}; expired into DLQ {dead:?}",
            QUEUES[queue]
        ));
        let n_dead = dead.len();
        Ok((held, n_dead))
    }

    /// Whether the model says this lease is still held (expired or not).
    fn holds(&self, l: Lease) -> bool {
        matches!(self.jobs[&l.id].state, M::Leased { token, .. } if token == l.token)
    }

    async fn complete(&mut self, worker: usize, h: Held) -> Result<bool, TestCaseError> {
        let id = h.lease.id;
        let expect = self.holds(h.lease);
        let got = match self.q.complete(&[h.lease]).await {
            Ok(g) => g,
            Err(e) => return Err(self.store_err("complete", e)),
        };
        self.log(format!(
            "w{worker} complete {id} (attempt {}) -> {got:?}",
            h.attempts
        ));
        ensure!(
            self,
            got == [expect],
            "complete of {id} with lease of attempt {} answered {got:?}, expected [{expect}] \
             (model {:?}, tokens handed out {:?}, ours {})",
            h.attempts,
            self.jobs[&id].state,
            self.handed.get(&id),
            h.lease.token
        );
        if expect {
            ensure!(
                self,
                self.handed[&id].last() == Some(&h.lease.token),
                "complete of {id} succeeded with a lease older than the job's latest"
            );
            let n = self.completed.entry(id).or_default();
            *n += 1;
            let n = *n;
            ensure!(self, n == 1, "job {id} completed {n} times");
            self.jobs.get_mut(&id).expect("known").state = M::Done;
        }
        Ok(expect)
    }

    async fn fail(
        &mut self,
        worker: usize,
        h: Held,
        failure: Failure,
    ) -> Result<(), TestCaseError> {
        let id = h.lease.id;
        let expect = self.holds(h.lease);
        let got = match self
            .q
            .fail(h.lease, "simulated failure", failure, self.now)
            .await
        {
            Ok(g) => g,
            Err(e) => return Err(self.store_err("fail", e)),
        };
        self.log(format!(
            "w{worker} fail {id} (attempt {}/{}) {failure:?} -> {got}",
            h.attempts, h.max_attempts
        ));
        ensure!(
            self,
            got == expect,
            "fail of {id} answered {got}, expected {expect} (model {:?})",
            self.jobs[&id].state
        );
        if got {
            self.jobs.get_mut(&id).expect("known").state = match failure {
                Failure::RetryAt { at_ms } => M::Ready { run_at: at_ms },
                Failure::Dead => M::Dead,
            };
        }
        Ok(())
    }

    /// After the random phase, the store agrees with the model on every job.
    async fn check_snapshot(&mut self) -> Result<(), TestCaseError> {
        self.log("snapshot".into());
        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let m = self.jobs[&id].clone();
            let g = match self.q.get(id).await {
                Ok(g) => g,
                Err(e) => return Err(self.store_err("get", e)),
            };
            let ok = match (&g, m.state) {
                (None, M::Done) => true,
                (Some(j), M::Ready { run_at }) => {
                    j.state == JobState::Ready && j.run_at_ms == run_at && j.lease.is_none()
                }
                (Some(j), M::Leased { token, expires }) => {
                    j.state == JobState::Leased
                        && j.lease == Some(Lease { id, token })
                        && j.lease_expires_at_ms == Some(expires)
                }
                (Some(j), M::Dead) => j.state == JobState::Dead && j.lease.is_none(),
                _ => false,
            };
            let attempts_ok = g.as_ref().is_none_or(|j| j.attempts == m.attempts);
            ensure!(
                self,
                ok && attempts_ok,
                "job {id}: store has {g:?}, model {m:?}"
            );
        }
        Ok(())
    }

    /// The healthy phase: survivors finish what they hold, then workers only succeed and the
    /// clock jumps past every lease and retry, so the queues must drain.
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        self.log("healthy phase".into());
        for w in 0..WORKERS {
            while let Some(h) = self.hands[w].pop_front() {
                self.apply_effect(w, h.lease.id);
                self.complete(w, h).await?;
            }
        }
        for round in 0..8 {
            let live = self
                .jobs
                .values()
                .any(|m| matches!(m.state, M::Ready { .. } | M::Leased { .. }));
            if !live {
                return Ok(());
            }
            self.now += VIS + MAX_DELAY_MS + MAX_RETRY_DELAY_MS + 1;
            let w = round % WORKERS;
            for queue in 0..QUEUES.len() {
                loop {
                    let (got, dead) = self.lease(w, queue, 4).await?;
                    if got.is_empty() && dead == 0 {
                        break;
                    }
                    for h in got {
                        self.apply_effect(w, h.lease.id);
                        let done = self.complete(w, h).await?;
                        ensure!(
                            self,
                            done,
                            "healthy complete of {} failed with a fresh lease",
                            h.lease.id
                        );
                    }
                }
            }
        }
        let stuck: Vec<(JobId, M)> = self
            .jobs
            .iter()
            .filter(|(_, m)| matches!(m.state, M::Ready { .. } | M::Leased { .. }))
            .map(|(id, m)| (*id, m.state))
            .collect();
        ensure!(
            self,
            stuck.is_empty(),
            "queues did not drain in the healthy phase: {stuck:?}"
        );
        Ok(())
    }

    async fn check_final(&mut self) -> Result<(), TestCaseError> {
        self.log("final checks".into());
        let mut dead_listed: BTreeMap<JobId, Job> = BTreeMap::new();
        for (qi, qn) in QUEUES.iter().enumerate() {
            let dead = match self.q.list_dead(qn, 1000).await {
                Ok(d) => d,
                Err(e) => return Err(self.store_err("list_dead", e)),
            };
            for j in dead {
                ensure!(
                    self,
                    j.queue == *qn && j.state == JobState::Dead,
                    "list_dead({qn}) listed {j:?}"
                );
                ensure!(
                    self,
                    self.jobs.get(&j.id).is_some_and(|m| m.queue == qi),
                    "list_dead({qn}) listed a job not enqueued there: {j:?}"
                );
                ensure!(
                    self,
                    j.attempts <= j.max_attempts,
                    "dead job {} recorded {} attempts of {}",
                    j.id,
                    j.attempts,
                    j.max_attempts
                );
                let id = j.id;
                ensure!(
                    self,
                    dead_listed.insert(id, j).is_none(),
                    "job {id} listed dead twice"
                );
            }
        }

        let ids: Vec<JobId> = self.jobs.keys().copied().collect();
        for id in ids {
            let m = self.jobs[&id].clone();
            let committed = self.effects.get(&id).map_or(0, Vec::len);
            let completed = self.completed.get(&id).copied().unwrap_or(0);
            let raw = self.raw_attempts.get(&id).copied().unwrap_or(0);
            ensure!(
                self,
                committed <= 1 && committed as u32 <= raw,
                "job {id}: effect committed {committed} times ({raw} applications)"
            );
            let g = match self.q.get(id).await {
                Ok(g) => g,
                Err(e) => return Err(self.store_err("get", e)),
            };
            match m.state {
                M::Done => {
                    ensure!(
                        self,
                        g.is_none() && committed == 1 && completed == 1,
                        "completed job {id}: get {g:?}, effect committed {committed}, \
                         completed {completed} times"
                    );
                    ensure!(
                        self,
                        !dead_listed.contains_key(&id),
                        "completed job {id} is also listed dead"
                    );
                }
                M::Dead => {
                    let listed = dead_listed.get(&id);
                    ensure!(
                        self,
                        completed == 0
                            && listed.is_some_and(|j| j.attempts == m.attempts)
                            && g.as_ref().is_some_and(|j| j.state == JobState::Dead),
                        "dead job {id} (model {m:?}): listed {listed:?}, get {g:?}, \
                         completed {completed} times"
                    );
                }
                M::Ready { .. } | M::Leased { .. } => {
                    return Err(self.failure(format!("job {id} still live: {m:?}, get {g:?}")))
                }
            }
        }
        let model_dead = self.jobs.values().filter(|m| m.state == M::Dead).count();
        ensure!(
            self,
            dead_listed.len() == model_dead,
            "list_dead has {} jobs, the model {model_dead}",
            dead_listed.len()
        );

        let stats = match self.q.stats(self.now).await {
            Ok(s) => s,
            Err(e) => return Err(self.store_err("stats", e)),
        };
        for (qi, qn) in QUEUES.iter().enumerate() {
            let dead = self
                .jobs
                .values()
                .filter(|m| m.queue == qi && m.state == M::Dead)
                .count() as u64;
            let s = stats.iter().find(|s| s.queue == *qn);
            let ok = match s {
                Some(s) => s.ready == 0 && s.delayed == 0 && s.in_flight == 0 && s.dead == dead,
                None => dead == 0,
            };
            ensure!(
                self,
                ok,
                "stats of {qn}: {s:?}, expected nothing live and {dead} dead"
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------------------

/// Runs one async property case on its own multi-thread runtime, bounded by [`CASE_TIMEOUT`].
fn block_on<F>(case: F) -> Result<(), TestCaseError>
where
    F: Future<Output = Result<(), TestCaseError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        match tokio::time::timeout(CASE_TIMEOUT, case).await {
            Ok(r) => r,
            Err(_) => Err(TestCaseError::fail("property case timed out (hang?)")),
        }
    })
}

async fn crash_case(adapter: Adapter, plan: Plan) -> Result<(), TestCaseError> {
    match adapter {
        Adapter::Mem => {
            Sim::new(adapter, Arc::new(MemJobQueue::new()))
                .run(&plan)
                .await
        }
        Adapter::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Arc::new(
                SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
                    .expect("open sqlite store"),
            );
            let queue = Arc::new(SqliteJobQueue::new(store.clone()));
            let r = Sim::new(adapter, queue).run(&plan).await;
            store.shutdown().await;
            r
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn mem_crashing_workers_process_each_job_once_or_dead_letter_it(plan in plan()) {
        block_on(crash_case(Adapter::Mem, plan))?;
    }

    #[test]
    fn sqlite_crashing_workers_process_each_job_once_or_dead_letter_it(plan in plan()) {
        block_on(crash_case(Adapter::Sqlite, plan))?;
    }
}
