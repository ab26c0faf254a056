//! A `ficus serve` on PostgreSQL + NATS, reached through a TCP fault proxy, degrades and heals
//! under a steady write load and a bulk job: with PostgreSQL "restarted" (every connection
//! cut) or partitioned (a black hole) writes answer 503 with a code and Retry-After within a
//! bounded time, readiness names the store while liveness stays up, and after the fault the
//! same process recovers; with NATS stopped writes keep succeeding, the outbox buffers and then
//! drains with every event on the stream exactly once; with added latency everything works.
//! In every case each acknowledged write is in the log exactly once, the bulk job's effect
//! happened exactly once per item, and the live read model equals a rebuild.
//!
//! Needs `FICUS_TEST_PG_URL` and `FICUS_TEST_NATS_URL` (skipped without them). The shared
//! services themselves are never touched: only the proxies misbehave.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{test_nats_url, BusConfig, NatsBus};
use ficus_store::postgres::testing::{fresh_schema, test_url, SchemaGuard};
use serde_json::{json, Value};

mod common;
#[path = "common/fault_proxy.rs"]
mod fault_proxy;

use common::{cli_token, free_port, get_json, wait_ready};
use fault_proxy::FaultProxy;

const SECRET: &str = "dependency-faults-secret";
/// Client tasks writing products while a fault comes and goes.
const WRITERS: usize = 3;
/// Products the bulk job reprices.
const BULK_ITEMS: usize = 30;
/// How long a fault lasts.
const FAULT_MS: u64 = 3000;
/// No answer may take longer than this, fault or not: a write waits at most for a pooled
/// connection (2 s as configured below) and two statements (1.5 s each), with room to spare.
const ANSWER_BOUND_MS: u64 = 8_000;

/// A server behind proxies, on a fresh schema and stream of its own.
struct Rig {
    pg: FaultProxy,
    nats: FaultProxy,
    nats_url: String,
    schema: String,
    child: std::process::Child,
    base: String,
    http: reqwest::Client,
    seller: String,
    admin: String,
    _dir: tempfile::TempDir,
    _stream: StreamGuard,
    _schema: SchemaGuard,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn upstream(url: &str, default_port: u16) -> SocketAddr {
    // `scheme://[user@]host:port[/...]`
    let rest = url.split("://").nth(1).expect("a URL");
    let hostport = rest.split('/').next().unwrap();
    let hostport = hostport.rsplit('@').next().unwrap();
    let with_port = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:{default_port}")
    };
    let with_port = with_port.replace("localhost", "127.0.0.1");
    with_port.parse().expect("host:port")
}

/// The URL with its host and port replaced by the proxy's.
fn through(url: &str, proxy: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, format!("/{p}")),
        None => (rest, String::new()),
    };
    let user = match authority.rsplit_once('@') {
        Some((u, _)) => format!("{u}@"),
        None => String::new(),
    };
    format!("{scheme}://{user}{proxy}{path}")
}

