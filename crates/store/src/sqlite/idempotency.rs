//! Idempotency keys on the embedded store: a table in the event log's file, written through the
//! one group-commit writer. A completion rides in the append's own savepoint
//! ([`SqliteEventStore::append_with`]), so the events and the recorded answer are durable
//! together or not at all.

use async_trait::async_trait;
use ficus_core::{ExpectedVersion, NewEvent, StreamId};
use rusqlite::{params, Connection, OptionalExtension};

use super::{unavailable, SqliteEventStore};
use crate::idempotency::{
    judge, new_token, Claim, ClaimRequest, IdempotencyRecord, IdempotencyStore, Judgement,
    Responder, StoredResponse, Ticket, MAX_PURGE_BATCH,
};
use crate::{AppendResult, StoreError};

/// The table, created with the rest of the schema when the file is opened.
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope           TEXT    NOT NULL,
    key             TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    token           INTEGER NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    locked_until_ms INTEGER NOT NULL,
    status          INTEGER,          -- NULL while in flight
    body            TEXT,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at_ms);
";

fn read_record(
    c: &Connection,
    scope: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, StoreError> {
    c.prepare_cached(
        "SELECT fingerprint, token, created_at_ms, locked_until_ms, status, body \
         FROM idempotency_keys WHERE scope = ?1 AND key = ?2",
    )
    .and_then(|mut s| {
        s.query_row(params![scope, key], |r| {
            let status: Option<i64> = r.get(4)?;
            let body: Option<String> = r.get(5)?;
            Ok(IdempotencyRecord {
                fingerprint: r.get(0)?,
                token: r.get(1)?,
                created_at_ms: r.get(2)?,
                locked_until_ms: r.get(3)?,
                response: status.map(|s| StoredResponse {
                    status: s as u16,
                    body: body.unwrap_or_default(),
                }),
            })
        })
        .optional()
    })
    .map_err(unavailable)
}

/// Writes the answer of the claim `ticket` holds; false when it holds it no longer.
fn complete_in(c: &Connection, ticket: &Ticket, r: &StoredResponse) -> Result<bool, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE idempotency_keys SET status = ?4, body = ?5, locked_until_ms = 0 \
             WHERE scope = ?1 AND key = ?2 AND token = ?3 AND status IS NULL",
        )
        .and_then(|mut s| {
            s.execute(params![
                ticket.scope,
                ticket.key,
                ticket.token,
                r.status as i64,
                r.body
            ])
        })
        .map_err(unavailable)?;
    Ok(n == 1)
}

#[async_trait]
impl IdempotencyStore for SqliteEventStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let (scope, key, fingerprint) = (
            req.scope.to_owned(),
            req.key.to_owned(),
            req.fingerprint.to_owned(),
        );
        let (now_ms, lease_ms, retention_ms) = (req.now_ms, req.lease_ms, req.retention_ms);
        // Decided inside the writer: it is the only writer, so read-then-write cannot race.
        self.write(move |c| {
            let req = ClaimRequest {
                scope: &scope,
                key: &key,
                fingerprint: &fingerprint,
                now_ms,
                lease_ms,
                retention_ms,
            };
            let token = new_token();
            let owned = |created_at_ms| {
                Claim::Owned(Ticket {
                    scope: scope.clone(),
                    key: key.clone(),
                    token,
                    created_at_ms,
                })
            };
            match read_record(c, &scope, &key)?.map(|r| judge(&r, &req)) {
                None | Some(Judgement::Fresh) => {
                    c.prepare_cached(
                        "INSERT OR REPLACE INTO idempotency_keys \
                         (scope, key, fingerprint, token, created_at_ms, locked_until_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            scope,
                            key,
                            fingerprint,
                            token,
                            now_ms,
                            now_ms + lease_ms
                        ])
                    })
                    .map_err(unavailable)?;
                    Ok(owned(now_ms))
                }
                Some(Judgement::TakeOver { created_at_ms }) => {
                    c.prepare_cached(
                        "UPDATE idempotency_keys SET token = ?3, locked_until_ms = ?4 \
                         WHERE scope = ?1 AND key = ?2",
                    )
                    .and_then(|mut s| s.execute(params![scope, key, token, now_ms + lease_ms]))
                    .map_err(unavailable)?;
                    Ok(owned(created_at_ms))
                }
                Some(Judgement::Decided(claim)) => Ok(claim),
            }
        })
        .await
    }

    async fn append_completing(
        &self,
        ticket: &Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: Responder,
    ) -> Result<AppendResult, StoreError> {
        let n = events.len() as u64;
        let (ticket, stream_id) = (ticket.clone(), stream.clone());
        let (result, ()) = self
            .append_with(stream, expected, events, move |c| {
                // The events were just inserted in this transaction: the stream's last row is
                // this append's last event, and its events are contiguous.
                let (last_version, last_position): (i64, i64) = c
                    .prepare_cached(
                        "SELECT version, position FROM events WHERE stream_id = ?1 \
                         ORDER BY version DESC LIMIT 1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![stream_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    })
                    .map_err(unavailable)?;
                let (last_version, last_position) = (last_version as u64, last_position as u64);
                let result = AppendResult {
                    first_version: last_version + 1 - n,
                    last_version,
                    first_position: last_position + 1 - n,
                    last_position,
                };
                if complete_in(c, &ticket, &respond(&result))? {
                    Ok(())
                } else {
                    Err(StoreError::ClaimLost)
                }
            })
            .await?;
        Ok(result)
    }

    async fn complete(
        &self,
        ticket: &Ticket,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let (ticket, response) = (ticket.clone(), response.clone());
        self.write(move |c| complete_in(c, &ticket, &response))
            .await
    }

    async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let ticket = ticket.clone();
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM idempotency_keys \
                 WHERE scope = ?1 AND key = ?2 AND token = ?3 AND status IS NULL",
            )
            .and_then(|mut s| s.execute(params![ticket.scope, ticket.key, ticket.token]))
            .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn purge(&self, created_before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = limit.min(MAX_PURGE_BATCH) as i64;
        self.write(move |c| {
            c.prepare_cached(
                "DELETE FROM idempotency_keys WHERE (scope, key) IN \
                 (SELECT scope, key FROM idempotency_keys WHERE created_at_ms < ?1 \
                  ORDER BY created_at_ms LIMIT ?2)",
            )
            .and_then(|mut s| s.execute(params![created_before_ms, limit]))
            .map_err(unavailable)
        })
        .await
    }

    async fn get(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let (scope, key) = (scope.to_owned(), key.to_owned());
        self.read(move |c| read_record(c, &scope, &key)).await
    }
}
