//! Who references a blob: one row per (referrer kind, referrer id, blob), with the time it was
//! recorded. The garbage collector deletes only blobs without rows (and older than the grace
//! period). On the embedded store the table lives in the event log's file and is written
//! through its one writer; on PostgreSQL it is `ficus_blob_refs` (migration 7).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::params;

use super::BlobId;
use crate::postgres::{execute, query, PgEventStore};
use crate::sqlite::{unavailable, SqliteEventStore};
use crate::StoreError;

/// Most references one listing returns.
pub const BLOB_REFS_MAX_PAGE: usize = 1000;
/// Longest referrer kind or id, in bytes.
pub const REFERRER_MAX_BYTES: usize = 256;

/// One reference to a blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    pub blob: BlobId,
    pub referrer_kind: String,
    pub referrer_id: String,
    pub created_at_ms: i64,
}

impl BlobRef {
    pub fn new(
        blob: BlobId,
        referrer_kind: impl Into<String>,
        referrer_id: impl Into<String>,
        created_at_ms: i64,
    ) -> Self {
        Self {
            blob,
            referrer_kind: referrer_kind.into(),
            referrer_id: referrer_id.into(),
            created_at_ms,
        }
    }

    /// The listing order: referrer kind, referrer id, blob.
    fn key(&self) -> (String, String, BlobId) {
        (
            self.referrer_kind.clone(),
            self.referrer_id.clone(),
            self.blob.clone(),
        )
    }
}

fn validate(r: &BlobRef) -> Result<(), StoreError> {
    for (what, v) in [("kind", &r.referrer_kind), ("id", &r.referrer_id)] {
        if v.is_empty() || v.len() > REFERRER_MAX_BYTES {
            return Err(StoreError::Invalid(format!(
                "a blob referrer {what} is 1-{REFERRER_MAX_BYTES} bytes"
            )));
        }
    }
    Ok(())
}

/// The reference table.
#[async_trait]
pub trait BlobRefs: Send + Sync + 'static {
    /// Records `r` durably; recording it again changes nothing.
    async fn add(&self, r: &BlobRef) -> Result<(), StoreError>;
    /// Drops every reference of the referrer; how many there were.
    async fn release(&self, referrer_kind: &str, referrer_id: &str) -> Result<u64, StoreError>;
    /// Drops every reference to `blob` (an admin deleting it); how many there were.
    async fn release_blob(&self, blob: &BlobId) -> Result<u64, StoreError>;
    /// The references to `blob`, at most `limit` (capped at [`BLOB_REFS_MAX_PAGE`]).
    async fn of_blob(&self, blob: &BlobId, limit: usize) -> Result<Vec<BlobRef>, StoreError>;
    /// The references the referrer holds, oldest first.
    async fn of_referrer(
        &self,
        referrer_kind: &str,
        referrer_id: &str,
    ) -> Result<Vec<BlobRef>, StoreError>;
    /// Every reference in (kind, id, blob) order after `after`'s, at most `limit`.
    async fn list(&self, after: Option<&BlobRef>, limit: usize)
        -> Result<Vec<BlobRef>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// In memory

/// The in-memory twin.
#[derive(Default)]
pub struct MemBlobRefs {
    rows: Mutex<BTreeMap<(String, String, BlobId), i64>>,
}

impl MemBlobRefs {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String, BlobId), i64>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn from_key(k: &(String, String, BlobId), at: i64) -> BlobRef {
    BlobRef::new(k.2.clone(), k.0.clone(), k.1.clone(), at)
}

#[async_trait]
impl BlobRefs for MemBlobRefs {
    async fn add(&self, r: &BlobRef) -> Result<(), StoreError> {
        validate(r)?;
        self.lock().entry(r.key()).or_insert(r.created_at_ms);
        Ok(())
    }

    async fn release(&self, kind: &str, id: &str) -> Result<u64, StoreError> {
        let mut rows = self.lock();
        let before = rows.len();
        rows.retain(|k, _| !(k.0 == kind && k.1 == id));
        Ok((before - rows.len()) as u64)
    }

    async fn release_blob(&self, blob: &BlobId) -> Result<u64, StoreError> {
        let mut rows = self.lock();
        let before = rows.len();
        rows.retain(|k, _| &k.2 != blob);
        Ok((before - rows.len()) as u64)
    }

    async fn of_blob(&self, blob: &BlobId, limit: usize) -> Result<Vec<BlobRef>, StoreError> {
        Ok(self
            .lock()
            .iter()
            .filter(|(k, _)| &k.2 == blob)
            .take(limit.min(BLOB_REFS_MAX_PAGE))
            .map(|(k, at)| from_key(k, *at))
            .collect())
    }

    async fn of_referrer(&self, kind: &str, id: &str) -> Result<Vec<BlobRef>, StoreError> {
        let mut out: Vec<BlobRef> = self
            .lock()
            .iter()
            .filter(|(k, _)| k.0 == kind && k.1 == id)
            .take(BLOB_REFS_MAX_PAGE)
            .map(|(k, at)| from_key(k, *at))
            .collect();
        out.sort_by_key(|r| r.created_at_ms);
        Ok(out)
    }

