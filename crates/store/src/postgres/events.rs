//! The event store on PostgreSQL.
//!
//! Appends from any number of tasks queue into a bounded channel. [`PgConfig::writers`]
//! writer tasks each take everything queued (up to [`PgConfig::max_batch_events`]) and send
//! it as ONE call of the `ficus_append` function: one statement, one transaction, one round
//! trip. Positions are handed out inside it under the row lock on the log's head, so they
//! are gap-free across every process sharing the database and a reader can never see a
//! later position before an earlier one. A caller is answered after the commit returned
//! (`synchronous_commit = on`).
//!
//! Live delivery: a tailer task broadcasts the log in position order. Batches committed by
//! this process are handed to it directly; positions committed by other processes are read
//! from the table when a `NOTIFY` announces them, or at the latest on the next poll.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use ficus_core::{
    EventType, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamId, Version,
};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_postgres::types::Json;
use tokio_postgres::Row;

use super::{listen_forever, migrate, pool, query, sql_int, PgConfig, TimedPool};
use crate::port::validate_batch;
use crate::{now_ms, AppendResult, EventStore, LiveBatch, StoreError, MAX_READ_LIMIT};

/// Longest [`PgEventStore::shutdown`] waits for queued appends to be taken.
const SHUTDOWN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Events the tailer reads per page when catching up with other processes' commits.
const TAIL_PAGE_EVENTS: usize = 1000;

const COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, \
                       recorded_at_ms, metadata, payload";

