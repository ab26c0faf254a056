//! The single writer thread and its syncer: group commit, with the fsync pipelined.
//!
//! The writer takes every queued append (up to `max_batch_events`), checks each request's
//! expected version and inserts them all in ONE transaction. Its connection runs with
//! `synchronous = OFF`, so `COMMIT` only writes the WAL frames into the page cache. The batch
//! then goes to the syncer thread, which calls `fdatasync` on the WAL file and only after it
//! returns answers the batch's callers, advances the durable head and broadcasts the batch to
//! live subscribers. While one fdatasync runs, the writer already commits the next batches;
//! the next fdatasync covers all of them at once.
//!
//! Why this is as durable as `synchronous = FULL`: a caller is answered only after an
//! fdatasync that began after its frames were written. The WAL is append-only between
//! checkpoints, and SQLite's recovery replays frames only up to the last intact commit frame
//! (checksums chained from the header), so a torn tail from a crash can only lose batches that
//! nobody was told about. The WAL restarts from its beginning only after a checkpoint, which
//! runs on a `synchronous = FULL` connection and fsyncs the database file before it marks the
//! frames as copied. Readers never look past the durable head (see `reader.rs`).
//!
//! Storage faults (see docs/adr/0014-storage-fault-injection.md):
//! - A write the device refuses (disk full, I/O error, torn write) fails the batch's
//!   transaction before its commit frame is valid: SQLite rolls it back, every caller in the
//!   batch gets [`StoreError::StorageFault`], nothing of it is committed (then or later), and
//!   the cached stream versions are dropped. The next batch simply tries again.
//! - If fdatasync fails, the batches it covered (and those committed behind it) are in the WAL
//!   but may not be on disk: their callers get [`StoreError::OutcomeUnknown`], never an ack.
//!   After a failed fsync the kernel may have dropped the dirty pages, so nothing can be
//!   promised until the store has recovered: the writer refuses every batch (StorageFault)
//!   until a recovery succeeds. Recovery (tried at the next batch) waits for the syncer to
//!   drain, probes the WAL with an fdatasync, rewrites everything the WAL holds into the
//!   database file with a FULL checkpoint on a `synchronous = FULL` connection (fresh writes,
//!   fsynced), then re-reads the head from the file instead of trusting what it had in
//!   memory, and publishes the events that turned out to be committed.

use std::any::Any;
use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use rusqlite::{params, Connection, TransactionBehavior};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::faulty_vfs::FaultPlan;
use super::reader::{read_all, stream_version};
use super::{storage_error, SqliteConfig};
use crate::{now_ms, AppendResult, LiveBatch, StoreError};

/// An event with its metadata and payload already encoded by the caller's task, so the
/// writer thread spends its time on inserts only.
pub(crate) struct EncodedEvent {
    pub(crate) event: NewEvent,
    pub(crate) metadata_json: String,
    pub(crate) payload_json: String,
}

impl EncodedEvent {
    pub(crate) fn new(event: NewEvent) -> Self {
        Self {
            metadata_json: serde_json::to_string(&event.metadata).expect("metadata serializes"),
            payload_json: serde_json::to_string(&event.payload).expect("JSON values serialize"),
            event,
        }
    }
}

/// A write run inside the writer's batch transaction (in its own savepoint), for data that must
/// share the event log's group commit and durability: job queues, outbox, checkpoints.
pub(crate) type WriteOp =
    Box<dyn FnOnce(&Connection) -> Result<Box<dyn Any + Send>, StoreError> + Send>;
pub(crate) type OpReply = oneshot::Sender<Result<Box<dyn Any + Send>, StoreError>>;

/// What an append answers: its result, and the result of the write op that shared its
/// transaction, if one did.
pub(crate) type Appended = (AppendResult, Option<Box<dyn Any + Send>>);

