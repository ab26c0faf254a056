//! Every snapshot store passes the shared snapshot conformance suite: the in-memory twin, the
//! SQLite side file (a real file in a temporary directory, also reopened), and PostgreSQL
//! (migration 4, in a schema of its own) when `FICUS_TEST_PG_URL` is set.

use std::any::Any;
use std::sync::Arc;

use ficus_core::StreamId;
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{PgEventStore, PgSnapshotStore};
use ficus_store::sqlite::SqliteSnapshotStore;
use ficus_store::{MemSnapshotStore, Snapshot, SnapshotStore};
use serde_json::json;

type Made = (Arc<dyn SnapshotStore>, Box<dyn Any + Send>);

async fn make_mem() -> Made {
    (Arc::new(MemSnapshotStore::new()), Box::new(()))
}

async fn make_sqlite() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteSnapshotStore::open(dir.path().join("snapshots.db")).unwrap();
    (Arc::new(store), Box::new(dir))
}

async fn make_pg() -> Option<Made> {
    let url = test_url()?;
    let (mut config, guard) = fresh_schema(&url, "snap");
    config.pool_size = 4;
    let events = PgEventStore::open(config).await.expect("open PostgreSQL");
    let snapshots = PgSnapshotStore::for_store(&events);
    // The event store (holding the pool) goes before the guard drops the schema.
    Some((Arc::new(snapshots), Box::new((events, guard))))
}

mod mem {
    ficus_store::snapshot_store_conformance!(super::make_mem);
}

mod sqlite {
    ficus_store::snapshot_store_conformance!(super::make_sqlite);
}

mod postgres {
    ficus_store::snapshot_store_conformance!(optional super::make_pg);
}

#[tokio::test]
async fn sqlite_snapshots_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshots.db");
    let s = Snapshot {
        stream: StreamId::new("account-1").unwrap(),
        version: 42,
        position: 420,
        recorded_at_ms: 1_767_225_600_000,
        schema_version: 1,
        state: json!({"balance": 4200}),
    };
    SqliteSnapshotStore::open(&path)
        .unwrap()
        .save(&s)
        .await
        .unwrap();
    let reopened = SqliteSnapshotStore::open(&path).unwrap();
    assert_eq!(reopened.load(&s.stream).await.unwrap(), Some(s));
}
