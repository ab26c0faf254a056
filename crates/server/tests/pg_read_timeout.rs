//! The PostgreSQL query side answers in bounded time: a query that cannot get its answer (here
//! one blocked behind a lock another session holds on the read models' checkpoint table, as it
//! would be behind a connection that stopped answering) is refused with 503
//! `store_unavailable` and `Retry-After` once its bound (a few statement timeouts) has passed, rather than
//! waiting as long as the lock is held; once the lock goes the same query answers 200. Needs
//! `FICUS_TEST_PG_URL` (skipped without it).

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestData};
use ficus_server::app::{self, StoreConfig};
use serde_json::Value;

const STATEMENT_TIMEOUT: Duration = Duration::from_millis(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_blocked_behind_a_lock_is_refused_within_its_bound() {
    if !Backend::Postgres.available() {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    }
    let data = TestData::new(Backend::Postgres);
    let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
    if let StoreConfig::Postgres(pg) = &mut cfg.store {
        pg.statement_timeout = STATEMENT_TIMEOUT;
    }
    let running = app::start(cfg).await.expect("server starts");
    let seller = running.token("sam", &["seller"], 3600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let id = common::create_lamp(&http, &running.url(), &seller).await;
    let product = format!("{}/v1/products/{id}", running.url());
    let get = || http.get(&product).bearer_auth(&seller).send();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the product never showed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another session holds the checkpoint table every query locks first.
    let holder_pool = ficus_store::postgres::pool(data.pg().unwrap()).unwrap();
    let mut holder = holder_pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE ficus_projection_checkpoints IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let r = get().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "store_unavailable", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("no answer"),
            "{body}"
        );
        // A read is a short transaction: bounded by a few statement timeouts in all.
        let bound = STATEMENT_TIMEOUT * ficus_store::postgres::STATEMENTS_PER_TRANSACTION;
        assert!(
            waited >= bound && waited < bound * 2,
            "refused after {waited:?}"
        );
    }
    tx.rollback().await.unwrap();
    drop(holder);

    // The connections left waiting were closed: the next queries answer at once.
    for _ in 0..3 {
        let started = Instant::now();
        let r = get().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(started.elapsed() < STATEMENT_TIMEOUT);
    }
    running.stop().await.unwrap();
}