struct AppendRequest {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// State the store's tasks share.
struct Shared {
    /// The last position known committed (by this process or, once tailed, by others).
    head: AtomicU64,
    /// The highest position other processes announced; the tailer reads up to it.
    announced: AtomicU64,
    live: broadcast::Sender<LiveBatch>,
    /// Batches committed by this process, by first position, not yet broadcast.
    local: Mutex<BTreeMap<Position, LiveBatch>>,
    wake: Notify,
    /// Notified after each local commit that wrote an outbox row.
    outbox_wake: Arc<Notify>,
    with_outbox: bool,
}

impl Shared {
    fn local(&self) -> std::sync::MutexGuard<'_, BTreeMap<Position, LiveBatch>> {
        // Only whole inserts and removals happen under this lock: a poisoned map is consistent.
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct PgEventStore {
    pool: TimedPool,
    config: PgConfig,
    tx: mpsc::Sender<AppendRequest>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PgEventStore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl PgEventStore {
    /// Connects, applies missing migrations and starts the writer and tailer tasks. Must be
    /// called inside a Tokio runtime.
    pub async fn open(config: PgConfig) -> Result<Self, StoreError> {
        let pool = pool(&config)?;
        migrate(&pool, &config.schema).await?;
        let pool = TimedPool::new(pool, &config);
        let head = read_head(&pool).await?;
        let shared = Arc::new(Shared {
            head: AtomicU64::new(head),
            announced: AtomicU64::new(head),
            live: broadcast::channel(config.live_buffer_batches.max(1)).0,
            local: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            outbox_wake: Arc::new(Notify::new()),
            with_outbox: config.outbox,
        });
        let (tx, rx) = mpsc::channel(config.append_queue_requests.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = Vec::new();
        for _ in 0..config.writers.max(1) {
            tasks.push(tokio::spawn(writer(
                rx.clone(),
                pool.clone(),
                shared.clone(),
                config.max_batch_events.max(1),
                config.gather_yields,
            )));
        }
        tasks.push(tokio::spawn(tailer(
            pool.clone(),
            shared.clone(),
            config.poll_interval,
            head,
        )));
        if config.listen_notify {
            let (channel, shared) = (format!("ficus_events.{}", config.schema), shared.clone());
            tasks.push(tokio::spawn(listen_forever(
                config.clone(),
                channel,
                move |payload| {
                    // Other processes' commits announce their head; ours are known already.
                    let pos = payload.and_then(|p| p.parse().ok()).unwrap_or(0);
                    if pos > shared.head.load(Ordering::Acquire) {
                        shared.announced.fetch_max(pos, Ordering::AcqRel);
                        shared.wake.notify_one();
                    }
                },
            )));
        }
        Ok(Self {
            pool,
            config,
            tx,
            shared,
            tasks,
        })
    }

    /// The connection pool, for adapters that share this database (the job queue).
    pub fn pool(&self) -> &Pool {
        &self.pool.pool
    }

    /// The pool with this store's statement timeout, for the adapters in this module.
    pub(crate) fn timed_pool(&self) -> &TimedPool {
        &self.pool
    }

    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Waits (at most `SHUTDOWN_DRAIN`) until every append queued so far has been taken by a
    /// writer, so a graceful stop does not strand callers. Appends in a writer's hands are
    /// answered when their commit returns.
    pub async fn shutdown(&self) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.tx.capacity() < self.tx.max_capacity() && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    /// Notified after every local group commit that wrote an outbox row (with
    /// [`PgConfig::outbox`] on): the relay's cue to publish.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.shared.outbox_wake.clone()
    }

    /// Tells the tailer that positions up to `position` are committed (by any process), so it
    /// reads and broadcasts them now rather than at the next poll. A bus subscriber calls this
    /// when another process announces a commit; a stale or repeated announcement is harmless.
    pub fn announce(&self, position: Position) {
        if position > self.shared.head.load(Ordering::Acquire) {
            self.shared.announced.fetch_max(position, Ordering::AcqRel);
            self.shared.wake.notify_one();
        }
    }
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        validate_batch(&events, self.config.max_append_events)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(AppendRequest {
                stream: stream.clone(),
                expected,
                events,
                reply,
            })
            .await
            .map_err(|_| StoreError::Unavailable("event store closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("event store writer stopped".into()))?
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = query(
            &self.pool,
            &format!(
                "SELECT {COLUMNS} FROM ficus_events WHERE stream_id = $1 AND version >= $2 \
                 ORDER BY version LIMIT $3"
            ),
            &[
                &stream.as_str(),
                &sql_int(from_version),
                &(limit.min(MAX_READ_LIMIT) as i64),
            ],
        )
        .await?;
        rows.iter().map(decode_row).collect()
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        let rows = query(
            &self.pool,
            "SELECT version FROM ficus_streams WHERE stream_id = $1",
            &[&stream.as_str()],
        )
        .await?;
        Ok(rows.first().map_or(0, |r| r.get::<_, i64>(0) as Version))
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        read_all(&self.pool, from_position, limit.min(MAX_READ_LIMIT)).await
    }

    fn head_position(&self) -> Position {
        self.shared.head.load(Ordering::Acquire)
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.shared.live.subscribe()
    }
}

async fn read_all(
    pool: &TimedPool,
    from_position: Position,
    limit: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let rows = query(
        pool,
        &format!(
            "SELECT {COLUMNS} FROM ficus_events WHERE position >= $1 ORDER BY position LIMIT $2"
        ),
        &[&sql_int(from_position), &(limit as i64)],
    )
    .await?;
    rows.iter().map(decode_row).collect()
}

/// The position of the last committed event, whichever process committed it.
async fn read_head(pool: &TimedPool) -> Result<Position, StoreError> {
    let rows = query(pool, "SELECT position FROM ficus_head WHERE id = 1", &[]).await?;
    let row = rows
        .first()
        .ok_or_else(|| StoreError::Corrupt("the log's head row is missing".into()))?;
    Ok(row.get::<_, i64>(0) as Position)
}

fn decode_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.get(0);
    let corrupt =
        |what: String| StoreError::Corrupt(format!("event at position {position}: {what}"));
    let stream: String = row.get(2);
    let event_type: String = row.get(4);
    let schema_version: i32 = row.get(5);
    let metadata: Json<Metadata> = row.try_get(7).map_err(|e| corrupt(e.to_string()))?;
    Ok(RecordedEvent {
        id: row.get(1),
        stream_id: StreamId::new(stream).map_err(|e| corrupt(e.to_string()))?,
        version: row.get::<_, i64>(3) as Version,
        position: position as Position,
        event_type: EventType::new(event_type).map_err(|e| corrupt(e.to_string()))?,
        schema_version: u32::try_from(schema_version).map_err(|e| corrupt(e.to_string()))?,
        recorded_at_ms: row.get(6),
        metadata: metadata.0,
        payload: row.try_get(8).map_err(|e| corrupt(e.to_string()))?,
    })
}

fn expected_code(e: ExpectedVersion) -> i64 {
    match e {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => -2,
        ExpectedVersion::Exists => -3,
        ExpectedVersion::Exact(v) => sql_int(v),
    }
}

/// Takes queued appends and commits them in batches until the store is dropped.
async fn writer(
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<AppendRequest>>>,
    pool: TimedPool,
    shared: Arc<Shared>,
    max_batch_events: usize,
    gather_yields: usize,
) {
    // Appends to a stream already in the batch wait for the next one: `ficus_append` takes
    // each stream at most once per call. At most `max_batch_events` requests wait here.
    let mut held: VecDeque<AppendRequest> = VecDeque::new();
    loop {
        let batch = {
            let mut batch = Vec::new();
            let mut streams = HashSet::new();
            let mut events = 0;
            for r in std::mem::take(&mut held) {
                if events < max_batch_events && !streams.contains(&r.stream) {
                    events += r.events.len();
                    streams.insert(r.stream.clone());
                    batch.push(r);
                } else {
                    held.push_back(r);
                }
            }
            // With requests of its own to commit, a writer must not wait for the queue: the
            // other writer may be parked on it until new requests come.
            let mut rx = if batch.is_empty() {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else { return };
                events += first.events.len();
                streams.insert(first.stream.clone());
                batch.push(first);
                // Callers just answered by the last commit are re-submitting on this runtime:
                // let them, so the batch carries them too (no timer, just a few yields).
                for _ in 0..gather_yields {
                    tokio::task::yield_now().await;
                }
                Some(rx)
            } else {
                rx.try_lock().ok()
            };
            while let Some(rx) = rx
                .as_mut()
                .filter(|_| events < max_batch_events && held.len() < max_batch_events)
            {
                match rx.try_recv() {
                    Ok(r) if streams.contains(&r.stream) => held.push_back(r),
                    Ok(r) => {
                        events += r.events.len();
                        streams.insert(r.stream.clone());
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        commit(&pool, &shared, batch).await;
    }
}

/// One group commit: every request in `batch` in one `ficus_append` call.
async fn commit(pool: &TimedPool, shared: &Shared, batch: Vec<AppendRequest>) {
    let at = now_ms();
    let outcome = match encode(&batch) {
        Ok(args) => call_append(pool, &args, at, shared.with_outbox).await,
        Err(e) => Err(e),
    };
    let rows = match outcome {
        Ok(rows) if rows.len() == batch.len() => rows,
        Ok(rows) => {
            let e = StoreError::Unavailable(format!(
                "ficus_append answered {} of {} appends",
                rows.len(),
                batch.len()
            ));
            fail_all(batch, e);
            return;
        }
        Err(e) => {
            fail_all(batch, e);
            return;
        }
    };
    let mut replies = Vec::with_capacity(batch.len());
    let mut committed = Vec::new();
    for (req, row) in batch.into_iter().zip(rows) {
        let ok: bool = row.get(0);
        let actual = row.get::<_, i64>(1) as Version;
        if !ok {
            let err = StoreError::WrongExpectedVersion {
                stream: req.stream,
                expected: req.expected,
                actual,
            };
            replies.push((req.reply, Err(err)));
            continue;
        }
        let first_version = row.get::<_, i64>(2) as Version;
        let first_position = row.get::<_, i64>(3) as Position;
        let n = req.events.len() as u64;
        let recorded = recorded(&req.stream, req.events, first_version, first_position, at);
        committed.push(LiveBatch::from(recorded));
        replies.push((
            req.reply,
            Ok(AppendResult {
                first_version,
                last_version: first_version + n - 1,
                first_position,
                last_position: first_position + n - 1,
            }),
        ));
    }
    publish_local(shared, committed);
    for (reply, result) in replies {
        let _ = reply.send(result);
    }
}

/// Hands batches this process committed to the tailer (which broadcasts them in position
/// order) and wakes the outbox relay.
fn publish_local(shared: &Shared, committed: Vec<LiveBatch>) {
    if let Some(last) = committed.last().and_then(|b| b.last()) {
        shared.head.fetch_max(last.position, Ordering::AcqRel);
        let mut local = shared.local();
        for b in committed {
            local.insert(b[0].position, b);
        }
        drop(local);
        shared.wake.notify_one();
        if shared.with_outbox {
            shared.outbox_wake.notify_one();
        }
    }
}

impl PgEventStore {
    /// Appends in a transaction of its own (beside the group commit, through the same
    /// `ficus_append`) and completes the idempotency claim `ticket` in it: the events and the
    /// recorded answer commit together, or neither does ([`StoreError::ClaimLost`] when the
    /// ticket no longer holds its key).
    pub(super) async fn append_completing_claim(
        &self,
        ticket: &crate::Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: crate::Responder,
    ) -> Result<AppendResult, StoreError> {
        validate_batch(&events, self.config.max_append_events)?;
        // The request only carries the append through `encode`; nobody waits on its reply.
        let (reply, _) = oneshot::channel();
        let req = AppendRequest {
            stream: stream.clone(),
            expected,
            events,
            reply,
        };
        let at = now_ms();
        let mut client = super::conn(&self.pool.pool).await?;
        let tx = client.transaction().await.map_err(super::unavailable)?;
        let row = {
            let a = encode(std::slice::from_ref(&req))?;
            let stmt = tx
                .prepare_cached(
                    "SELECT ok, actual, first_version, first_position \
                     FROM ficus_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .await
                .map_err(super::unavailable)?;
            tx.query_one(
                &stmt,
                &[
                    &a.a_stream,
                    &a.a_expected,
                    &a.a_count,
                    &a.e_append,
                    &a.e_id,
                    &a.e_type,
                    &a.e_schema,
                    &a.e_metadata,
                    &a.e_payload,
                    &at,
                    &self.shared.with_outbox,
                ],
            )
            .await
            .map_err(super::unavailable)?
        };
        if !row.get::<_, bool>(0) {
            // Dropping `tx` rolls back; the claim stays in progress for a retry.
            return Err(StoreError::WrongExpectedVersion {
                stream: req.stream,
                expected,
                actual: row.get::<_, i64>(1) as Version,
            });
        }
        let first_version = row.get::<_, i64>(2) as Version;
        let first_position = row.get::<_, i64>(3) as Position;
        let n = req.events.len() as u64;
        let result = AppendResult {
            first_version,
            last_version: first_version + n - 1,
            first_position,
            last_position: first_position + n - 1,
        };
        if !super::idempotency::complete_in(&tx, ticket, &respond(&result)).await? {
            return Err(StoreError::ClaimLost);
        }
        tx.commit().await.map_err(super::unavailable)?;
        let recorded = recorded(&req.stream, req.events, first_version, first_position, at);
        publish_local(&self.shared, vec![LiveBatch::from(recorded)]);
        Ok(result)
    }
}

fn fail_all(batch: Vec<AppendRequest>, e: StoreError) {
    for r in batch {
        let _ = r.reply.send(Err(e.clone()));
    }
}

/// The arrays `ficus_append` takes.
struct AppendArgs<'a> {
    a_stream: Vec<&'a str>,
    a_expected: Vec<i64>,
    a_count: Vec<i32>,
    e_append: Vec<i32>,
    e_id: Vec<uuid::Uuid>,
    e_type: Vec<&'a str>,
    e_schema: Vec<i32>,
    e_metadata: Vec<String>,
    e_payload: Vec<String>,
}

fn encode(batch: &[AppendRequest]) -> Result<AppendArgs<'_>, StoreError> {
    let events: usize = batch.iter().map(|r| r.events.len()).sum();
    let mut a = AppendArgs {
        a_stream: Vec::with_capacity(batch.len()),
        a_expected: Vec::with_capacity(batch.len()),
        a_count: Vec::with_capacity(batch.len()),
        e_append: Vec::with_capacity(events),
        e_id: Vec::with_capacity(events),
        e_type: Vec::with_capacity(events),
        e_schema: Vec::with_capacity(events),
        e_metadata: Vec::with_capacity(events),
        e_payload: Vec::with_capacity(events),
    };
    for (i, r) in batch.iter().enumerate() {
        a.a_stream.push(r.stream.as_str());
        a.a_expected.push(expected_code(r.expected));
        a.a_count.push(r.events.len() as i32);
        for e in &r.events {
            a.e_append.push(i as i32 + 1);
            a.e_id.push(e.id);
            a.e_type.push(e.event_type.as_str());
            a.e_schema
                .push(i32::try_from(e.schema_version).map_err(|_| {
                    StoreError::Invalid(format!("schema version {} is too large", e.schema_version))
                })?);
            a.e_metadata.push(to_json(&e.metadata)?);
            a.e_payload.push(to_json(&e.payload)?);
        }
    }
    Ok(a)
}

fn to_json(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("JSON: {e}")))
}

async fn call_append(
    pool: &TimedPool,
    a: &AppendArgs<'_>,
    at: i64,
    with_outbox: bool,
) -> Result<Vec<Row>, StoreError> {
    query(
        pool,
        "SELECT ok, actual, first_version, first_position \
         FROM ficus_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &a.a_stream,
            &a.a_expected,
            &a.a_count,
            &a.e_append,
            &a.e_id,
            &a.e_type,
            &a.e_schema,
            &a.e_metadata,
            &a.e_payload,
            &at,
            &with_outbox,
        ],
    )
    .await
}

/// Broadcasts the log in position order: this process's batches as they commit, other
/// processes' positions as they are announced or polled.
async fn tailer(pool: TimedPool, shared: Arc<Shared>, poll: std::time::Duration, start: Position) {
    let mut emitted = start;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let polled = tokio::select! {
            _ = shared.wake.notified() => false,
            _ = tick.tick() => true,
        };
        if polled {
            if let Ok(head) = read_head(&pool).await {
                shared.announced.fetch_max(head, Ordering::AcqRel);
            }
        }
        loop {
            let next = emitted + 1;
            let (mine, first_local) = {
                let mut local = shared.local();
                // A batch below `next` was already read from the table (a poll saw its commit
                // before its writer handed it over): drop what was delivered.
                while local.first_key_value().is_some_and(|(&k, _)| k < next) {
                    let (_, stale) = local.pop_first().expect("a first entry");
                    // A page may have ended inside it: keep the part not yet delivered.
                    if stale[stale.len() - 1].position >= next {
                        let rest: Vec<RecordedEvent> = stale
                            .iter()
                            .filter(|e| e.position >= next)
                            .cloned()
                            .collect();
                        local.insert(next, rest.into());
                    }
                }
                let mine = local.remove(&next);
                (mine, local.keys().next().copied())
            };
            if let Some(batch) = mine {
                emitted = batch[batch.len() - 1].position;
                let _ = shared.live.send(batch);
                continue;
            }
            // Positions before our next local batch, or announced by others, are committed by
            // other processes: read them.
            let upto = match first_local {
                Some(p) => p - 1,
                None => shared.announced.load(Ordering::Acquire),
            };
            if upto < next {
                break;
            }
            let limit = ((upto - next + 1) as usize).min(TAIL_PAGE_EVENTS);
            match read_all(&pool, next, limit).await {
                Ok(page) if !page.is_empty() => {
                    emitted = page[page.len() - 1].position;
                    shared.head.fetch_max(emitted, Ordering::AcqRel);
                    let _ = shared.live.send(page.into());
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "tailing the event log failed; retrying on the next poll");
                    break;
                }
            }
        }
    }
}

/// The events of one append as committed: versions and positions counted on from the first
/// ones the database handed out, all recorded at `at_ms`.
fn recorded(
    stream: &StreamId,
    events: Vec<NewEvent>,
    first_version: Version,
    first_position: Position,
    at_ms: i64,
) -> Vec<RecordedEvent> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| RecordedEvent {
            id: e.id,
            stream_id: stream.clone(),
            version: first_version + i as u64,
            position: first_position + i as u64,
            event_type: e.event_type,
            schema_version: e.schema_version,
            recorded_at_ms: at_ms,
            metadata: e.metadata,
            payload: e.payload,
        })
        .collect()
}
