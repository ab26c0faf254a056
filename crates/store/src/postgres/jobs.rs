//! The job queue on PostgreSQL, for several `ficus` processes sharing one database as
//! competing consumers.
//!
//! Tables (migration 2, [`SCHEMA`]):
//! - `ficus_jobs`, the hot table, holds only live work: ready (`state = 0`) and leased
//!   (`state = 1`) jobs. A completed job is deleted, a dead one moves to `ficus_dead_jobs`, so
//!   the hot table stays as small as the work in progress. Partial indexes serve the two lease
//!   scans (ready jobs in lease order; leased jobs by expiry), and a partial unique index on
//!   `(queue, unique_key)` enforces unique keys: every row of this table is live.
//! - `ficus_dead_jobs`, the dead-letter queue, off the hot path; a redrive moves rows back.
//! - `ficus_job_batches`, bulk jobs with their counts and the fan-in job to enqueue.
//!
//! Every call is ONE statement (one round trip, one transaction). Calls that move jobs between
//! tables or count toward a batch run a PL/pgSQL function of the migration, so a completion and
//! the batch progress it causes commit together:
//! - `lease` locks the best `max` candidates with `FOR UPDATE SKIP LOCKED` (two index scans:
//!   ready jobs and expired leases, each locked as scanned, merged in lease order) and leases
//!   them in one `UPDATE`. A competing process skips rows this one has locked, and re-checks a
//!   row another process changed since its snapshot, so no job is leased twice at once.
//! - `complete`, `heartbeat` and `release` take all leases as two arrays, joined with
//!   `unnest`, and match on id AND lease token: a stale lease matches nothing. Their
//!   functions are planned for each call (`plan_cache_mode = force_custom_plan`): a generic
//!   plan guesses the arrays' length and can join a thousand leases with a nested loop.
//! - Batch counts are changed by `UPDATE ... SET done = done + n` under the batch row's lock,
//!   and the update that brings the count to the total finishes the batch and enqueues its
//!   fan-in in the same transaction; the finishing `UPDATE` only applies to a running batch,
//!   so the fan-in is enqueued exactly once. Locks are taken job rows first, then batch rows
//!   in id order, and keyed jobs are inserted in key order, so the hot paths cannot deadlock
//!   one another. (A redrive racing an enqueue over several shared unique keys could; the
//!   server then aborts one call, which reports `Unavailable` having changed nothing.)
//!
//! Time comes from the callers' `now_ms`, never from the database clock. Ids come from the
//! sequence `ficus_job_ids`: never reused, possibly with gaps.
//!
//! Readiness: the functions that make jobs ready (enqueue, release, retry, redrive) send one
//! `NOTIFY` on `ficus_jobs.<schema>` per statement; a listener task turns it into
//! [`PgJobQueue::ready_signal`] for workers of every process.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_postgres::Row;

use super::{execute, query, PgConfig, PgEventStore, TimedPool};
use crate::jobs::{clip_error, fan_in_job, validate_batch, validate_jobs, MAX_LEASE_BATCH};
use crate::{
    Batch, BatchState, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, JobState, Lease,
    NewBatch, NewJob, QueueStats, StoreError,
};

/// Migration 2: the job queue's tables, indexes and functions. `__SCHEMA__` names the schema
/// (in the notification channel).
pub(crate) const SCHEMA: &str = r#"
CREATE SEQUENCE ficus_job_ids AS bigint;

-- Live jobs only: ready (0) or leased (1). Every job is inserted, leased and deleted, so the
-- table churns: vacuum it after 1% dead rows instead of the default 20%.
CREATE TABLE ficus_jobs (
    id                  bigint   PRIMARY KEY DEFAULT nextval('ficus_job_ids'),
    queue               text     NOT NULL,
    kind                text     NOT NULL,
    payload             json     NOT NULL,
    priority            integer  NOT NULL,
    state               smallint NOT NULL CHECK (state IN (0, 1)),
    attempts            bigint   NOT NULL,
    max_attempts        bigint   NOT NULL,
    run_at_ms           bigint   NOT NULL,
    created_at_ms       bigint   NOT NULL,
    last_error          text,
    unique_key          text,
    lease_token         bigint,
    lease_expires_at_ms bigint,
    batch_id            text
) WITH (autovacuum_vacuum_scale_factor = 0.01);
ALTER SEQUENCE ficus_job_ids OWNED BY ficus_jobs.id;
-- The lease scans: ready jobs in lease order, leased jobs by expiry.
CREATE INDEX ficus_jobs_ready ON ficus_jobs (queue, priority DESC, run_at_ms, id) WHERE state = 0;
CREATE INDEX ficus_jobs_leased ON ficus_jobs (queue, lease_expires_at_ms) WHERE state = 1;
-- One live job per key and queue: every row here is live, dead ones have moved out.
CREATE UNIQUE INDEX ficus_jobs_unique ON ficus_jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX ficus_jobs_batch ON ficus_jobs (batch_id) WHERE batch_id IS NOT NULL;

-- The dead-letter queue, off the hot path. Rows keep their ids.
CREATE TABLE ficus_dead_jobs (
    id            bigint  PRIMARY KEY,
    queue         text    NOT NULL,
    kind          text    NOT NULL,
    payload       json    NOT NULL,
    priority      integer NOT NULL,
    attempts      bigint  NOT NULL,
    max_attempts  bigint  NOT NULL,
    run_at_ms     bigint  NOT NULL,
    created_at_ms bigint  NOT NULL,
    last_error    text,
    unique_key    text,
    batch_id      text
);
CREATE INDEX ficus_dead_jobs_queue ON ficus_dead_jobs (queue, id);

