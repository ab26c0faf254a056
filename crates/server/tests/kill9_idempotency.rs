//! Kill -9 of the server right after a keyed command was sent: after a restart, retrying with
//! the same `Idempotency-Key` has exactly one effect in all, whether the kill came before the
//! command committed (the retry runs it once the dead holder's lease is over) or after (the
//! retry replays the recorded answer). A last round leaves a claim the dead process never used
//! in the stopped server's file: the retry waits out its lease, then runs the command once.
//! Seeded: `FICUS_TEST_SEED` reproduces the kill times.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::{Claim, ClaimRequest, IdempotencyStore};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

mod common;
use common::{cli_token, events_of_type, free_port, get_json, wait_ready};

const SECRET: &str = "kill9-idempotency-secret";
const ROUNDS: u64 = 10;
/// Lease of the claim a dead process left behind in the last round.
const ORPHAN_LEASE: Duration = Duration::from_millis(1500);
/// The keyed command, verbatim (its bytes are part of the key's fingerprint).
const RESTOCK: &str = r#"{"warehouse":"main","delta":1}"#;

fn serve(dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir)
        .env("FICUS_AUTH_HS256_SECRET", SECRET)
        // A claim of the killed process is taken over this soon after it was made.
        .env("FICUS_IDEMPOTENCY_LEASE_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve")
}

async fn keyed_restock(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    key: &str,
) -> reqwest::Result<(u16, bool, Value)> {
    let r = http
        .post(format!("{base}/v1/products/{id}/stock"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(RESTOCK)
        .send()
        .await?;
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    Ok((status, replayed, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_after_a_keyed_command_then_the_retry_has_one_effect() {
    let seed: u64 = std::env::var("FICUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!(
        "kill -9 idempotency: seed {seed} (FICUS_TEST_SEED={seed} reproduces the kill times)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let seller = cli_token(SECRET, "sam", "seller");
    let admin = cli_token(SECRET, "ada", "admin");
    let mut base = format!("http://127.0.0.1:{}", free_port());
    let mut child = serve(
        dir.path(),
        base.rsplit(':').next().unwrap().parse().unwrap(),
    );
    wait_ready(&http, &base).await;
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&seller)
        .json(&json!({"name": "Lamp", "category": "home", "price": 20, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let v0 = created["version"].as_u64().unwrap();

    let (mut replays, mut reruns, mut taken_over) = (0, 0, 0);
    for round in 0..ROUNDS {
        let key = format!("restock-{round}");
        let first = {
            let (http, base, seller, id, key) = (
                http.clone(),
                base.clone(),
                seller.clone(),
                id.clone(),
                key.clone(),
            );
            tokio::spawn(async move { keyed_restock(&http, &base, &seller, &id, &key).await })
        };
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..4_000))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the server");
        // Answered or cut off: either way the client does not know, and retries.
        let _ = first.await.unwrap();

        let port = free_port();
        base = format!("http://127.0.0.1:{port}");
        child = serve(dir.path(), port);
        wait_ready(&http, &base).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut held = false;
        let (replayed, body) = loop {
            let (status, replayed, body) = keyed_restock(&http, &base, &seller, &id, &key)
                .await
                .expect("the restarted server answers");
            match status {
                200 => break (replayed, body),
                // The dead process's claim, until its lease ends.
                409 if body["code"] == "request_in_progress" => held = true,
                other => panic!("round {round}: unexpected {other}: {body}"),
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the key never freed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        taken_over += u32::from(held);
        if replayed {
            replays += 1;
        } else {
            reruns += 1;
        }
        // Exactly one restock per key so far: this key's answer is the next version.
        assert_eq!(
            body["version"].as_u64(),
            Some(v0 + round + 1),
            "round {round} (seed {seed}): {body}"
        );
        // A further repeat is a replay of that answer.
        let (status, again_replayed, again) = keyed_restock(&http, &base, &seller, &id, &key)
            .await
            .unwrap();
        assert_eq!((status, again_replayed), (200, true));
        assert_eq!(again, body);
    }
    // The narrowest window, made certain: the process died holding a claim it never used. The
    // claim is written into the stopped server's file as that process would have left it.
    child.kill().expect("SIGKILL");
    child.wait().expect("reap the server");
    let claimed_at;
    {
        let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
            .expect("open the stopped server's store");
        let print = ficus_gateway::idempotency::fingerprint(
            &axum::http::Method::POST,
            &format!("/v1/products/{id}/stock"),
            RESTOCK.as_bytes(),
        );
        let claim = store
            .claim(&ClaimRequest {
                scope: "sam",
                key: "orphaned",
                fingerprint: &print,
                now_ms: ficus_store::now_ms(),
                lease_ms: ORPHAN_LEASE.as_millis() as i64,
                retention_ms: 3_600_000,
            })
            .await
            .unwrap();
        assert!(matches!(claim, Claim::Owned(_)), "{claim:?}");
        claimed_at = Instant::now();
        store.shutdown().await;
    }
    let port = free_port();
    base = format!("http://127.0.0.1:{port}");
    child = serve(dir.path(), port);
    wait_ready(&http, &base).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (status, replayed, body) = keyed_restock(&http, &base, &seller, &id, "orphaned")
            .await
            .unwrap();
        match status {
            200 => {
                assert!(!replayed);
                // Never before the dead holder's lease ended (wall-clock ms, hence the slack).
                assert!(
                    claimed_at.elapsed() + Duration::from_millis(5) >= ORPHAN_LEASE,
                    "the orphaned claim was taken over early"
                );
                break body;
            }
            409 if body["code"] == "request_in_progress" => {}
            other => panic!("orphaned claim: unexpected {other}: {body}"),
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned claim never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["version"].as_u64(), Some(v0 + ROUNDS + 1));
    let stream = get_json(&http, &format!("{base}/v1/streams/product-{id}"), &admin).await;
    assert_eq!(
        events_of_type(&stream, "StockAdjusted").len() as u64,
        ROUNDS + 1,
        "one restock per key (seed {seed})"
    );
    eprintln!(
        "kill -9 idempotency: {replays} retries replayed a committed command, {reruns} ran one \
         that never committed ({taken_over} of them after waiting out the dead claim's lease)"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reap the server");
}
