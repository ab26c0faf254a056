//! In-memory twin of the job queue: the same rules, no durability.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::jobs::{
    clip_error, fan_in_job, finished_state, validate_batch, validate_jobs, MAX_LEASE_BATCH,
};
use crate::{
    Batch, BatchState, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, JobState, Lease,
    NewBatch, NewJob, QueueStats, StoreError,
};

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<JobId, Job>,
    next_id: JobId,
    next_token: i64,
    /// Bulk jobs and their fan-in job, not yet enqueued.
    batches: BTreeMap<String, (Batch, Option<NewJob>)>,
}

impl Inner {
    fn insert(&mut self, j: NewJob, now_ms: i64, batch_id: Option<&str>) -> Enqueued {
        if let Some(key) = &j.unique_key {
            if let Some(id) = live_key(&self.jobs, &j.queue, key) {
                return Enqueued { id, created: false };
            }
        }
        self.next_id += 1;
        let id = self.next_id;
        self.jobs.insert(
            id,
            Job {
                id,
                queue: j.queue,
                kind: j.kind,
                payload: j.payload,
                priority: j.priority,
                state: JobState::Ready,
                attempts: 0,
                max_attempts: j.max_attempts,
                run_at_ms: j.run_at_ms.unwrap_or(now_ms),
                created_at_ms: now_ms,
                last_error: None,
                unique_key: j.unique_key,
                batch_id: batch_id.map(str::to_owned),
                lease: None,
                lease_expires_at_ms: None,
            },
        );
        Enqueued { id, created: true }
    }

    /// Counts finished items toward a batch; finishes it (and enqueues its fan-in) at the last.
    fn progress(&mut self, batch_id: Option<&str>, done: u64, dead: u64) {
        let Some(id) = batch_id else { return };
        let Some((batch, _)) = self.batches.get_mut(id) else {
            return;
        };
        batch.done += done;
        batch.dead += dead;
        self.finish_if_done(id);
    }

    fn finish_if_done(&mut self, id: &str) {
        let Some((batch, fan_in)) = self.batches.get(id) else {
            return;
        };
        let Some(state) = finished_state(batch) else {
            return;
        };
        let fan_in = fan_in.as_ref().map(|f| fan_in_job(f, batch));
        let created_at = batch.created_at_ms;
        let fan_in_id = fan_in.map(|job| self.insert(job, created_at, None).id);
        let (batch, _) = self.batches.get_mut(id).expect("present");
        batch.state = state;
        batch.finished_at_ms = Some(crate::now_ms());
        batch.fan_in_job = fan_in_id;
    }
}

#[derive(Default)]
pub struct MemJobQueue {
    inner: Mutex<Inner>,
}

impl MemJobQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn held(job: &Job, lease: &Lease) -> bool {
    job.state == JobState::Leased && job.lease == Some(*lease)
}

fn matches(job: &Job, queue: &str, filter: &DeadFilter) -> bool {
    job.queue == queue
        && job.state == JobState::Dead
        && filter.ids.as_ref().is_none_or(|ids| ids.contains(&job.id))
        && filter.kind.as_ref().is_none_or(|k| *k == job.kind)
}

fn live_key(jobs: &BTreeMap<JobId, Job>, queue: &str, key: &str) -> Option<JobId> {
    jobs.values()
        .find(|j| {
            j.queue == queue && j.state != JobState::Dead && j.unique_key.as_deref() == Some(key)
        })
        .map(|j| j.id)
}

