//! CQRS scaled out by role: a command process, a query process and two worker+projector
//! processes on one PostgreSQL (and NATS when configured) run a mixed workload; one of the
//! two, the ACTIVE projector and a worker, is killed with SIGKILL mid-job. The survivor takes
//! over the projections and the job; at the end every job item's effect happened exactly once,
//! every acknowledged write is in the log, and the read models the query process serves equal
//! those a rebuild from the event log produces.
//!
//! Needs `FICUS_TEST_PG_URL` (skipped without it; CI always sets it). With
//! `FICUS_TEST_NATS_URL` the processes also share the NATS JetStream bus.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{test_nats_url, BusConfig};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, get_json, serve_on_postgres, wait_ready, Proc};

const SECRET: &str = "scale-out-roles-secret";
const BOOKS: usize = 60;
const CUSTOMERS: usize = 8;
/// Upper bound of the whole scenario: a hang is a failure, not a stuck CI job.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(40);

fn serve(url: &str, schema: &str, role: &str) -> Proc {
    serve_on_postgres(url, schema, role, SECRET)
}

/// `POST path` with a bearer token: status and JSON body.
async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET url` that must answer 200 with a `Ficus-Position` of at least `min_position`.
async fn query(http: &reqwest::Client, url: &str, token: &str, min_position: u64) -> Value {
    let r = http.get(url).bearer_auth(token).send().await.unwrap();
    let status = r.status();
    let position: u64 = r
        .headers()
        .get("ficus-position")
        .map(|v| v.to_str().unwrap().parse().unwrap())
        .unwrap_or(0);
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{url}: {body}");
    assert!(
        position >= min_position,
        "{url} answered at {position}, asked {min_position}"
    );
    body
}

/// Everything the query process's read models answer, once they have reached `head`: every
/// product (by id), every customer's orders, and the order analytics of the last days.
async fn read_models(
    http: &reqwest::Client,
    q: &Proc,
    admin: &str,
    customers: &[String],
    head: u64,
) -> (BTreeMap<String, Value>, Vec<Value>, Value) {
    let mut products = BTreeMap::new();
    let mut offset = 0;
    loop {
        let url = format!(
            "{}/v1/products?limit=100&offset={offset}&min_position={head}",
            q.base
        );
        let page = query(http, &url, admin, head).await;
        let page = page["products"].as_array().unwrap().clone();
        for p in &page {
            products.insert(p["id"].as_str().unwrap().to_owned(), p.clone());
        }
        if page.len() < 100 {
            break;
        }
        offset += 100;
    }
    let mut orders = Vec::new();
    for c in customers {
        let url = format!("{}/v1/customers/{c}/orders?min_position={head}", q.base);
        orders.push(query(http, &url, admin, head).await);
    }
    let today = ficus_core::time::day_of_ms(ficus_store::now_ms());
    let url = format!(
        "{}/v1/analytics/orders?from={}&to={}&min_position={head}",
        q.base,
        ficus_core::time::format_date(today - 1),
        ficus_core::time::format_date(today + 1)
    );
    let analytics = query(http, &url, admin, head).await;
    (products, orders, analytics)
}

/// Which projections `p` runs as the active runner.
async fn active_projections(http: &reqwest::Client, p: &Proc, admin: &str) -> Vec<String> {
    projections_in_mode(http, p, admin, "active").await
}

/// Which projections `p` reports in `mode` (`active`, `standby`, `follower`).
async fn projections_in_mode(
    http: &reqwest::Client,
    p: &Proc,
    admin: &str,
    mode: &str,
) -> Vec<String> {
    let Ok(r) = http
        .get(format!("{}/v1/projections", p.base))
        .bearer_auth(admin)
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = r.json().await.unwrap_or(Value::Null);
    body["projections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["mode"] == mode)
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn roles_other_than_all_and_unknown_roles_are_refused_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["serve", "--role", "query", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("FICUS_AUTH_HS256_SECRET", SECRET)
        .output()
        .expect("run ficus serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--role all"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["serve", "--role", "worker,bogus", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("FICUS_AUTH_HS256_SECRET", SECRET)
        .output()
        .expect("run ficus serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"bogus\""), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_query_and_competing_worker_projectors_survive_a_kill() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario(url))
        .await
        .expect("the scenario must finish within its bound");
}

async fn scenario(url: String) {
    let (config, _schema) = fresh_schema(&url, "roles");
    let schema = config.schema.clone();
    let _stream = test_nats_url().map(|nats| StreamGuard(BusConfig::new(nats, &schema)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let seller = cli_token(SECRET, "sam", "seller");
    let admin = cli_token(SECRET, "ada", "admin");
    let customers: Vec<String> = (0..CUSTOMERS).map(|i| format!("cust{i}")).collect();
    let customer_tokens: Vec<String> = customers
        .iter()
        .map(|c| cli_token(SECRET, c, "customer"))
        .collect();

    // The first process migrates the schema; the others find it done.
    let cmd = serve(&url, &schema, "command");
    wait_ready(&http, &cmd.base).await;
    let qry = serve(&url, &schema, "query");
    let mut wp = [
        Some(serve(&url, &schema, "worker,projector")),
        Some(serve(&url, &schema, "worker,projector")),
    ];
    wait_ready(&http, &qry.base).await;
    for p in wp.iter().flatten() {
        wait_ready(&http, &p.base).await;
    }
    // Each process serves its part of the API only.
    let r = http
        .get(format!("{}/v1/customers/cust0/orders", cmd.base))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the command process answers no query");
    let (status, _) = post(
        &http,
        &format!("{}/v1/products", qry.base),
        &seller,
        json!({"name": "x", "category": "books", "price": 1, "currency": "EUR"}),
    )
    .await;
    assert_eq!(status, 405, "the query process takes no command");
    let r = http
        .get(format!("{}/v1/products", wp[0].as_ref().unwrap().base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a worker+projector serves no query");
    // The query process follows the projections; exactly one projector runs each.
    let ready = query(&http, &format!("{}/health/ready", qry.base), &admin, 0).await;
    assert_eq!(
        ready["checks"]["projection:catalog"]["mode"], "follower",
        "{ready}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Each projection is active in one worker+projector and standby in the other.
        let (mut active, mut standby) = (Vec::new(), Vec::new());
        for p in wp.iter().flatten() {
            active.extend(active_projections(&http, p, &admin).await);
            standby.extend(projections_in_mode(&http, p, &admin, "standby").await);
        }
        active.sort();
        standby.sort();
        if active == ["catalog", "orders"] && standby == active {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "projections never settled: active {active:?}, standby {standby:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Products through the command process, each readable at once from the query process.
    let mut books = Vec::new();
    let mut acked: Vec<(String, u64)> = Vec::new();
    let mut head = 0;
    for i in 0..BOOKS {
        let (status, body) = post(
            &http,
            &format!("{}/v1/products", cmd.base),
            &seller,
            json!({"name": format!("Book {i}"), "description": "paper back",
                   "category": "books", "price": 10 + i, "currency": "EUR", "stock": 100}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        let pos = body["position"].as_u64().unwrap();
        head = head.max(pos);
        acked.push((format!("product-{id}"), body["version"].as_u64().unwrap()));
        books.push(id);
    }
    let url = format!(
        "{}/v1/products/{}?min_position={head}",
        qry.base,
        books[BOOKS - 1]
    );
    assert_eq!(
        query(&http, &url, &admin, head).await["name"],
        format!("Book {}", BOOKS - 1)
    );

    // Every customer orders two books and places the order.
    let place_orders = |round: usize| {
        let http = &http;
        let cmd = &cmd;
        let books = &books;
        let customer_tokens = &customer_tokens;
        async move {
            let mut out = Vec::new();
            for (c, tok) in customer_tokens.iter().enumerate() {
                let items = json!({"items": [
                    {"product_id": books[(c + round) % BOOKS], "quantity": 1 + c},
                    {"product_id": books[(3 * c + 7 + round) % BOOKS], "quantity": 2},
                ]});
                let (status, body) =
                    post(http, &format!("{}/v1/orders", cmd.base), tok, items).await;
                assert_eq!(status, 201, "{body}");
                let id = body["id"].as_str().unwrap().to_owned();
                let (status, body) = post(
                    http,
                    &format!("{}/v1/orders/{id}/place", cmd.base),
                    tok,
                    json!({}),
                )
                .await;
                assert_eq!(status, 200, "{body}");
                out.push((
                    c,
                    id,
                    body["version"].as_u64().unwrap(),
                    body["position"].as_u64().unwrap(),
                ));
            }
            out
        }
    };
    for (c, id, version, pos) in place_orders(0).await {
        head = head.max(pos);
        acked.push((format!("order-{id}"), version));
        // Read your own write on the query process.
        let url = format!(
            "{}/v1/customers/{}/orders?min_position={pos}",
            qry.base, customers[c]
        );
        let list = query(&http, &url, &customer_tokens[c], pos).await;
        assert_eq!(list["orders"][0]["id"], id.as_str());
    }

    // Two bulk jobs through the command process: reprice every book (one item each) and
    // notify the buyers of book 7 (one item per customer who ordered it).
    let (status, body) = post(
        &http,
        &format!("{}/v1/jobs", cmd.base),
        &seller,
        json!({"kind": "reprice_category", "params": {"category": "books", "percent": 10}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["total"], BOOKS);
    let reprice = body["id"].as_str().unwrap().to_owned();
    let notified_book = &books[7];
    let (status, body) = post(
        &http,
        &format!("{}/v1/jobs", cmd.base),
        &seller,
        json!({"kind": "notify_buyers", "params": {"product_id": notified_book, "message": "restocked"}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let notify = body["id"].as_str().unwrap().to_owned();
    let buyers: Vec<&String> = customers
        .iter()
        .enumerate()
        .filter(|(c, _)| [c % BOOKS, (3 * c + 7) % BOOKS].contains(&7))
        .map(|(_, name)| name)
        .collect();
    assert_eq!(body["total"], buyers.len());

    // As soon as the reprice job is under way, SIGKILL the process running the catalog
    // projection: the active projector, and a worker holding leases.
    let deadline = Instant::now() + Duration::from_secs(10);
    let done_at_kill = loop {
        let j = get_json(&http, &format!("{}/v1/jobs/{reprice}", cmd.base), &seller).await;
        let done = j["done"].as_u64().unwrap();
        if done > 0 {
            break done;
        }
        assert!(Instant::now() < deadline, "the job never started: {j}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let mut victim = None;
    for (i, p) in wp.iter().enumerate() {
        let p = p.as_ref().unwrap();
        if active_projections(&http, p, &admin)
            .await
            .contains(&"catalog".to_owned())
        {
            victim = Some(i);
        }
    }
    let victim = victim.expect("one worker+projector leads the catalog");
    let mut killed = wp[victim].take().unwrap();
    killed.child.kill().expect("SIGKILL");
    killed.child.wait().unwrap();
    let survivor = wp[1 - victim].as_ref().unwrap();
    assert!(
        done_at_kill < BOOKS as u64,
        "the kill must land mid-job (done {done_at_kill} of {BOOKS})"
    );

    // Writes go on; the query process reads them once the survivor has taken over.
    for (c, id, version, pos) in place_orders(1).await {
        head = head.max(pos);
        acked.push((format!("order-{id}"), version));
        let url = format!(
            "{}/v1/customers/{}/orders?min_position={pos}",
            qry.base, customers[c]
        );
        let list = query(&http, &url, &customer_tokens[c], pos).await;
        assert_eq!(list["orders"][0]["id"], id.as_str());
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut active = active_projections(&http, survivor, &admin).await;
        active.sort();
        if active == ["catalog", "orders"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survivor leads only {active:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The survivor finishes both jobs; the killed worker's leases expire and run again.
    for job in [&reprice, &notify] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let j = loop {
            let j = get_json(&http, &format!("{}/v1/jobs/{job}", cmd.base), &seller).await;
            if j["state"] != "running" {
                break j;
            }
            assert!(Instant::now() < deadline, "job never finished: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(j["state"], "completed", "{j}");
        assert_eq!(j["done"], j["total"], "{j}");
        assert_eq!(j["dead"], 0, "{j}");
    }

    // Every item's effect happened exactly once: one price change per book, to 1.1 × price;
    // one notification per buyer.
    for (i, id) in books.iter().enumerate() {
        let r = get_json(
            &http,
            &format!("{}/v1/streams/product-{id}", cmd.base),
            &admin,
        )
        .await;
        let changes = events_of_type(&r, "ProductPriceChanged");
        assert_eq!(changes.len(), 1, "book {i}: {changes:?}");
        assert_eq!(changes[0]["data"]["new_price"], (10 + i as i64) * 110);
        let last = r["events"].as_array().unwrap().last().unwrap();
        head = head.max(last["position"].as_u64().unwrap());
    }
    for c in &buyers {
        let r = get_json(
            &http,
            &format!("{}/v1/streams/notification-{notify}-{c}", cmd.base),
            &admin,
        )
        .await;
        let events = r["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{c}: {r}");
        assert_eq!(events[0]["type"], "CustomerNotified");
        head = head.max(events[0]["position"].as_u64().unwrap());
    }
    // Every acknowledged write is in the log, at the version it was acknowledged with.
    for (stream, version) in &acked {
        let r = get_json(&http, &format!("{}/v1/streams/{stream}", cmd.base), &admin).await;
        let versions: Vec<u64> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["version"].as_u64().unwrap())
            .collect();
        assert!(versions.contains(version), "{stream} lacks v{version}: {r}");
    }

    // The read models the query process serves, kept live across the kill, equal those a
    // rebuild from the event log produces.
    let live = read_models(&http, &qry, &admin, &customers, head).await;
    assert_eq!(live.0.len(), BOOKS);
    // Created with stock (two events), then repriced once.
    assert!(
        live.0.values().all(|p| p["version"] == 3),
        "repriced once each: {:?}",
        live.0.values().next()
    );
    assert_eq!(
        live.1
            .iter()
            .map(|o| o["orders"].as_array().unwrap().len())
            .sum::<usize>(),
        2 * CUSTOMERS
    );
    for name in ["catalog", "orders"] {
        let (status, body) = post(
            &http,
            &format!("{}/v1/projections/{name}/rebuild", qry.base),
            &admin,
            json!({}),
        )
        .await;
        assert_eq!(status, 202, "{name}: {body}");
    }
    let rebuilt = read_models(&http, &qry, &admin, &customers, head).await;
    assert_eq!(live.0, rebuilt.0, "catalog");
    assert_eq!(live.1, rebuilt.1, "customer orders");
    assert_eq!(live.2, rebuilt.2, "analytics");
    assert_eq!(
        live.2["days"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["orders"].as_u64().unwrap())
            .sum::<u64>(),
        2 * CUSTOMERS as u64,
        "every placed order counted once: {}",
        live.2
    );
    drop((cmd, qry, killed, wp));
}
