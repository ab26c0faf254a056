//! Kill -9 of the embedded server between an order's append and its side effect: the saga start is recorded in the outbox in the append's transaction, the relay is killed before it enqueues the saga's job (and, in the second case, after enqueuing it but before deleting the row); after the restart the saga runs exactly once (one start, one charge, one reservation, one shipment), the order ends confirmed and the outbox is empty.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ficus_gateway::payments::{service, PaymentService};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, free_port, get_json, wait_ready};

const SECRET: &str = "kill9-outbox-secret";
const WAIT: Duration = Duration::from_secs(30);

fn serve(dir: &std::path::Path, port: u16, payments: &str, abort: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--payments",
        payments,
        "--data-dir",
    ])
    .arg(dir)
    .env("FICUS_AUTH_HS256_SECRET", SECRET)
    .env("FICUS_JOB_VISIBILITY_MS", "500")
    .env_remove(ficus_server::app::ABORT_IN_OUTBOX_ENV)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(spec) = abort {
        cmd.env(ficus_server::app::ABORT_IN_OUTBOX_ENV, spec);
    }
    cmd.spawn().expect("spawn ficus serve")
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.json().await.unwrap()
}

fn wait_crash(child: &mut Child, spec: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "{spec}: exited cleanly instead of crashing"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: never reached the crash point"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn crash_between_append_and_effect(spec: &str) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let payments = PaymentService::new(0.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let payments_url = format!("http://{}", listener.local_addr().unwrap());
    let app = service(payments.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (seller, ann, admin) = (
        cli_token(SECRET, "sam", "seller"),
        cli_token(SECRET, "ann", "customer"),
        cli_token(SECRET, "ada", "admin"),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port, &payments_url, Some(spec));
    wait_ready(&http, &base).await;
    let product = post(
        &http,
        format!("{base}/v1/products"),
        &seller,
        json!({"name": "Fig", "category": "plants", "price": 10, "currency": "EUR", "stock": 10}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = post(
        &http,
        format!("{base}/v1/orders"),
        &ann,
        json!({"items": [{"product_id": product, "quantity": 3}]}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The order's events and the outbox row commit together. The relay may abort the
    // process before the answer reaches us: then the answer is lost, not the append (the
    // restart below shows the effect all the same).
    let placed = http
        .post(format!("{base}/v1/orders/{order}/place"))
        .bearer_auth(&ann)
        .json(&json!({}))
        .send()
        .await;
    if let Ok(r) = placed {
        assert!(
            r.status().is_success(),
            "{spec}: place answered {}",
            r.status()
        );
    }
    wait_crash(&mut child, spec);

    let mut child = serve(dir.path(), port, &payments_url, None);
    wait_ready(&http, &base).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let s = get_json(
            &http,
            &format!("{base}/v1/sagas/fulfilment-{order}"),
            &admin,
        )
        .await;
        if s["status"] == "completed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: saga not completed after restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let saga_log = get_json(
        &http,
        &format!("{base}/v1/streams/saga-fulfilment-{order}"),
        &admin,
    )
    .await;
    assert_eq!(
        events_of_type(&saga_log, "SagaStarted").len(),
        1,
        "{spec}: {saga_log}"
    );
    let product_log = get_json(
        &http,
        &format!("{base}/v1/streams/product-{product}"),
        &admin,
    )
    .await;
    assert_eq!(
        events_of_type(&product_log, "StockReserved").len(),
        1,
        "{spec}"
    );
    let shipment_log = get_json(
        &http,
        &format!("{base}/v1/streams/shipment-{order}"),
        &admin,
    )
    .await;
    assert_eq!(
        events_of_type(&shipment_log, "ShipmentCreated").len(),
        1,
        "{spec}"
    );
    let ledger: Value = reqwest::get(format!("{payments_url}/v1/charges"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ledger["effects"], 1, "{spec}: exactly one charge: {ledger}");
    let deadline = Instant::now() + WAIT;
    loop {
        let orders = get_json(&http, &format!("{base}/v1/customers/ann/orders"), &ann).await;
        if orders["orders"][0]["status"] == "confirmed" {
            break;
        }
        assert!(Instant::now() < deadline, "{spec}: {orders}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();

    // The delivered row is gone from the outbox.
    let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
        .expect("reopen the event log");
    assert_eq!(store.outbox_len().await.unwrap(), 0, "{spec}");
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_before_the_effect_delivers_it_once_after_restart() {
    crash_between_append_and_effect("before_effect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_the_effect_does_not_repeat_it() {
    crash_between_append_and_effect("after_effect").await;
}
