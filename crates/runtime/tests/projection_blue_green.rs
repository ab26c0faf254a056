//! Proves the SQLite blue/green rebuild: under concurrent appends and queries every query answers from a complete copy (exactly the positions up to the checkpoint it reports, never fewer than an earlier query saw), read-your-writes waits hold across the switch, the switched copy equals a fresh build and the old file is removed, and a rebuild interrupted mid-replay is resumed from the new copy's own checkpoint by the next runner.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_core::{EventType, ExpectedVersion, Position, RecordedEvent, StreamId};
use ficus_runtime::{
    ProjectionError, ProjectionHandle, ProjectionRunner, ProjectionRunnerConfig, ProjectionStatus,
    RebuildMoment, Shutdown, SqliteProjection,
};
use ficus_store::sqlite::{unavailable, SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, EventStore};
use rusqlite::{params, Transaction};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// One row per applied position and a running count per stream: a copy is complete at
/// checkpoint C exactly when it holds the positions 1..=C.
struct Ledger;

impl SqliteProjection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS applied (position INTEGER PRIMARY KEY, stream TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS counts (stream TEXT PRIMARY KEY, n INTEGER NOT NULL);"
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS applied; DROP TABLE IF EXISTS counts;"
    }

    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        tx.execute(
            "INSERT INTO applied (position, stream) VALUES (?1, ?2)",
            params![event.position as i64, event.stream_id.as_str()],
        )?;
        tx.execute(
            "INSERT INTO counts (stream, n) VALUES (?1, 1)
             ON CONFLICT (stream) DO UPDATE SET n = n + 1",
            [event.stream_id.as_str()],
        )?;
        Ok(())
    }
}

fn open_store(dir: &Path) -> Arc<SqliteEventStore> {
    Arc::new(
        SqliteEventStore::open(dir.join("events.db"), SqliteConfig::default())
            .expect("open event store"),
    )
}

async fn append_n(store: &SqliteEventStore, stream: &str, n: usize) -> Position {
    let ty = EventType::new("Counted").unwrap();
    let events = (0..n)
        .map(|i| new_event(ty.clone(), json!({ "i": i })))
        .collect();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .expect("append")
        .last_position
}

