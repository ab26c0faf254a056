//! The upcasting decorator keeps every event store rule (it passes the whole conformance suite
//! on a real SQLite file), upcasts on every read path (stream reads, global reads, live
//! batches), and turns a stored payload that does not upcast into a loud `Corrupt` error on
//! reads and subscriptions, never a silent skip.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, NewEvent, StreamId, Upcasters};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::{EventStore, StoreError, Subscription, SubscriptionError, UpcastingStore};
use serde_json::{json, Value};

/// Upcasters for a type the conformance suite never writes, so its checks see their own
/// payloads while every read still goes through the decorator.
fn legacy_upcasters() -> Upcasters {
    let mut u = Upcasters::new();
    u.register("Legacy", 1, |mut p: Value| {
        let n = p
            .get("count")
            .and_then(Value::as_str)
            .ok_or("no count text")?;
        let n: i64 = n.parse().map_err(|_| "count is not a number")?;
        p["count"] = json!(n);
        Ok(p)
    });
    u
}

async fn make() -> (Arc<dyn EventStore>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
        .expect("open sqlite store");
    (
        UpcastingStore::wrap(Arc::new(store), legacy_upcasters()),
        Box::new(dir),
    )
}

mod conformance {
    ficus_store::event_store_conformance!(super::make);
}

fn legacy(count: &str) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type: EventType::new("Legacy").unwrap(),
        schema_version: 1,
        metadata: Default::default(),
        payload: json!({ "count": count }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_path_sees_the_current_shape() {
    let (store, _dir) = make().await;
    let s = StreamId::new("legacy-1").unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![legacy("7")])
        .await
        .unwrap();
    let read = store.read_stream(&s, 1, 10).await.unwrap();
    assert_eq!(
        (read[0].schema_version, &read[0].payload),
        (2, &json!({"count": 7}))
    );
    let all = store.read_all(1, 10).await.unwrap();
    assert_eq!(all[0].payload, json!({"count": 7}));
    let mut sub = Subscription::new(store.clone(), 1);
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload, json!({"count": 7}));
    // Live: the subscription is at the head, the next batch arrives through the forwarder.
    let waiting = tokio::spawn(async move {
        let e = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        (e, sub)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .append(&s, ExpectedVersion::Exact(1), vec![legacy("8")])
        .await
        .unwrap();
    let (second, _sub) = waiting.await.unwrap();
    let second = second.unwrap().unwrap();
    assert_eq!((second.version, second.schema_version), (2, 2));
    assert_eq!(second.payload, json!({"count": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_does_not_upcast_is_a_loud_error() {
    let (store, _dir) = make().await;
    let s = StreamId::new("legacy-2").unwrap();
    store
        .append(&s, ExpectedVersion::NoStream, vec![legacy("seven")])
        .await
        .unwrap();
    assert!(matches!(
        store.read_stream(&s, 1, 10).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store.read_all(1, 10).await,
        Err(StoreError::Corrupt(_))
    ));
    let mut sub = Subscription::new(store.clone(), 1);
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap();
    assert!(
        matches!(got, Err(SubscriptionError::Store(StoreError::Corrupt(ref m))) if m.contains("Legacy")),
        "{got:?}"
    );
}
