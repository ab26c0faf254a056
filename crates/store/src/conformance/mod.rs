//! The conformance suite every [`EventStore`] adapter must pass.
//!
//! Each check is a public async function taking a fresh, empty store. An adapter's test file
//! runs them all with [`event_store_conformance!`](crate::event_store_conformance):
//!
//! ```ignore
//! ficus_store::event_store_conformance!(make_store);
//! // where `async fn make_store() -> (Arc<dyn EventStore>, Box<dyn Any + Send>)`
//! // returns the store and a guard (e.g. its temp dir) kept alive for the test.
//! ficus_store::event_store_conformance!(optional make_pg_store);
//! // where the factory returns an `Option` of the same: `None` skips (no service configured).
//! ```

pub mod idempotency;
pub mod jobs;
pub mod snapshots;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
use serde_json::json;

use crate::{new_event, EventStore, StoreError, Subscription, SubscriptionError};

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn ev(n: u64) -> NewEvent {
    new_event(EventType::new("Tested").unwrap(), json!({ "n": n }))
}

fn evs(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(ev).collect()
}

/// Calls a conformance factory: `required` ones return the adapter, `optional` ones an
/// `Option` (`None` when the adapter's service is not configured, and the check is skipped).
#[doc(hidden)]
#[macro_export]
macro_rules! conformance_factory {
    (required, $make:path) => {
        Some($make().await)
    };
    (optional, $make:path) => {
        $make().await
    };
}

/// Generates one `#[tokio::test]` per conformance check, each with a fresh store from `$make`.
#[macro_export]
macro_rules! event_store_conformance {
    (optional $make:path) => {
        $crate::event_store_conformance!(@list $make, optional);
    };
    (@list $make:path, $mode:ident) => {
        $crate::event_store_conformance!(@tests $make, $mode;
            append_and_read_stream, expected_version_rules, conflict_writes_nothing,
            global_log_is_gapless, envelope_round_trips, invalid_batches_are_refused,
            concurrent_writers_one_winner_per_version, subscription_catch_up_then_live,
            subscription_switch_over_under_load, slow_subscriber_gets_clear_error,
            live_batches_in_commit_order);
    };
    ($make:path) => {
        $crate::event_store_conformance!(@list $make, required);
    };
    (@tests $make:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $crate::conformance_factory!($mode, $make) else {
                    return;
                };
                $crate::conformance::$name(store).await;
            }
        )*
    };
}

pub async fn append_and_read_stream(store: Arc<dyn EventStore>) {
    let s = sid("acct-1");
    let r = store
        .append(&s, ExpectedVersion::NoStream, evs(0..3))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 3));
    assert_eq!((r.first_position, r.last_position), (1, 3));
    let r = store
        .append(&s, ExpectedVersion::Exact(3), evs(3..5))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (4, 5));
    assert_eq!(store.stream_version(&s).await.unwrap(), 5);

    let all = store.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1);
        assert_eq!(e.payload["n"], i as u64);
        assert_eq!(e.stream_id, s);
    }
    let tail = store.read_stream(&s, 4, 100).await.unwrap();
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [4, 5]);
    let page = store.read_stream(&s, 2, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.version).collect::<Vec<_>>(), [2, 3]);
    assert!(store.read_stream(&s, 6, 10).await.unwrap().is_empty());
    // Versions and positions past i64::MAX are beyond everything, not wrapped around.
    for huge in [1u64 << 63, u64::MAX] {
        assert!(store.read_stream(&s, huge, 10).await.unwrap().is_empty());
        assert!(store.read_all(huge, 10).await.unwrap().is_empty());
    }

    let unknown = sid("acct-unknown");
    assert!(store.read_stream(&unknown, 1, 10).await.unwrap().is_empty());
    assert_eq!(store.stream_version(&unknown).await.unwrap(), 0);
}

