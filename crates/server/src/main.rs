//! The `ficus` command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_server::app::{self, ServerConfig, StoreConfig, SECRET_ENV};
use ficus_server::{bench, demo};
use ficus_store::postgres::PgConfig;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, EventStore};

#[derive(Parser)]
#[command(
    name = "ficus",
    version,
    about = "Event sourcing, worker pools and a strangler-fig gateway in one binary"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Json, env = "FICUS_LOG_FORMAT")]
    log_format: LogFormat,
    /// OTLP/HTTP endpoint to export OpenTelemetry spans to (e.g. http://127.0.0.1:4318);
    /// unset, no spans leave the process.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

// Parsed once at start-up: the size of the largest variant (`serve`'s many flags) costs
// nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (embedded SQLite by default, or a shared PostgreSQL).
    Serve {
        /// Where events and jobs live: `sqlite` (the embedded file in --data-dir) or a
        /// `postgres://user@host:port/db` URL shared by several ficus processes.
        #[arg(long, env = "FICUS_STORE", default_value = "sqlite")]
        store: String,
        /// The PostgreSQL schema holding Ficus's tables.
        #[arg(long, env = "FICUS_PG_SCHEMA", default_value = "ficus")]
        pg_schema: String,
        /// What this process runs: `all`, or a comma-separated list of `command` (command,
        /// stream, bulk-job and queue endpoints), `query` (query endpoints on the read
        /// models), `projector` (the projection runners, one active per projection across
        /// processes), `worker` (the job worker pool); `api` means `command,query`. Every
        /// process serves health, readiness, metrics and the projections. PostgreSQL only,
        /// except `all`.
        #[arg(long, env = "FICUS_ROLE", default_value = "all")]
        role: String,
        /// A `nats://` URL: publish committed events to NATS JetStream through the outbox and
        /// learn other processes' commits from it (PostgreSQL only).
        #[arg(long, env = "FICUS_BUS")]
        bus: Option<String>,
        /// PostgreSQL connections this process keeps open.
        #[arg(long, env = "FICUS_PG_POOL_SIZE", default_value_t = 16)]
        pg_pool_size: usize,
        /// PostgreSQL: how long one statement may go unanswered before the request fails with
        /// 503 and the connection is replaced (a network partition answers nothing).
        #[arg(long, env = "FICUS_PG_STATEMENT_TIMEOUT_MS", default_value_t = 10_000)]
        pg_statement_timeout_ms: u64,
        /// PostgreSQL: how long to wait for a new connection or a free pooled one.
        #[arg(long, env = "FICUS_PG_CONNECT_TIMEOUT_MS", default_value_t = 5_000)]
        pg_connect_timeout_ms: u64,
        /// Where the event log and read models live.
        #[arg(long, env = "FICUS_DATA_DIR", default_value = "ficus-data")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "FICUS_LISTEN", default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Largest request body, in bytes.
        #[arg(long, env = "FICUS_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
        max_body_bytes: usize,
        /// Longest a query waits for `min_position`, in milliseconds.
        #[arg(
            long,
            env = "FICUS_READ_YOUR_WRITES_TIMEOUT_MS",
            default_value_t = 5000
        )]
        read_your_writes_timeout_ms: u64,
        /// `/health/ready` answers 503 while a projection is more than this many events
        /// behind the log (0: no bound).
        #[arg(
            long,
            env = "FICUS_READY_MAX_LAG_EVENTS",
            default_value_t = ficus_gateway::READY_DEFAULT_MAX_LAG_EVENTS
        )]
        ready_max_lag_events: u64,
        /// `/health/ready` answers 503 while a projection is behind and its last event took
        /// longer than this to apply, in milliseconds (0: no bound).
        #[arg(
            long,
            env = "FICUS_READY_MAX_LAG_MS",
            default_value_t = ficus_gateway::READY_DEFAULT_MAX_LAG_MS
        )]
        ready_max_lag_ms: u64,
        /// Embedded store: page cache of the event log's writer connection, in KiB (its
        /// share of memory grows with the log up to this).
        #[arg(
            long,
            env = "FICUS_SQLITE_WRITER_CACHE_KIB",
            default_value_t = SqliteConfig::default().writer_cache_kib
        )]
        sqlite_writer_cache_kib: i64,
        /// Embedded store: bound on the memory all SQLite connections of the process hold
        /// together (page caches of the log, read models and snapshots), in MiB; past it
        /// SQLite recycles cached pages instead of growing.
        #[arg(
            long,
            env = "FICUS_SQLITE_MEMORY_LIMIT_MIB",
            default_value_t = ficus_store::sqlite::DEFAULT_SQLITE_MEMORY_LIMIT_MIB
        )]
        sqlite_memory_limit_mib: u64,
        /// Embedded store: streams whose last version the writer keeps in memory (the cache
        /// is emptied when it passes this and refilled from the log as streams are appended).
        #[arg(
            long,
            env = "FICUS_SQLITE_VERSION_CACHE_STREAMS",
            default_value_t = SqliteConfig::default().version_cache_streams
        )]
        sqlite_version_cache_streams: usize,
        /// Cache query answers in this process, invalidated as the read models apply events.
        #[arg(long, env = "FICUS_READ_CACHE")]
        read_cache: bool,
        /// Most answers the read cache holds; the least recently used goes first.
        #[arg(
            long,
            env = "FICUS_READ_CACHE_MAX_ENTRIES",
            default_value_t = ficus_runtime::read_cache::READ_CACHE_DEFAULT_MAX_ENTRIES
        )]
        read_cache_max_entries: usize,
        /// How long an `Idempotency-Key` answers repeats, in seconds; then it is purged.
        #[arg(long, env = "FICUS_IDEMPOTENCY_RETENTION_SECS", default_value_t = 48 * 3600)]
        idempotency_retention_secs: u64,
        /// How long a keyed command holds its key before a retry may take it over (the holder
        /// is presumed dead), in milliseconds.
        #[arg(long, env = "FICUS_IDEMPOTENCY_LEASE_MS", default_value_t = 30_000)]
        idempotency_lease_ms: u64,
        /// Lease length of a job item; a worker that dies is replaced after this long.
        #[arg(long, env = "FICUS_JOB_VISIBILITY_MS", default_value_t = 30_000)]
        job_visibility_ms: u64,
        /// Also run the strangler-fig gateway in this process, with this route file.
        #[arg(long)]
        gateway_routes: Option<PathBuf>,
        /// Where the embedded gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        gateway_listen: SocketAddr,
        /// Job items of the shop queue running at once: the pool's smallest size.
        #[arg(long, env = "FICUS_JOB_CONCURRENCY", default_value_t = 8)]
        job_concurrency: usize,
        /// The most job items running at once; the pool grows toward it under a backlog.
        #[arg(long, env = "FICUS_JOB_MAX_CONCURRENCY", default_value_t = 64)]
        job_max_concurrency: usize,
        /// Longest a client may take to send request headers, in milliseconds.
        #[arg(long, env = "FICUS_HEADER_READ_TIMEOUT_MS", default_value_t = 30_000)]
        header_read_timeout_ms: u64,
        /// The payment service of order fulfilment (`http://host:port`): placing an order
        /// then makes it `pending` and starts its fulfilment saga.
        #[arg(long, env = "FICUS_PAYMENTS_URL")]
        payments: Option<String>,
        // Boxed: the largest part of `serve`'s flags, kept off the enum's inline size.
        #[command(flatten)]
        blobs: Box<ficus_server::blobs::BlobArgs>,
        /// Drills and tests only: open the embedded store through the fault-injecting VFS and
        /// route the admin-only `/v1/admin/storage-fault` (docs/adr/0014).
        #[arg(long, env = "FICUS_FAULT_INJECTION", hide = true)]
        fault_injection: bool,
        /// Serve the admin-only routes (raw streams, projections, queues and their dead
        /// letters, subject keys, /v1/admin/*, the console) only on this address; the main
        /// address then answers them 404. Health, readiness and metrics stay on both.
        #[arg(long, env = "FICUS_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
    },
    /// Create or upgrade the PostgreSQL schema, then exit (`serve` also does it on start).
    Migrate {
        /// The `postgres://` URL.
        #[arg(long, env = "FICUS_STORE")]
        store: String,
        #[arg(long, env = "FICUS_PG_SCHEMA", default_value = "ficus")]
        pg_schema: String,
    },
    /// Start a server, seed the reference domain, drive traffic and show what to look at.
    Demo {
        /// Data directory (default: a fresh temporary one, removed afterwards).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 15)]
        duration_secs: u64,
        /// Concurrent simulated clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Stop after the traffic instead of serving until Ctrl-C.
        #[arg(long)]
        exit_after_traffic: bool,
    },
    /// Benchmarks that print their figures.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
    /// Mint a bearer token signed with the server's secret.
    Token {
        #[arg(long)]
        sub: String,
        /// Comma-separated roles: seller, customer, admin.
        #[arg(long, value_delimiter = ',', default_value = "customer")]
        roles: Vec<String>,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: i64,
        #[arg(long, env = "FICUS_DATA_DIR", default_value = "ficus-data")]
        data_dir: PathBuf,
    },
    /// Run the strangler-fig gateway: a reverse proxy with routes from a TOML file.
    Gateway {
        /// The route table; reloaded when it changes.
        #[arg(long, env = "FICUS_GATEWAY_ROUTES", default_value = "routes.toml")]
        routes: PathBuf,
        #[arg(long, env = "FICUS_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Serve the façade's admin API (/v1/admin/*) and the console only on this address;
        /// the proxying address then answers them 404. /health/live stays on both.
        #[arg(long, env = "FICUS_GATEWAY_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Where the token secret lives when FICUS_AUTH_HS256_SECRET is not set.
        #[arg(long, env = "FICUS_DATA_DIR", default_value = "ficus-data")]
        data_dir: PathBuf,
    },
    /// Change a route of a running gateway.
    Routes {
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(subcommand)]
        which: RoutesCommand,
    },
    /// Bulk jobs on a running server.
    Jobs {
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(subcommand)]
        which: JobsCommand,
    },
    /// The dead-letter queue of a running server.
    Dlq {
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(subcommand)]
        which: DlqCommand,
    },
    /// The read models of a running server.
    Projections {
        #[command(flatten)]
        remote: RemoteArgs,
        #[command(subcommand)]
        which: ProjectionsCommand,
    },
    /// Import another system's data as domain events (resumable, idempotent).
    Import {
        #[command(subcommand)]
        source: ficus_server::import::ImportCommand,
    },
    /// Run the example legacy shop: the "monolith" of the strangler-fig walkthrough
    /// (docs/strangler-walkthrough.md), plain CRUD over its own SQLite file.
    LegacyShop {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// Its database file (created if missing).
        #[arg(long, default_value = "legacy-shop.db")]
        db: PathBuf,
    },
    /// Test hooks (not for users).
    #[command(hide = true)]
    Debug {
        #[command(subcommand)]
        which: DebugCommand,
    },
}

