//! Kill -9 of the whole server in the middle of a bulk job: after a restart the job finishes
//! with correct counts, and every item's effect happened exactly once (each product got one
//! price change event, no more, no less).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, free_port, get_json, wait_ready};

const PRODUCTS: usize = 150;

fn serve(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("FICUS_AUTH_HS256_SECRET", "kill9-jobs-secret")
        // Items leased by the killed process come back after this long.
        .env("FICUS_JOB_VISIBILITY_MS", "1500")
        // Few workers, so the job is still running when the kill comes.
        .env("FICUS_JOB_CONCURRENCY", "2")
        .env("FICUS_JOB_MAX_CONCURRENCY", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve")
}

fn token(sub: &str, roles: &str) -> String {
    cli_token("kill9-jobs-secret", sub, roles)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_mid_job_then_the_job_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let seller = token("sam", "seller");
    let admin = token("ada", "admin");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_ready(&http, &base).await;

    let mut ids = Vec::new();
    for i in 0..PRODUCTS {
        let r = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&seller)
            .json(&json!({"name": format!("Book {i}"), "category": "books",
                          "price": 10 + i, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.unwrap();
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    // Let the catalog read model catch up, so the job plans every product.
    let head = ids.len() as u64;
    let r = http
        .get(format!(
            "{base}/v1/products?category=books&limit=1&min_position={head}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&seller)
        .json(&json!({"kind": "reprice_category", "params": {"category": "books", "percent": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["total"], PRODUCTS);

    // Kill it as soon as some items are done but not all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let done_at_kill = loop {
        let j = get_json(&http, &format!("{base}/v1/jobs/{job_id}"), &seller).await;
        let done = j["done"].as_u64().unwrap();
        if done > 0 || Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    assert!(
        done_at_kill > 0 && done_at_kill < PRODUCTS as u64,
        "the kill must land mid-job (done {done_at_kill} of {PRODUCTS})"
    );

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = serve(dir.path(), port);
    wait_ready(&http, &base).await;
    // Items the killed process had leased run again once their leases expire.
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let j = get_json(&http, &format!("{base}/v1/jobs/{job_id}"), &seller).await;
        if j["state"] != "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "job never finished: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(job["state"], "completed", "{job}");
    assert_eq!(job["done"], PRODUCTS, "{job}");
    assert_eq!(job["dead"], 0);

    // Every product changed price exactly once, to 1.1 × its original price.
    for (i, id) in ids.iter().enumerate() {
        let r = get_json(&http, &format!("{base}/v1/streams/product-{id}"), &admin).await;
        let changes = events_of_type(&r, "ProductPriceChanged");
        assert_eq!(changes.len(), 1, "product {i}: {changes:?}");
        assert_eq!(changes[0]["data"]["new_price"], (10 + i as i64) * 110);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}
