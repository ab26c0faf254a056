//! The job queue port: durable work items leased by workers with a visibility timeout.
//!
//! An item is *ready* (possibly delayed until `run_at_ms`), *leased* by one worker until its
//! lease expires, or *dead* (in the dead-letter queue). A completed item is removed. A lease
//! carries a random token: a worker whose lease expired (it was too slow, or died) can no
//! longer complete or fail the item, because the next lease changed the token.
//!
//! Time is passed in (`now_ms`) so tests can run on a simulated clock.

use async_trait::async_trait;
use serde_json::Value;

use crate::StoreError;

/// Job ids are positive and increase in enqueue order.
pub type JobId = i64;

/// Longest queue name, kind, unique key or error text kept, in bytes.
pub const JOB_NAME_MAX_BYTES: usize = 128;
pub const JOB_ERROR_MAX_BYTES: usize = 2048;
/// Most jobs one `enqueue` call may carry.
pub const MAX_ENQUEUE_BATCH: usize = 10_000;
/// Most jobs one `lease` call may return.
pub const MAX_LEASE_BATCH: usize = 1000;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this time (a delayed job); `None` is now.
    pub run_at_ms: Option<i64>,
    /// Attempts before the job goes to the dead-letter queue.
    pub max_attempts: u32,
    /// While a job with this key is ready or leased in the same queue, enqueueing another is
    /// a no-op that returns the existing job.
    pub unique_key: Option<String>,
}

impl NewJob {
    pub fn new(queue: impl Into<String>, kind: impl Into<String>, payload: Value) -> Self {
        Self {
            queue: queue.into(),
            kind: kind.into(),
            payload,
            priority: 0,
            run_at_ms: None,
            max_attempts: 25,
            unique_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Ready,
    Leased,
    Dead,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub priority: i32,
    pub state: JobState,
    /// Leases so far (the current one included).
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at_ms: i64,
    pub created_at_ms: i64,
    pub last_error: Option<String>,
    pub unique_key: Option<String>,
    /// The bulk job (batch) this item belongs to.
    pub batch_id: Option<String>,
    /// The current lease's token and expiry, when leased.
    pub lease: Option<Lease>,
    pub lease_expires_at_ms: Option<i64>,
}

/// Proof of a lease: the job and the token the lease was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    pub id: JobId,
    pub token: i64,
}

/// What `enqueue` did with one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    pub id: JobId,
    /// False when a live job with the same unique key already existed (its id is returned).
    pub created: bool,
}

/// Where a failed attempt goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Back to ready, not before `at_ms`.
    RetryAt { at_ms: i64 },
    /// Straight to the dead-letter queue.
    Dead,
}

/// Which dead jobs a redrive or purge touches. Empty filter: all of the queue's dead jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    pub ids: Option<Vec<JobId>>,
    pub kind: Option<String>,
}

/// A queue's depth and health.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queue: String,
    /// Ready now.
    pub ready: u64,
    /// Ready but delayed into the future.
    pub delayed: u64,
    pub in_flight: u64,
    pub dead: u64,
    /// How long the oldest job that is ready now has waited, in ms (0 if none).
    pub oldest_ready_wait_ms: u64,
}

/// A bulk job to create: its items are enqueued with it, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBatch {
    pub id: String,
    /// The queue its items go to.
    pub queue: String,
    pub kind: String,
    pub params: Value,
    /// The fan-in job, enqueued exactly once, in the same transaction as the last item's
    /// completion (or death). Its payload gets `batch_id`, `total`, `done` and `dead` added.
    pub fan_in: Option<NewJob>,
}

/// Where a bulk job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Items are still ready or running.
    Running,
    /// Every item completed.
    Completed,
    /// Every item finished, some in the dead-letter queue. The fan-in still runs: it decides
    /// what a partial result means for this kind of job.
    CompletedWithFailures,
    /// Cancelled: items not yet started were removed, running ones finished, no fan-in.
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Completed => "completed",
            BatchState::CompletedWithFailures => "completed_with_failures",
            BatchState::Cancelled => "cancelled",
        }
    }
}

/// A bulk job and its progress.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: String,
    pub queue: String,
    pub kind: String,
    pub params: Value,
    pub state: BatchState,
    pub total: u64,
    pub done: u64,
    pub dead: u64,
    /// Items removed by a cancellation before they ran.
    pub cancelled: u64,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// Set by the fan-in step (e.g. where an export was written).
    pub result: Option<Value>,
    /// The fan-in job, once enqueued.
    pub fan_in_job: Option<JobId>,
}

/// Most items one bulk job may hold.
pub const MAX_BATCH_ITEMS: usize = MAX_ENQUEUE_BATCH;

