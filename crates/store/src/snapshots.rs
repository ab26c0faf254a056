//! The snapshot port: the latest saved state of an aggregate's stream, so loading reads it
//! plus the events after it instead of the whole stream.
//!
//! A snapshot is a cache. Losing one costs a longer load, never correctness: the repository
//! checks it against the log (the event at its version must sit at its position) and rebuilds
//! from events whenever it is missing, stale, of another schema version or undecodable. That
//! is why adapters may write it outside the command's transaction and, on SQLite, with a
//! cheaper sync than the log (docs/adr/0009).
//!
//! Adapters keep ONE snapshot per stream, the one with the highest version: a save never
//! replaces a newer snapshot with an older one (saves run in the background and may land out
//! of order), and a save at the same version replaces it (a rebuilt snapshot of a newer
//! schema version over an old one).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ficus_core::{Position, StreamId, Version};
use serde_json::Value;

use crate::StoreError;

/// Largest encoded state a snapshot may hold, in bytes. A bigger one is refused
/// ([`StoreError::Invalid`]) and the aggregate keeps loading from events.
pub const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024;

/// An aggregate's state after the event at `version` of `stream`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub stream: StreamId,
    /// The version of the last event folded into `state` (≥ 1).
    pub version: Version,
    /// The global position of that event: proves the snapshot belongs to this log.
    pub position: Position,
    /// The commit time of that event (ms since the Unix epoch), for time travel by timestamp.
    pub recorded_at_ms: i64,
    /// The version of the state's shape, chosen by the aggregate's snapshot policy.
    pub schema_version: u32,
    pub state: Value,
}

/// Where snapshots are kept. Every adapter passes [`crate::conformance::snapshots`].
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of `stream`, if any.
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot` unless the stream already has one with a higher version.
    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// Forgets the stream's snapshot: the repository found it does not match the log, and a
    /// newer-looking one would otherwise outrank every rebuild.
    async fn delete(&self, stream: &StreamId) -> Result<(), StoreError>;
}

/// The snapshot's state as stored text, refused when over [`MAX_SNAPSHOT_BYTES`].
pub(crate) fn encode_state(snapshot: &Snapshot) -> Result<String, StoreError> {
    let text = serde_json::to_string(&snapshot.state)
        .map_err(|e| StoreError::Invalid(format!("snapshot state: {e}")))?;
    if text.len() > MAX_SNAPSHOT_BYTES {
        return Err(StoreError::Invalid(format!(
            "snapshot of {} is {} bytes, over the {MAX_SNAPSHOT_BYTES}-byte limit",
            snapshot.stream,
            text.len()
        )));
    }
    if snapshot.version == 0 {
        return Err(StoreError::Invalid(
            "a snapshot is taken after at least one event".into(),
        ));
    }
    Ok(text)
}

/// In-memory twin, for tests and examples.
#[derive(Default)]
pub struct MemSnapshotStore {
    by_stream: Mutex<HashMap<StreamId, Snapshot>>,
}

impl MemSnapshotStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<StreamId, Snapshot>> {
        // Only whole inserts happen under the lock: a poisoned map is still consistent.
        self.by_stream.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.lock().get(stream).cloned())
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        encode_state(snapshot)?;
        let mut map = self.lock();
        let newer_kept = map
            .get(&snapshot.stream)
            .is_some_and(|old| old.version > snapshot.version);
        if !newer_kept {
            map.insert(snapshot.stream.clone(), snapshot.clone());
        }
        Ok(())
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), StoreError> {
        self.lock().remove(stream);
        Ok(())
    }
}
