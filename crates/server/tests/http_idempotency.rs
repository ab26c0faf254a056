//! `Idempotency-Key` on the command routes, through a real server on loopback, on both
//! backends: a repeat replays the first answer without a second effect (also ten at once, and
//! while the first is in flight), a key reused for another request is 422, keys are per
//! caller, refusals are recorded, conflicts are not, bad keys are 400, and records are purged
//! after the (configurable) retention window.

use std::time::{Duration, Instant};

use ficus_core::StreamId;
use ficus_server::app::{self, Running, ServerConfig};
use ficus_store::{Claim, ClaimRequest, StoredResponse};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const SELLER: &str = "seller-1";
const CUSTOMER: &str = "cust-1";
const CUSTOMER2: &str = "cust-2";
const KEY_HEADER: &str = "idempotency-key";
const REPLAYED: &str = "idempotent-replayed";

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn replayed(&self) -> bool {
        self.headers.get(REPLAYED).and_then(|v| v.to_str().ok()) == Some("true")
    }

    #[track_caller]
    fn ok(self, status: u16) -> Self {
        assert_eq!(self.status, status, "body: {}", self.text);
        self
    }

    #[track_caller]
    fn err(self, status: u16, code: &str) -> Self {
        assert_eq!(
            (self.status, self.body["code"].as_str().unwrap_or("")),
            (status, code),
            "body: {}",
            self.text
        );
        assert!(self.body["message"].is_string(), "{}", self.text);
        self
    }
}

struct Srv {
    running: Running,
    _data: TestData,
    http: reqwest::Client,
}

impl Srv {
    async fn start(b: Backend, configure: impl FnOnce(&mut ServerConfig)) -> Srv {
        let data = TestData::new(b);
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        configure(&mut cfg);
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Srv {
            running,
            _data: data,
            http,
        }
    }

    fn token(&self, sub: &str) -> String {
        let role = if sub.starts_with("seller") {
            "seller"
        } else {
            "customer"
        };
        self.running.token(sub, &[role], 3600)
    }

    /// Sends `body` verbatim (so a test knows the exact bytes the fingerprint covers).
    async fn send(
        &self,
        method: Method,
        path: &str,
        sub: &str,
        key: Option<HeaderValue>,
        body: &str,
        if_match: Option<&str>,
    ) -> Resp {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.running.url()))
            .bearer_auth(self.token(sub))
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(k) = key {
            rb = rb.header(KEY_HEADER, k);
        }
        if let Some(v) = if_match {
            rb = rb.header("if-match", v);
        }
        let r = rb.send().await.expect("request sent");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    async fn keyed_post(&self, path: &str, sub: &str, key: &str, body: &str) -> Resp {
        let key = HeaderValue::from_str(key).unwrap();
        self.send(Method::POST, path, sub, Some(key), body, None)
            .await
    }

    /// Events in the whole log, and how many have type `ty`.
    async fn count(&self, ty: &str) -> (usize, usize) {
        let all = self.running.state.store.read_all(1, 10_000).await.unwrap();
        let of_type = all.iter().filter(|e| e.event_type.as_str() == ty).count();
        (all.len(), of_type)
    }

    async fn version(&self, stream: &str) -> u64 {
        let id = StreamId::new(stream).unwrap();
        self.running.state.store.stream_version(&id).await.unwrap()
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(20), self.running.stop())
            .await
            .expect("stops in time")
            .expect("stops cleanly");
    }
}

const PRODUCT: &str =
    r#"{"name":"Lamp","category":"home","price":20.00,"currency":"EUR","stock":5}"#;

