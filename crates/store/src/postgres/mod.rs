//! The scale-out backend: PostgreSQL holds the event log, the job queue and their schema;
//! several `ficus` processes share one database.
//!
//! Every object lives in one schema ([`PgConfig::schema`], `ficus` by default), created and
//! migrated on start ([`migrate`]); several processes may start at once, an advisory lock
//! makes them take turns. Each connection sets its `search_path` to that schema and
//! `synchronous_commit = on`, so a commit that returned is on disk whatever the server's
//! default is.

mod events;
mod idempotency;
mod jobs;
mod migrations;
mod outbox;
mod snapshots;
pub mod testing;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use crate::StoreError;
pub use events::PgEventStore;
pub use jobs::PgJobQueue;
pub use migrations::{migrate, MIGRATIONS};
pub use outbox::{
    announce_from_bus, outbox_backlog, OutboxBacklog, OutboxRelay, RelayConfig, RelayError,
    RelayHandle, RelayStats, RoundOutcome, RELAY_ROUND_EVENTS, RELAY_ROUND_ROWS,
};
pub use snapshots::PgSnapshotStore;

/// Where the database is and the limits of this process's use of it. Every queue, batch and
/// pool here is bounded.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// A libpq-style URL or key=value string, e.g. `postgres://postgres@127.0.0.1:5432/test`.
    pub url: String,
    /// The schema holding Ficus's tables (letters, digits and `_`).
    pub schema: String,
    /// Connections this process keeps open (readers, writers and job calls share them).
    pub pool_size: usize,
    /// Append requests that may wait for a writer; further callers wait for room.
    pub append_queue_requests: usize,
    /// Most events committed in one transaction (one group commit).
    pub max_batch_events: usize,
    /// Most events one append request may carry.
    pub max_append_events: usize,
    /// Group commits in flight at once from this process. They take turns on the log's head
    /// row inside the server, so a second one hides the network round trip of the first.
    pub writers: usize,
    /// Times a writer yields to the runtime after taking its first queued append, so callers
    /// answered by the previous commit can queue their next append into this batch.
    pub gather_yields: usize,
    /// Committed batches kept for slow live subscribers.
    pub live_buffer_batches: usize,
    /// How often the log is polled for other processes' commits when no notification came.
    pub poll_interval: Duration,
    /// Write an outbox row with every group commit, for a relay to publish to the bus. Turn
    /// on when a bus is configured: without a relay the rows would only pile up.
    pub outbox: bool,
    /// Listen for other processes' commits with PostgreSQL `NOTIFY`. Off when the bus
    /// announces them instead; the poll still runs either way.
    pub listen_notify: bool,
    /// How long to wait for a connection or a TCP connect before reporting unavailable.
    pub connect_timeout: Duration,
    /// How long to wait for one statement's answer before giving up on it and its connection
    /// (reported unavailable; a write's outcome is then unknown). A partition shows no error,
    /// only silence: without this bound a request would wait until TCP gives up, for minutes.
    pub statement_timeout: Duration,
}

/// Statement timeouts one short transaction (a handful of statements, each a round trip) may
/// take in all: see [`PgConfig::transaction_timeout`].
pub const STATEMENTS_PER_TRANSACTION: u32 = 3;

impl PgConfig {
    /// The bound on one short transaction as a whole (a read-side query with its snapshot and
    /// checkpoint, an idempotency claim, an outbox relay round):
    /// [`STATEMENTS_PER_TRANSACTION`] statement timeouts. Each of its statements is a round
    /// trip, so on a slow network a healthy transaction takes several times one statement's
    /// time; bounding it by one statement timeout would refuse it.
    pub fn transaction_timeout(&self) -> Duration {
        self.statement_timeout * STATEMENTS_PER_TRANSACTION
    }

    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "ficus".into(),
            pool_size: 16,
            append_queue_requests: 8192,
            max_batch_events: 4096,
            max_append_events: 1000,
            writers: 2,
            gather_yields: 4,
            live_buffer_batches: 1024,
            poll_interval: Duration::from_millis(250),
            outbox: false,
            listen_notify: true,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        }
    }

    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The connection settings, with this schema first on the search path.
    pub(crate) fn client_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        if !valid_schema(&self.schema) {
            return Err(StoreError::Invalid(format!(
                "schema name must be 1-48 characters of a-z 0-9 _ and start with a letter: {:?}",
                self.schema
            )));
        }
        let mut cfg: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("PostgreSQL URL: {e}")))?;
        cfg.options(format!(
            "-c search_path={} -c synchronous_commit=on",
            self.schema
        ));
        cfg.connect_timeout(self.connect_timeout);
        if cfg.get_application_name().is_none() {
            cfg.application_name("ficus");
        }
        Ok(cfg)
    }
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 48
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A bounded pool of connections to the configured schema.
pub fn pool(config: &PgConfig) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.client_config()?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Invalid(format!("PostgreSQL pool: {e}")))
}

