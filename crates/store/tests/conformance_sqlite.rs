//! The SQLite event store (the embedded default) passes the shared conformance suite, on a real
//! database file in a temporary directory.

use std::any::Any;
use std::sync::Arc;

use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::EventStore;

async fn make() -> (Arc<dyn EventStore>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
        .expect("open sqlite store");
    (Arc::new(store), Box::new(dir))
}

ficus_store::event_store_conformance!(make);
