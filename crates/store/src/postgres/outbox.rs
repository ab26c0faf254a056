//! The transactional outbox relay on PostgreSQL: committed events reach the NATS bus at least
//! once, in the order of each relay's rows, without ever being published before they commit.
//!
//! With [`PgConfig::outbox`](super::PgConfig::outbox) on, `ficus_append` writes one row
//! `(first_position, last_position)` into `ficus_outbox` in the same transaction as the events
//! of a group commit: the events and the promise to publish them commit together or not at all.
//!
//! A relay round, in one transaction:
//! 1. take the oldest rows with `FOR UPDATE SKIP LOCKED` (at most [`RelayConfig::max_round_rows`]
//!    rows and [`RelayConfig::max_round_events`] events; a larger row is cut and its rest left
//!    for the next round), so relays in several processes share the backlog without two of
//!    them publishing the same row at once;
//! 2. read those positions from `ficus_events` (a committed row implies committed events);
//! 3. publish every event to JetStream, all sends first and then all acks
//!    ([`NatsBus::publish_all`]), with `Nats-Msg-Id` = the event id;
//! 4. delete the rows and commit.
//!
//! Any failure rolls the transaction back: the rows stay and the next round (after a backoff
//! with full jitter) publishes them again. A crash between 3 and 4 does the same; JetStream
//! drops the re-published ids within its duplicate window, so the stream still holds each
//! event once. The relay is woken by the store's [`PgEventStore::outbox_signal`] after each
//! local commit, and polls every [`RelayConfig::poll_interval`] for rows that other processes
//! left behind (a process that died before relaying its own commits).
//!
//! A round uses two pooled connections at once (the locked rows, and the read of their
//! events), so the store's `pool_size` must be at least 2.
//!
//! [`announce_from_bus`] is the other half: it turns bus messages into
//! [`PgEventStore::announce`] calls, so the store's tailer reads other processes' commits from
//! the database as soon as they are published.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ficus_core::{Position, RecordedEvent};
use tokio::task::JoinHandle;

use super::{conn, no_answer, sql_int, unavailable, PgEventStore};
use crate::backoff::retry_pause;
use crate::nats::{BusError, BusSubscriber, NatsBus};
use crate::{EventStore, StoreError};

/// Most outbox rows (group commits) one round takes.
pub const RELAY_ROUND_ROWS: usize = 256;
/// Most events one round publishes before it deletes its rows and commits; bounds the memory
/// of a round, the acks in flight and how long its row locks are held.
pub const RELAY_ROUND_EVENTS: usize = 1000;
/// How often a relay looks for rows nobody signalled (other processes' leftovers).
pub const DEFAULT_RELAY_POLL: Duration = Duration::from_secs(1);
/// First and largest pause between failed rounds.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(50);
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(5);
/// Longest one round may take, from its row locks to its commit (its statements, the reads of
/// its events and the publishes' acks). A round past it is given up as if it had failed: its
/// connection is closed (the database rolls the transaction back and frees the rows) and the
/// next round retries after the backoff. Without it a round stuck on an unanswered connection
/// or a lock would hold its rows, and stop the relay, until TCP gave up.
pub const DEFAULT_ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// The relay's limits.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub max_round_rows: usize,
    pub max_round_events: usize,
    pub poll_interval: Duration,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// See [`DEFAULT_ROUND_TIMEOUT`].
    pub round_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_round_rows: RELAY_ROUND_ROWS,
            max_round_events: RELAY_ROUND_EVENTS,
            poll_interval: DEFAULT_RELAY_POLL,
            retry_base: DEFAULT_RETRY_BASE,
            retry_cap: DEFAULT_RETRY_CAP,
            round_timeout: DEFAULT_ROUND_TIMEOUT,
        }
    }
}

/// Counters of one relay since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rounds that committed (including empty ones).
    pub rounds: u64,
    /// Events published and acknowledged.
    pub published: u64,
    /// Of those, re-publishes JetStream recognised and dropped.
    pub duplicates: u64,
    /// Events published without their data because they exceeded NATS's `max_payload`.
    pub truncated: u64,
    /// Failed rounds (each was rolled back and retried after a backoff).
    pub retries: u64,
    /// The most recent failure, kept after later successes for diagnosis.
    pub last_error: Option<String>,
}

/// Why a relay round failed. Nothing was lost either way: the round was rolled back.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RelayError {
    /// The database failed, or the log does not hold the positions a row names (corrupt).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// NATS refused or did not acknowledge a publish.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundOutcome {
    /// Outbox rows deleted (a row cut at the event limit is not counted).
    pub rows: usize,
    /// Events published.
    pub events: usize,
    /// Of those, re-publishes JetStream dropped.
    pub duplicates: u64,
}

/// How much is waiting in the outbox; it stays near zero while relays keep up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    pub rows: u64,
    pub events: u64,
}