#[derive(clap::Args)]
struct RemoteArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "FICUS_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    url: String,
    /// A bearer token (see `ficus token`).
    #[arg(long, env = "FICUS_TOKEN", global = true, default_value = "")]
    token: String,
}

impl RemoteArgs {
    fn remote(self) -> ficus_server::client::Remote {
        ficus_server::client::Remote {
            url: self.url,
            token: self.token,
        }
    }
}

#[derive(Subcommand)]
enum RoutesCommand {
    /// List routes with their weights and counters.
    List,
    /// Change a route: e.g. `ficus routes set products --weight-new 10` (0 rolls back).
    Set {
        name: String,
        /// Percent of traffic on the new side.
        #[arg(long)]
        weight_new: Option<u8>,
        /// `header:NAME`, `cookie:NAME` or `user`.
        #[arg(long)]
        sticky: Option<String>,
        /// Shadow mode on or off: serve from legacy, send a copy to the new side, compare.
        #[arg(long, value_parser = ["on", "off"])]
        shadow: Option<String>,
        /// JSON fields the shadow comparison ignores, comma-separated (`updated_at,order.id`);
        /// an empty value clears them.
        #[arg(long)]
        shadow_ignore: Option<String>,
        /// Longest an upstream may take to answer, ms.
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Rollouts: plan, step, window metrics and decision history (of one route, or of all
    /// routes with a plan).
    Status { name: Option<String> },
    /// Start, pause, resume or abort a route's rollout plan.
    Rollout {
        #[arg(value_parser = ["start", "pause", "resume", "abort"])]
        action: String,
        name: String,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Submit a bulk job, e.g. `ficus jobs submit reprice_category '{"category":"books","percent":5}'`.
    Submit {
        kind: String,
        /// Parameters as a JSON object.
        #[arg(default_value = "{}")]
        params: String,
        /// Return at once instead of following the job with a progress bar.
        #[arg(long)]
        no_wait: bool,
    },
    /// Show a bulk job; `--wait` follows it with a progress bar.
    Status {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Replay the log into a read model from the start, with a progress bar until it is done.
    Rebuild {
        /// The projection (`catalog` or `orders`).
        name: String,
        /// Return once the rebuild has started.
        #[arg(long)]
        no_wait: bool,
        /// Longest to follow the replay, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead jobs with their last error.
    List {
        #[arg(default_value = "shop")]
        queue: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Move dead jobs back to the queue (all, or by --id / --kind).
    Redrive {
        #[arg(default_value = "shop")]
        queue: String,
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[arg(long)]
        kind: Option<String>,
    },
    /// Delete dead jobs (all, or by --id / --kind).
    Purge {
        #[arg(default_value = "shop")]
        queue: String,
        #[arg(long = "id")]
        ids: Vec<i64>,
        #[arg(long)]
        kind: Option<String>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Load time of one aggregate as its stream grows, with and without snapshots (SQLite).
    Snapshots {
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "100,1000,10000,100000,1000000"
        )]
        lengths: Vec<u64>,
        /// Loads measured per length (the median is printed).
        #[arg(long, default_value_t = 3)]
        loads: usize,
        /// Directory for the benchmark's databases (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
    /// Projection lag (append acknowledged → applied in the read model) at a steady rate.
    Lag {
        /// Events appended per second, in total.
        #[arg(long, default_value_t = 10_000.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        /// Concurrent writers sharing the rate.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Follow one event in this many into the read model.
        #[arg(long, default_value_t = 4)]
        sample_every: u64,
        /// Directory for the benchmark's databases (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the result as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
    },
    /// Whether appends and reads stay flat as the global log grows (10^4 … 10^7 events).
    LogSize {
        /// Log sizes measured, ascending; one store grows through them.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,100000,1000000,10000000"
        )]
        sizes: Vec<u64>,
        /// Appends, stream reads and page reads measured per size.
        #[arg(long, default_value_t = 400)]
        probes: usize,
        /// Directory for the benchmark's database (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Benchmark PostgreSQL instead of the embedded store: a `postgres://` URL (a fresh
        /// schema, dropped afterwards).
        #[arg(long)]
        store: Option<String>,
    },
    /// Durable single-event appends/s and ack latency at several writer counts.
    Append {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        writers: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Directory for the benchmark's databases (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the results as JSON here.
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Page size of the benchmark's event log files.
        #[arg(long, default_value_t = SqliteConfig::default().page_bytes)]
        page_bytes: u32,
        /// Benchmark PostgreSQL instead of the embedded store: a `postgres://` URL (each run
        /// uses a fresh schema, dropped afterwards).
        #[arg(long)]
        store: Option<String>,
        /// On PostgreSQL: group commits in flight at once.
        #[arg(long, default_value_t = PgConfig::new("").writers)]
        pg_writers: usize,
        /// On PostgreSQL: yields a writer makes to gather more appends into a batch.
        #[arg(long, default_value_t = PgConfig::new("").gather_yields)]
        pg_gather_yields: usize,
    },
    /// Durable jobs/s through enqueue → lease → complete, 1 ms jobs, and pickup latency.
    Jobs {
        #[arg(long, default_value_t = 200_000)]
        jobs: usize,
        #[arg(long, default_value_t = 20_000)]
        slow_jobs: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 500)]
        latency_samples: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json_out: Option<PathBuf>,
        /// Benchmark PostgreSQL instead of the embedded store: a `postgres://` URL (each run
        /// uses a fresh schema, dropped afterwards).
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Serve the same small JSON answer on every path: the upstream of gateway benchmarks.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:18081")]
        listen: SocketAddr,
    },
    /// A small payment service for order fulfilment: charges and refunds idempotent by key,
    /// failing a share of calls on purpose (`--fail-rate 0.5`).
    Payments {
        #[arg(long, default_value = "127.0.0.1:18090")]
        listen: SocketAddr,
        /// Share of charges answered 503 before any effect, 0..=1 (refunds never fail).
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
    },
    /// Append batches forever from many tasks, printing each acknowledged batch as a line.
    AppendLoop {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 16)]
        tasks: usize,
    },
}