pub async fn expected_version_rules(store: Arc<dyn EventStore>) {
    let s = sid("rules-1");
    let conflict = |r: Result<_, StoreError>, want: u64| match r {
        Err(StoreError::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, want),
        other => panic!("expected a conflict with actual {want}, got {other:?}"),
    };
    conflict(
        store.append(&s, ExpectedVersion::Exists, evs(0..1)).await,
        0,
    );
    conflict(
        store.append(&s, ExpectedVersion::Exact(1), evs(0..1)).await,
        0,
    );
    store
        .append(&s, ExpectedVersion::Exact(0), evs(0..1))
        .await
        .unwrap();
    conflict(
        store.append(&s, ExpectedVersion::NoStream, evs(0..1)).await,
        1,
    );
    conflict(
        store.append(&s, ExpectedVersion::Exact(0), evs(0..1)).await,
        1,
    );
    conflict(
        store.append(&s, ExpectedVersion::Exact(2), evs(0..1)).await,
        1,
    );
    store
        .append(&s, ExpectedVersion::Exists, evs(1..2))
        .await
        .unwrap();
    store
        .append(&s, ExpectedVersion::Any, evs(2..3))
        .await
        .unwrap();
    let r = store
        .append(&sid("rules-2"), ExpectedVersion::Any, evs(0..2))
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 2));
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
}

pub async fn conflict_writes_nothing(store: Arc<dyn EventStore>) {
    let s = sid("c-1");
    store
        .append(&s, ExpectedVersion::NoStream, evs(0..2))
        .await
        .unwrap();
    let head = store.head_position();
    assert!(store
        .append(&s, ExpectedVersion::Exact(1), evs(0..5))
        .await
        .is_err());
    assert_eq!(store.head_position(), head);
    assert_eq!(store.read_all(1, 100).await.unwrap().len(), 2);
    assert_eq!(store.stream_version(&s).await.unwrap(), 2);
}

pub async fn global_log_is_gapless(store: Arc<dyn EventStore>) {
    for i in 0..20u64 {
        let s = sid(&format!("g-{}", i % 3));
        store
            .append(&s, ExpectedVersion::Any, evs(i..i + 1 + i % 2))
            .await
            .unwrap();
    }
    let all = store.read_all(0, 1000).await.unwrap();
    assert_eq!(all.len(), 30);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1);
    }
    assert_eq!(store.head_position(), 30);
    let page = store.read_all(11, 5).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        [11, 12, 13, 14, 15]
    );
    assert!(store.read_all(31, 10).await.unwrap().is_empty());
    // Per-stream versions are contiguous too.
    for k in 0..3 {
        let s = sid(&format!("g-{k}"));
        let events = store.read_stream(&s, 1, 1000).await.unwrap();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1);
        }
    }
}

pub async fn envelope_round_trips(store: Arc<dyn EventStore>) {
    let before = crate::now_ms();
    let mut extra = serde_json::Map::new();
    extra.insert("tenant".into(), json!("t-9"));
    let e = NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type: EventType::new("Deposited").unwrap(),
        schema_version: 3,
        metadata: Metadata {
            correlation_id: Some("corr-1".into()),
            causation_id: Some("cause-1".into()),
            user_id: Some("ann".into()),
            extra,
        },
        payload: json!({"amount": 1250, "note": "é ünïcode ✓", "nested": {"a": [1, 2, null]}}),
    };
    let s = sid("env-1");
    store
        .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
        .await
        .unwrap();
    let got = &store.read_stream(&s, 1, 1).await.unwrap()[0];
    assert_eq!(got.id, e.id);
    assert_eq!(got.event_type, e.event_type);
    assert_eq!(got.schema_version, 3);
    assert_eq!(got.metadata, e.metadata);
    assert_eq!(got.payload, e.payload);
    assert!(got.recorded_at_ms >= before && got.recorded_at_ms <= crate::now_ms());
    assert_eq!(store.read_all(1, 1).await.unwrap()[0], *got);
}

pub async fn invalid_batches_are_refused(store: Arc<dyn EventStore>) {
    let s = sid("inv-1");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, evs(0..100_000))
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(store.head_position(), 0);
}

pub async fn concurrent_writers_one_winner_per_version(store: Arc<dyn EventStore>) {
    let s = sid("race-1");
    const WRITERS: u64 = 16;
    const ROUNDS: u64 = 10;
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .append(&s, ExpectedVersion::Exact(round), evs(w..w + 1))
                    .await
            }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => {
                    wins += 1;
                    assert_eq!(r.first_version, round + 1);
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    assert_eq!(actual, round + 1)
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: exactly one writer must win");
    }
    assert_eq!(store.stream_version(&s).await.unwrap(), ROUNDS);
    assert_eq!(store.head_position(), ROUNDS);
}

