//! The projection runner: folds the global log into a read model in its own SQLite file.
//!
//! Each projection owns one SQLite file holding its tables and its checkpoint. A batch of
//! events and the checkpoint that follows it commit in ONE transaction, so a crash at any
//! instant leaves the read model exactly at its checkpoint: no event skipped, none applied
//! twice. The runner publishes its checkpoint on a watch channel, which read-your-own-writes
//! queries wait on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ficus_core::{codec::CodecError, Position, RecordedEvent};
use ficus_store::sqlite::{open_connection, unavailable, ConnectionPool};
use ficus_store::{EventStore, StoreError, Subscription, SubscriptionError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Shutdown;

/// The connection a read-model query runs on.
pub type QueryConnection = Connection;

/// Most events applied in one read-model transaction.
pub const PROJECTION_BATCH_EVENTS: usize = 1000;
/// Query connections per read model.
pub const READ_MODEL_READERS: usize = 4;
/// Control requests (rebuild) waiting for a runner.
const CONTROL_QUEUE: usize = 4;
/// Longest pause between retries of a failing batch.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Why a projection could not apply an event. Stops the batch; the runner retries it.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model write failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error(transparent)]
    Decode(#[from] CodecError),
    #[error("{0}")]
    Other(String),
}

/// A read model kept in SQLite.
pub trait SqliteProjection: Send + Sync + 'static {
    /// Unique name; also the file name of its database.
    fn name(&self) -> &str;
    /// DDL creating the read model's tables (must be idempotent: `IF NOT EXISTS`).
    fn schema(&self) -> &str;
    /// DDL dropping them, for a rebuild.
    fn drop_schema(&self) -> &str;
    /// Applies one event inside the batch's transaction. Events it does not care about are
    /// ignored by returning `Ok(())`.
    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), ProjectionError>;
}

const CHECKPOINT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS ficus_checkpoint (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    position INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);";

/// The SQLite file of one read model: a writer connection for the runner and a pool of
/// query connections.
pub struct ReadModelDb {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Arc<ConnectionPool>,
}

