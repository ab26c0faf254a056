//! Command execution: load an aggregate from its stream, decide, append with the version it
//! was loaded at. A concurrent writer makes the append conflict; the command is then decided
//! again on fresh state, a bounded number of times.

use std::sync::Arc;

use ficus_core::codec::{self, CodecError};
use ficus_core::{
    Aggregate, ExpectedVersion, Metadata, NewEvent, Position, StreamId, ValidationError, Version,
};
use ficus_store::{EventStore, StoreError, MAX_READ_LIMIT};

/// Times a command is decided again after losing an optimistic-concurrency race.
pub const MAX_CONFLICT_RETRIES: usize = 3;

/// Why a command did not commit. Each variant's doc names its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused the command (status from the domain error's kind).
    #[error(transparent)]
    Domain(E),
    /// The caller's expected version (If-Match) is stale, or retries ran out. (409)
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: Version,
    },
    /// The aggregate id is not a valid stream id. (400)
    #[error(transparent)]
    InvalidId(#[from] ValidationError),
    /// A stored event of this aggregate no longer decodes. (500, loud)
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The store failed. (503)
    #[error(transparent)]
    Store(StoreError),
}

/// The state of an aggregate as loaded from its stream.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: Version,
    /// Global position of the stream's last event (0 for a new stream).
    pub position: Position,
}

/// What a committed command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub stream: StreamId,
    /// The stream's version after the command.
    pub version: Version,
    /// Global position of the last event the command wrote, or of the stream's last event
    /// when the command changed nothing.
    pub position: Position,
    pub events_appended: usize,
}

/// Loads and saves aggregates through an [`EventStore`].
#[derive(Clone)]
pub struct Repository {
    store: Arc<dyn EventStore>,
}

impl Repository {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn stream_of<A: Aggregate>(id: &str) -> Result<StreamId, ValidationError> {
        StreamId::for_aggregate(A::KIND, id)
    }

    /// Folds the aggregate's whole stream.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = Self::stream_of::<A>(id)?;
        self.load_stream(&stream).await
    }

    async fn load_stream<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let mut loaded = Loaded {
            state: A::default(),
            version: 0,
            position: 0,
        };
        loop {
            let page = self
                .store
                .read_stream(stream, loaded.version + 1, MAX_READ_LIMIT)
                .await
                .map_err(CommandError::Store)?;
            let done = page.len() < MAX_READ_LIMIT;
            for e in &page {
                let event: A::Event =
                    codec::decode(e.event_type.as_str(), e.schema_version, &e.payload)?;
                loaded.state.evolve(&event);
                loaded.version = e.version;
                loaded.position = e.position;
            }
            if done {
                return Ok(loaded);
            }
        }
    }

    /// Decides `command` on the aggregate `id` and appends the resulting events.
    ///
    /// With `expected = Some(v)` (an HTTP `If-Match`), the command is refused with
    /// [`CommandError::Conflict`] unless the stream is at `v`; with `None` a lost race is
    /// retried on fresh state up to [`MAX_CONFLICT_RETRIES`] times.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        metadata: &Metadata,
        expected: Option<Version>,
    ) -> Result<CommandOutcome, CommandError<A::Error>> {
        let stream = Self::stream_of::<A>(id)?;
        let mut attempt = 0;
        loop {
            let loaded: Loaded<A> = self.load_stream(&stream).await?;
            if let Some(v) = expected {
                if v != loaded.version {
                    return Err(CommandError::Conflict {
                        stream,
                        expected: ExpectedVersion::Exact(v),
                        actual: loaded.version,
                    });
                }
            }
            let events = loaded.state.decide(command).map_err(CommandError::Domain)?;
            if events.is_empty() {
                return Ok(CommandOutcome {
                    stream,
                    version: loaded.version,
                    position: loaded.position,
                    events_appended: 0,
                });
            }
            let mut new_events = Vec::with_capacity(events.len());
            for e in &events {
                let (event_type, payload) = codec::encode(e)?;
                new_events.push(NewEvent {
                    id: uuid::Uuid::now_v7(),
                    event_type,
                    schema_version: <A::Event as ficus_core::DomainEvent>::SCHEMA_VERSION,
                    metadata: metadata.clone(),
                    payload,
                });
            }
            let expected_version = ExpectedVersion::Exact(loaded.version);
            match self
                .store
                .append(&stream, expected_version, new_events)
                .await
            {
                Ok(r) => {
                    return Ok(CommandOutcome {
                        stream,
                        version: r.last_version,
                        position: r.last_position,
                        events_appended: events.len(),
                    })
                }
                Err(StoreError::WrongExpectedVersion { actual, .. })
                    if expected.is_none() && attempt < MAX_CONFLICT_RETRIES =>
                {
                    tracing::debug!(%stream, actual, attempt, "command lost a race; deciding again");
                    attempt += 1;
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    return Err(CommandError::Conflict {
                        stream,
                        expected: expected_version,
                        actual,
                    })
                }
                Err(e) => return Err(CommandError::Store(e)),
            }
        }
    }
}