async fn replay_returns_the_first_answer_without_a_second_effect(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    let first = srv
        .keyed_post("/v1/products", SELLER, "create-lamp", PRODUCT)
        .await
        .ok(201);
    assert!(!first.replayed());
    let id = first.body["id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let again = srv
            .keyed_post("/v1/products", SELLER, "create-lamp", PRODUCT)
            .await
            .ok(201);
        assert!(again.replayed(), "{:?}", again.headers);
        assert_eq!(again.text, first.text, "the same body, the same product id");
        assert!(again.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
    assert_eq!(srv.count("ProductCreated").await.1, 1);
    // A command on an existing stream: one new version, however often it is repeated.
    let path = format!("/v1/products/{id}/stock");
    let stock = r#"{"warehouse":"main","delta":3}"#;
    let a = srv
        .keyed_post(&path, SELLER, "restock-1", stock)
        .await
        .ok(200);
    let b2 = srv
        .keyed_post(&path, SELLER, "restock-1", stock)
        .await
        .ok(200);
    assert!(b2.replayed());
    assert_eq!(a.text, b2.text);
    // Created with stock, the product's stream holds its creation's events; one more now.
    let created = first.body["version"].as_u64().unwrap();
    assert_eq!(a.body["version"], created + 1);
    assert_eq!(srv.version(&format!("product-{id}")).await, created + 1);
    // Without a key nothing is deduplicated: the same body is a second effect.
    srv.send(Method::POST, &path, SELLER, None, stock, None)
        .await
        .ok(200);
    assert_eq!(srv.version(&format!("product-{id}")).await, created + 2);
    srv.stop().await;
}

async fn ten_identical_requests_at_once_have_one_effect(b: Backend) {
    let srv = std::sync::Arc::new(Srv::start(b, |_| {}).await);
    let product = srv
        .send(Method::POST, "/v1/products", SELLER, None, PRODUCT, None)
        .await
        .ok(201);
    let pid = product.body["id"].as_str().unwrap().to_owned();
    let order = srv
        .send(
            Method::POST,
            "/v1/orders",
            CUSTOMER,
            None,
            r#"{"items":[]}"#,
            None,
        )
        .await
        .ok(201);
    let oid = order.body["id"].as_str().unwrap().to_owned();
    let item = json!({"product_id": pid, "quantity": 2}).to_string();
    let path = format!("/v1/orders/{oid}/items");
    const AT_ONCE: usize = 10;
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(AT_ONCE));
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (srv, start, path, item) = (srv.clone(), start.clone(), path.clone(), item.clone());
            tokio::spawn(async move {
                start.wait().await;
                srv.keyed_post(&path, CUSTOMER, "add-lamp", &item).await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap().ok(200));
    }
    let fresh = answers.iter().filter(|r| !r.replayed()).count();
    assert_eq!(fresh, 1, "exactly one request ran the command");
    assert!(answers.iter().all(|r| r.text == answers[0].text));
    assert_eq!(answers[0].body["version"], 2);
    assert_eq!(
        srv.version(&format!("order-{oid}")).await,
        2,
        "one item added"
    );
    // And ten creations at once make one order.
    let tasks: Vec<_> = (0..AT_ONCE)
        .map(|_| {
            let (srv, start) = (srv.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                srv.keyed_post("/v1/orders", CUSTOMER, "new-order", r#"{"items":[]}"#)
                    .await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().ok(201).body["id"].to_string());
    }
    assert_eq!(ids.len(), 1, "all ten answers name one order");
    assert_eq!(srv.count("OrderCreated").await.1, 2);
    let srv = std::sync::Arc::try_unwrap(srv)
        .ok()
        .expect("tasks are done");
    srv.stop().await;
}

async fn a_repeat_waits_for_the_first_in_flight_then_conflicts(b: Backend) {
    let srv = Srv::start(b, |cfg| {
        cfg.api.idempotency.in_flight_wait = Duration::from_millis(600);
    })
    .await;
    // Another process (or a slower request) holds the key: claimed, not yet answered.
    let print = ficus_gateway::idempotency::fingerprint(
        &axum::http::Method::POST,
        "/v1/products",
        PRODUCT.as_bytes(),
    );
    let keys = srv.running.state.idempotency.clone();
    let claim = |key: &'static str| {
        let (keys, print) = (keys.clone(), print.clone());
        async move {
            let got = keys
                .claim(&ClaimRequest {
                    scope: SELLER,
                    key,
                    fingerprint: &print,
                    now_ms: ficus_store::now_ms(),
                    lease_ms: 60_000,
                    retention_ms: 3_600_000,
                })
                .await
                .unwrap();
            let Claim::Owned(t) = got else {
                panic!("{got:?}")
            };
            t
        }
    };
    let _held = claim("held").await;
    let started = Instant::now();
    srv.keyed_post("/v1/products", SELLER, "held", PRODUCT)
        .await
        .err(409, "request_in_progress");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "the repeat waited for the first ({waited:?})"
    );
    assert_eq!(
        srv.count("ProductCreated").await.1,
        0,
        "never a second effect"
    );
    // When the first finishes while the repeat waits, the repeat gets its answer.
    let ticket = claim("finishing").await;
    let answer = StoredResponse {
        status: 201,
        body: json!({"id": "from-the-first", "version": 1, "position": 1}).to_string(),
    };
    let finisher = {
        let (keys, answer) = (keys.clone(), answer.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            assert!(keys.complete(&ticket, &answer).await.unwrap());
        })
    };
    let r = srv
        .keyed_post("/v1/products", SELLER, "finishing", PRODUCT)
        .await
        .ok(201);
    finisher.await.unwrap();
    assert!(r.replayed());
    assert_eq!(r.text, answer.body);
    assert_eq!(srv.count("ProductCreated").await.1, 0);
    srv.stop().await;
}