pub(crate) enum WriterMsg {
    Append {
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<EncodedEvent>,
        /// Runs right after the events are inserted, in the same savepoint: both commit or
        /// neither does (e.g. jobs enqueued with the events that caused them).
        also: Option<WriteOp>,
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    Exec {
        op: WriteOp,
        reply: OpReply,
    },
    Shutdown(oneshot::Sender<()>),
}

type Reply = oneshot::Sender<Result<Appended, StoreError>>;

/// A caller waiting for its batch to become durable, with what it will be told.
enum Answer {
    Append(Reply, Result<Appended, StoreError>),
    Exec(OpReply, Result<Box<dyn Any + Send>, StoreError>),
}

impl Answer {
    fn send(self) {
        match self {
            Answer::Append(r, a) => {
                let _ = r.send(a);
            }
            Answer::Exec(r, a) => {
                let _ = r.send(a);
            }
        }
    }

    fn fail(self, e: &StoreError) {
        match self {
            Answer::Append(r, _) => {
                let _ = r.send(Err(e.clone()));
            }
            Answer::Exec(r, _) => {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}

/// A batch committed to SQLite but not yet fsynced.
struct Committed {
    events: Vec<RecordedEvent>,
    answers: Vec<Answer>,
    /// Whether the batch wrote anything (events or write ops), so that its fsync proves the
    /// device takes writes again.
    wrote: bool,
}

/// What the writer hands the syncer, in commit order.
enum SyncMsg {
    Batch(Committed),
    /// Answered once every batch sent before it has been synced or failed.
    Barrier(std_mpsc::SyncSender<()>),
}

/// Whether the event log's last write reached the disk: what readiness reports.
#[derive(Debug, Default)]
pub(crate) struct WriteHealth {
    fault: Mutex<Option<String>>,
}

impl WriteHealth {
    pub(crate) fn fault(&self) -> Option<String> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, why: &str) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_owned());
    }

