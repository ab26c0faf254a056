use std::sync::Arc;

use async_trait::async_trait;
use ficus_core::{
    EventType, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamId, Version,
};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::StoreError;

/// Largest page a single read returns, whatever the caller asks for.
pub const MAX_READ_LIMIT: usize = 10_000;

/// Events committed together, in commit order. Live subscribers receive these.
pub type LiveBatch = Arc<[RecordedEvent]>;

/// Relays the live batches of an inner store to the subscribers of a wrapper that changes
/// events on read (upcasting, opening sealed fields), until the inner feed closes. A batch
/// none of whose events `touches` selects is passed on as is; the others go through
/// `transform`, and a batch it refuses (`None`, after logging why) is dropped: subscribers
/// notice the missing positions and read them from the store, through the wrapper.
pub(crate) async fn relay_live<F, Fut>(
    mut from: broadcast::Receiver<LiveBatch>,
    to: broadcast::Sender<LiveBatch>,
    touches: impl Fn(&RecordedEvent) -> bool,
    transform: F,
) where
    F: Fn(Vec<RecordedEvent>) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<RecordedEvent>>>,
{
    use broadcast::error::RecvError;
    loop {
        let batch = match from.recv().await {
            Ok(b) => b,
            // Subscribers notice the missing positions and read them from the store.
            Err(RecvError::Lagged(_)) => continue,
            Err(RecvError::Closed) => return,
        };
        if !batch.iter().any(&touches) {
            let _ = to.send(batch);
            continue;
        }
        if let Some(events) = transform(batch.to_vec()).await {
            let _ = to.send(events.into());
        }
    }
}

/// What an append committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub first_version: Version,
    pub last_version: Version,
    pub first_position: Position,
    pub last_position: Position,
}

/// The event store port: an append-only log of streams with one global order.
///
/// Rules every adapter keeps (checked by [`crate::conformance`]):
/// - an append is atomic: all its events or none, contiguous versions within the stream;
/// - positions are assigned at commit, start at 1, and have no gaps;
/// - an append returns only after its events are durable;
/// - `live()` delivers every committed batch once, in commit order.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version satisfies `expected`.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Events of `stream` with version ≥ `from_version`, at most `limit` (capped at
    /// [`MAX_READ_LIMIT`]). An unknown stream reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The stream's current version, 0 when it does not exist.
    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError>;

    /// Events of the global log with position ≥ `from_position`, at most `limit`.
    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The position of the last durable event (0 when the log is empty).
    fn head_position(&self) -> Position;

    /// A receiver of every batch committed from now on. Bounded: a receiver that falls more
    /// than the adapter's live buffer behind gets `Lagged` from the channel.
    fn live(&self) -> broadcast::Receiver<LiveBatch>;
}

/// The JSON shape of a recorded event, as the HTTP API answers it and the bus publishes it.
pub fn event_json(e: &RecordedEvent) -> Value {
    serde_json::json!({
        "id": e.id,
        "stream": e.stream_id,
        "version": e.version,
        "position": e.position,
        "type": e.event_type,
        "schema_version": e.schema_version,
        "data": e.payload,
        "metadata": e.metadata,
        "recorded_at": ficus_core::time::format_rfc3339_ms(e.recorded_at_ms),
    })
}

/// A new event with a fresh UUID v7 id and default metadata.
pub fn new_event(event_type: EventType, payload: Value) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type,
        schema_version: 1,
        metadata: Metadata::default(),
        payload,
    }
}

/// Checks what every adapter refuses before touching storage.
pub(crate) fn validate_batch(events: &[NewEvent], max_events: usize) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::Invalid(
            "an append needs at least one event".into(),
        ));
    }
    if events.len() > max_events {
        return Err(StoreError::Invalid(format!(
            "an append may carry at most {max_events} events, got {}",
            events.len()
        )));
    }
    Ok(())
}
