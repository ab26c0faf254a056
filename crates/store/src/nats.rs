//! NATS JetStream as the live bus between Ficus processes.
//!
//! The database stays the source of truth; the bus only makes other processes (and external
//! consumers) hear about new events within milliseconds instead of at their next poll.
//!
//! ```text
//!  process A                                  NATS JetStream                 process B
//!  append ──► ficus_append (events + outbox row, one tx)
//!             OutboxRelay ── publish(Nats-Msg-Id = event id) ──► stream ──► BusSubscriber
//!             (postgres::outbox)                                             └► announce(pos)
//!                                                                               tailer reads
//!                                                                               the DB, live
//!                                                                               subscribers
//! ```
//!
//! **Subjects.** Every event is published on `<subject_prefix>.<stream id>`, the prefix being
//! `ficus.<schema>.events` by default, so one NATS serves several deployments and an external
//! consumer can subscribe to everything (`ficus.shop.events.>`) or to one stream
//! (`ficus.shop.events.order-42`). A `.` in a stream id would split the subject token, so it
//! is written `%2E` (`%` cannot occur in a stream id, so the mapping is reversible). The
//! JetStream stream captures `<subject_prefix>.>`.
//!
//! **Messages.** The body is the event envelope as JSON, the same shape the HTTP API serves:
//! `{"id","stream","version","position","type","schema_version","data","metadata",
//! "recorded_at"}`. Headers: `Nats-Msg-Id` = the event id (JetStream drops a re-publish of the
//! same id within the duplicate window), [`POSITION_HEADER`] = the global position,
//! [`STREAM_HEADER`] and [`TYPE_HEADER`]. An envelope larger than the server's `max_payload`
//! is published without `data` and `metadata` and with `"truncated": true`; the reader fetches
//! the event from the store. A poison event therefore never blocks the relay.
//!
//! **Order.** One relay publishes its rows in position order, but relays in several
//! processes publish concurrently, so the JetStream sequence is *not* the log order. Consumers
//! that need the global order use the position (header or body) or read the store; Ficus's
//! own subscribers only use the bus as a wake-up and read the events from the database.
//!
//! **Delivery.** [`NatsBus::subscribe`] runs an ordered (ephemeral, ack-less, single-replica)
//! consumer that starts at new messages. It recovers its own gaps by recreating itself from
//! the last stream sequence it saw; anything lost beyond that is picked up by the store's
//! poll, so no bus failure can lose or reorder an event, only delay it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use ficus_core::{Position, RecordedEvent, StreamId};
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::backoff::retry_pause;
use crate::event_json;

/// Header carrying the event's global position (decimal).
pub const POSITION_HEADER: &str = "Ficus-Position";
/// Header carrying the event's stream id.
pub const STREAM_HEADER: &str = "Ficus-Stream";
/// Header carrying the event's type.
pub const TYPE_HEADER: &str = "Ficus-Type";
/// JetStream's de-duplication header; we set it to the event id.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// How long JetStream remembers message ids to drop re-publishes. A relay that crashed between
/// publishing and deleting its outbox rows re-publishes them on restart, normally within
/// seconds; a longer window costs server memory per message.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long the stream keeps a message. The bus is for live delivery, the database keeps
/// history, so a day covers any consumer outage we expect to replay from the bus.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Most bytes the stream keeps; the oldest messages go first beyond it.
pub const DEFAULT_MAX_BYTES: i64 = 1 << 30;
/// Most messages the stream keeps; the oldest messages go first beyond it.
pub const DEFAULT_MAX_MESSAGES: i64 = 10_000_000;
/// Bound on every JetStream API request and publish ack.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the TCP connection and the NATS handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Publishes whose ack is still awaited, per connection; a publisher waits for room beyond it.
pub const DEFAULT_MAX_ACKS_IN_FLIGHT: usize = 4096;
/// Bytes kept free below the server's `max_payload` for the headers when deciding to truncate.
const HEADER_ROOM_BYTES: usize = 1024;
/// First and largest pause before a subscriber recreates its consumer after a failure.
const RESUBSCRIBE_BASE: Duration = Duration::from_millis(100);
const RESUBSCRIBE_CAP: Duration = Duration::from_secs(5);

/// Environment variable naming the NATS server that tests use.
pub const TEST_NATS_URL_ENV: &str = "FICUS_TEST_NATS_URL";

