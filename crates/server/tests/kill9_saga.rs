//! Kill -9 of the server at every record of the order-fulfilment saga — right after each
//! record is durable, and right before each step's success is recorded (its effect done, not
//! yet written down) — then a restart: the saga resumes and finishes, the order ends
//! `confirmed` (or `rejected` with every compensation done on the failure path), and no step
//! took effect twice (one charge on the payment service, one reservation, one shipment).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ficus_gateway::payments::{service, PaymentService};
use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, free_port, get_json, wait_ready};

const SECRET: &str = "kill9-saga-secret";
/// Longest a saga may take to finish after the restart.
const RESUME_WAIT: Duration = Duration::from_secs(20);

fn serve(dir: &std::path::Path, port: u16, payments: &str, abort_at: Option<&str>) -> Child {
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
    // The saga job leased by the killed process comes back after this long.
    .env("FICUS_JOB_VISIBILITY_MS", "500")
    .env_remove(ficus_server::app::ABORT_AT_SAGA_RECORD_ENV)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(spec) = abort_at {
        cmd.env(ficus_server::app::ABORT_AT_SAGA_RECORD_ENV, spec);
    }
    cmd.spawn().expect("spawn ficus serve")
}

async fn payment_service(fail_rate: f64) -> (PaymentService, String) {
    let payments = PaymentService::new(fail_rate);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = service(payments.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (payments, url)
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

/// `ShipmentCreated` events in a stream answer (a stream never written is a 404: none).
fn created(log: &Value) -> usize {
    if log["events"].is_array() {
        events_of_type(log, "ShipmentCreated").len()
    } else {
        0
    }
}

/// Waits for the process to die on its own (the injected abort).
fn wait_crash(child: &mut Child, spec: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                !status.success(),
                "{spec}: the server exited cleanly instead of crashing"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: the server never reached the crash point"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One crash: the server aborts at `spec` during an order's saga, is restarted, and the saga
/// must end `want` (`completed` or `failed`) with each effect taken once.
async fn crash_and_resume(spec: &str, fail_rate: f64, want: &str) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (payments, payments_url) = payment_service(fail_rate).await;
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
    .await;
    let product = product["id"].as_str().unwrap().to_owned();
    let order = post(
        &http,
        format!("{base}/v1/orders"),
        &ann,
        json!({"items": [{"product_id": product, "quantity": 3}]}),
    )
    .await;
    let order = order["id"].as_str().unwrap().to_owned();
    post(
        &http,
        format!("{base}/v1/orders/{order}/place"),
        &ann,
        json!({}),
    )
    .await;
    wait_crash(&mut child, spec);
    if fail_rate > 0.0 {
        // The service recovers while the server is down: compensations can go through.
        payments.set_fail_rate(0.0);
    }

    let mut child = serve(dir.path(), port, &payments_url, None);
    wait_ready(&http, &base).await;
    let deadline = Instant::now() + RESUME_WAIT;
    let saga = loop {
        let s = get_json(
            &http,
            &format!("{base}/v1/sagas/fulfilment-{order}"),
            &admin,
        )
        .await;
        if s["status"] == "completed" || s["status"] == "failed" {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: saga not finished after restart: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(saga["status"], want, "{spec}: {saga}");

    // No step took effect twice.
    let ledger: Value = reqwest::get(format!("{payments_url}/v1/charges"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let product_log = get_json(
        &http,
        &format!("{base}/v1/streams/product-{product}"),
        &admin,
    )
    .await;
    let shipment_log = get_json(
        &http,
        &format!("{base}/v1/streams/shipment-{order}"),
        &admin,
    )
    .await;
    let saga_log = get_json(
        &http,
        &format!("{base}/v1/streams/saga-fulfilment-{order}"),
        &admin,
    )
    .await;
    assert_eq!(
        events_of_type(&product_log, "StockReserved").len(),
        1,
        "{spec}: {product_log}"
    );
    for step in saga["steps"].as_array().unwrap() {
        let name = step["name"].as_str().unwrap();
        let succeeded = events_of_type(&saga_log, "StepSucceeded")
            .into_iter()
            .filter(|e| e["data"]["step"] == name)
            .count();
        let once = if want == "completed" {
            1
        } else {
            succeeded.min(1)
        };
        assert_eq!(
            succeeded, once,
            "{spec}: step {name} recorded {succeeded} times: {saga_log}"
        );
    }
    let key = format!("fulfilment-{order}:charge_payment");
    if want == "completed" {
        assert_eq!(ledger["effects"], 1, "{spec}: exactly one charge: {ledger}");
        assert_eq!(
            ledger["charges"][&key]["refunded"], false,
            "{spec}: {ledger}"
        );
        assert_eq!(created(&shipment_log), 1, "{spec}");
        assert!(
            events_of_type(&product_log, "StockReleased").is_empty(),
            "{spec}"
        );
    } else {
        // Every started step compensated, none skipped: the reservation released once, no
        // money kept, no shipment, the order rejected.
        for step in ["order", "reserve_stock", "charge_payment"] {
            let st = saga["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["name"] == step)
                .unwrap();
            assert_eq!(st["status"], "compensated", "{spec}: {saga}");
        }
        assert_eq!(
            events_of_type(&product_log, "StockReleased").len(),
            1,
            "{spec}"
        );
        let kept = ledger["charges"][&key]
            .as_object()
            .is_some_and(|c| c["refunded"] == false);
        assert!(!kept, "{spec}: the money was not given back: {ledger}");
        assert!(created(&shipment_log) == 0, "{spec}");
    }
    let want_order = if want == "completed" {
        "confirmed"
    } else {
        "rejected"
    };
    let want_stock = if want == "completed" { 7 } else { 10 };
    let deadline = Instant::now() + RESUME_WAIT;
    loop {
        let orders = get_json(&http, &format!("{base}/v1/customers/ann/orders"), &ann).await;
        let p = get_json(&http, &format!("{base}/v1/products/{product}"), &ann).await;
        let status = orders["orders"][0]["status"].clone();
        if status == want_order && p["stock_total"] == want_stock {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: order {status}, product {p}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

// The success path records 12 events: SagaStarted, then StepStarted + StepSucceeded for the
// order, reserve_stock, charge_payment, create_shipment and confirm_order steps, then
// SagaCompleted.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_each_of_the_first_six_records() {
    for n in 1..=6 {
        crash_and_resume(&format!("after:{n}"), 0.0, "completed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_right_after_each_of_the_last_six_records() {
    for n in 7..=12 {
        crash_and_resume(&format!("after:{n}"), 0.0, "completed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_each_step_took_effect_before_it_was_recorded() {
    // Versions 3, 5, 7, 9, 11 are the StepSucceeded records: the step's effect (the order
    // read, the reservation, the charge, the shipment, the confirmation) happened first.
    for n in [3, 5, 7, 9, 11] {
        crash_and_resume(&format!("before:{n}"), 0.0, "completed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_compensating_a_failed_payment() {
    // Every charge fails: 4 attempts (records 6..=13, the last one giving up), then the
    // compensations from record 14 on (refund, release, reject).
    for spec in ["after:13", "after:14", "before:15"] {
        crash_and_resume(spec, 1.0, "failed").await;
    }
}