    fn clear(&self) {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Events read per query when the writer publishes what a recovery found committed.
const RECOVERY_PAGE_EVENTS: usize = 512;

pub(crate) struct Writer {
    conn: Connection,
    /// Position of the last event the writer committed (durable or not yet).
    written: Position,
    /// Current version of recently written streams. Exact: this thread is the only writer.
    versions: HashMap<StreamId, Version>,
    max_batch_events: usize,
    version_cache_streams: usize,
    sync_tx: Option<std_mpsc::SyncSender<SyncMsg>>,
    syncer: Option<JoinHandle<()>>,
    /// Set once an fdatasync failed; every batch is refused until a recovery succeeds.
    failed: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
    /// The durable head and the live feed, which the writer touches only during a recovery,
    /// while the syncer is drained and idle.
    head: Arc<AtomicU64>,
    live: broadcast::Sender<LiveBatch>,
    /// A second handle on the WAL, for the recovery's fsync probe.
    wal: File,
    faults: Option<Arc<FaultPlan>>,
}

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        wal: File,
        head: Arc<AtomicU64>,
        live: broadcast::Sender<LiveBatch>,
        health: Arc<WriteHealth>,
        config: &SqliteConfig,
    ) -> std::io::Result<Self> {
        let failed = Arc::new(AtomicBool::new(false));
        let (sync_tx, sync_rx) = std_mpsc::sync_channel(config.sync_pipeline_batches);
        let probe_wal = wal.try_clone()?;
        let syncer = Syncer {
            wal,
            head: head.clone(),
            live: live.clone(),
            failed: failed.clone(),
            health: health.clone(),
            faults: config.faults.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("ficus-sqlite-sync".into())
            .spawn(move || syncer.run(sync_rx))?;
        Ok(Self {
            conn,
            written: head.load(Ordering::Acquire),
            versions: HashMap::new(),
            max_batch_events: config.max_batch_events,
            version_cache_streams: config.version_cache_streams,
            sync_tx: Some(sync_tx),
            syncer: Some(syncer),
            failed,
            health,
            head,
            live,
            wal: probe_wal,
            faults: config.faults.clone(),
        })
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<WriterMsg>) {
        let mut batch: Vec<WriterMsg> = Vec::new();
        let mut shutdown = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut events = msg_events(&first);
            batch.push(first);
            // Group commit: take whatever queued while the last batch was being committed.
            while events < self.max_batch_events {
                match rx.try_recv() {
                    Ok(m) => {
                        events += msg_events(&m);
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            self.commit_batch(&mut batch, &mut shutdown);
            if !shutdown.is_empty() {
                break;
            }
        }
        // Let the syncer finish every committed batch before saying we are done.
        drop(self.sync_tx.take());
        if let Some(s) = self.syncer.take() {
            let _ = s.join();
        }
        for s in shutdown {
            let _ = s.send(());
        }
    }

    /// Commits one batch and hands it to the syncer (or fails its callers).
    fn commit_batch(
        &mut self,
        batch: &mut Vec<WriterMsg>,
        shutdown: &mut Vec<oneshot::Sender<()>>,
    ) {
        let mut answers: Vec<Answer> = Vec::new();
        let mut committed: Vec<RecordedEvent> = Vec::new();
        let msgs = std::mem::take(batch);
        let only_shutdown = msgs.iter().all(|m| matches!(m, WriterMsg::Shutdown(_)));
        let recovered = if self.failed.load(Ordering::Acquire) && !only_shutdown {
            self.recover()
        } else {
            Ok(())
        };
        let outcome = match recovered {
            Err(e) => {
                route_unwritten(msgs, shutdown, &mut answers);
                Err(StoreError::StorageFault(format!(
                    "the event log refuses writes until it recovers from a failed fsync: {e}"
                )))
            }
            Ok(()) if self.failed.load(Ordering::Acquire) => {
                // Only shutdown requests: nothing to write, nothing to recover.
                route_unwritten(msgs, shutdown, &mut answers);
                Ok(())
            }
            Ok(()) => self.write(msgs, shutdown, &mut answers, &mut committed),
        };
        match outcome {
            Ok(()) => {
                if let Some(last) = committed.last() {
                    self.written = last.position;
                }
                let wrote = !committed.is_empty()
                    || answers.iter().any(|a| matches!(a, Answer::Exec(_, Ok(_))));
                let c = Committed {
                    events: committed,
                    answers,
                    wrote,
                };
                if let Some(tx) = &self.sync_tx {
                    if let Err(std_mpsc::SendError(SyncMsg::Batch(c))) = tx.send(SyncMsg::Batch(c))
                    {
                        fail_all(c.answers, &StoreError::Unavailable("syncer stopped".into()));
                    }
                }
            }
            Err(e) => {
                // Nothing of this batch is committed: forget cached versions it may have
                // advanced and fail every caller in it.
                self.versions.clear();
                // After an I/O error SQLite may have rolled the transaction back itself, or
                // left it open: make sure none stays open for the next batch.
                if !self.conn.is_autocommit() {
                    if let Err(rb) = self.conn.execute_batch("ROLLBACK") {
                        tracing::error!(error = %rb, "rollback after a failed batch failed");
                    }
                }
                if let StoreError::StorageFault(why) = &e {
                    self.health.set(why);
                }
                tracing::error!(error = %e, "event store batch failed; nothing acknowledged");
                fail_all(answers, &e);
            }
        }
        if self.versions.len() > self.version_cache_streams {
            self.versions.clear();
        }
    }

    /// Brings the writer back after a failed fsync, or says why it cannot yet.
    fn recover(&mut self) -> Result<(), String> {
        // 1. Every batch committed before the failure has been answered (OutcomeUnknown) and
        //    the syncer is idle, so nothing else touches the head or the live feed.
        let (done_tx, done_rx) = std_mpsc::sync_channel(1);
        let tx = self.sync_tx.as_ref().ok_or("syncer stopped")?;
        tx.send(SyncMsg::Barrier(done_tx))
            .map_err(|_| "syncer stopped")?;
        done_rx.recv().map_err(|_| "syncer stopped")?;
        // 2. Does the device take an fsync again?
        if let Some(plan) = &self.faults {
            plan.before_sync()
                .map_err(|e| format!("fsync probe: {e}"))?;
        }
        self.wal
            .sync_data()
            .map_err(|e| format!("fsync probe: {e}"))?;
        // 3. The WAL's pages may be clean in the page cache without being on disk
        //    (fsyncgate): rewrite all of it into the database file with fresh writes and
        //    fsync those, on a synchronous = FULL connection.
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.conn
            .execute_batch("PRAGMA synchronous = FULL")
            .map_err(|e| e.to_string())?;
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get::<_, i64>(0));
        let restored = self.conn.execute_batch("PRAGMA synchronous = OFF");
        match checkpoint {
            Ok(0) => {}
            Ok(_) => return Err("recovery checkpoint was blocked by a reader".into()),
            Err(e) => return Err(format!("recovery checkpoint: {e}")),
        }
        restored.map_err(|e| e.to_string())?;
        // 4. Trust the file, not memory: re-read the head and forget every cached version.
        let on_disk: i64 = self
            .conn
            .query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })
            .map_err(|e| e.to_string())?;
        let on_disk = on_disk as Position;
        self.versions.clear();
        self.written = on_disk;
        // 5. The batches whose outcome was unknown are committed and now durable: publish
        //    them in order, as the syncer would have.
        let mut durable = self.head.load(Ordering::Acquire);
        while durable < on_disk {
            let page = read_all(&self.conn, durable + 1, on_disk, RECOVERY_PAGE_EVENTS)
                .map_err(|e| e.to_string())?;
            let Some(last) = page.last() else { break };
            durable = last.position;
            self.head.store(durable, Ordering::Release);
            let _ = self.live.send(page.into());
        }
        self.head.store(on_disk, Ordering::Release);
        self.failed.store(false, Ordering::Release);
        self.health.clear();
        tracing::warn!(
            head = on_disk,
            "event store recovered from a failed fsync; writes resume"
        );
        Ok(())
    }

