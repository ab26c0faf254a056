//! Command execution: load an aggregate from its stream, decide, append with the version it
//! was loaded at. A concurrent writer makes the append conflict; the command is then decided
//! again on fresh state, a bounded number of times.

use std::sync::Arc;

use ficus_core::codec::{self, CodecError};
use ficus_core::{
    Aggregate, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, SnapshotPolicy,
    StreamId, ValidationError, Version,
};
use ficus_store::{AppendResult, EventStore, Snapshot, SnapshotStore, StoreError, MAX_READ_LIMIT};
use tokio::sync::Semaphore;

/// Times a command is decided again after losing an optimistic-concurrency race.
pub const MAX_CONFLICT_RETRIES: usize = 3;

/// Snapshot writes one repository runs in the background at once. Past it a snapshot is
/// skipped, not queued: the next load that finds a long tail takes it.
pub const SNAPSHOT_WRITES_IN_FLIGHT: usize = 8;

/// Which past state [`Repository::load_as_of`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// After the event with this stream version (0: before the first event).
    Version(Version),
    /// After the last event committed at or before this instant (ms since the Unix epoch,
    /// UTC). Commit times within a stream are taken as never decreasing: the first event
    /// committed later ends the fold.
    Time(i64),
}

impl AsOf {
    /// Whether `e` lies beyond this bound.
    fn excludes(self, e: &RecordedEvent) -> bool {
        match self {
            AsOf::Version(v) => e.version > v,
            AsOf::Time(ms) => e.recorded_at_ms > ms,
        }
    }
}

/// The snapshot store a repository reads and feeds, and its bound on background writes.
#[derive(Clone)]
struct Snapshots {
    store: Arc<dyn SnapshotStore>,
    writes: Arc<Semaphore>,
}

/// A fold of a stream, with what snapshotting needs to know about it.
struct Folded<A> {
    loaded: Loaded<A>,
    /// Commit time of the last event folded (0 when none).
    recorded_at_ms: i64,
    /// Events folded from the log (after the snapshot, when one was used).
    tail_events: u64,
}

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
    snapshots: Option<Snapshots>,
}

