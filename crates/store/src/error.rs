use ficus_core::{ExpectedVersion, Position, StreamId, Version};

/// Why a store operation failed. Each variant's doc names the HTTP status it maps to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The stream's version did not match the expectation. (409 `wrong_expected_version`)
    #[error("stream {stream}: expected version {expected}, actual version {actual}")]
    WrongExpectedVersion {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: Version,
    },
    /// The request itself is unacceptable (empty batch, over a limit). (400)
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take writes or reads right now (I/O error, disk full, shutting down).
    /// Nothing from the failed call was committed. (503 `store_unavailable`)
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The storage device failed the write (disk full, I/O error, torn write), or the store
    /// is still refusing writes after a failed fsync: nothing from the failed call was
    /// committed, now or later. Reads keep working. (503 `storage_unavailable`)
    #[error("storage unavailable: {0}")]
    StorageFault(String),
    /// The write was committed to the log, but the fsync that had to cover it failed: it is
    /// not acknowledged, and whether it survives is not known until the store recovers (it
    /// then becomes visible and durable) or restarts (it may or may not be there). Read the
    /// stream, or retry with the same `Idempotency-Key`, to learn the outcome.
    /// (503 `storage_outcome_unknown`)
    #[error("write outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A stored record failed to decode: a loud error, never a silent skip. (500)
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The idempotency key's claim passed to a later request (this one outlived its lease);
    /// nothing was written. (409 `request_in_progress`)
    #[error("the idempotency key was taken over by a later request; nothing was written")]
    ClaimLost,
}

/// Why a subscription stopped delivering.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    /// The subscriber consumed live events slower than they were committed and its bounded
    /// buffer overflowed. Nothing was skipped: resume from `next_position` (catch-up reads
    /// from the store).
    #[error("subscriber fell behind the live stream; resume from position {next_position}")]
    FellBehind { next_position: Position },
    /// The store was shut down.
    #[error("event store closed")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}