    /// Inserts every append of `msgs` in one transaction and commits it. Every caller ends up
    /// in `answers` (and every shutdown request in `shutdown`), whatever happens.
    fn write(
        &mut self,
        msgs: Vec<WriterMsg>,
        shutdown: &mut Vec<oneshot::Sender<()>>,
        answers: &mut Vec<Answer>,
        committed: &mut Vec<RecordedEvent>,
    ) -> Result<(), StoreError> {
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                route_unwritten(msgs, shutdown, answers);
                return Err(storage_error(e));
            }
        };
        let mut next_position: Position = self.written + 1;
        let at = now_ms();
        let mut failure = None;
        {
            let mut insert = match tx.prepare_cached(
                "INSERT INTO events (position, event_id, stream_id, version, event_type, \
                 schema_version, recorded_at_ms, metadata, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            ) {
                Ok(stmt) => stmt,
                Err(e) => {
                    route_unwritten(msgs, shutdown, answers);
                    return Err(storage_error(e));
                }
            };
            for msg in msgs {
                let (stream, expected, events, also, reply) = match msg {
                    WriterMsg::Shutdown(s) => {
                        shutdown.push(s);
                        continue;
                    }
                    WriterMsg::Exec { op, reply } => {
                        if failure.is_some() {
                            answers.push(Answer::Exec(reply, Ok(Box::new(()))));
                            continue;
                        }
                        match run_in_savepoint(&tx, op) {
                            Ok(result) => answers.push(Answer::Exec(reply, result)),
                            Err(e) => {
                                failure = Some(e);
                                answers.push(Answer::Exec(reply, Ok(Box::new(()))));
                            }
                        }
                        continue;
                    }
                    WriterMsg::Append {
                        stream,
                        expected,
                        events,
                        also,
                        reply,
                    } => (stream, expected, events, also, reply),
                };
                if failure.is_some() {
                    answers.push(Answer::Append(reply, Ok(dummy())));
                    continue;
                }
                let current = match self.versions.get(&stream) {
                    Some(v) => *v,
                    None => match stream_version(&tx, &stream, Position::MAX) {
                        Ok(v) => v,
                        Err(e) => {
                            failure = Some(e);
                            answers.push(Answer::Append(reply, Ok(dummy())));
                            continue;
                        }
                    },
                };
                if !expected.admits(current) {
                    self.versions.insert(stream.clone(), current);
                    answers.push(Answer::Append(
                        reply,
                        Err(StoreError::WrongExpectedVersion {
                            stream,
                            expected,
                            actual: current,
                        }),
                    ));
                    continue;
                }
                let first_position = next_position;
                let committed_before = committed.len();
                if also.is_some() {
                    if let Err(err) = tx.execute_batch("SAVEPOINT ficus_append") {
                        failure = Some(storage_error(err));
                        answers.push(Answer::Append(reply, Ok(dummy())));
                        continue;
                    }
                }
                let n = events.len() as u64;
                for (i, e) in events.into_iter().enumerate() {
                    let version = current + 1 + i as u64;
                    let r = insert.execute(params![
                        next_position as i64,
                        e.event.id.as_bytes().as_slice(),
                        stream.as_str(),
                        version as i64,
                        e.event.event_type.as_str(),
                        e.event.schema_version as i64,
                        at,
                        e.metadata_json,
                        e.payload_json,
                    ]);
                    if let Err(err) = r {
                        failure = Some(storage_error(err));
                        break;
                    }
                    committed.push(RecordedEvent {
                        id: e.event.id,
                        stream_id: stream.clone(),
                        version,
                        position: next_position,
                        event_type: e.event.event_type,
                        schema_version: e.event.schema_version,
                        recorded_at_ms: at,
                        metadata: e.event.metadata,
                        payload: e.event.payload,
                    });
                    next_position += 1;
                }
                if failure.is_some() {
                    answers.push(Answer::Append(reply, Ok(dummy())));
                    continue;
                }
                let mut extra = None;
                if let Some(op) = also {
                    match op(&tx) {
                        Ok(v) => {
                            if let Err(err) = tx.execute_batch("RELEASE ficus_append") {
                                failure = Some(storage_error(err));
                                answers.push(Answer::Append(reply, Ok(dummy())));
                                continue;
                            }
                            extra = Some(v);
                        }
                        Err(refused) => {
                            // Neither the events nor the op's writes: undo this request only.
                            if let Err(err) =
                                tx.execute_batch("ROLLBACK TO ficus_append; RELEASE ficus_append")
                            {
                                failure = Some(storage_error(err));
                                answers.push(Answer::Append(reply, Ok(dummy())));
                                continue;
                            }
                            committed.truncate(committed_before);
                            next_position = first_position;
                            answers.push(Answer::Append(reply, Err(refused)));
                            continue;
                        }
                    }
                }
                self.versions.insert(stream, current + n);
                answers.push(Answer::Append(
                    reply,
                    Ok((
                        AppendResult {
                            first_version: current + 1,
                            last_version: current + n,
                            first_position,
                            last_position: first_position + n - 1,
                        },
                        extra,
                    )),
                ));
            }
        }
        if let Some(e) = failure {
            // Dropping `tx` rolls back; the callers already in `answers` are failed by the
            // caller of `write`.
            return Err(e);
        }
        if tx.is_autocommit() {
            // An I/O error inside a write op made SQLite roll the whole transaction back
            // behind the op's savepoint: nothing of this batch may be acknowledged.
            return Err(StoreError::StorageFault(
                "the batch transaction was rolled back by SQLite after an I/O error".into(),
            ));
        }
        tx.commit().map_err(storage_error)
    }
}