CREATE TABLE ficus_job_batches (
    id                  text     PRIMARY KEY,
    queue               text     NOT NULL,
    kind                text     NOT NULL,
    params              json     NOT NULL,
    -- 0 running, 1 completed, 2 completed with failures, 3 cancelled
    state               smallint NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3),
    total               bigint   NOT NULL DEFAULT 0,
    done                bigint   NOT NULL DEFAULT 0,
    dead                bigint   NOT NULL DEFAULT 0,
    cancelled           bigint   NOT NULL DEFAULT 0,
    created_at_ms       bigint   NOT NULL,
    finished_at_ms      bigint,
    result              json,
    fan_in_job          bigint,
    -- The fan-in job to enqueue when the batch finishes; none when fan_in_queue is NULL. Its
    -- payload is an object to which batch_id, total, done and dead are added.
    fan_in_queue        text,
    fan_in_kind         text,
    fan_in_payload      json,
    fan_in_priority     integer,
    fan_in_max_attempts bigint,
    fan_in_unique_key   text
);

-- Enqueues jobs (parallel arrays, one element per job) and answers, in input order, each
-- job's id and whether it was created. A job whose unique key is live in its queue is not
-- created: the live job's id is returned (the first of the call, for a key repeated in it).
-- Ids are drawn before the insert, in input order; ON CONFLICT DO UPDATE (a no-op update of a
-- column no index holds) returns the live job's id atomically, even when it commits or goes
-- away concurrently.
CREATE FUNCTION ficus_jobs_enqueue(
    j_queue text[], j_kind text[], j_payload text[], j_priority integer[], j_run_at bigint[],
    j_max_attempts bigint[], j_unique_key text[], at_ms bigint, j_batch text)
RETURNS TABLE (r_id bigint, r_created boolean)
LANGUAGE plpgsql AS $fn$
BEGIN
    IF coalesce(cardinality(j_queue), 0) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    WITH numbered AS MATERIALIZED (
        -- nextval runs as unnest yields the rows, in input order, before anything reorders.
        SELECT nextval('ficus_job_ids') AS id, t.*
          FROM unnest(j_queue, j_kind, j_payload, j_priority, j_run_at, j_max_attempts,
                      j_unique_key)
               WITH ORDINALITY AS t(queue, kind, payload, priority, run_at_ms, max_attempts,
                                    unique_key, o)
    ), src AS (
        SELECT n.*, n.unique_key IS NOT NULL
                    AND row_number() OVER (PARTITION BY n.queue, n.unique_key ORDER BY n.o) > 1
                    AS dup
          FROM numbered n
    ), ins AS (
        INSERT INTO ficus_jobs AS j (id, queue, kind, payload, priority, state, attempts,
                                     max_attempts, run_at_ms, created_at_ms, unique_key,
                                     batch_id)
        SELECT s.id, s.queue, s.kind, s.payload::json, s.priority, 0, 0, s.max_attempts,
               s.run_at_ms, at_ms, s.unique_key, j_batch
          FROM src s WHERE NOT s.dup
         -- Keys in one order for every caller, so two enqueues cannot deadlock on them.
         ORDER BY s.queue, s.unique_key, s.o
        ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL
        DO UPDATE SET kind = j.kind
        RETURNING j.id, j.queue, j.unique_key
    )
    SELECT r.id, r.created FROM (
        SELECT s.o, i.id, i.id = s.id AS created
          FROM src s JOIN ins i ON i.id = s.id
         WHERE s.unique_key IS NULL
        UNION ALL
        SELECT s.o, i.id, i.id = s.id AND NOT s.dup
          FROM src s JOIN ins i ON i.queue = s.queue AND i.unique_key = s.unique_key
    ) r ORDER BY r.o;
    PERFORM pg_notify('ficus_jobs.__SCHEMA__', '');
END
$fn$;

-- Finishes a running batch whose items are all counted: decides its state and enqueues its
-- fan-in job. The caller holds the batch row's lock (or created the row).
CREATE FUNCTION ficus_batch_finish(b ficus_job_batches, at_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    v_fan bigint;
BEGIN
    IF b.state <> 0 OR b.done + b.dead + b.cancelled < b.total THEN
        RETURN;
    END IF;
    IF b.fan_in_queue IS NOT NULL THEN
        SELECT e.r_id INTO v_fan
          FROM ficus_jobs_enqueue(
                   ARRAY[b.fan_in_queue], ARRAY[b.fan_in_kind],
                   ARRAY[(SELECT json_object_agg(x.k, x.v)
                            FROM (SELECT p.key, p.value FROM json_each(b.fan_in_payload) AS p
                                  UNION ALL
                                  VALUES ('batch_id', to_json(b.id)), ('total', to_json(b.total)),
                                         ('done', to_json(b.done)), ('dead', to_json(b.dead))
                                 ) AS x(k, v))::text],
                   ARRAY[b.fan_in_priority],
                   -- Runnable at once, whatever clock the caller uses.
                   ARRAY[b.created_at_ms],
                   ARRAY[b.fan_in_max_attempts], ARRAY[b.fan_in_unique_key],
                   b.created_at_ms, NULL) AS e;
    END IF;
    UPDATE ficus_job_batches
       SET state = CASE WHEN b.dead = 0 THEN 1 ELSE 2 END,
           finished_at_ms = at_ms,
           fan_in_job = v_fan
     WHERE id = b.id AND state = 0;
END
$fn$;

-- Counts finished items (one array element each) as done or dead toward their batches, and
-- finishes the batches they complete. Batch rows are locked one at a time in id order.
CREATE FUNCTION ficus_batch_progress(item_batch text[], item_dead boolean, at_ms bigint)
RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    v_id    text;
    v_n     bigint;
    v_batch ficus_job_batches;
BEGIN
    FOR v_id, v_n IN
        SELECT x.batch_id, count(*) FROM unnest(item_batch) AS x(batch_id)
         WHERE x.batch_id IS NOT NULL
         GROUP BY x.batch_id ORDER BY x.batch_id
    LOOP
        UPDATE ficus_job_batches AS t
           SET done = t.done + CASE WHEN item_dead THEN 0 ELSE v_n END,
               dead = t.dead + CASE WHEN item_dead THEN v_n ELSE 0 END
         WHERE t.id = v_id
        RETURNING t.* INTO v_batch;
        IF FOUND THEN
            PERFORM ficus_batch_finish(v_batch, at_ms);
        END IF;
    END LOOP;
END
$fn$;

-- Moves held leases' jobs to the dead-letter queue with `b_error` (NULL: the lease expired on
-- the last attempt) and counts them toward their batches. Returns how many moved.
CREATE FUNCTION ficus_jobs_bury(b_ids bigint[], b_tokens bigint[], b_error text, at_ms bigint)
RETURNS bigint
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
DECLARE
    v_n       bigint;
    v_batches text[];