#[async_trait]
impl JobQueue for MemJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<Enqueued>, StoreError> {
        validate_jobs(&jobs)?;
        let mut inner = self.lock();
        Ok(jobs
            .into_iter()
            .map(|j| inner.insert(j, now_ms, None))
            .collect())
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let max = max.min(MAX_LEASE_BATCH);
        let mut inner = self.lock();
        // Ready jobs and jobs whose lease expired compete on the same order.
        let mut candidates: Vec<&Job> = inner
            .jobs
            .values()
            .filter(|j| {
                j.queue == queue
                    && match j.state {
                        JobState::Ready => j.run_at_ms <= now_ms,
                        JobState::Leased => j.lease_expires_at_ms.is_some_and(|t| t <= now_ms),
                        JobState::Dead => false,
                    }
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(a.run_at_ms.cmp(&b.run_at_ms))
                .then(a.id.cmp(&b.id))
        });
        let picked: Vec<JobId> = candidates.iter().take(max).map(|j| j.id).collect();
        let mut ids = Vec::with_capacity(picked.len());
        for id in picked {
            let j = inner.jobs.get_mut(&id).expect("present");
            if j.state == JobState::Leased && j.attempts >= j.max_attempts {
                j.state = JobState::Dead;
                j.lease = None;
                j.lease_expires_at_ms = None;
                j.last_error = Some(format!(
                    "lease expired on the last of {} attempts",
                    j.attempts
                ));
                let batch = j.batch_id.clone();
                inner.progress(batch.as_deref(), 0, 1);
            } else {
                ids.push(id);
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            inner.next_token += 1;
            let token = inner.next_token;
            let j = inner.jobs.get_mut(&id).expect("present");
            j.state = JobState::Leased;
            j.attempts += 1;
            j.lease = Some(Lease { id, token });
            j.lease_expires_at_ms = Some(now_ms + visibility_ms);
            out.push(j.clone());
        }
        Ok(out)
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        Ok(leases
            .iter()
            .map(|l| match inner.jobs.get_mut(&l.id) {
                Some(j) if held(j, l) => {
                    j.lease_expires_at_ms = Some(now_ms + visibility_ms);
                    true
                }
                _ => false,
            })
            .collect())
    }

    async fn complete(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        Ok(leases
            .iter()
            .map(|l| {
                if inner.jobs.get(&l.id).is_some_and(|j| held(j, l)) {
                    let job = inner.jobs.remove(&l.id).expect("present");
                    inner.progress(job.batch_id.as_deref(), 1, 0);
                    true
                } else {
                    false
                }
            })
            .collect())
    }

