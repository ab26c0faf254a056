//! Proves the worker pool against the real SQLite job queue (and, for the core scenario, the in-memory twin): every job runs exactly once under concurrency, retries back off and stop at the cap, permanent errors dead-letter at once and can be redriven, a dead worker's leases expire and the jobs run elsewhere, graceful shutdown releases unstarted jobs without counting their attempt, heartbeats keep long jobs leased, priorities order the work, and an idle pool does not spin.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ficus_runtime::backoff::Backoff;
use ficus_runtime::{JobError, JobHandler, PoolConfig, Shutdown, WorkerPool};
use ficus_store::mem::MemJobQueue;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{now_ms, DeadFilter, Job, JobId, JobQueue, JobState, NewJob, QueueStats};
use serde_json::json;
use tempfile::TempDir;
use tokio::sync::{Notify, Semaphore};

const Q: &str = "work";
/// Longest any bounded wait in this file lasts before the test fails.
const WAIT: Duration = Duration::from_secs(15);

/// A fresh SQLite queue in a temp dir (kept alive by the returned `TempDir`).
fn sqlite() -> (TempDir, Arc<dyn JobQueue>, Option<Arc<Notify>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
            .expect("open store"),
    );
    let queue = SqliteJobQueue::new(store);
    let ready = queue.ready_signal();
    (dir, Arc::new(queue), Some(ready))
}

/// Short timings so the file stays fast; the visibility is long unless a test shortens it.
fn config(concurrency: usize, prefetch: usize) -> PoolConfig {
    PoolConfig {
        concurrency,
        prefetch,
        visibility: Duration::from_secs(10),
        poll_interval: Duration::from_millis(20),
        backoff: Backoff {
            base_ms: 5,
            max_ms: 50,
        },
        ..PoolConfig::new(Q)
    }
}

async fn enqueue(queue: &dyn JobQueue, jobs: Vec<NewJob>) -> Vec<JobId> {
    let out = queue.enqueue(jobs, now_ms()).await.expect("enqueue");
    assert!(out.iter().all(|e| e.created));
    out.into_iter().map(|e| e.id).collect()
}

fn plain_jobs(n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob::new(Q, "test", json!({ "i": i })))
        .collect()
}

async fn queue_stats(queue: &dyn JobQueue) -> QueueStats {
    queue
        .stats(now_ms())
        .await
        .expect("stats")
        .into_iter()
        .find(|s| s.queue == Q)
        .unwrap_or_default()
}

/// Polls `cond` until it holds; fails the test after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn start(
    queue: &Arc<dyn JobQueue>,
    handler: &Arc<Recorder>,
    config: PoolConfig,
    ready: &Option<Arc<Notify>>,
) -> (WorkerPool, Shutdown) {
    let shutdown = Shutdown::new();
    let pool = WorkerPool::spawn(
        queue.clone(),
        handler.clone(),
        config,
        ready.clone(),
        shutdown.clone(),
    );
    (pool, shutdown)
}

/// Graceful stop, bounded: a pool that does not stop fails the test.
async fn stop(pool: WorkerPool, shutdown: &Shutdown) {
    shutdown.trigger();
    tokio::time::timeout(WAIT, pool.join())
        .await
        .expect("pool did not stop after its shutdown signal");
}

type Decide = Box<dyn Fn(&Job) -> Result<(), JobError> + Send + Sync>;

/// A handler that records every run (the attempt number it saw, in order) and then sleeps,
/// waits on a gate, and answers what `decide` says.
struct Recorder {
    runs: Mutex<HashMap<JobId, Vec<u32>>>,
    order: Mutex<Vec<JobId>>,
    first_start: Mutex<Option<Instant>>,
    sleep: Duration,
    gate: Option<Arc<Semaphore>>,
    decide: Decide,
}

impl Recorder {
    fn new(decide: impl Fn(&Job) -> Result<(), JobError> + Send + Sync + 'static) -> Self {
        Self {
            runs: Mutex::new(HashMap::new()),
            order: Mutex::new(Vec::new()),
            first_start: Mutex::new(None),
            sleep: Duration::ZERO,
            gate: None,
            decide: Box::new(decide),
        }
    }

