//! In-memory twin of the event store: the same rules, no durability. For tests and examples.

mod idempotency;
mod jobs;
pub use jobs::MemJobQueue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use tokio::sync::broadcast;

use crate::port::validate_batch;
use crate::{now_ms, AppendResult, EventStore, LiveBatch, StoreError, MAX_READ_LIMIT};

/// Live batches kept for slow subscribers before they are told they fell behind.
pub const MEM_LIVE_BUFFER_BATCHES: usize = 1024;
/// Most events one append may carry.
pub const MEM_MAX_APPEND_EVENTS: usize = 10_000;

#[derive(Default)]
struct Inner {
    log: Vec<RecordedEvent>,
    /// Indexes into `log` per stream, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
}

pub struct MemEventStore {
    inner: Mutex<Inner>,
    head: AtomicU64,
    live: broadcast::Sender<LiveBatch>,
    /// Idempotency records by (scope, key). Locked before `inner` when both are needed.
    keys: Mutex<HashMap<(String, String), crate::IdempotencyRecord>>,
}

impl Default for MemEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemEventStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            head: AtomicU64::new(0),
            live: broadcast::channel(MEM_LIVE_BUFFER_BATCHES).0,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied append (the log is only
        // extended after every check passed), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventStore for MemEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_batch(&events, MEM_MAX_APPEND_EVENTS)?;
        self.append_locked(&mut self.lock(), stream, expected, events)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let Some(idx) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = from_version.saturating_sub(1) as usize;
        Ok(idx
            .iter()
            .skip(skip)
            .take(limit.min(MAX_READ_LIMIT))
            .map(|&i| inner.log[i].clone())
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        Ok(self
            .lock()
            .streams
            .get(stream)
            .map_or(0, |v| v.len() as Version))
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let skip = from_position.saturating_sub(1) as usize;
        Ok(inner
            .log
            .iter()
            .skip(skip)
            .take(limit.min(MAX_READ_LIMIT))
            .cloned()
            .collect())
    }

    fn head_position(&self) -> Position {
        self.head.load(Ordering::Acquire)
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }
}

/// A shared handle, as most callers want one.
pub fn mem_store() -> Arc<dyn EventStore> {
    Arc::new(MemEventStore::new())
}

impl MemEventStore {
    /// The append itself, under the caller's lock (so a caller may check more under it).
    fn append_locked(
        &self,
        inner: &mut Inner,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let current = inner.streams.get(stream).map_or(0, |v| v.len() as Version);
        if !expected.admits(current) {
            return Err(StoreError::WrongExpectedVersion {
                stream: stream.clone(),
                expected,
                actual: current,
            });
        }
        let at = now_ms();
        let first_position = inner.log.len() as Position + 1;
        let mut batch = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            batch.push(RecordedEvent {
                id: e.id,
                stream_id: stream.clone(),
                version: current + 1 + i as Version,
                position: first_position + i as Position,
                event_type: e.event_type,
                schema_version: e.schema_version,
                recorded_at_ms: at,
                metadata: e.metadata,
                payload: e.payload,
            });
        }
        let n = batch.len();
        let start = inner.log.len();
        inner.log.extend(batch.iter().cloned());
        inner
            .streams
            .entry(stream.clone())
            .or_default()
            .extend(start..start + n);
        self.head
            .store(first_position + n as Position - 1, Ordering::Release);
        // Sent under the lock so live batches leave in commit order.
        let _ = self.live.send(batch.into());
        Ok(AppendResult {
            first_version: current + 1,
            last_version: current + n as Version,
            first_position,
            last_position: first_position + n as Position - 1,
        })
    }
}
