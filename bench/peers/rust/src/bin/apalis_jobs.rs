//! The jobs peer: apalis with its PostgreSQL backend. Enqueues N no-op jobs in batches, then
//! runs one worker with concurrency C until all N are done, and prints one JSON line with
//! the same figures `ficus bench jobs` reports (bulk enqueue rate, processing rate).
//!
//!   apalis_jobs <postgres url of a fresh database> <jobs> <concurrency>

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};

/// Jobs handed to one bulk push.
const ENQUEUE_BATCH: usize = 1000;
/// How long the whole drain may take before the run counts as failed.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

static DONE: AtomicU64 = AtomicU64::new(0);

async fn noop(_k: u64) -> Result<(), BoxDynError> {
    DONE.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: apalis_jobs <url> <jobs> <concurrency>"
    );
    let (url, jobs, concurrency): (&str, u64, usize) =
        (&args[1], args[2].parse()?, args[3].parse()?);
    let pool = PgPool::connect(url).await?;
    PostgresStorage::setup(&pool).await?;
    let config = Config::default().queue("bench").batch_size(concurrency);
    let mut storage = PostgresStorage::<u64>::new(&pool).with_config(config);

    let start = Instant::now();
    let mut k = 0u64;
    while k < jobs {
        let end = (k + ENQUEUE_BATCH as u64).min(jobs);
        storage
            .push_bulk((k..end).collect())
            .await
            .map_err(|e| anyhow::anyhow!("apalis push failed: {e}"))?;
        k = end;
    }
    let enqueue_per_sec = jobs as f64 / start.elapsed().as_secs_f64();

    let worker = WorkerBuilder::new("bench-worker")
        .backend(storage)
        .concurrency(concurrency)
        .build(noop);
    let start = Instant::now();
    let done = async {
        while DONE.load(Ordering::Relaxed) < jobs {
            anyhow::ensure!(
                start.elapsed() < DRAIN_LIMIT,
                "apalis did not finish in {DRAIN_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        r = worker.run() => anyhow::bail!("apalis worker stopped early: {r:?}"),
        r = done => r?,
    }
    let processed_per_sec = jobs as f64 / start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"jobs": jobs, "concurrency": concurrency,
            "enqueue_per_sec": enqueue_per_sec, "processed_per_sec": processed_per_sec})
    );
    // The worker has no more to do; exit without waiting for its graceful stop.
    std::process::exit(0);
}