    fn ok() -> Self {
        Self::new(|_| Ok(()))
    }

    fn sleeping(mut self, d: Duration) -> Self {
        self.sleep = d;
        self
    }

    fn gated(mut self, gate: Arc<Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn runs(&self) -> HashMap<JobId, Vec<u32>> {
        self.runs.lock().unwrap().clone()
    }

    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().map(Vec::len).sum()
    }
}

#[async_trait]
impl JobHandler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.runs
            .lock()
            .unwrap()
            .entry(job.id)
            .or_default()
            .push(job.attempts);
        self.order.lock().unwrap().push(job.id);
        self.first_start
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
        if let Some(gate) = &self.gate {
            let _permit = gate.acquire().await.expect("gate never closes");
        }
        if !self.sleep.is_zero() {
            tokio::time::sleep(self.sleep).await;
        }
        (self.decide)(job)
    }
}

/// Scenario of tests 1 and 9: 2,000 jobs, 16 workers, 100 prefetched; each runs exactly once.
async fn all_jobs_run_exactly_once(queue: Arc<dyn JobQueue>, ready: Option<Arc<Notify>>) {
    const N: usize = 2_000;
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    let handler = Arc::new(Recorder::ok());
    let (pool, shutdown) = start(&queue, &handler, config(16, 100), &ready);
    let stats = pool.stats.clone();
    wait_until("2000 completions", || {
        stats.completed.load(Ordering::Relaxed) == N as u64
    })
    .await;
    stop(pool, &shutdown).await;

    let runs = handler.runs();
    assert_eq!(runs.len(), N, "every job ran");
    for id in &ids {
        assert_eq!(runs.get(id), Some(&vec![1]), "job {id} ran exactly once");
    }
    assert_eq!(stats.completed.load(Ordering::Relaxed), N as u64);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 0);
    assert_eq!(stats.dead.load(Ordering::Relaxed), 0);
    assert_eq!(stats.lost_leases.load(Ordering::Relaxed), 0);
    let s = queue_stats(&*queue).await;
    assert_eq!(
        (s.ready, s.delayed, s.in_flight, s.dead),
        (0, 0, 0, 0),
        "queue drained: {s:?}"
    );
}

// 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_jobs_run_exactly_once_on_sqlite() {
    let (_dir, queue, ready) = sqlite();
    all_jobs_run_exactly_once(queue, ready).await;
}

// 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_jobs_run_exactly_once_on_mem() {
    all_jobs_run_exactly_once(Arc::new(MemJobQueue::new()), None).await;
}

// 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_jobs_back_off_then_succeed() {
    const N: usize = 100;
    let (_dir, queue, ready) = sqlite();
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    let handler = Arc::new(Recorder::new(|job| {
        if job.attempts <= 2 {
            Err(JobError::Retry(format!("flaky attempt {}", job.attempts)))
        } else {
            Ok(())
        }
    }));
    let (pool, shutdown) = start(&queue, &handler, config(8, 32), &ready);
    let stats = pool.stats.clone();
    wait_until("all completions after retries", || {
        stats.completed.load(Ordering::Relaxed) == N as u64
    })
    .await;
    stop(pool, &shutdown).await;

    let runs = handler.runs();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&vec![1, 2, 3]),
            "job {id}: two retries then success"
        );
    }
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2 * N as u64);
    assert_eq!(stats.dead.load(Ordering::Relaxed), 0);
    assert_eq!(stats.lost_leases.load(Ordering::Relaxed), 0);
    for id in &ids {
        assert_eq!(queue.get(*id).await.unwrap(), None, "job {id} completed");
    }
}