BEGIN
    WITH gone AS (
        DELETE FROM ficus_jobs j USING unnest(b_ids, b_tokens) AS l(id, token)
         WHERE j.id = l.id AND j.state = 1 AND j.lease_token = l.token
        RETURNING j.*
    ), dead AS (
        INSERT INTO ficus_dead_jobs (id, queue, kind, payload, priority, attempts, max_attempts,
                                     run_at_ms, created_at_ms, last_error, unique_key, batch_id)
        SELECT g.id, g.queue, g.kind, g.payload, g.priority, g.attempts, g.max_attempts,
               g.run_at_ms, g.created_at_ms,
               coalesce(b_error, 'lease expired on the last of ' || g.attempts || ' attempts'),
               g.unique_key, g.batch_id
          FROM gone g ORDER BY g.id
        RETURNING batch_id
    )
    SELECT count(*), array_agg(d.batch_id) FILTER (WHERE d.batch_id IS NOT NULL)
      INTO v_n, v_batches
      FROM dead d;
    IF v_batches IS NOT NULL THEN
        PERFORM ficus_batch_progress(v_batches, true, at_ms);
    END IF;
    RETURN v_n;
END
$fn$;

-- Leases up to l_max jobs of a queue: ready ones and expired leases compete on one order.
-- Candidates are locked as scanned (FOR UPDATE SKIP LOCKED): a concurrent leaser skips them,
-- and a row changed since this statement's snapshot is re-checked before it is taken. An
-- expired lease that used the job's last attempt sends the job to the dead-letter queue.
CREATE FUNCTION ficus_jobs_lease(
    l_queue text, l_max integer, at_ms bigint, expires_ms bigint, token_base bigint)
RETURNS SETOF ficus_jobs
LANGUAGE plpgsql AS $fn$
DECLARE
    v_take         bigint[];
    v_spent        bigint[];
    v_spent_tokens bigint[];
BEGIN
    WITH ready AS (
        SELECT j.id, j.priority, j.run_at_ms, false AS spent, j.lease_token
          FROM ficus_jobs j
         WHERE j.queue = l_queue AND j.state = 0 AND j.run_at_ms <= at_ms
         ORDER BY j.priority DESC, j.run_at_ms, j.id
         LIMIT l_max
           FOR UPDATE SKIP LOCKED
    ), expired AS (
        SELECT j.id, j.priority, j.run_at_ms, j.attempts >= j.max_attempts AS spent,
               j.lease_token
          FROM ficus_jobs j
         WHERE j.queue = l_queue AND j.state = 1 AND j.lease_expires_at_ms <= at_ms
         ORDER BY j.priority DESC, j.run_at_ms, j.id
         LIMIT l_max
           FOR UPDATE SKIP LOCKED
    ), best AS (
        SELECT * FROM ready
        UNION ALL
        SELECT * FROM expired
         ORDER BY priority DESC, run_at_ms, id
         LIMIT l_max
    )
    SELECT coalesce(array_agg(b.id) FILTER (WHERE NOT b.spent), '{}'),
           coalesce(array_agg(b.id) FILTER (WHERE b.spent), '{}'),
           coalesce(array_agg(b.lease_token) FILTER (WHERE b.spent), '{}')
      INTO v_take, v_spent, v_spent_tokens
      FROM best b;
    IF cardinality(v_spent) > 0 THEN
        PERFORM ficus_jobs_bury(v_spent, v_spent_tokens, NULL, at_ms);
    END IF;
    RETURN QUERY
    WITH leased AS (
        UPDATE ficus_jobs j
           SET state = 1, attempts = j.attempts + 1, lease_token = token_base # j.id,
               lease_expires_at_ms = expires_ms
         WHERE j.id = ANY (v_take)
        RETURNING j.*
    )
    SELECT * FROM leased l ORDER BY l.priority DESC, l.run_at_ms, l.id;
END
$fn$;