/// A pool and the longest one statement on it may take to answer
/// ([`PgConfig::statement_timeout`]): what the statement helpers below run on.
#[derive(Clone)]
pub(crate) struct TimedPool {
    pub(crate) pool: Pool,
    pub(crate) statement_timeout: Duration,
}

impl TimedPool {
    pub(crate) fn new(pool: Pool, config: &PgConfig) -> Self {
        Self {
            pool,
            statement_timeout: config.statement_timeout,
        }
    }
}

/// Maps a driver or pool error to [`StoreError::Unavailable`]: nothing was committed.
pub fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("PostgreSQL: {e}"))
}

/// A connection from the pool, or why there is none.
pub(crate) async fn conn(pool: &Pool) -> Result<deadpool_postgres::Object, StoreError> {
    pool.get().await.map_err(unavailable)
}

/// Runs one statement (prepared once per connection) on a pooled connection: its rows.
pub(crate) async fn query(
    db: &TimedPool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let client = conn(&db.pool).await?;
    let answer = tokio::time::timeout(db.statement_timeout, async {
        let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
        client.query(&stmt, params).await.map_err(unavailable)
    })
    .await;
    answer.unwrap_or_else(|_| Err(no_answer(client, db.statement_timeout)))
}

/// Runs one statement (prepared once per connection) on a pooled connection: rows changed.
pub(crate) async fn execute(
    db: &TimedPool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, StoreError> {
    let client = conn(&db.pool).await?;
    let answer = tokio::time::timeout(db.statement_timeout, async {
        let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
        client.execute(&stmt, params).await.map_err(unavailable)
    })
    .await;
    answer.unwrap_or_else(|_| Err(no_answer(client, db.statement_timeout)))
}

/// A connection that did not answer in time is taken out of the pool and closed rather than
/// handed to the next caller, who would only queue behind the unanswered statement. Returns
/// the error to answer with ([`StoreError::Unavailable`]). Every bounded wait on a pooled
/// connection ends this way: the statement helpers here, the outbox relay's round, the read
/// models' queries.
pub fn no_answer(client: deadpool_postgres::Object, timeout: Duration) -> StoreError {
    drop(deadpool_postgres::Object::take(client));
    StoreError::Unavailable(format!(
        "PostgreSQL: no answer within {} ms (its time bound); a write's outcome is unknown",
        timeout.as_millis()
    ))
}

/// `u64` positions and versions as PostgreSQL `bigint`.
pub(crate) fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Notifications buffered between a LISTEN connection and its handler; when full, further
/// ones are dropped (every listener here also polls, so a dropped one only delays).
const LISTEN_BUFFER: usize = 256;

/// Listens for `NOTIFY` on `channel` until the task is aborted, reconnecting after a failure.
/// `on` gets each notification's payload, and `None` after each (re)connect, as notifications
/// sent while no one listened are lost.
pub(crate) async fn listen_forever(config: PgConfig, channel: String, on: impl Fn(Option<&str>)) {
    loop {
        if let Err(e) = listen_once(&config, &channel, &on).await {
            tracing::debug!(channel, error = %e, "notification listener stopped; reconnecting");
        }
        tokio::time::sleep(config.poll_interval).await;
    }
}

async fn listen_once(
    config: &PgConfig,
    channel: &str,
    on: &impl Fn(Option<&str>),
) -> Result<(), StoreError> {
    use futures::StreamExt;
    let (client, mut connection) = config
        .client_config()?
        .connect(NoTls)
        .await
        .map_err(unavailable)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(LISTEN_BUFFER);
    // The connection must be polled for the client's own requests to complete, too.
    let pump = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                    tx.try_send(n.payload().to_owned())
                {
                    break;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN \"{channel}\""))
            .await
            .map_err(unavailable)?;
        on(None);
        while let Some(payload) = rx.recv().await {
            on(Some(&payload));
        }
        Ok(())
    }
    .await;
    pump.abort();
    result
}
