//! Crypto-shredding end to end on a real server (both backends): an account holder's name is
//! read back in plaintext (stream API, SSE) while the stored log (the SQLite file, the
//! PostgreSQL table, read directly) holds only ciphertext; `DELETE /v1/subjects/{id}/keys` is
//! admin only, idempotent (204 twice) and refuses a bad id with a code; afterwards the name
//! reads `"[erased]"` everywhere (also after a projection rebuild and a restart), versions and
//! positions are unchanged, and commands on the account still work.

use std::time::Duration;

use ficus_server::app::{self, Running, StoreConfig};
use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;
const ANN_NAME: &str = "Ann Secretname-7f3a";
const BOB_NAME: &str = "Bob Plainview-91c2";

struct Srv {
    running: Running,
    http: reqwest::Client,
    ann: String,
    bob: String,
    admin: String,
}

impl Srv {
    async fn start(data: &TestData) -> Srv {
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        let running = app::start(cfg).await.expect("server starts");
        Srv {
            ann: running.token("ann", &["customer"], HOUR),
            bob: running.token("bob", &["customer"], HOUR),
            admin: running.token("admin-1", &["admin"], HOUR),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            running,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.running.url()))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn open(&self, token: &str, name: &str) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/accounts",
                token,
                Some(json!({"currency": "EUR", "holder_name": name})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().expect("an account id").to_owned()
    }

    /// The account's stream as the stream API shows it.
    async fn events(&self, id: &str) -> Vec<Value> {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/v1/streams/account-{id}"),
                &self.admin,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().unwrap().clone()
    }

    /// The first `n` events of a live SSE subscription from position 1, parsed by hand.
    async fn subscribed(&self, n: usize) -> Vec<Value> {
        let mut resp = self
            .http
            .get(format!(
                "{}/v1/subscribe?from_position=1",
                self.running.url()
            ))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut buf = String::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while events.len() < n {
            let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                .await
                .expect("SSE events arrive in time")
                .unwrap()
                .expect("the SSE stream stays open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let msg: String = buf.drain(..end + 2).collect();
                if let Some(data) = msg.lines().find_map(|l| l.strip_prefix("data:")) {
                    events.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
        events
    }
}

/// Every stored payload, read from the backend directly (never through the server).
async fn raw_payloads(data: &TestData) -> String {
    match data.config("127.0.0.1:0".parse().unwrap()).store {
        StoreConfig::Postgres(pg) => {
            let pool = ficus_store::postgres::pool(&pg).unwrap();
            let c = pool.get().await.unwrap();
            let rows = c
                .query(
                    "SELECT payload::text FROM ficus_events ORDER BY position",
                    &[],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
                .join("\n")
        }
        _ => {
            let c = rusqlite::Connection::open(data.dir.path().join("events.db")).unwrap();
            let mut q = c
                .prepare("SELECT payload FROM events ORDER BY position")
                .unwrap();
            let rows = q.query_map([], |r| r.get::<_, String>(0)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
        }
    }
}

fn holder(e: &Value) -> &str {
    e["data"]["holder_name"].as_str().unwrap_or("<none>")
}

async fn erasing_a_subject_shreds_its_personal_fields(b: Backend) {
    let data = TestData::new(b);
    let s = Srv::start(&data).await;
    let ann_acc = s.open(&s.ann, ANN_NAME).await;
    let bob_acc = s.open(&s.bob, BOB_NAME).await;
    let (st, body) = s
        .call(
            Method::POST,
            &format!("/v1/accounts/{ann_acc}/deposits"),
            &s.ann,
            Some(json!({"amount": 12.5})),
        )
        .await;
    assert!(st == 200 || st == 201, "{st} {body}");

    // Plaintext through the API while the key exists.
    let before = s.events(&ann_acc).await;
    assert_eq!(before.len(), 2);
    assert_eq!(holder(&before[0]), ANN_NAME);
    let live = s.subscribed(3).await;
    assert_eq!(holder(&live[0]), ANN_NAME);
    assert_eq!(holder(&live[1]), BOB_NAME);

    // Ciphertext at rest.
    let raw = raw_payloads(&data).await;
    for secret in [ANN_NAME, BOB_NAME] {
        assert!(!raw.contains(secret), "plaintext {secret:?} at rest: {raw}");
    }
    assert!(
        raw.contains(ficus_store::shredding::ENCRYPTED_PREFIX),
        "{raw}"
    );

    // Only an admin may forget a subject; a bad id is a 400 with a code.
    let (st, _) = s
        .call(Method::DELETE, "/v1/subjects/ann/keys", &s.bob, None)
        .await;
    assert_eq!(st, 403);
    let (st, _) = s
        .call(Method::DELETE, "/v1/subjects/ann/keys", &s.ann, None)
        .await;
    assert_eq!(st, 403);
    let long = "x".repeat(ficus_store::shredding::MAX_SUBJECT_BYTES + 1);
    let (st, body) = s
        .call(
            Method::DELETE,
            &format!("/v1/subjects/{long}/keys"),
            &s.admin,
            None,
        )
        .await;
    assert_eq!(
        (st, body["code"].as_str()),
        (400, Some("invalid_subject")),
        "{body}"
    );
    assert_eq!(
        holder(&s.events(&ann_acc).await[0]),
        ANN_NAME,
        "refusals change nothing"
    );

    for _ in 0..2 {
        let (st, body) = s
            .call(Method::DELETE, "/v1/subjects/ann/keys", &s.admin, None)
            .await;
        assert_eq!(st, 204, "idempotent: {body}");
    }

    // Erased for Ann, Bob untouched, history intact.
    let after = s.events(&ann_acc).await;
    assert_eq!(holder(&after[0]), "[erased]");
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(
            (&x["id"], &x["version"], &x["position"]),
            (&y["id"], &y["version"], &y["position"])
        );
    }
    assert_eq!(holder(&s.events(&bob_acc).await[0]), BOB_NAME);
    let live = s.subscribed(3).await;
    assert_eq!(holder(&live[0]), "[erased]");
    assert_eq!(holder(&live[1]), BOB_NAME);

    // A rebuild replays the log through the same store: nothing comes back.
    let (st, body) = s
        .call(
            Method::POST,
            "/v1/projections/orders/rebuild",
            &s.admin,
            None,
        )
        .await;
    assert_eq!(st, 202, "{body}");
    assert_eq!(holder(&s.events(&ann_acc).await[0]), "[erased]");

    // Commands on the stream still work; the aggregate loads.
    let (st, body) = s
        .call(
            Method::POST,
            &format!("/v1/accounts/{ann_acc}/withdrawals"),
            &s.ann,
            Some(json!({"amount": 2.5})),
        )
        .await;
    assert!(st == 200 || st == 201, "{st} {body}");
    let (st, body) = s
        .call(
            Method::GET,
            &format!("/v1/accounts/{ann_acc}"),
            &s.ann,
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["balance"], json!(10.0), "{body}");
    assert_eq!(body["version"], 3);

    // A restart (cold key cache) still reads her as erased.
    s.running.stop().await.unwrap();
    let s = Srv::start(&data).await;
    assert_eq!(holder(&s.events(&ann_acc).await[0]), "[erased]");
    assert_eq!(holder(&s.events(&bob_acc).await[0]), BOB_NAME);
    s.running.stop().await.unwrap();
}

on_both_backends!(erasing_a_subject_shreds_its_personal_fields);