-- Completes (deletes) held leases' jobs, counting batch items as done. Returns the leases held.
CREATE FUNCTION ficus_jobs_complete(l_ids bigint[], l_tokens bigint[], at_ms bigint)
RETURNS TABLE (r_id bigint, r_token bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
DECLARE
    v_ids     bigint[];
    v_tokens  bigint[];
    v_batches text[];
BEGIN
    WITH gone AS (
        DELETE FROM ficus_jobs j USING unnest(l_ids, l_tokens) AS l(id, token)
         WHERE j.id = l.id AND j.state = 1 AND j.lease_token = l.token
        RETURNING j.id, j.lease_token, j.batch_id
    )
    SELECT array_agg(g.id), array_agg(g.lease_token),
           array_agg(g.batch_id) FILTER (WHERE g.batch_id IS NOT NULL)
      INTO v_ids, v_tokens, v_batches
      FROM gone g;
    IF v_batches IS NOT NULL THEN
        PERFORM ficus_batch_progress(v_batches, false, at_ms);
    END IF;
    RETURN QUERY SELECT u.id, u.token FROM unnest(v_ids, v_tokens) AS u(id, token);
END
$fn$;

-- Extends held leases to expires_ms. Returns the leases held.
CREATE FUNCTION ficus_jobs_heartbeat(l_ids bigint[], l_tokens bigint[], expires_ms bigint)
RETURNS TABLE (r_id bigint, r_token bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
BEGIN
    RETURN QUERY
    WITH beat AS (
        UPDATE ficus_jobs j SET lease_expires_at_ms = expires_ms
          FROM unnest(l_ids, l_tokens) AS l(id, token)
         WHERE j.id = l.id AND j.state = 1 AND j.lease_token = l.token
        RETURNING j.id, l.token
    )
    SELECT b.id, b.token FROM beat b;
END
$fn$;

-- Gives held leases back without counting the attempt. Returns the leases held.
CREATE FUNCTION ficus_jobs_release(l_ids bigint[], l_tokens bigint[])
RETURNS TABLE (r_id bigint, r_token bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $fn$
BEGIN
    RETURN QUERY
    WITH back AS (
        UPDATE ficus_jobs j
           SET state = 0, attempts = greatest(j.attempts - 1, 0), lease_token = NULL,
               lease_expires_at_ms = NULL
          FROM unnest(l_ids, l_tokens) AS l(id, token)
         WHERE j.id = l.id AND j.state = 1 AND j.lease_token = l.token
        RETURNING j.id, l.token
    )
    SELECT b.id, b.token FROM back b;
    IF FOUND THEN
        PERFORM pg_notify('ficus_jobs.__SCHEMA__', '');
    END IF;
END
$fn$;

-- A failed attempt of a held lease: back to ready at f_retry_at, or (NULL) to the dead-letter
-- queue. False when the lease is not held.
CREATE FUNCTION ficus_jobs_fail(
    f_id bigint, f_token bigint, f_error text, f_retry_at bigint, at_ms bigint)
RETURNS boolean
LANGUAGE plpgsql AS $fn$
BEGIN
    IF f_retry_at IS NULL THEN
        RETURN ficus_jobs_bury(ARRAY[f_id], ARRAY[f_token], f_error, at_ms) > 0;
    END IF;
    UPDATE ficus_jobs
       SET state = 0, run_at_ms = f_retry_at, last_error = f_error, lease_token = NULL,
           lease_expires_at_ms = NULL
     WHERE id = f_id AND state = 1 AND lease_token = f_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('ficus_jobs.__SCHEMA__', '');
    RETURN true;
END
$fn$;

-- Moves matching dead jobs of a queue back to ready with a fresh attempt budget; a job whose
-- unique key is live again stays dead (and of two sharing a key, the older comes back). A
-- redriven batch item counts as dead no more. Returns how many came back.
CREATE FUNCTION ficus_jobs_redrive(r_queue text, r_ids bigint[], r_kind text, at_ms bigint)
RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    v_n       bigint;
    v_batches text[];
    v_id      text;
    v_count   bigint;
BEGIN
    WITH cand AS (
        SELECT d.id FROM ficus_dead_jobs d
         WHERE d.queue = r_queue
           AND (r_ids IS NULL OR d.id = ANY (r_ids))
           AND (r_kind IS NULL OR d.kind = r_kind)
         ORDER BY d.id
           FOR UPDATE
    ), back AS (
        INSERT INTO ficus_jobs AS j (id, queue, kind, payload, priority, state, attempts,
                                     max_attempts, run_at_ms, created_at_ms, last_error,
                                     unique_key, batch_id)
        SELECT d.id, d.queue, d.kind, d.payload, d.priority, 0, 0, d.max_attempts, at_ms,
               d.created_at_ms, d.last_error, d.unique_key, d.batch_id
          FROM ficus_dead_jobs d JOIN cand c ON c.id = d.id
         ORDER BY d.unique_key, d.id
        ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING j.id, j.batch_id
    ), gone AS (
        DELETE FROM ficus_dead_jobs d USING back b WHERE d.id = b.id
    )
    SELECT count(*), array_agg(b.batch_id) FILTER (WHERE b.batch_id IS NOT NULL)
      INTO v_n, v_batches
      FROM back b;
    FOR v_id, v_count IN
        SELECT x.batch_id, count(*) FROM unnest(v_batches) AS x(batch_id)
         GROUP BY x.batch_id ORDER BY x.batch_id
    LOOP
        UPDATE ficus_job_batches SET dead = greatest(dead - v_count, 0) WHERE id = v_id;
    END LOOP;
    IF v_n > 0 THEN
        PERFORM pg_notify('ficus_jobs.__SCHEMA__', '');
    END IF;
    RETURN v_n;
END
$fn$;

-- Creates a batch and enqueues its items; no row when the id is taken (nothing changed). An
-- item whose unique key is live elsewhere is that job's work: it does not count.
CREATE FUNCTION ficus_batch_create(
    b_id text, b_queue text, b_kind text, b_params text,
    f_queue text, f_kind text, f_payload text, f_priority integer, f_max_attempts bigint,
    f_unique_key text,
    j_queue text[], j_kind text[], j_payload text[], j_priority integer[], j_run_at bigint[],
    j_max_attempts bigint[], j_unique_key text[], at_ms bigint)
RETURNS SETOF ficus_job_batches
LANGUAGE plpgsql AS $fn$
DECLARE
    v_total bigint;
    v_batch ficus_job_batches;
BEGIN
    INSERT INTO ficus_job_batches (id, queue, kind, params, created_at_ms, fan_in_queue,
                                   fan_in_kind, fan_in_payload, fan_in_priority,
                                   fan_in_max_attempts, fan_in_unique_key)
    VALUES (b_id, b_queue, b_kind, b_params::json, at_ms, f_queue, f_kind, f_payload::json,
            f_priority, f_max_attempts, f_unique_key)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE e.r_created) INTO v_total
      FROM ficus_jobs_enqueue(j_queue, j_kind, j_payload, j_priority, j_run_at, j_max_attempts,
                              j_unique_key, at_ms, b_id) AS e;
    UPDATE ficus_job_batches SET total = v_total WHERE id = b_id RETURNING * INTO v_batch;
    PERFORM ficus_batch_finish(v_batch, at_ms);
    RETURN QUERY SELECT * FROM ficus_job_batches WHERE id = b_id;
END
$fn$;

-- Cancels a running batch: deletes its items not leased, marks it cancelled. Job rows are
-- locked before the batch row, as everywhere. An item deleted here was never counted, so the
-- batch cannot have finished meanwhile; if it did, something is wrong: roll back.
CREATE FUNCTION ficus_batch_cancel(c_id text, at_ms bigint)
RETURNS SETOF ficus_job_batches
LANGUAGE plpgsql AS $fn$
DECLARE
    v_removed bigint;
BEGIN
    DELETE FROM ficus_jobs j
     WHERE j.batch_id = c_id AND j.state = 0
       AND EXISTS (SELECT 1 FROM ficus_job_batches b WHERE b.id = c_id AND b.state = 0);
    GET DIAGNOSTICS v_removed = ROW_COUNT;
    UPDATE ficus_job_batches
       SET state = 3, cancelled = cancelled + v_removed, finished_at_ms = at_ms
     WHERE id = c_id AND state = 0;
    IF NOT FOUND AND v_removed > 0 THEN
        RAISE EXCEPTION 'batch % finished while % of its items were uncounted', c_id, v_removed;
    END IF;
    RETURN QUERY SELECT * FROM ficus_job_batches WHERE id = c_id;
END
$fn$;
"#;

/// A job row's columns, in the order [`decode_job`] reads them.
const COLUMNS: &str = "id, queue, kind, payload, priority, state, attempts, max_attempts, \
    run_at_ms, created_at_ms, last_error, unique_key, lease_token, lease_expires_at_ms, batch_id";

/// A dead job row as a job row: state 2, no lease.
const DEAD_COLUMNS: &str = "id, queue, kind, payload, priority, 2::smallint, attempts, \
    max_attempts, run_at_ms, created_at_ms, last_error, unique_key, NULL::bigint, NULL::bigint, \
    batch_id";

const BATCH_COLUMNS: &str = "id, queue, kind, params, state, total, done, dead, cancelled, \
    created_at_ms, finished_at_ms, result, fan_in_job";

/// The keys the database adds to a fan-in job's payload when its batch finishes.
const FAN_IN_COUNTS: [&str; 4] = ["batch_id", "total", "done", "dead"];

/// The PostgreSQL job queue. Any number of processes may share one schema's queue.
pub struct PgJobQueue {
    pool: TimedPool,
    /// Woken whenever jobs may have become ready, here or in another process.
    ready: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl Drop for PgJobQueue {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgJobQueue {
    /// A queue on `pool`, whose schema must be migrated already ([`super::migrate`], which
    /// [`PgEventStore::open`] runs). Starts the notification listener: must be called inside a
    /// Tokio runtime.
    pub fn new(pool: Pool, config: &PgConfig) -> Self {
        let ready = Arc::new(Notify::new());
        let wake = ready.clone();
        // Also right after (re)connecting: jobs may have become ready while no one listened.
        let listener = tokio::spawn(super::listen_forever(
            config.clone(),
            format!("ficus_jobs.{}", config.schema),
            move |_| wake.notify_waiters(),
        ));
        Self {
            pool: TimedPool::new(pool, config),
            ready,
            listener,
        }
    }

    /// A queue sharing the event store's connection pool and schema.
    pub fn for_store(store: &PgEventStore) -> Self {
        Self::new(store.pool().clone(), store.config())
    }

    /// Notified when jobs may have become ready: enqueued, retried, released or redriven, by
    /// this process or (through `NOTIFY`) another one. Workers still poll now and then: a
    /// notification can be lost while the listener reconnects, and delayed jobs fall due
    /// without one.
    pub fn ready_signal(&self) -> Arc<Notify> {
        self.ready.clone()
    }
}

/// New jobs as the parallel arrays `ficus_jobs_enqueue` takes.
#[derive(Default)]
struct JobArrays {
    queue: Vec<String>,
    kind: Vec<String>,
    payload: Vec<String>,
    priority: Vec<i32>,
    run_at_ms: Vec<i64>,
    max_attempts: Vec<i64>,
    unique_key: Vec<Option<String>>,
}

impl JobArrays {
    /// Encodes validated jobs; refuses text PostgreSQL cannot store.
    fn encode(jobs: Vec<NewJob>, now_ms: i64) -> Result<Self, StoreError> {
        let mut a = JobArrays::default();
        for j in jobs {
            no_nul(&j.queue)?;
            no_nul(&j.kind)?;
            if let Some(k) = &j.unique_key {
                no_nul(k)?;
            }
            a.payload.push(to_json(&j.payload)?);
            a.queue.push(j.queue);
            a.kind.push(j.kind);
            a.priority.push(j.priority);
            a.run_at_ms.push(j.run_at_ms.unwrap_or(now_ms));
            a.max_attempts.push(i64::from(j.max_attempts));
            a.unique_key.push(j.unique_key);
        }
        Ok(a)
    }
}

fn to_json(v: &Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("JSON: {e}")))
}

/// PostgreSQL text cannot hold NUL: refuse such a name up front rather than fail in the driver.
fn no_nul(s: &str) -> Result<(), StoreError> {
    if s.contains('\0') {
        return Err(StoreError::Invalid(format!(
            "names may not contain NUL characters: {s:?}"
        )));
    }
    Ok(())
}

/// An error text as stored: NUL characters replaced, then clipped.
fn error_text(e: &str) -> String {
    if e.contains('\0') {
        clip_error(&e.replace('\0', "\u{FFFD}"))
    } else {
        clip_error(e)
    }
}

/// A fresh base for one lease call's tokens; each job's token is `base XOR id`, so a job
/// leased again gets a different token.
fn token_base() -> i64 {
    // 62 random bits of a UUID v7; two equal bases for one job are negligible.
    (uuid::Uuid::now_v7().as_u64_pair().1 >> 2) as i64
}

fn lease_ids(leases: &[Lease]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|l| (l.id, l.token)).unzip()
}

/// Which of `leases` the database answered as held, each answer used once (a lease listed
/// twice is held for the first only, as if the calls were made one after the other).
fn held_once(leases: &[Lease], rows: &[Row]) -> Result<Vec<bool>, StoreError> {
    let mut held = held_set(rows)?;
    Ok(leases
        .iter()
        .map(|l| held.remove(&(l.id, l.token)))
        .collect())
}

fn held_set(rows: &[Row]) -> Result<HashSet<(i64, i64)>, StoreError> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(corrupt)?,
                r.try_get(1).map_err(corrupt)?,
            ))
        })
        .collect()
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("job queue row: {e}"))
}

