//! Ficus ports and their adapters.
//!
//! The [`EventStore`] port is implemented by [`mem::MemEventStore`] (tests, in-process) and
//! [`sqlite::SqliteEventStore`] (the embedded default) and [`postgres::PgEventStore`] (the
//! scale-out backend). All run the shared
//! [`conformance`] suite. [`Subscription`] gives catch-up-then-live delivery on top of any
//! adapter.

pub mod conformance;
mod error;
pub mod jobs;
pub mod mem;
pub mod nats;
mod port;
pub mod postgres;
pub mod sqlite;
mod subscription;

pub use error::{StoreError, SubscriptionError};
pub use jobs::{
    Batch, BatchState, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, JobState, Lease,
    NewBatch, NewJob, QueueStats,
};
pub use port::{new_event, AppendResult, EventStore, LiveBatch, MAX_READ_LIMIT};
pub use subscription::{Subscription, SUBSCRIPTION_PAGE_EVENTS};

/// Wall-clock milliseconds since the Unix epoch. Adapters stamp `recorded_at_ms` with it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
