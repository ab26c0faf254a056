//! Proves the projection runner against a real SQLite event store: it catches up and goes live, answers read-your-writes waits, resumes from its checkpoint after a restart with no event applied twice, rolls a failed batch back atomically and recovers, rebuilds to identical tables, and serves queries with a consistent checkpoint.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_core::{EventType, ExpectedVersion, Position, RecordedEvent, StreamId};
use ficus_runtime::{
    ProjectionError, ProjectionHandle, ProjectionRunner, ProjectionState, ProjectionStatus,
    ReadModelDb, Shutdown, SqliteProjection, WaitError,
};
use ficus_store::sqlite::{unavailable, SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, AppendResult, EventStore, MAX_READ_LIMIT};
use rusqlite::{params, Connection, Transaction};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// Counts events per stream. `applied`'s PRIMARY KEY makes applying a position twice an error.
/// An event whose payload is `{"poison": true}` fails to apply until `heal` is set.
struct Counter {
    heal: AtomicBool,
    poison_failures: AtomicUsize,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            heal: AtomicBool::new(false),
            poison_failures: AtomicUsize::new(0),
        })
    }
}

impl SqliteProjection for Counter {
    fn name(&self) -> &str {
        "counter"
    }

    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS counts (
             stream TEXT PRIMARY KEY,
             n INTEGER NOT NULL,
             last_position INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY);"
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS counts; DROP TABLE IF EXISTS applied;"
    }

    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        // Written first, so a failure later in the batch has something to roll back.
        tx.execute(
            "INSERT INTO applied (position) VALUES (?1)",
            [event.position as i64],
        )?;
        if event.payload.get("poison") == Some(&Value::Bool(true))
            && !self.heal.load(Ordering::SeqCst)
        {
            self.poison_failures.fetch_add(1, Ordering::SeqCst);
            return Err(ProjectionError::Other(format!(
                "poison event at position {}",
                event.position
            )));
        }
        tx.execute(
            "INSERT INTO counts (stream, n, last_position) VALUES (?1, 1, ?2)
             ON CONFLICT (stream) DO UPDATE SET n = n + 1, last_position = ?2",
            params![event.stream_id.as_str(), event.position as i64],
        )?;
        Ok(())
    }
}

/// Everything the read model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tables {
    /// (stream, n, last_position), by stream.
    counts: Vec<(String, i64, i64)>,
    /// Applied positions, ascending.
    applied: Vec<i64>,
}

fn read_tables(conn: &Connection) -> rusqlite::Result<Tables> {
    let counts = conn
        .prepare("SELECT stream, n, last_position FROM counts ORDER BY stream")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let applied = conn
        .prepare("SELECT position FROM applied ORDER BY position")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Tables { counts, applied })
}

async fn tables(db: &ReadModelDb) -> (Tables, Position) {
    db.query(|c| read_tables(c).map_err(unavailable))
        .await
        .expect("read model query")
}

fn open_store(dir: &Path) -> Arc<SqliteEventStore> {
    Arc::new(
        SqliteEventStore::open(dir.join("events.db"), SqliteConfig::default())
            .expect("open event store"),
    )
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

async fn append_n(store: &SqliteEventStore, stream: &str, n: usize) -> AppendResult {
    let events = (0..n)
        .map(|i| new_event(EventType::new("Counted").unwrap(), json!({ "i": i })))
        .collect();
    store
        .append(&sid(stream), ExpectedVersion::Any, events)
        .await
        .expect("append")
}

/// What the read model must hold once it has applied the whole log.
async fn expected_tables(store: &dyn EventStore) -> Tables {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = all.last().map_or(1, |e| e.position + 1);
        let page = store.read_all(from, MAX_READ_LIMIT).await.unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page);
    }
    let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for e in &all {
        let c = counts.entry(e.stream_id.to_string()).or_default();
        c.0 += 1;
        c.1 = e.position as i64;
    }
    Tables {
        counts: counts.into_iter().map(|(s, (n, p))| (s, n, p)).collect(),
        applied: all.iter().map(|e| e.position as i64).collect(),
    }
}

fn spawn(
    projection: Arc<Counter>,
    dir: &Path,
    store: Arc<SqliteEventStore>,
    shutdown: &Shutdown,
) -> (ProjectionHandle, JoinHandle<()>) {
    ProjectionRunner::spawn(projection, &dir.join("read"), store, shutdown.clone())
        .expect("spawn projection runner")
}

