//! Wiring: open the embedded store, start the projections, serve the HTTP API, and shut it
//! all down in order.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ficus_domain::jobs::{BulkJobs, ShopJobHandler, SHOP_QUEUE};
use ficus_domain::read_models::{CatalogProjection, OrdersProjection};
use ficus_domain::service::Shop;
use ficus_gateway::{ApiConfig, AppState, Auth};
use ficus_runtime::{PoolConfig, ProjectionRunner, Repository, Shutdown, WorkerPool};
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
            role: Role::All,
            bus: None,
        }
    }
}

/// What one `ficus serve` process runs. With PostgreSQL, run as many of each as needed: API
/// processes take HTTP traffic, worker processes compete for the job queue's items. Every
/// process keeps its own copy of the read models, built from the shared log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The HTTP API and the worker pool.
    All,
    /// The HTTP API (commands and queries); no worker pool.
    Api,
    /// The worker pool, with only health, readiness and metrics over HTTP.
    Worker,
}

impl Role {
    pub fn parse(s: &str) -> anyhow::Result<Role> {
        match s {
            "all" => Ok(Role::All),
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            other => anyhow::bail!("--role takes all, api or worker, got {other:?}"),
        }
    }

    fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

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
    /// The bus subscription, when a bus is configured (the relay lives in the state).
    bus: Option<BusSubscriber>,
    /// The embedded gateway, when configured.
    pub gateway: Option<crate::gateway::RunningGateway>,
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
                let relay =
                    OutboxRelay::new(store.clone(), bus.clone(), RelayConfig::default()).spawn();
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
    let shutdown = Shutdown::new();
    let read_dir = cfg.data_dir.join("read-models");
    let (catalog, catalog_task) = ProjectionRunner::spawn(
        Arc::new(CatalogProjection),
        &read_dir,
        dyn_store.clone(),
        shutdown.clone(),
    )?;
    let (orders, orders_task) = ProjectionRunner::spawn(
        Arc::new(OrdersProjection),
        &read_dir,
        dyn_store.clone(),
        shutdown.clone(),
    )?;
    let shop = Shop::new(Repository::new(dyn_store.clone()));
    let handler = Arc::new(ShopJobHandler {
        shop: shop.clone(),
        store: dyn_store.clone(),
        jobs: jobs.clone(),
        orders: orders.clone(),
        export_dir: cfg.data_dir.join("exports"),
    });
    let pool = cfg.role.runs_workers().then(|| {
        WorkerPool::spawn(
            jobs.clone(),
            handler,
            cfg.shop_pool.clone(),
            Some(ready),
            shutdown.clone(),
        )
    });
    let state = AppState {
        store: dyn_store.clone(),
        bulk: BulkJobs::new(jobs.clone(), catalog.clone(), orders.clone()),
        jobs,
        shop,
        catalog,
        orders,
        auth: Arc::new(Auth::new(secret)),
        sse_permits: Arc::new(Semaphore::new(cfg.api.max_sse_subscribers)),
        config: Arc::new(cfg.api.clone()),
        shutdown: shutdown.clone(),
        http_metrics: Default::default(),
        backend,
        bus: bus_parts.as_ref().map(|(bus, _)| bus.clone()),
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let app = match cfg.role {
        Role::All | Role::Api => ficus_gateway::router(state.clone()),
        Role::Worker => ficus_gateway::ops_router(state.clone()),
    };
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });
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
        projections: vec![catalog_task, orders_task],
        pool,
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
        // Running jobs finish, unstarted ones are released, completions flushed.
        if let Some(pool) = self.pool {
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
