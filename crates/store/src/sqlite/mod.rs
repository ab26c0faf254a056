//! The embedded default: an SQLite file in WAL mode, written by one thread with group commit.
//!
//! Appends from any number of tasks queue into a bounded channel. The writer thread takes
//! everything queued (up to [`SqliteConfig::max_batch_events`]), checks each request's expected
//! version, inserts all of them in ONE transaction and commits with `synchronous=FULL` (one
//! WAL fsync per batch). Only then are the callers answered and the batch broadcast to live
//! subscribers. Reads go through a small pool of read connections, which WAL lets run beside
//! the writer.

mod checkpointer;
pub mod faulty_vfs;
mod idempotency;
mod jobs;
mod memory;
pub mod outbox;
mod reader;
mod snapshots;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use async_trait::async_trait;
use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use rusqlite::Connection;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::port::validate_batch;
use crate::{AppendResult, EventStore, LiveBatch, StoreError};
pub use faulty_vfs::{FaultPlan, StorageFault, MAX_FAULT_DELAY_MS};
pub use jobs::SqliteJobQueue;
pub use memory::{
    memory_highwater, memory_limit, memory_used, set_memory_limit, DEFAULT_SQLITE_MEMORY_LIMIT_MIB,
    MIN_SQLITE_MEMORY_LIMIT_MIB,
};
pub use outbox::{OutboxMessage, OutboxRow, OutboxRule};
pub use reader::ConnectionPool;
pub use snapshots::{SqliteSnapshotStore, SNAPSHOT_READERS};
use writer::{EncodedEvent, WriterMsg};

/// Limits and tuning of the SQLite event store. Every queue and batch here is bounded.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Append requests that may wait for the writer; further callers wait for room.
    pub append_queue_requests: usize,
    /// Most events committed in one transaction (one group commit).
    pub max_batch_events: usize,
    /// Most events one append request may carry.
    pub max_append_events: usize,
    /// Read connections open beside the writer.
    pub read_connections: usize,
    /// Batches committed but not yet fsynced that the writer may run ahead of the syncer.
    pub sync_pipeline_batches: usize,
    /// Committed batches kept for slow live subscribers.
    pub live_buffer_batches: usize,
    /// Stream versions the writer caches (it is the only writer, so the cache is exact).
    pub version_cache_streams: usize,
    /// Page size of a NEW event log file (an existing file keeps its own). Small pages keep
    /// the WAL bytes per commit low: each batch dirties about one index page per stream it
    /// touches, and every dirty page is written whole.
    pub page_bytes: u32,
    /// SQLite page cache of the writer connection, in KiB.
    pub writer_cache_kib: i64,
    /// How often the background thread checkpoints the WAL.
    pub checkpoint_interval: std::time::Duration,
    /// WAL size (in pages) past which a blocking RESTART checkpoint forces it back to empty.
    pub wal_max_pages: i64,
    /// Storage-fault injection (drills and tests only, off by default): when set, the event
    /// log's connections open through a VFS that fails or slows writes and fsyncs as this
    /// plan says (see `faulty_vfs.rs`).
    pub faults: Option<Arc<FaultPlan>>,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            append_queue_requests: 8192,
            max_batch_events: 4096,
            max_append_events: 1000,
            read_connections: 4,
            sync_pipeline_batches: 64,
            live_buffer_batches: 1024,
            version_cache_streams: 100_000,
            page_bytes: 4096,
            writer_cache_kib: 64 * 1024,
            checkpoint_interval: std::time::Duration::from_millis(100),
            wal_max_pages: 64 * 1024,
            faults: None,
        }
    }
}

pub struct SqliteEventStore {
    tx: mpsc::Sender<WriterMsg>,
    head: Arc<AtomicU64>,
    live: broadcast::Sender<LiveBatch>,
    readers: Arc<ConnectionPool>,
    writer: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<checkpointer::Checkpointer>,
    /// Whether the last write reached the disk; what `/health/ready` reports.
    health: Arc<writer::WriteHealth>,
    config: SqliteConfig,
    path: PathBuf,
    /// Held for the store's life: a second process opening the same file is refused.
    _lock: File,
    /// The side effects appends cause, recorded in their transaction (see [`outbox`]).
    outbox_rule: std::sync::OnceLock<OutboxRule>,
    outbox_wake: Arc<tokio::sync::Notify>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    event_id       BLOB    NOT NULL,
    stream_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    metadata       TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    UNIQUE (stream_id, version)
);
CREATE TABLE IF NOT EXISTS jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT, -- ids are never reused
    queue               TEXT    NOT NULL,
    kind                TEXT    NOT NULL,
    payload             TEXT    NOT NULL,
    priority            INTEGER NOT NULL,
    state               INTEGER NOT NULL,   -- 0 ready, 1 leased, 2 dead
    attempts            INTEGER NOT NULL DEFAULT 0,
    max_attempts        INTEGER NOT NULL,
    run_at_ms           INTEGER NOT NULL,
    created_at_ms       INTEGER NOT NULL,
    last_error          TEXT,
    unique_key          TEXT,
    lease_token         INTEGER,
    lease_expires_at_ms INTEGER,
    batch_id            TEXT
);
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch_id, state) WHERE batch_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_batches (
    id             TEXT PRIMARY KEY,
    queue          TEXT    NOT NULL,
    kind           TEXT    NOT NULL,
    params         TEXT    NOT NULL,
    state          INTEGER NOT NULL,  -- 0 running, 1 completed, 2 with failures, 3 cancelled
    total          INTEGER NOT NULL,
    done           INTEGER NOT NULL DEFAULT 0,
    dead           INTEGER NOT NULL DEFAULT 0,
    cancelled      INTEGER NOT NULL DEFAULT 0,
    created_at_ms  INTEGER NOT NULL,
    finished_at_ms INTEGER,
    result         TEXT,
    fan_in         TEXT,             -- the fan-in job to enqueue, as JSON
    fan_in_job     INTEGER
) WITHOUT ROWID;
-- Partial indexes keep the hot paths small: only ready jobs are in jobs_ready, only leased
-- ones in jobs_leased, so a lease moves one entry and a completion touches neither.
CREATE INDEX IF NOT EXISTS jobs_ready ON jobs (queue, priority DESC, run_at_ms, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs (queue, lease_expires_at_ms) WHERE state = 1;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique ON jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state != 2;
";

/// Opens a connection with the pragmas every Ficus SQLite file uses: WAL, `synchronous=FULL`.
pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    open_connection_in(path, None)
}