/// (applied rows, max applied position, sum of counts) and the checkpoint, in one read.
async fn snapshot(handle: &ProjectionHandle) -> ((i64, i64, i64), Position) {
    handle
        .db()
        .query(|c| {
            c.query_row(
                "SELECT (SELECT COUNT(*) FROM applied),
                        (SELECT COALESCE(MAX(position), 0) FROM applied),
                        (SELECT COALESCE(SUM(n), 0) FROM counts)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(unavailable)
        })
        .await
        .expect("query never fails")
}

/// Everything the copy holds, for comparing two copies.
async fn contents(handle: &ProjectionHandle) -> (Vec<(i64, String)>, Vec<(String, i64)>) {
    handle
        .db()
        .query(|c| {
            let applied = c
                .prepare("SELECT position, stream FROM applied ORDER BY position")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            let counts = c
                .prepare("SELECT stream, n FROM counts ORDER BY stream")
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect::<rusqlite::Result<Vec<_>>>()
                })
                .map_err(unavailable)?;
            Ok((applied, counts))
        })
        .await
        .unwrap()
        .0
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebuild_under_load_serves_complete_answers_and_switches_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..40 {
        append_n(&store, &format!("s-{}", i % 7), 250).await;
    }
    let seeded = store.head_position();
    let shutdown = Shutdown::new();
    let read_dir = dir.path().join("read");
    let (handle, task) =
        ProjectionRunner::spawn(Arc::new(Ledger), &read_dir, store.clone(), shutdown.clone())
            .unwrap();
    handle.wait_for(seeded, WAIT).await.unwrap();
    assert_eq!(handle.db().generation(), 0);

    // Load during the rebuild: appends with read-your-writes waits, and queries that each
    // must see a complete copy.
    let stop = Arc::new(AtomicBool::new(false));
    let queries = Arc::new(AtomicU64::new(0));
    let queries_during_rebuild = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (handle, stop, queries) = (handle.clone(), stop.clone(), queries.clone());
        let during = queries_during_rebuild.clone();
        readers.push(tokio::spawn(async move {
            let mut floor = 0i64;
            while !stop.load(Ordering::SeqCst) {
                let rebuilding_before = handle.status().rebuild.is_some();
                let ((rows, max, sum), checkpoint) = snapshot(&handle).await;
                if rebuilding_before && handle.status().rebuild.is_some() {
                    during.fetch_add(1, Ordering::SeqCst);
                }
                assert_eq!(
                    rows, checkpoint as i64,
                    "a copy at {checkpoint} holds {rows} rows"
                );
                assert_eq!(max, checkpoint as i64);
                assert_eq!(sum, rows, "counts agree with the rows");
                assert!(rows >= floor, "the answer went back from {floor} to {rows}");
                floor = rows;
                queries.fetch_add(1, Ordering::SeqCst);
            }
            floor
        }));
    }
    let writer = {
        let (store, handle, stop) = (store.clone(), handle.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let last = append_n(&store, &format!("live-{}", i % 3), 5).await;
                // Read-your-writes across the switch: once waited for, the answer has it.
                handle.wait_for(last, WAIT).await.unwrap();
                let ((rows, _, _), checkpoint) = snapshot(&handle).await;
                assert!(checkpoint >= last && rows >= last as i64);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };

    handle.rebuild().await.expect("rebuild starts");
    let during = handle.status();
    let progress = during.rebuild.expect("the rebuild's progress is reported");
    assert!(progress.target >= seeded);
    eventually(&handle, "switched", |s| s.rebuild.is_none()).await;
    assert_eq!(handle.db().generation(), 1);
    // Keep the load on a little past the switch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.expect("writer");
    for r in readers {
        r.await.expect("reader saw only complete answers");
    }
    assert!(queries.load(Ordering::SeqCst) > 10);
    assert!(
        queries_during_rebuild.load(Ordering::SeqCst) > 0,
        "some queries ran while the new copy was being built"
    );

    let head = store.head_position();
    handle.wait_for(head, WAIT).await.unwrap();
    let rebuilt = contents(&handle).await;
    assert_eq!(rebuilt.0.len() as u64, head);
    let deadline = Instant::now() + WAIT;
    while read_dir.join("ledger.db").exists() {
        assert!(
            Instant::now() < deadline,
            "the old copy's file is removed once unused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(read_dir.join("ledger.g1.db").exists());
    shutdown.trigger();
    task.await.unwrap();

    // A fresh build of the same log, in another directory, holds the same.
    let fresh_dir = dir.path().join("fresh");
    let shutdown = Shutdown::new();
    let (fresh, task) = ProjectionRunner::spawn(
        Arc::new(Ledger),
        &fresh_dir,
        store.clone(),
        shutdown.clone(),
    )
    .unwrap();
    fresh.wait_for(head, WAIT).await.unwrap();
    assert_eq!(contents(&fresh).await, rebuilt);
    shutdown.trigger();
    task.await.unwrap();

    // Reopened, the runner serves the switched copy (the pointer file), not generation 0.
    let shutdown = Shutdown::new();
    let (again, task) =
        ProjectionRunner::spawn(Arc::new(Ledger), &read_dir, store.clone(), shutdown.clone())
            .unwrap();
    assert_eq!(again.db().generation(), 1);
    assert_eq!(again.status().checkpoint, head);
    assert_eq!(contents(&again).await, rebuilt);
    shutdown.trigger();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_resumes_from_the_new_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..20 {
        append_n(&store, &format!("r-{}", i % 4), 250).await;
    }
    let head = store.head_position();
    let read_dir = dir.path().join("read");

    // The first runner stops (as a crash would, at a batch boundary) right after the
    // replay's first batch committed.
    let shutdown = Shutdown::new();
    let stopper = shutdown.clone();
    let config = ProjectionRunnerConfig {
        rebuild_hook: Some(Arc::new(move |moment, _| {
            if moment == RebuildMoment::Replayed {
                stopper.trigger();
            }
        })),
    };
    let (handle, task) = ProjectionRunner::spawn_with(
        Arc::new(Ledger),
        &read_dir,
        store.clone(),
        shutdown.clone(),
        config,
    )
    .unwrap();
    handle.wait_for(head, WAIT).await.unwrap();
    let before = contents(&handle).await;
    handle.rebuild().await.unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(handle.db().generation(), 0, "the old copy still serves");
    let replayed = handle
        .status()
        .rebuild
        .expect("the rebuild was under way")
        .position;
    assert!(
        replayed > 0 && replayed < head,
        "stopped mid-replay at {replayed}"
    );
    drop(handle);

    // The next runner serves the old copy at once and finishes the rebuild from `replayed`.
    let shutdown = Shutdown::new();
    let (handle, task) =
        ProjectionRunner::spawn(Arc::new(Ledger), &read_dir, store.clone(), shutdown.clone())
            .unwrap();
    assert_eq!(handle.db().generation(), 0);
    assert_eq!(contents(&handle).await, before);
    let status = eventually(&handle, "resumed rebuild switched", |s| s.rebuild.is_none()).await;
    assert_eq!(handle.db().generation(), 1);
    assert_eq!(
        status.events_applied,
        head - replayed,
        "the resumed replay applied only what the new copy lacked"
    );
    assert_eq!(contents(&handle).await, before);
    shutdown.trigger();
    task.await.unwrap();
}