fn decode_job(row: &Row) -> Result<Job, StoreError> {
    let id: JobId = row.try_get(0).map_err(corrupt)?;
    let bad = |what: String| StoreError::Corrupt(format!("job {id}: {what}"));
    let state = match row.try_get::<_, i16>(5).map_err(|e| bad(e.to_string()))? {
        0 => JobState::Ready,
        1 => JobState::Leased,
        2 => JobState::Dead,
        other => return Err(bad(format!("unknown state {other}"))),
    };
    let count = |i: usize| -> Result<u32, StoreError> {
        let v: i64 = row.try_get(i).map_err(|e| bad(e.to_string()))?;
        u32::try_from(v).map_err(|_| bad(format!("count {v} out of range")))
    };
    let token: Option<i64> = row.try_get(12).map_err(|e| bad(e.to_string()))?;
    Ok(Job {
        id,
        queue: row.try_get(1).map_err(|e| bad(e.to_string()))?,
        kind: row.try_get(2).map_err(|e| bad(e.to_string()))?,
        payload: row.try_get(3).map_err(|e| bad(format!("payload: {e}")))?,
        priority: row.try_get(4).map_err(|e| bad(e.to_string()))?,
        state,
        attempts: count(6)?,
        max_attempts: count(7)?,
        run_at_ms: row.try_get(8).map_err(|e| bad(e.to_string()))?,
        created_at_ms: row.try_get(9).map_err(|e| bad(e.to_string()))?,
        last_error: row.try_get(10).map_err(|e| bad(e.to_string()))?,
        unique_key: row.try_get(11).map_err(|e| bad(e.to_string()))?,
        lease: token
            .filter(|_| state == JobState::Leased)
            .map(|token| Lease { id, token }),
        lease_expires_at_ms: row.try_get(13).map_err(|e| bad(e.to_string()))?,
        batch_id: row.try_get(14).map_err(|e| bad(e.to_string()))?,
    })
}

