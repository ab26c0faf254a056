//! The Ficus runtime: command execution against aggregates, and the projection runner that
//! folds the event log into read models.
//!
//! Architecture invariant: the runtime knows no HTTP and no JSON DTOs; it speaks in
//! aggregates, events and read models.

/// Retry delays: exponential backoff with full jitter (kept in the store crate, whose bus
/// relay retries with it too).
pub use ficus_store::backoff;
pub mod pg_projection;
pub mod projection;
pub mod repository;
pub mod shutdown;
pub mod workers;

pub use pg_projection::{
    PgProjection, PgProjectionHandle, PgProjectionRunner, PgProjectionStatus, PgRebuildError,
    PG_PROJECTION_BATCH_EVENTS,
};
pub use projection::{
    ProjectionError, ProjectionHandle, ProjectionRunner, ProjectionState, ProjectionStatus,
    ReadModelDb, SqliteProjection, WaitError, PROJECTION_BATCH_EVENTS,
};
pub use repository::{CommandError, CommandOutcome, Loaded, Repository, MAX_CONFLICT_RETRIES};
pub use shutdown::Shutdown;
pub use workers::{JobError, JobHandler, PoolConfig, PoolStats, WorkerPool};