// 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts() {
    const N: usize = 50;
    let (_dir, queue, ready) = sqlite();
    let jobs = plain_jobs(N)
        .into_iter()
        .map(|j| NewJob {
            max_attempts: 3,
            ..j
        })
        .collect();
    let ids = enqueue(&*queue, jobs).await;
    let handler = Arc::new(Recorder::new(|job| {
        Err(JobError::Retry(format!(
            "still failing: job {} attempt {}",
            job.id, job.attempts
        )))
    }));
    let (pool, shutdown) = start(&queue, &handler, config(8, 32), &ready);
    let stats = pool.stats.clone();
    wait_until("every job dead", || {
        stats.dead.load(Ordering::Relaxed) == N as u64
    })
    .await;
    // Give a runaway retry the chance to show before stopping.
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop(pool, &shutdown).await;

    let runs = handler.runs();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&vec![1, 2, 3]),
            "job {id}: 3 runs, no more"
        );
    }
    assert_eq!(stats.dead.load(Ordering::Relaxed), N as u64);
    assert_eq!(stats.retried.load(Ordering::Relaxed), 2 * N as u64);
    assert_eq!(stats.completed.load(Ordering::Relaxed), 0);
    let dead = queue.list_dead(Q, 1000).await.unwrap();
    assert_eq!(
        dead.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids,
        "all dead"
    );
    for j in &dead {
        assert_eq!(j.state, JobState::Dead);
        assert_eq!(j.attempts, 3, "job {}", j.id);
        assert_eq!(
            j.last_error.as_deref(),
            Some(format!("still failing: job {} attempt 3", j.id).as_str())
        );
    }
    let s = queue_stats(&*queue).await;
    assert_eq!(
        (s.ready, s.delayed, s.in_flight, s.dead),
        (0, 0, 0, N as u64)
    );
}

// 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_dead_letter_at_once_and_redrive_completes_them() {
    const N: usize = 20;
    let (_dir, queue, ready) = sqlite();
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    let failing = Arc::new(Recorder::new(|job| {
        Err(JobError::Permanent(format!("malformed job {}", job.id)))
    }));
    let (pool, shutdown) = start(&queue, &failing, config(4, 16), &ready);
    let stats = pool.stats.clone();
    wait_until("every job dead", || {
        stats.dead.load(Ordering::Relaxed) == N as u64
    })
    .await;
    stop(pool, &shutdown).await;

    let runs = failing.runs();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&vec![1]), "job {id}: one attempt only");
    }
    assert_eq!(stats.retried.load(Ordering::Relaxed), 0);
    let dead = queue.list_dead(Q, 1000).await.unwrap();
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
    for j in &dead {
        assert_eq!(j.attempts, 1, "job {}", j.id);
        assert_eq!(
            j.last_error.as_deref(),
            Some(format!("malformed job {}", j.id).as_str())
        );
    }

    let n = queue
        .redrive(Q, &DeadFilter::default(), now_ms())
        .await
        .unwrap();
    assert_eq!(n, N as u64);
    let fixed = Arc::new(Recorder::ok());
    let (pool, shutdown) = start(&queue, &fixed, config(4, 16), &ready);
    let stats = pool.stats.clone();
    wait_until("redriven jobs complete", || {
        stats.completed.load(Ordering::Relaxed) == N as u64
    })
    .await;
    stop(pool, &shutdown).await;
    let runs = fixed.runs();
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&vec![1]),
            "job {id}: fresh budget, ran once"
        );
        assert_eq!(queue.get(*id).await.unwrap(), None);
    }
    assert!(queue.list_dead(Q, 1000).await.unwrap().is_empty());
}

// 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_leases_expire_and_the_jobs_run_elsewhere() {
    const N: usize = 10;
    const VISIBILITY_MS: i64 = 300;
    let (_dir, queue, ready) = sqlite();
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    // The "dead" worker: leases everything, then never heartbeats, completes or releases.
    let t0 = Instant::now();
    let stolen = queue.lease(Q, N, now_ms(), VISIBILITY_MS).await.unwrap();
    assert_eq!(stolen.len(), N);
    let old_leases: Vec<_> = stolen.iter().map(|j| j.lease.unwrap()).collect();

    let handler = Arc::new(Recorder::ok());
    let (pool, shutdown) = start(&queue, &handler, config(4, 16), &ready);
    let stats = pool.stats.clone();
    wait_until("expired jobs complete", || {
        stats.completed.load(Ordering::Relaxed) == N as u64
    })
    .await;
    stop(pool, &shutdown).await;

    let first = handler.first_start.lock().unwrap().expect("ran");
    assert!(
        first.duration_since(t0) >= Duration::from_millis(VISIBILITY_MS as u64 - 10),
        "a job ran {:?} after the lease, before it expired",
        first.duration_since(t0)
    );
    let runs = handler.runs();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&vec![2]), "job {id}: second attempt");
        assert_eq!(queue.get(*id).await.unwrap(), None);
    }
    // The dead worker's tokens are fenced off.
    let late = queue.complete(&old_leases).await.unwrap();
    assert!(late.iter().all(|held| !held), "stale leases refused");
    assert_eq!(stats.lost_leases.load(Ordering::Relaxed), 0);
}

