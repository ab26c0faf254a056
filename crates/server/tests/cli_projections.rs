//! `ficus projections rebuild` (the binary, against a real server on both backends): it starts
//! a rebuild, follows the replay to the head it started from and exits 0 with the read model
//! whole again; a non-admin token or an unknown projection makes it exit non-zero with the
//! server's code.

use std::process::Command;
use std::time::Duration;

use ficus_server::app;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const PRODUCTS: usize = 25;

/// Runs `ficus <args>` off the runtime's workers (the server shares them); success and output.
async fn cli(args: &[&str], url: &str, token: &str) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let (url, token) = (url.to_owned(), token.to_owned());
    let run = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_ficus"))
            .args(&args)
            .env("FICUS_URL", url)
            .env("FICUS_TOKEN", token)
            .output()
            .expect("run ficus");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    });
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the command ends in time")
        .unwrap()
}

async fn rebuild_command_follows_the_replay_to_the_end(b: Backend) {
    let data = TestData::new(b);
    let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some(SECRET.into());
    let running = app::start(cfg).await.expect("server starts");
    let base = running.url();
    let seller = running.token("sam", &["seller"], 3600);
    let admin = running.token("ada", &["admin"], 3600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let mut last = 0;
    for i in 0..PRODUCTS {
        let r: Value = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&seller)
            .json(&json!({"name": format!("Atlas {i}"), "category": "maps", "price": 10, "currency": "EUR"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        last = r["position"].as_u64().expect("a position");
    }

    let (ok, out) = cli(&["projections", "rebuild", "catalog"], &base, &admin).await;
    assert!(ok, "{out}");
    assert!(out.contains("catalog rebuilt"), "{out}");
    let r: Value = http
        .get(format!(
            "{base}/v1/products?category=maps&limit=100&min_position={last}"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = r["products"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(n, PRODUCTS, "{r}");

    let (ok, out) = cli(&["projections", "rebuild", "catalog"], &base, &seller).await;
    assert!(!ok && out.contains("forbidden"), "{out}");
    let (ok, out) = cli(
        &["projections", "rebuild", "nope", "--no-wait"],
        &base,
        &admin,
    )
    .await;
    assert!(!ok && out.contains("projection_not_found"), "{out}");
    running.stop().await.unwrap();
}

on_both_backends!(rebuild_command_follows_the_replay_to_the_end);
