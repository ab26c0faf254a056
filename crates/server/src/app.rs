//! Wiring: open the embedded store, start the projections, serve the HTTP API, and shut it
//! all down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ficus_domain::jobs::{BulkJobs, ShopJobHandler, SHOP_QUEUE};
use ficus_domain::pg_read_models::{PgCatalogProjection, PgOrdersProjection};
use ficus_domain::read_models::{CatalogProjection, OrdersProjection};
use ficus_domain::read_side::ShopReadSide;
use ficus_domain::service::Shop;
use ficus_gateway::admin_listener::Listener;
use ficus_gateway::{ApiConfig, AppState, Auth};
use ficus_runtime::{
    PgProjection, PgProjectionHandle, PgProjectionRunner, PoolConfig, ProjectionRunner, Repository,
    Shutdown, WorkerPool,
};
use ficus_store::nats::{BusConfig, BusSubscriber, NatsBus};
use ficus_store::postgres::{
    announce_from_bus, OutboxRelay, PgConfig, PgEventStore, PgJobQueue, RelayConfig,
};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{EventStore, JobQueue};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Environment variable holding the HS256 secret that signs bearer tokens.
pub const SECRET_ENV: &str = "FICUS_AUTH_HS256_SECRET";

/// Longest a client may take to send a request's headers; a slower one (slowloris) has its
/// connection closed, so it cannot hold a connection and its task open for free. hyper also
/// runs this clock while a keep-alive connection waits for its next request, so it is the
/// idle keep-alive limit too: 30 s, hyper's own default once a timer is given.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything `ficus serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// HS256 secret; when `None`, one is created once and kept in `<data_dir>/auth.secret`.
    pub auth_secret: Option<String>,
    pub api: ApiConfig,
    /// Where events and jobs live: the embedded SQLite file or a shared PostgreSQL.
    pub store: StoreConfig,
    /// The worker pool running the shop's bulk jobs.
    pub shop_pool: PoolConfig,
    /// What this process runs.
    pub role: Role,
    /// A NATS URL: publish committed events to JetStream through the outbox and learn other
    /// processes' commits from it. PostgreSQL only.
    pub bus: Option<String>,
    /// Also run the strangler-fig gateway in this process: its route file and address.
    pub gateway: Option<(PathBuf, SocketAddr)>,
    /// Longest a client may take to send request headers ([`HEADER_READ_TIMEOUT`]).
    pub header_read_timeout: std::time::Duration,
    /// The payment service (`http://host:port`) of order fulfilment. When set, placing an
    /// order makes it `pending` and starts its fulfilment saga.
    pub payments_url: Option<String>,
    /// The worker pool driving sagas (its visibility is how soon a saga whose process died
    /// resumes elsewhere or after a restart).
    pub saga_pool: PoolConfig,
    /// Serve the admin-only routes on this address only (the public address answers them
    /// 404); health, readiness and metrics stay on both (`admin_listener.rs` in the gateway).
    pub admin_listen: Option<SocketAddr>,
    /// The blob store of the claim check (large job parameters and results).
    pub blobs: crate::blobs::BlobsConfig,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            auth_secret: None,
            api: ApiConfig::default(),
            store: StoreConfig::Embedded(SqliteConfig::default()),
            shop_pool: PoolConfig {
                concurrency: 8,
                max_concurrency: 64,
                ..PoolConfig::new(SHOP_QUEUE)
            },
            gateway: None,
            role: Role::ALL,
            bus: None,
            header_read_timeout: HEADER_READ_TIMEOUT,
            payments_url: None,
            saga_pool: PoolConfig {
                concurrency: 8,
                max_concurrency: 8,
                visibility: std::time::Duration::from_secs(10),
                ..PoolConfig::new(ficus_runtime::saga::SAGA_QUEUE)
            },
            admin_listen: None,
            blobs: Default::default(),
        }
    }
}

/// What one `ficus serve` process runs: any combination of the four parts below (`--role
/// worker,projector`). With PostgreSQL, run as many processes of each as needed, the point of
/// CQRS: command processes take writes, query processes answer reads from the PostgreSQL read
/// models, projector processes compete to apply events to those read models (one active per
/// projection, the others standby), worker processes compete for the job queue's items. On
/// the embedded SQLite store one process holds everything: only `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// The commands, raw streams, bulk job submission and job queue endpoints.
    pub command: bool,
    /// The query endpoints on the read models.
    pub query: bool,
    /// The projection runners (PostgreSQL: competing for each projection's lock).
    pub projector: bool,
    /// The job worker pool.
    pub worker: bool,
}

