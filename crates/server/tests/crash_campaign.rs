//! Crash consistency of the whole server under a mixed HTTP workload: a child `ficus serve`
//! (embedded SQLite) takes product and order commands, bulk reprice jobs and projection reads
//! from several clients and is killed with SIGKILL at a random moment, round after round on
//! the same data directory. After every restart the test proves: every acknowledged event is
//! in the log at the version and position it was acknowledged with (and the log is gapless);
//! every acknowledged job is there; no job item took effect twice; projection checkpoints
//! never went backwards; and both read models answer exactly what a rebuild from the log
//! answers. At the end every job completes with each of its products repriced exactly once.
//!
//! The same campaign runs on PostgreSQL (a schema of its own) with the NATS JetStream bus when
//! `FICUS_TEST_PG_URL` (and `FICUS_TEST_NATS_URL`) are set, as CI sets them: once against one
//! `--role all` process, and once against a fleet of four (`command`, `query` and two
//! `worker,projector`) killed all at once, the clients sending commands to the command
//! process and queries to the query process.
//!
//! `FICUS_CRASH_ROUNDS` sets the rounds (default 10), `FICUS_CRASH_SEED` the seed (printed
//! at the start and in every failure); a seed reproduces the operation mix and kill times.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod common;
use common::{cli_token, free_port, wait_ready, Backend, TestData};

const SECRET: &str = "crash-campaign-secret";
const SELLERS: [&str; 3] = ["sid", "sue", "sol"];
const CUSTOMERS: [&str; 3] = ["cat", "cy", "cleo"];
/// Clients sending commands at once during a round.
const CLIENTS: usize = 4;
/// Lease length of a job item: items held by a killed process come back after this.
const VISIBILITY_MS: u64 = 800;
/// Longest a projection rebuild may take before the round fails.
const REBUILD_TIMEOUT: Duration = Duration::from_secs(120);
/// Most products compared with their rebuild per round (a seeded sample beyond this).
const SNAPSHOT_PRODUCTS: usize = 400;
/// The whole default campaign must stay under this (a hang is a failure, not a stuck CI).
const CAMPAIGN_BUDGET: Duration = Duration::from_secs(120);

/// The processes a campaign kills and restarts each round: their `--role`s, or `None` for one
/// process with the default role (`all`).
const FLEET: [&str; 4] = ["command", "query", "worker,projector", "worker,projector"];

/// One `ficus serve` on `data`: with `role` (and a data directory of its own, `role-<i>`), or
/// with the default role in the data directory itself.
fn serve(data: &TestData, port: u16, role: Option<(usize, &str)>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.arg("serve").args(data.serve_args());
    let dir = match role {
        Some((i, role)) => {
            cmd.args(["--role", role]);
            data.dir.path().join(format!("role-{i}"))
        }
        None => data.dir.path().to_path_buf(),
    };
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("FICUS_AUTH_HS256_SECRET", SECRET)
        .env("FICUS_JOB_VISIBILITY_MS", VISIBILITY_MS.to_string())
        .env("FICUS_JOB_CONCURRENCY", "2")
        .env("FICUS_JOB_MAX_CONCURRENCY", "4")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve")
}

/// What the server acknowledged, and what the test observed, across all rounds.
#[derive(Default)]
struct Acked {
    /// (stream, version) → position, for every 2xx command answer.
    events: BTreeMap<(String, u64), u64>,
    /// Product id → its seller.
    products: BTreeMap<String, String>,
    /// Bulk job id → (seller, category, total items).
    jobs: BTreeMap<String, (String, String, u64)>,
    /// Highest checkpoint seen per projection since its last rebuild.
    checkpoints: HashMap<String, u64>,
    /// Jobs found still running right after a restart: interrupted by the kill.
    jobs_interrupted: u64,
    /// Requests answered (any status) and commands acknowledged.
    answered: u64,
    acked_commands: u64,
}

#[derive(Clone)]
struct Ctx {
    http: reqwest::Client,
    /// Where commands, raw reads, jobs and projections go.
    base: String,
    /// Where the shop's queries go (the same process unless the fleet is split by role).
    query: String,
    tokens: Arc<HashMap<String, String>>,
    acked: Arc<Mutex<Acked>>,
    seed: u64,
}

impl Ctx {
    fn token(&self, who: &str) -> &str {
        &self.tokens[who]
    }

