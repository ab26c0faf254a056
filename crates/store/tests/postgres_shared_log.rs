//! Two PostgreSQL event stores on one schema stand for two `ficus` processes: appends from
//! both get one gap-free order, and a live subscription on each delivers every position once,
//! in order, whichever process committed it. Needs `FICUS_TEST_PG_URL` (skipped without it).

use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::PgEventStore;
use ficus_store::{new_event, EventStore, Subscription};
use serde_json::json;

const WRITERS_PER_STORE: u64 = 8;
const APPENDS_PER_WRITER: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_one_gap_free_order_live_on_both() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (mut config, _guard) = fresh_schema(&url, "shared");
    config.pool_size = 6;
    let a: Arc<dyn EventStore> = Arc::new(PgEventStore::open(config.clone()).await.unwrap());
    let b: Arc<dyn EventStore> = Arc::new(PgEventStore::open(config).await.unwrap());
    let mut subs = [
        Subscription::new(a.clone(), 1),
        Subscription::new(b.clone(), 1),
    ];

    let ty = EventType::new("Shared").unwrap();
    let mut tasks = Vec::new();
    for (k, store) in [a.clone(), b.clone()].into_iter().enumerate() {
        for w in 0..WRITERS_PER_STORE {
            let (store, ty) = (store.clone(), ty.clone());
            tasks.push(tokio::spawn(async move {
                let s = StreamId::new(format!("s{k}-{w}")).unwrap();
                for i in 0..APPENDS_PER_WRITER {
                    store
                        .append(
                            &s,
                            ExpectedVersion::Exact(i),
                            vec![new_event(ty.clone(), json!({"i": i}))],
                        )
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = 2 * WRITERS_PER_STORE * APPENDS_PER_WRITER;

    // One order with no gap, read from either process.
    let log = a.read_all(1, 10_000).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.position).collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(b.read_all(1, 10_000).await.unwrap(), log);

    // Each subscription delivers the whole log in order, then live events from the other side.
    for sub in &mut subs {
        for want in 1..=total {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("subscription stalled")
                .unwrap();
            assert_eq!(e.position, want);
        }
    }
    let s = StreamId::new("late").unwrap();
    a.append(
        &s,
        ExpectedVersion::NoStream,
        vec![new_event(ty.clone(), json!({}))],
    )
    .await
    .unwrap();
    b.append(
        &s,
        ExpectedVersion::Exact(1),
        vec![new_event(ty, json!({}))],
    )
    .await
    .unwrap();
    for sub in &mut subs {
        for want in total + 1..=total + 2 {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
                .await
                .expect("live delivery across processes stalled")
                .unwrap();
            assert_eq!((e.position, e.stream_id.as_str()), (want, "late"));
        }
    }
    // Both processes learn the other's head.
    tokio::time::timeout(Duration::from_secs(5), async {
        while a.head_position() < total + 2 || b.head_position() < total + 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("heads converge");
}