impl Role {
    /// Everything in one process (the only role on the embedded store).
    pub const ALL: Role = Role {
        command: true,
        query: true,
        projector: true,
        worker: true,
    };

    /// `all`, or a comma-separated list of `command`, `query`, `projector`, `worker` and
    /// `api` (an alias of `command,query`).
    pub fn parse(s: &str) -> anyhow::Result<Role> {
        let mut role = Role {
            command: false,
            query: false,
            projector: false,
            worker: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "all" => role = Role::ALL,
                "api" => (role.command, role.query) = (true, true),
                "command" => role.command = true,
                "query" => role.query = true,
                "projector" => role.projector = true,
                "worker" => role.worker = true,
                other => anyhow::bail!(
                    "--role takes all, or a comma-separated list of command, query, projector, \
                     worker and api (command + query); got {other:?}"
                ),
            }
        }
        anyhow::ensure!(
            role.command || role.query || role.projector || role.worker,
            "--role needs at least one of all, command, query, projector, worker"
        );
        Ok(role)
    }

    fn runs_workers(self) -> bool {
        self.worker
    }

    /// The public routes this role serves (every role serves the operations routes).
    fn api_routes(self) -> ficus_gateway::ApiRoutes {
        ficus_gateway::ApiRoutes {
            commands: self.command,
            queries: self.query,
        }
    }
}

/// Longest a starting process waits for its PostgreSQL projection runners' first takeover
/// attempt (or its followers' first checkpoint read) before it serves anyway.
pub const PG_PROJECTION_START_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections of the pool the PostgreSQL read models use: one session per active projection
/// runner (two) and the rest for queries, apart from the event store's pool so that reads
/// never starve appends.
pub const PG_READ_MODEL_POOL_SIZE: usize = 8;

/// The backend of the event log and the job queue.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `<data_dir>/events.db`: one process, no services needed.
    Embedded(SqliteConfig),
    /// A PostgreSQL database shared by any number of `ficus` processes.
    Postgres(PgConfig),
}

impl StoreConfig {
    /// `postgres://...` (or `postgresql://...`) selects PostgreSQL; `sqlite` or an empty
    /// value the embedded store.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        let s = s.trim();
        if s.is_empty() || s == "sqlite" || s == "embedded" {
            Ok(StoreConfig::Embedded(SqliteConfig::default()))
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Ok(StoreConfig::Postgres(PgConfig::new(s)))
        } else {
            anyhow::bail!("--store takes `sqlite` or a postgres:// URL, got {s:?}")
        }
    }
}

/// Starts the shop's read side. Embedded: the SQLite projection runners. PostgreSQL: the
/// projection runners competing with other processes' (projector role), or followers that
/// only track the checkpoints other processes commit (any other role: queries, bulk-job
/// planning and export items still read the PostgreSQL read models).
async fn start_read_side(
    cfg: &ServerConfig,
    store: &OpenStore,
    dyn_store: &Arc<dyn EventStore>,
    shutdown: &Shutdown,
) -> anyhow::Result<(ShopReadSide, Vec<JoinHandle<()>>)> {
    match store {
        OpenStore::Sqlite(_) => {
            let read_dir = cfg.data_dir.join("read-models");
            let runner_config = rebuild_crash_hook();
            let (catalog, catalog_task) = ProjectionRunner::spawn_with(
                Arc::new(CatalogProjection),
                &read_dir,
                dyn_store.clone(),
                shutdown.clone(),
                runner_config.clone(),
            )?;
            let (orders, orders_task) = ProjectionRunner::spawn_with(
                Arc::new(OrdersProjection),
                &read_dir,
                dyn_store.clone(),
                shutdown.clone(),
                runner_config,
            )?;
            Ok((
                ShopReadSide::Sqlite { catalog, orders },
                vec![catalog_task, orders_task],
            ))
        }
        OpenStore::Postgres(pg) => {
            let pool = ficus_store::postgres::pool(&PgConfig {
                pool_size: PG_READ_MODEL_POOL_SIZE,
                ..pg.config().clone()
            })
            .context("creating the read-model pool")?;
            let start = |p: Arc<dyn PgProjection>| {
                if cfg.role.projector {
                    PgProjectionRunner::spawn(p, pool.clone(), dyn_store.clone(), shutdown.clone())
                } else {
                    let name = p.name().to_owned();
                    PgProjectionHandle::follow(
                        &name,
                        pool.clone(),
                        dyn_store.clone(),
                        shutdown.clone(),
                    )
                }
            };
            let (catalog, catalog_task) = start(Arc::new(PgCatalogProjection));
            let (orders, orders_task) = start(Arc::new(PgOrdersProjection));
            let read_timeout = pg.config().transaction_timeout();
            let catalog = catalog.with_read_timeout(read_timeout);
            let orders = orders.with_read_timeout(read_timeout);
            for h in [&catalog, &orders] {
                if !h.started(PG_PROJECTION_START_WAIT).await {
                    tracing::warn!(
                        projection = h.name(),
                        "projection not started within {PG_PROJECTION_START_WAIT:?}; serving anyway"
                    );
                }
            }
            Ok((
                ShopReadSide::Postgres { catalog, orders },
                vec![catalog_task, orders_task],
            ))
        }
    }
}