    /// Sends a command; on a 2xx records its `{id, version, position}` as acknowledged.
    /// `None` when the server did not answer (it was killed) or refused.
    async fn command(&self, req: reqwest::RequestBuilder, stream_prefix: &str) -> Option<Value> {
        let resp = req.send().await.ok()?;
        let status = resp.status();
        let body: Value = resp.json().await.ok()?;
        self.acked.lock().unwrap().answered += 1;
        assert!(
            status.is_success() || status.is_client_error() || status == 503,
            "server error {status}: {body} (FICUS_CRASH_SEED={})",
            self.seed
        );
        if !status.is_success() {
            return None;
        }
        if !stream_prefix.is_empty() {
            let id = body["id"].as_str().expect("command answer has id");
            let mut a = self.acked.lock().unwrap();
            a.acked_commands += 1;
            let key = (
                format!("{stream_prefix}{id}"),
                body["version"].as_u64().unwrap(),
            );
            let position = body["position"].as_u64().unwrap();
            // A command that decides no event (a price set to what it is) answers the
            // current version again; two different positions for one version would be a
            // version handed out twice.
            if let Some(earlier) = a.events.insert(key.clone(), position) {
                assert_eq!(
                    earlier, position,
                    "{key:?} acknowledged at two positions (FICUS_CRASH_SEED={})",
                    self.seed
                );
            }
        }
        Some(body)
    }
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[rng.gen_range(0..items.len())])
}