fn decode_batch(row: &Row) -> Result<Batch, StoreError> {
    let id: String = row.try_get(0).map_err(corrupt)?;
    let bad = |what: String| StoreError::Corrupt(format!("batch {id}: {what}"));
    let state = match row.try_get::<_, i16>(4).map_err(|e| bad(e.to_string()))? {
        0 => BatchState::Running,
        1 => BatchState::Completed,
        2 => BatchState::CompletedWithFailures,
        3 => BatchState::Cancelled,
        other => return Err(bad(format!("unknown state {other}"))),
    };
    let count = |i: usize| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(i).map_err(|e| bad(e.to_string()))?;
        u64::try_from(v).map_err(|_| bad(format!("count {v} out of range")))
    };
    Ok(Batch {
        queue: row.try_get(1).map_err(|e| bad(e.to_string()))?,
        kind: row.try_get(2).map_err(|e| bad(e.to_string()))?,
        params: row.try_get(3).map_err(|e| bad(format!("params: {e}")))?,
        state,
        total: count(5)?,
        done: count(6)?,
        dead: count(7)?,
        cancelled: count(8)?,
        created_at_ms: row.try_get(9).map_err(|e| bad(e.to_string()))?,
        finished_at_ms: row.try_get(10).map_err(|e| bad(e.to_string()))?,
        result: row.try_get(11).map_err(|e| bad(format!("result: {e}")))?,
        fan_in_job: row.try_get(12).map_err(|e| bad(e.to_string()))?,
        id,
    })
}

/// The fan-in payload as [`fan_in_job`] shapes it (always an object), without the counts:
/// the database adds those when the batch finishes.
fn fan_in_base(fan_in: &NewJob, batch_id: &str) -> Value {
    let placeholder = Batch {
        id: batch_id.to_owned(),
        queue: String::new(),
        kind: String::new(),
        params: Value::Null,
        state: BatchState::Running,
        total: 0,
        done: 0,
        dead: 0,
        cancelled: 0,
        created_at_ms: 0,
        finished_at_ms: None,
        result: None,
        fan_in_job: None,
    };
    let mut payload = fan_in_job(fan_in, &placeholder).payload;
    if let Value::Object(m) = &mut payload {
        for k in FAN_IN_COUNTS {
            m.remove(k);
        }
    }
    payload
}

