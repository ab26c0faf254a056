//! Read models in PostgreSQL, run by competing consumers: several processes run the same
//! projection, exactly one of them applies events at a time, and a standby takes over from
//! the committed checkpoint when the active one dies.
//!
//! # Exactly once to effect
//!
//! A batch of events and the checkpoint that follows it commit in ONE transaction, as in the
//! SQLite runner ([`crate::projection`]): a crash at any instant leaves the read model exactly
//! at its checkpoint. Checkpoints live in `ficus_projection_checkpoints`, one row per
//! projection, in the same schema as the read model's tables.
//!
//! # Leadership
//!
//! The active runner holds a session-level advisory lock,
//! `pg_try_advisory_lock(hashtext('ficus-projection:' || current_schema() || '.' || name))`,
//! on a dedicated connection: its *session*. (The schema is part of the key because advisory
//! locks are per database, and several Ficus deployments, or tests, may share a database in
//! separate schemas.) Standbys try the lock every [`STANDBY_RETRY_INTERVAL`]. When the active
//! process dies, even by `kill -9`, its socket closes, PostgreSQL ends the session, the lock
//! frees and a standby takes it.
//!
//! # Fencing (no split brain)
//!
//! A lock alone does not stop a runner that *believes* it leads (its session was terminated,
//! it was paused, its network went away) from committing one more batch after a standby took
//! over. Two things make that impossible:
//!
//! 1. Every write of the active runner (takeover, batches, rebuilds) runs **on the session
//!    that holds the lock**, never on another pooled connection. A session-level advisory
//!    lock is held for as long as its session lives, so a transaction that commits on that
//!    session committed while the lock was held, and no other runner held it. If the session
//!    died, the transaction dies with it. (A commit whose answer is lost is either committed,
//!    and the next leader reads its checkpoint, or not, and is re-applied: both exactly once.)
//! 2. A fencing token: taking over increments the row's `generation` in a transaction on the
//!    new session, and each batch starts with `SELECT ... FOR UPDATE` of the row and goes on
//!    only if `generation` is still the one this runner took over with and `position` is
//!    exactly one before the batch's first event. Row locking orders every batch against
//!    every takeover, so even a writer that ignored rule 1 could not apply a batch twice.
//!
//! A runner whose session is closed, whose fence no longer matches, or whose session does not
//! answer within [`SESSION_OP_TIMEOUT`] steps down: it closes its session and becomes a
//! standby. Its lock goes with the session; after a network partition PostgreSQL only notices
//! a dead client through TCP keepalives, so set `tcp_keepalives_idle`/`_interval`/`_count` on
//! the server to bound how long a standby may wait.
//!
//! # Rebuilds
//!
//! [`PgProjectionHandle::rebuild`] may be called in any process: it records a request in the
//! row (`rebuild_requests`), and whichever runner is active performs it, blue/green: it
//! creates the new copy's tables, empty, in a schema of their own (`next_schema`) and marks
//! the request done, then replays the log into them (`next_position`) in fenced steps between
//! live batches, never past the serving copy's checkpoint, which keeps serving and applying.
//! Once level with it (and past the target), the switch is one transaction holding the
//! checkpoint table `ACCESS EXCLUSIVE`: the old tables are dropped and the new ones moved into
//! the deployment's schema under the same names. Queries take `ACCESS SHARE` on that table
//! before their snapshot ([`begin_read`]), so each reads the old copy or the whole new one,
//! in any process. The state is in the row: a runner that takes over (after a crash) resumes
//! the replay where the new copy stands; a request while a rebuild runs joins it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use ficus_core::{Position, RecordedEvent};
use ficus_store::postgres::no_answer;
use ficus_store::{EventStore, StoreError, Subscription, SubscriptionError};
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;

use crate::backoff::Backoff;
use crate::projection::{
    ProjectionError, ProjectionHandle, ProjectionState, ProjectionStatus, RebuildProgress,
    WaitError,
};
use crate::Shutdown;

/// Most events applied in one read-model transaction. Each event is at least one round trip
/// on the session, so this also bounds how long the checkpoint row stays locked.
pub const PG_PROJECTION_BATCH_EVENTS: usize = 500;
/// How often a standby tries to take the lock (±25% jitter, so standbys do not come in step).
pub const STANDBY_RETRY_INTERVAL: Duration = Duration::from_millis(500);
/// How often the active runner checks its session is alive, its fence still holds and no
/// rebuild is pending, when no events arrive.
pub const LEADER_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Longest one operation on the session (a whole batch transaction included) may take before
/// the session is given up as dead and the runner steps down.
pub const SESSION_OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest one read of the read model or of its checkpoint through a handle may take before
/// it answers [`StoreError::Unavailable`] and closes its connection (a query blocked on a lock
/// or on a connection that stopped answering), for a handle not given one. `ficus serve`
/// passes its store's `PgConfig::transaction_timeout` instead.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a read-your-writes wait or a rebuild request polls the checkpoint table while
/// this process is not the one applying events.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Retry pauses after a failed batch or a failed attempt to reach PostgreSQL (full jitter).
const RETRY_BACKOFF: Backoff = Backoff {
    base_ms: 100,
    max_ms: 30_000,
};

/// The checkpoint table, shared by every PostgreSQL projection in the schema.
pub const CHECKPOINT_TABLE: &str = "ficus_projection_checkpoints";

/// Concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail in PostgreSQL (a unique
/// violation in its catalog); a transaction-level advisory lock makes creators take turns.
const CHECKPOINT_SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(hashtext('ficus-projection-ddl:' || current_schema()));
    CREATE TABLE IF NOT EXISTS ficus_projection_checkpoints (
        name text PRIMARY KEY,
        position bigint NOT NULL DEFAULT 0,
        updated_at_ms bigint NOT NULL DEFAULT 0,
        generation bigint NOT NULL DEFAULT 0,
        rebuild_requests bigint NOT NULL DEFAULT 0,
        rebuilds_done bigint NOT NULL DEFAULT 0
    );
    -- Blue/green rebuilds (see the module documentation): the schema a rebuild fills, its
    -- position and its target.
    ALTER TABLE ficus_projection_checkpoints
        ADD COLUMN IF NOT EXISTS next_schema text,
        ADD COLUMN IF NOT EXISTS next_position bigint NOT NULL DEFAULT 0,
        ADD COLUMN IF NOT EXISTS rebuild_target bigint NOT NULL DEFAULT 0;";

/// Starts a query on the read models: takes `ACCESS SHARE` on the checkpoint table, then reads
/// projection `name`'s checkpoint. Call it first in a query's `REPEATABLE READ` transaction.
/// `LOCK TABLE` takes no snapshot, so the snapshot comes after the lock: a rebuild's switch
/// (which holds the table `ACCESS EXCLUSIVE` while it swaps the copies) is either wholly
/// before this query's snapshot or waits for the query to end, and a query reads the old copy
/// or the whole new one, never a mix, and never fails for the switch.
pub async fn begin_read(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<Position, tokio_postgres::Error> {
    tx.batch_execute("LOCK TABLE ficus_projection_checkpoints IN ACCESS SHARE MODE")
        .await?;
    read_checkpoint(tx, name).await
}

/// Puts `schema` first on the transaction's `search_path`.
async fn use_schema(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT set_config('search_path', quote_ident($1) || ', ' || current_setting('search_path'), true)",
        &[&schema],
    )
    .await
    .map(|_| ())
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const ENSURE_ROW: &str = "INSERT INTO ficus_projection_checkpoints (name, updated_at_ms)
     VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";

const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(
     hashtext('ficus-projection:' || coalesce(current_schema(), '') || '.' || $1))";

/// A read model kept in PostgreSQL.
#[async_trait]
pub trait PgProjection: Send + Sync + 'static {
    /// Unique name within the schema; the key of its checkpoint row and of its lock.
    fn name(&self) -> &str;
    /// DDL creating the read model's tables (must be idempotent: `IF NOT EXISTS`). Runs in a
    /// transaction at each takeover and after a rebuild's drop.
    fn schema(&self) -> &str;
    /// DDL dropping them, for a rebuild.
    fn drop_schema(&self) -> &str;
    /// Applies one event inside the batch's transaction. Events it does not care about are
    /// ignored by returning `Ok(())`.
    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError>;
}

/// Lets [`PgProjection::apply`] use `?` on driver errors. The message keeps the server's.
impl From<tokio_postgres::Error> for ProjectionError {
    fn from(e: tokio_postgres::Error) -> Self {
        ProjectionError::Other(format!("read model write failed: {}", pg_message(&e)))
    }
}

fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {db}"),
        None => e.to_string(),
    }
}

fn other(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Other(format!("PostgreSQL: {e}"))
}

fn to_position(v: i64) -> Position {
    Position::try_from(v).expect("checkpoint positions are never negative")
}

fn sql_int(v: u64) -> i64 {
    i64::try_from(v).expect("positions fit in bigint")
}

/// The checkpoint of projection `name` as seen by `client` (0 when it has none yet). Call it
/// inside a query's `REPEATABLE READ` transaction to know which position the answer reflects.
pub async fn read_checkpoint<C>(client: &C, name: &str) -> Result<Position, tokio_postgres::Error>
where
    C: tokio_postgres::GenericClient + Sync,
{
    let row = client
        .query_opt(
            "SELECT position FROM ficus_projection_checkpoints WHERE name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map_or(0, |r| to_position(r.get(0))))
}

/// A runner's published status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgProjectionStatus {
    pub state: ProjectionState,
    /// The last position applied: this runner's own while active, the table's as last read
    /// while standby.
    pub checkpoint: Position,
    /// The fencing token this runner took over with; `None` while not active.
    pub generation: Option<u64>,
    /// Milliseconds from the last applied event's commit to its application.
    pub last_lag_ms: u64,
    /// Events this runner applied since it started (rebuilds count again).
    pub events_applied: u64,
    /// A blue/green rebuild this runner is performing: the new copy's progress.
    pub rebuild: Option<RebuildProgress>,
}

impl PgProjectionStatus {
    /// Whether this runner holds the lock and applies events.
    pub fn is_active(&self) -> bool {
        self.generation.is_some()
    }
}

/// Why a rebuild request did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PgRebuildError {
    /// The request could not be recorded: nothing changed. (503 `store_unavailable`)
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is recorded but no active runner performed it within the bound. It stays
    /// pending: the next active runner performs it. (503 `read_model_lagging`)
    #[error("rebuild requested but not performed within {waited_ms} ms; it stays pending")]
    Pending { waited_ms: u64 },
    /// The embedded runner of this process refused or has stopped. (503 `rebuild_failed`)
    #[error("{0}")]
    Stopped(String),
}

/// A handle on a projection run by this process and its competitors: status, lag,
/// read-your-writes waits and rebuild.
#[derive(Clone)]
pub struct PgProjectionHandle {
    name: Arc<str>,
    pool: Pool,
    store: Arc<dyn EventStore>,
    status: watch::Receiver<PgProjectionStatus>,
    /// Wakes the local runner to look at the checkpoint row now (after a rebuild request).
    poke: Arc<Notify>,
    /// Whether a runner in this process competes for the projection (false for a handle
    /// from [`PgProjectionHandle::follow`]: a query process only reads what others apply).
    runs_here: bool,
    /// Longest one read through this handle may take ([`PgProjectionHandle::read_timeout`]).
    read_timeout: Duration,
}

