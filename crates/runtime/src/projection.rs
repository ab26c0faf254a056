//! The projection runner: folds the global log into a read model in its own SQLite file.
//!
//! Each projection owns one SQLite file holding its tables and its checkpoint. A batch of
//! events and the checkpoint that follows it commit in ONE transaction, so a crash at any
//! instant leaves the read model exactly at its checkpoint: no event skipped, none applied
//! twice. The runner publishes its checkpoint on a watch channel, which read-your-own-writes
//! queries wait on.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ficus_core::{codec::CodecError, Position, RecordedEvent};
use ficus_store::sqlite::{open_connection, unavailable, ConnectionPool};
use ficus_store::{EventStore, StoreError, Subscription, SubscriptionError};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::Backoff;
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

/// One generation of a read model: its own SQLite file, a writer connection for the runner
/// and a pool of query connections. A rebuild fills a new generation while the current one
/// serves, then switches (see [`ReadModelDb`]).
struct Generation {
    number: u64,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Arc<ConnectionPool>,
}

impl Generation {
    fn open(
        path: PathBuf,
        number: u64,
        projection: &dyn SqliteProjection,
    ) -> Result<Self, StoreError> {
        let writer = open_connection(&path)?;
        // A read model's checkpoint commits with its data, so a lost tail after a power
        // failure rolls both back together and is re-applied from the log: WAL's NORMAL
        // sync keeps it consistent without an fsync per batch (see docs/adr/0003). A
        // rebuilt generation is made durable as a whole before it is switched to.
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
            number,
            path,
            writer: Mutex::new(writer),
            readers,
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkpoint(&self) -> Result<Position, StoreError> {
        read_checkpoint(&self.writer()).map_err(unavailable)
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
            events[0].position == checkpoint + 1,
            "projection {} (generation {}) would apply position {} after checkpoint {checkpoint}",
            projection.name(),
            self.number,
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

    /// Makes every committed batch durable: with `synchronous = NORMAL` a WAL checkpoint
    /// syncs the WAL before copying it and the database file after.
    fn make_durable(&self) -> Result<(), ProjectionError> {
        self.writer()
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// The files of generation `number`: the database and its WAL and shared-memory files.
fn generation_files(path: &Path) -> [PathBuf; 3] {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    [path.to_path_buf(), wal.into(), shm.into()]
}

fn remove_generation(path: &Path) -> Result<(), StoreError> {
    for f in generation_files(path) {
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unavailable(format!("removing {}: {e}", f.display()))),
        }
    }
    Ok(())
}

/// The read model of one projection, in generations: generation 0 is `{name}.db`, generation
/// N ≥ 1 is `{name}.g{N}.db`, and the pointer file `{name}.current` names the one that serves
/// (no pointer file: generation 0). A rebuild fills generation N + 1 while N serves and keeps
/// up; the switch makes N + 1 durable, replaces the pointer file by an atomic rename (fsynced,
/// with its directory), and swaps the in-memory generation that queries take. Queries that
/// started on N finish on N; generation N's files are removed once nothing uses them.
///
/// On open, generation N − 1 is what a switch left behind if the process died before removing
/// it: removed. Generation N + 1 is a rebuild the process died in the middle of: the runner
/// resumes it from its own checkpoint (see docs/adr/0017).
pub struct ReadModelDb {
    dir: PathBuf,
    name: String,
    current: RwLock<Arc<Generation>>,
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

fn generation_path(dir: &Path, name: &str, number: u64) -> PathBuf {
    if number == 0 {
        dir.join(format!("{name}.db"))
    } else {
        dir.join(format!("{name}.g{number}.db"))
    }
}

fn pointer_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.current"))
}

/// The generation the pointer file names; 0 without one. A pointer file that does not hold a
/// number is a loud error, never a silent fall back to another generation.
fn read_pointer(path: &Path) -> Result<u64, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            unavailable(format!(
                "read model pointer {} holds {text:?}, not a generation number",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(unavailable(e)),
    }
}

impl ReadModelDb {
    /// Opens (creating if needed) the read model whose generation-0 file is `path`
    /// (`{dir}/{name}.db`), serving the generation its pointer file names.
    pub fn open(
        path: impl AsRef<Path>,
        projection: &dyn SqliteProjection,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(&dir).map_err(unavailable)?;
        }
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| unavailable(format!("read model path {} has no name", path.display())))?
            .to_owned();
        let number = read_pointer(&pointer_path(&dir, &name))?;
        if number > 0 {
            remove_generation(&generation_path(&dir, &name, number - 1))?;
        }
        let current = Generation::open(generation_path(&dir, &name, number), number, projection)?;
        Ok(Self {
            dir,
            name,
            current: RwLock::new(Arc::new(current)),
        })
    }