/// The test NATS URL, or `None` (tests then skip; CI always sets it).
pub fn test_nats_url() -> Option<String> {
    std::env::var(TEST_NATS_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
}

/// Why a bus operation failed. Each variant's doc names the HTTP status it maps to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The configuration is unusable (a name NATS refuses, an event that cannot be encoded).
    /// A startup error, 500 if it ever reached a request.
    #[error("NATS bus configuration: {0}")]
    Invalid(String),
    /// NATS or JetStream did not answer, refused, or timed out. Nothing was lost: the outbox
    /// keeps the rows. (503 `bus_unavailable`)
    #[error("NATS bus unavailable: {0}")]
    Unavailable(String),
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("{what}: {e}"))
}

/// Where NATS is, what the stream is called, and its limits.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// e.g. `nats://127.0.0.1:4222` (several comma-separated servers are accepted).
    pub url: String,
    /// The JetStream stream (letters, digits, `-`, `_`), e.g. `FICUS_SHOP`.
    pub stream_name: String,
    /// Events go to `<subject_prefix>.<stream id>`; the stream captures `<subject_prefix>.>`.
    pub subject_prefix: String,
    pub duplicate_window: Duration,
    pub max_age: Duration,
    pub max_bytes: i64,
    pub max_messages: i64,
    /// Replicas of the stream in a JetStream cluster (1 for a single server).
    pub replicas: usize,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_acks_in_flight: usize,
}

impl BusConfig {
    /// The defaults for the deployment whose PostgreSQL schema is `schema`: stream
    /// `FICUS_<SCHEMA>`, subjects `ficus.<schema>.events.>`.
    pub fn new(url: impl Into<String>, schema: &str) -> Self {
        Self {
            url: url.into(),
            stream_name: format!("FICUS_{}", schema.to_ascii_uppercase()),
            subject_prefix: format!("ficus.{schema}.events"),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            max_messages: DEFAULT_MAX_MESSAGES,
            replicas: 1,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_acks_in_flight: DEFAULT_MAX_ACKS_IN_FLIGHT,
        }
    }

    fn validate(&self) -> Result<(), BusError> {
        let name_ok = !self.stream_name.is_empty()
            && self.stream_name.len() <= 64
            && self
                .stream_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(BusError::Invalid(format!(
                "stream name must be 1-64 characters of A-Z a-z 0-9 _ -: {:?}",
                self.stream_name
            )));
        }
        let prefix_ok = !self.subject_prefix.is_empty()
            && self.subject_prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
            });
        if !prefix_ok {
            return Err(BusError::Invalid(format!(
                "subject prefix must be non-empty dot-separated tokens without wildcards: {:?}",
                self.subject_prefix
            )));
        }
        Ok(())
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name.clone(),
            description: Some(
                "Ficus committed events (live bus; the database is the source of truth)".into(),
            ),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: self.duplicate_window,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            max_messages: self.max_messages,
            num_replicas: self.replicas.max(1),
            ..Default::default()
        }
    }
}

/// What a batch of publishes did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Messages JetStream acknowledged (new or duplicate).
    pub acked: u64,
    /// Of those, the ones JetStream recognised as re-publishes of a known event id.
    pub duplicates: u64,
    /// Envelopes sent without their data because they exceeded `max_payload`.
    pub truncated: u64,
}

/// A connection to NATS and the Ficus JetStream stream. Cheap to clone.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<BusConfig>,
}

/// Attempts at creating the stream when JetStream fails them on its side. Seen on the
/// NATS 2.9 server of CI: a creation failed with "could not create storage directory"
/// (error 10049) because the account's store directory was missing for a moment, as the
/// streams of other tests were deleted beside it; the same creation a moment later works.
pub const STREAM_CREATE_ATTEMPTS: u32 = 3;
/// The pause before the second attempt; the third waits twice as long.
pub const STREAM_CREATE_PAUSE: Duration = Duration::from_millis(100);

