//! The in-memory job queue passes the shared JobQueue conformance suite.

use std::any::Any;
use std::sync::Arc;

use ficus_store::{mem::MemJobQueue, JobQueue};

async fn make() -> (Arc<dyn JobQueue>, Box<dyn Any + Send>) {
    (Arc::new(MemJobQueue::new()), Box::new(()))
}

ficus_store::job_queue_conformance!(make);