    fn generation_path(&self, number: u64) -> PathBuf {
        generation_path(&self.dir, &self.name, number)
    }

    fn pointer_path(&self) -> PathBuf {
        pointer_path(&self.dir, &self.name)
    }

    /// Replaces the pointer file atomically and durably: a temporary file, fsynced, renamed
    /// over the pointer, then the directory fsynced so the rename itself survives a crash.
    fn write_pointer(&self, number: u64) -> Result<(), StoreError> {
        use std::io::Write;
        let tmp = self.dir.join(format!("{}.current.tmp", self.name));
        let mut f = std::fs::File::create(&tmp).map_err(unavailable)?;
        writeln!(f, "{number}").map_err(unavailable)?;
        f.sync_all().map_err(unavailable)?;
        drop(f);
        std::fs::rename(&tmp, self.pointer_path()).map_err(unavailable)?;
        let dir = if self.dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &self.dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(unavailable)
    }

    fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The file of the generation that serves now.
    pub fn path(&self) -> PathBuf {
        self.current().path.clone()
    }

    /// The number of the generation that serves now (0 until the first rebuild switched).
    pub fn generation(&self) -> u64 {
        self.current().number
    }

    /// The position of the last event applied.
    pub fn checkpoint(&self) -> Result<Position, StoreError> {
        self.current().checkpoint()
    }

    /// Runs a read-only query and returns its result with the checkpoint it reflects (read in
    /// the same transaction, so the pair is consistent). It runs on the generation that
    /// serves when it starts, to its end, also if a rebuild switches meanwhile.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<(T, Position), StoreError> {
        let generation = self.current();
        generation
            .readers
            .run(move |conn| {
                let tx = conn.unchecked_transaction().map_err(unavailable)?;
                let position = read_checkpoint(&tx).map_err(unavailable)?;
                let out = f(&tx)?;
                tx.commit().map_err(unavailable)?;
                Ok((out, position))
            })
            .await
    }

    fn apply_batch(
        &self,
        projection: &dyn SqliteProjection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        self.current().apply_batch(projection, events)
    }

    /// The generation after the serving one, opened (created empty, or as a crashed rebuild
    /// left it when `resume`), with its checkpoint.
    fn open_next(
        &self,
        projection: &dyn SqliteProjection,
        resume: bool,
    ) -> Result<Option<(Arc<Generation>, Position)>, StoreError> {
        let number = self.generation() + 1;
        let path = self.generation_path(number);
        if resume && !path.exists() {
            return Ok(None);
        }
        if !resume {
            remove_generation(&path)?;
        }
        let next = Generation::open(path, number, projection)?;
        let checkpoint = next.checkpoint()?;
        Ok(Some((Arc::new(next), checkpoint)))
    }

    /// Makes `next` the serving generation: durable first, then the pointer, then the swap.
    /// Returns the generation it replaced, to be removed once unused.
    fn switch_to(&self, next: Arc<Generation>) -> Result<Arc<Generation>, ProjectionError> {
        next.make_durable()?;
        self.write_pointer(next.number)
            .map_err(|e| ProjectionError::Other(e.to_string()))?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        Ok(std::mem::replace(&mut *current, next))
    }
}

/// Longest a replaced generation waits for the queries still running on it before its files
/// are removed anyway (removing an open file is safe on Unix: the open handles keep reading).
const RETIRE_WAIT: Duration = Duration::from_secs(60);
/// How often a replaced generation looks whether its last query has finished.
const RETIRE_POLL: Duration = Duration::from_millis(20);

/// Removes a replaced generation's files once no query holds it any more.
fn retire(old: Arc<Generation>) {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        while Arc::strong_count(&old) > 1 && started.elapsed() < RETIRE_WAIT {
            std::thread::sleep(RETIRE_POLL);
        }
        let path = old.path.clone();
        drop(old);
        if let Err(e) = remove_generation(&path) {
            // Left behind, it is removed at the next open.
            tracing::warn!(path = %path.display(), error = %e, "could not remove a replaced read-model generation");
        }
    });
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
    /// Events applied since the runner started, a rebuild's replay included.
    pub events_applied: u64,
    /// A blue/green rebuild under way: the copy being built while this one serves.
    pub rebuild: Option<RebuildProgress>,
}