fn read_checkpoint(conn: &Connection) -> rusqlite::Result<Position> {
    let p: Option<i64> = conn
        .query_row(
            "SELECT position FROM ficus_checkpoint WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(p.unwrap_or(0) as Position)
}

impl ReadModelDb {
    /// Opens (creating if needed) the read model's database at `path`.
    pub fn open(
        path: impl AsRef<Path>,
        projection: &dyn SqliteProjection,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let writer = open_connection(&path)?;
        // A read model's checkpoint commits with its data, so a lost tail after a power
        // failure rolls both back together and is re-applied from the log: WAL's NORMAL
        // sync keeps it consistent without an fsync per batch (see docs/adr/0003).
        writer
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(unavailable)?;
        writer
            .execute_batch(CHECKPOINT_SCHEMA)
            .map_err(unavailable)?;
        writer
            .execute_batch(projection.schema())
            .map_err(unavailable)?;
        let readers = Arc::new(ConnectionPool::open_readers(&path, READ_MODEL_READERS)?);
        Ok(Self {
            path,
            writer: Mutex::new(writer),
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The position of the last event applied.
    pub fn checkpoint(&self) -> Result<Position, StoreError> {
        read_checkpoint(&self.writer()).map_err(unavailable)
    }

    /// Runs a read-only query and returns its result with the checkpoint it reflects (read in
    /// the same transaction, so the pair is consistent).
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<(T, Position), StoreError> {
        self.readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(unavailable)?;
                let position = read_checkpoint(&tx).map_err(unavailable)?;
                let out = f(&tx)?;
                tx.commit().map_err(unavailable)?;
                Ok((out, position))
            })
            .await
    }

    /// Applies a batch and moves the checkpoint past it, atomically.
    fn apply_batch(
        &self,
        projection: &dyn SqliteProjection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let Some(last) = events.last() else {
            return Ok(());
        };
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let checkpoint = read_checkpoint(&tx)?;
        assert!(
            events[0].position > checkpoint,
            "projection {} would apply position {} again (checkpoint {checkpoint})",
            projection.name(),
            events[0].position
        );
        for e in events {
            // One span per event, carrying the correlation and trace ids of the request that
            // appended it, so its log lines (and exported span) join that request's.
            let span = crate::telemetry::event_span(projection.name(), &e.metadata, e.position);
            let _entered = span.enter();
            projection.apply(&tx, e)?;
            tracing::debug!(
                projection = projection.name(),
                position = e.position,
                event_type = e.event_type.as_str(),
                stream = %e.stream_id,
                "applied event"
            );
        }
        tx.execute(
            "INSERT INTO ficus_checkpoint (id, position, updated_at_ms) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET position = ?1, updated_at_ms = ?2",
            rusqlite::params![last.position as i64, ficus_store::now_ms()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Drops and recreates the read model's tables and sets the checkpoint to 0, atomically.
    fn reset(&self, projection: &dyn SqliteProjection) -> Result<(), ProjectionError> {
        let mut conn = self.writer();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(projection.drop_schema())?;
        tx.execute_batch(projection.schema())?;
        tx.execute("DELETE FROM ficus_checkpoint", [])?;
        tx.commit()?;
        Ok(())
    }
}

/// What a runner is doing. The SQLite and the PostgreSQL runners share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionState {
    /// PostgreSQL runners only: another process holds the projection's lock; this one takes
    /// over if that one dies.
    Standby,
    /// Reading history toward the head of the log.
    CatchingUp,
    /// At the head, applying live batches.
    Live,
    /// Rebuilding from position 0; `target` is the head when the rebuild started.
    Rebuilding {
        target: Position,
    },
    /// The last batch (or the last attempt to reach the database) failed; retried after a
    /// pause. Never skipped.
    Failed {
        error: String,
    },
    Stopped,
}

impl ProjectionState {
    /// The state after a batch ending at `last` was applied: still rebuilding while short of
    /// the rebuild's target, else live or catching up as the subscription says.
    pub(crate) fn after_batch(&mut self, last: Position, live: bool) {
        if !matches!(self, ProjectionState::Rebuilding { target } if *target > last) {
            *self = if live {
                ProjectionState::Live
            } else {
                ProjectionState::CatchingUp
            };
        }
    }

    /// Whether a runner in this state, at `checkpoint`, becomes `Live` once it is at the head
    /// of the log.
    pub(crate) fn waits_for_head(&self, checkpoint: Position) -> bool {
        match self {
            ProjectionState::CatchingUp | ProjectionState::Failed { .. } => true,
            ProjectionState::Rebuilding { target } => checkpoint >= *target,
            ProjectionState::Live | ProjectionState::Standby | ProjectionState::Stopped => false,
        }
    }
}

/// A runner's published status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    pub checkpoint: Position,
    pub state: ProjectionState,
    /// Milliseconds from the last applied event's commit to its application.
    pub last_lag_ms: u64,
    pub events_applied: u64,
}

/// Why a read-your-own-writes wait ended without reaching its position.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WaitError {
    /// The read model was still behind when the bound ran out. (503 `read_model_lagging`)
    #[error("read model is at position {checkpoint}, behind the requested {wanted}")]
    Lagging {
        checkpoint: Position,
        wanted: Position,
    },
    /// The runner has stopped. (503)
    #[error("projection runner stopped")]
    Stopped,
}

enum Control {
    Rebuild(oneshot::Sender<Result<(), String>>),
}

/// A handle on a running projection: its status, lag, read-your-writes waits and rebuild.
#[derive(Clone)]
pub struct ProjectionHandle {
    name: Arc<str>,
    db: Arc<ReadModelDb>,
    store: Arc<dyn EventStore>,
    status: watch::Receiver<ProjectionStatus>,
    control: mpsc::Sender<Control>,
}

impl ProjectionHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn db(&self) -> &Arc<ReadModelDb> {
        &self.db
    }

    pub fn status(&self) -> ProjectionStatus {
        self.status.borrow().clone()
    }

    /// Events committed to the log but not yet applied.
    pub fn lag_events(&self) -> u64 {
        self.store
            .head_position()
            .saturating_sub(self.status.borrow().checkpoint)
    }

    /// Waits until the read model has applied `position`, at most `timeout`.
    pub async fn wait_for(
        &self,
        position: Position,
        timeout: Duration,
    ) -> Result<Position, WaitError> {
        let mut rx = self.status.clone();
        let reached = tokio::time::timeout(timeout, async {
            rx.wait_for(|s| s.checkpoint >= position)
                .await
                .map(|s| s.checkpoint)
        });
        match reached.await {
            Ok(Ok(checkpoint)) => Ok(checkpoint),
            Ok(Err(_)) => Err(WaitError::Stopped),
            Err(_) => Err(WaitError::Lagging {
                checkpoint: self.status.borrow().checkpoint,
                wanted: position,
            }),
        }
    }

    /// Resets the read model to empty and replays the log from position 1. Returns once the
    /// reset is committed; follow progress with [`ProjectionHandle::status`].
    pub async fn rebuild(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Rebuild(tx))
            .await
            .map_err(|_| "projection runner stopped".to_string())?;
        rx.await
            .map_err(|_| "projection runner stopped".to_string())?
    }
}

/// Runs one projection until shutdown.
pub struct ProjectionRunner {
    projection: Arc<dyn SqliteProjection>,
    db: Arc<ReadModelDb>,
    store: Arc<dyn EventStore>,
    status: watch::Sender<ProjectionStatus>,
    control: mpsc::Receiver<Control>,
}

impl ProjectionRunner {
    /// Opens the read model under `dir` and starts its runner task.
    pub fn spawn(
        projection: Arc<dyn SqliteProjection>,
        dir: &Path,
        store: Arc<dyn EventStore>,
        shutdown: Shutdown,
    ) -> Result<(ProjectionHandle, tokio::task::JoinHandle<()>), StoreError> {
        let db = Arc::new(ReadModelDb::open(
            dir.join(format!("{}.db", projection.name())),
            projection.as_ref(),
        )?);
        let checkpoint = db.checkpoint()?;
        let (status_tx, status_rx) = watch::channel(ProjectionStatus {
            checkpoint,
            state: ProjectionState::CatchingUp,
            last_lag_ms: 0,
            events_applied: 0,
        });
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = ProjectionHandle {
            name: projection.name().into(),
            db: db.clone(),
            store: store.clone(),
            status: status_rx,
            control: control_tx,
        };
        let runner = ProjectionRunner {
            projection,
            db,
            store,
            status: status_tx,
            control: control_rx,
        };
        let task = tokio::spawn(runner.run(shutdown));
        Ok((handle, task))
    }