impl PgProjectionHandle {
    /// A handle on projection `name` for a process that runs no runner for it (a query
    /// process): reads, waits and rebuild requests go through the checkpoint table, where the
    /// active runner of another process commits. A task refreshes the published status from
    /// the table every [`STANDBY_RETRY_INTERVAL`] (state `Standby`, or `Failed` while the
    /// table cannot be read), so that readiness and lag stay true without a runner here.
    pub fn follow(
        name: &str,
        pool: Pool,
        store: Arc<dyn EventStore>,
        shutdown: Shutdown,
    ) -> (PgProjectionHandle, JoinHandle<()>) {
        let (status_tx, status_rx) = watch::channel(PgProjectionStatus {
            state: ProjectionState::Standby,
            checkpoint: 0,
            generation: None,
            last_lag_ms: 0,
            events_applied: 0,
            rebuild: None,
        });
        let handle = PgProjectionHandle {
            name: name.into(),
            pool,
            store,
            status: status_rx,
            poke: Arc::new(Notify::new()),
            runs_here: false,
            read_timeout: DEFAULT_READ_TIMEOUT,
        };
        let reader = handle.clone();
        let task = tokio::spawn(async move {
            while !shutdown.is_triggered() {
                let read = tokio::time::timeout(SESSION_OP_TIMEOUT, async {
                    let checkpoint = reader.checkpoint().await?;
                    Ok::<_, StoreError>((checkpoint, reader.rebuild_progress().await))
                })
                .await;
                status_tx.send_modify(|s| match read {
                    Ok(Ok((checkpoint, rebuild))) => {
                        s.checkpoint = checkpoint;
                        s.state = ProjectionState::Standby;
                        s.rebuild = rebuild;
                    }
                    Ok(Err(e)) => {
                        s.state = ProjectionState::Failed {
                            error: e.to_string(),
                        }
                    }
                    Err(_) => {
                        s.state = ProjectionState::Failed {
                            error: format!("no answer within {SESSION_OP_TIMEOUT:?}"),
                        }
                    }
                });
                tokio::select! {
                    _ = shutdown.wait() => break,
                    _ = tokio::time::sleep(standby_pause()) => {}
                }
            }
            status_tx.send_modify(|s| s.state = ProjectionState::Stopped);
        });
        (handle, task)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process runs the projection (active or standby), rather than follows it.
    pub fn runs_here(&self) -> bool {
        self.runs_here
    }

    /// Waits, at most `timeout`, until the runner (or follower) has published its first
    /// status after starting: it took over, or it found another process's runner active, or
    /// it read the table's checkpoint. A process waits for this before serving, so that its
    /// first queries do not race the takeover (which also creates the read model's tables).
    /// Returns whether that happened in time.
    pub async fn started(&self, timeout: Duration) -> bool {
        // A clone starts from the version this handle has seen, which is the initial one:
        // the handle only ever `borrow`s its own receiver.
        let mut rx = self.status.clone();
        matches!(
            tokio::time::timeout(timeout, rx.changed()).await,
            Ok(Ok(()))
        )
    }

    /// The pool the read model is queried through.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The handle with reads bounded by `limit` instead of [`DEFAULT_READ_TIMEOUT`] (a server
    /// passes its store's `PgConfig::transaction_timeout`: a read is a few round trips).
    pub fn with_read_timeout(mut self, limit: Duration) -> Self {
        self.read_timeout = limit.max(Duration::from_millis(1));
        self
    }

    /// Longest one read through this handle may take: the queries of the read side and the
    /// checkpoint reads of waits and status. Past it the read answers unavailable and its
    /// connection is closed ([`ficus_store::postgres::no_answer`]).
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    pub fn status(&self) -> PgProjectionStatus {
        self.status.borrow().clone()
    }

    /// Events committed to the log but not yet applied, by this runner's last knowledge of
    /// the checkpoint (its own while active, refreshed every [`STANDBY_RETRY_INTERVAL`] while
    /// standby).
    pub fn lag_events(&self) -> u64 {
        self.store
            .head_position()
            .saturating_sub(self.status.borrow().checkpoint)
    }

    /// The committed checkpoint, read from the table: right whichever process is active.
    pub async fn checkpoint(&self) -> Result<Position, StoreError> {
        let conn = self.pool.get().await.map_err(unavailable)?;
        let answer =
            tokio::time::timeout(self.read_timeout, read_checkpoint(&**conn, &self.name)).await;
        match answer {
            Ok(Ok(p)) => Ok(p),
            // No runner has created the table yet: nothing applied.
            Ok(Err(e)) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(0),
            Ok(Err(e)) => Err(unavailable(pg_message(&e))),
            Err(_) => Err(no_answer(conn, self.read_timeout)),
        }
    }

    /// The progress of a blue/green rebuild under way in whichever process is active, from
    /// the checkpoint row; `None` when none runs (or the row cannot be read: the status then
    /// reports the failure through the checkpoint read).
    pub async fn rebuild_progress(&self) -> Option<RebuildProgress> {
        let conn = self.pool.get().await.ok()?;
        let name: &str = &self.name;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&name];
        let read = conn.query_opt(
            "SELECT next_position, rebuild_target FROM ficus_projection_checkpoints
             WHERE name = $1 AND next_schema IS NOT NULL",
            &params,
        );
        let answer = tokio::time::timeout(self.read_timeout, read).await;
        let row = match answer {
            Ok(r) => r.ok()??,
            Err(_) => {
                // The status read then reports the failure through the checkpoint read.
                let _ = no_answer(conn, self.read_timeout);
                return None;
            }
        };
        Some(RebuildProgress {
            position: to_position(row.get(0)),
            target: to_position(row.get(1)),
            error: None,
        })
    }