/// Puts every caller of an unwritten batch in `answers` (to be failed) and keeps its shutdown
/// requests.
fn route_unwritten(
    msgs: Vec<WriterMsg>,
    shutdown: &mut Vec<oneshot::Sender<()>>,
    answers: &mut Vec<Answer>,
) {
    for msg in msgs {
        match msg {
            WriterMsg::Append { reply, .. } => answers.push(Answer::Append(reply, Ok(dummy()))),
            WriterMsg::Exec { reply, .. } => answers.push(Answer::Exec(reply, Ok(Box::new(())))),
            WriterMsg::Shutdown(s) => shutdown.push(s),
        }
    }
}

/// A placeholder result for a caller that is about to be failed.
fn dummy() -> Appended {
    let nothing = AppendResult {
        first_version: 0,
        last_version: 0,
        first_position: 0,
        last_position: 0,
    };
    (nothing, None)
}

fn fail_all(answers: Vec<Answer>, e: &StoreError) {
    for a in answers {
        a.fail(e);
    }
}

/// Runs `op` in a savepoint of the batch transaction. The op's own error (a refusal) rolls
/// back only its savepoint and is that caller's answer; only an error of the savepoint
/// machinery itself fails the whole batch (outer `Err`).
fn run_in_savepoint(
    tx: &Connection,
    op: WriteOp,
) -> Result<Result<Box<dyn Any + Send>, StoreError>, StoreError> {
    tx.execute_batch("SAVEPOINT ficus_op")
        .map_err(storage_error)?;
    match op(tx) {
        Ok(v) => {
            tx.execute_batch("RELEASE ficus_op")
                .map_err(storage_error)?;
            Ok(Ok(v))
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO ficus_op; RELEASE ficus_op")
                .map_err(storage_error)?;
            Ok(Err(e))
        }
    }
}