// 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_releases_unstarted_jobs_and_finishes_running_ones() {
    const N: usize = 500;
    let (_dir, queue, ready) = sqlite();
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    let slow = Arc::new(Recorder::ok().sleeping(Duration::from_millis(20)));
    let (pool, shutdown) = start(&queue, &slow, config(2, 200), &ready);
    let stats = pool.stats.clone();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = queue_stats(&*queue).await;
    assert!(
        before.in_flight > 2,
        "the local buffer holds leased jobs at shutdown: {before:?}"
    );
    stop(pool, &shutdown).await;

    let runs = slow.runs();
    assert!(!runs.is_empty() && runs.len() < N, "{} ran", runs.len());
    assert_eq!(stats.completed.load(Ordering::Relaxed), runs.len() as u64);
    assert_eq!(stats.lost_leases.load(Ordering::Relaxed), 0);
    for id in &ids {
        let job = queue.get(*id).await.unwrap();
        match runs.get(id) {
            Some(r) => {
                assert_eq!(r, &vec![1], "job {id}");
                assert_eq!(job, None, "job {id} ran, so it was completed");
            }
            None => {
                let job = job.unwrap_or_else(|| panic!("job {id} never ran but is gone"));
                assert_eq!(job.state, JobState::Ready, "job {id} is not left leased");
                assert_eq!(job.attempts, 0, "job {id}: the release did not count");
                assert_eq!(job.lease, None);
            }
        }
    }
    let after = queue_stats(&*queue).await;
    assert_eq!(after.in_flight, 0);
    assert_eq!(after.ready, (N - runs.len()) as u64);

    let fast = Arc::new(Recorder::ok());
    let (pool, shutdown) = start(&queue, &fast, config(16, 100), &ready);
    let stats = pool.stats.clone();
    let rest = (N - runs.len()) as u64;
    wait_until("the rest completes", || {
        stats.completed.load(Ordering::Relaxed) == rest
    })
    .await;
    stop(pool, &shutdown).await;
    let rest_runs = fast.runs();
    for id in &ids {
        let total = runs.get(id).map_or(0, Vec::len) + rest_runs.get(id).map_or(0, Vec::len);
        assert_eq!(total, 1, "job {id} ran exactly once across both pools");
        if let Some(r) = rest_runs.get(id) {
            assert_eq!(r, &vec![1], "job {id}: first counted attempt");
        }
    }
    assert_eq!(queue_stats(&*queue).await.ready, 0);
}

// 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_long_jobs_leased() {
    const N: usize = 4;
    let (_dir, queue, ready) = sqlite();
    let handler = Arc::new(Recorder::ok().sleeping(Duration::from_secs(1)));
    let cfg = PoolConfig {
        visibility: Duration::from_millis(300),
        ..config(N, N)
    };
    let (a, stop_a) = start(&queue, &handler, cfg.clone(), &ready);
    let (b, stop_b) = start(&queue, &handler, cfg, &ready);
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    wait_until("long jobs complete", || {
        sa.completed.load(Ordering::Relaxed) + sb.completed.load(Ordering::Relaxed) == N as u64
    })
    .await;
    // Graceful stops let any second run that started finish, so it would be counted.
    stop(a, &stop_a).await;
    stop(b, &stop_b).await;

    let runs = handler.runs();
    for id in &ids {
        assert_eq!(runs.get(id), Some(&vec![1]), "job {id} ran once");
    }
    assert_eq!(
        sa.lost_leases.load(Ordering::Relaxed) + sb.lost_leases.load(Ordering::Relaxed),
        0
    );
}