async fn same_key_for_another_request_is_422(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    let first = srv
        .keyed_post("/v1/products", SELLER, "k", PRODUCT)
        .await
        .ok(201);
    let id = first.body["id"].as_str().unwrap();
    let other = PRODUCT.replace("Lamp", "Chair");
    srv.keyed_post("/v1/products", SELLER, "k", &other)
        .await
        .err(422, "idempotency_key_reused");
    // Another path with the same key is another request too.
    srv.keyed_post(
        &format!("/v1/products/{id}/stock"),
        SELLER,
        "k",
        r#"{"warehouse":"main","delta":1}"#,
    )
    .await
    .err(422, "idempotency_key_reused");
    let created = first.body["version"].as_u64().unwrap() as usize;
    assert_eq!(
        srv.count("ProductCreated").await,
        (created, 1),
        "nothing but the first creation written"
    );
    srv.stop().await;
}

async fn keys_belong_to_their_caller(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    let one = srv
        .keyed_post("/v1/orders", CUSTOMER, "same-key", r#"{"items":[]}"#)
        .await
        .ok(201);
    let two = srv
        .keyed_post("/v1/orders", CUSTOMER2, "same-key", r#"{"items":[]}"#)
        .await
        .ok(201);
    assert!(!one.replayed() && !two.replayed());
    assert_ne!(one.body["id"], two.body["id"]);
    assert_eq!(srv.count("OrderCreated").await.1, 2);
    srv.stop().await;
}

async fn refusals_are_recorded_conflicts_are_not(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    let order = srv
        .send(
            Method::POST,
            "/v1/orders",
            CUSTOMER,
            None,
            r#"{"items":[]}"#,
            None,
        )
        .await
        .ok(201);
    let oid = order.body["id"].as_str().unwrap().to_owned();
    let place = format!("/v1/orders/{oid}/place");
    let refused = srv
        .keyed_post(&place, CUSTOMER, "place-1", "")
        .await
        .err(422, "empty_order");
    // The order becomes placeable; the key still answers with its recorded refusal.
    let product = srv
        .send(Method::POST, "/v1/products", SELLER, None, PRODUCT, None)
        .await
        .ok(201);
    let item = json!({"product_id": product.body["id"], "quantity": 1}).to_string();
    srv.send(
        Method::POST,
        &format!("/v1/orders/{oid}/items"),
        CUSTOMER,
        None,
        &item,
        None,
    )
    .await
    .ok(200);
    let again = srv
        .keyed_post(&place, CUSTOMER, "place-1", "")
        .await
        .err(422, "empty_order");
    assert!(again.replayed());
    assert_eq!(again.text, refused.text);
    assert_eq!(srv.count("OrderPlaced").await.1, 0);
    // A stale If-Match is a conflict: not recorded, so the corrected retry with the same key
    // runs the command.
    let key = HeaderValue::from_static("place-2");
    srv.send(
        Method::POST,
        &place,
        CUSTOMER,
        Some(key.clone()),
        "",
        Some("\"1\""),
    )
    .await
    .err(409, "wrong_expected_version");
    let placed = srv
        .send(Method::POST, &place, CUSTOMER, Some(key), "", Some("\"2\""))
        .await
        .ok(200);
    assert!(!placed.replayed());
    assert_eq!(placed.body["version"], 3);
    assert_eq!(srv.count("OrderPlaced").await.1, 1);
    srv.stop().await;
}

async fn bad_keys_are_refused_with_400(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    let too_long = "k".repeat(256);
    let bad: Vec<HeaderValue> = vec![
        HeaderValue::from_static(""),
        HeaderValue::from_str(&too_long).unwrap(),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_str("tab\there").unwrap(),
    ];
    for key in bad {
        srv.send(
            Method::POST,
            "/v1/products",
            SELLER,
            Some(key),
            PRODUCT,
            None,
        )
        .await
        .err(400, "invalid_idempotency_key");
    }
    // The longest allowed key works.
    let longest = HeaderValue::from_str(&"k".repeat(255)).unwrap();
    srv.send(
        Method::POST,
        "/v1/products",
        SELLER,
        Some(longest),
        PRODUCT,
        None,
    )
    .await
    .ok(201);
    assert_eq!(srv.count("ProductCreated").await.1, 1);
    srv.stop().await;
}

async fn records_are_purged_after_the_window(b: Backend) {
    let srv = Srv::start(b, |cfg| {
        cfg.api.idempotency.retention = Duration::from_millis(800);
        cfg.api.idempotency.purge_interval = Duration::from_millis(100);
    })
    .await;
    let first = srv
        .keyed_post("/v1/products", SELLER, "short-lived", PRODUCT)
        .await
        .ok(201);
    let keys = srv.running.state.idempotency.clone();
    assert!(keys.get(SELLER, "short-lived").await.unwrap().is_some());
    let again = srv
        .keyed_post("/v1/products", SELLER, "short-lived", PRODUCT)
        .await
        .ok(201);
    assert!(again.replayed(), "within the window");
    let deadline = Instant::now() + Duration::from_secs(10);
    while keys.get(SELLER, "short-lived").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "the sweeper never purged the record"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // After the window the key is free: the same request is a new command.
    let later = srv
        .keyed_post("/v1/products", SELLER, "short-lived", PRODUCT)
        .await
        .ok(201);
    assert!(!later.replayed());
    assert_ne!(later.body["id"], first.body["id"]);
    assert_eq!(srv.count("ProductCreated").await.1, 2);
    srv.stop().await;
}

async fn bulk_submission_fans_out_once_per_key(b: Backend) {
    let srv = Srv::start(b, |_| {}).await;
    srv.send(Method::POST, "/v1/products", SELLER, None, PRODUCT, None)
        .await
        .ok(201);
    let job = r#"{"kind":"reprice_category","params":{"category":"home","percent":10}}"#;
    let first = srv
        .keyed_post("/v1/jobs", SELLER, "reprice", job)
        .await
        .ok(202);
    let again = srv
        .keyed_post("/v1/jobs", SELLER, "reprice", job)
        .await
        .ok(202);
    assert!(again.replayed());
    assert_eq!(again.text, first.text, "the same bulk job");
    // A holder that died after creating its batch but before its answer was recorded: the
    // retry (after the lease) finds that batch under the key's effect id instead of fanning
    // out again.
    let print = ficus_gateway::idempotency::fingerprint(
        &axum::http::Method::POST,
        "/v1/jobs",
        job.as_bytes(),
    );
    let state = &srv.running.state;
    let got = state
        .idempotency
        .claim(&ClaimRequest {
            scope: SELLER,
            key: "crashed",
            fingerprint: &print,
            now_ms: ficus_store::now_ms(),
            lease_ms: 1,
            retention_ms: 3_600_000,
        })
        .await
        .unwrap();
    let Claim::Owned(dead) = got else {
        panic!("{got:?}")
    };
    let id = ficus_gateway::idempotency::effect_id(SELLER, "crashed", dead.created_at_ms);
    let actor = ficus_domain::service::Actor {
        user_id: SELLER.into(),
        roles: vec!["seller".into()],
    };
    let params = json!({"category": "home", "percent": 10});
    let left_behind = state
        .bulk
        .submit_with_id(
            &actor,
            &id,
            "reprice_category",
            params,
            ficus_store::now_ms(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let retry = srv
        .keyed_post("/v1/jobs", SELLER, "crashed", job)
        .await
        .ok(202);
    assert!(!retry.replayed(), "the dead holder recorded nothing");
    assert_eq!(
        retry.body["id"],
        json!(id),
        "the earlier batch, not a second one"
    );
    assert_eq!(
        retry.body["created_at"],
        json!(ficus_core::time::format_rfc3339_ms(
            left_behind.created_at_ms
        ))
    );
    let replay = srv
        .keyed_post("/v1/jobs", SELLER, "crashed", job)
        .await
        .ok(202);
    assert!(replay.replayed());
    assert_eq!(replay.body["id"], json!(id));
    srv.stop().await;
}

on_both_backends!(
    bulk_submission_fans_out_once_per_key,
    replay_returns_the_first_answer_without_a_second_effect,
    ten_identical_requests_at_once_have_one_effect,
    a_repeat_waits_for_the_first_in_flight_then_conflicts,
    same_key_for_another_request_is_422,
    keys_belong_to_their_caller,
    refusals_are_recorded_conflicts_are_not,
    bad_keys_are_refused_with_400,
    records_are_purged_after_the_window,
);

/// Not a check but a figure: the cost of a key on a command, sequential restocks of a
/// product without and with a fresh `Idempotency-Key` each. Run with
/// `cargo test --release -p ficus-server --test http_idempotency -- --ignored --nocapture`.
async fn measure_key_overhead(b: Backend) {
    const COMMANDS: usize = 300;
    let srv = Srv::start(b, |_| {}).await;
    let stock = r#"{"warehouse":"main","delta":1}"#;
    let mut per_command_us = Vec::new();
    for keyed in [false, true] {
        // A product of its own per run, so both runs load streams of the same lengths.
        let product = srv
            .send(Method::POST, "/v1/products", SELLER, None, PRODUCT, None)
            .await
            .ok(201);
        let path = format!(
            "/v1/products/{}/stock",
            product.body["id"].as_str().unwrap()
        );
        let started = Instant::now();
        for i in 0..COMMANDS {
            let key = keyed.then(|| HeaderValue::from_str(&format!("m-{i}")).unwrap());
            srv.send(Method::POST, &path, SELLER, key, stock, None)
                .await
                .ok(200);
        }
        per_command_us.push(started.elapsed().as_micros() / COMMANDS as u128);
    }
    eprintln!(
        "{b:?}: {COMMANDS} sequential commands, {} µs each without a key, {} µs with one",
        per_command_us[0], per_command_us[1]
    );
    srv.stop().await;
}

mod measure {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn key_overhead_sqlite() {
        super::measure_key_overhead(super::Backend::Sqlite).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, run by hand"]
    async fn key_overhead_postgres() {
        if super::Backend::Postgres.available() {
            super::measure_key_overhead(super::Backend::Postgres).await
        }
    }
}