/// [`open_connection`] through the named VFS (`None`: SQLite's default).
pub(crate) fn open_connection_in(path: &Path, vfs: Option<&str>) -> Result<Connection, StoreError> {
    let conn = match vfs {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs),
        None => Connection::open(path),
    }
    .map_err(unavailable)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(unavailable)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
    .map_err(unavailable)?;
    Ok(conn)
}

/// Maps an SQLite or I/O error to [`StoreError::Unavailable`].
pub fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Maps an SQLite error to [`StoreError::StorageFault`] when the device failed (disk full,
/// I/O error), else to [`StoreError::Unavailable`].
pub(crate) fn storage_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure) => {
            StoreError::StorageFault(e.to_string())
        }
        _ => unavailable(e),
    }
}

impl SqliteEventStore {
    /// Opens (creating if needed) the event log at `path`.
    pub fn open(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let lock_path = path.with_extension("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(unavailable)?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(format!("{} is in use by another process", path.display()))
        })?;
        let vfs = match &config.faults {
            Some(plan) => Some(faulty_vfs::register(plan.clone()).map_err(unavailable)?),
            None => None,
        };
        // The page size must be set before the file turns to WAL; on an existing file it is a
        // no-op.
        match vfs.as_deref() {
            Some(vfs) => {
                Connection::open_with_flags_and_vfs(&path, rusqlite::OpenFlags::default(), vfs)
            }
            None => Connection::open(&path),
        }
        .and_then(|c| c.execute_batch(&format!("PRAGMA page_size = {};", config.page_bytes)))
        .map_err(unavailable)?;
        let conn = open_connection_in(&path, vfs.as_deref())?;
        conn.execute_batch(SCHEMA).map_err(unavailable)?;
        conn.execute_batch(outbox::SCHEMA).map_err(unavailable)?;
        conn.execute_batch(idempotency::SCHEMA)
            .map_err(unavailable)?;
        // Checkpoints run on their own thread (see checkpointer.rs), not inside commits.
        // The writer's COMMIT only writes WAL frames; the syncer thread makes them durable
        // before anyone is answered (see writer.rs). Write ops run in savepoints, whose
        // sub-journal stays in memory rather than in a temporary file.
        conn.execute_batch(&format!(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -{}; PRAGMA synchronous = OFF;
             PRAGMA temp_store = MEMORY;",
            config.writer_cache_kib
        ))
        .map_err(unavailable)?;
        let mut wal_path = path.clone().into_os_string();
        wal_path.push("-wal");
        let wal = File::options()
            .read(true)
            .write(true)
            .open(&wal_path)
            .map_err(unavailable)?;
        let head: i64 = conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(unavailable)?;
        let head = Arc::new(AtomicU64::new(head as u64));
        let readers = Arc::new(ConnectionPool::open_readers_in(
            &path,
            config.read_connections,
            vfs.as_deref(),
        )?);
        let (live, _) = broadcast::channel(config.live_buffer_batches);
        let (tx, rx) = mpsc::channel(config.append_queue_requests);
        let health = Arc::new(writer::WriteHealth::default());
        let writer = writer::Writer::new(
            conn,
            wal,
            head.clone(),
            live.clone(),
            health.clone(),
            &config,
        )
        .map_err(unavailable)?;
        let handle = std::thread::Builder::new()
            .name("ficus-sqlite-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(unavailable)?;
        let checkpointer = checkpointer::Checkpointer::start(
            path.clone(),
            config.checkpoint_interval,
            config.wal_max_pages,
            vfs,
        )
        .map_err(unavailable)?;
        Ok(Self {
            tx,
            head,
            live,
            readers,
            writer: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(checkpointer),
            health,
            config,
            path,
            _lock: lock,
            outbox_rule: std::sync::OnceLock::new(),
            outbox_wake: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the store cannot take writes right now (the storage device failed the last write
    /// or fsync), or `None` when the last write reached the disk. Reads are not affected.
    pub fn storage_fault(&self) -> Option<String> {
        self.health.fault()
    }

    /// The fault-injection plan of this store, when it was opened with one.
    pub fn fault_plan(&self) -> Option<&Arc<FaultPlan>> {
        self.config.faults.as_ref()
    }

    /// Writes one small change through the writer and waits for its fsync: how a store in a
    /// storage fault finds out that the device works again (a successful write clears
    /// [`SqliteEventStore::storage_fault`]; after a failed fsync it first runs the writer's
    /// recovery).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.write(|c| {
            // Rewriting the header's user_version dirties page 1: a real write and fsync.
            let v: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(storage_error)?;
            c.execute_batch(&format!("PRAGMA user_version = {v}"))
                .map_err(storage_error)
        })
        .await
    }

    /// Runs `op` inside the writer's next batch transaction, in its own savepoint, and returns
    /// its result once the batch is durable. This is how other data (job queues, outbox,
    /// checkpoints) shares the event log's group commit and crash safety. An `Err` from `op`
    /// rolls back only what `op` wrote.
    pub async fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let op: writer::WriteOp =
            Box::new(move |c| op(c).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>));
        self.tx
            .send(WriterMsg::Exec { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("event store is shut down".into()))?;
        let value = answer.await.map_err(|_| {
            StoreError::Unavailable("event store writer stopped before answering".into())
        })??;
        Ok(*value
            .downcast::<T>()
            .expect("a write op answers with its own type"))
    }

