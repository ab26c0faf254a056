//! Proves the embedded outbox against a real SQLite file: an append records the messages its rule names in the same transaction (a refused expectation records neither events nor messages; an append over the per-append bound is refused whole), rows survive a reopen, failed deliveries are rescheduled, and deleted rows are gone.

use std::sync::Arc;

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::sqlite::outbox::MAX_OUTBOX_MESSAGES_PER_APPEND;
use ficus_store::sqlite::{OutboxMessage, SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, EventStore, StoreError};
use serde_json::json;

/// One message per `Wanted` event, `n` of them per event when the payload says so.
fn rule() -> ficus_store::sqlite::OutboxRule {
    Arc::new(|stream, events| {
        events
            .iter()
            .filter(|e| e.event_type.as_str() == "Wanted")
            .flat_map(|e| {
                let n = e.payload["n"].as_u64().unwrap_or(1);
                (0..n).map(move |i| OutboxMessage {
                    kind: "test.effect".into(),
                    payload: json!({"stream": stream.as_str(), "i": i}),
                })
            })
            .collect()
    })
}

fn ev(ty: &str, n: u64) -> ficus_core::NewEvent {
    new_event(EventType::new(ty).unwrap(), json!({ "n": n }))
}

#[tokio::test]
async fn messages_commit_with_their_append_and_only_then() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let store = SqliteEventStore::open(&path, SqliteConfig::default()).unwrap();
    store.install_outbox(rule()).unwrap();
    assert!(store.install_outbox(rule()).is_err(), "installed once");
    let s = StreamId::new("order-1").unwrap();

    // No message: a plain append.
    store
        .append(&s, ExpectedVersion::NoStream, vec![ev("Other", 1)])
        .await
        .unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 0);

    store
        .append(
            &s,
            ExpectedVersion::Exact(1),
            vec![ev("Wanted", 2), ev("Other", 1)],
        )
        .await
        .unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 2);

    // A refused expectation: neither the events nor the messages.
    let refused = store
        .append(&s, ExpectedVersion::Exact(1), vec![ev("Wanted", 1)])
        .await;
    assert!(
        matches!(refused, Err(StoreError::WrongExpectedVersion { .. })),
        "{refused:?}"
    );
    assert_eq!(store.outbox_len().await.unwrap(), 2);

    // Over the bound: refused whole.
    let flood = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![ev("Wanted", MAX_OUTBOX_MESSAGES_PER_APPEND as u64 + 1)],
        )
        .await;
    assert!(matches!(flood, Err(StoreError::Invalid(_))), "{flood:?}");
    assert_eq!(store.stream_version(&s).await.unwrap(), 3);
    assert_eq!(store.outbox_len().await.unwrap(), 2);

    // Durable: still there after a reopen.
    store.shutdown().await;
    drop(store);
    let store = SqliteEventStore::open(&path, SqliteConfig::default()).unwrap();
    let now = ficus_store::now_ms();
    let rows = store.outbox_due(now, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].payload, json!({"stream": "order-1", "i": 0}));
    assert_eq!(rows[1].payload, json!({"stream": "order-1", "i": 1}));

    // A failure reschedules; a delete removes.
    store
        .outbox_failed(rows[0].id, now + 60_000, "down".into())
        .await
        .unwrap();
    let due = store.outbox_due(now, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, rows[1].id);
    let later = store.outbox_due(now + 60_000, 10).await.unwrap();
    assert_eq!(later[0].attempts, 1);
    store.outbox_delete(rows[1].id).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 1);
    assert_eq!(
        store.outbox_next_due_ms().await.unwrap(),
        Some(now + 60_000)
    );
    store.shutdown().await;
}
