//! The job queue on the embedded store: a `jobs` table in the event log's SQLite file, written
//! through the event writer's group commit (so a job is acknowledged only once durable, and
//! job writes batch with event appends), read through its read pool.

use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, Row};
use tokio::sync::Notify;

use super::{unavailable, SqliteEventStore};
use crate::jobs::{
    clip_error, fan_in_job, finished_state, validate_batch, validate_jobs, MAX_LEASE_BATCH,
};
use crate::{
    Batch, BatchState, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, JobState, Lease,
    NewBatch, NewJob, QueueStats, StoreError,
};

const READY: i64 = 0;
const LEASED: i64 = 1;
const DEAD: i64 = 2;

const COLUMNS: &str = "id, queue, kind, payload, priority, state, attempts, max_attempts, \
    run_at_ms, created_at_ms, last_error, unique_key, lease_token, lease_expires_at_ms, batch_id";

/// The SQLite job queue, sharing the event store's file and writer.
pub struct SqliteJobQueue {
    store: Arc<SqliteEventStore>,
    /// Woken whenever jobs may have become ready, so idle workers need not poll hard.
    ready: Arc<Notify>,
}

impl SqliteJobQueue {
    pub fn new(store: Arc<SqliteEventStore>) -> Self {
        Self {
            store,
            ready: Arc::new(Notify::new()),
        }
    }

    /// Appends `events` to `stream` and enqueues `jobs` in ONE transaction: the jobs exist
    /// exactly when the events that caused them do.
    pub async fn append_and_enqueue(
        &self,
        stream: &ficus_core::StreamId,
        expected: ficus_core::ExpectedVersion,
        events: Vec<ficus_core::NewEvent>,
        jobs: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<(crate::AppendResult, Vec<Enqueued>), StoreError> {
        validate_jobs(&jobs)?;
        let encoded = encode_jobs(jobs);
        let out = self
            .store
            .append_with(stream, expected, events, move |c| {
                encoded
                    .iter()
                    .map(|(j, payload)| insert_job(c, j, payload, now_ms, None))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        self.ready.notify_waiters();
        Ok(out)
    }

    /// Notified after jobs were enqueued, retried, released or redriven.
    pub fn ready_signal(&self) -> Arc<Notify> {
        self.ready.clone()
    }
}

fn state_of(v: i64) -> Result<JobState, rusqlite::Error> {
    match v {
        READY => Ok(JobState::Ready),
        LEASED => Ok(JobState::Leased),
        DEAD => Ok(JobState::Dead),
        other => Err(rusqlite::Error::IntegralValueOutOfRange(5, other)),
    }
}

fn job_row(r: &Row<'_>) -> rusqlite::Result<(Job, String)> {
    let state = state_of(r.get(5)?)?;
    let id: JobId = r.get(0)?;
    let token: Option<i64> = r.get(12)?;
    Ok((
        Job {
            id,
            queue: r.get(1)?,
            kind: r.get(2)?,
            payload: serde_json::Value::Null,
            priority: r.get(4)?,
            state,
            attempts: r.get::<_, i64>(6)? as u32,
            max_attempts: r.get::<_, i64>(7)? as u32,
            run_at_ms: r.get(8)?,
            created_at_ms: r.get(9)?,
            last_error: r.get(10)?,
            unique_key: r.get(11)?,
            lease: token
                .filter(|_| state == JobState::Leased)
                .map(|token| Lease { id, token }),
            lease_expires_at_ms: r.get(13)?,
            batch_id: r.get(14)?,
        },
        r.get(3)?,
    ))
}

fn decode(row: (Job, String)) -> Result<Job, StoreError> {
    let (mut job, payload) = row;
    job.payload = serde_json::from_str(&payload)
        .map_err(|e| StoreError::Corrupt(format!("job {} payload: {e}", job.id)))?;
    Ok(job)
}

fn query_jobs(
    conn: &Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<Job>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let rows = stmt.query_map(args, job_row).map_err(unavailable)?;
    let mut out = Vec::new();
    for r in rows {
        out.push(decode(r.map_err(unavailable)?)?);
    }
    Ok(out)
}

fn new_token() -> i64 {
    // 62 random bits of a UUID v7; collisions between two leases of one job are negligible.
    (uuid::Uuid::now_v7().as_u64_pair().1 >> 2) as i64
}

/// `AND id IN (...)` / `AND kind = ?` for a dead-job filter, with its arguments appended.
fn dead_filter_sql(filter: &DeadFilter, args: &mut Vec<rusqlite::types::Value>) -> String {
    let mut sql = String::new();
    if let Some(ids) = &filter.ids {
        let list: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
        sql.push_str(&format!(" AND id IN ({})", list.join(",")));
    }
    if let Some(kind) = &filter.kind {
        args.push(kind.clone().into());
        sql.push_str(&format!(" AND kind = ?{}", args.len()));
    }
    sql
}

/// Jobs with their payloads encoded, done in the caller's task rather than on the writer.
fn encode_jobs(jobs: Vec<NewJob>) -> Vec<(NewJob, String)> {
    jobs.into_iter()
        .map(|j| {
            let p = serde_json::to_string(&j.payload).expect("JSON values serialize");
            (j, p)
        })
        .collect()
}

/// Inserts one job, or finds the live job holding its unique key.
fn insert_job(
    c: &Connection,
    j: &NewJob,
    payload: &str,
    now_ms: i64,
    batch_id: Option<&str>,
) -> Result<Enqueued, StoreError> {
    if let Some(key) = &j.unique_key {
        let existing: Option<JobId> = c
            .prepare_cached(
                "SELECT id FROM jobs WHERE queue = ?1 AND unique_key = ?2 AND state != 2",
            )
            .and_then(|mut s| s.query_row(params![j.queue, key], |r| r.get(0)).optional())
            .map_err(unavailable)?;
        if let Some(id) = existing {
            return Ok(Enqueued { id, created: false });
        }
    }
    c.prepare_cached(
        "INSERT INTO jobs (queue, kind, payload, priority, state, max_attempts, run_at_ms,
            created_at_ms, unique_key, batch_id)
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            j.queue,
            j.kind,
            payload,
            j.priority,
            j.max_attempts,
            j.run_at_ms.unwrap_or(now_ms),
            now_ms,
            j.unique_key,
            batch_id
        ])
    })
    .map_err(unavailable)?;
    Ok(Enqueued {
        id: c.last_insert_rowid(),
        created: true,
    })
}

