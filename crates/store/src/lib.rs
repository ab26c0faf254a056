//! Ficus ports and their adapters.
//!
//! The [`EventStore`] port is implemented by [`mem::MemEventStore`] (tests, in-process) and
//! [`sqlite::SqliteEventStore`] (the embedded default) and [`postgres::PgEventStore`] (the
//! scale-out backend). All run the shared
//! [`conformance`] suite. [`Subscription`] gives catch-up-then-live delivery on top of any
//! adapter.

pub mod backoff;
pub mod blobs;
pub mod conformance;
mod error;
pub mod idempotency;
pub mod jobs;
pub mod mem;
pub mod nats;
mod port;
pub mod postgres;
pub mod shredding;
pub mod snapshots;
pub mod sqlite;
mod subscription;
pub mod upcasting;

pub use error::{StoreError, SubscriptionError};
pub use idempotency::{
    Claim, ClaimRequest, IdempotencyConfig, IdempotencyRecord, IdempotencyStore, Responder,
    StoredResponse, Ticket,
};
pub use jobs::{
    Batch, BatchState, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, JobState, Lease,
    NewBatch, NewJob, QueueStats,
};
pub use port::{event_json, new_event, AppendResult, EventStore, LiveBatch, MAX_READ_LIMIT};
pub use shredding::{PersonalFields, Shredder, ShreddingStore, SubjectKeys};
pub use snapshots::{MemSnapshotStore, Snapshot, SnapshotStore, MAX_SNAPSHOT_BYTES};
pub use subscription::{Subscription, SUBSCRIPTION_PAGE_EVENTS};
pub use upcasting::UpcastingStore;

/// Runs `cleanup` to completion on a thread with its own small runtime, and waits for it. For
/// the `Drop` of test guards, which may run inside a runtime (where blocking on it is not
/// allowed) or outside any.
pub(crate) fn run_detached(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            rt.block_on(cleanup);
        }
    })
    .join();
}

/// Wall-clock milliseconds since the Unix epoch. Adapters stamp `recorded_at_ms` with it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
