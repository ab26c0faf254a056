//! The one place where schema evolution happens on read: an [`EventStore`] decorator that
//! passes every event it hands out through the process's [`Upcasters`].
//!
//! Everything that reads the log reads it through the store: aggregates (`read_stream`),
//! projections and SSE subscriptions (`Subscription`: `read_all` then `live`), the HTTP stream
//! reads. Wrapping the store once where it is opened therefore gives all of them the current
//! shape, and no reader has to remember to upcast. Writes pass through untouched: new events
//! are written at the current version by the code that made them.
//!
//! Live batches are re-broadcast by a forwarding task, upcast on the way. Batches that need no
//! upcasting are forwarded as the same `Arc`, without a copy. If the forwarder ever misses
//! batches (it lagged behind the inner broadcast) it skips them: subscribers see a gap in
//! positions and read the missing events from the store, which `Subscription` already does for
//! any gap. An event whose upcast fails is never delivered live either; the subscriber finds
//! the gap, reads the store and gets the loud `Corrupt` error there.

use std::sync::Arc;

use async_trait::async_trait;
use ficus_core::{
    ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Upcasters, Version,
};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{AppendResult, EventStore, LiveBatch, StoreError};

/// Live batches the decorator keeps for slow subscribers (as the adapters' own buffers).
pub const UPCAST_LIVE_BUFFER_BATCHES: usize = 1024;

pub struct UpcastingStore {
    inner: Arc<dyn EventStore>,
    upcasters: Arc<Upcasters>,
    live: broadcast::Sender<LiveBatch>,
    forwarder: JoinHandle<()>,
}

impl Drop for UpcastingStore {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl UpcastingStore {
    /// `inner` seen through `upcasters`; `inner` itself when there is nothing to upcast. Must be
    /// called inside a Tokio runtime (it starts the live forwarder).
    pub fn wrap(inner: Arc<dyn EventStore>, upcasters: Upcasters) -> Arc<dyn EventStore> {
        if upcasters.is_empty() {
            return inner;
        }
        let upcasters = Arc::new(upcasters);
        let (live, _) = broadcast::channel(UPCAST_LIVE_BUFFER_BATCHES);
        let forwarder = tokio::spawn(forward(inner.live(), live.clone(), upcasters.clone()));
        Arc::new(Self {
            inner,
            upcasters,
            live,
            forwarder,
        })
    }
}

/// The event in its current shape, with the version it reached.
pub fn upcast_event(upcasters: &Upcasters, e: RecordedEvent) -> Result<RecordedEvent, StoreError> {
    match upcasters.upcast(e.event_type.as_str(), e.schema_version, &e.payload) {
        Ok(None) => Ok(e),
        Ok(Some((schema_version, payload))) => Ok(RecordedEvent {
            schema_version,
            payload,
            ..e
        }),
        Err(err) => Err(StoreError::Corrupt(format!(
            "event at position {} of {}: {err}",
            e.position, e.stream_id
        ))),
    }
}

fn upcast_all(
    upcasters: &Upcasters,
    events: Vec<RecordedEvent>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    events
        .into_iter()
        .map(|e| upcast_event(upcasters, e))
        .collect()
}

async fn forward(
    from: broadcast::Receiver<LiveBatch>,
    to: broadcast::Sender<LiveBatch>,
    upcasters: Arc<Upcasters>,
) {
    let touches = |e: &RecordedEvent| upcasters.applies(e.event_type.as_str(), e.schema_version);
    let transform = |events| {
        let outcome = upcast_all(&upcasters, events);
        async move {
            outcome
                .map_err(|e| {
                    tracing::error!(error = %e, "a live batch does not upcast; subscribers will read it from the store");
                })
                .ok()
        }
    };
    crate::port::relay_live(from, to, touches, transform).await
}

#[async_trait]
impl EventStore for UpcastingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream, from_version, limit).await?;
        upcast_all(&self.upcasters, events)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(from_position, limit).await?;
        upcast_all(&self.upcasters, events)
    }

    fn head_position(&self) -> Position {
        self.inner.head_position()
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }
}