const BATCH_COLUMNS: &str = "id, queue, kind, params, state, total, done, dead, cancelled, \
    created_at_ms, finished_at_ms, result, fan_in_job";

fn batch_state(v: i64) -> BatchState {
    match v {
        1 => BatchState::Completed,
        2 => BatchState::CompletedWithFailures,
        3 => BatchState::Cancelled,
        _ => BatchState::Running,
    }
}

fn batch_state_code(s: BatchState) -> i64 {
    match s {
        BatchState::Running => 0,
        BatchState::Completed => 1,
        BatchState::CompletedWithFailures => 2,
        BatchState::Cancelled => 3,
    }
}

fn load_batch(c: &Connection, id: &str) -> Result<Option<Batch>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {BATCH_COLUMNS} FROM job_batches WHERE id = ?1"
        ))
        .map_err(unavailable)?;
    let row = stmt
        .query_row([id], |r| {
            let params: String = r.get(3)?;
            let result: Option<String> = r.get(11)?;
            Ok((
                Batch {
                    id: r.get(0)?,
                    queue: r.get(1)?,
                    kind: r.get(2)?,
                    params: serde_json::Value::Null,
                    state: batch_state(r.get(4)?),
                    total: r.get::<_, i64>(5)? as u64,
                    done: r.get::<_, i64>(6)? as u64,
                    dead: r.get::<_, i64>(7)? as u64,
                    cancelled: r.get::<_, i64>(8)? as u64,
                    created_at_ms: r.get(9)?,
                    finished_at_ms: r.get(10)?,
                    result: None,
                    fan_in_job: r.get(12)?,
                },
                params,
                result,
            ))
        })
        .optional()
        .map_err(unavailable)?;
    let Some((mut batch, params, result)) = row else {
        return Ok(None);
    };
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("batch {}: {e}", batch.id));
    batch.params = serde_json::from_str(&params).map_err(corrupt)?;
    batch.result = match result {
        Some(r) => Some(serde_json::from_str(&r).map_err(corrupt)?),
        None => None,
    };
    Ok(Some(batch))
}

