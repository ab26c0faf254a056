//! The embedded transactional outbox: side effects of an append, recorded in the append's own
//! transaction.
//!
//! A rule ([`OutboxRule`], installed with [`SqliteEventStore::install_outbox`]) looks at each
//! append's stream and events and names the messages it causes. They are inserted into
//! `ficus_outbox`, in the event log's file, inside the writer's transaction that holds the
//! events (through the append's savepoint op, [`SqliteEventStore::append_with`]), so both are
//! durable together or not at all: no effect without its events, no events without their
//! effect. A relay (`ficus_runtime::outbox`) turns each row into its effect and then deletes
//! it; a crash between the two re-delivers the row, so an effect must be idempotent (the saga
//! start is a job with a unique key). The rule sees events as stored (personal fields already
//! sealed), so it must only read what is not personal: event types, stream ids, ids.

use std::sync::Arc;

use ficus_core::{NewEvent, StreamId};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{unavailable, SqliteEventStore};
use crate::StoreError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS ficus_outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    kind               TEXT    NOT NULL,
    payload            TEXT    NOT NULL,
    created_at_ms      INTEGER NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at_ms INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT
);
CREATE INDEX IF NOT EXISTS ficus_outbox_due ON ficus_outbox (next_attempt_at_ms, id);
";

/// Most messages one append may cause; an append whose rule names more is refused (400),
/// so that one command cannot flood the outbox.
pub const MAX_OUTBOX_MESSAGES_PER_APPEND: usize = 100;
/// Most rows one relay pass reads.
pub const MAX_OUTBOX_BATCH: usize = 1000;

/// One side effect to perform once the append that caused it is durable.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    /// What to do, e.g. `saga.start`; the relay's handler dispatches on it.
    pub kind: String,
    pub payload: Value,
}

/// The messages an append to `stream` of `events` causes (usually none).
pub type OutboxRule = Arc<dyn Fn(&StreamId, &[NewEvent]) -> Vec<OutboxMessage> + Send + Sync>;

/// A row waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    /// Failed deliveries so far.
    pub attempts: u32,
}

pub(crate) fn insert(
    conn: &Connection,
    messages: &[OutboxMessage],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO ficus_outbox (kind, payload, created_at_ms, next_attempt_at_ms)
             VALUES (?1, ?2, ?3, ?3)",
        )
        .map_err(unavailable)?;
    for m in messages {
        stmt.execute(params![m.kind, m.payload.to_string(), now_ms])
            .map_err(unavailable)?;
    }
    Ok(())
}

impl SqliteEventStore {
    /// Installs the outbox rule: from now on every append records the messages `rule` names
    /// in its own transaction. Installed once, before the first append that may cause one.
    pub fn install_outbox(&self, rule: OutboxRule) -> Result<(), StoreError> {
        self.outbox_rule
            .set(rule)
            .map_err(|_| StoreError::Unavailable("an outbox rule is already installed".into()))
    }

    /// The messages the installed rule names for an append, checked against the bound.
    pub(crate) fn outbox_messages(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let Some(rule) = self.outbox_rule.get() else {
            return Ok(Vec::new());
        };
        let messages = rule(stream, events);
        if messages.len() > MAX_OUTBOX_MESSAGES_PER_APPEND {
            return Err(StoreError::Invalid(format!(
                "the append causes {} side effects, more than {MAX_OUTBOX_MESSAGES_PER_APPEND}",
                messages.len()
            )));
        }
        Ok(messages)
    }

    /// Rows due for delivery at `now_ms`, oldest first, at most `limit` (capped at
    /// [`MAX_OUTBOX_BATCH`]).
    pub async fn outbox_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxRow>, StoreError> {
        let limit = limit.clamp(1, MAX_OUTBOX_BATCH) as i64;
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT id, kind, payload, attempts FROM ficus_outbox
                     WHERE next_attempt_at_ms <= ?1 ORDER BY id LIMIT ?2",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(params![now_ms, limit], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, u32>(3)?,
                    ))
                })
                .map_err(unavailable)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(id, kind, payload, attempts)| {
                    let payload = serde_json::from_str(&payload).map_err(|e| {
                        StoreError::Corrupt(format!("outbox row {id}: payload is not JSON: {e}"))
                    })?;
                    Ok(OutboxRow {
                        id,
                        kind,
                        payload,
                        attempts,
                    })
                })
                .collect()
        })
        .await
    }

    /// When the next row is due (`None`: the outbox is empty).
    pub async fn outbox_next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT MIN(next_attempt_at_ms) FROM ficus_outbox",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(unavailable)
        })
        .await
    }

    /// Removes a delivered row (durably: through the writer).
    pub async fn outbox_delete(&self, id: i64) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute("DELETE FROM ficus_outbox WHERE id = ?1", [id])
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    /// Records a failed delivery: the row is due again at `next_attempt_at_ms`.
    pub async fn outbox_failed(
        &self,
        id: i64,
        next_attempt_at_ms: i64,
        error: String,
    ) -> Result<(), StoreError> {
        self.write(move |c| {
            c.execute(
                "UPDATE ficus_outbox SET attempts = attempts + 1, next_attempt_at_ms = ?2,
                 last_error = ?3 WHERE id = ?1",
                params![id, next_attempt_at_ms, error],
            )
            .map(|_| ())
            .map_err(unavailable)
        })
        .await
    }

    /// Rows waiting in the outbox.
    pub async fn outbox_len(&self) -> Result<u64, StoreError> {
        self.read(|c| {
            c.query_row("SELECT COUNT(*) FROM ficus_outbox", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    /// Woken after every append that recorded messages, so a relay need not poll fast.
    pub fn outbox_wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.outbox_wake
    }
}
