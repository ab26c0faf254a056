//! Readiness applies the projections' lag bound: a query process whose read models fall
//! further behind the log than `--ready-max-lag-events` answers 503 on `/health/ready`, names
//! the lagging projection and why, and turns ready again once a projector catches up; a
//! command process on the same log stays ready (it serves no read model). On the embedded
//! store the check reports the bound it applies.
//!
//! The PostgreSQL part needs `FICUS_TEST_PG_URL` (skipped without it; CI always sets it).

use std::time::{Duration, Instant};

use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{test_nats_url, BusConfig};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use serde_json::{json, Value};

mod common;
use common::{cli_token, free_port, serve_on_postgres_with, wait_ready};

const SECRET: &str = "ready-lag-secret";

async fn ready(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = http
        .get(format!("{base}/health/ready"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Polls readiness (at most 30 s) until `pred` holds of its status and body.
async fn ready_until(
    http: &reqwest::Client,
    base: &str,
    what: &str,
    pred: impl Fn(u16, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready(http, base).await;
        if pred(status, &body) {
            return body;
        }
        assert!(Instant::now() < deadline, "never {what}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_process_behind_its_lag_bound_is_not_ready() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _schema) = fresh_schema(&url, "readylag");
    let schema = config.schema.clone();
    let _stream = test_nats_url().map(|nats| StreamGuard(BusConfig::new(nats, &schema)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let bound = [("FICUS_READY_MAX_LAG_EVENTS", "5")];
    let cmd = serve_on_postgres_with(&url, &schema, "command", SECRET, &bound);
    wait_ready(&http, &cmd.base).await;
    // No projector runs yet: the query process only follows the checkpoints.
    let qry = serve_on_postgres_with(&url, &schema, "query", SECRET, &bound);
    wait_ready(&http, &qry.base).await;

    let seller = cli_token(SECRET, "sam", "seller");
    for i in 0..12 {
        let r = http
            .post(format!("{}/v1/products", cmd.base))
            .bearer_auth(&seller)
            .json(
                &json!({"name": format!("Lamp {i}"), "category": "home", "price": 5,
                          "currency": "EUR"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }

    let body = ready_until(&http, &qry.base, "unready on lag", |s, _| s == 503).await;
    assert_eq!(body["status"], "not_ready", "{body}");
    let catalog = &body["checks"]["projection:catalog"];
    assert_eq!(catalog["ok"], false, "{body}");
    assert_eq!(catalog["mode"], "follower", "{body}");
    assert_eq!(catalog["max_lag_events"], 5, "{body}");
    assert!(catalog["lag_events"].as_u64().unwrap() > 5, "{body}");
    assert!(
        catalog["error"].as_str().unwrap().starts_with("lagging:"),
        "{body}"
    );
    // The backends themselves are fine: only the lag makes it unready.
    assert_eq!(body["checks"]["event_store"]["ok"], true, "{body}");
    // The command process serves no read model: its readiness ignores the lag.
    let (status, body) = ready(&http, &cmd.base).await;
    assert_eq!(status, 200, "{body}");

    // A projector catches the read models up, and the query process is ready again.
    let proj = serve_on_postgres_with(&url, &schema, "projector", SECRET, &bound);
    let body = ready_until(&http, &qry.base, "ready after catch-up", |s, _| s == 200).await;
    assert_eq!(
        body["checks"]["projection:catalog"]["lag_events"], 0,
        "{body}"
    );
    drop(proj);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_reports_the_bound_it_applies() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--ready-max-lag-events", "250", "--ready-max-lag-ms", "0"])
            .env("FICUS_AUTH_HS256_SECRET", SECRET)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let (status, body) = ready(&http, &base).await;
    assert_eq!(status, 200, "{body}");
    let catalog = &body["checks"]["projection:catalog"];
    assert_eq!(catalog["ok"], true, "{body}");
    assert_eq!(catalog["max_lag_events"], 250, "{body}");
    assert_eq!(
        catalog["max_lag_ms"],
        Value::Null,
        "0 turns the bound off: {body}"
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