/// Counts finished items toward their batch and, when it is the last, decides the batch's
/// state and enqueues its fan-in job, in the caller's transaction.
fn batch_progress(c: &Connection, batch_id: &str, done: i64, dead: i64) -> Result<(), StoreError> {
    c.prepare_cached("UPDATE job_batches SET done = done + ?2, dead = dead + ?3 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![batch_id, done, dead]))
        .map_err(unavailable)?;
    finish_if_done(c, batch_id)
}

fn finish_if_done(c: &Connection, batch_id: &str) -> Result<(), StoreError> {
    let Some(batch) = load_batch(c, batch_id)? else {
        return Ok(());
    };
    let Some(state) = finished_state(&batch) else {
        return Ok(());
    };
    let fan_in: Option<String> = c
        .query_row(
            "SELECT fan_in FROM job_batches WHERE id = ?1",
            [batch_id],
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    let mut fan_in_id = None;
    if let Some(spec) = fan_in {
        let spec = decode_new_job(&spec)
            .map_err(|e| StoreError::Corrupt(format!("batch {batch_id} fan-in: {e}")))?;
        let job = fan_in_job(&spec, &batch);
        let payload = serde_json::to_string(&job.payload).expect("JSON values serialize");
        fan_in_id = Some(insert_job(c, &job, &payload, batch.created_at_ms, None)?.id);
    }
    c.execute(
        "UPDATE job_batches SET state = ?2, finished_at_ms = ?3, fan_in_job = ?4 WHERE id = ?1",
        params![
            batch_id,
            batch_state_code(state),
            crate::now_ms(),
            fan_in_id
        ],
    )
    .map_err(unavailable)?;
    Ok(())
}

// The fan-in job is kept as JSON in the batch row until it is due.
fn encode_new_job(j: &NewJob) -> String {
    serde_json::json!({
        "queue": j.queue, "kind": j.kind, "payload": j.payload, "priority": j.priority,
        "max_attempts": j.max_attempts, "unique_key": j.unique_key,
    })
    .to_string()
}

fn decode_new_job(s: &str) -> Result<NewJob, String> {
    let v: serde_json::Value = serde_json::from_str(s).map_err(|e| e.to_string())?;
    let text = |k: &str| {
        v[k].as_str()
            .map(str::to_owned)
            .ok_or(format!("missing {k}"))
    };
    Ok(NewJob {
        queue: text("queue")?,
        kind: text("kind")?,
        payload: v["payload"].clone(),
        priority: v["priority"].as_i64().unwrap_or(0) as i32,
        run_at_ms: None,
        max_attempts: v["max_attempts"].as_u64().unwrap_or(25) as u32,
        unique_key: v["unique_key"].as_str().map(str::to_owned),
    })
}

#[async_trait]
impl JobQueue for SqliteJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<Enqueued>, StoreError> {
        validate_jobs(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let encoded = encode_jobs(jobs);
        let out = self
            .store
            .write(move |c| {
                encoded
                    .iter()
                    .map(|(j, payload)| insert_job(c, j, payload, now_ms, None))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        self.ready.notify_waiters();
        Ok(out)
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let max = max.min(MAX_LEASE_BATCH);
        if max == 0 {
            return Ok(Vec::new());
        }
        let queue = queue.to_owned();
        self.store
            .write(move |c| {
                // Ready jobs and jobs whose lease expired compete on the same order.
                let mut candidates = c
                    .prepare_cached(
                        "SELECT id, state, attempts, max_attempts, batch_id FROM (
                            SELECT * FROM (SELECT id, state, attempts, max_attempts, priority,
                                                  run_at_ms, batch_id FROM jobs
                                           WHERE queue = ?1 AND state = 0 AND run_at_ms <= ?2
                                           ORDER BY priority DESC, run_at_ms, id LIMIT ?3)
                            UNION ALL
                            SELECT * FROM (SELECT id, state, attempts, max_attempts, priority,
                                                  run_at_ms, batch_id FROM jobs
                                           WHERE queue = ?1 AND state = 1
                                             AND lease_expires_at_ms <= ?2
                                           ORDER BY priority DESC, run_at_ms, id LIMIT ?3))
                         ORDER BY priority DESC, run_at_ms, id LIMIT ?3",
                    )
                    .map_err(unavailable)?;
                let rows = candidates
                    .query_map(params![queue, now_ms, max as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, i64>(3)?,
                            r.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .map_err(unavailable)?;
                let mut ids: Vec<JobId> = Vec::with_capacity(max);
                let mut to_dead = Vec::new();
                for r in rows {
                    let (id, state, attempts, max_attempts, batch) = r.map_err(unavailable)?;
                    if state == LEASED && attempts >= max_attempts {
                        to_dead.push((id, attempts, batch));
                    } else {
                        ids.push(id);
                    }
                }
                for (id, attempts, batch) in to_dead {
                    c.execute(
                        "UPDATE jobs SET state = 2, lease_token = NULL, lease_expires_at_ms = NULL,
                            last_error = ?2 WHERE id = ?1",
                        params![
                            id,
                            format!("lease expired on the last of {attempts} attempts")
                        ],
                    )
                    .map_err(unavailable)?;
                    if let Some(b) = batch {
                        batch_progress(c, &b, 0, 1)?;
                    }
                }
                let mut take = c
                    .prepare_cached(&format!(
                        "UPDATE jobs SET state = 1, attempts = attempts + 1, lease_token = ?2,
                            lease_expires_at_ms = ?3 WHERE id = ?1 RETURNING {COLUMNS}"
                    ))
                    .map_err(unavailable)?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let row = take
                        .query_row(params![id, new_token(), now_ms + visibility_ms], job_row)
                        .map_err(unavailable)?;
                    out.push(decode(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let leases = leases.to_vec();
        self.store
            .write(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "UPDATE jobs SET lease_expires_at_ms = ?3
                         WHERE id = ?1 AND state = 1 AND lease_token = ?2",
                    )
                    .map_err(unavailable)?;
                leases
                    .iter()
                    .map(|l| {
                        stmt.execute(params![l.id, l.token, now_ms + visibility_ms])
                            .map(|n| n == 1)
                            .map_err(unavailable)
                    })
                    .collect()
            })
            .await
    }

    async fn complete(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let leases = leases.to_vec();
        self.store
            .write(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "DELETE FROM jobs WHERE id = ?1 AND state = 1 AND lease_token = ?2
                         RETURNING batch_id",
                    )
                    .map_err(unavailable)?;
                let mut out = Vec::with_capacity(leases.len());
                for l in &leases {
                    let gone: Option<Option<String>> = stmt
                        .query_row(params![l.id, l.token], |r| r.get(0))
                        .optional()
                        .map_err(unavailable)?;
                    if let Some(Some(batch)) = &gone {
                        batch_progress(c, batch, 1, 0)?;
                    }
                    out.push(gone.is_some());
                }
                Ok(out)
            })
            .await
    }

    async fn fail(
        &self,
        lease: Lease,
        error: &str,
        failure: Failure,
        _now_ms: i64,
    ) -> Result<bool, StoreError> {
        let error = clip_error(error);
        let held = self
            .store
            .write(move |c| {
                let n = match failure {
                    Failure::RetryAt { at_ms } => c.execute(
                        "UPDATE jobs SET state = 0, run_at_ms = ?3, last_error = ?4,
                            lease_token = NULL, lease_expires_at_ms = NULL
                         WHERE id = ?1 AND state = 1 AND lease_token = ?2",
                        params![lease.id, lease.token, at_ms, error],
                    ),
                    Failure::Dead => {
                        let batch: Option<Option<String>> = c
                            .query_row(
                                "UPDATE jobs SET state = 2, last_error = ?3,
                                    lease_token = NULL, lease_expires_at_ms = NULL
                                 WHERE id = ?1 AND state = 1 AND lease_token = ?2
                                 RETURNING batch_id",
                                params![lease.id, lease.token, error],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(unavailable)?;
                        if let Some(Some(b)) = &batch {
                            batch_progress(c, b, 0, 1)?;
                        }
                        Ok(usize::from(batch.is_some()))
                    }
                }
                .map_err(unavailable)?;
                Ok(n == 1)
            })
            .await?;
        if held && matches!(failure, Failure::RetryAt { .. }) {
            self.ready.notify_waiters();
        }
        Ok(held)
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        let leases = leases.to_vec();
        let out: Vec<bool> = self
            .store
            .write(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "UPDATE jobs SET state = 0, attempts = MAX(attempts - 1, 0),
                            lease_token = NULL, lease_expires_at_ms = NULL
                         WHERE id = ?1 AND state = 1 AND lease_token = ?2",
                    )
                    .map_err(unavailable)?;
                leases
                    .iter()
                    .map(|l| {
                        stmt.execute(params![l.id, l.token])
                            .map(|n| n == 1)
                            .map_err(unavailable)
                    })
                    .collect()
            })
            .await?;
        if out.iter().any(|b| *b) {
            self.ready.notify_waiters();
        }
        Ok(out)
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<Job>, StoreError> {
        let queue = queue.to_owned();
        let limit = limit.min(MAX_LEASE_BATCH) as i64;
        self.store
            .read(move |c| {
                query_jobs(
                    c,
                    &format!(
                        "SELECT {COLUMNS} FROM jobs WHERE queue = ?1 AND state = 2 ORDER BY id LIMIT ?2"
                    ),
                    params![queue, limit],
                )
            })
            .await
    }

    async fn redrive(
        &self,
        queue: &str,
        filter: &DeadFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let mut args: Vec<rusqlite::types::Value> = vec![queue.to_owned().into()];
        let cond = dead_filter_sql(filter, &mut args);
        let select = format!(
            "SELECT id, unique_key, batch_id FROM jobs WHERE queue = ?1 AND state = 2{cond} \
             ORDER BY id"
        );
        let queue = queue.to_owned();
        let n = self
            .store
            .write(move |c| {
                let mut stmt = c.prepare(&select).map_err(unavailable)?;
                let candidates: Vec<(JobId, Option<String>, Option<String>)> = stmt
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                let mut n = 0u64;
                for (id, key, batch) in candidates {
                    // One at a time, so two dead jobs sharing a key cannot both come back; a
                    // job whose key is live again stays dead.
                    if let Some(key) = key {
                        let live: Option<i64> = c
                            .query_row(
                                "SELECT 1 FROM jobs WHERE queue = ?1 AND unique_key = ?2
                                 AND state != 2",
                                params![queue, key],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(unavailable)?;
                        if live.is_some() {
                            continue;
                        }
                    }
                    n += c
                        .execute(
                            "UPDATE jobs SET state = 0, attempts = 0, run_at_ms = ?2,
                                lease_token = NULL, lease_expires_at_ms = NULL WHERE id = ?1",
                            params![id, now_ms],
                        )
                        .map_err(unavailable)? as u64;
                    if let Some(b) = batch {
                        // No longer dead; it counts as done if it completes now.
                        c.execute(
                            "UPDATE job_batches SET dead = MAX(dead - 1, 0) WHERE id = ?1",
                            [b],
                        )
                        .map_err(unavailable)?;
                    }
                }
                Ok(n)
            })
            .await?;
        if n > 0 {
            self.ready.notify_waiters();
        }
        Ok(n)
    }

    async fn purge_dead(&self, queue: &str, filter: &DeadFilter) -> Result<u64, StoreError> {
        let mut args: Vec<rusqlite::types::Value> = vec![queue.to_owned().into()];
        let cond = dead_filter_sql(filter, &mut args);
        let sql = format!("DELETE FROM jobs WHERE queue = ?1 AND state = 2{cond}");
        self.store
            .write(move |c| {
                c.execute(&sql, rusqlite::params_from_iter(args.iter()))
                    .map(|n| n as u64)
                    .map_err(unavailable)
            })
            .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.store
            .read(move |c| {
                Ok(query_jobs(
                    c,
                    &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                    params![id],
                )?
                .pop())
            })
            .await
    }

    async fn stats(&self, now_ms: i64) -> Result<Vec<QueueStats>, StoreError> {
        self.store
            .read(move |c| {
                let mut stmt = c
                    .prepare_cached(
                        "SELECT queue,
                            SUM(state = 0 AND run_at_ms <= ?1),
                            SUM(state = 0 AND run_at_ms > ?1),
                            SUM(state = 1),
                            SUM(state = 2),
                            MIN(CASE WHEN state = 0 AND run_at_ms <= ?1 THEN run_at_ms END)
                         FROM jobs GROUP BY queue ORDER BY queue",
                    )
                    .map_err(unavailable)?;
                let rows = stmt
                    .query_map(params![now_ms], |r| {
                        let oldest: Option<i64> = r.get(5)?;
                        Ok(QueueStats {
                            queue: r.get(0)?,
                            ready: r.get::<_, i64>(1)? as u64,
                            delayed: r.get::<_, i64>(2)? as u64,
                            in_flight: r.get::<_, i64>(3)? as u64,
                            dead: r.get::<_, i64>(4)? as u64,
                            oldest_ready_wait_ms: oldest.map_or(0, |t| (now_ms - t).max(0) as u64),
                        })
                    })
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)
            })
            .await
    }

    async fn create_batch(
        &self,
        batch: NewBatch,
        items: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Batch, StoreError> {
        validate_batch(&batch, &items)?;
        let params_json = serde_json::to_string(&batch.params).expect("JSON values serialize");
        let fan_in = batch.fan_in.as_ref().map(encode_new_job);
        let items = encode_jobs(items);
        let created = self
            .store
            .write(move |c| {
                let inserted = c
                    .execute(
                        "INSERT INTO job_batches (id, queue, kind, params, state, total,
                            created_at_ms, fan_in) VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7)
                         ON CONFLICT (id) DO NOTHING",
                        params![
                            batch.id,
                            batch.queue,
                            batch.kind,
                            params_json,
                            items.len() as i64,
                            now_ms,
                            fan_in
                        ],
                    )
                    .map_err(unavailable)?;
                if inserted == 0 {
                    return Err(StoreError::Invalid(format!(
                        "bulk job {} already exists",
                        batch.id
                    )));
                }
                let mut duplicates = 0i64;
                for (j, payload) in &items {
                    if !insert_job(c, j, payload, now_ms, Some(&batch.id))?.created {
                        // A live job with the same unique key already does this item's work.
                        duplicates += 1;
                    }
                }
                if duplicates > 0 {
                    c.execute(
                        "UPDATE job_batches SET total = total - ?2 WHERE id = ?1",
                        params![batch.id, duplicates],
                    )
                    .map_err(unavailable)?;
                }
                finish_if_done(c, &batch.id)?;
                load_batch(c, &batch.id)?
                    .ok_or_else(|| StoreError::Unavailable("batch vanished".into()))
            })
            .await?;
        self.ready.notify_waiters();
        Ok(created)
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        let id = id.to_owned();
        self.store.read(move |c| load_batch(c, &id)).await
    }

    async fn cancel_batch(&self, id: &str, now_ms: i64) -> Result<Option<Batch>, StoreError> {
        let id = id.to_owned();
        self.store
            .write(move |c| {
                let Some(batch) = load_batch(c, &id)? else {
                    return Ok(None);
                };
                if batch.state != BatchState::Running {
                    return Ok(Some(batch));
                }
                let removed = c
                    .execute("DELETE FROM jobs WHERE batch_id = ?1 AND state = 0", [&id])
                    .map_err(unavailable)?;
                c.execute(
                    "UPDATE job_batches SET state = 3, cancelled = cancelled + ?2,
                        finished_at_ms = ?3 WHERE id = ?1",
                    params![id, removed as i64, now_ms],
                )
                .map_err(unavailable)?;
                load_batch(c, &id)
            })
            .await
    }

    async fn set_batch_result(
        &self,
        id: &str,
        result: serde_json::Value,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        let result = serde_json::to_string(&result).expect("JSON values serialize");
        self.store
            .write(move |c| {
                c.execute(
                    "UPDATE job_batches SET result = ?2 WHERE id = ?1",
                    params![id, result],
                )
                .map(|n| n == 1)
                .map_err(unavailable)
            })
            .await
    }
}
