//! Snapshots on PostgreSQL: the `ficus_snapshots` table (migration 4) in the event log's
//! schema, shared by every process. Written outside any command's transaction: a snapshot is
//! a cache checked against the log on every load (docs/adr/0009).

use async_trait::async_trait;
use ficus_core::StreamId;

use super::{execute, query, sql_int, PgEventStore, TimedPool};
use crate::snapshots::{encode_state, Snapshot, SnapshotStore};
use crate::StoreError;

/// Keeps the newest snapshot per stream: an older one arriving late changes nothing. The state
/// is JSON text: the database never looks inside it.
const UPSERT: &str = "
INSERT INTO ficus_snapshots AS s (stream_id, version, position, recorded_at_ms,
                                  schema_version, state, saved_at_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (stream_id) DO UPDATE SET
    version = excluded.version, position = excluded.position,
    recorded_at_ms = excluded.recorded_at_ms, schema_version = excluded.schema_version,
    state = excluded.state, saved_at_ms = excluded.saved_at_ms
WHERE excluded.version >= s.version";

const LOAD: &str = "SELECT version, position, recorded_at_ms, schema_version, state
                      FROM ficus_snapshots WHERE stream_id = $1";

pub struct PgSnapshotStore {
    pool: TimedPool,
}

impl PgSnapshotStore {
    /// Snapshots in the schema of `store` (migrated when the store opened), on its pool.
    pub fn for_store(store: &PgEventStore) -> Self {
        Self {
            pool: store.timed_pool().clone(),
        }
    }
}

#[async_trait]
impl SnapshotStore for PgSnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        let rows = query(&self.pool, LOAD, &[&stream.as_str()]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let state: String = row.get(4);
        let state = serde_json::from_str(&state)
            .map_err(|e| StoreError::Corrupt(format!("snapshot of {stream} is not JSON: {e}")))?;
        Ok(Some(Snapshot {
            stream: stream.clone(),
            version: row.get::<_, i64>(0) as u64,
            position: row.get::<_, i64>(1) as u64,
            recorded_at_ms: row.get(2),
            schema_version: row.get::<_, i32>(3) as u32,
            state,
        }))
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let state = encode_state(snapshot)?;
        let schema_version = i32::try_from(snapshot.schema_version)
            .map_err(|_| StoreError::Invalid("snapshot schema version over i32".into()))?;
        execute(
            &self.pool,
            UPSERT,
            &[
                &snapshot.stream.as_str(),
                &sql_int(snapshot.version),
                &sql_int(snapshot.position),
                &snapshot.recorded_at_ms,
                &schema_version,
                &state,
                &crate::now_ms(),
            ],
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, stream: &StreamId) -> Result<(), StoreError> {
        execute(
            &self.pool,
            "DELETE FROM ficus_snapshots WHERE stream_id = $1",
            &[&stream.as_str()],
        )
        .await
        .map(|_| ())
    }
}

/// Migration 4: the snapshot table.
pub(crate) const SCHEMA: &str = "
CREATE TABLE ficus_snapshots (
    stream_id      text    PRIMARY KEY,
    version        bigint  NOT NULL,
    position       bigint  NOT NULL,
    recorded_at_ms bigint  NOT NULL,
    schema_version integer NOT NULL,
    state          text    NOT NULL,
    saved_at_ms    bigint  NOT NULL
);";