/// The opened backend, kept to shut it down in order.
enum OpenStore {
    Sqlite(Arc<SqliteEventStore>),
    Postgres(Arc<PgEventStore>),
}

impl OpenStore {
    async fn shutdown(&self) {
        match self {
            OpenStore::Sqlite(s) => s.shutdown().await,
            OpenStore::Postgres(s) => s.shutdown().await,
        }
    }
}

/// The secret from the config, or the one kept in the data directory (created on first use).
pub fn resolve_secret(data_dir: &Path, configured: Option<&str>) -> anyhow::Result<String> {
    if let Some(s) = configured.filter(|s| !s.is_empty()) {
        return Ok(s.to_owned());
    }
    let path = data_dir.join("auth.secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        if !s.trim().is_empty() {
            return Ok(s.trim().to_owned());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let secret: String = (0..32)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect();
    std::fs::write(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    tracing::warn!(path = %path.display(), "no {SECRET_ENV} set: using a generated secret kept in the data directory");
    Ok(secret)
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    pub shutdown: Shutdown,
    store: OpenStore,
    server: JoinHandle<std::io::Result<()>>,
    projections: Vec<JoinHandle<()>>,
    pool: Option<WorkerPool>,
    /// The pool driving sagas, when fulfilment is configured.
    saga_pool: Option<WorkerPool>,
    /// The bus subscription, when a bus is configured (the relay lives in the state).
    bus: Option<BusSubscriber>,
    /// The embedded gateway, when configured.
    pub gateway: Option<crate::gateway::RunningGateway>,
    /// The admin listener's address and server, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    admin_server: Option<JoinHandle<std::io::Result<()>>>,
}

/// Opens the data directory and starts serving.
pub async fn start(cfg: ServerConfig) -> anyhow::Result<Running> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let secret = resolve_secret(&cfg.data_dir, cfg.auth_secret.as_deref())?;
    let mut bus_parts = None;
    let (store, dyn_store, jobs, ready, backend) = match &cfg.store {
        StoreConfig::Embedded(sqlite) => {
            anyhow::ensure!(
                cfg.bus.is_none(),
                "a bus joins several processes on PostgreSQL: use --store postgres://... with --bus"
            );
            anyhow::ensure!(
                cfg.role == Role::ALL,
                "on the embedded SQLite store one process runs everything: use --role all \
                 (the command, query, projector and worker roles need --store postgres://...)"
            );
            let store = Arc::new(
                SqliteEventStore::open(cfg.data_dir.join("events.db"), sqlite.clone())
                    .context("opening the event store")?,
            );
            let jobs = SqliteJobQueue::new(store.clone());
            let ready = jobs.ready_signal();
            let jobs: Arc<dyn JobQueue> = Arc::new(jobs);
            let dyn_store: Arc<dyn EventStore> = store.clone();
            (OpenStore::Sqlite(store), dyn_store, jobs, ready, "sqlite")
        }
        StoreConfig::Postgres(pg) => {
            let mut pg = pg.clone();
            if cfg.bus.is_some() {
                // The bus announces other processes' commits; the outbox feeds it.
                pg.outbox = true;
                pg.listen_notify = false;
            }
            let store = Arc::new(
                PgEventStore::open(pg.clone())
                    .await
                    .context("opening the PostgreSQL event store")?,
            );
            if let Some(url) = &cfg.bus {
                let bus = NatsBus::connect(BusConfig::new(url.clone(), &pg.schema))
                    .await
                    .context("connecting to the NATS bus")?;
                // A round is a handful of statements and a publish.
                let relay_config = RelayConfig {
                    round_timeout: pg.transaction_timeout(),
                    ..RelayConfig::default()
                };
                let relay = OutboxRelay::new(store.clone(), bus.clone(), relay_config).spawn();
                let announcer = announce_from_bus(&bus, &store)
                    .await
                    .context("subscribing to the NATS bus")?;
                bus_parts = Some((
                    ficus_gateway::BusState {
                        bus,
                        relay: Arc::new(relay),
                        store: store.clone(),
                    },
                    announcer,
                ));
            }
            let jobs = PgJobQueue::for_store(&store);
            let ready = jobs.ready_signal();
            let jobs: Arc<dyn JobQueue> = Arc::new(jobs);
            let dyn_store: Arc<dyn EventStore> = store.clone();
            (
                OpenStore::Postgres(store),
                dyn_store,
                jobs,
                ready,
                "postgres",
            )
        }
    };
    // Personal fields are sealed under their subject's key before every append (plain and
    // keyed) and opened on every read, as stored, before upcasting (docs/adr/0011).
    let subject_keys: Arc<dyn ficus_store::SubjectKeys> = match &store {
        OpenStore::Sqlite(_) => Arc::new(
            ficus_store::shredding::SqliteSubjectKeys::open(cfg.data_dir.join("subject-keys.db"))
                .context("opening the subject key file")?,
        ),
        OpenStore::Postgres(s) => Arc::new(ficus_store::shredding::PgSubjectKeys::for_store(s)),
    };
    let shredder = ficus_store::Shredder::new(ficus_domain::personal_fields(), subject_keys);
    let raw_idempotency: Arc<dyn ficus_store::IdempotencyStore> = match &store {
        OpenStore::Sqlite(s) => s.clone(),
        OpenStore::Postgres(s) => s.clone(),
    };
    let shredding =
        ficus_store::ShreddingStore::wrap(dyn_store, Some(raw_idempotency), shredder.clone());
    let dyn_store: Arc<dyn EventStore> = shredding.clone();
    // Every reader (aggregates, projections, HTTP stream reads, SSE) sees events of older
    // schema versions in their current shape (docs/adr/0009).
    let dyn_store = ficus_store::UpcastingStore::wrap(dyn_store, ficus_domain::upcasters());
    // Snapshots: a cache beside the log (a side file on SQLite, a table on PostgreSQL).
    let snapshots: Arc<dyn ficus_store::SnapshotStore> = match &store {
        OpenStore::Sqlite(_) => Arc::new(
            ficus_store::sqlite::SqliteSnapshotStore::open(cfg.data_dir.join("snapshots.db"))
                .context("opening the snapshot file")?,
        ),
        OpenStore::Postgres(s) => Arc::new(ficus_store::postgres::PgSnapshotStore::for_store(s)),
    };
    // Jobs enqueued while serving a request carry its correlation and trace ids.
    let traced = ficus_runtime::telemetry::TracedJobQueue::new(jobs);
    let job_counters = traced.counters();
    let jobs: Arc<dyn JobQueue> = Arc::new(traced);
    let shutdown = Shutdown::new();
    let (read, projections) = start_read_side(&cfg, &store, &dyn_store, &shutdown).await?;
    let shop = Shop::new(Repository::new(dyn_store.clone()).with_snapshots(snapshots));
    // The claim check: references in the event log's backend, blobs in the blob directory.
    let blob_refs: Arc<dyn ficus_store::blobs::BlobRefs> = match &store {
        OpenStore::Sqlite(s) => {
            Arc::new(ficus_store::blobs::SqliteBlobRefs::open(s.clone()).await?)
        }
        OpenStore::Postgres(s) => Arc::new(ficus_store::blobs::PgBlobRefs::for_store(s)),
    };
    let claims = cfg.blobs.open(&cfg.data_dir, blob_refs)?;
    // Items see their claim-checked payloads resolved.
    let handler = Arc::new(ficus_runtime::claim_check::ClaimCheckHandler {
        inner: Arc::new(ShopJobHandler {
            shop: shop.clone(),
            store: dyn_store.clone(),
            jobs: jobs.clone(),
            read: read.clone(),
            claims: claims.clone(),
        }),
        claims: claims.clone(),
    });
    if cfg.role.runs_workers() {
        // Ends with the shutdown signal; a pass cut short is redone by the next.
        ficus_runtime::claim_check::spawn_blob_gc(claims.clone(), jobs.clone(), shutdown.clone());
    }
    let pool = cfg.role.runs_workers().then(|| {
        WorkerPool::spawn(
            jobs.clone(),
            handler,
            cfg.shop_pool.clone(),
            Some(ready),
            shutdown.clone(),
        )
    });
    let embedded = match &store {
        OpenStore::Sqlite(s) => Some(s),
        OpenStore::Postgres(_) => None,
    };
    let (fulfilment, saga_pool) =
        start_fulfilment(&cfg, &shop, &dyn_store, embedded, &jobs, &shutdown)?;
    // Keys live in the event store's backend: a key's answer commits with the events (which
    // are sealed on the way, like every append).
    let idempotency: Arc<dyn ficus_store::IdempotencyStore> = shredding;
    // Ends with the shutdown signal; a sweep cut short by the store closing is redone later.
    ficus_runtime::idempotency::spawn_idempotency_purger(
        idempotency.clone(),
        cfg.api.idempotency.clone(),
        shutdown.clone(),
    );
    let state = AppState::new(ficus_gateway::AppParts {
        store: dyn_store.clone(),
        bulk: BulkJobs::new(jobs.clone(), read.clone()).with_claim_check(claims.clone()),
        jobs,
        shop,
        idempotency: idempotency.clone(),
        shredder,
        read,
        read_cache: cfg
            .api
            .read_cache
            .enabled
            .then(|| Arc::new(ficus_gateway::cache::ShopCache::new(&cfg.api.read_cache))),
        auth: Arc::new(Auth::new(secret)),
        sse_permits: Arc::new(Semaphore::new(cfg.api.max_sse_subscribers)),
        config: Arc::new(ApiConfig {
            // Only a process serving queries answers from read models, so only its readiness
            // depends on how far behind they are.
            ready_lag: if cfg.role.query {
                cfg.api.ready_lag
            } else {
                ficus_gateway::ReadyLagBound {
                    max_events: None,
                    max_ms: None,
                }
            },
            ..cfg.api.clone()
        }),
        shutdown: shutdown.clone(),
        http_metrics: Arc::new(ficus_gateway::metrics::HttpMetrics::with_job_counters(
            job_counters,
        )),
        sqlite: match &store {
            OpenStore::Sqlite(s) => Some(s.clone()),
            OpenStore::Postgres(_) => None,
        },
        backend,
        bus: bus_parts.as_ref().map(|(bus, _)| bus.clone()),
        fulfilment,
        claims,
    });
    // Append throughput and batch sizes for /metrics; ends with the shutdown signal.
    ficus_gateway::metrics::watch_appends(&state);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    // With an admin address the admin routes move there, off the public one.
    let (side, admin_addr, admin_server) = match cfg.admin_listen {
        Some(at) => {
            let admin = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("binding the admin address {at}"))?;
            let admin_addr = admin.local_addr()?;
            let app =
                ficus_gateway::router_on(state.clone(), cfg.role.api_routes(), Listener::Admin);
            let server = tokio::spawn(serve_http(
                admin,
                app,
                cfg.header_read_timeout,
                shutdown.clone(),
            ));
            tracing::info!(addr = %admin_addr, "admin routes are served on their own address");
            (Listener::Public, Some(admin_addr), Some(server))
        }
        None => (Listener::All, None, None),
    };
    let app = ficus_gateway::router_on(state.clone(), cfg.role.api_routes(), side);
    let server = tokio::spawn(serve_http(
        listener,
        app,
        cfg.header_read_timeout,
        shutdown.clone(),
    ));
    tracing::info!(%addr, backend, role = ?cfg.role, data_dir = %cfg.data_dir.display(), "ficus is serving");
    let gateway = match &cfg.gateway {
        Some((routes, listen)) => {
            Some(crate::gateway::start(routes.clone(), *listen, state.auth.clone()).await?)
        }
        None => None,
    };
    Ok(Running {
        addr,
        state,
        shutdown,
        store,
        server,
        admin_addr,
        admin_server,
        projections,
        pool,
        saga_pool,
        bus: bus_parts.map(|(_, announcer)| announcer),
        gateway,
    })
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Mints a token for `sub` with `roles`, valid for `ttl_secs`.
    pub fn token(&self, sub: &str, roles: &[&str], ttl_secs: i64) -> String {
        mint(&self.state.auth, sub, roles, ttl_secs)
    }

    /// Graceful stop: readiness goes false, the listener stops accepting, in-flight requests
    /// finish, projections stop at a committed checkpoint, and the writer flushes its last
    /// batch.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        if let Some(g) = self.gateway {
            g.stop().await?;
        }
        self.server.await??;
        if let Some(admin) = self.admin_server {
            admin.await??;
        }
        // Running jobs finish, unstarted ones are released, completions flushed.
        if let Some(pool) = self.pool {
            pool.join().await;
        }
        if let Some(pool) = self.saga_pool {
            pool.join().await;
        }
        for t in self.projections {
            let _ = t.await;
        }
        self.store.shutdown().await;
        // Outbox rows not yet relayed stay in the database for the next relay to publish.
        drop(self.bus);
        tracing::info!("ficus stopped");
        Ok(())
    }
}

