//! The SQLite job queue (jobs stored beside the event log, written by its writer thread) passes
//! the shared JobQueue conformance suite, on a real database file in a temporary directory.

use std::any::Any;
use std::sync::Arc;

use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::JobQueue;

async fn make() -> (Arc<dyn JobQueue>, Box<dyn Any + Send>) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
        .expect("open sqlite store");
    let queue = SqliteJobQueue::new(Arc::new(store));
    (Arc::new(queue), Box::new(dir))
}

ficus_store::job_queue_conformance!(make);