impl NatsBus {
    /// Connects and creates the stream if it does not exist (an existing stream is used as it
    /// is, so an operator may have tuned its limits).
    pub async fn connect(config: BusConfig) -> Result<Self, BusError> {
        config.validate()?;
        let client = async_nats::ConnectOptions::new()
            .name("ficus")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .connect(config.url.as_str())
            .await
            .map_err(|e| unavailable("connect", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(config.max_acks_in_flight.max(1))
            .backpressure_on_inflight(true)
            .build(client.clone());
        let bus = Self {
            client,
            js,
            config: Arc::new(config),
        };
        bus.ensure_stream().await?;
        Ok(bus)
    }

    pub fn config(&self) -> &BusConfig {
        &self.config
    }

    /// Creates the stream unless it exists. A creation the server fails on its side (a 5xx
    /// JetStream error) is tried again, up to [`STREAM_CREATE_ATTEMPTS`] in all.
    pub async fn ensure_stream(&self) -> Result<(), BusError> {
        let mut attempt = 1;
        loop {
            match self
                .js
                .get_or_create_stream(self.config.stream_config())
                .await
            {
                Ok(_) => return Ok(()),
                Err(e)
                    if attempt < STREAM_CREATE_ATTEMPTS
                        && matches!(e.kind(), CreateStreamErrorKind::JetStream(j) if j.code() >= 500) =>
                {
                    tracing::warn!(error = %e, attempt, "JetStream failed to create the stream; trying again");
                    tokio::time::sleep(STREAM_CREATE_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(unavailable("create or get the JetStream stream", e)),
            }
        }
    }

    /// Deletes the stream and every message in it (tests and decommissioning).
    pub async fn delete_stream(&self) -> Result<(), BusError> {
        self.js
            .delete_stream(&self.config.stream_name)
            .await
            .map_err(|e| unavailable("delete the JetStream stream", e))?;
        Ok(())
    }

    /// Messages currently in the stream.
    pub async fn stream_messages(&self) -> Result<u64, BusError> {
        let mut s = self
            .js
            .get_stream(&self.config.stream_name)
            .await
            .map_err(|e| unavailable("get the JetStream stream", e))?;
        let info = s.info().await.map_err(|e| unavailable("stream info", e))?;
        Ok(info.state.messages)
    }

    /// The message at stream sequence `sequence`: its headers and JSON body.
    pub async fn stream_message(&self, sequence: u64) -> Result<(HeaderMap, Value), BusError> {
        let s = self
            .js
            .get_stream(&self.config.stream_name)
            .await
            .map_err(|e| unavailable("get the JetStream stream", e))?;
        let m = s
            .get_raw_message(sequence)
            .await
            .map_err(|e| unavailable("get a stream message", e))?;
        let body = serde_json::from_slice(&m.payload)
            .map_err(|e| BusError::Invalid(format!("message {sequence} is not JSON: {e}")))?;
        Ok((m.headers, body))
    }

    /// The subject an event of `stream` is published on.
    pub fn subject(&self, stream: &StreamId) -> String {
        event_subject(&self.config.subject_prefix, stream)
    }

    /// Publishes `events` and waits for every ack. The publishes are pipelined: all are sent,
    /// then the acks are awaited, so a batch costs about one round trip. Fails if any publish
    /// is not acknowledged; those that were stay in the stream, and publishing them again is
    /// harmless within the duplicate window.
    pub async fn publish_all(&self, events: &[RecordedEvent]) -> Result<Published, BusError> {
        let mut out = Published::default();
        let mut acks = Vec::with_capacity(events.len());
        for e in events {
            let (ack, truncated) = self.send(e).await?;
            out.truncated += u64::from(truncated);
            acks.push(ack);
        }
        for (ack, e) in acks.into_iter().zip(events) {
            let ack = ack.await.map_err(|err| {
                unavailable(&format!("ack of the event at position {}", e.position), err)
            })?;
            out.acked += 1;
            out.duplicates += u64::from(ack.duplicate);
        }
        Ok(out)
    }

    /// Sends one event without waiting for its ack. Returns the ack future and whether the
    /// envelope had to be truncated.
    async fn send(
        &self,
        e: &RecordedEvent,
    ) -> Result<(jetstream::context::PublishAckFuture, bool), BusError> {
        let subject = self.subject(&e.stream_id);
        let mut body = envelope(e);
        let mut truncated = false;
        let room = self.client.max_payload().saturating_sub(HEADER_ROOM_BYTES);
        if body.len() > room {
            body = truncated_envelope(e);
            truncated = true;
            tracing::warn!(
                position = e.position,
                max_payload = self.client.max_payload(),
                "event too large for NATS; publishing its envelope without data"
            );
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(e.id.to_string())
            .header(POSITION_HEADER, e.position.to_string())
            .header(STREAM_HEADER, e.stream_id.as_str())
            .header(TYPE_HEADER, e.event_type.as_str());
        let ack = self
            .js
            .send_publish(subject, message)
            .await
            .map_err(|err| unavailable(&format!("publish position {}", e.position), err))?;
        Ok((ack, truncated))
    }

    /// Calls `on_position` with the position of every event published from now on (by any
    /// process, this one included), in the order JetStream holds them. Positions may repeat
    /// or arrive out of log order; see the module docs. The consumer is created before this
    /// returns, so errors in the configuration show at once; the returned handle stops the
    /// task when dropped.
    pub async fn subscribe<F>(&self, on_position: F) -> Result<BusSubscriber, BusError>
    where
        F: Fn(Position) + Send + Sync + 'static,
    {
        let first = self.ordered_consumer().await?;
        let received = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(deliver(self.clone(), first, on_position, received.clone()));
        Ok(BusSubscriber { task, received })
    }

    async fn ordered_consumer(&self) -> Result<consumer::pull::Ordered, BusError> {
        let stream = self
            .js
            .get_stream(&self.config.stream_name)
            .await
            .map_err(|e| unavailable("get the JetStream stream", e))?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::New,
                filter_subject: format!("{}.>", self.config.subject_prefix),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("create the ordered consumer", e))?;
        consumer
            .messages()
            .await
            .map_err(|e| unavailable("start the ordered consumer", e))
    }
}

/// A running bus subscription; dropping it stops the task.
pub struct BusSubscriber {
    task: JoinHandle<()>,
    received: Arc<AtomicU64>,
}

impl BusSubscriber {
    /// Messages received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for BusSubscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn deliver<F>(
    bus: NatsBus,
    first: consumer::pull::Ordered,
    on_position: F,
    received: Arc<AtomicU64>,
) where
    F: Fn(Position) + Send + Sync + 'static,
{
    let mut messages = Some(first);
    let mut failures = 0u32;
    loop {
        let Some(mut stream) = messages.take() else {
            tokio::time::sleep(retry_pause(failures, RESUBSCRIBE_BASE, RESUBSCRIBE_CAP)).await;
            match bus.ordered_consumer().await {
                Ok(s) => messages = Some(s),
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "bus subscriber cannot resubscribe; the store's poll covers the gap");
                }
            }
            continue;
        };
        while let Some(item) = stream.next().await {
            match item {
                Ok(m) => {
                    failures = 0;
                    received.fetch_add(1, Ordering::Relaxed);
                    match message_position(m.headers.as_ref()) {
                        Some(p) => on_position(p),
                        None => tracing::warn!(
                            subject = %m.subject,
                            "bus message without a valid {POSITION_HEADER} header; ignored"
                        ),
                    }
                }
                Err(e) => {
                    // The ordered consumer recreates itself after most errors; the ones it
                    // hands out are worth a log line, not a stop.
                    tracing::warn!(error = %e, "bus subscription error");
                }
            }
        }
        failures = failures.saturating_add(1);
        tracing::warn!("bus subscription ended; resubscribing");
    }
}

/// `<prefix>.<stream id>`, a `.` in the id written `%2E` so it stays one subject token.
pub fn event_subject(prefix: &str, stream: &StreamId) -> String {
    format!("{prefix}.{}", stream.as_str().replace('.', "%2E"))
}

fn message_position(headers: Option<&HeaderMap>) -> Option<Position> {
    headers?.get(POSITION_HEADER)?.as_str().parse().ok()
}

/// The JSON body of an event's message.
pub fn envelope(e: &RecordedEvent) -> Vec<u8> {
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&event_json(e)).unwrap_or_default()
}

fn truncated_envelope(e: &RecordedEvent) -> Vec<u8> {
    let mut v = event_json(e);
    if let Some(o) = v.as_object_mut() {
        o.remove("data");
        o.remove("metadata");
        o.insert("truncated".into(), Value::Bool(true));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_dots_and_configs_are_checked() {
        let c = BusConfig::new("nats://x", "shop");
        assert_eq!(c.stream_name, "FICUS_SHOP");
        assert_eq!(c.subject_prefix, "ficus.shop.events");
        assert!(c.validate().is_ok());
        let stream = StreamId::new("order.eu-42").unwrap();
        assert_eq!(
            event_subject(&c.subject_prefix, &stream),
            "ficus.shop.events.order%2Eeu-42"
        );
        let mut bad = c.clone();
        bad.stream_name = "a.b".into();
        assert!(bad.validate().is_err());
        let mut bad = c;
        bad.subject_prefix = "ficus.*".into();
        assert!(bad.validate().is_err());
        assert_eq!(
            message_position(Some(&{
                let mut h = HeaderMap::new();
                h.insert(POSITION_HEADER, "42");
                h
            })),
            Some(42)
        );
        assert_eq!(message_position(None), None);
    }
}

/// Test support: JetStream streams made for one test run and deleted afterwards.
pub mod testing {
    use super::BusConfig;

    /// Deletes the stream of its config when dropped (the NATS server is shared by tests).
    pub struct StreamGuard(pub BusConfig);

    impl Drop for StreamGuard {
        fn drop(&mut self) {
            let config = self.0.clone();
            crate::run_detached(async move {
                if let Ok(client) = async_nats::connect(config.url.as_str()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&config.stream_name)
                        .await;
                }
            });
        }
    }
}
