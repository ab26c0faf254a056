//! What the server's end-to-end tests share: the backend a test runs on and the storage it
//! gets. A test written once as `async fn name(b: Backend)` runs on both backends through
//! [`on_both_backends!`]: on the embedded SQLite store always, and on PostgreSQL when
//! `FICUS_TEST_PG_URL` names one (CI always sets it; without it the PostgreSQL runs skip).
//! With `FICUS_TEST_NATS_URL` set too, the PostgreSQL runs also use the NATS JetStream bus.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ficus_server::app::{ServerConfig, StoreConfig};
use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{test_nats_url, BusConfig};
use ficus_store::postgres::testing::{fresh_schema, test_url, SchemaGuard};
use ficus_store::postgres::PgConfig;
use serde_json::Value;
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// Whether this backend can run here (PostgreSQL needs `FICUS_TEST_PG_URL`).
    pub fn available(self) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => test_url().is_some(),
        }
    }
}

/// A test server's storage: its data directory and, on PostgreSQL, a schema of its own that
/// is dropped with it. Survives a server stop, so a test can reopen the same data.
pub struct TestData {
    pub dir: TempDir,
    pub backend: Backend,
    pg: Option<(PgConfig, SchemaGuard)>,
    /// The NATS URL, and the guard deleting this schema's JetStream stream.
    bus: Option<(String, StreamGuard)>,
}

impl TestData {
    pub fn new(backend: Backend) -> TestData {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => {
                let url = test_url().expect("FICUS_TEST_PG_URL is set for PostgreSQL tests");
                let (mut config, guard) = fresh_schema(&url, "http");
                config.pool_size = 8;
                Some((config, guard))
            }
        };
        let bus = match &pg {
            Some((config, _)) => test_nats_url().map(|url| {
                let guard = StreamGuard(BusConfig::new(url.clone(), &config.schema));
                (url, guard)
            }),
            None => None,
        };
        TestData {
            dir,
            backend,
            pg,
            bus,
        }
    }

    /// A server config on this storage, listening on `listen`.
    pub fn config(&self, listen: SocketAddr) -> ServerConfig {
        let mut cfg = ServerConfig::new(self.dir.path(), listen);
        if let Some((pg, _)) = &self.pg {
            cfg.store = StoreConfig::Postgres(pg.clone());
        }
        cfg.bus = self.bus.as_ref().map(|(url, _)| url.clone());
        cfg
    }

    /// The PostgreSQL config (URL and schema) of this storage; `None` on SQLite.
    pub fn pg(&self) -> Option<&PgConfig> {
        self.pg.as_ref().map(|(config, _)| config)
    }

    /// The `ficus serve` arguments that put a child process on this storage: `--store`,
    /// `--pg-schema` and (with NATS) `--bus` on PostgreSQL; none on SQLite, whose data
    /// directory the caller passes.
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some((pg, _)) = &self.pg {
            args.extend(["--store".into(), pg.url.clone()]);
            args.extend(["--pg-schema".into(), pg.schema.clone()]);
        }
        if let Some((url, _)) = &self.bus {
            args.extend(["--bus".into(), url.clone()]);
        }
        args
    }
}

/// Runs each listed `async fn name(b: Backend)` as two tests, `sqlite::name` and
/// `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if !$crate::common::Backend::Postgres.available() {
                        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
                        return;
                    }
                    super::$name($crate::common::Backend::Postgres).await
                }
            )*
        }
    };
}

// ---------------------------------------------------------------------------------------------
// For tests that run the `ficus` binary as separate processes.

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bearer token minted by `ficus token` with the HS256 `secret`.
pub fn cli_token(secret: &str, sub: &str, roles: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["token", "--sub", sub, "--roles", roles])
        .env("FICUS_AUTH_HS256_SECRET", secret)
        .output()
        .expect("run ficus token");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits (at most 30 s) until the server at `base` answers `/health/ready` with 200.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} never became ready");
}

/// The server at `base`'s `/metrics`, as Prometheus text.
pub async fn metrics_text(http: &reqwest::Client, base: &str) -> String {
    http.get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the unlabelled sample `name` in Prometheus `text`, if there is one.
pub fn find_metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The value of the unlabelled sample `name` in Prometheus `text`; panics if there is none.
pub fn metric_value(text: &str, name: &str) -> f64 {
    find_metric(text, name).unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The unlabelled sample `name` of the server at `base`, scraped now.
pub async fn scrape_metric(http: &reqwest::Client, base: &str, name: &str) -> f64 {
    metric_value(&metrics_text(http, base).await, name)
}

/// `GET url` with a bearer token, as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Creates a product (a 20 EUR lamp in `home`) as `seller`: its id.
pub async fn create_lamp(http: &reqwest::Client, base: &str, seller: &str) -> String {
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(seller)
        .json(&serde_json::json!({"name": "Lamp", "category": "home", "price": 20, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The events of type `ty` in a `GET /v1/streams/{stream}` answer.
pub fn events_of_type<'a>(stream: &'a Value, ty: &str) -> Vec<&'a Value> {
    stream["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == ty)
        .collect()
}

/// One `ficus serve` child process on a shared PostgreSQL schema (and the NATS bus when
/// `FICUS_TEST_NATS_URL` is set), killed when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub base: String,
    _dir: TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ficus serve --role role` on `schema` of the database at `url`, with tokens signed
/// by `secret`, a small pool, and few job workers with a short visibility timeout, so a job
/// is still running when a test kills a worker and its leased items come back quickly.
pub fn serve_on_postgres(url: &str, schema: &str, role: &str, secret: &str) -> Proc {
    serve_on_postgres_with(url, schema, role, secret, &[])
}

/// [`serve_on_postgres`] with extra environment variables (flags' twins) for the process.
pub fn serve_on_postgres_with(
    url: &str,
    schema: &str,
    role: &str,
    secret: &str,
    env: &[(&str, &str)],
) -> Proc {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args([
        "serve",
        "--role",
        role,
        "--store",
        url,
        "--pg-schema",
        schema,
    ]);
    if let Some(nats) = test_nats_url() {
        cmd.args(["--bus", &nats]);
    }
    let child = cmd
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path())
        .env("FICUS_AUTH_HS256_SECRET", secret)
        .env("FICUS_PG_POOL_SIZE", "5")
        // Items leased by a killed worker come back after this long.
        .env("FICUS_JOB_VISIBILITY_MS", "1500")
        // Few workers per process, so a job is still running when the kill comes.
        .env("FICUS_JOB_CONCURRENCY", "2")
        .env("FICUS_JOB_MAX_CONCURRENCY", "2")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve");
    Proc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}
