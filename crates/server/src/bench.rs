//! `ficus bench append`: durable single-event appends per second and acknowledgement latency
//! at several writer counts, on the SQLite backend (beside the disk's raw fsync rate, the
//! limit that group commit works around) or on PostgreSQL (`--store postgres://...`, each run
//! in a fresh schema dropped afterwards).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::postgres::testing::{fresh_schema, SchemaGuard};
use ficus_store::postgres::PgEventStore;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, EventStore};
use serde::Serialize;
use serde_json::json;

/// One measured run at one writer count.
#[derive(Debug, Clone, Serialize)]
pub struct AppendRun {
    pub writers: usize,
    pub appends: u64,
    pub seconds: f64,
    pub appends_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx] as u64
}

/// Where a benchmark keeps its data.
#[derive(Debug, Clone)]
pub enum BenchStore {
    /// A fresh SQLite file per run in `dir`.
    Sqlite { dir: PathBuf, config: SqliteConfig },
    /// A fresh schema per run in this PostgreSQL database, with this many group commits in
    /// flight from the benchmark process.
    Postgres {
        url: String,
        writers: usize,
        gather_yields: usize,
    },
}

impl BenchStore {
    pub fn backend(&self) -> &'static str {
        match self {
            BenchStore::Sqlite { .. } => "sqlite",
            BenchStore::Postgres { .. } => "postgres",
        }
    }
}

/// A store opened for one run, and what to remove after it.
enum Opened {
    Sqlite(Arc<SqliteEventStore>, PathBuf),
    Postgres(Arc<PgEventStore>, SchemaGuard),
}

impl Opened {
    async fn open(at: &BenchStore, tag: &str) -> anyhow::Result<Opened> {
        Ok(match at {
            BenchStore::Sqlite { dir, config } => {
                let path = dir.join(format!("bench-{tag}-{}.db", uuid::Uuid::now_v7()));
                let store = Arc::new(SqliteEventStore::open(&path, config.clone())?);
                Opened::Sqlite(store, path)
            }
            BenchStore::Postgres {
                url,
                writers,
                gather_yields,
            } => {
                let (mut config, guard) = fresh_schema(url, &format!("bench{tag}"));
                config.pool_size = 8.max(writers + 4);
                config.writers = *writers;
                config.gather_yields = *gather_yields;
                Opened::Postgres(Arc::new(PgEventStore::open(config).await?), guard)
            }
        })
    }

    /// The job queue beside the event log, and its ready signal.
    fn jobs(&self) -> (Arc<dyn ficus_store::JobQueue>, Arc<tokio::sync::Notify>) {
        match self {
            Opened::Sqlite(s, _) => {
                let q = ficus_store::sqlite::SqliteJobQueue::new(s.clone());
                let ready = q.ready_signal();
                (Arc::new(q), ready)
            }
            Opened::Postgres(s, _) => {
                let q = ficus_store::postgres::PgJobQueue::for_store(s);
                let ready = q.ready_signal();
                (Arc::new(q), ready)
            }
        }
    }

    fn store(&self) -> Arc<dyn EventStore> {
        match self {
            Opened::Sqlite(s, _) => s.clone(),
            Opened::Postgres(s, _) => s.clone(),
        }
    }

    async fn close(self) {
        match self {
            Opened::Sqlite(store, path) => {
                store.shutdown().await;
                drop(store);
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                let _ = std::fs::remove_file(path.with_extension("lock"));
            }
            Opened::Postgres(store, guard) => {
                drop(store);
                drop(guard);
            }
        }
    }
}

