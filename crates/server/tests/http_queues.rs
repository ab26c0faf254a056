//! End-to-end proof of the admin job-queue endpoints over real HTTP: queue depths, the
//! dead-letter list, job items, redrive (by ids, by kind, all) and purge answer with the right
//! data and touch only what they should, and callers or input they refuse get JSON 4xx errors.

use std::time::Duration;

use ficus_server::app::{self, Running};
use ficus_store::{Failure, JobId, JobQueue, NewJob};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;
/// No `Authorization` header.
const ANON: &str = "";

// ---------------------------------------------------------------------------------------------
// Harness

#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

impl Resp {
    #[track_caller]
    fn ok(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a JSON error `{code, message}` with this status and code.
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
        assert!(
            self.content_type.starts_with("application/json"),
            "error is not JSON: {}",
            self.content_type
        );
        self
    }

    #[track_caller]
    fn u64(&self, field: &str) -> u64 {
        self.body[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer {field:?} in {}", self.text))
    }

    #[track_caller]
    fn array(&self, field: &str) -> Vec<Value> {
        self.body[field]
            .as_array()
            .unwrap_or_else(|| panic!("no array {field:?} in {}", self.text))
            .clone()
    }
}

struct Srv {
    running: Running,
    _data: TestData,
    http: reqwest::Client,
    admin: String,
    seller: String,
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
            admin: running.token("admin-1", &["admin"], HOUR),
            seller: running.token("seller-1", &["seller"], HOUR),
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

    fn jobs(&self) -> &dyn JobQueue {
        self.running.state.jobs.as_ref()
    }

    fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if token.is_empty() {
            rb
        } else {
            rb.bearer_auth(token)
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Resp {
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            content_type,
            body,
            text,
        }
    }