/// The weight of a message toward `max_batch_events` (an op counts as one event).
fn msg_events(m: &WriterMsg) -> usize {
    match m {
        WriterMsg::Append { events, .. } => events.len(),
        WriterMsg::Exec { .. } => 1,
        WriterMsg::Shutdown(_) => 0,
    }
}

/// Makes committed batches durable and only then acknowledges them.
struct Syncer {
    wal: File,
    head: Arc<AtomicU64>,
    live: broadcast::Sender<LiveBatch>,
    failed: Arc<AtomicBool>,
    health: Arc<WriteHealth>,
    faults: Option<Arc<FaultPlan>>,
}

impl Syncer {
    fn run(self, rx: std_mpsc::Receiver<SyncMsg>) {
        while let Ok(first) = rx.recv() {
            let mut group = Vec::new();
            let mut barrier = None;
            match first {
                SyncMsg::Batch(c) => group.push(c),
                SyncMsg::Barrier(b) => barrier = Some(b),
            }
            while barrier.is_none() {
                match rx.try_recv() {
                    Ok(SyncMsg::Batch(c)) => group.push(c),
                    Ok(SyncMsg::Barrier(b)) => barrier = Some(b),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.sync_group(group);
            }
            if let Some(b) = barrier {
                let _ = b.send(());
            }
        }
    }

    fn sync_group(&self, group: Vec<Committed>) {
        {
            // One fdatasync covers every batch committed before it started.
            let synced = if self.failed.load(Ordering::Acquire) {
                Err(std::io::Error::other("an earlier fsync failed"))
            } else {
                match &self.faults {
                    Some(plan) => plan.before_sync(),
                    None => Ok(()),
                }
                .and_then(|()| self.wal.sync_data())
            };
            match synced {
                Ok(()) => {
                    if group.iter().any(|c| c.wrote) {
                        self.health.clear();
                    }
                    for c in group {
                        if let Some(last) = c.events.last() {
                            self.head.store(last.position, Ordering::Release);
                            // No receiver is not an error: nobody is listening live.
                            let _ = self.live.send(c.events.into());
                        }
                        for a in c.answers {
                            a.send();
                        }
                    }
                }
                Err(e) => {
                    self.failed.store(true, Ordering::Release);
                    self.health
                        .set(&format!("fsync of the event log failed: {e}"));
                    tracing::error!(error = %e, "fdatasync of the WAL failed; the event store refuses writes until it recovers");
                    // Committed but not known to be durable: never an ack, never a plain
                    // refusal either (a recovery makes these batches visible).
                    let err = StoreError::OutcomeUnknown(format!(
                        "the write was committed but its fsync failed ({e}); it becomes \
                         durable if the store recovers, and may be lost if it crashes first"
                    ));
                    for c in group {
                        fail_all(c.answers, &err);
                    }
                }
            }
        }
    }
}