/// Relays the outbox of one store to the bus. Clone it to run rounds by hand next to
/// [`OutboxRelay::spawn`]; clones share their counters.
#[derive(Clone)]
pub struct OutboxRelay {
    store: Arc<PgEventStore>,
    bus: NatsBus,
    config: RelayConfig,
    stats: Arc<Mutex<RelayStats>>,
}

impl OutboxRelay {
    pub fn new(store: Arc<PgEventStore>, bus: NatsBus, config: RelayConfig) -> Self {
        Self {
            store,
            bus,
            config,
            stats: Arc::new(Mutex::new(RelayStats::default())),
        }
    }

    pub fn stats(&self) -> RelayStats {
        self.stats_mut().clone()
    }

    fn stats_mut(&self) -> std::sync::MutexGuard<'_, RelayStats> {
        // Only plain counter updates happen under the lock: a poisoned value is consistent.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs rounds until dropped: after each local commit, on every poll tick, and again at
    /// once while rounds find work. Must be called inside a Tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let stats = self.stats.clone();
        RelayHandle {
            task: tokio::spawn(run(self)),
            stats,
        }
    }

    /// One round: publishes up to the limits and deletes what was published. Returns zero
    /// events when the outbox is empty or every row is being relayed by someone else.
    pub async fn relay_round(&self) -> Result<RoundOutcome, RelayError> {
        let result = self.round().await;
        let mut stats = self.stats_mut();
        match &result {
            Ok(o) => {
                stats.rounds += 1;
                stats.published += o.events as u64;
                stats.duplicates += o.duplicates;
            }
            Err(e) => stats.last_error = Some(e.to_string()),
        }
        result
    }

    async fn round(&self) -> Result<RoundOutcome, RelayError> {
        let mut client = conn(self.store.pool()).await?;
        let limit = self.config.round_timeout;
        let answer = tokio::time::timeout(limit, self.round_on(&mut client)).await;
        answer.unwrap_or_else(|_| Err(no_answer(client, limit).into()))
    }

    async fn round_on(
        &self,
        client: &mut deadpool_postgres::Object,
    ) -> Result<RoundOutcome, RelayError> {
        let max_rows = self.config.max_round_rows.max(1);
        let max_events = self.config.max_round_events.clamp(1, crate::MAX_READ_LIMIT) as u64;
        let tx = client.transaction().await.map_err(unavailable)?;
        let rows = tx
            .query(
                "SELECT first_position, last_position FROM ficus_outbox \
                 ORDER BY first_position LIMIT $1 FOR UPDATE SKIP LOCKED",
                &[&(max_rows as i64)],
            )
            .await
            .map_err(unavailable)?;
        let plan = plan_round(
            rows.iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))),
            max_events,
        )?;
        if plan.ranges.is_empty() {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(RoundOutcome::default());
        }
        let mut events = Vec::with_capacity(plan.events as usize);
        for &(first, last) in &plan.ranges {
            events.extend(self.read_range(first, last).await?);
        }
        // Publish before deleting: if anything below fails, the rows stay and are published
        // again, which JetStream de-duplicates by event id.
        let published = self.bus.publish_all(&events).await?;
        if published.truncated > 0 {
            self.stats_mut().truncated += published.truncated;
        }
        tx.execute(
            "DELETE FROM ficus_outbox WHERE first_position = ANY($1)",
            &[&plan.done],
        )
        .await
        .map_err(unavailable)?;
        if let Some((old_first, new_first)) = plan.cut {
            tx.execute(
                "UPDATE ficus_outbox SET first_position = $2 WHERE first_position = $1",
                &[&old_first, &new_first],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(RoundOutcome {
            rows: plan.done.len(),
            events: events.len(),
            duplicates: published.duplicates,
        })
    }

    /// The events at positions `first..=last`, all of them, or a loud error.
    async fn read_range(
        &self,
        first: Position,
        last: Position,
    ) -> Result<Vec<RecordedEvent>, RelayError> {
        let want = (last - first + 1) as usize;
        let page = self.store.read_all(first, want).await?;
        let contiguous = page.len() == want
            && page
                .iter()
                .enumerate()
                .all(|(i, e)| e.position == first + i as u64);
        if !contiguous {
            return Err(StoreError::Corrupt(format!(
                "the outbox names positions {first}..={last} but the log returned {} events \
                 from {:?}",
                page.len(),
                page.first().map(|e| e.position)
            ))
            .into());
        }
        Ok(page)
    }
}

/// Which rows a round takes.
#[derive(Debug, Default, PartialEq, Eq)]
struct RoundPlan {
    /// Position ranges to publish, adjacent rows merged (one read each).
    ranges: Vec<(Position, Position)>,
    /// Rows published whole: deleted at commit.
    done: Vec<i64>,
    /// A row published in part: `(its first_position, the first position left)`.
    cut: Option<(i64, i64)>,
    events: u64,
}

