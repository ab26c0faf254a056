//! Under injected storage faults (disk full, fsync error, short write, slow disk) the SQLite
//! event store refuses writes without acknowledging any, keeps serving reads, keeps its
//! stream versions consistent, recovers without a restart once the fault clears, and after
//! reopening the file holds every acknowledged event and no refused one.

use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::sqlite::{FaultPlan, SqliteConfig, SqliteEventStore, StorageFault};
use ficus_store::{new_event, EventStore, StoreError};
use serde_json::json;

fn ev(tag: &str) -> ficus_core::NewEvent {
    new_event(EventType::new("Noted").unwrap(), json!({ "tag": tag }))
}

fn open(path: &std::path::Path, plan: Option<Arc<FaultPlan>>) -> Arc<SqliteEventStore> {
    let config = SqliteConfig {
        faults: plan,
        ..SqliteConfig::default()
    };
    Arc::new(SqliteEventStore::open(path, config).unwrap())
}

/// Every event of the log, as (stream, version, tag), read on a fresh default-VFS store.
async fn reopened_log(path: &std::path::Path) -> Vec<(String, u64, String)> {
    let store = open(path, None);
    let all = store.read_all(1, 10_000).await.unwrap();
    store.shutdown().await;
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        positions, expected,
        "positions have no gaps after reopening"
    );
    all.into_iter()
        .map(|e| {
            (
                e.stream_id.as_str().to_owned(),
                e.version,
                e.payload["tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn tags(log: &[(String, u64, String)]) -> Vec<&str> {
    log.iter().map(|(_, _, t)| t.as_str()).collect()
}

/// Disk full and short writes fail the batch before its commit is valid: a plain refusal.
async fn refuses_and_recovers(fault: StorageFault) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let plan = FaultPlan::new();
    let store = open(&path, Some(plan.clone()));
    let s = StreamId::new("acct-1").unwrap();
    for i in 0..3 {
        store
            .append(&s, ExpectedVersion::Exact(i), vec![ev(&format!("ack-{i}"))])
            .await
            .unwrap();
    }
    assert_eq!(store.storage_fault(), None);

    plan.set(Some(fault));
    // Several callers queued at once share one group commit: every one of them is refused.
    let mut calls = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        let s = StreamId::new(format!("other-{i}")).unwrap();
        calls.push(tokio::spawn(async move {
            store
                .append(&s, ExpectedVersion::Any, vec![ev("refused")])
                .await
        }));
    }
    for c in calls {
        let r = c.await.unwrap();
        assert!(
            matches!(r, Err(StoreError::StorageFault(_))),
            "{fault:?}: {r:?}"
        );
    }
    let r = store
        .append(&s, ExpectedVersion::Exact(3), vec![ev("refused")])
        .await;
    assert!(matches!(r, Err(StoreError::StorageFault(_))), "{r:?}");
    // Write ops (jobs, idempotency keys, checkpoints) are refused the same way.
    let r = store.probe_write().await;
    assert!(matches!(r, Err(StoreError::StorageFault(_))), "{r:?}");
    assert!(plan.injected() > 0);
    let why = store.storage_fault().expect("the fault is reported");
    assert!(!why.is_empty());

    // Reads keep working and show only what was acknowledged.
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
    assert_eq!(store.read_all(1, 100).await.unwrap().len(), 3);
    assert_eq!(store.head_position(), 3);

    // A probe while the fault lasts fails and leaves the fault reported.
    assert!(store.probe_write().await.is_err());
    assert!(store.storage_fault().is_some());

    plan.clear();
    store.probe_write().await.unwrap();
    assert_eq!(
        store.storage_fault(),
        None,
        "a successful write clears the fault"
    );
    // The version cache did not advance for the refused batch: version 3 is still current.
    let r = store
        .append(&s, ExpectedVersion::Exact(3), vec![ev("ack-3")])
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (4, 4));
    let refused_again = store
        .append(&s, ExpectedVersion::Exact(3), vec![ev("conflict")])
        .await;
    assert!(matches!(
        refused_again,
        Err(StoreError::WrongExpectedVersion { actual: 4, .. })
    ));
    store.shutdown().await;
    drop(store);

    let log = reopened_log(&path).await;
    assert_eq!(
        tags(&log),
        ["ack-0", "ack-1", "ack-2", "ack-3"],
        "{fault:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_refuses_writes_and_recovers_when_space_returns() {
    refuses_and_recovers(StorageFault::DiskFull).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_write_refuses_writes_and_recovers() {
    refuses_and_recovers(StorageFault::ShortWrite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_error_answers_outcome_unknown_then_refuses_until_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let plan = FaultPlan::new();
    let store = open(&path, Some(plan.clone()));
    let s = StreamId::new("acct-1").unwrap();
    for i in 0..2 {
        store
            .append(&s, ExpectedVersion::Exact(i), vec![ev(&format!("ack-{i}"))])
            .await
            .unwrap();
    }
    let mut live = store.live();

    plan.set(Some(StorageFault::FsyncError));
    // Committed to the WAL, but its fsync failed: not acknowledged, outcome unknown.
    let r = store
        .append(&s, ExpectedVersion::Exact(2), vec![ev("unknown")])
        .await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "{r:?}");
    // From now on the store refuses (nothing written) until a recovery succeeds.
    for _ in 0..3 {
        let r = store
            .append(&s, ExpectedVersion::Any, vec![ev("refused")])
            .await;
        assert!(matches!(r, Err(StoreError::StorageFault(_))), "{r:?}");
    }
    assert!(store
        .storage_fault()
        .is_some_and(|why| why.contains("fsync")));
    // Reads work and never show the unacknowledged event.
    assert_eq!(store.head_position(), 2);
    assert_eq!(store.stream_version(&s).await.unwrap(), 2);
    assert_eq!(store.read_all(1, 100).await.unwrap().len(), 2);

    plan.clear();
    // The first write after the fault runs the recovery: the head is re-read from the file,
    // which holds the event whose outcome was unknown; it is now durable and published.
    let r = store
        .append(&s, ExpectedVersion::Exact(3), vec![ev("ack-after")])
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (4, 4));
    assert_eq!(store.storage_fault(), None);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(5), live.recv())
            .await
            .expect("live batches after the recovery")
            .unwrap();
        seen.extend(batch.iter().map(|e| e.position));
    }
    assert_eq!(
        seen,
        [3, 4],
        "the recovered event is published before the next one"
    );
    store.shutdown().await;
    drop(store);

    let log = reopened_log(&path).await;
    assert_eq!(tags(&log), ["ack-0", "ack-1", "unknown", "ack-after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_error_recovery_waits_until_the_fault_clears() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let plan = FaultPlan::new();
    let store = open(&path, Some(plan.clone()));
    let s = StreamId::new("acct-1").unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("ack-0")])
        .await
        .unwrap();
    plan.set(Some(StorageFault::FsyncError));
    let r = store.probe_write().await;
    assert!(matches!(r, Err(StoreError::OutcomeUnknown(_))), "{r:?}");
    // The fault changes to a full disk: the recovery's checkpoint cannot write either.
    plan.set(Some(StorageFault::DiskFull));
    let r = store
        .append(&s, ExpectedVersion::Any, vec![ev("refused")])
        .await;
    assert!(matches!(r, Err(StoreError::StorageFault(_))), "{r:?}");
    assert!(store.storage_fault().is_some());
    plan.clear();
    store.probe_write().await.unwrap();
    assert_eq!(store.storage_fault(), None);
    store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("ack-1")])
        .await
        .unwrap();
    store.shutdown().await;
    drop(store);
    assert_eq!(tags(&reopened_log(&path).await), ["ack-0", "ack-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_disk_delays_but_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let plan = FaultPlan::new();
    let store = open(&path, Some(plan.clone()));
    plan.set(Some(StorageFault::SlowDisk { delay_ms: 20 }));
    let mut calls = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        calls.push(tokio::spawn(async move {
            let s = StreamId::new(format!("s-{i}")).unwrap();
            store
                .append(&s, ExpectedVersion::NoStream, vec![ev(&format!("ack-{i}"))])
                .await
        }));
    }
    for c in calls {
        c.await.unwrap().unwrap();
    }
    assert!(plan.injected() > 0, "the slow disk was in the path");
    assert_eq!(store.storage_fault(), None, "slow is not a fault");
    plan.clear();
    store.shutdown().await;
    drop(store);
    let log = reopened_log(&path).await;
    let mut got: Vec<&str> = tags(&log);
    got.sort_unstable();
    let mut want: Vec<String> = (0..16).map(|i| format!("ack-{i}")).collect();
    want.sort_unstable();
    assert_eq!(got, want);
}
