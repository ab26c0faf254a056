//! The sweeper of expired idempotency keys: every `purge_interval`, deletes records older
//! than the retention window, at most `purge_batch` per store call, until a call comes back
//! short (so a backlog is cleared in bounded steps and an idle store costs one query).

use std::sync::Arc;

use ficus_store::{IdempotencyConfig, IdempotencyStore};
use tokio::task::JoinHandle;

use crate::Shutdown;

/// Most purge calls one sweep makes before waiting for the next interval, so a huge backlog
/// never turns a sweep into a long write burst.
pub const PURGE_CALLS_PER_SWEEP: usize = 100;

/// Runs the sweeper until `shutdown`.
pub fn spawn_idempotency_purger(
    keys: Arc<dyn IdempotencyStore>,
    config: IdempotencyConfig,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(config.purge_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            let cutoff = ficus_store::now_ms() - config.retention.as_millis() as i64;
            for _ in 0..PURGE_CALLS_PER_SWEEP {
                match keys.purge(cutoff, config.purge_batch).await {
                    Ok(n) if n < config.purge_batch => break,
                    Ok(n) => tracing::debug!(purged = n, "idempotency keys purged; more remain"),
                    Err(e) => {
                        tracing::warn!(error = %e, "purging idempotency keys failed; next sweep retries");
                        break;
                    }
                }
            }
        }
    })
}