    /// A request with `body` as JSON, or with no body at all when `None`.
    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Resp {
        let mut rb = self.request(method, path, token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        self.send(rb).await
    }

    /// Sends `body` verbatim as `application/json`.
    async fn call_raw(&self, method: Method, path: &str, token: &str, body: &str) -> Resp {
        let rb = self
            .request(method, path, token)
            .header("content-type", "application/json")
            .body(body.to_owned());
        self.send(rb).await
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.call(Method::GET, path, token, None).await
    }

    // --- direct queue access -----------------------------------------------------------------

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Vec<JobId> {
        self.jobs()
            .enqueue(jobs, ficus_store::now_ms())
            .await
            .expect("enqueue")
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    /// Leases every ready job of `queue` and fails each straight to the dead-letter queue with
    /// the error text `boom: <kind> #<id>`; returns the ids in id order.
    async fn kill_all(&self, queue: &str) -> Vec<JobId> {
        let now = ficus_store::now_ms();
        let leased = self
            .jobs()
            .lease(queue, 1000, now, 60_000)
            .await
            .expect("lease");
        let mut ids = Vec::new();
        for j in leased {
            let lease = j.lease.expect("a leased job carries its lease");
            let error = format!("boom: {} #{}", j.kind, j.id);
            assert!(self
                .jobs()
                .fail(lease, &error, Failure::Dead, now)
                .await
                .expect("fail"));
            ids.push(j.id);
        }
        ids.sort_unstable();
        ids
    }

    async fn dead(&self, queue: &str) -> Vec<Value> {
        self.get(&format!("/v1/queues/{queue}/dead"), &self.admin)
            .await
            .ok(200)
            .array("jobs")
    }

    async fn item(&self, id: JobId) -> Value {
        self.get(&format!("/v1/jobs/items/{id}"), &self.admin)
            .await
            .ok(200)
            .body
    }

    /// The stats entry of `queue` from `GET /v1/queues`.
    async fn queue_stats(&self, queue: &str) -> Value {
        let r = self.get("/v1/queues", &self.admin).await.ok(200);
        r.array("queues")
            .into_iter()
            .find(|q| q["name"] == queue)
            .unwrap_or_else(|| panic!("no queue {queue} in {}", r.text))
    }
}

fn job(queue: &str, kind: &str, n: u32) -> NewJob {
    NewJob {
        max_attempts: 3,
        ..NewJob::new(
            queue,
            kind,
            json!({"n": n, "to": format!("user-{n}@example.com")}),
        )
    }
}

fn ids_of(jobs: &[Value]) -> Vec<JobId> {
    jobs.iter().map(|j| j["id"].as_i64().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

async fn stats_dead_list_items_redrive_and_purge(b: Backend) {
    let s = Srv::start(b).await;
    const MAIL: &str = "test-mail";
    const OTHER: &str = "test-other";

    // Five dead mails of three kinds, and one dead job of another queue sharing a kind.
    let enqueued = s
        .enqueue(vec![
            job(MAIL, "welcome", 1),
            job(MAIL, "welcome", 2),
            job(MAIL, "digest", 3),
            job(MAIL, "digest", 4),
            job(MAIL, "receipt", 5),
        ])
        .await;
    let dead = s.kill_all(MAIL).await;
    assert_eq!(dead, enqueued);
    let (w1, w2, d1, d2, r1) = (dead[0], dead[1], dead[2], dead[3], dead[4]);
    s.enqueue(vec![job(OTHER, "welcome", 9)]).await;
    let other_dead = s.kill_all(OTHER).await;
    assert_eq!(other_dead.len(), 1);
    // Then, in MAIL: one delayed, one leased (in flight), one ready.
    let later = ficus_store::now_ms() + 3_600_000;
    let delayed = s
        .enqueue(vec![NewJob {
            run_at_ms: Some(later),
            ..job(MAIL, "reminder", 6)
        }])
        .await[0];
    let leased_id = s.enqueue(vec![job(MAIL, "welcome", 7)]).await[0];
    let leased = s
        .jobs()
        .lease(MAIL, 1, ficus_store::now_ms(), 60_000)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, leased_id);
    let ready_id = s
        .enqueue(vec![NewJob {
            priority: 7,
            ..job(MAIL, "welcome", 8)
        }])
        .await[0];

    // --- GET /v1/queues
    let r = s.get("/v1/queues", &s.admin).await.ok(200);
    let names: Vec<&str> = r.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&MAIL) && names.contains(&OTHER),
        "{}",
        r.text
    );
    let mail = s.queue_stats(MAIL).await;
    assert_eq!(
        (
            &mail["ready"],
            &mail["delayed"],
            &mail["in_flight"],
            &mail["dead"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(5)),
        "{mail}"
    );
    assert!(mail["oldest_ready_wait_ms"].is_u64(), "{mail}");
    let other = s.queue_stats(OTHER).await;
    assert_eq!(
        (
            &other["ready"],
            &other["delayed"],
            &other["in_flight"],
            &other["dead"],
            &other["oldest_ready_wait_ms"]
        ),
        (&json!(0), &json!(0), &json!(0), &json!(1), &json!(0)),
        "{other}"
    );

    // --- GET /v1/queues/{name}/dead
    let jobs = s.dead(MAIL).await;
    assert_eq!(ids_of(&jobs), dead, "oldest first, only the dead ones");
    let kinds: Vec<&str> = jobs.iter().map(|j| j["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["welcome", "welcome", "digest", "digest", "receipt"]);
    for (j, n) in jobs.iter().zip(1..) {
        let id = j["id"].as_i64().unwrap();
        let kind = j["kind"].as_str().unwrap();
        assert_eq!(j["last_error"], json!(format!("boom: {kind} #{id}")));
        assert_eq!(j["attempts"], 1, "{j}");
        assert_eq!(j["max_attempts"], 3, "{j}");
        assert_eq!(j["payload"]["n"], n, "{j}");
        let stored = s.jobs().get(id).await.unwrap().unwrap();
        assert_eq!(
            j["created_at"],
            ficus_core::time::format_rfc3339_ms(stored.created_at_ms)
        );
        assert_eq!(
            j["run_at"],
            ficus_core::time::format_rfc3339_ms(stored.run_at_ms)
        );
        let mut keys: Vec<&str> = j.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "attempts",
                "created_at",
                "id",
                "kind",
                "last_error",
                "max_attempts",
                "payload",
                "run_at"
            ]
        );
    }
    let r = s
        .get(&format!("/v1/queues/{MAIL}/dead?limit=2"), &s.admin)
        .await
        .ok(200);
    assert_eq!(ids_of(&r.array("jobs")), vec![w1, w2]);
    assert_eq!(ids_of(&s.dead(OTHER).await), other_dead);
    assert!(s.dead("test-no-such-queue").await.is_empty());

    // --- GET /v1/jobs/items/{id}, in each state
    let it = s.item(d1).await;
    assert_eq!(it["id"], d1);
    assert_eq!(it["queue"], MAIL);
    assert_eq!(it["state"], "dead");
    assert_eq!(it["kind"], "digest");
    assert_eq!(it["priority"], 0);
    assert_eq!(it["attempts"], 1);
    assert_eq!(it["last_error"], json!(format!("boom: digest #{d1}")));
    assert_eq!(it["payload"]["n"], 3);
    let it = s.item(leased_id).await;
    assert_eq!(
        (&it["state"], &it["attempts"]),
        (&json!("leased"), &json!(1))
    );
    assert_eq!(it["last_error"], Value::Null);
    let it = s.item(ready_id).await;
    assert_eq!(
        (&it["state"], &it["priority"], &it["attempts"]),
        (&json!("ready"), &json!(7), &json!(0))
    );
    let it = s.item(delayed).await;
    assert_eq!(it["state"], "ready");
    assert_eq!(it["run_at"], ficus_core::time::format_rfc3339_ms(later));
    s.get("/v1/jobs/items/999999999", &s.admin)
        .await
        .err(404, "job_not_found");

    // --- redrive by ids: only the dead ones of this queue count.
    let r = s
        .call(
            Method::POST,
            &format!("/v1/queues/{MAIL}/dead/redrive"),
            &s.admin,
            Some(json!({"ids": [w1, ready_id, other_dead[0], 999999999]})),
        )
        .await
        .ok(200);
    assert_eq!(r.body, json!({"redriven": 1}));
    let it = s.item(w1).await;
    assert_eq!(
        (&it["state"], &it["attempts"]),
        (&json!("ready"), &json!(0))
    );
    assert_eq!(s.item(other_dead[0]).await["state"], "dead");
    assert_eq!(ids_of(&s.dead(MAIL).await), vec![w2, d1, d2, r1]);

    // --- redrive by kind, scoped to the queue.
    let r = s
        .call(
            Method::POST,
            &format!("/v1/queues/{MAIL}/dead/redrive"),
            &s.admin,
            Some(json!({"kind": "digest"})),
        )
        .await
        .ok(200);
    assert_eq!(r.u64("redriven"), 2);
    for id in [d1, d2] {
        let it = s.item(id).await;
        assert_eq!(
            (&it["state"], &it["attempts"]),
            (&json!("ready"), &json!(0))
        );
    }
    assert_eq!(ids_of(&s.dead(MAIL).await), vec![w2, r1]);
    // Kind and ids together: both must match.
    let r = s
        .call(
            Method::POST,
            &format!("/v1/queues/{MAIL}/dead/redrive"),
            &s.admin,
            Some(json!({"kind": "digest", "ids": [w2]})),
        )
        .await
        .ok(200);
    assert_eq!(r.u64("redriven"), 0);

    // --- purge with a filter, then the item is gone.
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/queues/{MAIL}/dead"),
            &s.admin,
            Some(json!({"kind": "receipt"})),
        )
        .await
        .ok(200);
    assert_eq!(r.body, json!({"purged": 1}));
    s.get(&format!("/v1/jobs/items/{r1}"), &s.admin)
        .await
        .err(404, "job_not_found");
    assert_eq!(ids_of(&s.dead(MAIL).await), vec![w2]);

    // --- redrive all: no body at all.
    let r = s
        .call(
            Method::POST,
            &format!("/v1/queues/{MAIL}/dead/redrive"),
            &s.admin,
            None,
        )
        .await
        .ok(200);
    assert_eq!(r.u64("redriven"), 1);
    let it = s.item(w2).await;
    assert_eq!(
        (&it["state"], &it["attempts"]),
        (&json!("ready"), &json!(0))
    );
    assert!(s.dead(MAIL).await.is_empty());
    let mail = s.queue_stats(MAIL).await;
    assert_eq!(
        (
            &mail["ready"],
            &mail["delayed"],
            &mail["in_flight"],
            &mail["dead"]
        ),
        (&json!(5), &json!(1), &json!(1), &json!(0)),
        "{mail}"
    );
    // The redriven jobs really run again: a worker leases them.
    let again = s
        .jobs()
        .lease(MAIL, 10, ficus_store::now_ms(), 60_000)
        .await
        .unwrap();
    let mut again: Vec<JobId> = again.iter().map(|j| j.id).collect();
    again.sort_unstable();
    assert_eq!(again, vec![w1, w2, d1, d2, ready_id]);

    // The other queue was never touched; purge all of it with `{}`.
    assert_eq!(ids_of(&s.dead(OTHER).await), other_dead);
    let r = s
        .call(
            Method::DELETE,
            &format!("/v1/queues/{OTHER}/dead"),
            &s.admin,
            Some(json!({})),
        )
        .await
        .ok(200);
    assert_eq!(r.u64("purged"), 1);
    assert!(s.dead(OTHER).await.is_empty());
    assert_eq!(s.queue_stats(MAIL).await["in_flight"], 6);

    s.stop().await;
}

async fn callers_and_input_are_refused_with_json_errors(b: Backend) {
    let s = Srv::start(b).await;
    const Q: &str = "test-refusals";
    s.enqueue(vec![job(Q, "welcome", 1), job(Q, "digest", 2)])
        .await;
    let dead = s.kill_all(Q).await;
    let item = format!("/v1/jobs/items/{}", dead[0]);
    let list = format!("/v1/queues/{Q}/dead");
    let redrive = format!("/v1/queues/{Q}/dead/redrive");

    // 401 without a token (or a bad one), 403 for a non-admin; nothing changes.
    let routes = [
        (Method::GET, "/v1/queues"),
        (Method::GET, list.as_str()),
        (Method::GET, item.as_str()),
        (Method::POST, redrive.as_str()),
        (Method::DELETE, list.as_str()),
    ];
    for (method, path) in &routes {
        s.call(method.clone(), path, ANON, None)
            .await
            .err(401, "unauthorized");
        s.call(method.clone(), path, "not-a-token", None)
            .await
            .err(401, "unauthorized");
        s.call(method.clone(), path, &s.seller, None)
            .await
            .err(403, "forbidden");
    }
    assert_eq!(
        ids_of(&s.dead(Q).await),
        dead,
        "refused calls change nothing"
    );

    // Bad limits.
    for q in ["limit=0", "limit=1001", "limit=-1"] {
        let r = s.get(&format!("{list}?{q}"), &s.admin).await;
        if q == "limit=-1" {
            r.err(400, "invalid_query");
        } else {
            r.err(400, "invalid_limit");
        }
    }
    s.get(&format!("{list}?limit=abc"), &s.admin)
        .await
        .err(400, "invalid_query");
    s.get(&format!("{list}?limti=5"), &s.admin)
        .await
        .err(400, "invalid_query");
    let r = s.get(&format!("{list}?limit=1000"), &s.admin).await.ok(200);
    assert_eq!(ids_of(&r.array("jobs")), dead);

    // Bad queue names and item ids.
    let long = "q".repeat(129);
    s.get(&format!("/v1/queues/{long}/dead"), &s.admin)
        .await
        .err(400, "invalid_queue");
    s.call(
        Method::POST,
        &format!("/v1/queues/{long}/dead/redrive"),
        &s.admin,
        None,
    )
    .await
    .err(400, "invalid_queue");
    s.call(
        Method::DELETE,
        &format!("/v1/queues/{long}/dead"),
        &s.admin,
        None,
    )
    .await
    .err(400, "invalid_queue");
    let ok_long = "q".repeat(128);
    assert!(s.dead(&ok_long).await.is_empty());
    s.get("/v1/jobs/items/abc", &s.admin)
        .await
        .err(400, "invalid_path");

    // Bad bodies, for both redrive and purge; nothing changes.
    for method in [Method::POST, Method::DELETE] {
        let path = if method == Method::POST {
            redrive.as_str()
        } else {
            list.as_str()
        };
        for body in [
            "{not json",
            r#"{"idz": [1]}"#,
            r#"{"ids": "all"}"#,
            r#"{"ids": [1.5]}"#,
            r#"{"kind": 7}"#,
            "null",
            "[]",
        ] {
            s.call_raw(method.clone(), path, &s.admin, body)
                .await
                .err(400, "invalid_json");
        }
        let many: Vec<i64> = (1..=1001).collect();
        s.call(method.clone(), path, &s.admin, Some(json!({ "ids": many })))
            .await
            .err(400, "invalid_filter");
        s.call(method.clone(), path, &s.admin, Some(json!({"kind": ""})))
            .await
            .err(400, "invalid_filter");
        s.call(
            method.clone(),
            path,
            &s.admin,
            Some(json!({"kind": "k".repeat(129)})),
        )
        .await
        .err(400, "invalid_filter");
        let rb = s
            .request(method.clone(), path, &s.admin)
            .header("content-type", "text/plain")
            .body(r#"{"kind": "welcome"}"#);
        s.send(rb).await.err(415, "unsupported_media_type");
    }
    assert_eq!(
        ids_of(&s.dead(Q).await),
        dead,
        "refused bodies change nothing"
    );
    // 1000 ids is the limit, and is accepted.
    let mut thousand: Vec<i64> = (1_000_000..1_000_998).collect();
    thousand.extend(&dead);
    let r = s
        .call(
            Method::POST,
            &redrive,
            &s.admin,
            Some(json!({ "ids": thousand })),
        )
        .await
        .ok(200);
    assert_eq!(r.u64("redriven"), 2);

    // Unknown routes under /v1/queues and /v1/jobs are 404, wrong methods 405.
    for path in [
        "/v1/queues/x",
        "/v1/queues/x/alive",
        "/v1/queues/x/dead/nothing",
        "/v1/queues/x/dead/redrive/now",
        "/v1/jobs/items/1/more",
    ] {
        s.get(path, &s.admin).await.err(404, "route_not_found");
    }
    for (method, path) in [
        (Method::GET, redrive.as_str()),
        (Method::POST, list.as_str()),
        (Method::POST, "/v1/queues"),
        (Method::DELETE, item.as_str()),
    ] {
        s.call(method, path, &s.admin, None)
            .await
            .err(405, "method_not_allowed");
    }

    // The routes are documented.
    let r = s.get("/v1/openapi.json", ANON).await.ok(200);
    let paths = r.body["paths"].as_object().expect("paths");
    for path in [
        "/v1/queues",
        "/v1/queues/{name}/dead",
        "/v1/queues/{name}/dead/redrive",
        "/v1/jobs/items/{id}",
    ] {
        assert!(paths.contains_key(path), "OpenAPI lacks {path}");
    }

    s.stop().await;
}

on_both_backends!(
    stats_dead_list_items_redrive_and_purge,
    callers_and_input_are_refused_with_json_errors,
);
