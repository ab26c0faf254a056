//! The relay of the embedded outbox (`ficus_store::sqlite::outbox`): turns each recorded
//! message into its effect, then deletes its row.
//!
//! Delivery is at least once: a crash after the effect and before the delete delivers the row
//! again after the restart, so every handler's effect must be idempotent (the saga start is a
//! job with a unique key: a second enqueue is a no-op). A failed delivery is retried after a
//! full-jitter [`Backoff`] pause, recorded in the row, so that one failing message does not hold
//! up the others and the pause survives a restart.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_store::sqlite::{OutboxRow, SqliteEventStore};
use ficus_store::JobQueue;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::saga::SagaOrchestrator;
use crate::Shutdown;

/// The kind of a message that starts a saga: `{"saga_id", "saga", "input"}`.
pub const SAGA_START: &str = "saga.start";

/// Performs one kind of effect.
#[async_trait]
pub trait OutboxHandler: Send + Sync + 'static {
    /// Performs the effect of `row`. Must be idempotent (see the module documentation).
    async fn deliver(&self, row: &OutboxRow) -> Result<(), String>;
}

/// The moments of a delivery a crash test may stop the process at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxMoment {
    /// The row is read, its effect not yet performed.
    BeforeEffect,
    /// The effect is performed, the row not yet deleted.
    AfterEffect,
}

/// Called at each [`OutboxMoment`] with the row's id (crash tests only).
pub type OutboxHook = Arc<dyn Fn(OutboxMoment, i64) + Send + Sync>;

/// How the relay runs.
#[derive(Clone)]
pub struct OutboxRelayConfig {
    /// Rows read per pass.
    pub batch_rows: usize,
    /// Longest sleep when nothing is due (appends that record messages wake the relay
    /// at once; this bounds the wait for a row whose retry pause ends).
    pub idle_poll_ms: u64,
    /// Pauses between failed deliveries of one row.
    pub backoff: Backoff,
    pub hook: Option<OutboxHook>,
}

impl Default for OutboxRelayConfig {
    fn default() -> Self {
        Self {
            batch_rows: 100,
            idle_poll_ms: 1_000,
            backoff: Backoff {
                base_ms: 100,
                max_ms: 60_000,
            },
            hook: None,
        }
    }
}

/// Starts the relay task; it stops on shutdown.
pub fn spawn_relay(
    store: Arc<SqliteEventStore>,
    handler: Arc<dyn OutboxHandler>,
    config: OutboxRelayConfig,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        while !shutdown.is_triggered() {
            let now = ficus_store::now_ms();
            let rows = match store.outbox_due(now, config.batch_rows).await {
                Ok(rows) => {
                    failures = 0;
                    rows
                }
                Err(e) => {
                    // The store itself failed (not one delivery): pause, then read again.
                    failures = failures.saturating_add(1);
                    tracing::error!(error = %e, "outbox relay cannot read the outbox; will retry");
                    let pause = config.backoff.delay_ms(failures, &mut rand::thread_rng());
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    }
                    continue;
                }
            };
            for row in &rows {
                if shutdown.is_triggered() {
                    break;
                }
                deliver_one(&store, handler.as_ref(), &config, row).await;
            }
            if rows.len() < config.batch_rows.max(1) {
                // Nothing more due now: wait for an append, the next due row, or the poll.
                let next_due_ms = store.outbox_next_due_ms().await.ok().flatten();
                let wait_ms = next_due_ms
                    .map(|due| (due - ficus_store::now_ms()).max(0) as u64)
                    .unwrap_or(config.idle_poll_ms)
                    .min(config.idle_poll_ms);
                if wait_ms > 0 {
                    tokio::select! {
                        _ = shutdown.wait() => break,
                        _ = store.outbox_wake().notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(wait_ms)) => {}
                    }
                }
            }
        }
    })
}

async fn deliver_one(
    store: &SqliteEventStore,
    handler: &dyn OutboxHandler,
    config: &OutboxRelayConfig,
    row: &OutboxRow,
) {
    if let Some(hook) = &config.hook {
        hook(OutboxMoment::BeforeEffect, row.id);
    }
    match handler.deliver(row).await {
        Ok(()) => {
            if let Some(hook) = &config.hook {
                hook(OutboxMoment::AfterEffect, row.id);
            }
            if let Err(e) = store.outbox_delete(row.id).await {
                // Delivered again later: harmless, the effect is idempotent.
                tracing::warn!(id = row.id, error = %e, "outbox row delivered but not deleted");
            }
        }
        Err(error) => {
            let attempt = row.attempts.saturating_add(1);
            let pause = config.backoff.delay_ms(attempt, &mut rand::thread_rng());
            tracing::warn!(id = row.id, kind = %row.kind, attempt, %error, "outbox delivery failed; will retry");
            let due = ficus_store::now_ms() + pause as i64;
            if let Err(e) = store.outbox_failed(row.id, due, error).await {
                tracing::warn!(id = row.id, error = %e, "could not record an outbox failure");
            }
        }
    }
}

/// Delivers [`SAGA_START`] messages: enqueues the saga's start job, whose unique key (the saga
/// id) makes a repeated delivery a no-op.
pub struct SagaStarts {
    pub orchestrator: SagaOrchestrator,
    pub jobs: Arc<dyn JobQueue>,
}

/// A [`SAGA_START`] message's payload.
pub fn saga_start_payload(saga_id: &str, saga: &str, input: Value) -> Value {
    serde_json::json!({"saga_id": saga_id, "saga": saga, "input": input})
}

#[async_trait]
impl OutboxHandler for SagaStarts {
    async fn deliver(&self, row: &OutboxRow) -> Result<(), String> {
        if row.kind != SAGA_START {
            return Err(format!(
                "no handler for outbox messages of kind {:?}",
                row.kind
            ));
        }
        let (Some(saga_id), Some(saga)) = (
            row.payload["saga_id"].as_str(),
            row.payload["saga"].as_str(),
        ) else {
            return Err(format!(
                "saga.start message {} lacks saga_id or saga",
                row.id
            ));
        };
        self.orchestrator
            .start(&*self.jobs, saga_id, saga, row.payload["input"].clone())
            .await
            .map_err(|e| e.to_string())
    }
}
