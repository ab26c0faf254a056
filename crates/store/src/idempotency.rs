//! The idempotency-key port: a caller's key, claimed before its command runs and completed in
//! the SAME transaction as the command's events, so a repeat is answered from the record and
//! never runs the command a second time (docs/adr/0008-idempotency-keys.md).
//!
//! The life of a key (scope = the caller, key = the caller's `Idempotency-Key`):
//! 1. [`IdempotencyStore::claim`] either hands out a [`Ticket`] (a fresh random token on an
//!    in-progress record with a lease), or says the key is completed ([`Claim::Replay`]),
//!    held by a live claim ([`Claim::InProgress`]) or used for another request
//!    ([`Claim::Mismatch`]).
//! 2. The command's append goes through [`IdempotencyStore::append_completing`]: the events and
//!    the completed record (status and body computed from the append's result) commit
//!    together, and only if the ticket's token is still the record's token. A claim whose lease
//!    ran out may be taken over by a retry (new token); the old holder's append then fails with
//!    [`StoreError::ClaimLost`] and writes nothing. Hence at most one effect per key, even when
//!    a process dies between claim and append.
//! 3. A command that wrote nothing (a refusal, a no-op) records its answer with
//!    [`IdempotencyStore::complete`]; one that failed for infrastructure reasons gives the key
//!    back with [`IdempotencyStore::release`] so a retry runs it again.
//! 4. Records older than the retention window are ignored by `claim` and deleted in bounded
//!    batches by [`IdempotencyStore::purge`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use tokio::sync::broadcast;

use crate::{AppendResult, EventStore, LiveBatch, StoreError};

/// Longest idempotency key accepted, in bytes (printable ASCII only).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;
/// Longest scope (caller id) kept with a key, in bytes.
pub const MAX_IDEMPOTENCY_SCOPE_BYTES: usize = 255;
/// Most records one [`IdempotencyStore::purge`] call deletes, whatever the caller asks.
pub const MAX_PURGE_BATCH: usize = 10_000;

/// How long keys live and how their in-flight claims behave.
#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a record answers repeats; older ones are ignored, then purged.
    pub retention: Duration,
    /// How long a claim holds its key before a retry may take it over (the holder is presumed
    /// dead). A holder that outlives it loses its claim and commits nothing.
    pub lease: Duration,
    /// Longest a repeat waits for an in-flight first request before `409 request_in_progress`.
    pub in_flight_wait: Duration,
    /// Interval between looks at an in-flight key while waiting.
    pub in_flight_poll: Duration,
    /// Interval between purge sweeps.
    pub purge_interval: Duration,
    /// Records deleted per purge sweep (at most [`MAX_PURGE_BATCH`]).
    pub purge_batch: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(48 * 3600),
            lease: Duration::from_secs(30),
            in_flight_wait: Duration::from_secs(5),
            in_flight_poll: Duration::from_millis(20),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1000,
        }
    }
}

/// What a key's first request answered: replayed verbatim to every repeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    /// The response body (JSON text).
    pub body: String,
}

/// A claim on a key: only the holder of the current token may complete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub scope: String,
    pub key: String,
    pub token: i64,
    /// When the key's record was created; kept across takeovers, so (scope, key, created)
    /// names this use of the key even after a crash (a retry derives the same effect id).
    pub created_at_ms: i64,
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is now held by this ticket: run the command.
    Owned(Ticket),
    /// The key's request completed: answer this.
    Replay(StoredResponse),
    /// Another request holds the key and its lease has not run out.
    InProgress,
    /// The key was used for a request with another fingerprint.
    Mismatch,
}

/// One request for [`IdempotencyStore::claim`]. Times are passed in so tests control them.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    /// A digest of what the request asks (method, path, body): a repeat must match it.
    pub fingerprint: &'a str,
    pub now_ms: i64,
    pub lease_ms: i64,
    pub retention_ms: i64,
}

/// A stored record, as [`IdempotencyStore::get`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub token: i64,
    pub created_at_ms: i64,
    pub locked_until_ms: i64,
    /// `None` while the key's request is in flight.
    pub response: Option<StoredResponse>,
}

/// Turns an append's result into the answer recorded with it (the response names the version
/// and position, known only once the append is placed).
pub type Responder = Arc<dyn Fn(&AppendResult) -> StoredResponse + Send + Sync>;