/// The progress of a blue/green rebuild: the new copy (green) is at `position`, replaying
/// toward `target`, the head of the log when the rebuild started; once it has caught up with
/// the serving copy (blue) it is switched to and the rebuild ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildProgress {
    pub position: Position,
    pub target: Position,
    /// The last failure of the replay, retried after a pause; `None` while it goes well.
    pub error: Option<String>,
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

/// The moments of a rebuild a crash test may stop the process at (see
/// [`ProjectionRunnerConfig::rebuild_hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildMoment {
    /// A batch of the replay into the new copy has committed; the position is its last.
    Replayed,
    /// The new copy has caught up and is durable; the pointer still names the old one.
    Switching,
    /// The pointer names the new copy and queries read it; the old one is not removed yet.
    Switched,
}

/// Called at each [`RebuildMoment`] with the new copy's position.
pub type RebuildHook = Arc<dyn Fn(RebuildMoment, Position) + Send + Sync>;

/// How a runner is started beyond its projection, directory and store.
#[derive(Clone, Default)]
pub struct ProjectionRunnerConfig {
    /// Crash tests only: called at every [`RebuildMoment`] (e.g. to abort the process there).
    pub rebuild_hook: Option<RebuildHook>,
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

    /// Starts a blue/green rebuild: a new, empty copy of the read model replays the log from
    /// position 1 while the current copy keeps serving and applying live events; once the
    /// new copy has caught up it replaces the current one atomically. Returns once the new
    /// copy exists (a request while a rebuild is under way joins that one); follow progress
    /// with [`ProjectionStatus::rebuild`].
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

/// Retry pauses of a failing rebuild replay or switch (full jitter).
const REBUILD_BACKOFF: Backoff = Backoff {
    base_ms: 100,
    max_ms: 30_000,
};

/// A rebuild under way: its replay task, and the channel on which the task hands back the new
/// copy once it has caught up with the serving one.
struct Rebuild {
    done: oneshot::Receiver<(Arc<Generation>, Position)>,
    task: tokio::task::JoinHandle<()>,
}

/// Runs one projection until shutdown.
pub struct ProjectionRunner {
    projection: Arc<dyn SqliteProjection>,
    db: Arc<ReadModelDb>,
    store: Arc<dyn EventStore>,
    status: Arc<watch::Sender<ProjectionStatus>>,
    control: mpsc::Receiver<Control>,
    config: ProjectionRunnerConfig,
    rebuild: Option<Rebuild>,
    /// A new copy found on open: the rebuild a previous process died in the middle of.
    resume: Option<(Arc<Generation>, Position)>,
}

impl ProjectionRunner {
    /// Opens the read model under `dir` and starts its runner task.
    pub fn spawn(
        projection: Arc<dyn SqliteProjection>,
        dir: &Path,
        store: Arc<dyn EventStore>,
        shutdown: Shutdown,
    ) -> Result<(ProjectionHandle, tokio::task::JoinHandle<()>), StoreError> {
        Self::spawn_with(
            projection,
            dir,
            store,
            shutdown,
            ProjectionRunnerConfig::default(),
        )
    }

