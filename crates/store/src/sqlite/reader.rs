//! A bounded pool of read connections used from blocking threads, and the event log's reads.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ficus_core::{EventType, Metadata, Position, RecordedEvent, StreamId, Version};
use rusqlite::{params, Connection, Row};
use tokio::sync::Semaphore;

use super::{open_connection_in, unavailable};
use crate::{StoreError, MAX_READ_LIMIT};

/// A bounded pool of SQLite connections, each lent to one blocking closure at a time.
/// Used for the event log's reads and by read models for their queries.
pub struct ConnectionPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ConnectionPool {
    /// Opens `n` query-only connections to the database at `path`.
    pub fn open_readers(path: &Path, n: usize) -> Result<Self, StoreError> {
        Self::open_readers_in(path, n, None)
    }

    /// [`ConnectionPool::open_readers`] through the named VFS (`None`: SQLite's default).
    pub(crate) fn open_readers_in(
        path: &Path,
        n: usize,
        vfs: Option<&str>,
    ) -> Result<Self, StoreError> {
        let n = n.max(1);
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let c = open_connection_in(path, vfs)?;
            c.execute_batch("PRAGMA query_only = ON;")
                .map_err(unavailable)?;
            conns.push(c);
        }
        Ok(Self {
            conns: Mutex::new(conns),
            permits: Arc::new(Semaphore::new(n)),
        })
    }

    /// Runs `f` on a free connection in a blocking thread; waits while all are busy.
    ///
    /// The blocking task owns the connection and the permit and puts both back itself, so a
    /// caller that is cancelled mid-read (a client hanging up) never loses a connection.
    pub async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("read pool closed".into()))?;
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .expect("a permit guarantees a free connection");
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            pool.conns
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
            // The permit goes back only after the connection is in the pool again.
            drop(permit);
            r
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("reader task failed: {e}")))?
    }
}

const COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, \
                       recorded_at_ms, metadata, payload";

fn corrupt(position: i64, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("event at position {position}: {what}"))
}

pub(crate) fn decode_row(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0).map_err(unavailable)?;
    let id: Vec<u8> = row.get(1).map_err(unavailable)?;
    let stream: String = row.get(2).map_err(unavailable)?;
    let version: i64 = row.get(3).map_err(unavailable)?;
    let event_type: String = row.get(4).map_err(unavailable)?;
    let schema_version: i64 = row.get(5).map_err(unavailable)?;
    let recorded_at_ms: i64 = row.get(6).map_err(unavailable)?;
    let metadata: String = row.get(7).map_err(unavailable)?;
    let payload: String = row.get(8).map_err(unavailable)?;
    Ok(RecordedEvent {
        id: uuid::Uuid::from_slice(&id).map_err(|e| corrupt(position, e))?,
        stream_id: StreamId::new(stream).map_err(|e| corrupt(position, e))?,
        version: version as Version,
        position: position as Position,
        event_type: EventType::new(event_type).map_err(|e| corrupt(position, e))?,
        schema_version: schema_version as u32,
        recorded_at_ms,
        metadata: serde_json::from_str::<Metadata>(&metadata).map_err(|e| corrupt(position, e))?,
        payload: serde_json::from_str(&payload).map_err(|e| corrupt(position, e))?,
    })
}

fn collect(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut rows = stmt.query(params).map_err(unavailable)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(unavailable)? {
        out.push(decode_row(row)?);
    }
    Ok(out)
}

/// Events of `stream` from `from_version`, none past the durable position `up_to` (rows the
/// writer committed but the syncer has not yet made durable stay invisible).
pub(crate) fn read_stream(
    conn: &Connection,
    stream: &StreamId,
    from_version: Version,
    up_to: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = ?1 AND version >= ?2 \
             AND position <= ?3 ORDER BY version LIMIT ?4"
        ))
        .map_err(unavailable)?;
    let limit = limit.min(MAX_READ_LIMIT) as i64;
    collect(
        &mut stmt,
        params![
            stream.as_str(),
            sql_int(from_version),
            sql_int(up_to),
            limit
        ],
    )
}

pub(crate) fn read_all(
    conn: &Connection,
    from_position: Position,
    up_to: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM events WHERE position >= ?1 AND position <= ?2 \
                 ORDER BY position LIMIT ?3"
        ))
        .map_err(unavailable)?;
    let limit = limit.min(MAX_READ_LIMIT) as i64;
    collect(
        &mut stmt,
        params![sql_int(from_position), sql_int(up_to), limit],
    )
}

/// A position or version as an SQLite integer. Values past `i64::MAX` (never stored) clamp to
/// it, so they compare as "beyond everything" instead of wrapping negative.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The version of `stream`'s last event at or before position `up_to`.
pub(crate) fn stream_version(
    conn: &Connection,
    stream: &StreamId,
    up_to: Position,
) -> Result<Version, StoreError> {
    let v: i64 = conn
        .prepare_cached(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream_id = ?1 AND position <= ?2",
        )
        .and_then(|mut s| s.query_row(params![stream.as_str(), sql_int(up_to)], |r| r.get(0)))
        .map_err(unavailable)?;
    Ok(v as Version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A read whose caller is dropped mid-flight (a client hanging up) must not lose its
    /// connection: after many such cancellations every connection is still usable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_reads_give_their_connection_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.db");
        drop(open_connection_in(&path, None).unwrap());
        let pool = Arc::new(ConnectionPool::open_readers(&path, 2).unwrap());
        for _ in 0..20 {
            let slow = pool.run(|_| {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            });
            // Cancelled while the blocking read runs.
            assert!(tokio::time::timeout(Duration::from_millis(2), slow)
                .await
                .is_err());
        }
        let reads: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(|c| {
                        c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                            .map_err(unavailable)
                    })
                    .await
                })
            })
            .collect();
        for r in reads {
            let one = tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .expect("a connection is free again")
                .unwrap()
                .unwrap();
            assert_eq!(one, 1);
        }
    }
}