/// Installs logging (and span export when an OTLP endpoint is set); keep the guard until
/// exit so buffered spans are flushed.
fn init_logs(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    default_level: &str,
) -> anyhow::Result<ficus_server::logs::LogGuard> {
    ficus_server::logs::init(&ficus_server::logs::LogConfig {
        json: matches!(format, LogFormat::Json),
        default_filter: default_level.to_owned(),
        otlp_endpoint: otlp_endpoint.map(str::to_owned),
    })
}

/// A benchmark's directory: the one given (kept afterwards), or a fresh temporary one (whose
/// removal is the caller's, as the `true` says).
fn bench_dir(dir: Option<PathBuf>) -> (PathBuf, bool) {
    match dir {
        Some(d) => (d, false),
        None => (temp_dir("ficus-bench"), true),
    }
}

/// Writes a benchmark's results as JSON to the `--json-out` file, when one is named.
fn write_json_out(json_out: Option<PathBuf>, value: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(p) = json_out {
        std::fs::write(&p, serde_json::to_string_pretty(value)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn temp_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::now_v7()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// mimalloc rather than the system allocator: per-request allocation is most of the user-space
/// time of the gateway and the API after the kernel's TCP path (docs/adr/0021).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Migrate { store, pg_schema } => {
            let _logs = init_logs(LogFormat::Text, None, "info")?;
            let StoreConfig::Postgres(pg) = StoreConfig::parse(&store)? else {
                anyhow::bail!("migrate needs a postgres:// URL in --store");
            };
            let pg = pg.with_schema(pg_schema);
            let pool = ficus_store::postgres::pool(&pg)?;
            let n = ficus_store::postgres::migrate(&pool, &pg.schema).await?;
            println!(
                "schema {}: {n} migration(s) applied, {} known",
                pg.schema,
                ficus_store::postgres::MIGRATIONS.len()
            );
        }
        Command::Serve {
            pg_statement_timeout_ms,
            pg_connect_timeout_ms,
            store,
            pg_schema,
            role,
            bus,
            pg_pool_size,
            data_dir,
            listen,
            max_body_bytes,
            read_your_writes_timeout_ms,
            ready_max_lag_events,
            ready_max_lag_ms,
            sqlite_writer_cache_kib,
            sqlite_memory_limit_mib,
            sqlite_version_cache_streams,
            read_cache,
            read_cache_max_entries,
            idempotency_retention_secs,
            idempotency_lease_ms,
            job_visibility_ms,
            job_concurrency,
            job_max_concurrency,
            gateway_routes,
            gateway_listen,
            header_read_timeout_ms,
            payments,
            blobs,
            fault_injection,
            admin_listen,
        } => {
            let _logs = init_logs(cli.log_format, cli.otlp_endpoint.as_deref(), "info")?;
            let mut cfg = ServerConfig::new(data_dir, listen);
            cfg.store = match StoreConfig::parse(&store)? {
                StoreConfig::Postgres(pg) => StoreConfig::Postgres(PgConfig {
                    pool_size: pg_pool_size.max(2),
                    ..pg.with_schema(pg_schema)
                }),
                StoreConfig::Embedded(sqlite) => {
                    let mib = sqlite_memory_limit_mib
                        .max(ficus_store::sqlite::MIN_SQLITE_MEMORY_LIMIT_MIB);
                    ficus_store::sqlite::set_memory_limit(mib << 20);
                    StoreConfig::Embedded(SqliteConfig {
                        writer_cache_kib: sqlite_writer_cache_kib.max(256),
                        version_cache_streams: sqlite_version_cache_streams.max(1),
                        ..sqlite
                    })
                }
            };
            if fault_injection {
                match &mut cfg.store {
                    StoreConfig::Embedded(sqlite) => {
                        sqlite.faults = Some(ficus_store::sqlite::FaultPlan::new());
                        tracing::warn!("storage-fault injection is on: for drills and tests only");
                    }
                    StoreConfig::Postgres(_) => {
                        anyhow::bail!("--fault-injection is for the embedded SQLite store only")
                    }
                }
            }
            cfg.role = app::Role::parse(&role)?;
            cfg.admin_listen = admin_listen;
            cfg.bus = bus.filter(|b| !b.is_empty());
            cfg.auth_secret = std::env::var(SECRET_ENV).ok();
            cfg.api.max_body_bytes = max_body_bytes;
            cfg.api.read_your_writes_timeout = Duration::from_millis(read_your_writes_timeout_ms);
            cfg.api.ready_lag = ficus_gateway::ReadyLagBound {
                max_events: Some(ready_max_lag_events).filter(|n| *n > 0),
                max_ms: Some(ready_max_lag_ms).filter(|n| *n > 0),
            };
            cfg.api.read_cache.enabled = read_cache;
            cfg.api.read_cache.max_entries = read_cache_max_entries.max(1);
            cfg.api.idempotency.retention = Duration::from_secs(idempotency_retention_secs.max(1));
            cfg.api.idempotency.lease = Duration::from_millis(idempotency_lease_ms.max(100));
            cfg.shop_pool.visibility = Duration::from_millis(job_visibility_ms.max(100));
            cfg.shop_pool.concurrency = job_concurrency.max(1);
            cfg.shop_pool.max_concurrency = job_max_concurrency.max(cfg.shop_pool.concurrency);
            cfg.gateway = gateway_routes.map(|r| (r, gateway_listen));
            cfg.header_read_timeout = Duration::from_millis(header_read_timeout_ms.max(100));
            if let StoreConfig::Postgres(pg) = &mut cfg.store {
                pg.statement_timeout = Duration::from_millis(pg_statement_timeout_ms.max(1));
                pg.connect_timeout = Duration::from_millis(pg_connect_timeout_ms.max(1));
            }
            cfg.payments_url = payments.filter(|p| !p.is_empty());
            cfg.saga_pool.visibility = cfg.shop_pool.visibility;
            cfg.blobs = blobs.config()?;
            let running = app::start(cfg).await?;
            shutdown_signal().await;
            tracing::info!("shutdown requested: finishing in-flight requests");
            running.stop().await?;
        }
        Command::Demo {
            data_dir,
            listen,
            duration_secs,
            clients,
            exit_after_traffic,
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = match data_dir {
                Some(d) => (d, false),
                None => (temp_dir("ficus-demo"), true),
            };
            let mut cfg = ServerConfig::new(&dir, listen);
            cfg.auth_secret = Some(
                std::env::var(SECRET_ENV)
                    .unwrap_or_else(|_| format!("demo-{:032x}", rand::random::<u128>())),
            );
            let r = demo::run(demo::DemoOptions {
                config: cfg,
                duration: Duration::from_secs(duration_secs),
                clients: clients.max(1),
                exit_after_traffic,
            })
            .await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            r?;
        }
        Command::Bench {
            which:
                BenchCommand::Snapshots {
                    lengths,
                    loads,
                    dir,
                    json_out,
                },
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = bench_dir(dir);
            let out = bench::snapshots::run(&dir, &lengths, loads).await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let out = out?;
            write_json_out(json_out, &out)?;
        }
        Command::Bench {
            which:
                BenchCommand::Jobs {
                    jobs,
                    slow_jobs,
                    concurrency,
                    latency_samples,
                    runs,
                    dir,
                    json_out,
                    store,
                },
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = bench_dir(dir);
            let at = match store {
                Some(url) => bench::BenchStore::Postgres {
                    url,
                    writers: PgConfig::new("").writers,
                    gather_yields: PgConfig::new("").gather_yields,
                },
                None => bench::BenchStore::Sqlite {
                    dir: dir.clone(),
                    config: SqliteConfig::default(),
                },
            };
            let opts = bench::jobs::JobsBench {
                jobs,
                slow_jobs,
                concurrency: concurrency.max(1),
                latency_samples,
            };
            let out = bench::jobs::run(&at, &opts, runs).await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let out = out?;
            write_json_out(json_out, &out)?;
        }
        Command::Bench {
            which:
                BenchCommand::Append {
                    writers,
                    duration_secs,
                    runs,
                    dir,
                    json_out,
                    page_bytes,
                    store,
                    pg_writers,
                    pg_gather_yields,
                },
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = bench_dir(dir);
            let at = match store {
                Some(url) => bench::BenchStore::Postgres {
                    url,
                    writers: pg_writers.max(1),
                    gather_yields: pg_gather_yields,
                },
                None => bench::BenchStore::Sqlite {
                    dir: dir.clone(),
                    config: SqliteConfig {
                        page_bytes,
                        ..SqliteConfig::default()
                    },
                },
            };
            let out =
                bench::append_bench(&at, &writers, Duration::from_secs(duration_secs), runs).await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let out = out?;
            write_json_out(json_out, &out)?;
        }
        Command::Bench {
            which:
                BenchCommand::Lag {
                    rate,
                    duration_secs,
                    writers,
                    sample_every,
                    dir,
                    json_out,
                },
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = match dir {
                Some(d) => (d.join(format!("lag-{}", uuid::Uuid::now_v7())), true),
                None => (temp_dir("ficus-bench"), true),
            };
            let out = bench::lag::run(&dir, rate, duration_secs, writers, sample_every).await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let r = out?;
            println!(
                "projection lag on sqlite (catalog read model): target {:.0} events/s, achieved {:.0} \
                 ({} events in {:.1} s, {} writers); lag p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
                 over {} samples; append p50 {} µs, p99 {} µs",
                r.target_events_per_sec,
                r.events_per_sec,
                r.events,
                r.seconds,
                r.writers,
                r.lag_p50_ms,
                r.lag_p99_ms,
                r.lag_max_ms,
                r.samples,
                r.append_p50_us,
                r.append_p99_us
            );
            write_json_out(json_out, &r)?;
        }
        Command::Bench {
            which:
                BenchCommand::LogSize {
                    sizes,
                    probes,
                    dir,
                    json_out,
                    store,
                },
        } => {
            let _logs = init_logs(LogFormat::Text, None, "warn")?;
            let (dir, remove) = bench_dir(dir);
            let at = match store {
                Some(url) => bench::BenchStore::Postgres {
                    url,
                    writers: PgConfig::new("").writers,
                    gather_yields: PgConfig::new("").gather_yields,
                },
                None => bench::BenchStore::Sqlite {
                    dir: dir.clone(),
                    config: SqliteConfig::default(),
                },
            };
            std::fs::create_dir_all(&dir)?;
            let out = bench::log_size::run(&at, &sizes, probes).await;
            if remove {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let out = out?;
            write_json_out(json_out, &out)?;
        }
        Command::Token {
            sub,
            roles,
            ttl_secs,
            data_dir,
        } => {
            let secret = app::resolve_secret(&data_dir, std::env::var(SECRET_ENV).ok().as_deref())?;
            let auth = ficus_gateway::Auth::new(secret);
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            println!("{}", app::mint(&auth, &sub, &roles, ttl_secs));
        }
        Command::Gateway {
            routes,
            listen,
            admin_listen,
            data_dir,
        } => {
            let _logs = init_logs(cli.log_format, cli.otlp_endpoint.as_deref(), "info")?;
            let secret = app::resolve_secret(&data_dir, std::env::var(SECRET_ENV).ok().as_deref())?;
            let auth = std::sync::Arc::new(ficus_gateway::Auth::new(secret));
            let running =
                ficus_server::gateway::start_with(routes, listen, admin_listen, auth).await?;
            shutdown_signal().await;
            running.stop().await?;
        }
        Command::Routes { remote, which } => {
            let remote = remote.remote();
            match which {
                RoutesCommand::List => remote.routes_list().await?,
                RoutesCommand::Set {
                    name,
                    weight_new,
                    sticky,
                    shadow,
                    shadow_ignore,
                    timeout_ms,
                } => {
                    let change = ficus_server::client::RouteChange {
                        weight_new,
                        sticky,
                        shadow: shadow.map(|s| s == "on"),
                        shadow_ignore: shadow_ignore.map(|s| {
                            s.split(',')
                                .map(str::trim)
                                .filter(|f| !f.is_empty())
                                .map(str::to_owned)
                                .collect()
                        }),
                        timeout_ms,
                    };
                    remote.route_set(&name, change).await?
                }
                RoutesCommand::Status { name } => remote.routes_status(name.as_deref()).await?,
                RoutesCommand::Rollout { action, name } => {
                    remote.rollout_action(&name, &action).await?
                }
            }
        }
        Command::Jobs { remote, which } => {
            let remote = remote.remote();
            match which {
                JobsCommand::Submit {
                    kind,
                    params,
                    no_wait,
                } => {
                    let params: serde_json::Value =
                        serde_json::from_str(&params).context("params must be a JSON object")?;
                    remote.submit_job(&kind, params, !no_wait).await?;
                }
                JobsCommand::Status { id, wait } => remote.job_status(&id, wait).await?,
            }
        }
        Command::Dlq { remote, which } => {
            let remote = remote.remote();
            match which {
                DlqCommand::List { queue, limit } => remote.dlq_list(&queue, limit).await?,
                DlqCommand::Redrive { queue, ids, kind } => {
                    remote.dlq_redrive(&queue, &ids, kind.as_deref()).await?
                }
                DlqCommand::Purge { queue, ids, kind } => {
                    remote.dlq_purge(&queue, &ids, kind.as_deref()).await?
                }
            }
        }
        Command::Projections { remote, which } => match which {
            ProjectionsCommand::Rebuild {
                name,
                no_wait,
                timeout_secs,
            } => {
                remote
                    .remote()
                    .projection_rebuild(&name, !no_wait, Duration::from_secs(timeout_secs))
                    .await?
            }
        },
        Command::Import { source } => {
            let _logs = init_logs(cli.log_format, cli.otlp_endpoint.as_deref(), "warn")?;
            let summary = ficus_server::import::run(source.config()?).await?;
            for r in &summary.refusals {
                println!("refused {r}");
            }
            for d in &summary.drift {
                println!("not applied (no Ficus command changes it) {d}");
            }
            println!("{}", summary.line());
        }
        Command::LegacyShop { listen, db } => {
            let _logs = init_logs(cli.log_format, cli.otlp_endpoint.as_deref(), "info")?;
            let shop = ficus_server::legacy::start(&db, listen).await?;
            eprintln!("legacy shop serving on {}", shop.url());
            shutdown_signal().await;
            shop.stop().await?;
        }
        Command::Debug { which } => match which {
            DebugCommand::AppendLoop { data_dir, tasks } => append_loop(data_dir, tasks).await?,
            DebugCommand::Payments { listen, fail_rate } => {
                if !(0.0..=1.0).contains(&fail_rate) {
                    anyhow::bail!("--fail-rate must be within 0..=1");
                }
                let app = ficus_gateway::payments::service(
                    ficus_gateway::payments::PaymentService::new(fail_rate),
                );
                let listener = tokio::net::TcpListener::bind(listen).await?;
                eprintln!("payment service on http://{}", listener.local_addr()?);
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown_signal())
                    .await?;
            }
            DebugCommand::Upstream { listen } => {
                const BODY: &str = r#"{"id":"p-1","name":"Espresso grinder","category":"kitchen","price":189.00,"currency":"EUR","in_stock":true}"#;
                let app = axum::Router::new().fallback(|| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        BODY,
                    )
                });
                let listener = tokio::net::TcpListener::bind(listen).await?;
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown_signal())
                    .await?;
            }
        },
    }
    Ok(())
}

