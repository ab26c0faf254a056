//! Idempotency keys on PostgreSQL: one table shared by every process. A claim is decided under
//! the record's row lock; a completion runs in the append's own transaction (see
//! `PgEventStore::append_completing_claim`), so events and answer commit together.

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use ficus_core::{ExpectedVersion, NewEvent, StreamId};

use super::{conn, execute, no_answer, query, unavailable, PgEventStore};
use crate::idempotency::{
    judge, new_token, Claim, ClaimRequest, IdempotencyRecord, IdempotencyStore, Judgement,
    Responder, StoredResponse, Ticket, MAX_PURGE_BATCH,
};
use crate::{AppendResult, StoreError};

/// Migration 3. `status` is NULL while the key's request is in flight.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE ficus_idempotency (
    scope           text    NOT NULL,
    key             text    NOT NULL,
    fingerprint     text    NOT NULL,
    token           bigint  NOT NULL,
    created_at_ms   bigint  NOT NULL,
    locked_until_ms bigint  NOT NULL,
    status          integer,
    body            text,
    PRIMARY KEY (scope, key)
);
CREATE INDEX ficus_idempotency_created ON ficus_idempotency (created_at_ms);
"#;

const COLUMNS: &str = "fingerprint, token, created_at_ms, locked_until_ms, status, body";

fn decode(row: &tokio_postgres::Row) -> IdempotencyRecord {
    let status: Option<i32> = row.get(4);
    let body: Option<String> = row.get(5);
    IdempotencyRecord {
        fingerprint: row.get(0),
        token: row.get(1),
        created_at_ms: row.get(2),
        locked_until_ms: row.get(3),
        response: status.map(|s| StoredResponse {
            status: s as u16,
            body: body.unwrap_or_default(),
        }),
    }
}

/// Writes the answer of the claim `ticket` holds, on `client` (a transaction when it must be
/// atomic with an append); false when the ticket holds the key no longer.
pub(super) async fn complete_in(
    client: &impl GenericClient,
    ticket: &Ticket,
    r: &StoredResponse,
) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE ficus_idempotency SET status = $4, body = $5, locked_until_ms = 0 \
             WHERE scope = $1 AND key = $2 AND token = $3 AND status IS NULL",
            &[
                &ticket.scope,
                &ticket.key,
                &ticket.token,
                &(r.status as i32),
                &r.body,
            ],
        )
        .await
        .map_err(unavailable)?;
    Ok(n == 1)
}

/// The claim of `req` in one transaction on `client`.
async fn claim_on(
    client: &mut deadpool_postgres::Object,
    req: &ClaimRequest<'_>,
) -> Result<Claim, StoreError> {
    let tx = client.transaction().await.map_err(unavailable)?;
    let token = new_token();
    let owned = |created_at_ms| {
        Claim::Owned(Ticket {
            scope: req.scope.to_owned(),
            key: req.key.to_owned(),
            token,
            created_at_ms,
        })
    };
    // The common case, a new key, in one statement; otherwise the existing row is locked
    // so concurrent claims (from any process) are judged one after the other.
    let inserted = tx
        .execute(
            "INSERT INTO ficus_idempotency \
             (scope, key, fingerprint, token, created_at_ms, locked_until_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING",
            &[
                &req.scope,
                &req.key,
                &req.fingerprint,
                &token,
                &req.now_ms,
                &(req.now_ms + req.lease_ms),
            ],
        )
        .await
        .map_err(unavailable)?;
    let claim = if inserted == 1 {
        owned(req.now_ms)
    } else {
        let row = tx
            .query_opt(
                &format!(
                    "SELECT {COLUMNS} FROM ficus_idempotency \
                     WHERE scope = $1 AND key = $2 FOR UPDATE"
                ),
                &[&req.scope, &req.key],
            )
            .await
            .map_err(unavailable)?;
        match row.map(|r| judge(&decode(&r), req)) {
            // Purged between the two statements: the caller's next look claims it.
            None => Claim::InProgress,
            Some(Judgement::Fresh) => {
                tx.execute(
                    "UPDATE ficus_idempotency SET fingerprint = $3, token = $4, \
                     created_at_ms = $5, locked_until_ms = $6, status = NULL, body = NULL \
                     WHERE scope = $1 AND key = $2",
                    &[
                        &req.scope,
                        &req.key,
                        &req.fingerprint,
                        &token,
                        &req.now_ms,
                        &(req.now_ms + req.lease_ms),
                    ],
                )
                .await
                .map_err(unavailable)?;
                owned(req.now_ms)
            }
            Some(Judgement::TakeOver { created_at_ms }) => {
                tx.execute(
                    "UPDATE ficus_idempotency SET token = $3, locked_until_ms = $4 \
                     WHERE scope = $1 AND key = $2",
                    &[&req.scope, &req.key, &token, &(req.now_ms + req.lease_ms)],
                )
                .await
                .map_err(unavailable)?;
                owned(created_at_ms)
            }
            Some(Judgement::Decided(claim)) => claim,
        }
    };
    tx.commit().await.map_err(unavailable)?;
    Ok(claim)
}

#[async_trait]
impl IdempotencyStore for PgEventStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let mut client = conn(self.pool()).await?;
        // The claim's transaction as a whole is bounded (a few statements): it waits on
        // another claim's row lock at most that long.
        let limit = self.config().transaction_timeout();
        let answer = tokio::time::timeout(limit, claim_on(&mut client, req)).await;
        answer.unwrap_or_else(|_| Err(no_answer(client, limit)))
    }

    async fn append_completing(
        &self,
        ticket: &Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: Responder,
    ) -> Result<AppendResult, StoreError> {
        self.append_completing_claim(ticket, stream, expected, events, respond)
            .await
    }

    async fn complete(
        &self,
        ticket: &Ticket,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let client = conn(self.pool()).await?;
        let limit = self.timed_pool().statement_timeout;
        let answer = tokio::time::timeout(limit, complete_in(&client, ticket, response)).await;
        answer.unwrap_or_else(|_| Err(no_answer(client, limit)))
    }

    async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        execute(
            self.timed_pool(),
            "DELETE FROM ficus_idempotency \
             WHERE scope = $1 AND key = $2 AND token = $3 AND status IS NULL",
            &[&ticket.scope, &ticket.key, &ticket.token],
        )
        .await?;
        Ok(())
    }

    async fn purge(&self, created_before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let limit = limit.min(MAX_PURGE_BATCH) as i64;
        // SKIP LOCKED: a sweep never waits on a claim being judged in another process.
        let n = execute(
            self.timed_pool(),
            "DELETE FROM ficus_idempotency WHERE (scope, key) IN \
             (SELECT scope, key FROM ficus_idempotency WHERE created_at_ms < $1 \
              ORDER BY created_at_ms LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&created_before_ms, &limit],
        )
        .await?;
        Ok(n as usize)
    }

    async fn get(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        let rows = query(
            self.timed_pool(),
            &format!("SELECT {COLUMNS} FROM ficus_idempotency WHERE scope = $1 AND key = $2"),
            &[&scope, &key],
        )
        .await?;
        Ok(rows.first().map(decode))
    }
}
