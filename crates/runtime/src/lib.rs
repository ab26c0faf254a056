//! The Ficus runtime: command execution against aggregates, and the projection runner that
//! folds the event log into read models.
//!
//! Architecture invariant: the runtime knows no HTTP and no JSON DTOs; it speaks in
//! aggregates, events and read models.

/// Retry delays: exponential backoff with full jitter (kept in the store crate, whose bus
/// relay retries with it too).
pub use ficus_store::backoff;
pub mod claim_check;
pub mod idempotency;
pub mod outbox;
pub mod pg_projection;
pub mod projection;
pub mod read_cache;
pub mod repository;
pub mod saga;
pub mod saga_metrics;
pub mod shutdown;
pub mod telemetry;
pub mod workers;

pub use pg_projection::{
    PgProjection, PgProjectionHandle, PgProjectionRunner, PgProjectionStatus, PgRebuildError,
    ReadModelHandle, PG_PROJECTION_BATCH_EVENTS,
};
pub use projection::{
    ProjectionError, ProjectionHandle, ProjectionRunner, ProjectionRunnerConfig, ProjectionState,
    ProjectionStatus, ReadModelDb, RebuildHook, RebuildMoment, RebuildProgress, SqliteProjection,
    WaitError, PROJECTION_BATCH_EVENTS,
};
pub use read_cache::{ReadCache, ReadCacheConfig, ReadCacheStats};
pub use repository::{
    AsOf, CommandError, CommandOutcome, Loaded, Repository, MAX_CONFLICT_RETRIES,
    SNAPSHOT_WRITES_IN_FLIGHT,
};
pub use shutdown::Shutdown;
pub use workers::{JobError, JobHandler, PoolConfig, PoolStats, WorkerPool};