/// The job queue port. Every adapter runs [`crate::conformance::jobs`].
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Enqueues jobs atomically (all or none); answers once they are durable.
    async fn enqueue(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<Enqueued>, StoreError>;

    /// Leases up to `max` jobs of `queue` that are ready now or whose lease expired, highest
    /// priority first, then oldest `run_at_ms`. A job whose expired lease used its last
    /// attempt goes to the dead-letter queue instead.
    async fn lease(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<Job>, StoreError>;

    /// Extends leases; false for a lease that is no longer held.
    async fn heartbeat(
        &self,
        leases: &[Lease],
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<bool>, StoreError>;

    /// Completes (removes) leased jobs; false for a lease that is no longer held.
    async fn complete(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError>;

    /// Records a failed attempt; false when the lease is no longer held.
    async fn fail(
        &self,
        lease: Lease,
        error: &str,
        failure: Failure,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives leased jobs back without counting the attempt (graceful shutdown).
    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError>;

    /// Dead jobs of `queue`, oldest first, with their last error and attempt count.
    async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Moves matching dead jobs back to ready with a fresh attempt budget; returns how many.
    async fn redrive(
        &self,
        queue: &str,
        filter: &DeadFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Deletes matching dead jobs; returns how many.
    async fn purge_dead(&self, queue: &str, filter: &DeadFilter) -> Result<u64, StoreError>;

    /// One job by id (`None` once completed or purged).
    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError>;

    /// Depth of every queue that has jobs.
    async fn stats(&self, now_ms: i64) -> Result<Vec<QueueStats>, StoreError>;

    /// Creates a bulk job and enqueues its items, atomically. Completing or killing an item
    /// counts toward the batch; when every item is finished the batch's state is decided and
    /// its fan-in job enqueued, once. A batch without items finishes at once. A redriven dead
    /// item counts as dead no more; it counts as done if it then completes, but a finished
    /// batch stays finished (its fan-in ran once).
    async fn create_batch(
        &self,
        batch: NewBatch,
        items: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Batch, StoreError>;

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, StoreError>;

    /// Cancels a running batch: removes its items that are not leased, marks it cancelled.
    /// Leased items finish (their completion still counts as done). `None` for an unknown id;
    /// a finished batch is returned unchanged.
    async fn cancel_batch(&self, id: &str, now_ms: i64) -> Result<Option<Batch>, StoreError>;

    /// Records the fan-in's result; false for an unknown batch.
    async fn set_batch_result(&self, id: &str, result: Value) -> Result<bool, StoreError>;
}

/// Checks a new batch before touching storage.
pub(crate) fn validate_batch(batch: &NewBatch, items: &[NewJob]) -> Result<(), StoreError> {
    let name_ok = |s: &str| !s.is_empty() && s.len() <= JOB_NAME_MAX_BYTES;
    if !name_ok(&batch.id) || !name_ok(&batch.queue) || !name_ok(&batch.kind) {
        return Err(StoreError::Invalid(format!(
            "batch id, queue and kind must be 1-{JOB_NAME_MAX_BYTES} bytes"
        )));
    }
    if items.len() > MAX_BATCH_ITEMS {
        return Err(StoreError::Invalid(format!(
            "a bulk job may hold at most {MAX_BATCH_ITEMS} items, got {}",
            items.len()
        )));
    }
    if items.iter().any(|j| j.queue != batch.queue) {
        return Err(StoreError::Invalid(
            "every item of a bulk job goes to the batch's queue".into(),
        ));
    }
    validate_jobs(items)?;
    if let Some(f) = &batch.fan_in {
        validate_jobs(std::slice::from_ref(f))?;
    }
    Ok(())
}

/// The fan-in job of a finished batch, its payload completed with the batch's counts.
pub(crate) fn fan_in_job(fan_in: &NewJob, batch: &Batch) -> NewJob {
    let mut job = fan_in.clone();
    let mut payload = match job.payload.take() {
        Value::Object(m) => m,
        Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("value".into(), other);
            m
        }
    };
    payload.insert("batch_id".into(), Value::String(batch.id.clone()));
    payload.insert("total".into(), batch.total.into());
    payload.insert("done".into(), batch.done.into());
    payload.insert("dead".into(), batch.dead.into());
    job.payload = Value::Object(payload);
    // Runnable at once, whatever clock the caller uses: it was due when the batch began.
    job.run_at_ms = Some(batch.created_at_ms);
    job
}

/// The state a running batch moves to once `done + dead + cancelled` reaches `total`.
pub(crate) fn finished_state(batch: &Batch) -> Option<BatchState> {
    if batch.state != BatchState::Running || batch.done + batch.dead + batch.cancelled < batch.total
    {
        return None;
    }
    Some(if batch.dead == 0 {
        BatchState::Completed
    } else {
        BatchState::CompletedWithFailures
    })
}

/// Checks what every adapter refuses before touching storage.
pub(crate) fn validate_jobs(jobs: &[NewJob]) -> Result<(), StoreError> {
    if jobs.len() > MAX_ENQUEUE_BATCH {
        return Err(StoreError::Invalid(format!(
            "an enqueue may carry at most {MAX_ENQUEUE_BATCH} jobs, got {}",
            jobs.len()
        )));
    }
    for j in jobs {
        let name_ok = |s: &str| !s.is_empty() && s.len() <= JOB_NAME_MAX_BYTES;
        if !name_ok(&j.queue) || !name_ok(&j.kind) {
            return Err(StoreError::Invalid(format!(
                "queue and kind must be 1-{JOB_NAME_MAX_BYTES} bytes"
            )));
        }
        if j.unique_key.as_deref().is_some_and(|k| !name_ok(k)) {
            return Err(StoreError::Invalid(format!(
                "unique_key must be 1-{JOB_NAME_MAX_BYTES} bytes"
            )));
        }
        if j.max_attempts == 0 {
            return Err(StoreError::Invalid(
                "max_attempts must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// Cuts an error text to [`JOB_ERROR_MAX_BYTES`] on a character boundary.
pub(crate) fn clip_error(e: &str) -> String {
    if e.len() <= JOB_ERROR_MAX_BYTES {
        return e.to_owned();
    }
    let mut end = JOB_ERROR_MAX_BYTES;
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e[..end].to_owned()
}
