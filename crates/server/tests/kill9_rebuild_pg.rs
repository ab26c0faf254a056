//! Kill -9 of the PostgreSQL process performing a blue/green rebuild of the catalog, mid-replay: the other process takes over from the checkpoint row and finishes the rebuild; every query to the surviving process answers the complete catalog before, during and after; the rebuild ends with the catalog unchanged and no rebuild schema left behind. Skipped without FICUS_TEST_PG_URL.

use std::time::{Duration, Instant};

use ficus_store::postgres::testing::{fresh_schema, test_url};
use serde_json::{json, Value};

mod common;
use common::{cli_token, get_json, serve_on_postgres, wait_ready, Proc};

const SECRET: &str = "kill9-rebuild-pg-secret";
const PRODUCTS: u64 = 400;
const WAIT: Duration = Duration::from_secs(60);

async fn plants(http: &reqwest::Client, p: &Proc, token: &str) -> u64 {
    let r = http
        .get(format!("{}/v1/products?category=plants&limit=1", p.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a catalog query failed");
    r.json::<Value>().await.unwrap()["total"].as_u64().unwrap()
}

async fn catalog(http: &reqwest::Client, p: &Proc, admin: &str) -> Value {
    let list = get_json(http, &format!("{}/v1/projections", p.base), admin).await;
    list["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "catalog")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_the_rebuilding_process_is_taken_over_and_finished() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _schema) = fresh_schema(&url, "rebuildkill");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let (seller, admin) = (
        cli_token(SECRET, "sam", "seller"),
        cli_token(SECRET, "ada", "admin"),
    );
    // One after the other: the first creates the schema and applies the migrations.
    let mut procs = Vec::new();
    for _ in 0..2 {
        let p = serve_on_postgres(&url, &config.schema, "all", SECRET);
        wait_ready(&http, &p.base).await;
        procs.push(p);
    }
    for i in 0..PRODUCTS {
        let r = http
            .post(format!("{}/v1/products", procs[0].base))
            .bearer_auth(&seller)
            .json(&json!({"name": format!("Fig {i}"), "category": "plants", "price": 10, "currency": "EUR", "stock": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let deadline = Instant::now() + WAIT;
    while plants(&http, &procs[0], &admin).await != PRODUCTS {
        assert!(Instant::now() < deadline, "the catalog never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The active process performs the rebuild; kill it once its replay is under way.
    let mut active = None;
    for (i, p) in procs.iter().enumerate() {
        if catalog(&http, p, &admin).await["mode"] == "active" {
            active = Some(i);
        }
    }
    let active = active.expect("one process is active");
    let r = http
        .post(format!(
            "{}/v1/projections/catalog/rebuild",
            procs[active].base
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + WAIT;
    loop {
        let c = catalog(&http, &procs[active], &admin).await;
        let (position, target) = (
            c["rebuild"]["position"].as_u64(),
            c["rebuild"]["target"].as_u64(),
        );
        if let (Some(p), Some(t)) = (position, target) {
            if p > 0 && p < t {
                break;
            }
        }
        assert!(
            c["rebuild"].is_object() || Instant::now() < deadline,
            "the replay was never seen under way: {c}"
        );
        assert!(Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut killed = procs.remove(active);
    killed.child.kill().unwrap(); // SIGKILL
    killed.child.wait().unwrap();
    let survivor = &procs[0];

    // The survivor takes over, finishes the rebuild, and answers completely throughout.
    let deadline = Instant::now() + WAIT;
    loop {
        assert_eq!(plants(&http, survivor, &admin).await, PRODUCTS);
        let c = catalog(&http, survivor, &admin).await;
        if c["mode"] == "active" && c["rebuild"].is_null() && c["state"] == "Live" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild was not finished: {c}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(plants(&http, survivor, &admin).await, PRODUCTS);
    let pool = ficus_store::postgres::pool(&config).unwrap();
    let client = pool.get().await.unwrap();
    let left: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM pg_namespace WHERE starts_with(nspname, $1)",
            &[&format!("{}__", config.schema)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the rebuild schema was moved in and dropped");
}