/// Takes rows in order while they fit `max_events`; a first row larger than that is cut.
fn plan_round(
    rows: impl Iterator<Item = (i64, i64)>,
    max_events: u64,
) -> Result<RoundPlan, StoreError> {
    let mut plan = RoundPlan::default();
    for (first, last) in rows {
        if first < 1 || last < first {
            return Err(StoreError::Corrupt(format!(
                "outbox row ({first}, {last}) is not a range of positions"
            )));
        }
        let (f, l) = (first as Position, last as Position);
        let room = max_events - plan.events;
        let take_last = if l - f < room {
            plan.done.push(first);
            l
        } else if plan.events == 0 {
            let end = f + room - 1;
            plan.cut = Some((first, sql_int(end + 1)));
            end
        } else {
            break;
        };
        match plan.ranges.last_mut() {
            Some(r) if r.1 + 1 == f => r.1 = take_last,
            _ => plan.ranges.push((f, take_last)),
        }
        plan.events += take_last - f + 1;
        if plan.cut.is_some() || plan.events == max_events {
            break;
        }
    }
    Ok(plan)
}

async fn run(relay: OutboxRelay) {
    let signal = relay.store.outbox_signal();
    let mut tick = tokio::time::interval(relay.config.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        match relay.relay_round().await {
            Ok(o) => {
                failures = 0;
                if o.events > 0 {
                    continue;
                }
                tokio::select! {
                    _ = signal.notified() => {}
                    _ = tick.tick() => {}
                }
            }
            Err(e) => {
                relay.stats_mut().retries += 1;
                let pause = retry_pause(failures, relay.config.retry_base, relay.config.retry_cap);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "outbox relay round failed; rolled back");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// A running relay; dropping it stops the task (a round in flight is rolled back by the
/// database when its connection is reset, or finishes on the pooled connection).
pub struct RelayHandle {
    task: JoinHandle<()>,
    stats: Arc<Mutex<RelayStats>>,
}

impl RelayHandle {
    pub fn stats(&self) -> RelayStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Feeds the bus to `store`: every published position is [`PgEventStore::announce`]d, so the
/// store's tailer reads other processes' commits now rather than at its next poll. Holds the
/// store weakly: the subscription does not keep it open.
pub async fn announce_from_bus(
    bus: &NatsBus,
    store: &Arc<PgEventStore>,
) -> Result<BusSubscriber, BusError> {
    let store = Arc::downgrade(store);
    bus.subscribe(move |position| {
        if let Some(store) = store.upgrade() {
            store.announce(position);
        }
    })
    .await
}

/// Rows and events waiting in the outbox of `store`'s schema.
pub async fn outbox_backlog(store: &PgEventStore) -> Result<OutboxBacklog, StoreError> {
    let row = conn(store.pool())
        .await?
        .query_one(
            "SELECT count(*), coalesce(sum(last_position - first_position + 1), 0)::bigint \
             FROM ficus_outbox",
            &[],
        )
        .await
        .map_err(unavailable)?;
    Ok(OutboxBacklog {
        rows: row.get::<_, i64>(0) as u64,
        events: row.get::<_, i64>(1) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rows: &[(i64, i64)], max: u64) -> RoundPlan {
        plan_round(rows.iter().copied(), max).unwrap()
    }

    #[test]
    fn adjacent_rows_merge_into_one_read() {
        let p = plan(&[(1, 3), (4, 4), (7, 9)], 100);
        assert_eq!(p.ranges, vec![(1, 4), (7, 9)]);
        assert_eq!(p.done, vec![1, 4, 7]);
        assert_eq!(p.cut, None);
        assert_eq!(p.events, 7);
    }

    #[test]
    fn rows_stop_at_the_event_limit_and_a_large_first_row_is_cut() {
        let p = plan(&[(1, 3), (4, 10)], 5);
        assert_eq!(
            (p.ranges, p.done, p.cut, p.events),
            (vec![(1, 3)], vec![1], None, 3)
        );
        let p = plan(&[(1, 10), (11, 12)], 4);
        assert_eq!(
            (p.ranges, p.done, p.cut, p.events),
            (vec![(1, 4)], vec![], Some((1, 5)), 4)
        );
        let p = plan(&[(1, 2), (3, 4), (5, 6)], 4);
        assert_eq!((p.ranges, p.done, p.events), (vec![(1, 4)], vec![1, 3], 4));
    }

    #[test]
    fn a_row_that_is_not_a_range_is_corrupt() {
        assert!(plan_round([(5, 4)].into_iter(), 10).is_err());
        assert!(plan_round([(0, 4)].into_iter(), 10).is_err());
    }
}