impl Rig {
    async fn start() -> Option<Rig> {
        let (Some(pg_url), Some(nats_url)) = (test_url(), test_nats_url()) else {
            eprintln!("skipped: FICUS_TEST_PG_URL and FICUS_TEST_NATS_URL must both be set");
            return None;
        };
        // The schema and the stream are made and removed over the direct URLs; only the
        // server goes through the proxies.
        let (config, schema_guard) = fresh_schema(&pg_url, "depf");
        let schema = config.schema.clone();
        let stream = StreamGuard(BusConfig::new(nats_url.clone(), &schema));
        let pg = FaultProxy::start(upstream(&pg_url, 5432)).await;
        let nats = FaultProxy::start(upstream(&nats_url, 4222)).await;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // The server's log goes to its data directory, or to DEPF_LOG_FILE (at the level in
        // DEPF_LOG, `warn` by default) when a failure needs reading.
        let log = std::fs::File::create(
            std::env::var("DEPF_LOG_FILE")
                .map(std::path::PathBuf::from)
                .unwrap_or(dir.path().join("server.log")),
        )
        .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
            .args(["serve", "--store"])
            .arg(through(&pg_url, pg.addr))
            .args(["--pg-schema", &schema, "--bus"])
            .arg(through(&nats_url, nats.addr))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(dir.path().join("data"))
            .env("FICUS_AUTH_HS256_SECRET", SECRET)
            .env("FICUS_PG_POOL_SIZE", "6")
            // Short bounds, so a partition of a few seconds shows as refusals rather than
            // as slow answers (the defaults are 10 s and 5 s).
            .env("FICUS_PG_STATEMENT_TIMEOUT_MS", "1500")
            .env("FICUS_PG_CONNECT_TIMEOUT_MS", "2000")
            .env("FICUS_JOB_VISIBILITY_MS", "2000")
            .env("FICUS_JOB_CONCURRENCY", "2")
            .env("FICUS_JOB_MAX_CONCURRENCY", "2")
            .env(
                "RUST_LOG",
                std::env::var("DEPF_LOG").unwrap_or("warn".into()),
            )
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ficus serve");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(ANSWER_BOUND_MS + 3000))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&http, &base).await;
        Some(Rig {
            pg,
            nats,
            nats_url,
            schema,
            child,
            base,
            http,
            seller: cli_token(SECRET, "sam", "seller"),
            admin: cli_token(SECRET, "ada", "admin"),
            _dir: dir,
            _stream: stream,
            _schema: schema_guard,
        })
    }