/// For the kill -9 test: appends batches of 1–5 events from many tasks and prints one line
/// per acknowledged batch: `ACK <first_position> <last_position> <batch id>`. Each event's
/// payload names its batch, its index and the batch size, so a reader of the log can tell a
/// whole batch from a torn one.
async fn append_loop(data_dir: PathBuf, tasks: usize) -> anyhow::Result<()> {
    let store = Arc::new(SqliteEventStore::open(
        data_dir.join("events.db"),
        SqliteConfig::default(),
    )?);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    println!("READY");
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (store, out) = (store.clone(), out.clone());
        handles.push(tokio::spawn(async move {
            let ty = EventType::new("Appended").expect("valid type");
            let mut i: u64 = 0;
            loop {
                i += 1;
                let n = 1 + (i as usize * 7 + t) % 5;
                let batch = uuid::Uuid::now_v7();
                let stream =
                    StreamId::new(format!("kill-{}", (i as usize + t) % 8)).expect("valid");
                let events = (0..n)
                    .map(|k| {
                        new_event(
                            ty.clone(),
                            serde_json::json!({"batch": batch, "k": k, "n": n}),
                        )
                    })
                    .collect();
                let r = store.append(&stream, ExpectedVersion::Any, events).await?;
                let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                writeln!(o, "ACK {} {} {batch}", r.first_position, r.last_position)?;
                o.flush()?;
            }
            #[allow(unreachable_code)]
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(())
}
