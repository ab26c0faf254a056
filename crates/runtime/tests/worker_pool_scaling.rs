//! The worker pool's elastic size and rate limit: it grows toward its maximum while work
//! waits and every worker is busy, never runs more than the maximum at once, shrinks back to
//! its minimum when idle, and never starts jobs faster than its rate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ficus_runtime::{JobError, JobHandler, PoolConfig, Shutdown, WorkerPool};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{now_ms, Job, JobQueue, NewJob};
use serde_json::json;

struct Gauge {
    sleep: Duration,
    running: AtomicUsize,
    peak: AtomicUsize,
    starts: Mutex<Vec<Instant>>,
}

#[async_trait]
impl JobHandler for Gauge {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        self.starts.lock().unwrap().push(Instant::now());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.sleep).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

fn gauge(sleep: Duration) -> Arc<Gauge> {
    Arc::new(Gauge {
        sleep,
        running: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        starts: Mutex::new(Vec::new()),
    })
}

async fn setup(queue: &str, n: usize) -> (tempfile::TempDir, Arc<SqliteJobQueue>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let q = Arc::new(SqliteJobQueue::new(store));
    let jobs = (0..n)
        .map(|i| NewJob::new(queue, "work", json!({ "i": i })))
        .collect();
    q.enqueue(jobs, now_ms()).await.unwrap();
    (dir, q)
}

async fn wait_completed(pool: &WorkerPool, n: u64, limit: Duration) {
    let start = Instant::now();
    while pool.stats.completed.load(Ordering::Relaxed) < n {
        assert!(start.elapsed() < limit, "jobs did not finish in {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_under_load_and_shrinks_when_idle() {
    const N: usize = 400;
    let (_dir, q) = setup("elastic", N).await;
    let handler = gauge(Duration::from_millis(15));
    let config = PoolConfig {
        concurrency: 1,
        max_concurrency: 16,
        scale_interval: Duration::from_millis(20),
        prefetch: 64,
        ..PoolConfig::new("elastic")
    };
    let shutdown = Shutdown::new();
    let pool = WorkerPool::spawn(
        q.clone(),
        handler.clone(),
        config,
        Some(q.ready_signal()),
        shutdown.clone(),
    );
    let mut largest = 0;
    let start = Instant::now();
    while pool.stats.completed.load(Ordering::Relaxed) < N as u64 {
        largest = largest.max(pool.stats.workers.load(Ordering::Relaxed));
        assert!(start.elapsed() < Duration::from_secs(30), "did not drain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(largest, 16, "the pool grew to its maximum under a backlog");
    let peak = handler.peak.load(Ordering::SeqCst);
    assert!(peak > 1 && peak <= 16, "peak concurrency {peak}");
    // Idle now: back to the minimum.
    let idle_since = Instant::now();
    while pool.stats.workers.load(Ordering::Relaxed) > 1 {
        assert!(
            idle_since.elapsed() < Duration::from_secs(5),
            "the pool did not shrink: {} workers",
            pool.stats.workers.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.trigger();
    pool.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_pool_never_exceeds_its_size() {
    const N: usize = 100;
    let (_dir, q) = setup("fixed", N).await;
    let handler = gauge(Duration::from_millis(5));
    let config = PoolConfig {
        concurrency: 3,
        max_concurrency: 3,
        ..PoolConfig::new("fixed")
    };
    let shutdown = Shutdown::new();
    let pool = WorkerPool::spawn(
        q.clone(),
        handler.clone(),
        config,
        Some(q.ready_signal()),
        shutdown.clone(),
    );
    wait_completed(&pool, N as u64, Duration::from_secs(30)).await;
    assert_eq!(handler.peak.load(Ordering::SeqCst), 3);
    assert_eq!(pool.stats.workers.load(Ordering::Relaxed), 3);
    shutdown.trigger();
    pool.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_holds() {
    const N: usize = 40;
    const RATE: u32 = 100;
    let (_dir, q) = setup("limited", N).await;
    let handler = gauge(Duration::ZERO);
    let config = PoolConfig {
        concurrency: 8,
        max_concurrency: 8,
        rate_per_sec: Some(RATE),
        ..PoolConfig::new("limited")
    };
    let shutdown = Shutdown::new();
    let pool = WorkerPool::spawn(
        q.clone(),
        handler.clone(),
        config,
        Some(q.ready_signal()),
        shutdown.clone(),
    );
    wait_completed(&pool, N as u64, Duration::from_secs(30)).await;
    let mut starts = handler.starts.lock().unwrap().clone();
    starts.sort();
    let span = *starts.last().unwrap() - starts[0];
    // N starts at RATE per second need at least (N - 1) intervals.
    let floor = Duration::from_secs_f64((N - 1) as f64 / RATE as f64 * 0.9);
    assert!(
        span >= floor,
        "{N} starts took {span:?}, faster than {RATE}/s allows"
    );
    // No 100 ms window holds more than a tenth of a second's worth (plus one).
    for (i, t) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .take_while(|s| **s - *t < Duration::from_millis(100))
            .count();
        assert!(
            in_window <= (RATE / 10) as usize + 1,
            "{in_window} starts within 100 ms"
        );
    }
    shutdown.trigger();
    pool.join().await;
}
