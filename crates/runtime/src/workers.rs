//! The worker pool: leases jobs in batches into a bounded local buffer, runs them on a
//! bounded number of concurrent workers, completes them in batches, retries failures with
//! exponential backoff and full jitter, and sends what must not (or can no longer) be retried
//! to the dead-letter queue.
//!
//! Shutdown: the fetcher stops leasing, jobs still in the local buffer are released (their
//! attempt is not counted), running jobs finish, and the completer flushes its last batch.
//! A pool that dies instead simply stops renewing its leases; the jobs run again elsewhere
//! when the visibility timeout expires.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_store::{Failure, Job, JobQueue, Lease};
use rand::SeedableRng;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::Shutdown;

/// Why a job attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later (a dependency was down, a conflict, a timeout).
    #[error("{0}")]
    Retry(String),
    /// Will never succeed (a malformed item): straight to the dead-letter queue.
    #[error("{0}")]
    Permanent(String),
}

/// Runs one job. Must be idempotent per job id: an attempt whose completion was lost (crash
/// after the effect, before the ack) runs again.
#[async_trait]
pub trait JobHandler: Send + Sync + 'static {
    async fn handle(&self, job: &Job) -> Result<(), JobError>;
}

/// Limits and tuning of one pool. Every buffer here is bounded.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub queue: String,
    /// Jobs running at once: the pool's starting and smallest size.
    pub concurrency: usize,
    /// The most jobs running at once. Above `concurrency`, the pool is elastic: it grows
    /// toward this while every worker is busy and work is waiting, and shrinks back when
    /// workers sit idle.
    pub max_concurrency: usize,
    /// How often the pool reconsiders its size.
    pub scale_interval: Duration,
    /// Most job starts per second for this pool (`None`: no limit).
    pub rate_per_sec: Option<u32>,
    /// Jobs leased ahead into the local buffer (also the lease batch size).
    pub prefetch: usize,
    /// Lease length; running jobs renew it every third of it.
    pub visibility: Duration,
    /// Longest idle wait before asking the queue again (a ready signal wakes earlier).
    pub poll_interval: Duration,
    pub backoff: Backoff,
    /// Completions sent in one call.
    pub complete_batch: usize,
    /// Longest a completion waits for its batch to fill.
    pub complete_flush: Duration,
}

impl PoolConfig {
    pub fn new(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            concurrency: 16,
            max_concurrency: 16,
            scale_interval: Duration::from_millis(250),
            rate_per_sec: None,
            prefetch: 256,
            visibility: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            backoff: Backoff::default(),
            complete_batch: 512,
            complete_flush: Duration::from_millis(10),
        }
    }
}

/// Counters of a running pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub completed: AtomicU64,
    pub retried: AtomicU64,
    pub dead: AtomicU64,
    /// Completions or failures refused because the lease was lost (job ran too long).
    pub lost_leases: AtomicU64,
    /// The pool's current size (jobs it may run at once).
    pub workers: AtomicU64,
}