    async fn create(&self, name: &str, category: &str, price: u64) -> reqwest::Result<Answer> {
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/products", self.base))
            .bearer_auth(&self.seller)
            .json(&json!({"name": name, "category": category, "price": price, "currency": "EUR"}))
            .send()
            .await?;
        let status = r.status().as_u16();
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body: Value = r.json().await.unwrap_or(Value::Null);
        Ok(Answer {
            status,
            retry_after,
            body,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> f64 {
        common::scrape_metric(&self.http, &self.base, name).await
    }

    /// Every event of the log, in order, once the server is reachable again.
    async fn log(&self) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let from = all.len() + 1;
            let (status, page) = self
                .get(&format!("/v1/all?from_position={from}&limit=1000"))
                .await;
            assert_eq!(status, 200, "{page}");
            let events = page["events"].as_array().unwrap().clone();
            if events.is_empty() {
                return all;
            }
            all.extend(events);
        }
    }

    /// The catalog read model's products of `category` (by id), once it reflects `position`.
    async fn catalog(&self, category: &str, position: u64) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        let mut offset = 0;
        loop {
            let path = format!(
                "/v1/products?category={category}&limit=100&offset={offset}&min_position={position}"
            );
            // A read model still catching up after a fault answers 503 read_model_lagging
            // (after the server's own bounded wait): ask again, within a bound.
            let deadline = Instant::now() + Duration::from_secs(20);
            let body = loop {
                let (status, body) = self.get(&path).await;
                if status == 200 {
                    break body;
                }
                assert!(
                    status == 503
                        && body["code"] == "read_model_lagging"
                        && Instant::now() < deadline,
                    "{status} {body}"
                );
            };
            let page = body["products"].as_array().unwrap();
            for p in page {
                all.insert(p["id"].as_str().unwrap().to_owned(), p.clone());
            }
            if page.len() < 100 {
                return all;
            }
            offset += 100;
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    elapsed_ms: u64,
}

/// What the load saw: each attempted write's name, and the product id when acknowledged.
#[derive(Default)]
struct Ledger {
    acknowledged: BTreeMap<String, String>,
    /// Names whose write got no 201 (a 503, or no answer at all): they may or may not be in
    /// the log, but at most once.
    refused: BTreeSet<String>,
    refusals: usize,
    /// Answers that are not 201 or a well-formed 503: each one fails the test.
    wrong: Vec<String>,
    slowest_refusal_ms: u64,
    last_ack_at: Option<Instant>,
}

/// Writes products in category `load` from [`WRITERS`] tasks until `stop` is set.
fn start_load(
    rig: &Arc<Rig>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
    ledger: &Arc<Mutex<Ledger>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WRITERS)
        .map(|w| {
            let (rig, stop, ledger) = (rig.clone(), stop.clone(), ledger.clone());
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let name = format!("w{w}-{i}");
                    let answer = rig.create(&name, "load", 100 + i).await;
                    let refused_now = !matches!(&answer, Ok(a) if a.status == 201);
                    {
                        let mut l = ledger.lock().unwrap();
                        match answer {
                            Ok(a) if a.status == 201 => {
                                let id = a.body["id"].as_str().unwrap().to_owned();
                                l.acknowledged.insert(name, id);
                                l.last_ack_at = Some(Instant::now());
                            }
                            Ok(a) if a.status == 503 => {
                                l.refused.insert(name);
                                l.refusals += 1;
                                l.slowest_refusal_ms = l.slowest_refusal_ms.max(a.elapsed_ms);
                                let coded = a.body["code"].as_str().is_some_and(|c| !c.is_empty())
                                    && a.body["message"].is_string();
                                if !coded || a.retry_after.is_none() {
                                    l.wrong.push(format!("503 without code/Retry-After: {a:?}"));
                                }
                                if a.elapsed_ms > ANSWER_BOUND_MS {
                                    l.wrong.push(format!("503 after {} ms", a.elapsed_ms));
                                }
                            }
                            Ok(a) => l.wrong.push(format!("{name}: {a:?}")),
                            Err(e) => {
                                l.refused.insert(name.clone());
                                l.wrong.push(format!("{name}: no answer: {e}"));
                            }
                        }
                    }
                    if refused_now {
                        // A client honouring Retry-After would wait longer; a short pause
                        // keeps the load steady without flooding the log.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// Creates the bulk job's products, and waits until the catalog the job plans from has them.
async fn prepare_bulk_job(rig: &Rig) {
    let mut head = 0;
    for i in 0..BULK_ITEMS {
        let a = rig
            .create(&format!("bulk-{i}"), "bulk", 1000 + i as u64)
            .await
            .unwrap();
        assert_eq!(a.status, 201, "{a:?}");
        head = head.max(a.body["position"].as_u64().unwrap());
    }
    // The job plans from the catalog: let it see every product first.
    assert_eq!(rig.catalog("bulk", head).await.len(), BULK_ITEMS);
}

/// Submits the job repricing the `bulk` category by 10 %: its id.
async fn submit_bulk_job(rig: &Rig) -> String {
    let r = rig
        .http
        .post(format!("{}/v1/jobs", rig.base))
        .bearer_auth(&rig.seller)
        .json(&json!({"kind": "reprice_category", "params": {"category": "bulk", "percent": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["total"], BULK_ITEMS);
    job["id"].as_str().unwrap().to_owned()
}

/// Waits for readiness to fail, checking the payload names `checks` and liveness stays 200.
async fn expect_not_ready(rig: &Rig, checks: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = rig.get("/health/ready").await;
        let (live, _) = rig.get("/health/live").await;
        assert_eq!(live, 200, "liveness must not depend on the dependencies");
        if status == 503 && checks.iter().all(|c| body["checks"][c]["ok"] == false) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "never reported not ready: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// After the fault: the job finished with one effect per item, every acknowledged write is in
/// the log once (a refused one at most once), the read model equals a rebuild. The number of
/// acknowledged writes checked.
async fn check_no_loss_no_duplicate(rig: &Rig, ledger: &Ledger, job_id: &str) -> usize {
    assert!(
        ledger.wrong.is_empty(),
        "wrong answers: {:#?}",
        ledger.wrong
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j = get_json(
            &rig.http,
            &format!("{}/v1/jobs/{job_id}", rig.base),
            &rig.seller,
        )
        .await;
        if j["state"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "job never finished: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], BULK_ITEMS, "{job}");

    let log = rig.log().await;
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e["position"], i as u64 + 1, "the log has no gaps");
    }
    let head = log.len() as u64;
    // Product creations by name, and price changes by stream.
    let mut created: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut repriced: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for e in &log {
        let stream = e["stream"].as_str().unwrap().to_owned();
        match e["type"].as_str().unwrap() {
            "ProductCreated" => created
                .entry(e["data"]["name"].as_str().unwrap().to_owned())
                .or_default()
                .push(stream),
            "ProductPriceChanged" => repriced.entry(stream).or_default().push(e),
            _ => {}
        }
    }
    for (name, id) in &ledger.acknowledged {
        assert_eq!(
            created.get(name).map(Vec::len),
            Some(1),
            "acknowledged {name} must be in the log exactly once"
        );
        assert_eq!(created[name][0], format!("product-{id}"));
    }
    for name in &ledger.refused {
        assert!(
            created.get(name).map_or(0, Vec::len) <= 1,
            "{name} is in the log more than once"
        );
    }
    for i in 0..BULK_ITEMS {
        let name = format!("bulk-{i}");
        let stream = &created[&name][0];
        let changes = repriced.get(stream).cloned().unwrap_or_default();
        assert_eq!(changes.len(), 1, "{name}: one price change, exactly once");
        assert_eq!(changes[0]["data"]["new_price"], (1000 + i as u64) * 110);
    }
    // The read model kept live equals what a rebuild from the log makes.
    let live_load = rig.catalog("load", head).await;
    let live_bulk = rig.catalog("bulk", head).await;
    // ... and has exactly the products the log has.
    let ids_in_log = |prefix: char| -> BTreeSet<String> {
        created
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, streams)| streams[0].trim_start_matches("product-").to_owned())
            .collect()
    };
    assert_eq!(
        live_load.keys().cloned().collect::<BTreeSet<_>>(),
        ids_in_log('w')
    );
    assert_eq!(
        live_bulk.keys().cloned().collect::<BTreeSet<_>>(),
        ids_in_log('b')
    );
    let r = rig
        .http
        .post(format!("{}/v1/projections/catalog/rebuild", rig.base))
        .bearer_auth(&rig.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, projections) = rig.get("/v1/projections").await;
        let catalog = projections["projections"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "catalog").cloned())
            .unwrap_or(Value::Null);
        if catalog["rebuild"].is_null() && catalog["checkpoint"].as_u64() >= Some(head) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rebuild never finished: {projections}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rig.catalog("load", head).await, live_load);
    assert_eq!(rig.catalog("bulk", head).await, live_bulk);
    ledger.acknowledged.len()
}

/// Runs the load, applies `fault` for [`FAULT_MS`], heals, and checks everything.
async fn postgres_fault(fault: fn(&FaultProxy), what: &str) {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let rig = Arc::new(rig);
    prepare_bulk_job(&rig).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load = start_load(&rig, &stop, &ledger);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The job is submitted just before the fault, so its items are leased and completed
    // across it.
    let job_id = submit_bulk_job(&rig).await;
    fault(&rig.pg);
    let faulted_at = Instant::now();
    let acked_before = ledger.lock().unwrap().acknowledged.len();
    let ready = expect_not_ready(&rig, &["event_store", "job_queue"]).await;
    assert_eq!(ready["status"], "not_ready");
    let rest = Duration::from_millis(FAULT_MS).saturating_sub(faulted_at.elapsed());
    tokio::time::sleep(rest).await;
    let refusals_during = ledger.lock().unwrap().refusals;
    rig.pg.heal();
    let healed_at = Instant::now();

    // The same process recovers: a write is acknowledged again and readiness comes back.
    let deadline = healed_at + Duration::from_secs(20);
    let recovered_ms = loop {
        if ledger
            .lock()
            .unwrap()
            .last_ack_at
            .is_some_and(|t| t > healed_at)
        {
            break healed_at.elapsed().as_millis();
        }
        assert!(Instant::now() < deadline, "writes never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Readiness comes back too; the last check still failing says what healed last.
    let mut last_not_ready = Value::Null;
    let ready_ms = loop {
        let (status, body) = rig.get("/health/ready").await;
        if status == 200 {
            break healed_at.elapsed().as_millis();
        }
        assert!(Instant::now() < deadline, "never ready again: {body}");
        last_not_ready = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let healed_last: Vec<&String> = last_not_ready["checks"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(_, v)| v["ok"] == false)
                .map(|(k, _)| k)
                .collect()
        })
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        refusals_during > 0,
        "the fault must have refused writes (acknowledged before it: {acked_before})"
    );
    let checked = check_no_loss_no_duplicate(&rig, &ledger, &job_id).await;
    eprintln!(
        "{what}: {} refused (slowest {} ms), writes back {recovered_ms} ms and ready {ready_ms} ms \
         after heal (last to heal: {healed_last:?}), {checked} acknowledged writes checked",
        ledger.refusals, ledger.slowest_refusal_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_refuses_with_503_and_recovers_without_loss() {
    postgres_fault(FaultProxy::cut, "PostgreSQL restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partition_fails_requests_in_bounded_time_and_recovers() {
    postgres_fault(FaultProxy::blackhole, "PostgreSQL partition").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_buffers_in_the_outbox_and_drains_exactly_once() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let rig = Arc::new(rig);
    prepare_bulk_job(&rig).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load = start_load(&rig, &stop, &ledger);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let job_id = submit_bulk_job(&rig).await;
    rig.nats.cut();
    let cut_at = Instant::now();
    expect_not_ready(&rig, &["bus"]).await;
    // Writes keep being acknowledged while the bus is down, and the backlog grows.
    let acked_at_cut = ledger.lock().unwrap().acknowledged.len();
    let mut backlog_peak = 0.0f64;
    while cut_at.elapsed() < Duration::from_millis(FAULT_MS) {
        backlog_peak = backlog_peak.max(rig.metric("ficus_outbox_backlog_events").await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let acked_during = ledger.lock().unwrap().acknowledged.len() - acked_at_cut;
    assert!(acked_during > 0, "writes must go on without the bus");
    assert!(
        backlog_peak > 0.0,
        "the outbox must buffer while the bus is down"
    );
    rig.nats.heal();
    let healed_at = Instant::now();
    wait_ready(&rig.http, &rig.base).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert_eq!(ledger.refusals, 0, "no write may be refused for the bus");
    let checked = check_no_loss_no_duplicate(&rig, &ledger, &job_id).await;

    // The relay drains the backlog ...
    // The NATS client reconnects with backoff, so draining can take several seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.metric("ficus_outbox_backlog_events").await > 0.0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_ms = healed_at.elapsed().as_millis();
    // ... and the stream, read directly from NATS, holds every event of the log exactly once.
    let log = rig.log().await;
    let bus = NatsBus::connect(BusConfig::new(rig.nats_url.clone(), &rig.schema))
        .await
        .unwrap();
    let messages = bus.stream_messages().await.unwrap();
    let mut seen = BTreeMap::new();
    for seq in 1..=messages {
        let (headers, body) = bus.stream_message(seq).await.unwrap();
        let id = headers
            .get(ficus_store::nats::MSG_ID_HEADER)
            .unwrap()
            .as_str()
            .to_owned();
        assert_eq!(body["id"].as_str(), Some(id.as_str()));
        assert!(
            seen.insert(id, body["position"].as_u64().unwrap())
                .is_none(),
            "an event published twice"
        );
    }
    let in_log: BTreeMap<String, u64> = log
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["position"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen, in_log, "the stream holds the log, each event once");
    eprintln!(
        "NATS down: {acked_during} writes acknowledged during the fault, backlog peak \
         {backlog_peak}, drained {drained_ms} ms after heal, {messages} messages checked, \
         {checked} acknowledged writes checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_latency_slows_but_breaks_nothing() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let rig = Arc::new(rig);
    prepare_bulk_job(&rig).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let load = start_load(&rig, &stop, &ledger);
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.pg.delay(100);
    let job_id = submit_bulk_job(&rig).await;
    let acked_at = ledger.lock().unwrap().acknowledged.len();
    tokio::time::sleep(Duration::from_millis(FAULT_MS)).await;
    let acked_slow = ledger.lock().unwrap().acknowledged.len() - acked_at;
    let (status, ready) = rig.get("/health/ready").await;
    assert_eq!(status, 200, "slow is not down: {ready}");
    rig.pg.delay(0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(acked_slow > 0, "writes go on, slower");
    assert_eq!(ledger.refusals, 0, "latency alone refuses nothing");
    let checked = check_no_loss_no_duplicate(&rig, &ledger, &job_id).await;
    eprintln!("PostgreSQL +100 ms: {acked_slow} writes acknowledged while slow, {checked} checked");
}