    /// Waits until the read model has applied `position`, at most `timeout`. While this
    /// process is active it is woken by its own runner; otherwise it polls the table every
    /// [`WAIT_POLL_INTERVAL`], as another process is applying.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<Position, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.status.clone();
        let mut best = 0;
        loop {
            let (local, active, stopped) = {
                let s = rx.borrow_and_update();
                (
                    s.checkpoint,
                    s.is_active(),
                    s.state == ProjectionState::Stopped,
                )
            };
            // Only an active runner's own checkpoint is exact; any other copy may be stale
            // (a rebuild elsewhere resets the table), so the table decides.
            if active {
                best = best.max(local);
                if best >= position {
                    return Ok(best);
                }
            } else {
                if let Ok(c) = self.checkpoint().await {
                    best = best.max(c);
                    if best >= position {
                        return Ok(best);
                    }
                }
                if stopped {
                    return Err(WaitError::Stopped);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Lagging {
                    checkpoint: best,
                    wanted: position,
                });
            }
            let wake = if active {
                deadline
            } else {
                deadline.min(now + WAIT_POLL_INTERVAL)
            };
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The runner task is gone (aborted): only the table can answer now.
                        return match self.checkpoint().await {
                            Ok(c) if c >= position => Ok(c),
                            _ => Err(WaitError::Stopped),
                        };
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Resets the read model to empty and replays the log from position 1. Callable in any
    /// process: the request is recorded in the checkpoint row and the active runner, here or
    /// elsewhere, performs it. Returns once the reset is committed (follow the replay with
    /// [`PgProjectionHandle::status`] or [`PgProjectionHandle::wait_for`]), or
    /// [`PgRebuildError::Pending`] if no runner did so within `timeout`.
    pub async fn rebuild(&self, timeout: Duration) -> Result<(), PgRebuildError> {
        let started = Instant::now();
        let ticket = {
            let mut conn = self.pool.get().await.map_err(unavailable)?;
            let client: &mut tokio_postgres::Client = &mut conn;
            ensure_checkpoint_row(client, &self.name)
                .await
                .map_err(|e| unavailable(pg_message(&e)))?;
            let row = client
                .query_one(
                    "UPDATE ficus_projection_checkpoints
                     SET rebuild_requests = rebuild_requests + 1
                     WHERE name = $1 RETURNING rebuild_requests",
                    &[&&*self.name],
                )
                .await
                .map_err(|e| unavailable(pg_message(&e)))?;
            row.get::<_, i64>(0)
        };
        self.poke.notify_one();
        loop {
            {
                let conn = self.pool.get().await.map_err(unavailable)?;
                let row = conn
                    .query_one(
                        "SELECT rebuilds_done FROM ficus_projection_checkpoints WHERE name = $1",
                        &[&&*self.name],
                    )
                    .await
                    .map_err(|e| unavailable(pg_message(&e)))?;
                if row.get::<_, i64>(0) >= ticket {
                    return Ok(());
                }
            }
            if started.elapsed() >= timeout {
                return Err(PgRebuildError::Pending {
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL.min(timeout.saturating_sub(started.elapsed())))
                .await;
        }
    }
}

/// A read model's handle, whichever backend runs it: what the query side waits on and what
/// the operations endpoints (readiness, `/v1/projections`, `/metrics`, rebuild) report.
#[derive(Clone)]
pub enum ReadModelHandle {
    /// An SQLite read model run by this process.
    Sqlite(ProjectionHandle),
    /// A PostgreSQL read model, run here (active or standby) or followed.
    Postgres(PgProjectionHandle),
}

impl ReadModelHandle {
    pub fn name(&self) -> &str {
        match self {
            ReadModelHandle::Sqlite(h) => h.name(),
            ReadModelHandle::Postgres(h) => h.name(),
        }
    }

    /// The published status, in the SQLite runner's terms (a PostgreSQL standby or follower
    /// shows `Standby` and the table's checkpoint, refreshed every [`STANDBY_RETRY_INTERVAL`]).
    pub fn status(&self) -> ProjectionStatus {
        match self {
            ReadModelHandle::Sqlite(h) => h.status(),
            ReadModelHandle::Postgres(h) => {
                let s = h.status();
                ProjectionStatus {
                    checkpoint: s.checkpoint,
                    state: s.state,
                    last_lag_ms: s.last_lag_ms,
                    events_applied: s.events_applied,
                    rebuild: s.rebuild,
                }
            }
        }
    }

    /// How this process takes part: `local` (SQLite, the only runner), `active` or `standby`
    /// (PostgreSQL, a runner here), or `follower` (PostgreSQL, no runner here).
    pub fn mode(&self) -> &'static str {
        match self {
            ReadModelHandle::Sqlite(_) => "local",
            ReadModelHandle::Postgres(h) if !h.runs_here() => "follower",
            ReadModelHandle::Postgres(h) if h.status().is_active() => "active",
            ReadModelHandle::Postgres(_) => "standby",
        }
    }

    pub fn lag_events(&self) -> u64 {
        match self {
            ReadModelHandle::Sqlite(h) => h.lag_events(),
            ReadModelHandle::Postgres(h) => h.lag_events(),
        }
    }

    /// The committed checkpoint, read from the read model's storage now.
    pub async fn checkpoint(&self) -> Result<Position, StoreError> {
        match self {
            ReadModelHandle::Sqlite(h) => h.db().checkpoint(),
            ReadModelHandle::Postgres(h) => h.checkpoint().await,
        }
    }

    /// Waits until the read model has applied `position`, at most `timeout`.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<Position, WaitError> {
        match self {
            ReadModelHandle::Sqlite(h) => h.wait_for(position, timeout).await,
            ReadModelHandle::Postgres(h) => h.wait_for(position, timeout).await,
        }
    }

    /// Resets the read model and replays the log; returns once the reset is committed. On
    /// PostgreSQL the active runner, in whichever process, performs it; `timeout` bounds the
    /// wait for that runner.
    pub async fn rebuild(&self, timeout: Duration) -> Result<(), PgRebuildError> {
        match self {
            ReadModelHandle::Sqlite(h) => h.rebuild().await.map_err(PgRebuildError::Stopped),
            ReadModelHandle::Postgres(h) => h.rebuild(timeout).await,
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    ficus_store::postgres::unavailable(e)
}

async fn ensure_checkpoint_row(
    client: &mut tokio_postgres::Client,
    name: &str,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute(CHECKPOINT_SCHEMA).await?;
    tx.execute(ENSURE_ROW, &[&name, &ficus_store::now_ms()])
        .await?;
    tx.commit().await
}

/// A pooled connection used as a leadership session. Once it may hold the advisory lock it
/// never goes back to the pool: dropping it closes the connection, which ends the session and
/// frees the lock, also when the runner's task is aborted or panics.
struct Session {
    conn: Option<Object>,
    may_hold_lock: bool,
}

impl Session {
    fn new(conn: Object) -> Self {
        Self {
            conn: Some(conn),
            may_hold_lock: true,
        }
    }

    fn client(&mut self) -> &mut tokio_postgres::Client {
        self.conn
            .as_mut()
            .expect("a session has its connection until dropped")
    }

    fn is_closed(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.is_closed())
    }

    /// Returns the connection to the pool: only for a session known to hold no lock.
    fn release_unlocked(mut self) {
        self.may_hold_lock = false;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.may_hold_lock {
                drop(Object::take(conn));
            }
        }
    }
}

/// This runner's leadership: the session holding the lock, the fencing token it took over
/// with, and the checkpoint it committed last.
struct Leader {
    session: Session,
    generation: i64,
    checkpoint: Position,
    /// A blue/green rebuild is under way (the row names a schema being filled).
    rebuilding: bool,
}

/// Why a runner stopped leading.
enum LeadEnd {
    Shutdown,
    StoreClosed,
    /// Session closed or unanswering, or fenced out: step down to standby.
    Lost(String),
}

/// What a fenced step on the session found.
enum Fenced {
    /// Done; go on.
    Ok,
    /// The checkpoint moved under us (a rebuild was performed, or an invariant broke):
    /// restart the subscription from the committed checkpoint.
    Restart,
    /// No longer the leader.
    Lost(String),
}

/// Runs one PostgreSQL projection in this process, active or standby, until shutdown.
pub struct PgProjectionRunner {
    projection: Arc<dyn PgProjection>,
    pool: Pool,
    store: Arc<dyn EventStore>,
    status: watch::Sender<PgProjectionStatus>,
    poke: Arc<Notify>,
    table_ready: bool,
}

impl PgProjectionRunner {
    /// Starts the runner task. It competes for the projection's lock with every other
    /// process running the same projection on the same schema; `pool`'s connections must
    /// have that schema first on their `search_path` ([`ficus_store::postgres::pool`]). The
    /// active runner keeps one of the pool's connections for itself.
    pub fn spawn(
        projection: Arc<dyn PgProjection>,
        pool: Pool,
        store: Arc<dyn EventStore>,
        shutdown: Shutdown,
    ) -> (PgProjectionHandle, JoinHandle<()>) {
        let (status_tx, status_rx) = watch::channel(PgProjectionStatus {
            state: ProjectionState::Standby,
            checkpoint: 0,
            generation: None,
            last_lag_ms: 0,
            events_applied: 0,
            rebuild: None,
        });
        let poke = Arc::new(Notify::new());
        let handle = PgProjectionHandle {
            name: projection.name().into(),
            pool: pool.clone(),
            store: store.clone(),
            status: status_rx,
            poke: poke.clone(),
            runs_here: true,
            read_timeout: DEFAULT_READ_TIMEOUT,
        };
        let runner = PgProjectionRunner {
            projection,
            pool,
            store,
            status: status_tx,
            poke,
            table_ready: false,
        };
        (handle, tokio::spawn(runner.run(shutdown)))
    }