/// A running pool.
pub struct WorkerPool {
    pub stats: Arc<PoolStats>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerPool {
    /// Starts a pool on `queue`. `ready` (if the adapter has one) wakes idle fetches early.
    pub fn spawn(
        queue: Arc<dyn JobQueue>,
        handler: Arc<dyn JobHandler>,
        config: PoolConfig,
        ready: Option<Arc<Notify>>,
        shutdown: Shutdown,
    ) -> Self {
        let stats = Arc::new(PoolStats::default());
        let task = tokio::spawn(run(queue, handler, config, ready, shutdown, stats.clone()));
        Self { stats, task }
    }

    /// Waits until the pool has stopped (after its shutdown signal).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

fn now_ms() -> i64 {
    ficus_store::now_ms()
}

async fn run(
    queue: Arc<dyn JobQueue>,
    handler: Arc<dyn JobHandler>,
    config: PoolConfig,
    ready: Option<Arc<Notify>>,
    shutdown: Shutdown,
    stats: Arc<PoolStats>,
) {
    let prefetch = config.prefetch.max(1);
    let (job_tx, mut job_rx) = mpsc::channel::<Job>(prefetch);
    let (done_tx, done_rx) = mpsc::channel::<Lease>(config.complete_batch.max(1) * 4);
    let completer = tokio::spawn(complete_loop(
        queue.clone(),
        done_rx,
        config.clone(),
        stats.clone(),
    ));
    let waiting: Buffered = Default::default();
    let fetcher = tokio::spawn(fetch_loop(
        queue.clone(),
        job_tx,
        waiting.clone(),
        config.clone(),
        ready,
        shutdown.clone(),
    ));
    let renewer = tokio::spawn(renew_loop(
        queue.clone(),
        waiting.clone(),
        config.clone(),
        shutdown.clone(),
    ));

    let min = config.concurrency.max(1);
    let slots = Arc::new(Semaphore::new(min));
    stats.workers.store(min as u64, Ordering::Relaxed);
    let scaler = (config.max_concurrency > min).then(|| {
        tokio::spawn(scale_loop(
            slots.clone(),
            waiting.clone(),
            config.clone(),
            stats.clone(),
            shutdown.clone(),
        ))
    });
    let mut ticker = config.rate_per_sec.filter(|r| *r > 0).map(|r| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r as f64));
        // After an idle spell, one start at once, not a burst making up for lost ticks.
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut running = JoinSet::new();
    let mut seed = 0u64;
    loop {
        if let Some(t) = ticker.as_mut() {
            tokio::select! {
                _ = shutdown.wait() => break,
                _ = t.tick() => {}
            }
        }
        let permit = tokio::select! {
            _ = shutdown.wait() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closes"),
        };
        let job = tokio::select! {
            _ = shutdown.wait() => break,
            j = job_rx.recv() => match j {
                Some(j) => j,
                None => break,
            },
        };
        // A job whose buffered lease was lost belongs to another worker now.
        let still_held = job.lease.is_some_and(|l| buffered(&waiting).remove(&l));
        if !still_held {
            stats.lost_leases.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            continue;
        }
        seed = seed.wrapping_add(1);
        let (queue, handler, done, stats, config) = (
            queue.clone(),
            handler.clone(),
            done_tx.clone(),
            stats.clone(),
            config.clone(),
        );
        running.spawn(async move {
            run_one(&*queue, &*handler, job, &done, &stats, &config, seed).await;
            drop(permit);
        });
        // Reap finished workers so the set stays as small as the concurrency.
        while running.try_join_next().is_some() {}
    }
    // Shutdown: stop fetching, give back what was leased but not started, let the running
    // finish, flush completions.
    let _ = fetcher.await;
    let _ = renewer.await;
    if let Some(s) = scaler {
        let _ = s.await;
    }
    job_rx.close();
    let mut unstarted = Vec::new();
    while let Some(j) = job_rx.recv().await {
        unstarted.extend(j.lease);
    }
    if !unstarted.is_empty() {
        if let Err(e) = queue.release(&unstarted).await {
            tracing::warn!(error = %e, "could not release unstarted jobs; their leases will expire");
        }
    }
    while running.join_next().await.is_some() {}
    drop(done_tx);
    let _ = completer.await;
}

/// Leases sitting in the local buffer, not yet started. The renewer keeps them alive, so a
/// job waiting behind slow ones is not taken over by another worker (and its attempt count not
/// burnt) while it waits.
type Buffered = Arc<std::sync::Mutex<HashSet<Lease>>>;

fn buffered(b: &Buffered) -> std::sync::MutexGuard<'_, HashSet<Lease>> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

async fn renew_loop(
    queue: Arc<dyn JobQueue>,
    waiting: Buffered,
    config: PoolConfig,
    shutdown: Shutdown,
) {
    let every = (config.visibility / 3).max(Duration::from_millis(10));
    let visibility_ms = config.visibility.as_millis() as i64;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let leases: Vec<Lease> = buffered(&waiting).iter().copied().collect();
        if leases.is_empty() {
            continue;
        }
        match queue.heartbeat(&leases, now_ms(), visibility_ms).await {
            Ok(held) => {
                let mut w = buffered(&waiting);
                for (l, h) in leases.iter().zip(held) {
                    if !h {
                        // Lost: whoever holds it now runs it; this pool must not.
                        w.remove(l);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing buffered leases failed"),
        }
    }
}

/// Grows the pool (by half its size, up to the maximum) while every worker is busy and jobs
/// wait in the local buffer; shrinks it (by half its idle workers, down to the minimum) after
/// two intervals in a row with idle workers and nothing waiting.
async fn scale_loop(
    slots: Arc<Semaphore>,
    waiting: Buffered,
    config: PoolConfig,
    stats: Arc<PoolStats>,
    shutdown: Shutdown,
) {
    let (min, max) = (config.concurrency.max(1), config.max_concurrency);
    let mut size = min;
    let mut idle_rounds = 0;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(config.scale_interval) => {}
        }
        let free = slots.available_permits();
        let backlog = buffered(&waiting).len();
        if free == 0 && backlog > 0 && size < max {
            let add = (size / 2).max(1).min(max - size);
            slots.add_permits(add);
            size += add;
            idle_rounds = 0;
        } else if free > 0 && backlog == 0 && size > min {
            idle_rounds += 1;
            if idle_rounds >= 2 {
                let remove = (free / 2).max(1).min(size - min);
                if let Ok(p) = slots.try_acquire_many(remove as u32) {
                    p.forget();
                    size -= remove;
                }
                idle_rounds = 0;
            }
        } else {
            idle_rounds = 0;
        }
        stats.workers.store(size as u64, Ordering::Relaxed);
    }
}

async fn fetch_loop(
    queue: Arc<dyn JobQueue>,
    job_tx: mpsc::Sender<Job>,
    waiting: Buffered,
    config: PoolConfig,
    ready: Option<Arc<Notify>>,
    shutdown: Shutdown,
) {
    let mut delay = Duration::from_millis(10);
    let refill_at = (job_tx.max_capacity() / 2).max(1);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        // Lease only what the local buffer can hold, and only once it is at least half empty:
        // one big lease costs the queue far less than many small ones.
        let room = job_tx.capacity();
        if room < refill_at {
            // Sleeps until that much room is free (the permits go back at once).
            tokio::select! {
                _ = shutdown.wait() => return,
                r = job_tx.reserve_many(refill_at) => match r {
                    Ok(permits) => drop(permits),
                    Err(_) => return,
                },
            }
            continue;
        }
        // Register for the ready signal before asking, so an enqueue in between is not missed.
        let notified = ready.as_ref().map(|n| n.clone().notified_owned());
        let visibility_ms = config.visibility.as_millis() as i64;
        match queue
            .lease(&config.queue, room, now_ms(), visibility_ms)
            .await
        {
            Ok(jobs) if !jobs.is_empty() => {
                delay = Duration::from_millis(10);
                buffered(&waiting).extend(jobs.iter().filter_map(|j| j.lease));
                for j in jobs {
                    if job_tx.send(j).await.is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {
                let wait = async {
                    match notified {
                        Some(n) => {
                            let _ = tokio::time::timeout(config.poll_interval, n).await;
                        }
                        None => tokio::time::sleep(config.poll_interval).await,
                    }
                };
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = wait => {}
                }
            }
            Err(e) => {
                tracing::warn!(queue = %config.queue, error = %e, "lease failed; backing off");
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn run_one(
    queue: &dyn JobQueue,
    handler: &dyn JobHandler,
    job: Job,
    done: &mpsc::Sender<Lease>,
    stats: &PoolStats,
    config: &PoolConfig,
    seed: u64,
) {
    let Some(lease) = job.lease else {
        tracing::error!(job = job.id, "leased job without a lease token; skipped");
        return;
    };
    let visibility_ms = config.visibility.as_millis() as i64;
    let renew_every = (config.visibility / 3).max(Duration::from_millis(10));
    // The job's span carries the correlation and trace ids it was enqueued with, so every
    // line the handler logs can be found by the id of the request that caused it.
    let span = crate::telemetry::job_span(&job);
    let work = tracing::Instrument::instrument(handler.handle(&job), span.clone());
    tokio::pin!(work);
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(renew_every) => {
                match queue.heartbeat(&[lease], now_ms(), visibility_ms).await {
                    Ok(held) if held.first() == Some(&false) => {
                        tracing::warn!(job = job.id, "lease lost while running; another worker may run it");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(job = job.id, error = %e, "heartbeat failed"),
                }
            }
        }
    };
    match &result {
        Ok(()) => span.in_scope(|| tracing::debug!(job = job.id, kind = %job.kind, "job done")),
        Err(e) => span.in_scope(
            || tracing::info!(job = job.id, kind = %job.kind, error = %e, "job attempt failed"),
        ),
    }
    match result {
        Ok(()) => {
            let _ = done.send(lease).await;
        }
        Err(err) => {
            let (failure, counter) = match &err {
                JobError::Retry(_) if job.attempts < job.max_attempts => {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(
                        seed ^ (job.id as u64).rotate_left(17) ^ now_ms() as u64,
                    );
                    let delay = config.backoff.delay_ms(job.attempts, &mut rng) as i64;
                    (
                        Failure::RetryAt {
                            at_ms: now_ms() + delay,
                        },
                        &stats.retried,
                    )
                }
                _ => (Failure::Dead, &stats.dead),
            };
            match queue.fail(lease, &err.to_string(), failure, now_ms()).await {
                Ok(true) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {
                    stats.lost_leases.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(job = job.id, error = %e, "could not record a failure; the lease will expire")
                }
            }
        }
    }
}

async fn complete_loop(
    queue: Arc<dyn JobQueue>,
    mut done_rx: mpsc::Receiver<Lease>,
    config: PoolConfig,
    stats: Arc<PoolStats>,
) {
    let max = config.complete_batch.max(1);
    let mut batch = Vec::with_capacity(max);
    while let Some(first) = done_rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + config.complete_flush;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, done_rx.recv()).await {
                Ok(Some(l)) => batch.push(l),
                _ => break,
            }
        }
        match queue.complete(&batch).await {
            Ok(held) => {
                let ok = held.iter().filter(|h| **h).count() as u64;
                stats.completed.fetch_add(ok, Ordering::Relaxed);
                stats
                    .lost_leases
                    .fetch_add(held.len() as u64 - ok, Ordering::Relaxed);
            }
            // The jobs stay leased and run again after their visibility timeout: at least
            // once, never lost.
            Err(e) => tracing::warn!(error = %e, n = batch.len(), "completing a batch failed"),
        }
        batch.clear();
    }
}
