//! Events and the jobs they cause commit together on the embedded store: both or neither,
//! even when other appends share the same group commit.

use std::sync::Arc;

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{new_event, EventStore, JobQueue, NewJob, StoreError};
use serde_json::json;

fn setup() -> (tempfile::TempDir, Arc<SqliteEventStore>, SqliteJobQueue) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let jobs = SqliteJobQueue::new(store.clone());
    (dir, store, jobs)
}

fn ev(n: u64) -> ficus_core::NewEvent {
    new_event(EventType::new("OrderPlaced").unwrap(), json!({ "n": n }))
}

async fn queued(jobs: &SqliteJobQueue, queue: &str) -> u64 {
    jobs.stats(0)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.queue == queue)
        .map_or(0, |s| s.ready + s.delayed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_jobs_commit_together() {
    let (_dir, store, jobs) = setup();
    let s = StreamId::new("order-1").unwrap();
    let (appended, enqueued) = jobs
        .append_and_enqueue(
            &s,
            ExpectedVersion::NoStream,
            vec![ev(1)],
            vec![NewJob::new("mail", "send_receipt", json!({"order": "1"}))],
            0,
        )
        .await
        .unwrap();
    assert_eq!((appended.first_version, appended.last_position), (1, 1));
    assert_eq!(enqueued.len(), 1);
    assert!(enqueued[0].created);
    assert_eq!(store.read_stream(&s, 1, 10).await.unwrap().len(), 1);
    assert_eq!(queued(&jobs, "mail").await, 1);

    // A refused expectation enqueues nothing.
    let r = jobs
        .append_and_enqueue(
            &s,
            ExpectedVersion::NoStream,
            vec![ev(2)],
            vec![NewJob::new("mail", "send_receipt", json!({"order": "1b"}))],
            0,
        )
        .await;
    assert!(matches!(
        r,
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert_eq!(queued(&jobs, "mail").await, 1);
    assert_eq!(store.head_position(), 1);

    // An invalid job writes no event.
    let bad = NewJob {
        max_attempts: 0,
        ..NewJob::new("mail", "x", json!({}))
    };
    let r = jobs
        .append_and_enqueue(&s, ExpectedVersion::Any, vec![ev(3)], vec![bad], 0)
        .await;
    assert!(matches!(r, Err(StoreError::Invalid(_))));
    assert_eq!(store.head_position(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_op_undoes_only_its_own_append() {
    let (_dir, store, _jobs) = setup();
    // Many appends at once, every third one with an op that refuses: they share group
    // commits, and only the refused ones vanish.
    let mut tasks = Vec::new();
    for i in 0..60u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = StreamId::new(format!("mixed-{i}")).unwrap();
            if i % 3 == 0 {
                store
                    .append_with(&s, ExpectedVersion::NoStream, vec![ev(i), ev(i)], |_c| {
                        Err::<(), _>(StoreError::Invalid("refused by the op".into()))
                    })
                    .await
                    .map(|(r, _)| r)
            } else {
                store
                    .append(&s, ExpectedVersion::NoStream, vec![ev(i), ev(i)])
                    .await
            }
        }));
    }
    let mut ok = 0;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(_) => {
                assert_ne!(i % 3, 0);
                ok += 1;
            }
            Err(StoreError::Invalid(m)) => {
                assert_eq!(i % 3, 0);
                assert!(m.contains("refused"));
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 40);
    // The log is gapless and holds exactly the accepted appends.
    let log = store.read_all(1, 1000).await.unwrap();
    assert_eq!(log.len(), 80);
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1);
        let n: u64 = e.stream_id.as_str()["mixed-".len()..].parse().unwrap();
        assert_ne!(n % 3, 0, "a refused append left an event behind");
    }
    assert_eq!(store.head_position(), 80);
    // Refused streams do not exist; a later append to one starts at version 1.
    let s = StreamId::new("mixed-0").unwrap();
    assert_eq!(store.stream_version(&s).await.unwrap(), 0);
    let r = store
        .append(&s, ExpectedVersion::NoStream, vec![ev(0)])
        .await
        .unwrap();
    assert_eq!((r.first_version, r.first_position), (1, 81));
}