#[async_trait]
impl JobQueue for PgJobQueue {
    async fn enqueue(&self, jobs: Vec<NewJob>, now_ms: i64) -> Result<Vec<Enqueued>, StoreError> {
        validate_jobs(&jobs)?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let n = jobs.len();
        let a = JobArrays::encode(jobs, now_ms)?;
        let rows = query(
            &self.pool,
            "SELECT r_id, r_created FROM ficus_jobs_enqueue($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
            &[
                &a.queue,
                &a.kind,
                &a.payload,
                &a.priority,
                &a.run_at_ms,
                &a.max_attempts,
                &a.unique_key,
                &now_ms,
            ],
        )
        .await?;
        if rows.len() != n {
            return Err(StoreError::Corrupt(format!(
                "enqueue of {n} jobs answered {} rows",
                rows.len()
            )));
        }
        let out = rows
            .iter()
            .map(|r| {
                Ok(Enqueued {
                    id: r.try_get(0).map_err(corrupt)?,
                    created: r.try_get(1).map_err(corrupt)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
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
        no_nul(queue)?;
        let rows = query(
            &self.pool,
            &format!("SELECT {COLUMNS} FROM ficus_jobs_lease($1, $2, $3, $4, $5)"),
            &[
                &queue,
                &(max as i32),
                &now_ms,
                &now_ms.saturating_add(visibility_ms),
                &token_base(),
            ],
        )
        .await?;
        rows.iter().map(decode_job).collect()
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, tokens) = lease_ids(leases);
        let rows = query(
            &self.pool,
            "SELECT r_id, r_token FROM ficus_jobs_heartbeat($1, $2, $3)",
            &[&ids, &tokens, &now_ms.saturating_add(visibility_ms)],
        )
        .await?;
        // A lease listed twice is extended twice: held both times.
        let held = held_set(&rows)?;
        Ok(leases
            .iter()
            .map(|l| held.contains(&(l.id, l.token)))
            .collect())
    }

    async fn complete(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, tokens) = lease_ids(leases);
        // The port gives no time here; a batch finished by this call is stamped with the clock.
        let rows = query(
            &self.pool,
            "SELECT r_id, r_token FROM ficus_jobs_complete($1, $2, $3)",
            &[&ids, &tokens, &crate::now_ms()],
        )
        .await?;
        held_once(leases, &rows)
    }

    async fn fail(
        &self,
        lease: Lease,
        error: &str,
        failure: Failure,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let retry_at = match failure {
            Failure::RetryAt { at_ms } => Some(at_ms),
            Failure::Dead => None,
        };
        let rows = query(
            &self.pool,
            "SELECT ficus_jobs_fail($1, $2, $3, $4, $5)",
            &[
                &lease.id,
                &lease.token,
                &error_text(error),
                &retry_at,
                &now_ms,
            ],
        )
        .await?;
        let held: bool = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("fail answered no row".into()))?
            .try_get(0)
            .map_err(corrupt)?;
        if held && retry_at.is_some() {
            self.ready.notify_waiters();
        }
        Ok(held)
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        if leases.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, tokens) = lease_ids(leases);
        let rows = query(
            &self.pool,
            "SELECT r_id, r_token FROM ficus_jobs_release($1, $2)",
            &[&ids, &tokens],
        )
        .await?;
        let out = held_once(leases, &rows)?;
        if out.iter().any(|b| *b) {
            self.ready.notify_waiters();
        }
        Ok(out)
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<Job>, StoreError> {
        no_nul(queue)?;
        let limit = limit.min(MAX_LEASE_BATCH) as i64;
        let rows = query(
            &self.pool,
            &format!(
                "SELECT {DEAD_COLUMNS} FROM ficus_dead_jobs WHERE queue = $1 ORDER BY id LIMIT $2"
            ),
            &[&queue, &limit],
        )
        .await?;
        rows.iter().map(decode_job).collect()
    }

    async fn redrive(
        &self,
        queue: &str,
        filter: &DeadFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        no_nul(queue)?;
        if let Some(k) = &filter.kind {
            no_nul(k)?;
        }
        let rows = query(
            &self.pool,
            "SELECT ficus_jobs_redrive($1, $2, $3, $4)",
            &[&queue, &filter.ids, &filter.kind, &now_ms],
        )
        .await?;
        let n: i64 = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("redrive answered no row".into()))?
            .try_get(0)
            .map_err(corrupt)?;
        if n > 0 {
            self.ready.notify_waiters();
        }
        Ok(n.max(0) as u64)
    }

    async fn purge_dead(&self, queue: &str, filter: &DeadFilter) -> Result<u64, StoreError> {
        no_nul(queue)?;
        if let Some(k) = &filter.kind {
            no_nul(k)?;
        }
        execute(
            &self.pool,
            "DELETE FROM ficus_dead_jobs
              WHERE queue = $1
                AND ($2::bigint[] IS NULL OR id = ANY ($2))
                AND ($3::text IS NULL OR kind = $3)",
            &[&queue, &filter.ids, &filter.kind],
        )
        .await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        // One statement, one snapshot: a job moving between the tables is seen once.
        let rows = query(
            &self.pool,
            &format!(
                "SELECT {COLUMNS} FROM ficus_jobs WHERE id = $1
                     UNION ALL
                     SELECT {DEAD_COLUMNS} FROM ficus_dead_jobs WHERE id = $1"
            ),
            &[&id],
        )
        .await?;
        rows.first().map(decode_job).transpose()
    }

