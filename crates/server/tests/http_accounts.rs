//! The ledger example end to end on a real server (both backends): accounts are opened, money
//! moves in exact minor units with no overdraft, only the owner or an admin may act, bad input
//! is a 4xx with a code and changes nothing, an account is read as of a past version or
//! instant (time travel), and events written at an older schema version (v1) are read in
//! their current shape by the aggregate and the raw stream API alike; `ficus bench snapshots`
//! prints its figures.

use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, NewEvent, StreamId};
use ficus_server::app::{self, Running};
use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;

struct Srv {
    running: Running,
    _data: TestData,
    http: reqwest::Client,
    ann: String,
    bob: String,
    admin: String,
}

struct Resp {
    status: u16,
    body: Value,
    text: String,
}

impl Resp {
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
        assert!(
            self.body["message"].is_string(),
            "no message: {}",
            self.text
        );
        self
    }
}

impl Srv {
    async fn start(b: Backend) -> Srv {
        let data = TestData::new(b);
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Srv {
            ann: running.token("ann", &["customer"], HOUR),
            bob: running.token("bob", &["customer"], HOUR),
            admin: running.token("admin-1", &["admin"], HOUR),
            running,
            _data: data,
            http,
        }
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.stop())
            .await
            .expect("stop finishes within 10 s")
            .expect("clean stop");
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<&str>) -> Resp {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if !token.is_empty() {
            rb = rb.bearer_auth(token);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        Resp {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: &str) -> Resp {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Opens a EUR account for `ann`; returns its id.
    async fn open(&self) -> String {
        let r = self
            .post("/v1/accounts", &self.ann, r#"{"currency":"EUR"}"#)
            .await
            .ok(201);
        assert_eq!(r.body["version"], 1);
        r.body["id"].as_str().unwrap().to_owned()
    }

    async fn deposit(&self, id: &str, amount: &str) -> Resp {
        let body = format!(r#"{{"amount":{amount}}}"#);
        self.post(&format!("/v1/accounts/{id}/deposits"), &self.ann, &body)
            .await
    }

    async fn withdraw(&self, id: &str, amount: &str) -> Resp {
        let body = format!(r#"{{"amount":{amount}}}"#);
        self.post(&format!("/v1/accounts/{id}/withdrawals"), &self.ann, &body)
            .await
    }

    async fn account(&self, id: &str, query: &str) -> Resp {
        self.get(&format!("/v1/accounts/{id}{query}"), &self.ann)
            .await
    }
}

async fn money_moves_exactly_and_only_for_the_owner_or_an_admin(b: Backend) {
    let s = Srv::start(b).await;
    let id = s.open().await;
    s.deposit(&id, "12.50").await.ok(201);
    s.deposit(&id, "7.25").await.ok(201);
    let r = s.withdraw(&id, "5").await.ok(201);
    assert_eq!(r.body["version"], 4);
    let r = s.account(&id, "").await.ok(200);
    assert!(r.text.contains(r#""balance":14.75"#), "{}", r.text);
    assert_eq!(r.body["owner_id"], "ann");
    assert_eq!(r.body["currency"], "EUR");
    assert_eq!(
        (r.body["version"].as_u64(), r.body["movements"].as_u64()),
        (Some(4), Some(3))
    );

    // Someone else may neither read nor move the money; an admin may.
    s.get(&format!("/v1/accounts/{id}"), &s.bob)
        .await
        .err(403, "not_account_owner");
    s.post(
        &format!("/v1/accounts/{id}/withdrawals"),
        &s.bob,
        r#"{"amount":1}"#,
    )
    .await
    .err(403, "not_account_owner");
    s.get(&format!("/v1/accounts/{id}"), "")
        .await
        .err(401, "unauthorized");
    s.post(
        &format!("/v1/accounts/{id}/withdrawals"),
        &s.admin,
        r#"{"amount":0.75}"#,
    )
    .await
    .ok(201);
    let r = s.get(&format!("/v1/accounts/{id}"), &s.admin).await.ok(200);
    assert!(r.text.contains(r#""balance":14.00"#), "{}", r.text);
    // Only an admin opens an account for someone else.
    s.post(
        "/v1/accounts",
        &s.bob,
        r#"{"currency":"EUR","owner_id":"ann"}"#,
    )
    .await
    .err(403, "not_account_owner");
    let r = s
        .post(
            "/v1/accounts",
            &s.admin,
            r#"{"currency":"USD","owner_id":"bob"}"#,
        )
        .await
        .ok(201);
    let bobs = r.body["id"].as_str().unwrap();
    let r = s.get(&format!("/v1/accounts/{bobs}"), &s.bob).await.ok(200);
    assert_eq!(
        (r.body["owner_id"].as_str(), r.body["currency"].as_str()),
        (Some("bob"), Some("USD"))
    );
    // The routes are in the served contract.
    let doc = s.get("/v1/openapi.json", "").await.ok(200);
    for path in [
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/{id}/deposits",
        "/v1/accounts/{id}/withdrawals",
    ] {
        assert!(
            doc.body["paths"].get(path).is_some(),
            "OpenAPI lacks {path}"
        );
    }
    s.stop().await;
}

async fn bad_input_is_refused_and_changes_nothing(b: Backend) {
    let s = Srv::start(b).await;
    let id = s.open().await;
    s.deposit(&id, "10.00").await.ok(201);
    s.deposit(&id, "1.999").await.err(400, "invalid_amount");
    s.deposit(&id, "1e3").await.err(400, "invalid_amount");
    s.deposit(&id, "0").await.err(400, "invalid_amount");
    s.deposit(&id, "-5.00").await.err(400, "invalid_amount");
    s.deposit(&id, r#""12.00""#).await.err(400, "invalid_field");
    s.deposit(&id, "1000000000.01")
        .await
        .err(400, "invalid_amount");
    s.withdraw(&id, "10.01")
        .await
        .err(422, "insufficient_funds");
    s.post(
        &format!("/v1/accounts/{id}/deposits"),
        &s.ann,
        r#"{"amount":1,"x":2}"#,
    )
    .await
    .err(400, "invalid_json");
    s.post(&format!("/v1/accounts/{id}/deposits"), &s.ann, "{")
        .await
        .err(400, "invalid_json");
    s.post("/v1/accounts", &s.ann, r#"{"currency":"eur"}"#)
        .await
        .err(400, "invalid_currency");
    s.post(
        "/v1/accounts",
        &s.ann,
        r#"{"currency":"EUR","owner_id":"has space"}"#,
    )
    .await
    .err(400, "invalid_field");
    s.deposit("no-such-account", "1.00")
        .await
        .err(404, "account_not_found");
    s.account("no-such-account", "")
        .await
        .err(404, "account_not_found");
    s.account(&id, "?as_of_version=0")
        .await
        .err(400, "invalid_query");
    s.account(&id, "?as_of_version=abc")
        .await
        .err(400, "invalid_query");
    s.account(&id, "?as_of_version=1&as_of=0")
        .await
        .err(400, "invalid_query");
    s.account(&id, "?as_of=yesterday")
        .await
        .err(400, "invalid_query");
    s.account(&id, "?as_of=2026-13-01T00:00:00Z")
        .await
        .err(400, "invalid_query");
    s.account(&id, "?color=red").await.err(400, "invalid_query");
    // Raw appends to an account's stream must read as an account event (after upcasting).
    for (schema_version, amount) in [(2, json!("1.00")), (1, json!(1.5))] {
        let body = json!({"events": [{"type": "MoneyDeposited", "schema_version": schema_version,
                                      "data": {"account_id": id, "amount": amount, "at_ms": 1}}]});
        let r = s
            .post(
                &format!("/v1/streams/account-{id}"),
                &s.admin,
                &body.to_string(),
            )
            .await;
        r.err(400, "invalid_event");
    }
    // A version past the stream's end is not made up.
    let r = s
        .account(&id, "?as_of_version=3")
        .await
        .err(404, "version_not_found");
    assert_eq!(r.body["current_version"], 2);
    // A stale If-Match is a conflict and writes nothing.
    let r = s
        .http
        .post(format!("{}/v1/accounts/{id}/deposits", s.running.url()))
        .bearer_auth(&s.ann)
        .header("if-match", "\"1\"")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // Nothing above changed the account.
    let r = s.account(&id, "").await.ok(200);
    assert_eq!(r.body["version"], 2);
    assert!(r.text.contains(r#""balance":10.00"#), "{}", r.text);
    s.stop().await;
}

async fn time_travel_by_version_and_by_timestamp(b: Backend) {
    let s = Srv::start(b).await;
    let before_opening = ficus_store::now_ms() - 1;
    let id = s.open().await;
    s.deposit(&id, "100.00").await.ok(201);
    // Every event up to here was committed at or before `t1`; the next ones after it.
    let t1 = ficus_store::now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    s.withdraw(&id, "30.00").await.ok(201);
    s.deposit(&id, "0.01").await.ok(201);

    let r = s.account(&id, "?as_of_version=1").await.ok(200);
    assert!(r.text.contains(r#""balance":0.00"#), "{}", r.text);
    assert_eq!(r.body["version"], 1);
    let r = s.account(&id, "?as_of_version=3").await.ok(200);
    assert!(r.text.contains(r#""balance":70.00"#), "{}", r.text);
    assert_eq!(
        (r.body["version"].as_u64(), r.body["movements"].as_u64()),
        (Some(3), Some(2))
    );
    let r = s.account(&id, "?as_of_version=4").await.ok(200);
    assert!(r.text.contains(r#""balance":70.01"#), "{}", r.text);

    // By timestamp, as RFC 3339 and as milliseconds: the state after the first deposit.
    let rfc = ficus_core::time::format_rfc3339_ms(t1);
    for q in [format!("?as_of={rfc}"), format!("?as_of={t1}")] {
        let r = s.account(&id, &q).await.ok(200);
        assert!(r.text.contains(r#""balance":100.00"#), "{q}: {}", r.text);
        assert_eq!(r.body["version"], 2, "{q}");
    }
    // An offset is honoured: the same instant written two hours ahead.
    let shifted = ficus_core::time::format_rfc3339_ms(t1 + 2 * 3_600_000).replace('Z', "+02:00");
    let r = s
        .account(&id, &format!("?as_of={}", shifted.replace('+', "%2B")))
        .await
        .ok(200);
    assert_eq!(r.body["version"], 2);
    // Before the account was opened it did not exist; far in the future it is the current one.
    s.account(&id, &format!("?as_of={before_opening}"))
        .await
        .err(404, "account_not_found");
    let r = s.account(&id, "?as_of=4102444800000").await.ok(200);
    assert_eq!(r.body["version"], 4);
    s.stop().await;
}

/// A v1 event as the ledger's first release wrote it.
fn v1(ty: &str, payload: Value) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type: EventType::new(ty).unwrap(),
        schema_version: 1,
        metadata: Default::default(),
        payload,
    }
}

async fn events_of_an_older_schema_read_in_the_current_shape(b: Backend) {
    let s = Srv::start(b).await;
    let stream = StreamId::new("account-legacy-1").unwrap();
    let old = vec![
        v1(
            "AccountOpened",
            json!({"account_id": "legacy-1", "owner": "ann", "currency": "EUR", "at_ms": 1}),
        ),
        v1(
            "MoneyDeposited",
            json!({"account_id": "legacy-1", "amount": "12.50", "at_ms": 2}),
        ),
        v1(
            "MoneyWithdrawn",
            json!({"account_id": "legacy-1", "amount": "2.25", "at_ms": 3}),
        ),
    ];
    let first = s
        .running
        .state
        .store
        .append(&stream, ExpectedVersion::NoStream, old)
        .await
        .unwrap()
        .first_position;
    let r = s.account("legacy-1", "").await.ok(200);
    assert!(r.text.contains(r#""balance":10.25"#), "{}", r.text);
    assert_eq!(r.body["owner_id"], "ann");
    // The current code keeps writing v2 next to the v1 history.
    s.deposit("legacy-1", "0.75").await.ok(201);
    let r = s.account("legacy-1", "?as_of_version=2").await.ok(200);
    assert!(r.text.contains(r#""balance":12.50"#), "{}", r.text);
    // The raw stream API answers the current shape too.
    let r = s
        .get("/v1/streams/account-legacy-1", &s.admin)
        .await
        .ok(200);
    let events = r.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 4);
    for e in events {
        assert_eq!(e["schema_version"], 2, "{e}");
    }
    assert_eq!(events[0]["data"]["owner_id"], "ann");
    assert_eq!(events[1]["data"]["amount"], 1250);
    assert_eq!(events[2]["data"]["amount"], 225);
    assert_eq!(events[3]["data"]["amount"], 75);

    // A live subscription (SSE) too: the history, then a v1 event an old process still wrote.
    let resp = s
        .http
        .get(format!(
            "{}/v1/subscribe?from_position={first}",
            s.running.url()
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut sse = resp.bytes_stream();
    let mut text = String::new();
    let mut seen: Vec<Value> = Vec::new();
    let mut live_sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 {
        if seen.len() == 4 && !live_sent {
            live_sent = true;
            // Through the raw stream API, which takes an old version if it upcasts.
            let body = json!({"expected_version": 4, "events": [{
                "type": "MoneyDeposited", "schema_version": 1,
                "data": {"account_id": "legacy-1", "amount": "0.05", "at_ms": 5}}]});
            s.post("/v1/streams/account-legacy-1", &s.admin, &body.to_string())
                .await
                .ok(201);
        }
        let chunk = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut sse))
            .await
            .expect("SSE delivers within 10 s")
            .expect("the stream stays open")
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        // Only whole lines: a chunk may end inside one.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        seen = whole
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .filter(|e: &Value| e["stream"] == "account-legacy-1")
            .collect();
    }
    assert!(seen.iter().all(|e| e["schema_version"] == 2), "{seen:?}");
    assert_eq!(seen[4]["data"]["amount"], 5);
    s.stop().await;
}

async fn snapshots_are_taken_in_the_background_and_bad_ones_rebuilt(b: Backend) {
    let s = Srv::start(b).await;
    let id = s.open().await;
    // Deposits of 0.01 .. 1.20: the version reaches 121, crossing 100.
    for i in 1..=120 {
        s.deposit(&id, &format!("{}.{:02}", i / 100, i % 100))
            .await
            .ok(201);
    }
    let snapshots = s
        .running
        .state
        .shop
        .repository()
        .snapshot_store()
        .expect("the server keeps snapshots")
        .clone();
    let stream = StreamId::new(format!("account-{id}")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(snap) = snapshots.load(&stream).await.unwrap() {
            break snap;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no snapshot was taken"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(taken.version, 100);
    let balance = r#""balance":72.60"#; // 120 × 121 / 2 cents
    let r = s.account(&id, "").await.ok(200);
    assert!(r.text.contains(balance), "{}", r.text);
    // A snapshot that no longer decodes is discarded and the account read from its events.
    let mut broken = taken.clone();
    broken.state = json!({"details": "not an account"});
    snapshots.save(&broken).await.unwrap();
    let r = s.account(&id, "").await.ok(200);
    assert!(r.text.contains(balance), "{}", r.text);
    assert_eq!(r.body["version"], 121);
    let r = s.account(&id, "?as_of_version=100").await.ok(200);
    assert!(r.text.contains(r#""balance":49.50"#), "{}", r.text);
    // ...and rebuilt in the background by the load that had to fold every event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while snapshots.load(&stream).await.unwrap().map(|s| s.version) != Some(121) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the snapshot was not rebuilt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

on_both_backends!(
    snapshots_are_taken_in_the_background_and_bad_ones_rebuilt,
    money_moves_exactly_and_only_for_the_owner_or_an_admin,
    bad_input_is_refused_and_changes_nothing,
    time_travel_by_version_and_by_timestamp,
    events_of_an_older_schema_read_in_the_current_shape,
);

/// `ficus bench snapshots` runs end to end (at small lengths) and prints a figure per length;
/// it fails by itself if the loads with and without snapshots disagree.
#[test]
fn bench_snapshots_prints_its_figures() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "bench",
            "snapshots",
            "--lengths",
            "100,250",
            "--loads",
            "1",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run ficus bench snapshots");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[1].trim_start().starts_with("250 "), "{text}");
}
