//! Proves the blue/green rebuild through a real server on loopback, on both backends: while the catalog is rebuilt under concurrent queries and new products (created, then read with `min_position`), every query answers 200 with a complete catalog (its count never drops below what it was, and includes every product already acknowledged), `/v1/projections` reports the rebuild's progress, and afterwards the catalog equals what it was plus the new products.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_server::app;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const SEEDED: u64 = 40;

async fn count(http: &reqwest::Client, base: &str, token: &str, min_position: u64) -> u64 {
    let r = http
        .get(format!(
            "{base}/v1/products?category=plants&limit=1&min_position={min_position}"
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a query failed during the rebuild");
    r.json::<Value>().await.unwrap()["total"].as_u64().unwrap()
}

/// Creates a product; returns the position its answer carries.
async fn create(http: &reqwest::Client, base: &str, token: &str, i: u64) -> u64 {
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(token)
        .json(&json!({"name": format!("Fig {i}"), "category": "plants", "price": 10, "currency": "EUR", "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .expect("position in the answer")
}

async fn rebuild_under_load(b: Backend) {
    let data = TestData::new(b);
    let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some(SECRET.into());
    let running = app::start(cfg).await.expect("server starts");
    let base = running.url().to_string();
    let admin = running.token("admin-1", &["admin"], 3600);
    let seller = running.token("seller-1", &["seller"], 3600);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut last = 0;
    for i in 0..SEEDED {
        last = create(&http, &base, &seller, i).await;
    }
    assert_eq!(count(&http, &base, &admin, last).await, SEEDED);
    let before = {
        let r = http
            .get(format!(
                "{base}/v1/products?category=plants&limit=100&min_position={last}"
            ))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["products"].clone()
    };

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(SEEDED));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (http, base, admin, stop, acked) = (
            http.clone(),
            base.clone(),
            admin.clone(),
            stop.clone(),
            acked.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut floor = SEEDED;
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let at_least = acked.load(Ordering::SeqCst);
                let c = count(&http, &base, &admin, 0).await;
                assert!(c >= floor, "the catalog count dropped from {floor} to {c}");
                assert!(
                    c >= SEEDED.min(at_least),
                    "a complete copy has the seeded products"
                );
                floor = c;
                n += 1;
            }
            n
        }));
    }
    let writer = {
        let (http, base, seller, stop, acked) = (
            http.clone(),
            base.clone(),
            seller.clone(),
            stop.clone(),
            acked.clone(),
        );
        tokio::spawn(async move {
            let mut i = SEEDED;
            while !stop.load(Ordering::SeqCst) {
                let position = create(&http, &base, &seller, i).await;
                i += 1;
                acked.store(i, Ordering::SeqCst);
                // Read-your-own-writes holds across the switch.
                assert!(count(&http, &base, &seller, position).await >= i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            i - SEEDED
        })
    };

    let r = http
        .post(format!("{base}/v1/projections/catalog/rebuild"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_progress = false;
    loop {
        let list: Value = http
            .get(format!("{base}/v1/projections"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let catalog = list["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "catalog")
            .unwrap()
            .clone();
        if catalog["rebuild"].is_object() {
            saw_progress = true;
            assert!(catalog["rebuild"]["target"].as_u64().unwrap() >= SEEDED);
        } else if saw_progress || catalog["events_applied"].as_u64().unwrap() > last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rebuild never finished: {catalog}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let added = writer.await.expect("writer");
    for r in readers {
        assert!(r.await.expect("reader saw only complete answers") > 0);
    }

    let head: Value = http
        .get(format!("{base}/v1/projections"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let head = head["head_position"].as_u64().unwrap();
    assert_eq!(count(&http, &base, &admin, head).await, SEEDED + added);
    let after: Value = http
        .get(format!(
            "{base}/v1/products?category=plants&limit=100&min_position={head}"
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let after_ids: Vec<&Value> = after["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["id"])
        .collect();
    for p in before.as_array().unwrap() {
        assert!(
            after_ids.contains(&&p["id"]),
            "a seeded product is missing after the switch"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), running.stop())
        .await
        .expect("stops")
        .expect("clean stop");
}

on_both_backends!(rebuild_under_load);