/// Runs `writers` tasks, each appending one event at a time to its own stream, for `duration`.
pub async fn append_run(
    at: &BenchStore,
    writers: usize,
    duration: Duration,
) -> anyhow::Result<AppendRun> {
    let opened = Opened::open(at, &writers.to_string()).await?;
    let store = opened.store();
    let ty = EventType::new("BenchEvent")?;
    // Warm-up: create the streams so every measured append is a steady-state one.
    for w in 0..writers {
        let s = StreamId::new(format!("bench-{w}"))?;
        store
            .append(
                &s,
                ExpectedVersion::Any,
                vec![new_event(ty.clone(), json!({"w": w}))],
            )
            .await?;
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (store, ty) = (store.clone(), ty.clone());
        tasks.push(tokio::spawn(async move {
            let s = StreamId::new(format!("bench-{w}")).expect("valid stream id");
            let mut lat_us: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let e = new_event(
                    ty.clone(),
                    json!({"w": w, "i": i, "sku": "SKU-1", "qty": 1}),
                );
                let t = Instant::now();
                store.append(&s, ExpectedVersion::Any, vec![e]).await?;
                lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                i += 1;
            }
            anyhow::Ok(lat_us)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(store);
    opened.close().await;
    all.sort_unstable();
    Ok(AppendRun {
        writers,
        appends: all.len() as u64,
        seconds,
        appends_per_sec: all.len() as f64 / seconds,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
        max_us: all.last().copied().unwrap_or(0) as u64,
    })
}

/// The disk's rate of 4 KiB write + fdatasync, one after another: what a store without group
/// commit could reach at best.
pub fn fsync_rate(dir: &Path, duration: Duration) -> anyhow::Result<f64> {
    let path = dir.join(format!("fsync-{}.bin", uuid::Uuid::now_v7()));
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        f.write_all(&block)?;
        f.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// The whole append benchmark: `runs` rounds over `writer_counts`, medians printed as a table
/// and returned as JSON.
pub async fn append_bench(
    at: &BenchStore,
    writer_counts: &[usize],
    duration: Duration,
    runs: usize,
) -> anyhow::Result<serde_json::Value> {
    let runs = runs.max(1);
    let mut fsyncs = Vec::new();
    let mut results: Vec<Vec<AppendRun>> = vec![Vec::new(); writer_counts.len()];
    for run in 0..runs {
        if let BenchStore::Sqlite { dir, .. } = at {
            std::fs::create_dir_all(dir)?;
            fsyncs.push(tokio::task::block_in_place(|| {
                fsync_rate(dir, Duration::from_secs(1))
            })?);
        }
        for (i, &w) in writer_counts.iter().enumerate() {
            let r = append_run(at, w, duration).await?;
            eprintln!(
                "run {}/{runs}: {w:>3} writers  {:>9.0} appends/s  p50 {:>6} us  p99 {:>6} us",
                run + 1,
                r.appends_per_sec,
                r.p50_us,
                r.p99_us
            );
            results[i].push(r);
        }
    }
    let fsync = median(fsyncs);
    let sqlite = matches!(at, BenchStore::Sqlite { .. });
    println!();
    if sqlite {
        println!("ficus bench append — SQLite backend, single-event appends, each acknowledged only after the WAL fdatasync that covers it");
        println!(
            "median of {runs} run(s) of {:.0} s each; disk limit: {fsync:.0} write+fdatasync/s",
            duration.as_secs_f64()
        );
    } else {
        println!("ficus bench append — PostgreSQL backend, single-event appends, each acknowledged after its transaction committed with synchronous_commit=on");
        println!(
            "median of {runs} run(s) of {:.0} s each, a fresh schema per run",
            duration.as_secs_f64()
        );
    }
    println!();
    if sqlite {
        println!("| writers | appends/s | ack p50 | ack p99 | vs raw fsync/s |");
        println!("|--------:|----------:|--------:|--------:|---------------:|");
    } else {
        println!("| writers | appends/s | ack p50 | ack p99 |");
        println!("|--------:|----------:|--------:|--------:|");
    }
    let mut rows = Vec::new();
    for (i, &w) in writer_counts.iter().enumerate() {
        let rate = median(results[i].iter().map(|r| r.appends_per_sec).collect());
        let p50 = median(results[i].iter().map(|r| r.p50_us as f64).collect());
        let p99 = median(results[i].iter().map(|r| r.p99_us as f64).collect());
        let row = format!(
            "| {w:>7} | {rate:>9.0} | {:>4.2} ms | {:>4.2} ms |",
            p50 / 1000.0,
            p99 / 1000.0
        );
        if sqlite {
            println!("{row} {:>13.1}x |", rate / fsync);
        } else {
            println!("{row}");
        }
        rows.push(
            json!({"writers": w, "appends_per_sec": rate, "p50_us": p50, "p99_us": p99,
                         "runs": results[i]}),
        );
    }
    Ok(
        json!({"scenario": "append", "backend": at.backend(), "fsync_per_sec": fsync, "results": rows}),
    )
}

/// `ficus bench jobs`: durable no-op jobs through enqueue → lease → complete on the SQLite
/// or PostgreSQL backend, 1 ms jobs, and enqueue-to-start latency of single jobs on an idle
/// pool.
pub mod lag;
pub mod log_size;
pub mod snapshots;

pub mod jobs {
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use async_trait::async_trait;
    use ficus_runtime::{JobError, JobHandler, PoolConfig, Shutdown, WorkerPool};
    use ficus_store::{Job, JobQueue, NewJob};
    use serde_json::json;

    use super::{percentile, BenchStore, Opened};

    /// Options of `ficus bench jobs`.
    #[derive(Debug, Clone)]
    pub struct JobsBench {
        pub jobs: usize,
        pub slow_jobs: usize,
        pub concurrency: usize,
        pub latency_samples: usize,
    }

    struct Handler {
        sleep: Option<Duration>,
        epoch: Instant,
        /// Enqueue-to-start latencies in µs, when the payload carries its enqueue time.
        starts: Mutex<Vec<u32>>,
    }

    #[async_trait]
    impl JobHandler for Handler {
        async fn handle(&self, job: &Job) -> Result<(), JobError> {
            if let Some(t) = job.payload.get("t_us").and_then(|v| v.as_u64()) {
                let now = self.epoch.elapsed().as_micros() as u64;
                let mut s = self.starts.lock().unwrap_or_else(|p| p.into_inner());
                s.push(now.saturating_sub(t).min(u32::MAX as u64) as u32);
            }
            if let Some(d) = self.sleep {
                tokio::time::sleep(d).await;
            }
            Ok(())
        }
    }

    fn pool_config(queue: &str, concurrency: usize) -> PoolConfig {
        PoolConfig {
            concurrency,
            prefetch: 1000,
            complete_batch: 1000,
            poll_interval: Duration::from_millis(50),
            ..PoolConfig::new(queue)
        }
    }

    async fn enqueue_all(q: &Arc<dyn JobQueue>, queue: &str, n: usize) -> anyhow::Result<f64> {
        const BATCH: usize = 1000;
        const ENQUEUERS: usize = 4;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for e in 0..ENQUEUERS {
            let (q, queue) = (q.clone(), queue.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut i = e * BATCH;
                while i < n {
                    let end = (i + BATCH).min(n);
                    let batch = (i..end)
                        .map(|k| NewJob::new(&queue, "noop", json!({"k": k})))
                        .collect();
                    q.enqueue(batch, ficus_store::now_ms()).await?;
                    i += ENQUEUERS * BATCH;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    async fn drain(pool: &WorkerPool, n: u64, limit: Duration) -> anyhow::Result<f64> {
        let start = Instant::now();
        while pool.stats.completed.load(Ordering::Relaxed) < n {
            anyhow::ensure!(
                start.elapsed() < limit,
                "jobs did not finish within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    }

    /// Runs the whole scenario `runs` times and prints the median of each figure.
    pub async fn run(
        at: &BenchStore,
        opts: &JobsBench,
        runs: usize,
    ) -> anyhow::Result<serde_json::Value> {
        let mut all = Vec::new();
        for r in 0..runs.max(1) {
            let one = run_once(at, opts).await?;
            eprintln!("run {}/{}: {one}", r + 1, runs.max(1));
            all.push(one);
        }
        let median =
            |key: &str| super::median(all.iter().filter_map(|v| v[key].as_f64()).collect());
        let slow_concurrency = opts.concurrency * 4;
        println!();
        match at {
            BenchStore::Sqlite { .. } => println!(
                "ficus bench jobs — SQLite backend, durable (every step acknowledged after fdatasync)"
            ),
            BenchStore::Postgres { .. } => println!(
                "ficus bench jobs — PostgreSQL backend, durable (every step acknowledged after its commit, synchronous_commit=on)"
            ),
        }
        println!(
            "median of {} run(s): {} no-op jobs, {} workers; {} jobs of 1 ms, {slow_concurrency} workers",
            all.len(),
            opts.jobs,
            opts.concurrency,
            opts.slow_jobs
        );
        println!();
        println!("| measure | figure |");
        println!("|---|---:|");
        println!("| bulk enqueue | {:.0} jobs/s |", median("enqueue_per_sec"));
        println!(
            "| process no-op jobs (lease → run → complete) | {:.0} jobs/s |",
            median("processed_per_sec")
        );
        println!(
            "| enqueue and process at once, end to end | {:.0} jobs/s |",
            median("end_to_end_per_sec")
        );
        println!(
            "| process 1 ms jobs | {:.0} jobs/s |",
            median("slow_1ms_per_sec")
        );
        println!(
            "| enqueue → handler start, idle pool | p50 {:.2} ms, p99 {:.2} ms |",
            median("pickup_p50_us") / 1000.0,
            median("pickup_p99_us") / 1000.0
        );
        Ok(json!({"scenario": "jobs", "backend": at.backend(), "runs": all}))
    }

    async fn run_once(at: &BenchStore, opts: &JobsBench) -> anyhow::Result<serde_json::Value> {
        if let BenchStore::Sqlite { dir, .. } = at {
            std::fs::create_dir_all(dir)?;
        }
        let opened = Opened::open(at, "jobs").await?;
        let (q, ready) = opened.jobs();
        let dyn_q = q.clone();
        let epoch = Instant::now();
        let limit = Duration::from_secs(300);

        // 1. Bulk enqueue, then drain with no-op handlers.
        let enqueue_per_sec = enqueue_all(&q, "bench-noop", opts.jobs).await?;
        let shutdown = Shutdown::new();
        let noop = Arc::new(Handler {
            sleep: None,
            epoch,
            starts: Mutex::new(Vec::new()),
        });
        let pool = WorkerPool::spawn(
            dyn_q.clone(),
            noop,
            pool_config("bench-noop", opts.concurrency),
            Some(ready.clone()),
            shutdown.clone(),
        );
        let processed_per_sec = drain(&pool, opts.jobs as u64, limit).await?;
        shutdown.trigger();
        pool.join().await;

        // 2. End to end with enqueue running beside the workers.
        let shutdown = Shutdown::new();
        let noop = Arc::new(Handler {
            sleep: None,
            epoch,
            starts: Mutex::new(Vec::new()),
        });
        let pool = WorkerPool::spawn(
            dyn_q.clone(),
            noop,
            pool_config("bench-mixed", opts.concurrency),
            Some(ready.clone()),
            shutdown.clone(),
        );
        let start = Instant::now();
        enqueue_all(&q, "bench-mixed", opts.jobs).await?;
        drain(&pool, opts.jobs as u64, limit).await?;
        let end_to_end_per_sec = opts.jobs as f64 / start.elapsed().as_secs_f64();
        shutdown.trigger();
        pool.join().await;

        // 3. Jobs that take 1 ms each.
        enqueue_all(&q, "bench-1ms", opts.slow_jobs).await?;
        let shutdown = Shutdown::new();
        let slow = Arc::new(Handler {
            sleep: Some(Duration::from_millis(1)),
            epoch,
            starts: Mutex::new(Vec::new()),
        });
        let slow_concurrency = opts.concurrency * 4;
        let pool = WorkerPool::spawn(
            dyn_q.clone(),
            slow,
            pool_config("bench-1ms", slow_concurrency),
            Some(ready.clone()),
            shutdown.clone(),
        );
        let slow_per_sec = drain(&pool, opts.slow_jobs as u64, limit).await?;
        shutdown.trigger();
        pool.join().await;

        // 4. Enqueue-to-start latency: single jobs, one at a time, on an idle pool.
        let shutdown = Shutdown::new();
        let probe = Arc::new(Handler {
            sleep: None,
            epoch,
            starts: Mutex::new(Vec::new()),
        });
        let pool = WorkerPool::spawn(
            dyn_q.clone(),
            probe.clone(),
            pool_config("bench-latency", opts.concurrency),
            Some(ready.clone()),
            shutdown.clone(),
        );
        for _ in 0..opts.latency_samples {
            let t_us = epoch.elapsed().as_micros() as u64;
            q.enqueue(
                vec![NewJob::new(
                    "bench-latency",
                    "probe",
                    json!({ "t_us": t_us }),
                )],
                ficus_store::now_ms(),
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drain(&pool, opts.latency_samples as u64, limit).await?;
        shutdown.trigger();
        pool.join().await;
        let mut lat = probe
            .starts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        lat.sort_unstable();
        let (p50, p99) = (percentile(&lat, 0.5), percentile(&lat, 0.99));

        drop((q, dyn_q));
        opened.close().await;
        Ok(json!({
            "scenario": "jobs", "backend": at.backend(), "jobs": opts.jobs,
            "enqueue_per_sec": enqueue_per_sec, "processed_per_sec": processed_per_sec,
            "end_to_end_per_sec": end_to_end_per_sec, "slow_1ms_per_sec": slow_per_sec,
            "pickup_p50_us": p50, "pickup_p99_us": p99,
        }))
    }
}