/// Polls the runner's status until `pred` holds; panics with the last status after [`WAIT`].
async fn eventually(
    handle: &ProjectionHandle,
    what: &str,
    pred: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = handle.status();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: status stayed {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn stop(shutdown: &Shutdown, task: JoinHandle<()>) {
    shutdown.trigger();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("runner did not stop on shutdown")
        .expect("runner task panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_applies_history_then_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    // More than one catch-up page and more than one projection batch.
    for i in 0..30 {
        append_n(&store, &format!("acct-{}", i % 3), 50).await;
    }
    let head = store.head_position();
    assert_eq!(head, 1500);

    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);
    assert_eq!(handle.wait_for(head, WAIT).await.unwrap(), head);
    let status = eventually(&handle, "caught up", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, head);
    assert_eq!(status.events_applied, head);
    assert_eq!(handle.lag_events(), 0);
    assert_eq!(handle.db().checkpoint().unwrap(), head);

    let (t, checkpoint) = tables(handle.db()).await;
    assert_eq!(checkpoint, head);
    assert_eq!(t, expected_tables(store.as_ref()).await);
    assert_eq!(
        t.counts.iter().map(|c| c.1).collect::<Vec<_>>(),
        [500, 500, 500]
    );
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_are_applied_and_waits_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);
    // An empty log is already the head.
    eventually(&handle, "live on an empty log", |s| {
        s.state == ProjectionState::Live
    })
    .await;

    let mut last = 0;
    for i in 0..5 {
        let r = append_n(&store, &format!("live-{}", i % 2), 3).await;
        let reached = handle.wait_for(r.last_position, WAIT).await.unwrap();
        assert!(reached >= r.last_position);
        // Read-your-writes: once waited for, the query sees the append.
        let (t, checkpoint) = tables(handle.db()).await;
        assert!(checkpoint >= r.last_position);
        assert!(t.applied.contains(&(r.last_position as i64)));
        last = r.last_position;
    }
    assert_eq!(last, 15);
    let status = eventually(&handle, "live after live events", |s| {
        s.state == ProjectionState::Live && s.checkpoint == 15
    })
    .await;
    assert_eq!(status.events_applied, 15);
    assert_eq!(
        tables(handle.db()).await.0,
        expected_tables(store.as_ref()).await
    );

    // A position that never arrives: a bounded wait reports the lag.
    let started = Instant::now();
    match handle.wait_for(last + 10, Duration::from_millis(150)).await {
        Err(WaitError::Lagging { checkpoint, wanted }) => {
            assert_eq!((checkpoint, wanted), (last, last + 10));
        }
        other => panic!("expected Lagging, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(started.elapsed() < Duration::from_secs(5));

    stop(&shutdown, task).await;
    assert_eq!(handle.status().state, ProjectionState::Stopped);
    assert!(matches!(
        handle.wait_for(last + 1, WAIT).await,
        Err(WaitError::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_checkpoint_without_reapplying() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..4 {
        append_n(&store, &format!("r-{}", i % 2), 25).await;
    }
    let first_head = store.head_position();

    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);
    handle.wait_for(first_head, WAIT).await.unwrap();
    stop(&shutdown, task).await;
    assert_eq!(handle.status().state, ProjectionState::Stopped);

    // Written while the projection is down: not applied by anybody yet.
    for i in 0..5 {
        append_n(&store, &format!("r-{}", i % 3), 10).await;
    }
    let head = store.head_position();
    assert_eq!(head, first_head + 50);
    assert_eq!(handle.db().checkpoint().unwrap(), first_head);
    drop(handle);

    // A new process: the event store and the read model are opened again from disk.
    store.shutdown().await;
    drop(store);
    let store = open_store(dir.path());
    assert_eq!(store.head_position(), head);

    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);
    assert_eq!(
        handle.status().checkpoint,
        first_head,
        "starts at its checkpoint"
    );
    handle.wait_for(head, WAIT).await.unwrap();
    let status = eventually(&handle, "resumed", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, head);
    assert_eq!(
        status.events_applied,
        head - first_head,
        "the restarted runner applies only what it had not applied"
    );
    let (t, checkpoint) = tables(handle.db()).await;
    assert_eq!(checkpoint, head);
    assert_eq!(t.applied, (1..=head as i64).collect::<Vec<_>>());
    assert_eq!(t, expected_tables(store.as_ref()).await);
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batch_rolls_back_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    append_n(&store, "p-1", 10).await;
    let projection = Counter::new();
    let shutdown = Shutdown::new();
    let (handle, task) = spawn(projection.clone(), dir.path(), store.clone(), &shutdown);
    handle.wait_for(10, WAIT).await.unwrap();
    let before = tables(handle.db()).await;
    assert_eq!(before.1, 10);

    // One append, one batch: good, good, poison, good.
    let ty = EventType::new("Counted").unwrap();
    let batch = vec![
        new_event(ty.clone(), json!({ "i": 0 })),
        new_event(ty.clone(), json!({ "i": 1 })),
        new_event(ty.clone(), json!({ "poison": true })),
        new_event(ty, json!({ "i": 3 })),
    ];
    let r = store
        .append(&sid("p-2"), ExpectedVersion::Any, batch)
        .await
        .unwrap();
    assert_eq!((r.first_position, r.last_position), (11, 14));

    let status = eventually(&handle, "failed", |s| {
        matches!(s.state, ProjectionState::Failed { .. })
    })
    .await;
    let ProjectionState::Failed { error } = &status.state else {
        unreachable!()
    };
    assert!(error.contains("poison event at position 13"), "{error}");
    // Let it retry at least once: still failing, never skipping.
    let deadline = Instant::now() + WAIT;
    while projection.poison_failures.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the failed batch was not retried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = handle.status();
    assert!(matches!(status.state, ProjectionState::Failed { .. }));
    assert_eq!(status.checkpoint, 10);
    assert_eq!(handle.db().checkpoint().unwrap(), 10);
    // Nothing of the failed batch is visible: not even the rows written before the poison.
    assert_eq!(tables(handle.db()).await, before);
    assert!(matches!(
        handle.wait_for(11, Duration::from_millis(20)).await,
        Err(WaitError::Lagging {
            checkpoint: 10,
            wanted: 11
        })
    ));

    projection.heal.store(true, Ordering::SeqCst);
    handle.wait_for(14, WAIT).await.unwrap();
    let status = eventually(&handle, "recovered", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, 14);
    assert_eq!(status.events_applied, 14, "each event applied exactly once");
    let (t, checkpoint) = tables(handle.db()).await;
    assert_eq!(checkpoint, 14);
    assert_eq!(t.applied, (1..=14).collect::<Vec<_>>());
    assert_eq!(t, expected_tables(store.as_ref()).await);
    assert_eq!(
        t.counts,
        [("p-1".to_string(), 10, 10), ("p-2".to_string(), 4, 14)]
    );
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_reproduces_the_same_tables() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..12 {
        append_n(&store, &format!("rb-{}", i % 4), 100).await;
    }
    let head = store.head_position();
    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);
    handle.wait_for(head, WAIT).await.unwrap();
    let (before, checkpoint) = tables(handle.db()).await;
    assert_eq!(checkpoint, head);
    assert_eq!(before, expected_tables(store.as_ref()).await);
    assert_eq!(handle.status().events_applied, head);

    handle.rebuild().await.expect("rebuild");
    // Blue/green: the serving copy keeps its checkpoint while the new one is built.
    assert_eq!(handle.status().checkpoint, head);
    let status = eventually(&handle, "rebuilt", |s| {
        s.rebuild.is_none() && s.events_applied == 2 * head
    })
    .await;
    assert_eq!(status.state, ProjectionState::Live);
    assert_eq!(status.checkpoint, head);
    assert_eq!(handle.db().generation(), 1, "switched to the new copy");
    assert_eq!(
        status.events_applied,
        2 * head,
        "the rebuild replayed the whole log once"
    );
    let (after, checkpoint) = tables(handle.db()).await;
    assert_eq!(checkpoint, head);
    assert_eq!(after, before);

    // Still live after the rebuild.
    let r = append_n(&store, "rb-new", 2).await;
    handle.wait_for(r.last_position, WAIT).await.unwrap();
    assert_eq!(
        tables(handle.db()).await.0,
        expected_tables(store.as_ref()).await
    );
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_returns_the_checkpoint_of_the_data_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let shutdown = Shutdown::new();
    let (handle, task) = spawn(Counter::new(), dir.path(), store.clone(), &shutdown);

    const APPENDS: u64 = 150;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..APPENDS {
                append_n(&store, &format!("q-{}", i % 3), 1 + (i % 3) as usize).await;
            }
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let ((count, max, sum), checkpoint) = handle
            .db()
            .query(|c| {
                c.query_row(
                    "SELECT (SELECT COUNT(*) FROM applied),
                            (SELECT COALESCE(MAX(position), 0) FROM applied),
                            (SELECT COALESCE(SUM(n), 0) FROM counts)",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(unavailable)
            })
            .await
            .unwrap();
        let checkpoint = checkpoint as i64;
        assert_eq!(
            (count, max, sum),
            (checkpoint, checkpoint, checkpoint),
            "data read does not match the checkpoint returned with it"
        );
        seen.insert(checkpoint);
        if writer.is_finished() && checkpoint as u64 == store.head_position() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projection never reached the head"
        );
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(store.head_position(), APPENDS * 2);
    assert!(seen.len() > 2, "queries only ever saw {seen:?}");
    stop(&shutdown, task).await;
}