    async fn fail(
        &self,
        lease: Lease,
        error: &str,
        failure: Failure,
        _now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let Some(j) = inner.jobs.get_mut(&lease.id).filter(|j| held(j, &lease)) else {
            return Ok(false);
        };
        j.last_error = Some(clip_error(error));
        j.lease = None;
        j.lease_expires_at_ms = None;
        match failure {
            Failure::RetryAt { at_ms } => {
                j.state = JobState::Ready;
                j.run_at_ms = at_ms;
            }
            Failure::Dead => {
                j.state = JobState::Dead;
                let batch = j.batch_id.clone();
                inner.progress(batch.as_deref(), 0, 1);
            }
        }
        Ok(true)
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        let mut inner = self.lock();
        Ok(leases
            .iter()
            .map(|l| match inner.jobs.get_mut(&l.id) {
                Some(j) if held(j, l) => {
                    j.state = JobState::Ready;
                    j.attempts = j.attempts.saturating_sub(1);
                    j.lease = None;
                    j.lease_expires_at_ms = None;
                    true
                }
                _ => false,
            })
            .collect())
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<Job>, StoreError> {
        let all = DeadFilter::default();
        Ok(self
            .lock()
            .jobs
            .values()
            .filter(|j| matches(j, queue, &all))
            .take(limit.min(MAX_LEASE_BATCH))
            .cloned()
            .collect())
    }

    async fn redrive(
        &self,
        queue: &str,
        filter: &DeadFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let ids: Vec<JobId> = inner
            .jobs
            .values()
            .filter(|j| matches(j, queue, filter))
            .map(|j| j.id)
            .collect();
        let mut n = 0;
        for id in ids {
            let key = inner.jobs[&id].unique_key.clone();
            if key.is_some_and(|k| live_key(&inner.jobs, queue, &k).is_some()) {
                continue;
            }
            let j = inner.jobs.get_mut(&id).expect("present");
            j.state = JobState::Ready;
            j.attempts = 0;
            j.run_at_ms = now_ms;
            n += 1;
            // No longer dead; it counts as done if it completes now.
            if let Some(b) = j.batch_id.clone() {
                if let Some((batch, _)) = inner.batches.get_mut(&b) {
                    batch.dead = batch.dead.saturating_sub(1);
                }
            }
        }
        Ok(n)
    }

    async fn purge_dead(&self, queue: &str, filter: &DeadFilter) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let before = inner.jobs.len();
        inner.jobs.retain(|_, j| !matches(j, queue, filter));
        Ok((before - inner.jobs.len()) as u64)
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.lock().jobs.get(&id).cloned())
    }

    async fn stats(&self, now_ms: i64) -> Result<Vec<QueueStats>, StoreError> {
        let inner = self.lock();
        let mut by_queue: BTreeMap<&str, QueueStats> = BTreeMap::new();
        let mut oldest: BTreeMap<&str, i64> = BTreeMap::new();
        for j in inner.jobs.values() {
            let s = by_queue.entry(&j.queue).or_insert_with(|| QueueStats {
                queue: j.queue.clone(),
                ..QueueStats::default()
            });
            match j.state {
                JobState::Ready if j.run_at_ms <= now_ms => {
                    s.ready += 1;
                    let o = oldest.entry(&j.queue).or_insert(j.run_at_ms);
                    *o = (*o).min(j.run_at_ms);
                }
                JobState::Ready => s.delayed += 1,
                JobState::Leased => s.in_flight += 1,
                JobState::Dead => s.dead += 1,
            }
        }
        Ok(by_queue
            .into_iter()
            .map(|(q, mut s)| {
                s.oldest_ready_wait_ms = oldest.get(q).map_or(0, |t| (now_ms - t).max(0) as u64);
                s
            })
            .collect())
    }

    async fn create_batch(
        &self,
        batch: NewBatch,
        items: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Batch, StoreError> {
        validate_batch(&batch, &items)?;
        let mut inner = self.lock();
        if inner.batches.contains_key(&batch.id) {
            return Err(StoreError::Invalid(format!(
                "bulk job {} already exists",
                batch.id
            )));
        }
        let record = Batch {
            id: batch.id.clone(),
            queue: batch.queue,
            kind: batch.kind,
            params: batch.params,
            state: BatchState::Running,
            total: 0,
            done: 0,
            dead: 0,
            cancelled: 0,
            created_at_ms: now_ms,
            finished_at_ms: None,
            result: None,
            fan_in_job: None,
        };
        inner
            .batches
            .insert(batch.id.clone(), (record, batch.fan_in));
        let mut total = 0;
        for j in items {
            // An item whose unique key is live elsewhere is that job's work, not this batch's.
            if inner.insert(j, now_ms, Some(&batch.id)).created {
                total += 1;
            }
        }
        inner.batches.get_mut(&batch.id).expect("present").0.total = total;
        inner.finish_if_done(&batch.id);
        Ok(inner.batches[&batch.id].0.clone())
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        Ok(self.lock().batches.get(id).map(|(b, _)| b.clone()))
    }

    async fn cancel_batch(&self, id: &str, now_ms: i64) -> Result<Option<Batch>, StoreError> {
        let mut inner = self.lock();
        match inner.batches.get(id) {
            None => return Ok(None),
            Some((b, _)) if b.state != BatchState::Running => return Ok(Some(b.clone())),
            Some(_) => {}
        }
        let before = inner.jobs.len();
        inner
            .jobs
            .retain(|_, j| !(j.batch_id.as_deref() == Some(id) && j.state == JobState::Ready));
        let removed = (before - inner.jobs.len()) as u64;
        let (batch, _) = inner.batches.get_mut(id).expect("present");
        batch.cancelled += removed;
        batch.state = BatchState::Cancelled;
        batch.finished_at_ms = Some(now_ms);
        Ok(Some(batch.clone()))
    }

    async fn set_batch_result(
        &self,
        id: &str,
        result: serde_json::Value,
    ) -> Result<bool, StoreError> {
        Ok(match self.lock().batches.get_mut(id) {
            Some((b, _)) => {
                b.result = Some(result);
                true
            }
            None => false,
        })
    }
}