/// A token signed by `auth` for `sub` with `roles`.
pub fn mint(auth: &Auth, sub: &str, roles: &[&str], ttl_secs: i64) -> String {
    auth.mint(&ficus_gateway::Claims {
        sub: sub.to_owned(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: Some(ficus_store::now_ms() / 1000 + ttl_secs),
        nbf: None,
    })
}

/// Serves `app` on `listener` until `shutdown`, then lets open connections finish. Written
/// over hyper rather than `axum::serve` for one reason: the header-read timeout, which
/// `axum::serve` cannot set (it gives hyper no timer). Each request carries the peer's
/// address as axum's `ConnectInfo` (the façade writes it into `X-Forwarded-For`).
pub(crate) async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_read_timeout: std::time::Duration,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve_with(listener, header_read_timeout, shutdown, move |req| {
        tower::ServiceExt::oneshot(app.clone(), req)
    })
    .await
}

/// [`serve_http`] with any request handler in place of a router: the façade's workers answer
/// proxied requests without going through one.
pub(crate) async fn serve_with<H, F>(
    listener: tokio::net::TcpListener,
    header_read_timeout: std::time::Duration,
    shutdown: Shutdown,
    handler: H,
) -> std::io::Result<()>
where
    H: Fn(axum::extract::Request) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = Result<axum::response::Response, std::convert::Infallible>>
        + Send
        + 'static,
{
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let peer = stream.peer_addr().ok();
        let handler = handler.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            if let Some(peer) = peer {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            handler(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Environment variable for crash tests of the embedded blue/green rebuild: `replayed:N` makes
/// the process abort (like kill -9) once the new copy has applied position N, `switching`
/// once it has caught up (durable, not yet switched to), `switched` right after the switch
/// (the old copy not yet removed).
pub const ABORT_IN_REBUILD_ENV: &str = "FICUS_TEST_ABORT_IN_REBUILD";

fn rebuild_crash_hook() -> ficus_runtime::ProjectionRunnerConfig {
    use ficus_runtime::RebuildMoment;
    let Ok(spec) = std::env::var(ABORT_IN_REBUILD_ENV) else {
        return Default::default();
    };
    let at = match spec.split_once(':') {
        Some(("replayed", n)) => n.parse::<u64>().ok().map(|n| (RebuildMoment::Replayed, n)),
        None if spec == "switching" => Some((RebuildMoment::Switching, 0)),
        None if spec == "switched" => Some((RebuildMoment::Switched, 0)),
        _ => None,
    };
    let Some((moment, position)) = at else {
        return Default::default();
    };
    tracing::warn!(%spec, "crash test: the process aborts at this moment of a rebuild");
    ficus_runtime::ProjectionRunnerConfig {
        rebuild_hook: Some(Arc::new(move |m, p| {
            if m == moment && p >= position {
                std::process::abort();
            }
        })),
    }
}

/// Environment variable for crash tests: `after:N` makes the process abort (like kill -9)
/// right after a saga's event of stream version N is durable; `before:N` right before it is
/// appended (the step's effect done, not recorded).
pub const ABORT_AT_SAGA_RECORD_ENV: &str = "FICUS_TEST_ABORT_AT_SAGA_RECORD";

/// Order fulfilment, when a payment service is configured: the saga, its orchestrator, and
/// (in a worker process) the pool that drives sagas from the job queue.
fn start_fulfilment(
    cfg: &ServerConfig,
    shop: &Shop,
    store: &Arc<dyn EventStore>,
    embedded: Option<&Arc<SqliteEventStore>>,
    jobs: &Arc<dyn JobQueue>,
    shutdown: &Shutdown,
) -> anyhow::Result<(
    Option<ficus_domain::fulfilment::Fulfilment>,
    Option<WorkerPool>,
)> {
    use ficus_domain::fulfilment::{Fulfilment, FulfilmentConfig, FulfilmentSaga};
    use ficus_runtime::saga::{SagaJobHandler, SagaOrchestrator};
    let Some(url) = &cfg.payments_url else {
        return Ok((None, None));
    };
    let payments = Arc::new(ficus_gateway::payments::HttpPayments::new(
        ficus_gateway::payments::PaymentClientConfig::new(url.clone()),
    ));
    let saga = FulfilmentSaga::new(
        shop.repository().clone(),
        payments,
        FulfilmentConfig::default(),
    );
    let mut orchestrator = SagaOrchestrator::new(store.clone()).with(Arc::new(saga));
    if let Ok(spec) = std::env::var(ABORT_AT_SAGA_RECORD_ENV) {
        use ficus_runtime::saga::RecordMoment;
        let parsed = match spec.split_once(':') {
            Some(("before", n)) => n.parse::<u64>().ok().map(|n| (RecordMoment::Before, n)),
            Some(("after", n)) => n.parse::<u64>().ok().map(|n| (RecordMoment::After, n)),
            _ => None,
        };
        if let Some((at, n)) = parsed {
            tracing::warn!(%spec, "crash test: the process aborts at this saga record");
            orchestrator = orchestrator.with_record_hook(Arc::new(move |_, version, moment| {
                if version == n && moment == at {
                    std::process::abort();
                }
            }));
        }
    }
    let pool = cfg.role.runs_workers().then(|| {
        WorkerPool::spawn(
            jobs.clone(),
            Arc::new(SagaJobHandler {
                orchestrator: orchestrator.clone(),
            }),
            cfg.saga_pool.clone(),
            None,
            shutdown.clone(),
        )
    });
    // Embedded: the saga start is recorded in the order's append (the outbox, in the event
    // log's file) and relayed into the job queue; PostgreSQL: enqueued after the append.
    let saga_start = match embedded {
        Some(sqlite) => {
            use ficus_runtime::outbox::{spawn_relay, OutboxRelayConfig, SagaStarts};
            sqlite
                .install_outbox(ficus_domain::fulfilment::outbox_rule())
                .context("installing the outbox rule")?;
            let relay = OutboxRelayConfig {
                hook: outbox_crash_hook(),
                ..OutboxRelayConfig::default()
            };
            let handler = Arc::new(SagaStarts {
                orchestrator: orchestrator.clone(),
                jobs: jobs.clone(),
            });
            // Ends with the shutdown signal; an undelivered row waits in the file.
            spawn_relay(sqlite.clone(), handler, relay, shutdown.clone());
            ficus_domain::fulfilment::SagaStart::Outbox
        }
        None => ficus_domain::fulfilment::SagaStart::AfterAppend,
    };
    let fulfilment = Fulfilment {
        shop: shop.clone(),
        jobs: jobs.clone(),
        orchestrator,
        saga_start,
    };
    Ok((Some(fulfilment), pool))
}

/// Environment variable for crash tests of the embedded outbox: `before_effect` makes the
/// process abort (like kill -9) when the relay has read a row and not yet performed its
/// effect, `after_effect` once the effect is done and the row not yet deleted.
pub const ABORT_IN_OUTBOX_ENV: &str = "FICUS_TEST_ABORT_IN_OUTBOX";

fn outbox_crash_hook() -> Option<ficus_runtime::outbox::OutboxHook> {
    use ficus_runtime::outbox::OutboxMoment;
    let at = match std::env::var(ABORT_IN_OUTBOX_ENV).ok()?.as_str() {
        "before_effect" => OutboxMoment::BeforeEffect,
        "after_effect" => OutboxMoment::AfterEffect,
        _ => return None,
    };
    tracing::warn!(
        ?at,
        "crash test: the process aborts at this moment of an outbox delivery"
    );
    Some(Arc::new(move |moment, _| {
        if moment == at {
            std::process::abort();
        }
    }))
}