    async fn stats(&self, now_ms: i64) -> Result<Vec<QueueStats>, StoreError> {
        let rows = query(
            &self.pool,
            "SELECT queue, sum(ready)::bigint, sum(delayed)::bigint, sum(in_flight)::bigint,
                        sum(dead)::bigint, min(oldest)
                   FROM (SELECT queue,
                                count(*) FILTER (WHERE state = 0 AND run_at_ms <= $1) AS ready,
                                count(*) FILTER (WHERE state = 0 AND run_at_ms > $1) AS delayed,
                                count(*) FILTER (WHERE state = 1) AS in_flight,
                                0::bigint AS dead,
                                min(run_at_ms) FILTER (WHERE state = 0 AND run_at_ms <= $1)
                                    AS oldest
                           FROM ficus_jobs GROUP BY queue
                         UNION ALL
                         SELECT queue, 0, 0, 0, count(*), NULL
                           FROM ficus_dead_jobs GROUP BY queue) s
                  GROUP BY queue
                  ORDER BY queue COLLATE \"C\"",
            &[&now_ms],
        )
        .await?;
        rows.iter()
            .map(|r| {
                let n = |i: usize| -> Result<u64, StoreError> {
                    Ok(r.try_get::<_, i64>(i).map_err(corrupt)?.max(0) as u64)
                };
                let oldest: Option<i64> = r.try_get(5).map_err(corrupt)?;
                Ok(QueueStats {
                    queue: r.try_get(0).map_err(corrupt)?,
                    ready: n(1)?,
                    delayed: n(2)?,
                    in_flight: n(3)?,
                    dead: n(4)?,
                    oldest_ready_wait_ms: oldest.map_or(0, |t| (now_ms - t).max(0) as u64),
                })
            })
            .collect()
    }

    async fn create_batch(
        &self,
        batch: NewBatch,
        items: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Batch, StoreError> {
        validate_batch(&batch, &items)?;
        no_nul(&batch.id)?;
        no_nul(&batch.queue)?;
        no_nul(&batch.kind)?;
        let params = to_json(&batch.params)?;
        let fan_in = match &batch.fan_in {
            Some(f) => {
                no_nul(&f.queue)?;
                no_nul(&f.kind)?;
                if let Some(k) = &f.unique_key {
                    no_nul(k)?;
                }
                Some((f, to_json(&fan_in_base(f, &batch.id))?))
            }
            None => None,
        };
        let a = JobArrays::encode(items, now_ms)?;
        let rows = query(
            &self.pool,
            &format!(
                "SELECT {BATCH_COLUMNS} FROM ficus_batch_create(
                        $1, $2, $3, $4, $5, $6, $7, $8, $9, $10,
                        $11, $12, $13, $14, $15, $16, $17, $18)"
            ),
            &[
                &batch.id,
                &batch.queue,
                &batch.kind,
                &params,
                &fan_in.as_ref().map(|(f, _)| f.queue.as_str()),
                &fan_in.as_ref().map(|(f, _)| f.kind.as_str()),
                &fan_in.as_ref().map(|(_, p)| p.as_str()),
                &fan_in.as_ref().map(|(f, _)| f.priority),
                &fan_in.as_ref().map(|(f, _)| i64::from(f.max_attempts)),
                &fan_in.as_ref().and_then(|(f, _)| f.unique_key.as_deref()),
                &a.queue,
                &a.kind,
                &a.payload,
                &a.priority,
                &a.run_at_ms,
                &a.max_attempts,
                &a.unique_key,
                &now_ms,
            ],
        )
        .await?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Invalid(format!(
                "bulk job {} already exists",
                batch.id
            )));
        };
        let created = decode_batch(row)?;
        self.ready.notify_waiters();
        Ok(created)
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        no_nul(id)?;
        let rows = query(
            &self.pool,
            &format!("SELECT {BATCH_COLUMNS} FROM ficus_job_batches WHERE id = $1"),
            &[&id],
        )
        .await?;
        rows.first().map(decode_batch).transpose()
    }

    async fn cancel_batch(&self, id: &str, now_ms: i64) -> Result<Option<Batch>, StoreError> {
        no_nul(id)?;
        let rows = query(
            &self.pool,
            &format!("SELECT {BATCH_COLUMNS} FROM ficus_batch_cancel($1, $2)"),
            &[&id, &now_ms],
        )
        .await?;
        rows.first().map(decode_batch).transpose()
    }

    async fn set_batch_result(&self, id: &str, result: Value) -> Result<bool, StoreError> {
        no_nul(id)?;
        let n = execute(
            &self.pool,
            "UPDATE ficus_job_batches SET result = $2::text::json WHERE id = $1",
            &[&id, &to_json(&result)?],
        )
        .await?;
        Ok(n == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_in_base_is_an_object_without_the_counts() {
        let job = |payload| NewJob::new("q", "k", payload);
        assert_eq!(
            fan_in_base(&job(serde_json::json!({"note": 1, "done": 9})), "b"),
            serde_json::json!({"note": 1})
        );
        assert_eq!(fan_in_base(&job(Value::Null), "b"), serde_json::json!({}));
        assert_eq!(
            fan_in_base(&job(serde_json::json!([1])), "b"),
            serde_json::json!({"value": [1]})
        );
    }

    #[test]
    fn error_text_has_no_nul_and_is_clipped() {
        assert_eq!(error_text("a\0b"), "a\u{FFFD}b");
        let long = "x".repeat(crate::jobs::JOB_ERROR_MAX_BYTES + 10);
        assert_eq!(error_text(&long).len(), crate::jobs::JOB_ERROR_MAX_BYTES);
    }
}
