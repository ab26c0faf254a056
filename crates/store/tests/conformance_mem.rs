//! The in-memory event store passes the shared conformance suite.

use std::any::Any;
use std::sync::Arc;

use ficus_store::{mem::MemEventStore, EventStore};

async fn make() -> (Arc<dyn EventStore>, Box<dyn Any + Send>) {
    (Arc::new(MemEventStore::new()), Box::new(()))
}

ficus_store::event_store_conformance!(make);