/// The idempotency-key port. Every adapter passes [`crate::conformance::idempotency`].
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `req.key` for `req.scope`, or says why not. A record older than
    /// `req.retention_ms` counts as absent; an in-progress one whose lease ran out is taken
    /// over with a new token.
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError>;

    /// Appends `events` and completes `ticket` with `respond(result)` in one transaction. When
    /// the ticket is no longer the key's holder, nothing is written and the answer is
    /// [`StoreError::ClaimLost`]; a refused expectation leaves the claim in progress.
    async fn append_completing(
        &self,
        ticket: &Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: Responder,
    ) -> Result<AppendResult, StoreError>;

    /// Records the answer of a claimed request that wrote no events. `Ok(false)` when the
    /// ticket no longer holds the key (nothing written).
    async fn complete(
        &self,
        ticket: &Ticket,
        response: &StoredResponse,
    ) -> Result<bool, StoreError>;

    /// Gives an in-progress claim back (its request failed before any effect), so a retry runs
    /// at once instead of waiting out the lease. A no-op when the ticket no longer holds it.
    async fn release(&self, ticket: &Ticket) -> Result<(), StoreError>;

    /// Deletes at most `limit` (capped at [`MAX_PURGE_BATCH`]) records created before
    /// `created_before_ms`. Returns how many went.
    async fn purge(&self, created_before_ms: i64, limit: usize) -> Result<usize, StoreError>;

    /// The record of a key, if any (expired or not).
    async fn get(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError>;
}

/// An [`EventStore`] for ONE claimed request: its appends go through
/// [`IdempotencyStore::append_completing`] with the request's ticket, so the command's events
/// and its recorded answer commit together; reads go to the event store as usual. Built per
/// request and handed to the command's repository.
pub struct ClaimedAppends {
    events: Arc<dyn EventStore>,
    keys: Arc<dyn IdempotencyStore>,
    ticket: Ticket,
    respond: Responder,
    completed: Arc<AtomicBool>,
}

impl ClaimedAppends {
    /// `completed` is set once an append completed the claim (so the caller need not record
    /// the answer again).
    pub fn new(
        events: Arc<dyn EventStore>,
        keys: Arc<dyn IdempotencyStore>,
        ticket: Ticket,
        respond: Responder,
        completed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            events,
            keys,
            ticket,
            respond,
            completed,
        }
    }
}

#[async_trait]
impl EventStore for ClaimedAppends {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let r = self
            .keys
            .append_completing(&self.ticket, stream, expected, events, self.respond.clone())
            .await?;
        self.completed.store(true, Ordering::Release);
        Ok(r)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.events.read_stream(stream, from_version, limit).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.events.stream_version(stream).await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.events.read_all(from_position, limit).await
    }

    fn head_position(&self) -> Position {
        self.events.head_position()
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.events.live()
    }
}

/// A fresh claim token: the random half of a UUID v7, so tokens of concurrent claims (even in
/// different processes) differ.
pub(crate) fn new_token() -> i64 {
    uuid::Uuid::now_v7().as_u64_pair().1 as i64
}

/// The decision `claim` takes on an existing record, shared by every adapter so they cannot
/// drift apart. `None` means "absent or expired: insert a fresh claim".
pub(crate) fn judge(existing: &IdempotencyRecord, req: &ClaimRequest<'_>) -> Judgement {
    let live_claim = existing.response.is_none() && existing.locked_until_ms > req.now_ms;
    if existing.created_at_ms <= req.now_ms - req.retention_ms && !live_claim {
        return Judgement::Fresh;
    }
    if existing.fingerprint != req.fingerprint {
        return Judgement::Decided(Claim::Mismatch);
    }
    match &existing.response {
        Some(r) => Judgement::Decided(Claim::Replay(r.clone())),
        None if live_claim => Judgement::Decided(Claim::InProgress),
        None => Judgement::TakeOver {
            created_at_ms: existing.created_at_ms,
        },
    }
}

pub(crate) enum Judgement {
    /// No usable record: write a new one.
    Fresh,
    /// An abandoned claim: give it a new token and lease, keep its creation time.
    TakeOver {
        created_at_ms: i64,
    },
    Decided(Claim),
}
