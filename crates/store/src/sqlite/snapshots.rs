//! Snapshots on the embedded backend: a side file next to the event log (`snapshots.db`), with a
//! connection of its own.
//!
//! Not a table in the event log's file: that file has exactly one writer (the group-commit
//! thread), and a second writing connection would contend for its lock, while routing
//! snapshots through that thread would put their bytes into every group commit's fsync.
//! A snapshot is a cache checked against the log on every load, so this file runs with
//! `synchronous = NORMAL`: a power failure may lose the last snapshots written, never an
//! event, and the next load rebuilds them (docs/adr/0009).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ficus_core::StreamId;
use rusqlite::{params, Connection, OptionalExtension};

use super::{open_connection, unavailable, ConnectionPool};
use crate::snapshots::{encode_state, Snapshot, SnapshotStore};
use crate::StoreError;

/// Read connections of the snapshot file.
pub const SNAPSHOT_READERS: usize = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS snapshots (
    stream_id      TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL,
    position       INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    schema_version INTEGER NOT NULL,
    state          TEXT    NOT NULL,
    saved_at_ms    INTEGER NOT NULL
);";

/// Keeps the newest snapshot per stream: an older one arriving late changes nothing.
const UPSERT: &str = "
INSERT INTO snapshots (stream_id, version, position, recorded_at_ms, schema_version, state,
                       saved_at_ms)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (stream_id) DO UPDATE SET
    version = excluded.version, position = excluded.position,
    recorded_at_ms = excluded.recorded_at_ms, schema_version = excluded.schema_version,
    state = excluded.state, saved_at_ms = excluded.saved_at_ms
WHERE excluded.version >= snapshots.version";

pub struct SqliteSnapshotStore {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    readers: Arc<ConnectionPool>,
}

impl SqliteSnapshotStore {
    /// Opens (creating if needed) the snapshot file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let writer = open_connection(&path)?;
        writer
            .execute_batch("PRAGMA synchronous = NORMAL;")
            .map_err(unavailable)?;
        writer.execute_batch(SCHEMA).map_err(unavailable)?;
        let readers = Arc::new(ConnectionPool::open_readers(&path, SNAPSHOT_READERS)?);
        Ok(Self {
            path,
            writer: Arc::new(Mutex::new(writer)),
            readers,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let stream = stream.clone();
        self.readers
            .run(move |c| {
                let row = c
                    .prepare_cached(
                        "SELECT version, position, recorded_at_ms, schema_version, state
                           FROM snapshots WHERE stream_id = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row([stream.as_str()], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, i64>(1)?,
                                r.get::<_, i64>(2)?,
                                r.get::<_, i64>(3)?,
                                r.get::<_, String>(4)?,
                            ))
                        })
                        .optional()
                    })
                    .map_err(unavailable)?;
                let Some((version, position, recorded_at_ms, schema_version, state)) = row else {
                    return Ok(None);
                };
                // A torn or hand-edited row is a cache miss to the repository, but the store
                // says what it is rather than guessing.
                let state = serde_json::from_str(&state).map_err(|e| {
                    StoreError::Corrupt(format!("snapshot of {stream} is not JSON: {e}"))
                })?;
                Ok(Some(Snapshot {
                    stream,
                    version: version as u64,
                    position: position as u64,
                    recorded_at_ms,
                    schema_version: schema_version as u32,
                    state,
                }))
            })
            .await
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let state = encode_state(snapshot)?;
        let snapshot = snapshot.clone();
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.prepare_cached(UPSERT)
                .and_then(|mut s| {
                    s.execute(params![
                        snapshot.stream.as_str(),
                        snapshot.version as i64,
                        snapshot.position as i64,
                        snapshot.recorded_at_ms,
                        snapshot.schema_version as i64,
                        state,
                        crate::now_ms(),
                    ])
                })
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("snapshot writer task failed: {e}")))?
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), StoreError> {
        let (stream, writer) = (stream.clone(), self.writer.clone());
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.execute(
                "DELETE FROM snapshots WHERE stream_id = ?1",
                [stream.as_str()],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("snapshot writer task failed: {e}")))?
    }
}
