//! Kill -9 of the embedded server in the middle of a blue/green rebuild of the catalog — mid-replay, once the new copy has caught up (not yet switched to), and right after the switch (the old copy not yet removed) — then a restart: every query after it answers from a complete copy (the catalog count never drops), the rebuild resumes or is done, ends switched to generation 1 with the old file removed, equals the model before, and replaying appended no event (no side effect re-fired).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{cli_token, free_port, get_json, wait_ready};

const SECRET: &str = "kill9-rebuild-secret";
const PRODUCTS: usize = 30;
/// Raw events appended beside the products, so that the replay takes several batches.
const NOISE_EVENTS: usize = 2500;
const WAIT: Duration = Duration::from_secs(30);

fn serve(dir: &std::path::Path, port: u16, abort_in_rebuild: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir)
    .env("FICUS_AUTH_HS256_SECRET", SECRET)
    .env_remove(ficus_server::app::ABORT_IN_REBUILD_ENV)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(spec) = abort_in_rebuild {
        cmd.env(ficus_server::app::ABORT_IN_REBUILD_ENV, spec);
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

/// The catalog's count of plants, and the position it reflects; any failure panics.
async fn plants(http: &reqwest::Client, base: &str, token: &str) -> u64 {
    let r = http
        .get(format!("{base}/v1/products?category=plants&limit=1"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a catalog query failed");
    r.json::<Value>().await.unwrap()["total"].as_u64().unwrap()
}

async fn catalog_status(http: &reqwest::Client, base: &str, admin: &str) -> Value {
    let list = get_json(http, &format!("{base}/v1/projections"), admin).await;
    let p = list["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "catalog")
        .unwrap()
        .clone();
    json!({"projection": p, "head": list["head_position"]})
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

async fn crash_and_resume(spec: &str) {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (seller, admin) = (
        cli_token(SECRET, "sam", "seller"),
        cli_token(SECRET, "ada", "admin"),
    );
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port, Some(spec));
    wait_ready(&http, &base).await;
    for i in 0..PRODUCTS {
        post(
            &http,
            format!("{base}/v1/products"),
            &seller,
            json!({"name": format!("Fig {i}"), "category": "plants", "price": 10, "currency": "EUR", "stock": 5}),
        )
        .await;
    }
    for chunk in 0..NOISE_EVENTS / 500 {
        let events: Vec<Value> = (0..500)
            .map(|i| json!({"type": "Noise", "data": {"i": i}}))
            .collect();
        post(
            &http,
            format!("{base}/v1/streams/noise-{chunk}"),
            &admin,
            json!({"events": events}),
        )
        .await;
    }
    let head = catalog_status(&http, &base, &admin).await["head"]
        .as_u64()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while catalog_status(&http, &base, &admin).await["projection"]["checkpoint"] != head {
        assert!(Instant::now() < deadline, "{spec}: catalog never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = get_json(
        &http,
        &format!("{base}/v1/products?category=plants&limit=100"),
        &admin,
    )
    .await;
    assert_eq!(before["total"], PRODUCTS as u64);

    let r = http
        .post(format!("{base}/v1/projections/catalog/rebuild"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_crash(&mut child, spec);

    let mut child = serve(dir.path(), port, None);
    wait_ready(&http, &base).await;
    // From the first query on, every answer is complete, during the resumed rebuild too.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        assert_eq!(
            plants(&http, &base, &admin).await,
            PRODUCTS as u64,
            "{spec}"
        );
        let s = catalog_status(&http, &base, &admin).await;
        if s["projection"]["rebuild"].is_null() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{spec}: rebuild never finished: {s}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(status["head"], head, "{spec}: the rebuild appended nothing");
    assert_eq!(status["projection"]["checkpoint"], head, "{spec}");
    let read_dir = dir.path().join("read-models");
    assert_eq!(
        std::fs::read_to_string(read_dir.join("catalog.current"))
            .unwrap()
            .trim(),
        "1",
        "{spec}: switched to generation 1"
    );
    let deadline = Instant::now() + WAIT;
    while read_dir.join("catalog.db").exists() {
        assert!(
            Instant::now() < deadline,
            "{spec}: the old copy was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = get_json(
        &http,
        &format!("{base}/v1/products?category=plants&limit=100"),
        &admin,
    )
    .await;
    assert_eq!(after["products"], before["products"], "{spec}");
    assert_eq!(after["total"], before["total"], "{spec}");

    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_replay_resumes_the_rebuild() {
    crash_and_resume("replayed:1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_before_the_switch_keeps_the_old_copy_then_switches() {
    crash_and_resume("switching").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_after_the_switch_serves_the_new_copy() {
    crash_and_resume("switched").await;
}