    /// [`ProjectionRunner::spawn`] with a [`ProjectionRunnerConfig`].
    pub fn spawn_with(
        projection: Arc<dyn SqliteProjection>,
        dir: &Path,
        store: Arc<dyn EventStore>,
        shutdown: Shutdown,
        config: ProjectionRunnerConfig,
    ) -> Result<(ProjectionHandle, tokio::task::JoinHandle<()>), StoreError> {
        let db = Arc::new(ReadModelDb::open(
            dir.join(format!("{}.db", projection.name())),
            projection.as_ref(),
        )?);
        let checkpoint = db.checkpoint()?;
        let resume = db.open_next(projection.as_ref(), true)?;
        let (status_tx, status_rx) = watch::channel(ProjectionStatus {
            checkpoint,
            state: ProjectionState::CatchingUp,
            last_lag_ms: 0,
            events_applied: 0,
            rebuild: None,
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
            status: Arc::new(status_tx),
            control: control_rx,
            config,
            rebuild: None,
            resume,
        };
        let task = tokio::spawn(runner.run(shutdown));
        Ok((handle, task))
    }

    async fn run(mut self, shutdown: Shutdown) {
        if let Some((next, position)) = self.resume.take() {
            tracing::info!(
                projection = self.projection.name(),
                generation = next.number,
                position,
                "resuming the rebuild a previous process left unfinished"
            );
            self.start_replay(next, position, 0, &shutdown);
        }
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
                        self.handle_control(ctl, &shutdown).await;
                        continue;
                    }
                    done = rebuild_done(&mut self.rebuild) => {
                        self.rebuild = None;
                        self.finish_rebuild(done, &shutdown).await;
                        continue;
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
        // The replay watches the same shutdown; its committed batches stay in the new copy's
        // file, and the next process resumes from them.
        if let Some(rebuild) = self.rebuild.take() {
            let _ = rebuild.task.await;
        }
        self.status
            .send_modify(|s| s.state = ProjectionState::Stopped);
    }

    async fn handle_control(&mut self, ctl: Control, shutdown: &Shutdown) {
        match ctl {
            Control::Rebuild(ack) => {
                if self.rebuild.is_some() {
                    let _ = ack.send(Ok(()));
                    return;
                }
                let (db, projection) = (self.db.clone(), self.projection.clone());
                let opened =
                    tokio::task::spawn_blocking(move || db.open_next(projection.as_ref(), false))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                let r = match opened {
                    Ok(Some((next, position))) => {
                        tracing::info!(
                            projection = self.projection.name(),
                            generation = next.number,
                            target = self.store.head_position(),
                            "blue/green rebuild started"
                        );
                        self.start_replay(next, position, 0, shutdown);
                        Ok(())
                    }
                    Ok(None) => Err("the new copy of the read model was not created".into()),
                    Err(e) => Err(e),
                };
                let _ = ack.send(r);
            }
        }
    }

    /// Starts the replay task filling `next` from `position`, after a pause when the previous
    /// attempt failed (`failures` > 0).
    fn start_replay(
        &mut self,
        next: Arc<Generation>,
        position: Position,
        failures: u32,
        shutdown: &Shutdown,
    ) {
        let target = self.store.head_position().max(position);
        self.status.send_modify(|s| {
            let error = s.rebuild.take().and_then(|r| r.error);
            s.rebuild = Some(RebuildProgress {
                position,
                target,
                error,
            });
        });
        let (done_tx, done) = oneshot::channel();
        let replay = Replay {
            projection: self.projection.clone(),
            store: self.store.clone(),
            status: self.status.clone(),
            hook: self.config.rebuild_hook.clone(),
            next,
            position,
            target,
        };
        let task = tokio::spawn(replay.run(failures, done_tx, shutdown.clone()));
        self.rebuild = Some(Rebuild { done, task });
    }

    /// The replay has caught up with the serving copy: applies what the serving copy applied
    /// since (nothing else runs on this task meanwhile, so the serving checkpoint stands
    /// still), then switches. On failure the replay starts again from where the new copy is.
    async fn finish_rebuild(
        &mut self,
        done: Result<(Arc<Generation>, Position), oneshot::error::RecvError>,
        shutdown: &Shutdown,
    ) {
        let Ok((next, mut position)) = done else {
            // The replay task panicked: take the new copy up again from its file.
            self.rebuild_failed("the rebuild's replay task ended unexpectedly".into());
            let (db, projection) = (self.db.clone(), self.projection.clone());
            match tokio::task::spawn_blocking(move || db.open_next(projection.as_ref(), true)).await
            {
                Ok(Ok(Some((next, position)))) => self.start_replay(next, position, 1, shutdown),
                _ => self.status.send_modify(|s| s.rebuild = None),
            }
            return;
        };
        let serving = self.status.borrow().checkpoint;
        let mut applied = 0u64;
        let switched: Result<Arc<Generation>, String> = async {
            while position < serving {
                let limit = ((serving - position) as usize).min(PROJECTION_BATCH_EVENTS);
                let events = self
                    .store
                    .read_all(position + 1, limit)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Err(format!("the log has nothing after {position}"));
                };
                let (g, p) = (next.clone(), self.projection.clone());
                let n = events.len() as u64;
                tokio::task::spawn_blocking(move || g.apply_batch(p.as_ref(), &events))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                position = last;
                applied += n;
            }
            if let Some(hook) = &self.config.rebuild_hook {
                let g = next.clone();
                tokio::task::spawn_blocking(move || g.make_durable())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                hook(RebuildMoment::Switching, position);
            }
            let (db, g) = (self.db.clone(), next.clone());
            tokio::task::spawn_blocking(move || db.switch_to(g))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        match switched {
            Ok(old) => {
                if let Some(hook) = &self.config.rebuild_hook {
                    hook(RebuildMoment::Switched, position);
                }
                tracing::info!(
                    projection = self.projection.name(),
                    generation = next.number,
                    position,
                    "rebuild switched to the new copy"
                );
                self.status.send_modify(|s| {
                    s.events_applied += applied;
                    s.rebuild = None;
                });
                retire(old);
            }
            Err(e) => {
                self.rebuild_failed(format!("switching to the new copy: {e}"));
                self.status.send_modify(|s| s.events_applied += applied);
                self.start_replay(next, position, 1, shutdown);
            }
        }
    }

    fn rebuild_failed(&self, error: String) {
        tracing::error!(projection = self.projection.name(), %error, "rebuild step failed; will retry");
        self.status.send_modify(|s| {
            if let Some(r) = &mut s.rebuild {
                r.error = Some(error);
            }
        });
    }

    /// Reports `Live` once everything committed has been applied. Without it a runner that
    /// reached the head (end of catch-up, an empty log, a retry that found nothing new) kept
    /// its old state until the next event arrived, possibly forever.
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

/// Waits for the running rebuild's replay to hand back its copy; never ready without one.
async fn rebuild_done(
    rebuild: &mut Option<Rebuild>,
) -> Result<(Arc<Generation>, Position), oneshot::error::RecvError> {
    match rebuild {
        Some(r) => (&mut r.done).await,
        None => std::future::pending().await,
    }
}

/// The replay of a blue/green rebuild: fills the new copy from the log, in batches, never past
/// the serving copy's checkpoint, so that once it has reached it (and the target) the runner
/// can switch without the serving copy applying anything the new one lacks.
struct Replay {
    projection: Arc<dyn SqliteProjection>,
    store: Arc<dyn EventStore>,
    status: Arc<watch::Sender<ProjectionStatus>>,
    hook: Option<RebuildHook>,
    next: Arc<Generation>,
    position: Position,
    target: Position,
}

impl Replay {
    async fn run(
        mut self,
        mut failures: u32,
        done: oneshot::Sender<(Arc<Generation>, Position)>,
        shutdown: Shutdown,
    ) {
        let mut serving = self.status.subscribe();
        loop {
            if failures > 0 {
                let pause = Duration::from_millis(
                    REBUILD_BACKOFF.delay_ms(failures, &mut rand::thread_rng()),
                );
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            let blue = serving.borrow_and_update().checkpoint;
            if self.position >= blue {
                if self.position >= self.target {
                    let _ = done.send((self.next, self.position));
                    return;
                }
                // Level with the serving copy, which is still catching up to the target.
                tokio::select! {
                    _ = shutdown.wait() => return,
                    changed = serving.changed() => if changed.is_err() { return },
                }
                continue;
            }
            let limit = ((blue - self.position) as usize).min(PROJECTION_BATCH_EVENTS);
            let step = tokio::select! {
                _ = shutdown.wait() => return,
                step = self.step(limit) => step,
            };
            match step {
                Ok(n) => {
                    failures = 0;
                    let position = self.position;
                    self.status.send_modify(|s| {
                        s.events_applied += n;
                        if let Some(r) = &mut s.rebuild {
                            r.position = position;
                            r.error = None;
                        }
                    });
                    if let Some(hook) = &self.hook {
                        hook(RebuildMoment::Replayed, position);
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::error!(projection = self.projection.name(), %error, "rebuild replay failed; will retry");
                    self.status.send_modify(|s| {
                        if let Some(r) = &mut s.rebuild {
                            r.error = Some(error);
                        }
                    });
                }
            }
        }
    }

    /// Reads and applies one batch of at most `limit` events; returns how many.
    async fn step(&mut self, limit: usize) -> Result<u64, String> {
        let events = self
            .store
            .read_all(self.position + 1, limit)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Err(format!("the log has nothing after {}", self.position));
        };
        let n = events.len() as u64;
        let (g, p) = (self.next.clone(), self.projection.clone());
        tokio::task::spawn_blocking(move || g.apply_batch(p.as_ref(), &events))
            .await
            .map_err(|e| format!("replay task panicked: {e}"))?
            .map_err(|e| e.to_string())?;
        self.position = last;
        Ok(n)
    }
}