    /// Appends `events` and runs `op` in the same transaction: both commit, or neither does
    /// (a refused expectation skips `op`; an `Err` from `op` undoes the events). This is how a
    /// command's events and the jobs they cause are written together.
    pub async fn append_with<T: Send + 'static>(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        op: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<(AppendResult, T), StoreError> {
        validate_batch(&events, self.config.max_append_events)?;
        let messages = self.outbox_messages(stream, &events)?;
        let recorded = !messages.is_empty();
        let (reply, answer) = oneshot::channel();
        let op: writer::WriteOp = Box::new(move |c| {
            if !messages.is_empty() {
                outbox::insert(c, &messages, crate::now_ms())?;
            }
            op(c).map(|v| Box::new(v) as Box<dyn std::any::Any + Send>)
        });
        let msg = WriterMsg::Append {
            stream: stream.clone(),
            expected,
            events: events.into_iter().map(EncodedEvent::new).collect(),
            also: Some(op),
            reply,
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| StoreError::Unavailable("event store is shut down".into()))?;
        let (result, extra) = answer.await.map_err(|_| {
            StoreError::Unavailable("event store writer stopped before answering".into())
        })??;
        if recorded {
            self.outbox_wake.notify_one();
        }
        let extra = extra.expect("an append with an op answers with the op's result");
        Ok((
            result,
            *extra
                .downcast::<T>()
                .expect("a write op answers with its own type"),
        ))
    }

    /// Runs a read on one of the store's read connections. Sees only committed data, which may
    /// include rows of a batch whose fdatasync is still running.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.run(f).await
    }

    /// Finishes the batch in progress, stops the writer and waits for it. Appends after this
    /// fail with `Unavailable`. Reads keep working.
    pub async fn shutdown(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.send(WriterMsg::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        self.checkpointer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop();
    }
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_batch(&events, self.config.max_append_events)?;
        if !self.outbox_messages(stream, &events)?.is_empty() {
            // The messages the append causes go into its transaction.
            return self
                .append_with(stream, expected, events, |_| Ok(()))
                .await
                .map(|(r, ())| r);
        }
        let (reply, answer) = oneshot::channel();
        let msg = WriterMsg::Append {
            stream: stream.clone(),
            expected,
            events: events.into_iter().map(EncodedEvent::new).collect(),
            also: None,
            reply,
        };
        self.tx
            .send(msg)
            .await
            .map_err(|_| StoreError::Unavailable("event store is shut down".into()))?;
        answer
            .await
            .map_err(|_| {
                StoreError::Unavailable("event store writer stopped before answering".into())
            })?
            .map(|(r, _)| r)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stream = stream.clone();
        let head = self.head.load(Ordering::Acquire);
        self.readers
            .run(move |c| reader::read_stream(c, &stream, from_version, head, limit))
            .await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let stream = stream.clone();
        let head = self.head.load(Ordering::Acquire);
        self.readers
            .run(move |c| reader::stream_version(c, &stream, head))
            .await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Never read past what the writer has acknowledged; the answer stays consistent with
        // `head_position`.
        let head = self.head.load(Ordering::Acquire);
        if from_position > head {
            return Ok(Vec::new());
        }
        self.readers
            .run(move |c| reader::read_all(c, from_position, head, limit))
            .await
    }

    fn head_position(&self) -> Position {
        self.head.load(Ordering::Acquire)
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }
}