impl Repository {
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            snapshots: None,
        }
    }

    /// This repository reading and writing snapshots of the aggregates that declare a
    /// [`SnapshotPolicy`] in `snapshots`.
    pub fn with_snapshots(mut self, snapshots: Arc<dyn SnapshotStore>) -> Self {
        self.snapshots = Some(Snapshots {
            store: snapshots,
            writes: Arc::new(Semaphore::new(SNAPSHOT_WRITES_IN_FLIGHT)),
        });
        self
    }

    /// The snapshot store, when one is configured.
    pub fn snapshot_store(&self) -> Option<&Arc<dyn SnapshotStore>> {
        self.snapshots.as_ref().map(|s| &s.store)
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// This repository with its appends going to `store` instead (everything else kept): how
    /// a command's append is routed through an idempotency claim
    /// ([`ficus_store::idempotency::ClaimedAppends`]).
    pub fn with_store(&self, store: Arc<dyn EventStore>) -> Repository {
        let mut repo = self.clone();
        repo.store = store;
        repo
    }

    pub fn stream_of<A: Aggregate>(id: &str) -> Result<StreamId, ValidationError> {
        StreamId::for_aggregate(A::KIND, id)
    }

    /// Folds the aggregate's whole stream.
    pub async fn load<A: Aggregate>(&self, id: &str) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = Self::stream_of::<A>(id)?;
        self.load_stream(&stream).await
    }

    /// The aggregate's state as it was at a past version or instant: time travel. A bound
    /// beyond the stream's end gives the current state; compare `version` with what was asked.
    pub async fn load_as_of<A: Aggregate>(
        &self,
        id: &str,
        as_of: AsOf,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let stream = Self::stream_of::<A>(id)?;
        Ok(self.fold::<A>(&stream, Some(as_of)).await?.loaded)
    }

    /// Folds the aggregate and saves its snapshot now (not in the background), whatever the
    /// policy's interval. Returns the version snapshotted, `None` when the aggregate declares
    /// no policy, no snapshot store is configured or the stream is empty.
    pub async fn snapshot<A: Aggregate>(
        &self,
        id: &str,
    ) -> Result<Option<Version>, CommandError<A::Error>> {
        let stream = Self::stream_of::<A>(id)?;
        let (Some(snapshots), Some(policy)) = (&self.snapshots, A::snapshot_policy()) else {
            return Ok(None);
        };
        let folded = self.fold::<A>(&stream, None).await?;
        if folded.loaded.version == 0 {
            return Ok(None);
        }
        let Some(snapshot) = encode_snapshot(&policy, &stream, &folded) else {
            return Ok(None);
        };
        snapshots
            .store
            .save(&snapshot)
            .await
            .map_err(CommandError::Store)?;
        Ok(Some(snapshot.version))
    }

    async fn load_stream<A: Aggregate>(
        &self,
        stream: &StreamId,
    ) -> Result<Loaded<A>, CommandError<A::Error>> {
        let folded = self.fold::<A>(stream, None).await?;
        if let Some(policy) = A::snapshot_policy() {
            // A long tail means the last snapshot is missing, stale or was discarded.
            if folded.tail_events >= policy.every_events.max(1) {
                self.save_in_background(&policy, stream, &folded);
            }
        }
        Ok(folded.loaded)
    }

    /// Folds the stream up to `until` (its end when `None`), from the latest usable snapshot
    /// when there is one.
    async fn fold<A: Aggregate>(
        &self,
        stream: &StreamId,
        until: Option<AsOf>,
    ) -> Result<Folded<A>, CommandError<A::Error>> {
        if let Some((state, snapshot)) = self.usable_snapshot::<A>(stream, until).await {
            if let Some(folded) = self
                .fold_from(stream, state, Some(&snapshot), until)
                .await?
            {
                return Ok(folded);
            }
            tracing::warn!(%stream, version = snapshot.version, position = snapshot.position,
                "snapshot does not match the event log; rebuilding from events");
            // Deleted, or its higher version would outrank every rebuilt snapshot.
            if let Some(snapshots) = &self.snapshots {
                if let Err(e) = snapshots.store.delete(stream).await {
                    tracing::warn!(%stream, error = %e, "mismatched snapshot not deleted");
                }
            }
        }
        let folded = self.fold_from(stream, A::default(), None, until).await?;
        Ok(folded.expect("a fold without a snapshot has nothing to mismatch"))
    }

    /// The latest snapshot, decoded, if it can stand in for the events it covers. Anything
    /// else (none, unreadable, another schema version, undecodable, past `until`) is `None`:
    /// the caller folds from the first event instead. Never an error: a snapshot is a cache.
    async fn usable_snapshot<A: Aggregate>(
        &self,
        stream: &StreamId,
        until: Option<AsOf>,
    ) -> Option<(A, Snapshot)> {
        let (snapshots, policy) = (self.snapshots.as_ref()?, A::snapshot_policy()?);
        let mut snapshot = match snapshots.store.load(stream).await {
            Ok(s) => s?,
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot unreadable; folding from events");
                return None;
            }
        };
        if snapshot.schema_version != policy.schema_version {
            tracing::info!(%stream, stored = snapshot.schema_version, current = policy.schema_version,
                "snapshot of an older shape discarded; rebuilding from events");
            return None;
        }
        let beyond = match until {
            Some(AsOf::Version(v)) => snapshot.version > v,
            Some(AsOf::Time(ms)) => snapshot.recorded_at_ms > ms,
            None => false,
        };
        if beyond {
            return None;
        }
        match (policy.decode)(std::mem::take(&mut snapshot.state)) {
            Ok(state) => Some((state, snapshot)),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "snapshot no longer decodes; rebuilding from events");
                None
            }
        }
    }

    /// Folds the events after `base` (all of them without one) into `state`, up to `until`.
    /// `None` when the log does not hold the snapshot's last event at the snapshot's position:
    /// the snapshot belongs to another log (or a rewritten one) and must not be trusted.
    async fn fold_from<A: Aggregate>(
        &self,
        stream: &StreamId,
        state: A,
        base: Option<&Snapshot>,
        until: Option<AsOf>,
    ) -> Result<Option<Folded<A>>, CommandError<A::Error>> {
        let mut folded = Folded {
            loaded: Loaded {
                state,
                version: 0,
                position: 0,
            },
            recorded_at_ms: 0,
            tail_events: 0,
        };
        // The snapshot's own last event is read again, to check it.
        let mut check = None;
        let mut from = 1;
        if let Some(s) = base {
            folded.loaded.version = s.version;
            folded.loaded.position = s.position;
            folded.recorded_at_ms = s.recorded_at_ms;
            check = Some((s.version, s.position));
            from = s.version;
        }
        loop {
            let page = self
                .store
                .read_stream(stream, from, MAX_READ_LIMIT)
                .await
                .map_err(CommandError::Store)?;
            let full = page.len() >= MAX_READ_LIMIT;
            let mut events = page.iter();
            if let Some((version, position)) = check.take() {
                match events.next() {
                    Some(e) if e.version == version && e.position == position => {}
                    _ => return Ok(None),
                }
            }
            for e in events {
                if until.is_some_and(|u| u.excludes(e)) {
                    return Ok(Some(folded));
                }
                let event: A::Event =
                    codec::decode(e.event_type.as_str(), e.schema_version, &e.payload)?;
                folded.loaded.state.evolve(&event);
                folded.loaded.version = e.version;
                folded.loaded.position = e.position;
                folded.recorded_at_ms = e.recorded_at_ms;
                folded.tail_events += 1;
            }
            match page.last() {
                Some(last) if full => from = last.version + 1,
                _ => return Ok(Some(folded)),
            }
        }
    }

    /// Saves a snapshot of `folded` in a background task: a snapshot is a cache, so the
    /// command that caused it does not wait for it. Skipped when
    /// [`SNAPSHOT_WRITES_IN_FLIGHT`] writes are already running.
    fn save_in_background<A: Aggregate>(
        &self,
        policy: &SnapshotPolicy<A>,
        stream: &StreamId,
        folded: &Folded<A>,
    ) {
        let Some(snapshots) = &self.snapshots else {
            return;
        };
        let Ok(permit) = snapshots.writes.clone().try_acquire_owned() else {
            tracing::debug!(%stream, "snapshot skipped: too many snapshot writes in flight");
            return;
        };
        let Some(snapshot) = encode_snapshot(policy, stream, folded) else {
            return;
        };
        let store = snapshots.store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = store.save(&snapshot).await {
                tracing::warn!(stream = %snapshot.stream, error = %e, "snapshot not saved");
            }
        });
    }

    /// After a committed append: snapshots the new state when the stream's version crossed a
    /// multiple of the policy's interval.
    fn snapshot_after_append<A: Aggregate>(
        &self,
        stream: &StreamId,
        before: &Loaded<A>,
        events: &[A::Event],
        appended: &AppendResult,
    ) {
        let (Some(_), Some(policy)) = (&self.snapshots, A::snapshot_policy()) else {
            return;
        };
        let every = policy.every_events.max(1);
        if before.version / every == appended.last_version / every {
            return;
        }
        let mut state = before.state.clone();
        for e in events {
            state.evolve(e);
        }
        let folded = Folded {
            loaded: Loaded {
                state,
                version: appended.last_version,
                position: appended.last_position,
            },
            // Read after the acknowledgement, so never earlier than the commit's own stamp:
            // time travel may skip this snapshot for an instant it covers, never use it for
            // one it does not.
            recorded_at_ms: ficus_store::now_ms(),
            tail_events: 0,
        };
        self.save_in_background(&policy, stream, &folded);
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
                    self.snapshot_after_append::<A>(&stream, &loaded, &events, &r);
                    return Ok(CommandOutcome {
                        stream,
                        version: r.last_version,
                        position: r.last_position,
                        events_appended: events.len(),
                    });
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

/// The snapshot of `folded` under `policy`, or `None` (logged) when the state does not encode.
fn encode_snapshot<A>(
    policy: &SnapshotPolicy<A>,
    stream: &StreamId,
    folded: &Folded<A>,
) -> Option<Snapshot> {
    match (policy.encode)(&folded.loaded.state) {
        Ok(state) => Some(Snapshot {
            stream: stream.clone(),
            version: folded.loaded.version,
            position: folded.loaded.position,
            recorded_at_ms: folded.recorded_at_ms,
            schema_version: policy.schema_version,
            state,
        }),
        Err(e) => {
            tracing::warn!(%stream, error = %e, "aggregate state does not encode as a snapshot");
            None
        }
    }
}
