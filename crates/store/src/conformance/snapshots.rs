//! The conformance suite every [`SnapshotStore`] adapter must pass: one snapshot per stream,
//! the newest wins whatever order saves land in, every field round-trips, and an oversized
//! state is refused without touching what is stored.
//!
//! ```ignore
//! ficus_store::snapshot_store_conformance!(make);          // -> (Arc<dyn SnapshotStore>, guard)
//! ficus_store::snapshot_store_conformance!(optional make); // -> Option<...>; None skips
//! ```

use std::sync::Arc;

use ficus_core::StreamId;
use serde_json::json;

use crate::snapshots::MAX_SNAPSHOT_BYTES;
use crate::{Snapshot, SnapshotStore, StoreError};

/// Generates one `#[tokio::test]` per snapshot store conformance check, each with a fresh
/// store from `$make`.
#[macro_export]
macro_rules! snapshot_store_conformance {
    (optional $make:path) => {
        $crate::snapshot_store_conformance!(@list $make, optional);
    };
    (@list $make:path, $mode:ident) => {
        $crate::snapshot_store_conformance!(@tests $make, $mode;
            missing_stream_has_no_snapshot, save_then_load_round_trips,
            newer_wins_whatever_the_order, same_version_replaces, streams_are_independent,
            oversized_or_empty_snapshots_are_refused, concurrent_saves_keep_the_newest,
            delete_forgets_only_that_stream);
    };
    ($make:path) => {
        $crate::snapshot_store_conformance!(@list $make, required);
    };
    (@tests $make:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((store, _guard)) = $crate::conformance_factory!($mode, $make) else {
                    return;
                };
                $crate::conformance::snapshots::$name(store).await;
            }
        )*
    };
}

fn snap(stream: &str, version: u64, schema_version: u32) -> Snapshot {
    Snapshot {
        stream: StreamId::new(stream).unwrap(),
        version,
        position: version * 10 + 3,
        recorded_at_ms: 1_767_225_600_000 + version as i64,
        schema_version,
        state: json!({"balance": version * 100, "owner": "ann", "nested": {"list": [1, 2, 3]}}),
    }
}

async fn latest(store: &Arc<dyn SnapshotStore>, stream: &str) -> Option<Snapshot> {
    store.load(&StreamId::new(stream).unwrap()).await.unwrap()
}

pub async fn missing_stream_has_no_snapshot(store: Arc<dyn SnapshotStore>) {
    assert_eq!(latest(&store, "account-none").await, None);
}

pub async fn save_then_load_round_trips(store: Arc<dyn SnapshotStore>) {
    let s = snap("account-1", 7, 3);
    store.save(&s).await.unwrap();
    assert_eq!(latest(&store, "account-1").await, Some(s));
}

pub async fn newer_wins_whatever_the_order(store: Arc<dyn SnapshotStore>) {
    store.save(&snap("account-1", 10, 1)).await.unwrap();
    // A background save of an older state landing late changes nothing.
    store.save(&snap("account-1", 5, 1)).await.unwrap();
    assert_eq!(
        latest(&store, "account-1").await,
        Some(snap("account-1", 10, 1))
    );
    store.save(&snap("account-1", 20, 1)).await.unwrap();
    assert_eq!(
        latest(&store, "account-1").await,
        Some(snap("account-1", 20, 1))
    );
}

pub async fn same_version_replaces(store: Arc<dyn SnapshotStore>) {
    // A snapshot rebuilt after a schema change is saved at the version the old one had.
    store.save(&snap("account-1", 10, 1)).await.unwrap();
    let mut rebuilt = snap("account-1", 10, 2);
    rebuilt.state = json!({"balance_minor": 1000});
    store.save(&rebuilt).await.unwrap();
    assert_eq!(latest(&store, "account-1").await, Some(rebuilt));
}

pub async fn streams_are_independent(store: Arc<dyn SnapshotStore>) {
    store.save(&snap("account-a", 3, 1)).await.unwrap();
    store.save(&snap("account-b", 9, 1)).await.unwrap();
    assert_eq!(latest(&store, "account-a").await.unwrap().version, 3);
    assert_eq!(latest(&store, "account-b").await.unwrap().version, 9);
}

pub async fn oversized_or_empty_snapshots_are_refused(store: Arc<dyn SnapshotStore>) {
    store.save(&snap("account-1", 4, 1)).await.unwrap();
    let mut big = snap("account-1", 8, 1);
    big.state = json!({ "blob": "x".repeat(MAX_SNAPSHOT_BYTES) });
    assert!(matches!(
        store.save(&big).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.save(&snap("account-1", 0, 1)).await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        latest(&store, "account-1").await,
        Some(snap("account-1", 4, 1))
    );
}

pub async fn delete_forgets_only_that_stream(store: Arc<dyn SnapshotStore>) {
    store.save(&snap("account-a", 30, 1)).await.unwrap();
    store.save(&snap("account-b", 9, 1)).await.unwrap();
    let a = StreamId::new("account-a").unwrap();
    store.delete(&a).await.unwrap();
    store.delete(&a).await.unwrap();
    assert_eq!(latest(&store, "account-a").await, None);
    assert_eq!(latest(&store, "account-b").await.unwrap().version, 9);
    // After a delete an older version is welcome again.
    store.save(&snap("account-a", 3, 1)).await.unwrap();
    assert_eq!(latest(&store, "account-a").await.unwrap().version, 3);
}

pub async fn concurrent_saves_keep_the_newest(store: Arc<dyn SnapshotStore>) {
    let saves: Vec<_> = (1..=32u64)
        .rev()
        .map(|v| {
            let store = store.clone();
            tokio::spawn(async move { store.save(&snap("account-1", v, 1)).await })
        })
        .collect();
    for s in saves {
        s.await.unwrap().unwrap();
    }
    assert_eq!(
        latest(&store, "account-1").await,
        Some(snap("account-1", 32, 1))
    );
}
