//! Several `ficus serve` processes on one PostgreSQL act as one system: two API processes take
//! writes and queries and compete to run the PostgreSQL projections, two worker processes
//! compete for a bulk job's items, and one worker is killed with SIGKILL mid-job. At the end
//! the job is done with every item's effect exactly once, every acknowledged write is in the
//! log, and the read models kept live equal those a rebuild from the log produces.
//!
//! Needs `FICUS_TEST_PG_URL` (skipped without it; CI always sets it). With
//! `FICUS_TEST_NATS_URL` the processes also share the NATS JetStream bus.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{test_nats_url, BusConfig};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, get_json, serve_on_postgres, wait_ready, Proc};

const SECRET: &str = "scale-out-secret";
const BOOKS: usize = 80;

fn serve(url: &str, schema: &str, role: &str) -> Proc {
    serve_on_postgres(url, schema, role, SECRET)
}

fn token(sub: &str, roles: &str) -> String {
    cli_token(SECRET, sub, roles)
}

async fn create_product(
    http: &reqwest::Client,
    p: &Proc,
    seller: &str,
    name: &str,
    category: &str,
    price: usize,
) -> (String, u64) {
    let r = http
        .post(format!("{}/v1/products", p.base))
        .bearer_auth(seller)
        .json(&json!({"name": name, "category": category, "price": price, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["position"].as_u64().unwrap(),
    )
}

/// Every product of `category` as the process's catalog read model has it, by id, once the
/// read model has reached `position`.
async fn catalog(
    http: &reqwest::Client,
    p: &Proc,
    category: &str,
    position: u64,
) -> BTreeMap<String, Value> {
    let mut all = BTreeMap::new();
    let mut offset = 0;
    loop {
        let r = http
            .get(format!(
                "{}/v1/products?category={category}&limit=100&offset={offset}&min_position={position}",
                p.base
            ))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{} {body}", p.base);
        let page = body["products"].as_array().unwrap();
        for prod in page {
            all.insert(prod["id"].as_str().unwrap().to_owned(), prod.clone());
        }
        if page.len() < 100 {
            return all;
        }
        offset += 100;
    }
}

async fn job_state(http: &reqwest::Client, p: &Proc, seller: &str, id: &str) -> Value {
    get_json(http, &format!("{}/v1/jobs/{id}", p.base), seller).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_share_the_log_and_the_queue_and_survive_a_killed_worker() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _schema) = fresh_schema(&url, "scale");
    let schema = config.schema.clone();
    let _stream = test_nats_url().map(|nats| StreamGuard(BusConfig::new(nats, &schema)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let seller = token("sam", "seller");
    let admin = token("ada", "admin");

    // The first process migrates the schema; the others find it done.
    let api1 = serve(&url, &schema, "api,projector");
    wait_ready(&http, &api1.base).await;
    let api2 = serve(&url, &schema, "api,projector");
    let worker1 = serve(&url, &schema, "worker");
    let mut worker2 = serve(&url, &schema, "worker");
    for p in [&api2, &worker1, &worker2] {
        wait_ready(&http, &p.base).await;
    }
    // A worker process serves health and metrics, not the API.
    let r = http
        .get(format!("{}/v1/products", worker1.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Writes through both API processes.
    let mut books = Vec::new();
    let mut head = 0;
    for i in 0..BOOKS {
        let via = if i % 2 == 0 { &api1 } else { &api2 };
        let (id, pos) =
            create_product(&http, via, &seller, &format!("Book {i}"), "books", 10 + i).await;
        head = head.max(pos);
        books.push(id);
    }
    // Each API process sees the other's writes.
    assert_eq!(catalog(&http, &api1, "books", head).await.len(), BOOKS);
    assert_eq!(catalog(&http, &api2, "books", head).await.len(), BOOKS);

    // A bulk job submitted to one API process runs on the worker processes.
    let r = http
        .post(format!("{}/v1/jobs", api2.base))
        .bearer_auth(&seller)
        .json(&json!({"kind": "reprice_category", "params": {"category": "books", "percent": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["total"], BOOKS);

    // Kill one worker as soon as the job has started, while writes keep coming.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done_at_kill = loop {
        let done = job_state(&http, &api1, &seller, &job_id).await["done"]
            .as_u64()
            .unwrap();
        if done > 0 || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    worker2.child.kill().expect("SIGKILL");
    worker2.child.wait().unwrap();
    assert!(
        done_at_kill > 0 && done_at_kill < BOOKS as u64,
        "the kill must land mid-job (done {done_at_kill} of {BOOKS})"
    );
    let mut games = Vec::new();
    for i in 0..20 {
        let via = if i % 2 == 0 { &api2 } else { &api1 };
        let (id, pos) =
            create_product(&http, via, &seller, &format!("Game {i}"), "games", 5 + i).await;
        head = head.max(pos);
        games.push(id);
    }

    // The surviving worker finishes the job; the killed worker's leases expire and run again.
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let j = job_state(&http, &api1, &seller, &job_id).await;
        if j["state"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "job never finished: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], BOOKS, "{job}");
    assert_eq!(job["dead"], 0, "{job}");

    // Every item's effect happened exactly once: one price change per book, to 1.1 × price.
    for (i, id) in books.iter().enumerate() {
        let r = get_json(
            &http,
            &format!("{}/v1/streams/product-{id}", api2.base),
            &admin,
        )
        .await;
        let changes = events_of_type(&r, "ProductPriceChanged");
        assert_eq!(changes.len(), 1, "book {i}: {changes:?}");
        assert_eq!(changes[0]["data"]["new_price"], (10 + i as i64) * 110);
        head = head.max(
            r["events"].as_array().unwrap().last().unwrap()["position"]
                .as_u64()
                .unwrap(),
        );
    }
    // Every acknowledged write is in the log.
    for id in &games {
        let r = get_json(
            &http,
            &format!("{}/v1/streams/product-{id}", api1.base),
            &admin,
        )
        .await;
        assert_eq!(r["events"].as_array().unwrap().len(), 1, "{r}");
    }

    // The read model kept up to date live equals the one a rebuild from the log alone makes.
    let mut live = BTreeMap::new();
    for category in ["books", "games"] {
        let kept = catalog(&http, &api1, category, head).await;
        assert_eq!(kept.len(), if category == "books" { BOOKS } else { 20 });
        assert_eq!(catalog(&http, &api2, category, head).await, kept);
        live.insert(category, kept);
    }
    let r = http
        .post(format!("{}/v1/projections/catalog/rebuild", api2.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    for category in ["books", "games"] {
        let rebuilt = catalog(&http, &api1, category, head).await;
        assert_eq!(live[category], rebuilt, "{category} after the rebuild");
    }
    // The rebuilt read model has each book at its repriced version (created, then repriced).
    assert!(live["books"].values().all(|p| p["version"] == 2));
    // With the bus: readiness reports it, and the relays published every event, leaving no
    // backlog.
    if test_nats_url().is_some() {
        let ready: Value = http
            .get(format!("{}/health/ready", api1.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["checks"]["bus"]["ok"], true, "{ready}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut published = 0;
            let mut backlog = 0;
            for p in [&api1, &api2] {
                let text = common::metrics_text(&http, &p.base).await;
                published += common::metric_value(&text, "ficus_outbox_published_total") as u64;
                backlog = common::metric_value(&text, "ficus_outbox_backlog_events") as u64;
            }
            if backlog == 0 && published > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "outbox never drained: {backlog} left"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop((api1, api2, worker1, worker2));
}