// 7b. Prefetched jobs wait in the local buffer; their leases must not lapse meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_jobs_keep_their_lease_while_buffered() {
    const N: usize = 4;
    let (_dir, queue, ready) = sqlite();
    let handler = Arc::new(Recorder::ok().sleeping(Duration::from_millis(400)));
    let cfg = PoolConfig {
        visibility: Duration::from_millis(300),
        ..config(1, N)
    };
    let (a, stop_a) = start(&queue, &handler, cfg.clone(), &ready);
    let ids = enqueue(&*queue, plain_jobs(N)).await;
    wait_until("pool A holds every job", || handler.total_runs() == 1).await;
    assert_eq!(queue_stats(&*queue).await.in_flight, N as u64);
    let (b, stop_b) = start(&queue, &handler, cfg, &ready);
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    let completed = || sa.completed.load(Ordering::Relaxed) + sb.completed.load(Ordering::Relaxed);
    // Done in about N × 400 ms; bounded by hand so a failure reports what happened.
    let deadline = Instant::now() + Duration::from_secs(5);
    while completed() < N as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop(a, &stop_a).await;
    stop(b, &stop_b).await;

    let runs = handler.runs();
    let lost = sa.lost_leases.load(Ordering::Relaxed) + sb.lost_leases.load(Ordering::Relaxed);
    let summary = format!(
        "completed {} of {N}, lost leases {lost}, runs (attempts seen) per job {runs:?}, queue {:?}",
        completed(),
        queue_stats(&*queue).await
    );
    for id in &ids {
        assert_eq!(
            runs.get(id).map(Vec::len),
            Some(1),
            "job {id} ran once: {summary}"
        );
    }
    assert_eq!(completed(), N as u64, "{summary}");
    assert_eq!(lost, 0, "{summary}");
}

// 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_runs_first() {
    let (_dir, queue, ready) = sqlite();
    let jobs = [0, 5, 1]
        .into_iter()
        .map(|p| NewJob {
            priority: p,
            ..NewJob::new(Q, "test", json!({ "p": p }))
        })
        .collect();
    let ids = enqueue(&*queue, jobs).await;
    let priority_of: HashMap<JobId, i32> = ids.iter().copied().zip([0, 5, 1]).collect();
    let handler = Arc::new(Recorder::ok());
    let (pool, shutdown) = start(&queue, &handler, config(1, 1), &ready);
    let stats = pool.stats.clone();
    wait_until("all complete", || {
        stats.completed.load(Ordering::Relaxed) == 3
    })
    .await;
    stop(pool, &shutdown).await;
    let order: Vec<i32> = handler
        .order
        .lock()
        .unwrap()
        .iter()
        .map(|id| priority_of[id])
        .collect();
    assert_eq!(order, [5, 1, 0]);
}

// 10. A pool whose workers are all busy and whose buffer is partly drained must wait, not spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_does_not_spin() {
    const N: usize = 20;
    let (_dir, queue, ready) = sqlite();
    enqueue(&*queue, plain_jobs(N)).await;
    let gate = Arc::new(Semaphore::new(0));
    let handler = Arc::new(Recorder::ok().gated(gate.clone()));
    // One worker, blocked; 8 prefetched, 1 taken: 7 buffered, 1 slot free (< half).
    let (pool, shutdown) = start(&queue, &handler, config(1, 8), &ready);
    wait_until("the worker is busy", || handler.total_runs() == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let metrics = tokio::runtime::Handle::current().metrics();
    let busy = |m: &tokio::runtime::RuntimeMetrics| -> Duration {
        (0..m.num_workers())
            .map(|w| m.worker_total_busy_duration(w))
            .sum()
    };
    let window = Duration::from_millis(500);
    let b0 = busy(&metrics);
    tokio::time::sleep(window).await;
    let spent = busy(&metrics) - b0;

    gate.add_permits(N);
    stop(pool, &shutdown).await;
    assert!(
        spent < window / 5,
        "the runtime was busy {spent:?} of a {window:?} window while every worker waited"
    );
}