    async fn list(
        &self,
        after: Option<&BlobRef>,
        limit: usize,
    ) -> Result<Vec<BlobRef>, StoreError> {
        let rows = self.lock();
        let after = after.map(BlobRef::key);
        Ok(rows
            .iter()
            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
            .take(limit.min(BLOB_REFS_MAX_PAGE))
            .map(|(k, at)| from_key(k, *at))
            .collect())
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blob_refs (
    referrer_kind TEXT    NOT NULL,
    referrer_id   TEXT    NOT NULL,
    blob          TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (referrer_kind, referrer_id, blob)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blob_refs_blob ON blob_refs (blob);
";

/// References in the event log's file. Every write goes through the store's writer (one
/// group commit, acknowledged after the WAL fsync); reads use its read pool.
pub struct SqliteBlobRefs {
    store: Arc<SqliteEventStore>,
}

impl SqliteBlobRefs {
    /// Creates the table if missing (through the writer, so this never races an append).
    pub async fn open(store: Arc<SqliteEventStore>) -> Result<Self, StoreError> {
        store
            .write(|c| c.execute_batch(SQLITE_SCHEMA).map_err(unavailable))
            .await?;
        Ok(Self { store })
    }
}

fn sqlite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode(rows: Vec<(String, String, String, i64)>) -> Result<Vec<BlobRef>, StoreError> {
    rows.into_iter()
        .map(|(kind, id, blob, at)| {
            let blob = BlobId::parse(&blob)
                .map_err(|e| StoreError::Corrupt(format!("blob reference: {e}")))?;
            Ok(BlobRef::new(blob, kind, id, at))
        })
        .collect()
}

const SELECT: &str = "SELECT referrer_kind, referrer_id, blob, created_at_ms FROM blob_refs";

impl SqliteBlobRefs {
    async fn select(
        &self,
        sql: String,
        args: Vec<rusqlite::types::Value>,
    ) -> Result<Vec<BlobRef>, StoreError> {
        let rows = self
            .store
            .read(move |c| {
                let mut s = c.prepare_cached(&sql).map_err(unavailable)?;
                let rows = s
                    .query_map(rusqlite::params_from_iter(args), sqlite_row)
                    .map_err(unavailable)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                Ok(rows)
            })
            .await?;
        decode(rows)
    }
}

#[async_trait]
impl BlobRefs for SqliteBlobRefs {
    async fn add(&self, r: &BlobRef) -> Result<(), StoreError> {
        validate(r)?;
        let r = r.clone();
        self.store
            .write(move |c| {
                c.prepare_cached(
                    "INSERT OR IGNORE INTO blob_refs \
                     (referrer_kind, referrer_id, blob, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        r.referrer_kind,
                        r.referrer_id,
                        r.blob.hex(),
                        r.created_at_ms
                    ])
                })
                .map(|_| ())
                .map_err(unavailable)
            })
            .await
    }

    async fn release(&self, kind: &str, id: &str) -> Result<u64, StoreError> {
        let (kind, id) = (kind.to_owned(), id.to_owned());
        self.store
            .write(move |c| {
                c.prepare_cached(
                    "DELETE FROM blob_refs WHERE referrer_kind = ?1 AND referrer_id = ?2",
                )
                .and_then(|mut s| s.execute(params![kind, id]))
                .map(|n| n as u64)
                .map_err(unavailable)
            })
            .await
    }

    async fn release_blob(&self, blob: &BlobId) -> Result<u64, StoreError> {
        let blob = blob.hex().to_owned();
        self.store
            .write(move |c| {
                c.prepare_cached("DELETE FROM blob_refs WHERE blob = ?1")
                    .and_then(|mut s| s.execute(params![blob]))
                    .map(|n| n as u64)
                    .map_err(unavailable)
            })
            .await
    }

    async fn of_blob(&self, blob: &BlobId, limit: usize) -> Result<Vec<BlobRef>, StoreError> {
        self.select(
            format!("{SELECT} WHERE blob = ?1 ORDER BY referrer_kind, referrer_id LIMIT ?2"),
            vec![
                blob.hex().to_owned().into(),
                (limit.min(BLOB_REFS_MAX_PAGE) as i64).into(),
            ],
        )
        .await
    }

    async fn of_referrer(&self, kind: &str, id: &str) -> Result<Vec<BlobRef>, StoreError> {
        self.select(
            format!(
                "{SELECT} WHERE referrer_kind = ?1 AND referrer_id = ?2 \
                 ORDER BY created_at_ms, blob LIMIT {BLOB_REFS_MAX_PAGE}"
            ),
            vec![kind.to_owned().into(), id.to_owned().into()],
        )
        .await
    }