/// One client: a seeded mix of commands, bulk jobs and reads until the server goes away.
async fn client(ctx: Ctx, mut rng: StdRng, round: usize, client: usize) {
    let base = ctx.base.clone();
    let query = ctx.query.clone();
    let mut bulk_seq = 0;
    loop {
        let products: Vec<(String, String)> = {
            let a = ctx.acked.lock().unwrap();
            a.products
                .iter()
                .filter(|(_, s)| !s.starts_with("bulk:"))
                .map(|(p, s)| (p.clone(), s.clone()))
                .collect()
        };
        let roll = rng.gen_range(0..100);
        let answered = if roll < 25 || products.is_empty() {
            let seller = *pick(&mut rng, &SELLERS).unwrap();
            let price = format!("{}.{:02}", rng.gen_range(50..60), rng.gen_range(0..100));
            let req = ctx
                .http
                .post(format!("{base}/v1/products"))
                .bearer_auth(ctx.token(seller))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"name":"Lamp {round}-{client}","category":"manual","price":{price},"currency":"EUR","stock":50}}"#
                ));
            let out = ctx.command(req, "product-").await;
            if let Some(b) = &out {
                let id = b["id"].as_str().unwrap().to_owned();
                ctx.acked
                    .lock()
                    .unwrap()
                    .products
                    .insert(id, seller.to_owned());
            }
            out.is_some()
        } else if roll < 40 {
            // Prices stay in 50.00..60.00, so no change is ever a cut over 50 %.
            let (id, seller) = pick(&mut rng, &products).unwrap();
            let price = format!("{}.{:02}", rng.gen_range(50..60), rng.gen_range(0..100));
            let req = ctx
                .http
                .put(format!("{base}/v1/products/{id}/price"))
                .bearer_auth(ctx.token(seller))
                .header("content-type", "application/json")
                .body(format!(r#"{{"price":{price}}}"#));
            ctx.command(req, "product-").await.is_some()
        } else if roll < 50 {
            let (id, seller) = pick(&mut rng, &products).unwrap();
            let req = ctx
                .http
                .post(format!("{base}/v1/products/{id}/stock"))
                .bearer_auth(ctx.token(seller))
                .json(&json!({"warehouse": "main", "delta": rng.gen_range(1..5)}));
            ctx.command(req, "product-").await.is_some()
        } else if roll < 72 {
            let customer = *pick(&mut rng, &CUSTOMERS).unwrap();
            let (p1, _) = pick(&mut rng, &products).unwrap();
            let req = ctx
                .http
                .post(format!("{base}/v1/orders"))
                .bearer_auth(ctx.token(customer))
                .json(&json!({"items": [{"product_id": p1, "quantity": rng.gen_range(1..4)}]}));
            match ctx.command(req, "order-").await {
                Some(order) => {
                    let id = order["id"].as_str().unwrap().to_owned();
                    let (p2, _) = pick(&mut rng, &products).unwrap();
                    let req = ctx
                        .http
                        .post(format!("{base}/v1/orders/{id}/items"))
                        .bearer_auth(ctx.token(customer))
                        .json(&json!({"product_id": p2, "quantity": 1}));
                    ctx.command(req, "order-").await;
                    let action = if rng.gen_bool(0.8) { "place" } else { "cancel" };
                    let req = ctx
                        .http
                        .post(format!("{base}/v1/orders/{id}/{action}"))
                        .bearer_auth(ctx.token(customer));
                    ctx.command(req, "order-").await.is_some()
                }
                None => false,
            }
        } else if roll < 80 {
            // A bulk reprice over a category of its own, so no two jobs touch one product
            // and "repriced exactly once" is exact.
            bulk_seq += 1;
            let seller = *pick(&mut rng, &SELLERS).unwrap();
            let category = format!("bulk-{round}-{client}-{bulk_seq}");
            let mut last = 0;
            for i in 0..rng.gen_range(2..6) {
                let req = ctx
                    .http
                    .post(format!("{base}/v1/products"))
                    .bearer_auth(ctx.token(seller))
                    .json(&json!({"name": format!("Bulk {i}"), "category": category,
                                  "price": 100, "currency": "EUR"}));
                let Some(b) = ctx.command(req, "product-").await else {
                    return;
                };
                last = b["position"].as_u64().unwrap();
                ctx.acked.lock().unwrap().products.insert(
                    b["id"].as_str().unwrap().to_owned(),
                    format!("bulk:{seller}"),
                );
            }
            // Read our own writes so the job plans every product just created.
            let Ok(r) = ctx
                .http
                .get(format!(
                    "{query}/v1/products?category={category}&limit=1&min_position={last}"
                ))
                .send()
                .await
            else {
                return;
            };
            if r.status() != 200 {
                continue;
            }
            let percent = if rng.gen_bool(0.5) { 10 } else { -10 };
            let req = ctx
                .http
                .post(format!("{base}/v1/jobs"))
                .bearer_auth(ctx.token(seller))
                .json(&json!({"kind": "reprice_category",
                              "params": {"category": category, "percent": percent}}));
            match ctx.command(req, "").await {
                Some(job) => {
                    let id = job["id"].as_str().unwrap().to_owned();
                    let total = job["total"].as_u64().unwrap();
                    ctx.acked
                        .lock()
                        .unwrap()
                        .jobs
                        .insert(id, (seller.to_owned(), category, total));
                    true
                }
                None => false,
            }
        } else {
            let (id, _) = pick(&mut rng, &products).unwrap();
            match ctx
                .http
                .get(format!("{query}/v1/products/{id}"))
                .send()
                .await
            {
                Ok(r) => {
                    assert!(r.status() != 500, "GET product answered 500");
                    true
                }
                Err(_) => false,
            }
        };
        if !answered {
            // Refused or unanswered: if the server is gone, stop; else carry on.
            if ctx
                .http
                .get(format!("{base}/health/live"))
                .send()
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Polls projection checkpoints while the workload runs, remembering the highest seen.
async fn watch_checkpoints(ctx: Ctx) {
    loop {
        let Ok(r) = ctx
            .http
            .get(format!("{}/v1/projections", ctx.base))
            .bearer_auth(ctx.token("admin"))
            .send()
            .await
        else {
            return;
        };
        let Ok(body) = r.json::<Value>().await else {
            return;
        };
        {
            let mut a = ctx.acked.lock().unwrap();
            for p in body["projections"].as_array().unwrap() {
                let seen = a
                    .checkpoints
                    .entry(p["name"].as_str().unwrap().to_owned())
                    .or_default();
                *seen = (*seen).max(p["checkpoint"].as_u64().unwrap());
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn get(ctx: &Ctx, path: &str, who: &str) -> (u16, Value) {
    // The shop's queries to the query side; raw streams, jobs and projections to the command
    // side.
    let shop_query = path.starts_with("/v1/products") || path.starts_with("/v1/customers");
    let base = if shop_query { &ctx.query } else { &ctx.base };
    let r = ctx
        .http
        .get(format!("{base}{path}"))
        .bearer_auth(ctx.token(who))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e} (FICUS_CRASH_SEED={})", ctx.seed));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// The whole log, through the HTTP API.
async fn read_log(ctx: &Ctx) -> Vec<Value> {
    let mut log: Vec<Value> = Vec::new();
    loop {
        let from = log.len() + 1;
        let (status, page) = get(
            ctx,
            &format!("/v1/all?from_position={from}&limit=1000"),
            "admin",
        )
        .await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            return log;
        }
        log.extend(events.iter().cloned());
    }
}

/// Waits (bounded) until no acknowledged job is still running and no job item is queued.
async fn settle_jobs(ctx: &Ctx, round: usize) {
    let jobs: Vec<String> = ctx.acked.lock().unwrap().jobs.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in jobs {
        let mut first_look = round != usize::MAX;
        loop {
            let (status, j) = get(ctx, &format!("/v1/jobs/{id}"), "admin").await;
            assert_eq!(
                status, 200,
                "round {round}: acknowledged job {id} lost: {j} (FICUS_CRASH_SEED={})",
                ctx.seed
            );
            if j["state"] != "running" {
                break;
            }
            if first_look {
                first_look = false;
                ctx.acked.lock().unwrap().jobs_interrupted += 1;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: job {id} never finished: {j} (FICUS_CRASH_SEED={})",
                ctx.seed
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // A job whose 202 the kill cut off is committed all the same and runs now: wait until
    // every queue is empty, so nothing writes while the read models are compared.
    loop {
        let (_, q) = get(ctx, "/v1/queues", "admin").await;
        let busy: u64 = q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                ["ready", "delayed", "in_flight"]
                    .iter()
                    .map(|k| q[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            })
            .sum();
        if busy == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: queues never drained: {q} (FICUS_CRASH_SEED={})",
            ctx.seed
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every read-model answer the test knows how to ask for, at `min_position`.
async fn snapshot(ctx: &Ctx, products: &[String], min_position: u64) -> BTreeMap<String, Value> {
    let products = products.to_vec();
    let mut out = BTreeMap::new();
    for id in products {
        let (status, body) = get(
            ctx,
            &format!("/v1/products/{id}?min_position={min_position}"),
            "admin",
        )
        .await;
        out.insert(
            format!("product {id}"),
            json!({"status": status, "body": body}),
        );
    }
    for c in CUSTOMERS {
        let (status, body) = get(
            ctx,
            &format!("/v1/customers/{c}/orders?min_position={min_position}"),
            c,
        )
        .await;
        out.insert(
            format!("orders of {c}"),
            json!({"status": status, "body": body}),
        );
    }
    out
}

/// The invariants that must hold right after a restart.
async fn check(ctx: &Ctx, round: usize) {
    let seed = ctx.seed;
    // Checkpoints never go backwards: what the restarted server loaded is at least what
    // the killed one reported.
    let (_, projections) = get(ctx, "/v1/projections", "admin").await;
    for p in projections["projections"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let now = p["checkpoint"].as_u64().unwrap();
        let seen = ctx
            .acked
            .lock()
            .unwrap()
            .checkpoints
            .get(name)
            .copied()
            .unwrap_or(0);
        assert!(
            now >= seen,
            "round {round}: projection {name} checkpoint went back from {seen} to {now} (FICUS_CRASH_SEED={seed})"
        );
    }

    settle_jobs(ctx, round).await;
    let log = read_log(ctx).await;
    let mut versions: HashMap<String, u64> = HashMap::new();
    let mut at: HashMap<(String, u64), u64> = HashMap::new();
    let mut effects: HashMap<String, u32> = HashMap::new();
    for (i, e) in log.iter().enumerate() {
        let pos = e["position"].as_u64().unwrap();
        assert_eq!(
            pos,
            i as u64 + 1,
            "round {round}: gap in the log (FICUS_CRASH_SEED={seed})"
        );
        let stream = e["stream"].as_str().unwrap().to_owned();
        let v = versions.entry(stream.clone()).or_default();
        *v += 1;
        assert_eq!(
            e["version"].as_u64().unwrap(),
            *v,
            "round {round}: version gap in {stream} (FICUS_CRASH_SEED={seed})"
        );
        at.insert((stream, *v), pos);
        if let Some(cause) = e["metadata"]["causation_id"].as_str() {
            if cause.starts_with("job-item:") {
                *effects.entry(cause.to_owned()).or_default() += 1;
            }
        }
    }
    let acked_events = ctx.acked.lock().unwrap().events.clone();
    for ((stream, version), position) in &acked_events {
        assert_eq!(
            at.get(&(stream.clone(), *version)),
            Some(position),
            "round {round}: acknowledged event {stream}@{version} (position {position}) lost or moved (FICUS_CRASH_SEED={seed})"
        );
    }
    for (cause, n) in &effects {
        assert_eq!(
            *n, 1,
            "round {round}: job item {cause} took effect {n} times (FICUS_CRASH_SEED={seed})"
        );
    }

    // Read models equal a rebuild from the log (no writes arrive now: jobs have settled).
    let head = log.len() as u64;
    // All products while they are few; then a seeded sample, so a round's cost stays flat
    // however long the campaign runs.
    let mut products: Vec<String> = ctx.acked.lock().unwrap().products.keys().cloned().collect();
    if products.len() > SNAPSHOT_PRODUCTS {
        let mut rng = StdRng::seed_from_u64(ctx.seed ^ round as u64);
        products = (0..SNAPSHOT_PRODUCTS)
            .map(|_| products[rng.gen_range(0..products.len())].clone())
            .collect();
    }
    let before = snapshot(ctx, &products, head).await;
    let mut target = 0;
    for name in ["catalog", "orders"] {
        let r = ctx
            .http
            .post(format!("{}/v1/projections/{name}/rebuild", ctx.base))
            .bearer_auth(ctx.token("admin"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "rebuild {name}");
        let body: Value = r.json().await.unwrap();
        target = target.max(body["target_position"].as_u64().unwrap());
        // A rebuild starts again from zero: checkpoints are compared from here on.
        ctx.acked.lock().unwrap().checkpoints.insert(name.into(), 0);
    }
    assert_eq!(target, head, "round {round}: the log grew while quiet");
    // A rebuild replays the whole log, which outgrows the queries' own bounded wait in long
    // campaigns: wait for both checkpoints here first (bounded too).
    let deadline = Instant::now() + REBUILD_TIMEOUT;
    loop {
        let (_, p) = get(ctx, "/v1/projections", "admin").await;
        let list = p["projections"].as_array().unwrap();
        if list
            .iter()
            .all(|p| p["checkpoint"].as_u64() >= Some(target) && p["rebuild"].is_null())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: rebuild did not reach {target} in {REBUILD_TIMEOUT:?}: {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = snapshot(ctx, &products, target).await;
    for (k, v) in &before {
        assert_eq!(
            Some(v),
            after.get(k),
            "round {round}: read model differs from its rebuild at {k} (FICUS_CRASH_SEED={seed})"
        );
    }
}

/// At the end: every job completed and each of its products was repriced exactly once.
async fn check_jobs_done(ctx: &Ctx) {
    settle_jobs(ctx, usize::MAX).await;
    let log = read_log(ctx).await;
    let jobs = ctx.acked.lock().unwrap().jobs.clone();
    let products = ctx.acked.lock().unwrap().products.clone();
    let mut changes: HashMap<String, u32> = HashMap::new();
    for e in &log {
        if e["type"] == "ProductPriceChanged" {
            let stream = e["stream"].as_str().unwrap();
            if let Some(id) = stream.strip_prefix("product-") {
                if products.get(id).is_some_and(|s| s.starts_with("bulk:")) {
                    *changes.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
    }
    let mut repriced_products = 0;
    for (id, (_, category, total)) in &jobs {
        let (_, j) = get(ctx, &format!("/v1/jobs/{id}"), "admin").await;
        assert_eq!(j["state"], "completed", "job {id}: {j}");
        assert_eq!(j["done"].as_u64(), Some(*total), "job {id}: {j}");
        let (_, found) = get(
            ctx,
            &format!("/v1/products?category={category}&limit=100"),
            "admin",
        )
        .await;
        for p in found["products"].as_array().unwrap() {
            let pid = p["id"].as_str().unwrap();
            assert_eq!(
                changes.get(pid).copied().unwrap_or(0),
                1,
                "product {pid} of job {id} was not repriced exactly once (FICUS_CRASH_SEED={})",
                ctx.seed
            );
            repriced_products += 1;
        }
    }
    eprintln!(
        "crash campaign: {} jobs completed, {repriced_products} products repriced exactly once",
        jobs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_mixed_load_loses_nothing_acknowledged() {
    run_campaign(TestData::new(Backend::Sqlite)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_on_postgres_and_nats_loses_nothing_acknowledged() {
    if !Backend::Postgres.available() {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    }
    // A schema of its own (and a JetStream stream with NATS), dropped with `TestData`.
    run_campaign(TestData::new(Backend::Postgres)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_fleet_split_by_role_loses_nothing_acknowledged() {
    if !Backend::Postgres.available() {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    }
    run_campaign_on(TestData::new(Backend::Postgres), Some(&FLEET)).await;
}

async fn run_campaign(data: TestData) {
    run_campaign_on(data, None).await;
}

/// The campaign against one default process (`fleet` `None`) or a fleet of these roles.
async fn run_campaign_on(data: TestData, fleet: Option<&[&str]>) {
    let seed: u64 = std::env::var("FICUS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("FICUS_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!("crash campaign: FICUS_CRASH_SEED={seed} FICUS_CRASH_ROUNDS={rounds}");
    let budget = CAMPAIGN_BUDGET.max(Duration::from_secs(12) * rounds as u32);
    tokio::time::timeout(budget, campaign(seed, rounds, &data, fleet))
        .await
        .unwrap_or_else(|_| panic!("campaign took over {budget:?} (FICUS_CRASH_SEED={seed})"));
}

/// Starts the processes of one round, waits until each is ready, and answers them with the
/// addresses of the command side and of the query side.
async fn start(
    http: &reqwest::Client,
    data: &TestData,
    fleet: Option<&[&str]>,
) -> (Fleet, String, String) {
    let roles: Vec<Option<(usize, &str)>> = match fleet {
        Some(roles) => roles.iter().copied().enumerate().map(Some).collect(),
        None => vec![None],
    };
    // Held from the first spawn: a process that never gets ready fails the test, and the
    // others go with it.
    let mut children = Fleet(Vec::new());
    let mut bases = Vec::new();
    for role in &roles {
        let port = free_port();
        children.0.push(serve(data, port, *role));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for base in &bases {
        wait_ready(http, base).await;
    }
    let find = |wanted: &str| {
        roles
            .iter()
            .position(|r| r.is_none_or(|(_, role)| role == wanted))
            .map(|i| bases[i].clone())
            .expect("the fleet has that role")
    };
    (children, find("command"), find("query"))
}

async fn campaign(seed: u64, rounds: usize, data: &TestData, fleet: Option<&[&str]>) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tokens = HashMap::new();
    for s in SELLERS {
        tokens.insert(s.to_owned(), cli_token(SECRET, s, "seller"));
    }
    for c in CUSTOMERS {
        tokens.insert(c.to_owned(), cli_token(SECRET, c, "customer"));
    }
    tokens.insert("admin".to_owned(), cli_token(SECRET, "ada", "admin"));
    let tokens = Arc::new(tokens);
    let acked = Arc::new(Mutex::new(Acked::default()));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut kill_ms_total = 0u64;
    for round in 0..=rounds {
        let (mut children, base, query) = start(&http, data, fleet).await;
        let ctx = Ctx {
            http: http.clone(),
            base,
            query,
            tokens: tokens.clone(),
            acked: acked.clone(),
            seed,
        };
        check(&ctx, round).await;
        if round == rounds {
            // The last start only checks, then lets every job finish.
            check_jobs_done(&ctx).await;
            children.kill_all();
            break;
        }
        let mut tasks = Vec::new();
        for c in 0..CLIENTS {
            let client_rng = StdRng::seed_from_u64(rng.gen());
            tasks.push(tokio::spawn(client(ctx.clone(), client_rng, round, c)));
        }
        tasks.push(tokio::spawn(watch_checkpoints(ctx.clone())));
        let kill_after = rng.gen_range(100..700);
        kill_ms_total += kill_after;
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        children.kill_all();
        for t in tasks {
            // A failed assertion in a client fails the campaign here.
            t.await.unwrap();
        }
    }
    let a = acked.lock().unwrap();
    eprintln!(
        "crash campaign: seed {seed}, {}, {rounds} SIGKILLs (mean {} ms into the load), {} requests answered, {} commands acknowledged ({} events), {} products, {} bulk jobs ({} interrupted by a kill), all invariants held in {:.1} s",
        fleet.map_or("one process".to_owned(), |roles| format!("processes {}", roles.join(" + "))),
        kill_ms_total / rounds.max(1) as u64,
        a.answered,
        a.acked_commands,
        a.events.len(),
        a.products.len(),
        a.jobs.len(),
        a.jobs_interrupted,
        started.elapsed().as_secs_f64()
    );
    assert!(a.acked_commands > 0, "the workload acknowledged nothing");
    assert!(
        !a.jobs.is_empty() || rounds < 3,
        "no bulk job was acknowledged"
    );
}

/// The processes of one round. Dropped with any still running (a failed check), it kills them.
struct Fleet(Vec<Child>);

impl Fleet {
    /// SIGKILL to every process at once (all signalled before any is waited for).
    fn kill_all(&mut self) {
        for c in &mut self.0 {
            c.kill().expect("SIGKILL");
        }
        for mut c in self.0.drain(..) {
            c.wait().unwrap();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