    fn name(&self) -> &str {
        self.projection.name()
    }

    async fn run(mut self, shutdown: Shutdown) {
        let mut failures = 0u32;
        while !shutdown.is_triggered() {
            let attempt = tokio::select! {
                _ = shutdown.wait() => break,
                r = self.try_lead() => r,
            };
            let pause = match attempt {
                Ok(Some(leader)) => {
                    failures = 0;
                    match self.lead(leader, &shutdown).await {
                        LeadEnd::Shutdown | LeadEnd::StoreClosed => break,
                        LeadEnd::Lost(reason) => {
                            tracing::warn!(projection = self.name(), %reason, "stepped down to standby");
                            self.status.send_modify(|s| {
                                s.state = ProjectionState::Standby;
                                s.generation = None;
                            });
                            standby_pause()
                        }
                    }
                }
                Ok(None) => {
                    failures = 0;
                    standby_pause()
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    // The schema may have been dropped and recreated under us.
                    self.table_ready = false;
                    self.fail(e.to_string());
                    retry_pause(failures)
                }
            };
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        self.status.send_modify(|s| {
            s.state = ProjectionState::Stopped;
            s.generation = None;
        });
    }

    /// Tries to become the active runner: takes the lock on a fresh session and, if it got
    /// it, bumps the fencing token and reads the checkpoint in one transaction on it. Publishes
    /// the table's checkpoint as a standby otherwise.
    async fn try_lead(&mut self) -> Result<Option<Leader>, ProjectionError> {
        let conn = self.pool.get().await.map_err(other)?;
        let mut session = Session::new(conn);
        let name = self.projection.name().to_owned();
        bounded(async {
            if !self.table_ready {
                ensure_checkpoint_row(session.client(), &name).await?;
                self.table_ready = true;
            }
            let locked: bool = session.client().query_one(TRY_LOCK, &[&name]).await?.get(0);
            if !locked {
                let checkpoint = read_checkpoint(session.client(), &name).await?;
                // The active process's rebuild, if any, as the row records it.
                let rebuild = session
                    .client()
                    .query_opt(
                        "SELECT next_position, rebuild_target FROM ficus_projection_checkpoints
                         WHERE name = $1 AND next_schema IS NOT NULL",
                        &[&name],
                    )
                    .await?
                    .map(|r| RebuildProgress {
                        position: to_position(r.get(0)),
                        target: to_position(r.get(1)),
                        error: None,
                    });
                session.release_unlocked();
                self.status.send_modify(|s| {
                    s.state = ProjectionState::Standby;
                    s.generation = None;
                    s.checkpoint = checkpoint;
                    s.rebuild = rebuild;
                });
                return Ok(None);
            }
            let tx = session.client().transaction().await?;
            tx.execute(ENSURE_ROW, &[&name, &ficus_store::now_ms()])
                .await?;
            let row = tx
                .query_one(
                    "UPDATE ficus_projection_checkpoints
                     SET generation = generation + 1, updated_at_ms = $2
                     WHERE name = $1
                     RETURNING position, generation, next_schema IS NOT NULL, next_position,
                               rebuild_target",
                    &[&name, &ficus_store::now_ms()],
                )
                .await?;
            tx.batch_execute(self.projection.schema()).await?;
            tx.commit().await?;
            let (checkpoint, generation) = (to_position(row.get(0)), row.get::<_, i64>(1));
            let rebuilding: bool = row.get(2);
            // A rebuild the previous active runner left unfinished: this one resumes it, and
            // reports it from now on (not only once its first step is done).
            let progress = rebuilding.then(|| RebuildProgress {
                position: to_position(row.get(3)),
                target: to_position(row.get(4)),
                error: None,
            });
            self.status.send_modify(|s| s.rebuild = progress);
            tracing::info!(
                projection = %name,
                generation,
                checkpoint,
                "took over as the active runner"
            );
            Ok(Some(Leader {
                session,
                generation,
                checkpoint,
                rebuilding,
            }))
        })
        .await
    }

    /// Applies events while this runner leads. Returns when it stops leading.
    async fn lead(&self, mut leader: Leader, shutdown: &Shutdown) -> LeadEnd {
        self.status.send_modify(|s| {
            s.generation = Some(leader.generation as u64);
            s.checkpoint = leader.checkpoint;
            s.state = ProjectionState::CatchingUp;
        });
        let mut failures = 0u32;
        'restart: loop {
            self.status.send_if_modified(|s| {
                std::mem::replace(&mut s.checkpoint, leader.checkpoint) != leader.checkpoint
            });
            let mut sub = Subscription::new(self.store.clone(), leader.checkpoint + 1);
            let mut check = tokio::time::interval(LEADER_CHECK_INTERVAL);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                self.mark_live_if_at_head();
                // The rebuild's replay takes the turns the live feed leaves free; while the
                // subscription catches up (a read in flight) it goes after each batch instead,
                // so that it never cancels the catch-up read.
                let replay_turn = leader.rebuilding && sub.is_live();
                let next = tokio::select! {
                    biased;
                    _ = shutdown.wait() => return LeadEnd::Shutdown,
                    _ = check.tick() => None,
                    _ = self.poke.notified() => None,
                    next = sub.next() => Some(Some(next)),
                    _ = std::future::ready(()), if replay_turn => Some(None),
                };
                let step = match next {
                    None => {
                        let r = tokio::time::timeout(SESSION_OP_TIMEOUT, self.check(&mut leader));
                        r.await
                    }
                    Some(None) => {
                        let r =
                            tokio::time::timeout(SESSION_OP_TIMEOUT, self.replay_step(&mut leader));
                        r.await
                    }
                    Some(Some(next)) => match next {
                        Ok(first) => {
                            let mut batch = vec![first];
                            while batch.len() < PG_PROJECTION_BATCH_EVENTS {
                                match sub.next_buffered() {
                                    Some(e) => batch.push(e),
                                    None => break,
                                }
                            }
                            let r = tokio::time::timeout(
                                SESSION_OP_TIMEOUT,
                                self.apply_batch(&mut leader, &batch),
                            )
                            .await;
                            if let Ok(Ok(Fenced::Ok)) = r {
                                self.applied(&batch, sub.is_live());
                            }
                            let r = match r {
                                // One replay step after each live batch: the rebuild advances
                                // even while events never stop arriving.
                                Ok(Ok(Fenced::Ok)) if leader.rebuilding => {
                                    tokio::time::timeout(
                                        SESSION_OP_TIMEOUT,
                                        self.replay_step(&mut leader),
                                    )
                                    .await
                                }
                                other => other,
                            };
                            r.map(|r| {
                                r.map_err(|e| {
                                    ProjectionError::Other(format!(
                                        "applying positions {}..={}: {e}",
                                        batch[0].position,
                                        batch.last().map_or(0, |e| e.position)
                                    ))
                                })
                            })
                        }
                        Err(SubscriptionError::FellBehind { .. }) => {
                            sub.resume();
                            continue;
                        }
                        Err(SubscriptionError::Closed) => return LeadEnd::StoreClosed,
                        Err(SubscriptionError::Store(e)) => Ok(Err(other(e))),
                    },
                };
                match step {
                    Err(_) => {
                        return LeadEnd::Lost(format!(
                            "no answer on the session within {SESSION_OP_TIMEOUT:?}"
                        ))
                    }
                    Ok(Ok(Fenced::Ok)) => failures = 0,
                    Ok(Ok(Fenced::Restart)) => continue 'restart,
                    Ok(Ok(Fenced::Lost(reason))) => return LeadEnd::Lost(reason),
                    Ok(Err(e)) if leader.session.is_closed() => {
                        return LeadEnd::Lost(format!("session closed: {e}"))
                    }
                    Ok(Err(e)) => {
                        failures = failures.saturating_add(1);
                        self.fail(e.to_string());
                        tokio::select! {
                            _ = shutdown.wait() => return LeadEnd::Shutdown,
                            _ = tokio::time::sleep(retry_pause(failures)) => {}
                        }
                        continue 'restart;
                    }
                }
            }
        }
    }