    async fn list(
        &self,
        after: Option<&BlobRef>,
        limit: usize,
    ) -> Result<Vec<BlobRef>, StoreError> {
        let limit = (limit.min(BLOB_REFS_MAX_PAGE) as i64).into();
        match after {
            None => {
                self.select(
                    format!("{SELECT} ORDER BY referrer_kind, referrer_id, blob LIMIT ?1"),
                    vec![limit],
                )
                .await
            }
            Some(a) => {
                self.select(
                    format!(
                        "{SELECT} WHERE (referrer_kind, referrer_id, blob) > (?1, ?2, ?3) \
                         ORDER BY referrer_kind, referrer_id, blob LIMIT ?4"
                    ),
                    vec![
                        a.referrer_kind.clone().into(),
                        a.referrer_id.clone().into(),
                        a.blob.hex().to_owned().into(),
                        limit,
                    ],
                )
                .await
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// Migration 7 of the PostgreSQL schema.
pub const PG_SCHEMA: &str = "
CREATE TABLE ficus_blob_refs (
    referrer_kind text   NOT NULL,
    referrer_id   text   NOT NULL,
    blob          text   NOT NULL,
    created_at_ms bigint NOT NULL,
    PRIMARY KEY (referrer_kind, referrer_id, blob)
);
CREATE INDEX ficus_blob_refs_blob ON ficus_blob_refs (blob);
";

const PG_SELECT: &str =
    "SELECT referrer_kind, referrer_id, blob, created_at_ms FROM ficus_blob_refs";

/// References in the event log's schema, shared by every process.
pub struct PgBlobRefs {
    pool: crate::postgres::TimedPool,
}

impl PgBlobRefs {
    /// References in the schema of `store` (migrated when it opened), on its pool.
    pub fn for_store(store: &PgEventStore) -> Self {
        Self {
            pool: store.timed_pool().clone(),
        }
    }
}

fn pg_decode(rows: Vec<tokio_postgres::Row>) -> Result<Vec<BlobRef>, StoreError> {
    decode(
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect(),
    )
}

#[async_trait]
impl BlobRefs for PgBlobRefs {
    async fn add(&self, r: &BlobRef) -> Result<(), StoreError> {
        validate(r)?;
        execute(
            &self.pool,
            "INSERT INTO ficus_blob_refs (referrer_kind, referrer_id, blob, created_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[
                &r.referrer_kind,
                &r.referrer_id,
                &r.blob.hex(),
                &r.created_at_ms,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn release(&self, kind: &str, id: &str) -> Result<u64, StoreError> {
        execute(
            &self.pool,
            "DELETE FROM ficus_blob_refs WHERE referrer_kind = $1 AND referrer_id = $2",
            &[&kind, &id],
        )
        .await
    }

    async fn release_blob(&self, blob: &BlobId) -> Result<u64, StoreError> {
        execute(
            &self.pool,
            "DELETE FROM ficus_blob_refs WHERE blob = $1",
            &[&blob.hex()],
        )
        .await
    }

    async fn of_blob(&self, blob: &BlobId, limit: usize) -> Result<Vec<BlobRef>, StoreError> {
        let limit = limit.min(BLOB_REFS_MAX_PAGE) as i64;
        let sql =
            format!("{PG_SELECT} WHERE blob = $1 ORDER BY referrer_kind, referrer_id LIMIT $2");
        pg_decode(query(&self.pool, &sql, &[&blob.hex(), &limit]).await?)
    }

    async fn of_referrer(&self, kind: &str, id: &str) -> Result<Vec<BlobRef>, StoreError> {
        let sql = format!(
            "{PG_SELECT} WHERE referrer_kind = $1 AND referrer_id = $2 \
             ORDER BY created_at_ms, blob LIMIT {BLOB_REFS_MAX_PAGE}"
        );
        pg_decode(query(&self.pool, &sql, &[&kind, &id]).await?)
    }

    async fn list(
        &self,
        after: Option<&BlobRef>,
        limit: usize,
    ) -> Result<Vec<BlobRef>, StoreError> {
        let limit = limit.min(BLOB_REFS_MAX_PAGE) as i64;
        let rows = match after {
            None => {
                let sql = format!(
                    "{PG_SELECT} ORDER BY referrer_kind COLLATE \"C\", referrer_id COLLATE \"C\", \
                     blob COLLATE \"C\" LIMIT $1"
                );
                query(&self.pool, &sql, &[&limit]).await?
            }
            Some(a) => {
                // COLLATE "C": the same byte order as the cursor's, whatever the database's.
                let sql = format!(
                    "{PG_SELECT} WHERE (referrer_kind COLLATE \"C\", referrer_id COLLATE \"C\", \
                     blob COLLATE \"C\") > ($1, $2, $3) ORDER BY referrer_kind COLLATE \"C\", \
                     referrer_id COLLATE \"C\", blob COLLATE \"C\" LIMIT $4"
                );
                query(
                    &self.pool,
                    &sql,
                    &[&a.referrer_kind, &a.referrer_id, &a.blob.hex(), &limit],
                )
                .await?
            }
        };
        pg_decode(rows)
    }
}
