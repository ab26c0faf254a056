//! The PostgreSQL job queue passes the shared JobQueue conformance suite against the real
//! server named by `FICUS_TEST_PG_URL`, each check in a schema of its own (migrated by opening
//! the event store) that is dropped afterwards. Without the variable the checks are skipped.

use std::any::Any;
use std::sync::Arc;

use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{PgEventStore, PgJobQueue};
use ficus_store::JobQueue;

async fn make() -> Option<(Arc<dyn JobQueue>, Box<dyn Any + Send>)> {
    let url = test_url()?;
    let (mut config, guard) = fresh_schema(&url, "jobs");
    config.pool_size = 8;
    let store = PgEventStore::open(config)
        .await
        .expect("open the PostgreSQL event store");
    let queue = PgJobQueue::for_store(&store);
    // The store goes before the guard drops the schema (tuple fields drop in order).
    Some((Arc::new(queue), Box::new((store, guard))))
}

ficus_store::job_queue_conformance!(optional make);

// Beyond the suite: what only a shared server can show. Two queues with their own connection
// pools and listeners stand for two processes sharing the schema.

use std::collections::HashSet;
use std::time::Duration;

use ficus_store::postgres::{pool, PgConfig};
use ficus_store::{BatchState, NewBatch, NewJob};
use serde_json::json;

const BASE: i64 = 1_000_000;

/// A migrated fresh schema, its store (process one's queue shares its pool) and a second
/// queue on a pool of its own.
async fn two_processes(tag: &str) -> Option<(PgJobQueue, PgJobQueue, PgEventStore, impl Drop)> {
    let url = test_url()?;
    let (mut config, guard) = fresh_schema(&url, tag);
    config.pool_size = 4;
    let store = PgEventStore::open(config.clone())
        .await
        .expect("open the PostgreSQL event store");
    let one = PgJobQueue::for_store(&store);
    let other: PgConfig = config;
    let two = PgJobQueue::new(pool(&other).expect("pool"), &other);
    Some((one, two, store, guard))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_jobs_and_fan_in_once() {
    let Some((one, two, _store, _guard)) = two_processes("procs").await else {
        return;
    };
    const ITEMS: usize = 400;
    let items = (0..ITEMS)
        .map(|i| NewJob::new("bq", "item", json!({ "i": i })))
        .collect();
    let batch = NewBatch {
        id: "b".into(),
        queue: "bq".into(),
        kind: "k".into(),
        params: json!({}),
        fan_in: Some(NewJob::new("fan", "done", json!({}))),
    };
    one.create_batch(batch, items, BASE).await.unwrap();
    let (one, two): (Arc<dyn JobQueue>, Arc<dyn JobQueue>) = (Arc::new(one), Arc::new(two));
    let mut workers = Vec::new();
    for w in 0..6 {
        let q = if w % 2 == 0 { one.clone() } else { two.clone() };
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = q.lease("bq", 1 + w % 5, BASE + 1, 60_000).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                let leases: Vec<_> = got.iter().map(|j| j.lease.unwrap()).collect();
                assert!(q.complete(&leases).await.unwrap().iter().all(|b| *b));
                mine.extend(got.iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    for w in workers {
        for id in w.await.unwrap() {
            assert!(seen.insert(id), "job {id} leased by two workers");
        }
    }
    assert_eq!(seen.len(), ITEMS);
    let b = two.get_batch("b").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.done, b.dead),
        (BatchState::Completed, ITEMS as u64, 0)
    );
    let fan = one.lease("fan", 10, BASE + 2, 1_000).await.unwrap();
    assert_eq!(fan.len(), 1, "exactly one fan-in job");
    assert_eq!(Some(fan[0].id), b.fan_in_job);
    assert_eq!(fan[0].payload["done"], ITEMS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_one_process_wakes_the_other() {
    let Some((one, two, _store, _guard)) = two_processes("notify").await else {
        return;
    };
    let ready = two.ready_signal();
    // The listener also wakes its signal when it (re)connects: wait for a quiet spell first,
    // so the wake-up below can only come from the other process's NOTIFY.
    let mut quiet = false;
    for _ in 0..20 {
        let wait = ready.notified();
        if tokio::time::timeout(Duration::from_millis(300), wait)
            .await
            .is_err()
        {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "the ready signal settles");
    let wait = ready.notified();
    tokio::pin!(wait);
    wait.as_mut().enable();
    one.enqueue(vec![NewJob::new("n", "k", json!(null))], BASE)
        .await
        .unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .is_ok();
    assert!(woken, "the other process's ready signal fired");
}