    async fn run(mut self, shutdown: Shutdown) {
        let mut retry_delay = Duration::from_millis(100);
        'restart: loop {
            let checkpoint = match self.db.checkpoint() {
                Ok(c) => c,
                Err(e) => {
                    self.fail(e.to_string());
                    if !self.pause(&shutdown, &mut retry_delay).await {
                        break;
                    }
                    continue;
                }
            };
            let mut sub = Subscription::new(self.store.clone(), checkpoint + 1);
            loop {
                self.mark_live_if_at_head();
                let first = tokio::select! {
                    _ = shutdown.wait() => break 'restart,
                    Some(ctl) = self.control.recv() => {
                        self.handle_control(ctl).await;
                        continue 'restart;
                    }
                    next = sub.next() => next,
                };
                let first = match first {
                    Ok(e) => e,
                    Err(SubscriptionError::FellBehind { .. }) => {
                        sub.resume();
                        continue;
                    }
                    Err(SubscriptionError::Closed) => break 'restart,
                    Err(SubscriptionError::Store(e)) => {
                        self.fail(e.to_string());
                        if !self.pause(&shutdown, &mut retry_delay).await {
                            break 'restart;
                        }
                        continue 'restart;
                    }
                };
                let mut batch = vec![first];
                while batch.len() < PROJECTION_BATCH_EVENTS {
                    match sub.next_buffered() {
                        Some(e) => batch.push(e),
                        None => break,
                    }
                }
                let (db, projection) = (self.db.clone(), self.projection.clone());
                let applied = tokio::task::spawn_blocking(move || {
                    let r = db.apply_batch(projection.as_ref(), &batch);
                    (batch, r)
                })
                .await;
                match applied {
                    Ok((batch, Ok(()))) => {
                        retry_delay = Duration::from_millis(100);
                        let last = batch.last().expect("batch is never empty");
                        let lag_ms = (ficus_store::now_ms() - last.recorded_at_ms).max(0) as u64;
                        let live = sub.is_live();
                        self.status.send_modify(|s| {
                            s.checkpoint = last.position;
                            s.last_lag_ms = lag_ms;
                            s.events_applied += batch.len() as u64;
                            s.state.after_batch(last.position, live);
                        });
                    }
                    Ok((batch, Err(e))) => {
                        let error = format!(
                            "applying positions {}..={}: {e}",
                            batch[0].position,
                            batch.last().map_or(0, |e| e.position)
                        );
                        self.fail(error);
                        if !self.pause(&shutdown, &mut retry_delay).await {
                            break 'restart;
                        }
                        continue 'restart;
                    }
                    Err(join) => {
                        self.fail(format!("projection task panicked: {join}"));
                        if !self.pause(&shutdown, &mut retry_delay).await {
                            break 'restart;
                        }
                        continue 'restart;
                    }
                }
            }
        }
        self.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
    }

    async fn handle_control(&mut self, ctl: Control) {
        match ctl {
            Control::Rebuild(ack) => {
                let target = self.store.head_position();
                let (db, projection) = (self.db.clone(), self.projection.clone());
                let r = tokio::task::spawn_blocking(move || db.reset(projection.as_ref()))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                if r.is_ok() {
                    tracing::info!(
                        projection = self.projection.name(),
                        target,
                        "rebuild started"
                    );
                    self.status.send_modify(|s| {
                        s.checkpoint = 0;
                        s.state = ProjectionState::Rebuilding { target };
                    });
                }
                let _ = ack.send(r);
            }
        }
    }

    /// Reports `Live` once everything committed has been applied. Without it a runner that
    /// reached the head (end of catch-up or rebuild, an empty log, a retry that found nothing
    /// new) kept its old state until the next event arrived, possibly forever.
    fn mark_live_if_at_head(&self) {
        let head = self.store.head_position();
        self.status.send_if_modified(|s| {
            let at_head = s.checkpoint >= head;
            let waiting = s.state.waits_for_head(s.checkpoint);
            if at_head && waiting {
                s.state = ProjectionState::Live;
            }
            at_head && waiting
        });
    }

    fn fail(&self, error: String) {
        tracing::error!(projection = self.projection.name(), %error, "projection batch failed; will retry");
        self.status
            .send_modify(|s| s.state = ProjectionState::Failed { error });
    }

    /// Sleeps before a retry, doubling the delay. False when shutdown came first.
    async fn pause(&self, shutdown: &Shutdown, delay: &mut Duration) -> bool {
        let d = *delay;
        *delay = (*delay * 2).min(MAX_RETRY_DELAY);
        tokio::select! {
            _ = shutdown.wait() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}