async fn next_within(sub: &mut Subscription) -> ficus_core::RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("subscription stalled")
        .expect("subscription failed")
}

pub async fn subscription_catch_up_then_live(store: Arc<dyn EventStore>) {
    let s = sid("sub-1");
    store
        .append(&s, ExpectedVersion::Any, evs(0..50))
        .await
        .unwrap();
    let mut from_start = Subscription::new(store.clone(), 0);
    let mut from_middle = Subscription::new(store.clone(), 31);
    for p in 1..=50 {
        assert_eq!(next_within(&mut from_start).await.position, p);
    }
    for p in 31..=50 {
        assert_eq!(next_within(&mut from_middle).await.position, p);
    }
    // At the head: nothing arrives until something is appended.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), from_start.next())
            .await
            .is_err()
    );
    store
        .append(&s, ExpectedVersion::Any, evs(50..60))
        .await
        .unwrap();
    for p in 51..=60 {
        assert_eq!(next_within(&mut from_start).await.position, p);
        assert_eq!(next_within(&mut from_middle).await.position, p);
    }
    assert!(from_start.is_live());
    // Starting past the head waits for the future.
    let mut future = Subscription::new(store.clone(), 61);
    store
        .append(&s, ExpectedVersion::Any, evs(60..61))
        .await
        .unwrap();
    assert_eq!(next_within(&mut future).await.position, 61);
}

pub async fn subscription_switch_over_under_load(store: Arc<dyn EventStore>) {
    const TOTAL: u64 = 3000;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..TOTAL / 3 {
                let s = sid(&format!("load-{}", i % 7));
                store
                    .append(&s, ExpectedVersion::Any, evs(i * 3..i * 3 + 3))
                    .await
                    .unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Subscribers join at different moments of the load: each must see 1..=TOTAL exactly once.
    let mut subs = Vec::new();
    for k in 0..3u64 {
        tokio::time::sleep(Duration::from_millis(5 * k)).await;
        let store = store.clone();
        subs.push(tokio::spawn(async move {
            let mut sub = Subscription::new(store, 1);
            let mut seen = HashSet::new();
            for want in 1..=TOTAL {
                let e = next_within(&mut sub).await;
                assert_eq!(e.position, want, "gap or reorder");
                assert!(seen.insert(e.id), "duplicate event");
            }
        }));
    }
    writer.await.unwrap();
    for s in subs {
        s.await.unwrap();
    }
}

pub async fn slow_subscriber_gets_clear_error(store: Arc<dyn EventStore>) {
    let s = sid("slow-1");
    let mut sub = Subscription::new(store.clone(), 1);
    // Reach the head so the subscription holds a live receiver.
    assert!(tokio::time::timeout(Duration::from_millis(50), sub.next())
        .await
        .is_err());
    const N: u64 = 5000;
    for i in 0..N {
        store
            .append(&s, ExpectedVersion::Any, evs(i..i + 1))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    let mut fell_behind = false;
    while (got.len() as u64) < N {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("stalled")
        {
            Ok(e) => got.push(e.position),
            Err(SubscriptionError::FellBehind { next_position }) => {
                assert_eq!(next_position, got.len() as u64 + 1);
                fell_behind = true;
                sub.resume();
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        fell_behind,
        "a subscriber {N} batches behind must be told it fell behind"
    );
    assert_eq!(
        got,
        (1..=N).collect::<Vec<_>>(),
        "nothing lost after resume"
    );
}

pub async fn live_batches_in_commit_order(store: Arc<dyn EventStore>) {
    let mut rx = store.live();
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store
                    .append(
                        &sid(&format!("lb-{w}")),
                        ExpectedVersion::Any,
                        evs(i..i + 2),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut next = 1;
    while next <= 320 {
        let batch = rx.recv().await.unwrap();
        for e in batch.iter() {
            assert_eq!(e.position, next);
            next += 1;
        }
    }
}
