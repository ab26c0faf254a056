//! End-to-end proof of the public HTTP contract: a real server on a loopback port (one per test,
//! each in its own data directory) answers every route with the documented statuses, codes and
//! field names, refuses bad input with a 4xx (never a 500) without writing anything, lets
//! clients read their own writes, and survives a graceful stop and reopen with nothing lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ficus_server::app::{self, Running, ServerConfig};
use futures::stream::{BoxStream, StreamExt};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;
const ADMIN: &str = "admin-1";
const SELLER: &str = "seller-1";
const SELLER2: &str = "seller-2";
const CUSTOMER: &str = "cust-1";
const CUSTOMER2: &str = "cust-2";
/// No `Authorization` header.
const ANON: &str = "";

// ---------------------------------------------------------------------------------------------
// Harness

/// One answer: status, headers, the body as JSON (`Null` when it is not JSON) and as text.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// Asserts the status.
    #[track_caller]
    fn ok(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a JSON error answer `{code, message}` with this status and code.
    #[track_caller]
    fn err(self, status: u16, code: &str) -> Self {
        assert_eq!(
            (self.status, self.code()),
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
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error is not JSON: {:?}",
            self.headers
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
    fn string(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field:?} in {}", self.text))
            .to_owned()
    }

    /// The `Ficus-Position` header of a query answer.
    #[track_caller]
    fn ficus_position(&self) -> u64 {
        self.header("ficus-position")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Ficus-Position header in {:?}", self.headers))
    }
}

/// A server of its own on 127.0.0.1:0 in a temporary data directory, with a client and tokens.
struct Srv {
    running: Running,
    data: TestData,
    http: reqwest::Client,
    admin: String,
    seller: String,
    seller2: String,
    customer: String,
    customer2: String,
}

impl Srv {
    async fn start(b: Backend) -> Srv {
        Self::start_with(b, |_| {}).await
    }

    async fn start_with(b: Backend, configure: impl FnOnce(&mut ServerConfig)) -> Srv {
        Self::open(TestData::new(b), configure).await
    }

    /// Starts a server on `data` (which may hold the data of an earlier one).
    async fn open(data: TestData, configure: impl FnOnce(&mut ServerConfig)) -> Srv {
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        configure(&mut cfg);
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        let token = |sub: &str, role: &str| running.token(sub, &[role], HOUR);
        Srv {
            admin: token(ADMIN, "admin"),
            seller: token(SELLER, "seller"),
            seller2: token(SELLER2, "seller"),
            customer: token(CUSTOMER, "customer"),
            customer2: token(CUSTOMER2, "customer"),
            running,
            data,
            http,
        }
    }

    /// Graceful stop; hands back the storage.
    async fn stop(self) -> TestData {
        tokio::time::timeout(Duration::from_secs(10), self.running.stop())
            .await
            .expect("stop finishes within 10 s")
            .expect("clean stop");
        self.data
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    /// Head of the global log, straight from the store.
    fn head(&self) -> u64 {
        self.running.state.store.head_position()
    }

    /// A request with a bearer token (none when `token` is empty).
    fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        if token.is_empty() {
            rb
        } else {
            rb.bearer_auth(token)
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Resp {
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    async fn call(&self, method: Method, path: &str, token: &str, body: Option<&Value>) -> Resp {
        let mut rb = self.request(method, path, token);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        self.send(rb).await
    }

    /// Sends `body` verbatim as `application/json` (for exact number texts).
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

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::POST, path, token, Some(&body)).await
    }

    async fn delete(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call(Method::DELETE, path, token, Some(&body)).await
    }

    // --- domain shortcuts ----------------------------------------------------------------

    /// `POST /v1/products` with `price` inserted verbatim as the number's text.
    async fn create_product_as(
        &self,
        token: &str,
        name: &str,
        category: &str,
        price: &str,
        stock: Option<i64>,
    ) -> Resp {
        let stock = stock.map_or(String::new(), |q| format!(r#","stock":{q}"#));
        let body = format!(
            r#"{{"name":{},"description":{},"category":{},"price":{price},"currency":"EUR"{stock}}}"#,
            json!(name),
            json!(format!("All about {name}")),
            json!(category),
        );
        self.call_raw(Method::POST, "/v1/products", token, &body)
            .await
    }

    /// Creates a product as `seller-1`; returns (id, position).
    async fn product(
        &self,
        name: &str,
        category: &str,
        price: &str,
        stock: Option<i64>,
    ) -> (String, u64) {
        let r = self
            .create_product_as(&self.seller, name, category, price, stock)
            .await
            .ok(201);
        (r.string("id"), r.u64("position"))
    }

    async fn set_price(&self, token: &str, id: &str, price: &str) -> Resp {
        self.call_raw(
            Method::PUT,
            &format!("/v1/products/{id}/price"),
            token,
            &format!(r#"{{"price":{price}}}"#),
        )
        .await
    }

    /// `GET /v1/products/{id}` once the catalog has reached `min_position`.
    async fn product_details(&self, id: &str, min_position: u64) -> Resp {
        self.get(
            &format!("/v1/products/{id}?min_position={min_position}"),
            ANON,
        )
        .await
    }

    async fn create_order_as(&self, token: &str, items: &[(&str, i64)]) -> Resp {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        self.post("/v1/orders", token, json!({ "items": items }))
            .await
    }

    /// The whole global log as admin.
    async fn all_events(&self) -> Vec<Value> {
        let r = self.get("/v1/all?limit=1000", &self.admin).await.ok(200);
        assert_eq!(r.u64("head_position"), self.head());
        r.body["events"].as_array().unwrap().clone()
    }

    /// Asserts the log is still at `head`, both in the store and over `GET /v1/all`.
    #[track_caller]
    fn assert_head(&self, head: u64, what: &str) {
        assert_eq!(self.head(), head, "{what}: something was written");
    }
}

fn today() -> String {
    ficus_core::time::format_date(ficus_core::time::day_of_ms(ficus_store::now_ms()))
}

/// Percent-encodes a query-string value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `depth` nested arrays: `[[[...]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

// --- Server-Sent Events ------------------------------------------------------------------------

#[derive(Debug)]
struct SseMsg {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl SseMsg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("SSE data is JSON")
    }
}

/// A live `GET /v1/subscribe`, parsed by hand from the byte stream.
struct Sse {
    stream: BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Sse {
    async fn open(s: &Srv, path: &str, last_event_id: Option<&str>) -> Sse {
        // No whole-request timeout here: the response never ends by itself.
        let client = reqwest::Client::new();
        let mut rb = client.get(s.url(path)).bearer_auth(&s.admin);
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(5), rb.send())
            .await
            .expect("subscribe answers")
            .expect("subscribe reaches the server");
        assert_eq!(resp.status().as_u16(), 200);
        let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(ctype.starts_with("text/event-stream"), "{ctype}");
        Sse {
            stream: resp.bytes_stream().map(|r| r.map(|b| b.to_vec())).boxed(),
            buf: Vec::new(),
        }
    }

    /// The next message (keep-alive comments skipped), or `None` if none comes within `wait`
    /// or the stream ends.
    async fn next_within(&mut self, wait: Duration) -> Option<SseMsg> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("SSE is UTF-8");
                let mut msg = SseMsg {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if line.is_empty() || line.starts_with(':') {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => msg.id = Some(value.to_owned()),
                        "event" => msg.event = Some(value.to_owned()),
                        "data" => {
                            if has_data {
                                msg.data.push('\n');
                            }
                            msg.data.push_str(value);
                            has_data = true;
                        }
                        _ => {}
                    }
                }
                if has_data {
                    return Some(msg);
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn next(&mut self) -> SseMsg {
        self.next_within(Duration::from_secs(5))
            .await
            .expect("an SSE message within 5 s")
    }
}

// ---------------------------------------------------------------------------------------------
// Raw event store

async fn raw_append_read_and_expected_versions(b: Backend) {
    let s = Srv::start(b).await;
    let admin = s.admin.as_str();

    // The first append to a fresh store: versions and positions start at 1.
    let r = s
        .post(
            "/v1/streams/acct-1",
            admin,
            json!({"expected_version": "no_stream", "events": [
                {"type": "Opened", "data": {"owner": "ann"},
                 "metadata": {"correlation_id": "c-1", "source": "test"}},
                {"type": "Deposited", "data": {"amount": 10}},
            ]}),
        )
        .await
        .ok(201);
    assert_eq!(r.body["stream"], "acct-1");
    assert_eq!(
        (
            r.u64("first_version"),
            r.u64("last_version"),
            r.u64("position")
        ),
        (1, 2, 2)
    );

    let r = s
        .post(
            "/v1/streams/acct-1",
            admin,
            json!({"expected_version": 2, "events": [{"type": "Deposited", "data": {"amount": 5}}]}),
        )
        .await
        .ok(201);
    assert_eq!(
        (
            r.u64("first_version"),
            r.u64("last_version"),
            r.u64("position")
        ),
        (3, 3, 3)
    );

    // Conflicts: 409 with the actual version, and nothing written.
    let one = json!([{"type": "Deposited", "data": {}}]);
    for (stream, expected, actual) in [
        ("acct-1", json!(1), 3),
        ("acct-1", json!(4), 3),
        ("acct-1", json!("no_stream"), 3),
        ("acct-2", json!("exists"), 0),
        ("acct-2", json!(1), 0),
    ] {
        let r = s
            .post(
                &format!("/v1/streams/{stream}"),
                admin,
                json!({"expected_version": expected, "events": one}),
            )
            .await
            .err(409, "wrong_expected_version");
        assert_eq!(r.u64("actual_version"), actual, "{stream} {expected}");
    }
    assert_eq!(s.all_events().await.len(), 3);

    // Refused appends (one bad event among good ones included) write nothing either.
    for (path, body, code) in [
        (
            "/v1/streams/acct-1",
            json!({"expected_version": "sometimes", "events": one}),
            "invalid_expected_version",
        ),
        (
            "/v1/streams/acct-1",
            json!({"expected_version": -1, "events": one}),
            "invalid_json",
        ),
        (
            "/v1/streams/acct-1",
            json!({"events": []}),
            "invalid_request",
        ),
        (
            "/v1/streams/acct-1",
            json!({"events": [{"type": "Good"}, {"type": "bad type!"}]}),
            "invalid_event_type",
        ),
        (
            "/v1/streams/acct-1",
            json!({"events": [{"type": "A", "colour": "red"}]}),
            "invalid_json",
        ),
        (
            "/v1/streams/$all",
            json!({"events": one}),
            "invalid_stream_id",
        ),
    ] {
        s.post(path, admin, body).await.err(400, code);
    }
    let all = s.all_events().await;
    assert_eq!(all.len(), 3);
    s.assert_head(3, "refused appends");

    // "any", omitted (= any) and "exists".
    let r = s
        .post(
            "/v1/streams/acct-1",
            admin,
            json!({"expected_version": "any", "events": one}),
        )
        .await
        .ok(201);
    assert_eq!((r.u64("first_version"), r.u64("position")), (4, 4));
    let r = s
        .post("/v1/streams/acct-2", admin, json!({"events": one}))
        .await
        .ok(201);
    assert_eq!((r.u64("first_version"), r.u64("position")), (1, 5));
    let r = s
        .post(
            "/v1/streams/acct-2",
            admin,
            json!({"expected_version": "exists", "events": one}),
        )
        .await
        .ok(201);
    assert_eq!((r.u64("first_version"), r.u64("position")), (2, 6));

    // Reading a stream.
    let r = s.get("/v1/streams/acct-1", admin).await.ok(200);
    let events = r.body["events"].as_array().unwrap();
    let versions: Vec<u64> = events
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    let positions: Vec<u64> = events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    assert_eq!(positions, [1, 2, 3, 4]);
    let e = &events[0];
    for field in [
        "id",
        "stream",
        "version",
        "position",
        "type",
        "data",
        "metadata",
        "recorded_at",
    ] {
        assert!(e.get(field).is_some(), "event lacks {field}: {e}");
    }
    assert_eq!(e["stream"], "acct-1");
    assert_eq!(e["type"], "Opened");
    assert_eq!(e["data"], json!({"owner": "ann"}));
    assert_eq!(e["metadata"]["correlation_id"], "c-1");
    assert_eq!(e["metadata"]["source"], "test");
    assert_eq!(e["metadata"]["user_id"], ADMIN);
    assert!(uuid::Uuid::parse_str(e["id"].as_str().unwrap()).is_ok());
    let at = e["recorded_at"].as_str().unwrap();
    assert!(
        at.len() == 24 && at.ends_with('Z') && at.contains('T'),
        "{at}"
    );

    let r = s
        .get("/v1/streams/acct-1?from_version=2&limit=2", admin)
        .await
        .ok(200);
    let versions: Vec<u64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [2, 3]);
    let r = s
        .get("/v1/streams/acct-1?from_version=99", admin)
        .await
        .ok(200);
    assert_eq!(r.body["events"], json!([]));
    s.get("/v1/streams/nobody", admin)
        .await
        .err(404, "stream_not_found");
    for (bad, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-1", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("colour=red", "invalid_query"),
    ] {
        s.get(&format!("/v1/streams/acct-1?{bad}"), admin)
            .await
            .err(400, code);
        s.get(&format!("/v1/all?{bad}"), admin).await.err(400, code);
    }
    s.get("/v1/streams/acct-1?limit=1000", admin).await.ok(200);

    // The global log.
    let r = s
        .get("/v1/all?from_position=2&limit=3", admin)
        .await
        .ok(200);
    let positions: Vec<u64> = r.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, [2, 3, 4]);
    assert_eq!(r.u64("head_position"), 6);
    let all = s.all_events().await;
    let streams: Vec<&str> = all.iter().map(|e| e["stream"].as_str().unwrap()).collect();
    assert_eq!(
        streams,
        ["acct-1", "acct-1", "acct-1", "acct-1", "acct-2", "acct-2"]
    );
    let r = s.get("/v1/all?from_position=7", admin).await.ok(200);
    assert_eq!(r.body["events"], json!([]));

    s.stop().await;
}

async fn raw_endpoints_need_an_admin_token(b: Backend) {
    let s = Srv::start(b).await;
    s.post(
        "/v1/streams/acct-1",
        &s.admin,
        json!({"events": [{"type": "Opened"}]}),
    )
    .await
    .ok(201);
    let head = s.head();

    let forged = app::mint(
        &ficus_gateway::Auth::new("another-secret"),
        ADMIN,
        &["admin"],
        HOUR,
    );
    let expired = s.running.token(ADMIN, &["admin"], -60);
    let payload_of = |t: &str| t.split('.').nth(1).unwrap().to_owned();
    let alg_none = format!(
        "{}.{}.",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        payload_of(&s.admin)
    );
    let alg_none_signed = format!(
        "{}.{}.{}",
        B64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        payload_of(&s.admin),
        s.admin.split('.').nth(2).unwrap()
    );
    // A seller's token with its payload swapped for one claiming admin.
    let sig = s.seller.split('.').nth(2).unwrap();
    let elevated = format!(
        "{}.{}.{sig}",
        s.seller.split('.').next().unwrap(),
        B64.encode(br#"{"sub":"seller-1","roles":["admin"]}"#)
    );
    let bad_tokens = [
        ("bad signature", forged.as_str()),
        ("expired", expired.as_str()),
        ("alg none", alg_none.as_str()),
        ("alg none with a signature", alg_none_signed.as_str()),
        ("tampered payload", elevated.as_str()),
        ("garbage", "not-a-token"),
    ];

    let append = json!({"events": [{"type": "Sneaky"}]});
    let routes: [(Method, String, Option<Value>); 7] = [
        (
            Method::POST,
            "/v1/streams/acct-1".into(),
            Some(append.clone()),
        ),
        (Method::GET, "/v1/streams/acct-1".into(), None),
        (Method::GET, "/v1/all".into(), None),
        (Method::GET, "/v1/subscribe?from_position=1".into(), None),
        (Method::GET, "/v1/projections".into(), None),
        (Method::POST, "/v1/projections/catalog/rebuild".into(), None),
        (
            Method::GET,
            format!("/v1/analytics/orders?from={0}&to={0}", today()),
            None,
        ),
    ];
    for (method, path, body) in &routes {
        let what = format!("{method} {path}");
        let r = s.call(method.clone(), path, ANON, body.as_ref()).await;
        r.err(401, "unauthorized");
        // Not a bearer scheme.
        let rb = s.request(method.clone(), path, ANON).header(
            "authorization",
            format!("Basic {}", B64.encode("admin:admin")),
        );
        s.send(rb).await.err(401, "unauthorized");
        for (why, token) in bad_tokens {
            let r = s.call(method.clone(), path, token, body.as_ref()).await;
            assert_eq!(
                (r.status, r.code()),
                (401, "unauthorized"),
                "{what} with a token that is {why}: {}",
                r.text
            );
        }
        for token in [&s.seller, &s.customer] {
            s.call(method.clone(), path, token, body.as_ref())
                .await
                .err(403, "forbidden");
        }
        s.assert_head(head, &what);
    }
    // The genuine admin token works (the SSE one is covered by its own test).
    s.get("/v1/streams/acct-1", &s.admin).await.ok(200);
    s.get("/v1/all", &s.admin).await.ok(200);
    s.get("/v1/projections", &s.admin).await.ok(200);

    s.stop().await;
}

async fn subscribe_streams_live_events_and_resumes_from_last_event_id(b: Backend) {
    let s = Srv::start(b).await;
    let admin = s.admin.as_str();
    s.post(
        "/v1/streams/feed-1",
        admin,
        json!({"events": [{"type": "A", "data": {"n": 1}}, {"type": "B", "data": {"n": 2}},
                          {"type": "C", "data": {"n": 3}}]}),
    )
    .await
    .ok(201);
    let log = s.all_events().await;

    let mut sub = Sse::open(&s, "/v1/subscribe?from_position=1", None).await;
    for p in 1..=3u64 {
        let m = sub.next().await;
        assert_eq!(m.id.as_deref(), Some(p.to_string().as_str()));
        assert_eq!(m.event, None);
        // One event per message: the data is exactly that event's JSON.
        assert_eq!(m.json(), log[p as usize - 1]);
    }
    // Live delivery of an event appended after subscribing.
    s.post(
        "/v1/streams/feed-2",
        admin,
        json!({"events": [{"type": "Live", "data": {"n": 4}}]}),
    )
    .await
    .ok(201);
    let m = sub.next().await;
    assert_eq!(m.id.as_deref(), Some("4"));
    let e = m.json();
    assert_eq!(
        (
            e["position"].as_u64(),
            e["stream"].as_str(),
            e["type"].as_str()
        ),
        (Some(4), Some("feed-2"), Some("Live"))
    );
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
    drop(sub);

    // Reconnecting with Last-Event-ID continues right after it (and wins over from_position).
    let mut sub = Sse::open(&s, "/v1/subscribe?from_position=1", Some("2")).await;
    assert_eq!(sub.next().await.id.as_deref(), Some("3"));
    assert_eq!(sub.next().await.id.as_deref(), Some("4"));
    assert!(sub.next_within(Duration::from_millis(300)).await.is_none());
    drop(sub);

    // A subscriber that starts at the head sees only what comes next.
    let mut sub = Sse::open(&s, "/v1/subscribe?from_position=5", None).await;
    assert!(sub.next_within(Duration::from_millis(200)).await.is_none());
    s.post(
        "/v1/streams/feed-3",
        admin,
        json!({"events": [{"type": "Later"}]}),
    )
    .await
    .ok(201);
    let m = sub.next().await;
    assert_eq!(m.id.as_deref(), Some("5"));
    assert_eq!(m.json()["type"], "Later");
    drop(sub);

    let rb = s
        .request(Method::GET, "/v1/subscribe", admin)
        .header("last-event-id", "not-a-position");
    s.send(rb).await.err(400, "invalid_last_event_id");
    s.get("/v1/subscribe?from_position=abc", admin)
        .await
        .err(400, "invalid_query");

    s.stop().await;
}

async fn subscriber_limit_answers_503_and_frees_the_slot(b: Backend) {
    let s = Srv::start_with(b, |c| c.api.max_sse_subscribers = 1).await;
    let first = Sse::open(&s, "/v1/subscribe", None).await;
    let r = s
        .get("/v1/subscribe", &s.admin)
        .await
        .err(503, "too_many_subscribers");
    assert!(r.header("retry-after").is_some());
    drop(first);
    // The slot comes back once the server notices the client has gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let resp = s
            .request(Method::GET, "/v1/subscribe", &s.admin)
            .send()
            .await
            .unwrap();
        if resp.status().as_u16() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Products

async fn product_commands_answer_id_version_position_and_details_follow(b: Backend) {
    let s = Srv::start(b).await;
    let r = s
        .call_raw(
            Method::POST,
            "/v1/products",
            &s.seller,
            r#"{"name":"Espresso cup","description":"Thick porcelain","category":"kitchen",
                "price":19.99,"currency":"EUR","stock":5}"#,
        )
        .await
        .ok(201);
    let id = r.string("id");
    // ProductCreated + StockAdjusted.
    assert_eq!((r.u64("version"), r.u64("position")), (2, 2));

    let p = s.product_details(&id, 2).await.ok(200);
    assert!(p.text.contains(r#""price":19.99"#), "{}", p.text);
    assert!(p.ficus_position() >= 2);
    for field in [
        "id",
        "name",
        "description",
        "category",
        "price",
        "currency",
        "seller_id",
        "stock_total",
        "in_stock",
        "updated_at",
    ] {
        assert!(
            p.body.get(field).is_some(),
            "product lacks {field}: {}",
            p.text
        );
    }
    assert_eq!(p.body["id"], id.as_str());
    assert_eq!(p.body["name"], "Espresso cup");
    assert_eq!(p.body["description"], "Thick porcelain");
    assert_eq!(p.body["category"], "kitchen");
    assert_eq!(p.body["currency"], "EUR");
    assert_eq!(p.body["seller_id"], SELLER);
    assert_eq!(p.body["stock_total"], 5);
    assert_eq!(p.body["in_stock"], true);
    assert!(p.body["updated_at"].as_str().unwrap().ends_with('Z'));

    // Money keeps exactly two decimals: 5 → 5.00, 0.1 → 0.10.
    let (five, pos) = s.product("Five", "misc", "5", None).await;
    let p = s.product_details(&five, pos).await.ok(200);
    assert!(p.text.contains(r#""price":5.00"#), "{}", p.text);
    assert_eq!(p.body["stock_total"], 0);
    assert_eq!(p.body["in_stock"], false);
    let (dime, pos) = s.product("Dime", "misc", "0.1", None).await;
    let p = s.product_details(&dime, pos).await.ok(200);
    assert!(p.text.contains(r#""price":0.10"#), "{}", p.text);

    // Price change.
    let r = s.set_price(&s.seller, &id, "24.50").await.ok(200);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.u64("version"), 3);
    let pos = r.u64("position");
    assert_eq!(pos, s.head());
    let p = s.product_details(&id, pos).await.ok(200);
    assert!(p.text.contains(r#""price":24.50"#), "{}", p.text);

    // Stock in another warehouse, then out of the main one.
    let r = s
        .post(
            &format!("/v1/products/{id}/stock"),
            &s.seller,
            json!({"warehouse": "north", "delta": 7}),
        )
        .await
        .ok(200);
    assert_eq!(
        (r.body["id"].as_str(), r.u64("version")),
        (Some(id.as_str()), 4)
    );
    let p = s.product_details(&id, r.u64("position")).await.ok(200);
    assert_eq!(p.body["stock_total"], 12);
    let r = s
        .post(
            &format!("/v1/products/{id}/stock"),
            &s.seller,
            json!({"warehouse": "main", "delta": -5}),
        )
        .await
        .ok(200);
    assert_eq!(r.u64("version"), 5);
    let p = s.product_details(&id, r.u64("position")).await.ok(200);
    assert_eq!(p.body["stock_total"], 7);

    // Delete: gone from details and search; no more changes.
    let r = s
        .delete(
            &format!("/v1/products/{id}"),
            &s.seller,
            json!({"reason": "discontinued"}),
        )
        .await
        .ok(200);
    assert_eq!(
        (r.body["id"].as_str(), r.u64("version")),
        (Some(id.as_str()), 6)
    );
    let pos = r.u64("position");
    s.product_details(&id, pos)
        .await
        .err(404, "product_not_found");
    let found = s
        .get(&format!("/v1/products?q=espresso&min_position={pos}"), ANON)
        .await
        .ok(200);
    assert_eq!(found.body["total"], 0);
    let head = s.head();
    s.set_price(&s.seller, &id, "25.00")
        .await
        .err(422, "product_deleted");
    s.delete(
        &format!("/v1/products/{id}"),
        &s.seller,
        json!({"reason": "again"}),
    )
    .await
    .err(422, "product_deleted");
    s.assert_head(head, "changes to a deleted product");

    s.stop().await;
}

async fn product_rules_and_permissions(b: Backend) {
    let s = Srv::start(b).await;
    let (id, _) = s.product("Kettle", "kitchen", "100.00", Some(3)).await;
    let head = s.head();

    // Price bounds (422, a business rule).
    s.create_product_as(&s.seller, "Gold kettle", "kitchen", "10000.01", None)
        .await
        .err(422, "price_out_of_range");
    s.create_product_as(&s.seller, "Anti kettle", "kitchen", "-1", None)
        .await
        .err(422, "price_out_of_range");
    s.set_price(&s.seller, &id, "10000.01")
        .await
        .err(422, "price_out_of_range");
    // More than 50 % off at once is refused.
    s.set_price(&s.seller, &id, "49.99")
        .await
        .err(422, "price_cut_too_large");
    // Stock may not go negative.
    let stock = format!("/v1/products/{id}/stock");
    s.post(&stock, &s.seller, json!({"warehouse": "main", "delta": -4}))
        .await
        .err(422, "insufficient_stock");
    s.post(&stock, &s.seller, json!({"warehouse": "east", "delta": -1}))
        .await
        .err(422, "insufficient_stock");
    // Another seller may not touch it.
    s.set_price(&s.seller2, &id, "120.00")
        .await
        .err(403, "not_product_owner");
    s.post(&stock, &s.seller2, json!({"warehouse": "main", "delta": 1}))
        .await
        .err(403, "not_product_owner");
    s.delete(
        &format!("/v1/products/{id}"),
        &s.seller2,
        json!({"reason": "mine now"}),
    )
    .await
    .err(403, "not_product_owner");
    // Only sellers create products.
    s.create_product_as(&s.customer, "Cheap kettle", "kitchen", "1.00", None)
        .await
        .err(403, "forbidden");
    s.create_product_as(&s.admin, "Admin kettle", "kitchen", "1.00", None)
        .await
        .err(403, "forbidden");
    s.create_product_as(ANON, "Anon kettle", "kitchen", "1.00", None)
        .await
        .err(401, "unauthorized");
    // Unknown product → 404.
    let ghost = uuid::Uuid::now_v7().to_string();
    s.set_price(&s.seller, &ghost, "1.00")
        .await
        .err(404, "product_not_found");
    s.post(
        &format!("/v1/products/{ghost}/stock"),
        &s.seller,
        json!({"warehouse": "main", "delta": 1}),
    )
    .await
    .err(404, "product_not_found");
    s.delete(
        &format!("/v1/products/{ghost}"),
        &s.seller,
        json!({"reason": "gone"}),
    )
    .await
    .err(404, "product_not_found");
    s.get(&format!("/v1/products/{ghost}"), ANON)
        .await
        .err(404, "product_not_found");
    s.assert_head(head, "refused product commands");

    // The edges that are allowed: exactly 50 % off, exactly 10 000.00, stock down to 0.
    let r = s.set_price(&s.seller, &id, "50.00").await.ok(200);
    let p = s.product_details(&id, r.u64("position")).await.ok(200);
    assert!(p.text.contains(r#""price":50.00"#), "{}", p.text);
    s.set_price(&s.seller, &id, "24.99")
        .await
        .err(422, "price_cut_too_large");
    s.set_price(&s.seller, &id, "25.00").await.ok(200);
    s.set_price(&s.seller, &id, "10000.00").await.ok(200);
    s.create_product_as(&s.seller, "Gold kettle", "kitchen", "10000.00", None)
        .await
        .ok(201);
    let r = s
        .post(&stock, &s.seller, json!({"warehouse": "main", "delta": -3}))
        .await
        .ok(200);
    let p = s.product_details(&id, r.u64("position")).await.ok(200);
    assert_eq!(
        (&p.body["stock_total"], &p.body["in_stock"]),
        (&json!(0), &json!(false))
    );
    // Repeating the current price is not a new fact: same version, nothing written.
    let head = s.head();
    let r = s.set_price(&s.seller, &id, "10000.00").await.ok(200);
    assert_eq!(r.u64("version"), 6);
    s.assert_head(head, "an unchanged price");

    s.stop().await;
}

async fn search_by_text_category_and_price(b: Backend) {
    let s = Srv::start(b).await;
    s.product("Red running shoe", "shoes", "50.00", Some(1))
        .await;
    s.product("Blue running jacket", "apparel", "120.00", None)
        .await;
    s.product("Redwood table", "furniture", "300.00", None)
        .await;
    let (green, _) = s.product("Green shoe", "shoes", "20.00", None).await;
    s.product("Lamp", "furniture", "35.00", None).await;
    let r = s
        .delete(
            &format!("/v1/products/{green}"),
            &s.seller,
            json!({"reason": "sold out"}),
        )
        .await
        .ok(200);
    let pos = r.u64("position");

    let names = |r: &Resp| -> Vec<String> {
        let mut v: Vec<String> = r.body["products"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    let search = |query: String| {
        let s = &s;
        async move {
            let r = s
                .get(&format!("/v1/products?{query}&min_position={pos}"), ANON)
                .await
                .ok(200);
            assert!(r.ficus_position() >= pos);
            // Without paging, the page holds every match.
            if !query.contains("limit") {
                assert_eq!(
                    r.u64("total") as usize,
                    r.body["products"].as_array().unwrap().len(),
                    "{}",
                    r.text
                );
            }
            r
        }
    };

    // Word prefixes, every word required, name and description.
    let r = search("q=run".into()).await;
    assert_eq!(names(&r), ["Blue running jacket", "Red running shoe"]);
    let r = search("q=red".into()).await;
    assert_eq!(names(&r), ["Red running shoe", "Redwood table"]);
    let r = search(format!("q={}", enc("runn shoe"))).await;
    assert_eq!(names(&r), ["Red running shoe"]);
    let r = search(format!("q={}", enc("about lamp"))).await;
    assert_eq!(names(&r), ["Lamp"]);
    // Search syntax in the text is just words.
    let r = search(format!("q={}", enc("\"shoe\" OR NEAR("))).await;
    assert_eq!(r.body["total"], 0);
    // Category, price range, and both with text; the deleted product never shows.
    let r = search("category=shoes".into()).await;
    assert_eq!(names(&r), ["Red running shoe"]);
    let r = search("min_price=30&max_price=120".into()).await;
    assert_eq!(
        names(&r),
        ["Blue running jacket", "Lamp", "Red running shoe"]
    );
    let r = search("min_price=35.01&max_price=119.99".into()).await;
    assert_eq!(names(&r), ["Red running shoe"]);
    let r = search("q=red&category=furniture&max_price=300".into()).await;
    assert_eq!(names(&r), ["Redwood table"]);
    let r = search("q=green".into()).await;
    assert_eq!(r.body["total"], 0);
    let r = search("q=shoe".into()).await;
    assert_eq!(names(&r), ["Red running shoe"]);
    let r = search(String::new()).await;
    assert_eq!(r.body["total"], 4);
    // Paging.
    let r = search("limit=2&offset=3".into()).await;
    assert_eq!(r.body["total"], 4);
    assert_eq!(r.body["products"].as_array().unwrap().len(), 1);
    // The product fields are the details' fields.
    let r = search("category=shoes".into()).await;
    let p = &r.body["products"][0];
    for field in [
        "id",
        "name",
        "description",
        "category",
        "price",
        "currency",
        "seller_id",
        "stock_total",
        "in_stock",
        "updated_at",
    ] {
        assert!(p.get(field).is_some(), "search hit lacks {field}: {p}");
    }
    assert!(r.text.contains(r#""price":50.00"#), "{}", r.text);

    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Orders

async fn order_lifecycle_prices_and_rules(b: Backend) {
    let s = Srv::start(b).await;
    let (teapot, _) = s.product("Teapot", "kitchen", "12.50", Some(10)).await;

    // Created at the product's current price.
    let r = s
        .create_order_as(&s.customer, &[(&teapot, 2)])
        .await
        .ok(201);
    let order = r.string("id");
    assert_eq!(r.u64("version"), 2); // OrderCreated + OrderItemAdded
    assert_eq!(r.u64("position"), s.head());
    s.set_price(&s.seller, &teapot, "15.00").await.ok(200);
    let r = s
        .post(
            &format!("/v1/orders/{order}/items"),
            &s.customer,
            json!({"product_id": teapot, "quantity": 1}),
        )
        .await
        .ok(200);
    assert_eq!(
        (r.body["id"].as_str(), r.u64("version")),
        (Some(order.as_str()), 3)
    );
    let stream = s
        .get(&format!("/v1/streams/order-{order}"), &s.admin)
        .await
        .ok(200);
    let unit_prices: Vec<&Value> = stream.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "OrderItemAdded")
        .map(|e| &e["data"]["unit_price"])
        .collect();
    assert_eq!(unit_prices, [&json!(1250), &json!(1500)]);

    let place = format!("/v1/orders/{order}/place");
    let r = s.post(&place, &s.customer, json!({})).await.ok(200);
    assert_eq!(
        (r.body["id"].as_str(), r.u64("version")),
        (Some(order.as_str()), 4)
    );
    let placed_at = r.u64("position");
    let head = s.head();
    s.post(&place, &s.customer, json!({}))
        .await
        .err(422, "order_already_placed");
    s.post(
        &format!("/v1/orders/{order}/items"),
        &s.customer,
        json!({"product_id": teapot, "quantity": 1}),
    )
    .await
    .err(422, "order_already_placed");
    s.assert_head(head, "changes to a placed order");

    let list = s
        .get(
            &format!("/v1/customers/{CUSTOMER}/orders?min_position={placed_at}"),
            &s.customer,
        )
        .await
        .ok(200);
    assert!(list.ficus_position() >= placed_at);
    let o = &list.body["orders"][0];
    for field in ["id", "status", "total", "item_count", "created_at"] {
        assert!(o.get(field).is_some(), "order summary lacks {field}: {o}");
    }
    assert_eq!(o["id"], order.as_str());
    assert_eq!(o["status"], "placed");
    assert_eq!(o["item_count"], 3);
    assert!(list.text.contains(r#""total":40.00"#), "{}", list.text);

    // Empty orders may be opened but not placed; cancelling works once.
    let r = s.create_order_as(&s.customer, &[]).await.ok(201);
    let empty = r.string("id");
    assert_eq!(r.u64("version"), 1);
    s.post(&format!("/v1/orders/{empty}/place"), &s.customer, json!({}))
        .await
        .err(422, "empty_order");
    let cancel = format!("/v1/orders/{empty}/cancel");
    // Cancel takes no body, or `{"reason"}`.
    let r = s
        .send(s.request(Method::POST, &cancel, &s.customer))
        .await
        .ok(200);
    assert_eq!(
        (r.body["id"].as_str(), r.u64("version")),
        (Some(empty.as_str()), 2)
    );
    s.post(&cancel, &s.customer, json!({"reason": "changed my mind"}))
        .await
        .err(422, "order_cancelled");

    // A placed order can still be cancelled (with a reason).
    let r = s
        .create_order_as(&s.customer, &[(&teapot, 1)])
        .await
        .ok(201);
    let third = r.string("id");
    s.post(&format!("/v1/orders/{third}/place"), &s.customer, json!({}))
        .await
        .ok(200);
    let r = s
        .post(
            &format!("/v1/orders/{third}/cancel"),
            &s.customer,
            json!({"reason": "too slow"}),
        )
        .await
        .ok(200);
    let last = r.u64("position");

    let head = s.head();
    // Quantity must be at least 1.
    for q in [0, -5] {
        s.create_order_as(&s.customer, &[(&teapot, q)])
            .await
            .err(422, "invalid_quantity");
    }
    let r = s.create_order_as(&s.customer, &[]).await.ok(201);
    let draft = r.string("id");
    let head = head + 1;
    s.post(
        &format!("/v1/orders/{draft}/items"),
        &s.customer,
        json!({"product_id": teapot, "quantity": 0}),
    )
    .await
    .err(422, "invalid_quantity");
    // Ordering something that does not exist (documented as 422 `unknown_product`).
    let ghost = uuid::Uuid::now_v7().to_string();
    s.create_order_as(&s.customer, &[(&ghost, 1)])
        .await
        .err(422, "unknown_product");
    // Only customers order.
    s.create_order_as(&s.seller, &[(&teapot, 1)])
        .await
        .err(403, "forbidden");
    s.create_order_as(&s.admin, &[(&teapot, 1)])
        .await
        .err(403, "forbidden");
    s.create_order_as(ANON, &[(&teapot, 1)])
        .await
        .err(401, "unauthorized");
    // Another customer may not touch the order.
    s.post(
        &format!("/v1/orders/{draft}/items"),
        &s.customer2,
        json!({"product_id": teapot, "quantity": 1}),
    )
    .await
    .err(403, "not_order_owner");
    s.post(
        &format!("/v1/orders/{draft}/place"),
        &s.customer2,
        json!({}),
    )
    .await
    .err(403, "not_order_owner");
    s.post(
        &format!("/v1/orders/{draft}/cancel"),
        &s.customer2,
        json!({}),
    )
    .await
    .err(403, "not_order_owner");
    // Unknown orders.
    let nobody = uuid::Uuid::now_v7().to_string();
    s.post(
        &format!("/v1/orders/{nobody}/place"),
        &s.customer,
        json!({}),
    )
    .await
    .err(404, "order_not_found");
    s.post(
        &format!("/v1/orders/{nobody}/cancel"),
        &s.customer,
        json!({}),
    )
    .await
    .err(404, "order_not_found");
    s.post(
        &format!("/v1/orders/{nobody}/items"),
        &s.customer,
        json!({"product_id": teapot, "quantity": 1}),
    )
    .await
    .err(404, "order_not_found");
    // A deleted product can no longer be ordered.
    let (gone, _) = s.product("Old teapot", "kitchen", "3.00", None).await;
    let head = head + 1;
    s.delete(
        &format!("/v1/products/{gone}"),
        &s.seller,
        json!({"reason": "old"}),
    )
    .await
    .ok(200);
    let head = head + 1;
    s.create_order_as(&s.customer, &[(&gone, 1)])
        .await
        .err(422, "product_deleted");
    s.assert_head(head, "refused order commands");

    // Listing: own orders only (or admin), newest first, limit 1..=50. Read at the head: the
    // draft was created after `last`.
    let path = format!("/v1/customers/{CUSTOMER}/orders?min_position={}", s.head());
    s.get(&path, &s.customer2).await.err(403, "forbidden");
    s.get(&path, &s.seller).await.err(403, "forbidden");
    s.get(&path, ANON).await.err(401, "unauthorized");
    s.get(&path, &s.admin).await.ok(200);
    let list = s.get(&path, &s.customer).await.ok(200);
    assert!(
        list.ficus_position() > last,
        "the listing reflects the draft too"
    );
    let ids: Vec<&str> = list.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            draft.as_str(),
            third.as_str(),
            empty.as_str(),
            order.as_str()
        ]
    );
    let statuses: Vec<&str> = list.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["draft", "cancelled", "cancelled", "placed"]);
    let r = s.get(&format!("{path}&limit=1"), &s.customer).await.ok(200);
    assert_eq!(r.body["orders"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["orders"][0]["id"], draft.as_str());
    s.get(&format!("{path}&limit=50"), &s.customer)
        .await
        .ok(200);
    s.get(&format!("{path}&limit=51"), &s.customer)
        .await
        .err(400, "invalid_limit");
    s.get(&format!("{path}&limit=0"), &s.customer)
        .await
        .err(400, "invalid_limit");
    let r = s
        .get(&format!("/v1/customers/{CUSTOMER2}/orders"), &s.customer2)
        .await
        .ok(200);
    assert_eq!(r.body["orders"], json!([]));

    s.stop().await;
}

async fn an_order_holds_at_most_50_lines(b: Backend) {
    let s = Srv::start(b).await;
    let names: Vec<String> = (0..51).map(|i| format!("Item {i}")).collect();
    let created = futures::future::join_all(
        names
            .iter()
            .map(|n| s.create_product_as(&s.seller, n, "bulk", "1.00", None)),
    )
    .await;
    let ids: Vec<String> = created
        .into_iter()
        .map(|r| r.ok(201).string("id"))
        .collect();
    let items =
        |n: usize| -> Vec<(&str, i64)> { ids[..n].iter().map(|i| (i.as_str(), 1)).collect() };

    let head = s.head();
    s.create_order_as(&s.customer, &items(51))
        .await
        .err(422, "too_many_items");
    s.assert_head(head, "51 items");
    let r = s.create_order_as(&s.customer, &items(50)).await.ok(201);
    let order = r.string("id");
    assert_eq!(r.u64("version"), 51);
    let head = s.head();
    s.post(
        &format!("/v1/orders/{order}/items"),
        &s.customer,
        json!({"product_id": ids[50], "quantity": 1}),
    )
    .await
    .err(422, "too_many_items");
    s.assert_head(head, "a 51st line");
    // More units of a product already in the order merge into its line.
    s.post(
        &format!("/v1/orders/{order}/items"),
        &s.customer,
        json!({"product_id": ids[0], "quantity": 2}),
    )
    .await
    .ok(200);
    // ... up to 10 000 units of one product.
    let head = s.head();
    s.post(
        &format!("/v1/orders/{order}/items"),
        &s.customer,
        json!({"product_id": ids[0], "quantity": 9998}),
    )
    .await
    .err(422, "quantity_limit_exceeded");
    s.post(
        &format!("/v1/orders/{order}/items"),
        &s.customer,
        json!({"product_id": ids[0], "quantity": 10001}),
    )
    .await
    .err(422, "invalid_quantity");
    s.assert_head(head, "too many units");
    // One currency per order.
    let usd = s
        .call_raw(
            Method::POST,
            "/v1/products",
            &s.seller,
            r#"{"name":"Import","category":"bulk","price":1.00,"currency":"USD"}"#,
        )
        .await
        .ok(201)
        .string("id");
    let draft = s
        .create_order_as(&s.customer, &[(&ids[0], 1)])
        .await
        .ok(201)
        .string("id");
    let head = s.head();
    s.post(
        &format!("/v1/orders/{draft}/items"),
        &s.customer,
        json!({"product_id": usd, "quantity": 1}),
    )
    .await
    .err(422, "currency_mismatch");
    s.create_order_as(&s.customer, &[(&ids[0], 1), (&usd, 1)])
        .await
        .err(422, "currency_mismatch");
    s.assert_head(head, "mixed currencies");

    s.stop().await;
}

async fn analytics_count_placed_orders_per_utc_day(b: Backend) {
    let s = Srv::start(b).await;
    let (a, _) = s.product("Mug", "kitchen", "12.50", None).await;
    let (b, _) = s.product("Spoon", "kitchen", "7.25", None).await;
    let first_day = today();
    let mut last = 0;
    for (token, items) in [
        (&s.customer, vec![(a.as_str(), 2)]),
        (&s.customer2, vec![(b.as_str(), 1)]),
    ] {
        let r = s.create_order_as(token, &items).await.ok(201);
        let id = r.string("id");
        last = s
            .post(&format!("/v1/orders/{id}/place"), token, json!({}))
            .await
            .ok(200)
            .u64("position");
    }
    // A draft is not counted.
    s.create_order_as(&s.customer, &[(&a, 5)]).await.ok(201);
    let last_day = today();

    let r = s
        .get(
            &format!("/v1/analytics/orders?from={first_day}&to={last_day}&min_position={last}"),
            &s.admin,
        )
        .await
        .ok(200);
    assert!(r.ficus_position() >= last);
    let days = r.body["days"].as_array().unwrap();
    for d in days {
        for field in ["date", "orders", "total"] {
            assert!(d.get(field).is_some(), "day lacks {field}: {d}");
        }
    }
    let orders: u64 = days.iter().map(|d| d["orders"].as_u64().unwrap()).sum();
    assert_eq!(orders, 2, "{}", r.text);
    if first_day == last_day {
        assert_eq!(days.len(), 1, "{}", r.text);
        assert_eq!(days[0]["date"], first_day.as_str());
        assert!(r.text.contains(r#""total":32.25"#), "{}", r.text);
    }
    let r = s
        .get(
            "/v1/analytics/orders?from=2000-01-01&to=2000-12-31",
            &s.admin,
        )
        .await
        .ok(200);
    assert_eq!(r.body["days"], json!([]));

    for bad in [
        "from=2026-02-30&to=2026-03-01".to_owned(),
        "from=yesterday&to=2026-03-01".to_owned(),
        "from=2026-1-01&to=2026-03-01".to_owned(),
        "from=2026-03-02&to=2026-03-01".to_owned(),
        "from=2000-01-01&to=2026-03-01".to_owned(),
        format!("from={first_day}"),
        String::new(),
    ] {
        s.get(&format!("/v1/analytics/orders?{bad}"), &s.admin)
            .await
            .err(400, "invalid_query");
    }
    let ok = format!("/v1/analytics/orders?from={first_day}&to={last_day}");
    s.get(&ok, &s.seller).await.err(403, "forbidden");
    s.get(&ok, &s.customer).await.err(403, "forbidden");
    s.get(&ok, ANON).await.err(401, "unauthorized");

    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

async fn bad_input_is_a_4xx_never_a_500_and_writes_nothing(b: Backend) {
    let s = Srv::start(b).await;
    let (id, _) = s.product("Bowl", "kitchen", "10.00", Some(2)).await;
    let order = s
        .create_order_as(&s.customer, &[])
        .await
        .ok(201)
        .string("id");
    let head = s.head();

    let product = |fields: &str| {
        format!(r#"{{"name":"Plate","category":"kitchen","currency":"EUR",{fields}}}"#)
    };
    let json_ct = Some("application/json");
    let (seller, customer, admin) = (s.seller.as_str(), s.customer.as_str(), s.admin.as_str());
    let price_path = format!("/v1/products/{id}/price");
    let stock_path = format!("/v1/products/{id}/stock");
    let product_path = format!("/v1/products/{id}");
    let cancel_path = format!("/v1/orders/{order}/cancel");
    let long_q = "a".repeat(300);
    let long_stream = format!("/v1/streams/{}", "s".repeat(201));
    let deep_product = product(&format!(r#""price":1.00,"description":{}"#, nested(200)));
    let deep_event = format!(r#"{{"events":[{{"type":"Deep","data":{}}}]}}"#, nested(200));
    let fairly_deep_event = format!(r#"{{"events":[{{"type":"Deep","data":{}}}]}}"#, nested(100));

    type Case<'a> = (
        &'a str,
        Method,
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        u16,
        &'a str,
    );
    let p = |fields: &str| product(fields).into_bytes();
    let b = |s: &str| s.as_bytes().to_vec();
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        // Malformed bodies.
        ("malformed JSON", Method::POST, "/v1/products", seller, json_ct, b(r#"{"name": "x","#), 400, "invalid_json"),
        ("not JSON", Method::POST, "/v1/products", seller, json_ct, b("hello"), 400, "invalid_json"),
        ("empty body", Method::POST, "/v1/products", seller, json_ct, b(""), 400, "invalid_json"),
        ("top-level array", Method::POST, "/v1/products", seller, json_ct, b("[]"), 400, "invalid_json"),
        ("trailing garbage", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00} x"#), 400, "invalid_json"),
        ("not UTF-8", Method::POST, "/v1/products", seller, json_ct, vec![b'{', 0xff, 0xfe, b'}'], 400, "invalid_json"),
        ("wrong type: name", Method::POST, "/v1/products", seller, json_ct, b(r#"{"name":5,"category":"k","price":1.00,"currency":"EUR"}"#), 400, "invalid_json"),
        ("wrong type: stock", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"stock":"ten""#), 400, "invalid_json"),
        ("fractional stock", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"stock":1.5"#), 400, "invalid_json"),
        ("stock beyond i64", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"stock":99999999999999999999"#), 400, "invalid_json"),
        ("unknown field", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"colour":"red""#), 400, "invalid_json"),
        ("duplicate field", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"price":2.00"#), 400, "invalid_json"),
        ("missing field", Method::POST, "/v1/products", seller, json_ct, b(r#"{"name":"Plate","price":1.00,"currency":"EUR"}"#), 400, "invalid_json"),
        ("200 levels deep", Method::POST, "/v1/products", seller, json_ct, deep_product.into_bytes(), 400, "invalid_json"),
        // Money.
        ("price with 3 decimals", Method::POST, "/v1/products", seller, json_ct, p(r#""price":19.999"#), 400, "invalid_amount"),
        ("price 1.990", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.990"#), 400, "invalid_amount"),
        ("price as a string", Method::POST, "/v1/products", seller, json_ct, p(r#""price":"19.99""#), 400, "invalid_field"),
        ("price with an exponent", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1e3"#), 400, "invalid_amount"),
        ("price 1999E-2", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1999E-2"#), 400, "invalid_amount"),
        ("price null", Method::POST, "/v1/products", seller, json_ct, p(r#""price":null"#), 400, "invalid_field"),
        ("price true", Method::POST, "/v1/products", seller, json_ct, p(r#""price":true"#), 400, "invalid_field"),
        ("price object", Method::POST, "/v1/products", seller, json_ct, p(r#""price":{"amount":1}"#), 400, "invalid_field"),
        ("huge price", Method::POST, "/v1/products", seller, json_ct, p(r#""price":99999999999999999999999999"#), 400, "invalid_amount"),
        ("lowercase currency", Method::POST, "/v1/products", seller, json_ct, b(r#"{"name":"Plate","category":"k","price":1.00,"currency":"eur"}"#), 400, "invalid_currency"),
        ("blank name", Method::POST, "/v1/products", seller, json_ct, b(r#"{"name":"  ","category":"k","price":1.00,"currency":"EUR"}"#), 400, "invalid_field"),
        ("negative stock", Method::POST, "/v1/products", seller, json_ct, p(r#""price":1.00,"stock":-1"#), 400, "invalid_field"),
        // Content type.
        ("no content-type", Method::POST, "/v1/products", seller, None, p(r#""price":1.00"#), 415, "unsupported_media_type"),
        ("text/plain", Method::POST, "/v1/products", seller, Some("text/plain"), p(r#""price":1.00"#), 415, "unsupported_media_type"),
        ("form content-type", Method::POST, "/v1/orders", customer, Some("application/x-www-form-urlencoded"), b("items=1"), 415, "unsupported_media_type"),
        ("delete without a body", Method::DELETE, product_path.as_str(), seller, None, vec![], 415, "unsupported_media_type"),
        // Price, stock, delete.
        ("new price with 3 decimals", Method::PUT, price_path.as_str(), seller, json_ct, b(r#"{"price":12.345}"#), 400, "invalid_amount"),
        ("new price as a string", Method::PUT, price_path.as_str(), seller, json_ct, b(r#"{"price":"12"}"#), 400, "invalid_field"),
        ("new price missing", Method::PUT, price_path.as_str(), seller, json_ct, b("{}"), 400, "invalid_json"),
        ("delta as a string", Method::POST, stock_path.as_str(), seller, json_ct, b(r#"{"warehouse":"main","delta":"3"}"#), 400, "invalid_json"),
        ("delta 0", Method::POST, stock_path.as_str(), seller, json_ct, b(r#"{"warehouse":"main","delta":0}"#), 400, "invalid_field"),
        ("bad warehouse", Method::POST, stock_path.as_str(), seller, json_ct, b(r#"{"warehouse":"bad wh!","delta":1}"#), 400, "invalid_field"),
        ("delta i64::MAX", Method::POST, stock_path.as_str(), seller, json_ct, b(r#"{"warehouse":"main","delta":9223372036854775807}"#), 422, "stock_limit_exceeded"),
        ("delta i64::MIN", Method::POST, stock_path.as_str(), seller, json_ct, b(r#"{"warehouse":"main","delta":-9223372036854775808}"#), 422, "insufficient_stock"),
        ("blank delete reason", Method::DELETE, product_path.as_str(), seller, json_ct, b(r#"{"reason":""}"#), 400, "invalid_field"),
        ("bad product id", Method::PUT, "/v1/products/bad%20id/price", seller, json_ct, b(r#"{"price":1.00}"#), 400, "invalid_field"),
        // Orders.
        ("items not a list", Method::POST, "/v1/orders", customer, json_ct, b(r#"{"items":{}}"#), 400, "invalid_json"),
        ("quantity as a string", Method::POST, "/v1/orders", customer, json_ct, format!(r#"{{"items":[{{"product_id":"{id}","quantity":"2"}}]}}"#).into_bytes(), 400, "invalid_json"),
        ("fractional quantity", Method::POST, "/v1/orders", customer, json_ct, format!(r#"{{"items":[{{"product_id":"{id}","quantity":1.5}}]}}"#).into_bytes(), 400, "invalid_json"),
        ("huge quantity", Method::POST, "/v1/orders", customer, json_ct, format!(r#"{{"items":[{{"product_id":"{id}","quantity":99999999999}}]}}"#).into_bytes(), 422, "invalid_quantity"),
        ("product id with a slash", Method::POST, "/v1/orders", customer, json_ct, b(r#"{"items":[{"product_id":"../../etc","quantity":1}]}"#), 400, "invalid_field"),
        ("cancel: malformed", Method::POST, cancel_path.as_str(), customer, json_ct, b("{"), 400, "invalid_json"),
        ("cancel: reason a number", Method::POST, cancel_path.as_str(), customer, json_ct, b(r#"{"reason":5}"#), 400, "invalid_json"),
        ("cancel: blank reason", Method::POST, cancel_path.as_str(), customer, json_ct, b(r#"{"reason":" "}"#), 400, "invalid_field"),
        // Raw appends.
        ("events not a list", Method::POST, "/v1/streams/x-1", admin, json_ct, b(r#"{"events":"nope"}"#), 400, "invalid_json"),
        ("event metadata not an object", Method::POST, "/v1/streams/x-1", admin, json_ct, b(r#"{"events":[{"type":"A","metadata":5}]}"#), 400, "invalid_json"),
        ("event id not a UUID", Method::POST, "/v1/streams/x-1", admin, json_ct, b(r#"{"events":[{"type":"A","id":"nope"}]}"#), 400, "invalid_json"),
        ("event data 200 levels deep", Method::POST, "/v1/streams/x-1", admin, json_ct, deep_event.into_bytes(), 400, "invalid_json"),
        ("event data 100 levels deep", Method::POST, "/v1/streams/x-1", admin, json_ct, fairly_deep_event.into_bytes(), 400, "invalid_json"),
        ("stream id too long", Method::POST, long_stream.as_str(), admin, json_ct, b(r#"{"events":[{"type":"A"}]}"#), 400, "invalid_stream_id"),
        // Query strings.
        ("min_price not a number", Method::GET, "/v1/products?min_price=abc", ANON, None, vec![], 400, "invalid_query"),
        ("max_price with an exponent", Method::GET, "/v1/products?max_price=1e3", ANON, None, vec![], 400, "invalid_query"),
        ("search limit 0", Method::GET, "/v1/products?limit=0", ANON, None, vec![], 400, "invalid_limit"),
        ("search limit 101", Method::GET, "/v1/products?limit=101", ANON, None, vec![], 400, "invalid_limit"),
        ("search offset too deep", Method::GET, "/v1/products?offset=10001", ANON, None, vec![], 400, "invalid_offset"),
        ("unknown query parameter", Method::GET, "/v1/products?colour=red", ANON, None, vec![], 400, "invalid_query"),
        ("negative min_position", Method::GET, "/v1/products?min_position=-1", ANON, None, vec![], 400, "invalid_query"),
    ];
    for (what, method, path, token, ctype, body, status, code) in cases {
        let mut rb = s.request(method, path, token).body(body);
        if let Some(ct) = ctype {
            rb = rb.header("content-type", ct);
        }
        let r = s.send(rb).await;
        assert_eq!((r.status, r.code()), (status, code), "{what}: {}", r.text);
        s.assert_head(head, what);
    }
    s.get(&format!("/v1/products?q={long_q}"), ANON)
        .await
        .err(400, "invalid_query");
    s.get(&format!("{product_path}?min_position=abc"), ANON)
        .await
        .err(400, "invalid_query");
    s.get(
        &format!("/v1/customers/{CUSTOMER}/orders?limit=abc"),
        customer,
    )
    .await
    .err(400, "invalid_query");

    // Bad If-Match headers.
    for bad in ["abc", "\"abc\"", "-1", ""] {
        let rb = s
            .request(Method::PUT, price_path.as_str(), seller)
            .header("if-match", bad)
            .json(&json!({"price": 11}));
        let r = s.send(rb).await;
        assert_eq!(
            (r.status, r.code()),
            (400, "invalid_if_match"),
            "If-Match {bad:?}: {}",
            r.text
        );
    }
    s.assert_head(head, "bad If-Match");

    // Nesting within the limit is accepted in free-form event data, and in strings brackets
    // do not count.
    s.call_raw(
        Method::POST,
        "/v1/streams/x-1",
        admin,
        &format!(r#"{{"events":[{{"type":"A","data":{}}}]}}"#, nested(60)),
    )
    .await
    .ok(201);
    s.post(
        "/v1/streams/x-1",
        admin,
        json!({"events": [{"type": "B", "data": {"s": "[".repeat(500)}}]}),
    )
    .await
    .ok(201);
    // `application/json; charset=utf-8` and `+json` types are JSON.
    let rb = s
        .request(Method::POST, "/v1/products", seller)
        .header("content-type", "application/json; charset=utf-8")
        .body(product(r#""price":1.00"#));
    s.send(rb).await.ok(201);

    s.stop().await;
}

async fn bodies_over_the_limit_are_413(b: Backend) {
    let s = Srv::start_with(b, |c| c.api.max_body_bytes = 4096).await;
    let body = |description_len: usize| {
        json!({"name": "Big", "description": "d".repeat(description_len), "category": "k",
               "price": 1, "currency": "EUR"})
        .to_string()
    };
    let head = s.head();
    // With a Content-Length.
    s.call_raw(Method::POST, "/v1/products", &s.seller, &body(8000))
        .await
        .err(413, "body_too_large");
    s.assert_head(head, "a body with Content-Length over the limit");
    // Chunked, without a Content-Length.
    let big = body(8000).into_bytes();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let rb = s
        .request(Method::POST, "/v1/products", &s.seller)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
    s.send(rb).await.err(413, "body_too_large");
    s.assert_head(head, "a chunked body over the limit");
    // Raw appends too.
    let events = json!({"events": [{"type": "Big", "data": {"s": "x".repeat(8000)}}]});
    s.post("/v1/streams/big-1", &s.admin, events)
        .await
        .err(413, "body_too_large");
    s.assert_head(head, "a raw append over the limit");
    // And the optional body of a cancel.
    let rb = s
        .request(Method::POST, "/v1/orders/any-order/cancel", &s.customer)
        .header("content-type", "application/json")
        .body(json!({"reason": "r".repeat(8000)}).to_string());
    s.send(rb).await.err(413, "body_too_large");
    s.assert_head(head, "a cancel body over the limit");
    // Under the limit is fine.
    s.call_raw(Method::POST, "/v1/products", &s.seller, &body(3000))
        .await
        .ok(201);

    s.stop().await;
}

async fn unknown_routes_are_404_and_wrong_methods_405_as_json(b: Backend) {
    let s = Srv::start(b).await;
    for path in [
        "/",
        "/v1/nope",
        "/v1/products/x/nothing",
        "/v2/all",
        "/health",
    ] {
        let r = s.get(path, &s.admin).await.err(404, "route_not_found");
        assert!(r.header("x-correlation-id").is_some());
    }
    for (method, path) in [
        (Method::DELETE, "/v1/all"),
        (Method::PUT, "/v1/orders"),
        (Method::GET, "/v1/orders/x/place"),
        (Method::PATCH, "/v1/products"),
        (Method::POST, "/health/live"),
        (Method::DELETE, "/v1/streams/s-1"),
        (Method::POST, "/v1/projections"),
        (Method::GET, "/v1/products/x/price"),
    ] {
        s.call(method.clone(), path, &s.admin, None)
            .await
            .err(405, "method_not_allowed");
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Read your own writes, If-Match, correlation

async fn queries_read_their_own_writes_and_say_which_position(b: Backend) {
    let s = Srv::start_with(b, |c| {
        c.api.read_your_writes_timeout = Duration::from_millis(200)
    })
    .await;
    let (id, _) = s.product("Clock", "home", "10.00", None).await;
    for i in 1..=10 {
        let price = format!("{}.{:02}", 10 + i, i);
        let r = s.set_price(&s.seller, &id, &price).await.ok(200);
        let pos = r.u64("position");
        let p = s.product_details(&id, pos).await.ok(200);
        assert!(
            p.text.contains(&format!(r#""price":{price}"#)),
            "after setting {price} at {pos}: {}",
            p.text
        );
        assert!(p.ficus_position() >= pos);
    }
    let order = s.create_order_as(&s.customer, &[(&id, 1)]).await.ok(201);
    let pos = order.u64("position");
    let day = today();

    // Every query answer says which position it reflects.
    let queries = [
        (format!("/v1/products/{id}"), s.customer.as_str()),
        ("/v1/products?q=clock".to_owned(), ANON),
        (
            format!("/v1/customers/{CUSTOMER}/orders"),
            s.customer.as_str(),
        ),
        (
            format!("/v1/analytics/orders?from={day}&to={day}"),
            s.admin.as_str(),
        ),
    ];
    for (path, token) in &queries {
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = s
            .get(&format!("{path}{sep}min_position={pos}"), token)
            .await
            .ok(200);
        assert!(r.ficus_position() >= pos, "{path}");
        assert!(r.ficus_position() <= s.head(), "{path}");
        let r = s.get(path, token).await.ok(200);
        assert!(r.ficus_position() <= s.head(), "{path}");
    }
    let r = s
        .get(
            &format!("/v1/customers/{CUSTOMER}/orders?min_position={pos}"),
            &s.customer,
        )
        .await
        .ok(200);
    assert_eq!(r.body["orders"][0]["id"], order.string("id").as_str());

    // Far beyond the head: 503 read_model_lagging after the bounded wait, with Retry-After.
    let far = s.head() + 1_000_000;
    for (path, token) in &queries {
        let sep = if path.contains('?') { '&' } else { '?' };
        let started = Instant::now();
        let r = s
            .get(&format!("{path}{sep}min_position={far}"), token)
            .await
            .err(503, "read_model_lagging");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
            "{path} waited {waited:?}"
        );
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Retry-After on {path}: {:?}", r.headers));
        assert!(retry >= 1);
    }

    s.stop().await;
}

async fn if_match_guards_against_stale_versions(b: Backend) {
    let s = Srv::start(b).await;
    let (id, pos) = s.product("Vase", "home", "30.00", None).await;
    let p = s.product_details(&id, pos).await.ok(200);
    assert_eq!(p.header("etag"), Some("\"1\""));
    let price = |if_match: &str, price: u32| {
        s.request(Method::PUT, &format!("/v1/products/{id}/price"), &s.seller)
            .header("if-match", if_match)
            .json(&json!({ "price": price }))
    };

    let r = s.send(price("\"1\"", 31)).await.ok(200);
    assert_eq!(r.u64("version"), 2);
    let head = s.head();
    let r = s
        .send(price("\"1\"", 32))
        .await
        .err(409, "wrong_expected_version");
    assert_eq!(r.u64("actual_version"), 2);
    s.send(price("\"7\"", 32))
        .await
        .err(409, "wrong_expected_version");
    let rb = s
        .request(Method::POST, &format!("/v1/products/{id}/stock"), &s.seller)
        .header("if-match", "\"1\"")
        .json(&json!({"warehouse": "main", "delta": 1}));
    s.send(rb).await.err(409, "wrong_expected_version");
    let rb = s
        .request(Method::DELETE, &format!("/v1/products/{id}"), &s.seller)
        .header("if-match", "\"1\"")
        .json(&json!({"reason": "stale"}));
    s.send(rb).await.err(409, "wrong_expected_version");
    s.assert_head(head, "stale If-Match");

    // The current version (as the ETag a GET answers, or a bare number) goes through.
    let etag = s
        .product_details(&id, head)
        .await
        .ok(200)
        .header("etag")
        .unwrap()
        .to_owned();
    let r = s.send(price(&etag, 33)).await.ok(200);
    assert_eq!(r.u64("version"), 3);
    let r = s.send(price("3", 34)).await.ok(200);
    assert_eq!(r.u64("version"), 4);

    // Orders too.
    let order = s
        .create_order_as(&s.customer, &[(&id, 1)])
        .await
        .ok(201)
        .string("id");
    let place = |v: &str| {
        s.request(
            Method::POST,
            &format!("/v1/orders/{order}/place"),
            &s.customer,
        )
        .header("if-match", v)
    };
    let r = s
        .send(place("\"1\""))
        .await
        .err(409, "wrong_expected_version");
    assert_eq!(r.u64("actual_version"), 2);
    s.send(place("\"2\"")).await.ok(200);

    s.stop().await;
}

async fn correlation_id_is_echoed_and_recorded_in_event_metadata(b: Backend) {
    let s = Srv::start(b).await;
    let rb = s
        .request(Method::POST, "/v1/products", &s.seller)
        .header("x-correlation-id", "abc-123")
        .json(
            &json!({"name": "Rug", "category": "home", "price": 80, "currency": "EUR",
                      "stock": 2}),
        );
    let r = s.send(rb).await.ok(201);
    assert_eq!(r.header("x-correlation-id"), Some("abc-123"));
    let id = r.string("id");
    let stream = s
        .get(&format!("/v1/streams/product-{id}"), &s.admin)
        .await
        .ok(200);
    let events = stream.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    for e in events {
        assert_eq!(e["metadata"]["correlation_id"], "abc-123", "{e}");
        assert_eq!(e["metadata"]["user_id"], SELLER, "{e}");
    }
    // Order commands as well.
    let rb = s
        .request(Method::POST, "/v1/orders", &s.customer)
        .header("x-correlation-id", "order-flow-9")
        .json(&json!({"items": [{"product_id": id, "quantity": 1}]}));
    let r = s.send(rb).await.ok(201);
    assert_eq!(r.header("x-correlation-id"), Some("order-flow-9"));
    let order = r.string("id");
    let stream = s
        .get(&format!("/v1/streams/order-{order}"), &s.admin)
        .await
        .ok(200);
    for e in stream.body["events"].as_array().unwrap() {
        assert_eq!(e["metadata"]["correlation_id"], "order-flow-9", "{e}");
        assert_eq!(e["metadata"]["user_id"], CUSTOMER, "{e}");
    }
    // Without one, the server makes one up and records that.
    let r = s.set_price(&s.seller, &id, "90.00").await.ok(200);
    let made_up = r.header("x-correlation-id").unwrap().to_owned();
    assert!(!made_up.is_empty());
    let last = s
        .get(
            &format!("/v1/streams/product-{id}?from_version=3"),
            &s.admin,
        )
        .await
        .ok(200);
    assert_eq!(
        last.body["events"][0]["metadata"]["correlation_id"],
        made_up.as_str()
    );
    // Errors carry it too.
    let rb = s
        .request(Method::GET, "/v1/nope", ANON)
        .header("x-correlation-id", "lost-1");
    let r = s.send(rb).await.err(404, "route_not_found");
    assert_eq!(r.header("x-correlation-id"), Some("lost-1"));

    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Operations: OpenAPI, health, projections, shutdown

async fn openapi_health_and_projection_rebuild(b: Backend) {
    let s = Srv::start(b).await;
    let r = s.get("/v1/openapi.json", ANON).await.ok(200);
    assert_eq!(r.body["openapi"], "3.1.0");
    let paths = r.body["paths"].as_object().expect("paths");
    for path in [
        "/v1/streams/{stream}",
        "/v1/all",
        "/v1/subscribe",
        "/v1/products",
        "/v1/products/{id}",
        "/v1/products/{id}/price",
        "/v1/products/{id}/stock",
        "/v1/orders",
        "/v1/orders/{id}/items",
        "/v1/orders/{id}/place",
        "/v1/orders/{id}/cancel",
        "/v1/customers/{id}/orders",
        "/v1/analytics/orders",
        "/v1/projections",
        "/v1/projections/{name}/rebuild",
        "/v1/openapi.json",
        "/health/live",
        "/health/ready",
    ] {
        assert!(paths.contains_key(path), "OpenAPI lacks {path}");
    }

    s.get("/health/live", ANON).await.ok(200);
    let r = s.get("/health/ready", ANON).await.ok(200);
    assert_eq!(r.body["status"], "ready");
    let checks = r.body["checks"].as_object().expect("checks");
    for name in ["projection:catalog", "projection:orders"] {
        assert_eq!(checks[name]["ok"], true, "{}", r.text);
    }

    let mut ids = Vec::new();
    for (i, name) in ["Chair", "Desk", "Shelf"].iter().enumerate() {
        let (id, _) = s
            .product(name, "furniture", &format!("{}.50", 40 + i), Some(i as i64))
            .await;
        ids.push(id);
    }
    s.set_price(&s.seller, &ids[0], "41.00").await.ok(200);
    let order = s
        .create_order_as(&s.customer, &[(&ids[1], 1)])
        .await
        .ok(201);
    let head = s.head();
    let before: Vec<Value> =
        futures::future::join_all(ids.iter().map(|id| s.product_details(id, head)))
            .await
            .into_iter()
            .map(|r| r.ok(200).body)
            .collect();

    let r = s.get("/v1/projections", &s.admin).await.ok(200);
    let names: Vec<&str> = r.body["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"catalog") && names.contains(&"orders"),
        "{names:?}"
    );
    // On PostgreSQL the queries above were answered from the PostgreSQL read model, applied
    // by this process's runner, which holds the projection's lock.
    let catalog = &r.body["projections"][names.iter().position(|n| *n == "catalog").unwrap()];
    let mode = if b == Backend::Sqlite {
        "local"
    } else {
        "active"
    };
    assert_eq!(catalog["mode"], mode, "{catalog}");

    let r = s
        .post("/v1/projections/catalog/rebuild", &s.admin, json!({}))
        .await
        .ok(202);
    assert_eq!(r.body["name"], "catalog");
    s.post("/v1/projections/orders/rebuild", &s.admin, json!({}))
        .await
        .ok(202);
    s.post("/v1/projections/nope/rebuild", &s.admin, json!({}))
        .await
        .err(404, "projection_not_found");

    // Wait until the checkpoint is back at the head, then the details are the same.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = s.get("/v1/projections", &s.admin).await.ok(200);
        let catalog = r.body["projections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "catalog")
            .unwrap()
            .clone();
        // Blue/green: done once the new copy has replaced the serving one.
        if catalog["checkpoint"].as_u64() == Some(head)
            && catalog["state"] == "Live"
            && catalog["rebuild"].is_null()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rebuild never finished: {catalog}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, old) in ids.iter().zip(&before) {
        let r = s.product_details(id, head).await.ok(200);
        assert_eq!(&r.body, old);
    }
    let r = s
        .get(
            &format!("/v1/customers/{CUSTOMER}/orders?min_position={head}"),
            &s.customer,
        )
        .await
        .ok(200);
    assert_eq!(r.body["orders"][0]["id"], order.string("id").as_str());

    s.stop().await;
}

async fn graceful_stop_then_reopen_keeps_everything(b: Backend) {
    let s = Srv::start(b).await;
    let (id, _) = s.product("Lantern", "outdoor", "19.99", Some(4)).await;
    let order = s
        .create_order_as(&s.customer, &[(&id, 2)])
        .await
        .ok(201)
        .string("id");
    s.post(&format!("/v1/orders/{order}/place"), &s.customer, json!({}))
        .await
        .ok(200);
    s.post(
        "/v1/streams/notes-1",
        &s.admin,
        json!({"events": [{"type": "Noted", "data": {"text": "keep me"}}]}),
    )
    .await
    .ok(201);
    let head = s.head();
    let log = s.all_events().await;
    assert_eq!(log.len() as u64, head);
    let product = s.product_details(&id, head).await.ok(200).body;
    let orders = s
        .get(
            &format!("/v1/customers/{CUSTOMER}/orders?min_position={head}"),
            &s.customer,
        )
        .await
        .ok(200)
        .body;
    // A live subscriber must not hold the stop up.
    let mut sub = Sse::open(&s, "/v1/subscribe?from_position=1", None).await;
    assert_eq!(sub.next().await.id.as_deref(), Some("1"));

    let addr: SocketAddr = s.running.addr;
    let dir = s.stop().await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "the port still accepts connections after stop"
    );
    // The subscriber's stream has ended.
    let mut rest = 0;
    while sub.next_within(Duration::from_secs(2)).await.is_some() {
        rest += 1;
        assert!(rest <= head as usize, "the SSE stream did not end");
    }

    let s = Srv::open(dir, |_| {}).await;
    assert_eq!(s.head(), head);
    // The read models were kept, not rebuilt: their checkpoints start at the old head.
    for p in s.running.state.projections() {
        assert_eq!(p.checkpoint().await.unwrap(), head, "{}", p.name());
    }
    assert_eq!(s.all_events().await, log);
    assert_eq!(s.product_details(&id, head).await.ok(200).body, product);
    let again = s
        .get(
            &format!("/v1/customers/{CUSTOMER}/orders?min_position={head}"),
            &s.customer,
        )
        .await
        .ok(200)
        .body;
    assert_eq!(again, orders);
    // And it carries on from there.
    let r = s.set_price(&s.seller, &id, "21.00").await.ok(200);
    assert_eq!(r.u64("position"), head + 1);

    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs this suite found, fixed since

async fn last_event_id_at_the_top_of_u64_neither_panics_nor_replays(b: Backend) {
    let s = Srv::start(b).await;
    s.post(
        "/v1/streams/feed-1",
        &s.admin,
        json!({"events": [{"type": "A"}]}),
    )
    .await
    .ok(201);
    let rb = s
        .request(Method::GET, "/v1/subscribe", &s.admin)
        .header("last-event-id", u64::MAX.to_string());
    let resp = tokio::time::timeout(Duration::from_secs(3), rb.send())
        .await
        .expect("an answer within 3 s")
        .expect("an HTTP answer, not a dropped connection");
    let status = resp.status().as_u16();
    if status == 200 {
        // Nothing comes after the largest position: the log must not be replayed.
        let mut stream = resp.bytes_stream();
        let first = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        if let Ok(Some(Ok(chunk))) = first {
            let text = String::from_utf8_lossy(&chunk).to_string();
            assert!(!text.contains("data:"), "replayed: {text}");
        }
    } else {
        assert_eq!(status, 400);
    }
    s.stop().await;
}

async fn read_stream_from_a_version_beyond_i64_is_empty(b: Backend) {
    let s = Srv::start(b).await;
    s.post(
        "/v1/streams/acct-1",
        &s.admin,
        json!({"events": [{"type": "A"}, {"type": "B"}]}),
    )
    .await
    .ok(201);
    for from in [1u64 << 63, u64::MAX] {
        let r = s
            .get(&format!("/v1/streams/acct-1?from_version={from}"), &s.admin)
            .await;
        match r.status {
            200 => assert_eq!(r.body["events"], json!([]), "from_version={from}"),
            _ => {
                r.err(400, "invalid_query");
            }
        }
    }
    s.stop().await;
}

async fn raw_appends_cannot_poison_a_domain_stream(b: Backend) {
    let s = Srv::start(b).await;
    let (id, _) = s.product("Safe", "misc", "1.00", None).await;
    let head = s.head();
    let r = s
        .post(
            "/v1/streams/product-poison",
            &s.admin,
            json!({"events": [{"type": "ProductCreated", "data": {"bogus": 1}}]}),
        )
        .await;
    assert!(
        (400..500).contains(&r.status),
        "an undecodable domain event was accepted: {} {}",
        r.status,
        r.text
    );
    s.assert_head(head, "a poison event");
    s.get("/health/ready", ANON).await.ok(200);
    s.product_details(&id, s.head()).await.ok(200);
    let r = s.set_price(&s.seller, "poison", "2.00").await;
    assert!(r.status < 500, "{} {}", r.status, r.text);
    s.stop().await;
}

async fn the_bearer_scheme_is_case_insensitive(b: Backend) {
    let s = Srv::start(b).await;
    for scheme in ["bearer", "BEARER"] {
        let rb = s
            .http
            .get(s.url("/v1/all"))
            .header("authorization", format!("{scheme} {}", s.admin));
        s.send(rb).await.ok(200);
    }
    s.stop().await;
}

on_both_backends!(
    raw_append_read_and_expected_versions,
    raw_endpoints_need_an_admin_token,
    subscribe_streams_live_events_and_resumes_from_last_event_id,
    subscriber_limit_answers_503_and_frees_the_slot,
    product_commands_answer_id_version_position_and_details_follow,
    product_rules_and_permissions,
    search_by_text_category_and_price,
    order_lifecycle_prices_and_rules,
    an_order_holds_at_most_50_lines,
    analytics_count_placed_orders_per_utc_day,
    bad_input_is_a_4xx_never_a_500_and_writes_nothing,
    bodies_over_the_limit_are_413,
    unknown_routes_are_404_and_wrong_methods_405_as_json,
    queries_read_their_own_writes_and_say_which_position,
    if_match_guards_against_stale_versions,
    correlation_id_is_echoed_and_recorded_in_event_metadata,
    openapi_health_and_projection_rebuild,
    graceful_stop_then_reopen_keeps_everything,
    last_event_id_at_the_top_of_u64_neither_panics_nor_replays,
    read_stream_from_a_version_beyond_i64_is_empty,
    raw_appends_cannot_poison_a_domain_stream,
    the_bearer_scheme_is_case_insensitive,
);