    /// Reads the checkpoint row on the session: proves the session alive, the fence intact,
    /// and performs a pending rebuild.
    async fn check(&self, leader: &mut Leader) -> Result<Fenced, ProjectionError> {
        let name = self.name();
        let row = leader
            .session
            .client()
            .query_opt(
                "SELECT generation, rebuild_requests, rebuilds_done, next_schema IS NOT NULL
                 FROM ficus_projection_checkpoints WHERE name = $1",
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Fenced::Lost("checkpoint row is gone".into()));
        };
        let generation: i64 = row.get(0);
        if generation != leader.generation {
            return Ok(Fenced::Lost(format!(
                "fenced: generation is {generation}, took over with {}",
                leader.generation
            )));
        }
        // Another runner may have started the rebuild before this one took over.
        leader.rebuilding = row.get(3);
        if row.get::<_, i64>(1) > row.get::<_, i64>(2) {
            return self.reset(leader).await;
        }
        Ok(Fenced::Ok)
    }

    /// One step of a blue/green rebuild, in one fenced transaction on the session: applies
    /// the next batch of the log to the new copy, never past the serving copy's checkpoint.
    /// Once the new copy is level with it (and past the target) it switches, in one
    /// transaction holding the checkpoint table `ACCESS EXCLUSIVE` (see [`begin_read`]): drops
    /// the old copy's tables and moves the new copy's into the deployment's schema, under the
    /// same names, so every process's queries (and the next batch) find the new copy.
    async fn replay_step(&self, leader: &mut Leader) -> Result<Fenced, ProjectionError> {
        let name = self.name();
        let tx = leader.session.client().transaction().await?;
        let row = tx
            .query_opt(
                "SELECT generation, position, next_schema, next_position, rebuild_target,
                        current_schema()
                 FROM ficus_projection_checkpoints WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Fenced::Lost("checkpoint row is gone".into()));
        };
        if row.get::<_, i64>(0) != leader.generation {
            return Ok(Fenced::Lost("fenced during a rebuild step".into()));
        }
        let Some(next) = row.get::<_, Option<String>>(2) else {
            leader.rebuilding = false;
            self.status.send_modify(|s| s.rebuild = None);
            return Ok(Fenced::Ok);
        };
        let serving = to_position(row.get(1));
        let mut position = to_position(row.get(3));
        let target = to_position(row.get(4));
        if position < serving {
            let limit = ((serving - position) as usize).min(PG_PROJECTION_BATCH_EVENTS);
            let events = self
                .store
                .read_all(position + 1, limit)
                .await
                .map_err(other)?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Err(other(format!("the log has nothing after {position}")));
            };
            use_schema(&tx, &next).await?;
            for e in &events {
                self.projection.apply(&tx, e).await?;
            }
            tx.execute(
                "UPDATE ficus_projection_checkpoints SET next_position = $2 WHERE name = $1",
                &[&name, &sql_int(last)],
            )
            .await?;
            tx.commit().await?;
            position = last;
            self.status.send_modify(|s| {
                s.events_applied += events.len() as u64;
                s.rebuild = Some(RebuildProgress {
                    position,
                    target,
                    error: None,
                });
            });
            return Ok(Fenced::Ok);
        }
        if position < target {
            // Level with a serving copy that is itself still catching up to the target.
            return Ok(Fenced::Ok);
        }
        let base: String = row.get(5);
        drop(tx);
        // The switch. The table lock comes first, before the row lock, as in every other
        // transaction that takes both, and waits for the queries reading the old copy.
        let tx = leader.session.client().transaction().await?;
        tx.batch_execute("LOCK TABLE ficus_projection_checkpoints IN ACCESS EXCLUSIVE MODE")
            .await?;
        let row = tx
            .query_opt(
                "SELECT generation, position, next_position, next_schema
                 FROM ficus_projection_checkpoints WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Fenced::Lost("checkpoint row is gone".into()));
        };
        if row.get::<_, i64>(0) != leader.generation {
            return Ok(Fenced::Lost("fenced during a rebuild switch".into()));
        }
        if row.get::<_, i64>(1) != row.get::<_, i64>(2)
            || row.get::<_, Option<String>>(3).as_deref() != Some(next.as_str())
        {
            // Only this runner moves either position; look again at the next step.
            return Ok(Fenced::Ok);
        }
        tx.batch_execute(self.projection.drop_schema()).await?;
        let tables = tx
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = $1",
                &[&next],
            )
            .await?;
        for t in &tables {
            let table: String = t.get(0);
            tx.batch_execute(&format!(
                "ALTER TABLE {}.{} SET SCHEMA {}",
                quote_ident(&next),
                quote_ident(&table),
                quote_ident(&base)
            ))
            .await?;
        }
        tx.batch_execute(&format!("DROP SCHEMA {}", quote_ident(&next)))
            .await?;
        tx.execute(
            "UPDATE ficus_projection_checkpoints
             SET next_schema = NULL, updated_at_ms = $2 WHERE name = $1",
            &[&name, &ficus_store::now_ms()],
        )
        .await?;
        tx.commit().await?;
        leader.rebuilding = false;
        self.status.send_modify(|s| s.rebuild = None);
        tracing::info!(projection = name, schema = %next, position, "rebuild switched to the new copy");
        Ok(Fenced::Ok)
    }

    /// Starts a blue/green rebuild, in one fenced transaction on the session: creates the new
    /// copy's tables in a schema of their own (`{schema}__{name}_r{request}`), empty, and
    /// records it in the row with the target (the head now); marks the requests done. A
    /// request while a rebuild is under way joins it.
    async fn reset(&self, leader: &mut Leader) -> Result<Fenced, ProjectionError> {
        let name = self.name();
        let target = self.store.head_position();
        let tx = leader.session.client().transaction().await?;
        let row = tx
            .query_opt(
                "SELECT generation, rebuild_requests, next_schema, current_schema(), next_position
                 FROM ficus_projection_checkpoints WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Fenced::Lost("checkpoint row is gone".into()));
        };
        if row.get::<_, i64>(0) != leader.generation {
            return Ok(Fenced::Lost("fenced during rebuild".into()));
        }
        let requests: i64 = row.get(1);
        let joined = row.get::<_, Option<String>>(2).is_some();
        let position = if joined { to_position(row.get(4)) } else { 0 };
        if !joined {
            let base: String = row.get(3);
            let next = format!("{base}__{name}_r{requests}");
            tx.batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {q} CASCADE; CREATE SCHEMA {q};",
                q = quote_ident(&next)
            ))
            .await?;
            use_schema(&tx, &next).await?;
            tx.batch_execute(self.projection.schema()).await?;
            tx.execute(
                "UPDATE ficus_projection_checkpoints
                 SET next_schema = $2, next_position = 0, rebuild_target = $3
                 WHERE name = $1",
                &[&name, &next, &sql_int(target)],
            )
            .await?;
            tracing::info!(projection = name, schema = %next, target, "blue/green rebuild started");
        }
        tx.execute(
            "UPDATE ficus_projection_checkpoints SET rebuilds_done = $2, updated_at_ms = $3
             WHERE name = $1",
            &[&name, &requests, &ficus_store::now_ms()],
        )
        .await?;
        tx.commit().await?;
        leader.rebuilding = true;
        self.status.send_modify(|s| {
            if s.rebuild.is_none() {
                s.rebuild = Some(RebuildProgress {
                    position,
                    target,
                    error: None,
                });
            }
        });
        Ok(Fenced::Ok)
    }

    /// Applies a batch and moves the checkpoint past it, in one fenced transaction on the
    /// session.
    async fn apply_batch(
        &self,
        leader: &mut Leader,
        events: &[RecordedEvent],
    ) -> Result<Fenced, ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(Fenced::Ok);
        };
        let name = self.name();
        let tx = leader.session.client().transaction().await?;
        // Locks the row: every batch and every takeover are ordered by it.
        let row = tx
            .query_opt(
                "SELECT position, generation, rebuild_requests, rebuilds_done
                 FROM ficus_projection_checkpoints WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Fenced::Lost("checkpoint row is gone".into()));
        };
        let (position, generation) = (to_position(row.get(0)), row.get::<_, i64>(1));
        if generation != leader.generation {
            return Ok(Fenced::Lost(format!(
                "fenced: generation is {generation}, took over with {}",
                leader.generation
            )));
        }
        if row.get::<_, i64>(2) > row.get::<_, i64>(3) {
            drop(tx);
            // The batch was not applied: start the rebuild, then read the batch again.
            return match self.reset(leader).await? {
                Fenced::Ok => Ok(Fenced::Restart),
                other => Ok(other),
            };
        }
        if position + 1 != first.position {
            // Only the fenced leader moves the checkpoint, so this is a broken invariant.
            // Loud, and safe: nothing was applied; restart from what is committed.
            tracing::error!(
                projection = name,
                checkpoint = position,
                local_checkpoint = leader.checkpoint,
                first = first.position,
                "checkpoint moved under the active runner; restarting from it"
            );
            leader.checkpoint = position;
            return Ok(Fenced::Restart);
        }
        for e in events {
            self.projection.apply(&tx, e).await?;
        }
        tx.execute(
            "UPDATE ficus_projection_checkpoints SET position = $2, updated_at_ms = $3
             WHERE name = $1",
            &[&name, &sql_int(last.position), &ficus_store::now_ms()],
        )
        .await?;
        tx.commit().await?;
        leader.checkpoint = last.position;
        Ok(Fenced::Ok)
    }

    fn applied(&self, batch: &[RecordedEvent], live: bool) {
        let last = batch.last().expect("batch is never empty");
        let lag_ms = (ficus_store::now_ms() - last.recorded_at_ms).max(0) as u64;
        self.status.send_modify(|s| {
            s.checkpoint = last.position;
            s.last_lag_ms = lag_ms;
            s.events_applied += batch.len() as u64;
            s.state.after_batch(last.position, live);
        });
    }

    /// Reports `Live` once everything committed has been applied (see the SQLite runner).
    fn mark_live_if_at_head(&self) {
        let head = self.store.head_position();
        self.status.send_if_modified(|s| {
            let at_head = s.checkpoint >= head;
            let waiting = s.state.waits_for_head(s.checkpoint);
            let promote = at_head && waiting && s.is_active();
            if promote {
                s.state = ProjectionState::Live;
            }
            promote
        });
    }

    fn fail(&self, error: String) {
        tracing::error!(projection = self.name(), %error, "projection step failed; will retry");
        self.status
            .send_modify(|s| s.state = ProjectionState::Failed { error });
    }
}

/// Runs `op` with the session time bound; a timeout is an error like any other here (the
/// session is dropped, and closed, by the caller).
async fn bounded<T>(
    op: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ProjectionError> {
    match tokio::time::timeout(SESSION_OP_TIMEOUT, op).await {
        Ok(r) => r.map_err(|e| other(pg_message(&e))),
        Err(_) => Err(other(format!("no answer within {SESSION_OP_TIMEOUT:?}"))),
    }
}

fn standby_pause() -> Duration {
    let base = STANDBY_RETRY_INTERVAL.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(base * 3 / 4..=base * 5 / 4))
}

fn retry_pause(failures: u32) -> Duration {
    Duration::from_millis(RETRY_BACKOFF.delay_ms(failures, &mut rand::thread_rng()))
}
