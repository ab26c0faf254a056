//! Proves the strangler-fig gateway end to end over real loopback sockets: weighted and sticky
//! splits between legacy and new upstreams, CQRS read/write routing, path rewriting, header
//! hygiene (hop-by-hop, X-Forwarded-For), admin rollback with persistence and auth, hot reload
//! of the route file under load, upstream faults (502/504) with counters, and the
//! `ficus routes` CLI. Every upstream is a small axum echo server on 127.0.0.1:0.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use ficus_gateway::proxy::config::GatewayConfig;
use ficus_gateway::{Auth, Claims};
use ficus_server::gateway::{self, RunningGateway};
use futures::stream::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use tempfile::TempDir;

const SECRET: &str = "gateway-proxy-test-secret";
/// Requests in flight at once when a test sends many.
const CONCURRENCY: usize = 16;

// ---------------------------------------------------------------------------------------------
// Upstreams: echo servers that answer with their own name and what they received.

/// FNV-1a, to compare large bodies without echoing them.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An echo server: answers every request with its name and what it received.
struct Upstream {
    url: String,
}

async fn upstream(name: &'static str) -> Upstream {
    upstream_with_delay(name, Duration::ZERO).await
}

/// An echo server whose handler sleeps `delay` before answering.
async fn upstream_with_delay(name: &'static str, delay: Duration) -> Upstream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(echo).with_state((name, delay));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Upstream {
        url: format!("http://{addr}"),
    }
}

/// A URL nothing listens on: a port that was bound and released.
fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

/// Echoes method, path, query, every header (name → values) and the body (length, hash and,
/// when small, the text). `x-want-status` picks the status; `x-want-hop-headers` makes the
/// answer carry hop-by-hop headers of its own.
async fn echo(State((name, delay)): State<(&'static str, Duration)>, req: Request) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for key in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(key)
            .iter()
            .map(|v| json!(String::from_utf8_lossy(v.as_bytes())))
            .collect();
        headers.insert(key.as_str().to_owned(), Value::Array(values));
    }
    let echoed = json!({
        "upstream": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_hash": fnv(&body),
        "body": if body.len() <= 4096 { String::from_utf8_lossy(&body).into_owned() } else { String::new() },
    });
    let status = parts
        .headers
        .get("x-want-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .header("x-method", parts.method.as_str())
        .header("x-path-and-query", path_and_query)
        .header("x-from-upstream", "kept")
        .header("set-cookie", "up=1; Path=/");
    if parts.headers.contains_key("x-want-hop-headers") {
        b = b
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"up\"")
            .header("trailer", "x-checksum")
            .header("connection", "x-up-private")
            .header("x-up-private", "connection-scoped");
    }
    b.body(axum::body::Body::from(echoed.to_string())).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The gateway under test.

/// One answer from the gateway.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The side that answered, after checking that `ficus-target` names the side of the
    /// upstream that really answered (upstreams named `legacy*` are the legacy side).
    #[track_caller]
    fn side(&self) -> &str {
        assert_eq!(self.status, 200, "body: {}", self.text);
        let target = self
            .header("ficus-target")
            .unwrap_or_else(|| panic!("no ficus-target in {:?}", self.headers));
        let up = self
            .header("x-upstream")
            .unwrap_or_else(|| panic!("no x-upstream in {:?}", self.headers));
        let expected = if up.starts_with("legacy") {
            "legacy"
        } else {
            "new"
        };
        assert_eq!(target, expected, "answered by {up} but labelled {target}");
        target
    }

    /// The upstream's echo of one header's values.
    fn echoed(&self, name: &str) -> Vec<String> {
        self.body["headers"][name]
            .as_array()
            .map(|vs| {
                vs.iter()
                    .map(|v| v.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts a JSON error answer with this status and code.
    #[track_caller]
    fn err(&self, status: u16, code: &str) {
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
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error is not JSON: {:?}",
            self.headers
        );
    }
}

async fn send(req: RequestBuilder) -> Answer {
    let resp = req.send().await.expect("the gateway answers");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

/// Sends all requests, `CONCURRENCY` at a time; answers in completion order.
async fn send_all(reqs: impl IntoIterator<Item = RequestBuilder>) -> Vec<Answer> {
    futures::stream::iter(reqs)
        .map(send)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await
}

fn mint(auth: &Auth, sub: &str, roles: &[&str]) -> String {
    auth.mint(&Claims {
        sub: sub.to_owned(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        exp: Some(ficus_store::now_ms() / 1000 + 3600),
        nbf: None,
    })
}

/// Writes the route file the way an operator should: a temp file, then a rename.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.writing");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A gateway on 127.0.0.1:0 reading its routes from a file in a temp dir.
struct Gw {
    running: RunningGateway,
    file: PathBuf,
    url: String,
    http: reqwest::Client,
    auth: Arc<Auth>,
    admin: String,
    _dir: TempDir,
}

impl Gw {
    async fn start(routes_toml: &str) -> Gw {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("routes.toml");
        std::fs::write(&file, routes_toml).unwrap();
        let auth = Arc::new(Auth::new(SECRET));
        let running = gateway::start(file.clone(), "127.0.0.1:0".parse().unwrap(), auth.clone())
            .await
            .expect("the gateway starts");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Gw {
            url: running.url(),
            running,
            file,
            http,
            admin: mint(&auth, "ops", &["admin"]),
            auth,
            _dir: dir,
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.req(Method::GET, path)
    }

    /// `n` GETs of `path`; the sides that answered.
    async fn sides(&self, path: &str, n: usize) -> Vec<String> {
        send_all((0..n).map(|_| self.get(path)))
            .await
            .iter()
            .map(|a| a.side().to_owned())
            .collect()
    }

    async fn admin_call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut r = self.req(method, path).bearer_auth(&self.admin);
        if let Some(b) = body {
            r = r.json(&b);
        }
        send(r).await
    }

    /// A route as the admin API shows it, without its counters.
    async fn route(&self, name: &str) -> Value {
        let a = self
            .admin_call(Method::GET, &format!("/v1/admin/routes/{name}"), None)
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        a.body
    }

    /// Reads a route, changes it, PUTs it back (what `ficus routes set` does).
    async fn put_changed(&self, name: &str, change: impl FnOnce(&mut Value)) -> Answer {
        let mut r = self.route(name).await;
        r.as_object_mut().unwrap().remove("stats");
        change(&mut r);
        self.admin_call(Method::PUT, &format!("/v1/admin/routes/{name}"), Some(r))
            .await
    }

    async fn set_weight(&self, name: &str, weight: u8) {
        let a = self
            .put_changed(name, |r| r["weight_new"] = json!(weight))
            .await;
        assert_eq!(a.status, 200, "{}", a.text);
        assert_eq!(a.body["weight_new"], weight);
    }

    /// The running table's weight of a route.
    /// The route table as saved in the gateway's file.
    fn saved(&self) -> GatewayConfig {
        GatewayConfig::from_toml(&std::fs::read_to_string(&self.file).unwrap()).unwrap()
    }

    fn weight(&self, name: &str) -> u8 {
        self.running
            .gateway
            .table()
            .config
            .routes
            .iter()
            .find(|r| r.name == name)
            .map(|r| r.weight_new)
            .expect("route exists")
    }

    /// Waits until the file watcher has swapped in a table with this weight; how long it took.
    async fn wait_for_weight(&self, name: &str, weight: u8) -> Duration {
        let started = Instant::now();
        while self.weight(name) != weight {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the route file was not reloaded within 3 s (weight still {})",
                self.weight(name)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }

    /// Counters of one route: (legacy requests, legacy errors, new requests, new errors).
    async fn counters(&self, name: &str) -> (u64, u64, u64, u64) {
        let all = self.admin_call(Method::GET, "/v1/admin/routes", None).await;
        assert_eq!(all.status, 200, "{}", all.text);
        let r = all.body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no route {name} in {}", all.text))
            .clone();
        let n = |side: &str, k: &str| r["stats"][side][k].as_u64().unwrap();
        (
            n("legacy", "requests"),
            n("legacy", "errors"),
            n("new", "requests"),
            n("new", "errors"),
        )
    }
}

/// A route table with upstreams `legacy` and `new` and one route `products` on `/api/products`.
fn simple_table(legacy: &Upstream, new: &Upstream, weight: u8, extra: &str) -> String {
    format!(
        r#"
[upstreams]
legacy = "{}"
new = "{}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
new_reads = "new"
new_writes = "new"
weight_new = {weight}
{extra}
"#,
        legacy.url, new.url
    )
}

fn count(sides: &[String], side: &str) -> usize {
    sides.iter().filter(|s| *s == side).count()
}

// ---------------------------------------------------------------------------------------------
// 1. Weights

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_traffic_and_every_answer_names_its_side() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 0, "")).await;

    let sides = gw.sides("/api/products/1", 100).await;
    assert_eq!(count(&sides, "legacy"), 100, "weight 0 is all legacy");

    gw.set_weight("products", 100).await;
    let sides = gw.sides("/api/products/1", 100).await;
    assert_eq!(count(&sides, "new"), 100, "weight 100 is all new");

    // Without a sticky key every request draws afresh: over 2,000 requests the share of the
    // new side is 30 % give or take ~1 point (σ ≈ 1.02 points); ±5 points is ~5σ.
    gw.set_weight("products", 30).await;
    let sides = gw.sides("/api/products/1", 2000).await;
    let share = count(&sides, "new") as f64 / 2000.0 * 100.0;
    assert!(
        (25.0..=35.0).contains(&share),
        "new share {share:.1} % at weight 30"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Stickiness

/// Each user's sides over `per_user` GETs carrying `x-user: <user>`.
async fn sides_by_user(
    gw: &Gw,
    users: &[String],
    per_user: usize,
) -> HashMap<String, BTreeSet<String>> {
    let reqs = users.iter().flat_map(|u| {
        (0..per_user).map(move |_| gw.get("/api/products/9").header("x-user", u.as_str()))
    });
    let mut by_user: HashMap<String, BTreeSet<String>> = HashMap::new();
    for a in send_all(reqs).await {
        let user = a.echoed("x-user").concat();
        by_user.entry(user).or_default().insert(a.side().to_owned());
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_stickiness_keeps_users_on_one_side_and_moves_them_only_forward() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(
        &legacy,
        &new,
        30,
        r#"sticky = "header:x-user""#,
    ))
    .await;
    let users: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();

    // Each user's sides over `per_user` requests.
    let before = sides_by_user(&gw, &users, 10).await;
    assert_eq!(before.len(), 200);
    for (user, sides) in &before {
        assert_eq!(sides.len(), 1, "{user} was sent to both sides: {sides:?}");
    }
    let on_new = |m: &HashMap<String, BTreeSet<String>>| {
        m.iter()
            .filter(|(_, s)| s.contains("new"))
            .map(|(u, _)| u.clone())
            .collect::<BTreeSet<_>>()
    };
    let new_before = on_new(&before);
    // 200 users at 30 %: σ ≈ 3.2 points; the bound is ~3σ.
    assert!(
        (50..=70).contains(&new_before.len()),
        "{} of 200 users on the new side at weight 30",
        new_before.len()
    );

    gw.set_weight("products", 60).await;
    let after = sides_by_user(&gw, &users, 3).await;
    for (user, sides) in &after {
        assert_eq!(sides.len(), 1, "{user} was sent to both sides: {sides:?}");
    }
    let new_after = on_new(&after);
    let went_back: Vec<_> = new_before.difference(&new_after).collect();
    assert!(
        went_back.is_empty(),
        "raising the weight moved users new → legacy: {went_back:?}"
    );
    assert!(
        (100..=140).contains(&new_after.len()),
        "{} of 200 users on the new side at weight 60",
        new_after.len()
    );
    assert!(new_after.len() > new_before.len(), "nobody moved forward");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_and_user_stickiness_keep_clients_on_one_side() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let table = format!(
        r#"
[upstreams]
legacy = "{}"
new = "{}"

[[routes]]
name = "carts"
path_prefix = "/api/carts"
legacy = "legacy"
new_reads = "new"
weight_new = 50
sticky = "cookie:uid"

[[routes]]
name = "orders"
path_prefix = "/api/orders"
legacy = "legacy"
new_reads = "new"
weight_new = 50
sticky = "user"
"#,
        legacy.url, new.url
    );
    let gw = Gw::start(&table).await;

    // cookie:uid — the key is found among other cookies, in any position.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let cookies = [
            format!("uid=u{i}"),
            format!("theme=dark; uid=u{i}"),
            format!("a=1;uid=u{i}; b=2"),
        ];
        let answers = send_all(
            cookies
                .iter()
                .cycle()
                .take(6)
                .map(|c| gw.get("/api/carts/1").header("cookie", c.as_str())),
        )
        .await;
        let sides: BTreeSet<_> = answers.iter().map(|a| a.side().to_owned()).collect();
        assert_eq!(sides.len(), 1, "cookie user u{i} saw both sides");
        seen.extend(sides);
    }
    assert_eq!(seen.len(), 2, "60 cookie users at 50 % all on one side");

    // user — the key is the bearer token's `sub`, whatever else the token says.
    let mut seen = BTreeSet::new();
    for i in 0..60 {
        let sub = format!("customer-{i}");
        let tokens = [
            mint(&gw.auth, &sub, &[]),
            mint(&gw.auth, &sub, &["customer"]),
        ];
        let answers = send_all(
            tokens
                .iter()
                .cycle()
                .take(6)
                .map(|t| gw.get("/api/orders/1").bearer_auth(t)),
        )
        .await;
        let sides: BTreeSet<_> = answers.iter().map(|a| a.side().to_owned()).collect();
        assert_eq!(sides.len(), 1, "token user {sub} saw both sides");
        // The token reaches the upstream untouched (it is end-to-end, not hop-by-hop).
        assert!(answers[0].echoed("authorization")[0].starts_with("Bearer "));
        seen.extend(sides);
    }
    assert_eq!(seen.len(), 2, "60 token users at 50 % all on one side");
}

// ---------------------------------------------------------------------------------------------
// 3. CQRS routing and rewriting

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cqrs_routing_rewrites_paths_and_carries_bodies_intact() {
    let legacy = upstream("legacy").await;
    let reads = upstream("reads").await;
    let writes = upstream("writes").await;
    let table = format!(
        r#"
[upstreams]
legacy = "{l}"
legacy_mounted = "{l}/base/"
reads = "{r}"
writes = "{w}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
new_reads = "reads"
new_writes = "writes"
new_prefix = "/v1/products"
weight_new = 100

[[routes]]
name = "catalog"
path_prefix = "/api/catalog/"
methods = ["GET"]
legacy = "legacy"
legacy_prefix = "/old/catalog"

[[routes]]
name = "mounted"
path_prefix = "/api/mounted"
legacy = "legacy_mounted"
"#,
        l = legacy.url,
        r = reads.url,
        w = writes.url
    );
    let gw = Gw::start(&table).await;

    // Reads go to the query side, path rewritten, query string kept.
    let a = send(gw.get("/api/products/7?x=1&y=a%20b")).await;
    assert_eq!(a.side(), "new");
    assert_eq!(a.header("ficus-route"), Some("products"));
    assert_eq!(a.body["upstream"], "reads");
    assert_eq!(a.body["path"], "/v1/products/7");
    assert_eq!(a.body["query"], "x=1&y=a%20b");
    let a = send(gw.get("/api/products")).await;
    assert_eq!(
        (&a.body["upstream"], &a.body["path"]),
        (&json!("reads"), &json!("/v1/products"))
    );
    let a = send(gw.req(Method::HEAD, "/api/products/7?x=1")).await;
    assert_eq!(a.side(), "new");
    assert_eq!(a.header("x-upstream"), Some("reads"));
    assert_eq!(a.header("x-method"), Some("HEAD"));
    assert_eq!(a.header("x-path-and-query"), Some("/v1/products/7?x=1"));
    assert!(a.text.is_empty(), "HEAD answered with a body");

    // Writes go to the command side.
    for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let a = send(
            gw.req(m.clone(), "/api/products/7?x=1")
                .body("{\"price\":5}"),
        )
        .await;
        assert_eq!(a.side(), "new");
        assert_eq!(a.body["upstream"], "writes", "{m}");
        assert_eq!(a.body["method"], m.as_str());
        assert_eq!(a.body["path"], "/v1/products/7");
        assert_eq!(a.body["query"], "x=1");
        assert_eq!(a.body["body"], "{\"price\":5}", "{m}");
    }

    // A 1 MiB body arrives intact, with a length and streamed (chunked) alike.
    let big: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let a = send(gw.req(Method::POST, "/api/products").body(big.clone())).await;
    assert_eq!(a.body["upstream"], "writes");
    assert_eq!(a.body["body_len"], big.len());
    assert_eq!(a.body["body_hash"], fnv(&big));
    assert_eq!(a.echoed("content-length"), vec![big.len().to_string()]);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let a = send(
        gw.req(Method::PUT, "/api/products/8")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_eq!(a.body["upstream"], "writes");
    assert_eq!(a.body["body_len"], big.len());
    assert_eq!(a.body["body_hash"], fnv(&big));

    // The legacy side rewrites with legacy_prefix; a trailing / on path_prefix is ignored.
    let a = send(gw.get("/api/catalog/a/b?q=1")).await;
    assert_eq!(a.side(), "legacy");
    assert_eq!(a.header("ficus-route"), Some("catalog"));
    assert_eq!(a.body["path"], "/old/catalog/a/b");
    assert_eq!(a.body["query"], "q=1");
    // An upstream URL with a path mounts the route under it.
    let a = send(gw.get("/api/mounted/x")).await;
    assert_eq!(a.side(), "legacy");
    assert_eq!(a.body["path"], "/base/api/mounted/x");

    // Method filter: only GET is routed on catalog.
    for m in [Method::POST, Method::DELETE, Method::PUT] {
        send(gw.req(m, "/api/catalog/a")).await.err(404, "no_route");
    }
    // Prefixes match whole segments only; unknown paths are 404 too.
    for p in [
        "/api/productsX",
        "/api/products-old/1",
        "/api/catalogue",
        "/nope",
    ] {
        send(gw.get(p)).await.err(404, "no_route");
    }
    // None of the refused requests reached an upstream.
    let (l, le, n, ne) = gw.counters("catalog").await;
    assert_eq!((l, le, n, ne), (1, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// 4. Headers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_x_forwarded_for_is_appended() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 0, "")).await;
    let up_authority = legacy.url.trim_start_matches("http://").to_owned();

    let hop_request = |r: RequestBuilder| {
        r.header("connection", "keep-alive")
            .header("keep-alive", "timeout=5, max=100")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("upgrade", "websocket")
            .header("proxy-authorization", "Basic Zm9vOmJhcg==")
            .header("x-forwarded-for", "203.0.113.9")
            .header("authorization", "Bearer end-to-end")
            .header("cookie", "a=1")
            .header("x-custom", "kept")
    };
    // Control: sent straight to the upstream, the hop-by-hop headers do arrive.
    let direct = send(hop_request(
        gw.http.get(format!("{}/api/products/1", legacy.url)),
    ))
    .await;
    for h in [
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ] {
        assert!(!direct.echoed(h).is_empty(), "the client did not send {h}");
    }
    let a = send(hop_request(gw.get("/api/products/1"))).await;
    assert_eq!(a.side(), "legacy");
    for h in [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(
            a.echoed(h).is_empty(),
            "hop-by-hop {h} was forwarded: {:?}",
            a.echoed(h)
        );
    }
    assert_eq!(a.echoed("x-forwarded-for"), vec!["203.0.113.9, 127.0.0.1"]);
    assert_eq!(a.echoed("authorization"), vec!["Bearer end-to-end"]);
    assert_eq!(a.echoed("cookie"), vec!["a=1"]);
    assert_eq!(a.echoed("x-custom"), vec!["kept"]);
    assert_eq!(
        a.echoed("host"),
        vec![up_authority],
        "Host names the upstream"
    );

    // Without an incoming X-Forwarded-For the gateway starts one.
    let a = send(gw.get("/api/products/1")).await;
    assert_eq!(a.echoed("x-forwarded-for"), vec!["127.0.0.1"]);

    // A streamed (chunked) body: hyper re-frames it; exactly one framing reaches the upstream.
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(b"ab"), Ok(b"cd")];
    let a = send(
        gw.req(Method::POST, "/api/products")
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks))),
    )
    .await;
    assert_eq!(a.body["body"], "abcd");
    let framing = a.echoed("transfer-encoding").len() + a.echoed("content-length").len();
    assert_eq!(framing, 1, "framing headers: {:?}", a.body["headers"]);

    // The upstream's status and headers come back; its hop-by-hop headers do not.
    let a = send(
        gw.req(Method::POST, "/api/products")
            .header("x-want-status", "201")
            .header("x-want-hop-headers", "1"),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(a.header("x-from-upstream"), Some("kept"));
    assert_eq!(a.header("set-cookie"), Some("up=1; Path=/"));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.header("ficus-target"), Some("legacy"));
    assert_eq!(a.header("ficus-route"), Some("products"));
    for h in ["keep-alive", "proxy-authenticate", "trailer"] {
        assert!(a.headers.get(h).is_none(), "upstream's {h} came back");
    }
    // An upstream's 404 and 503 pass through as they are (not the gateway's own codes).
    for s in [404u16, 503] {
        let a = send(
            gw.get("/api/products/1")
                .header("x-want-status", s.to_string()),
        )
        .await;
        assert_eq!(a.status, s);
        assert_eq!(a.body["upstream"], "legacy", "{}", a.text);
    }
}

/// RFC 9110 §7.6.1: a proxy must also drop the headers that `Connection` names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_named_by_connection_are_not_forwarded() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 0, "")).await;
    let a = send(
        gw.get("/api/products/1")
            .header("connection", "keep-alive, x-client-private")
            .header("x-client-private", "connection-scoped")
            .header("x-want-hop-headers", "1"),
    )
    .await;
    assert!(
        a.echoed("x-client-private").is_empty(),
        "request header named by Connection was forwarded"
    );
    assert!(
        a.headers.get("x-up-private").is_none(),
        "response header named by the upstream's Connection came back"
    );
}

/// Several X-Forwarded-For lines are one comma-separated list (RFC 9110 §5.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_incoming_x_forwarded_for_line_is_kept() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 0, "")).await;
    let a = send(
        gw.get("/api/products/1")
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-forwarded-for", "198.51.100.7"),
    )
    .await;
    assert_eq!(
        a.echoed("x-forwarded-for").join(", "),
        "203.0.113.9, 198.51.100.7, 127.0.0.1"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Rollback and admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rollback_is_instant_persisted_and_invalid_routes_are_refused() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(
        &legacy,
        &new,
        100,
        "new_prefix = \"/v1/products\"\nsticky = \"header:x-user\"",
    ))
    .await;
    assert_eq!(count(&gw.sides("/api/products/1", 20).await, "new"), 20);

    // Rollback: the very next requests are all legacy.
    gw.set_weight("products", 0).await;
    assert_eq!(count(&gw.sides("/api/products/1", 50).await, "legacy"), 50);

    // Saved to the file, with the rest of the route as it was.
    let saved = gw.saved();
    let r = &saved.routes[0];
    assert_eq!(r.name, "products");
    assert_eq!(r.weight_new, 0);
    assert_eq!(r.new_prefix.as_deref(), Some("/v1/products"));
    assert_eq!(r.sticky.as_deref(), Some("header:x-user"));
    assert_eq!(saved.upstreams["new"], new.url);
    let file_before = std::fs::read_to_string(&gw.file).unwrap();

    // Invalid routes: 400 invalid_route, and neither the table nor the file changes.
    for change in [
        json!({"new_writes": "nowhere"}),
        json!({"legacy": "nowhere"}),
        json!({"weight_new": 101}),
        json!({"sticky": "ip"}),
        json!({"path_prefix": "api"}),
        json!({"timeout_ms": 0}),
    ] {
        let a = gw
            .put_changed("products", |r| {
                for (k, v) in change.as_object().unwrap() {
                    r[k] = v.clone();
                }
            })
            .await;
        a.err(400, "invalid_route");
    }
    let a = gw
        .put_changed("products", |r| {
            r["weight_new"] = json!(50);
            r["new_reads"] = Value::Null;
            r["new_writes"] = Value::Null;
        })
        .await;
    a.err(400, "invalid_route");
    assert_eq!(gw.route("products").await["weight_new"], 0);
    assert_eq!(count(&gw.sides("/api/products/1", 30).await, "legacy"), 30);
    assert_eq!(std::fs::read_to_string(&gw.file).unwrap(), file_before);

    // A PUT of a new name adds a route, live and saved.
    let a = gw
        .admin_call(
            Method::PUT,
            "/v1/admin/routes/extra",
            Some(json!({"path_prefix": "/api/extra", "legacy": "legacy", "new_reads": "new", "weight_new": 100})),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.body["name"], "extra");
    assert_eq!(send(gw.get("/api/extra/1")).await.side(), "new");
    let saved = gw.saved();
    assert_eq!(saved.routes.len(), 2);

    // The saved file is not mistaken for an outside edit that would undo anything.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(gw.weight("products"), 0);
    assert_eq!(gw.weight("extra"), 100);

    gw.admin_call(Method::GET, "/v1/admin/routes/nope", None)
        .await
        .err(404, "route_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_an_admin_token() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 0, "")).await;
    let customer = mint(&gw.auth, "cust", &["customer"]);
    let forged = mint(&Auth::new("another-secret"), "ops", &["admin"]);
    let body = json!({"path_prefix": "/api/products", "legacy": "legacy", "new_reads": "new", "weight_new": 100});
    for (method, path) in [
        (Method::GET, "/v1/admin/routes"),
        (Method::GET, "/v1/admin/routes/products"),
        (Method::PUT, "/v1/admin/routes/products"),
    ] {
        let call = |token: Option<&str>| {
            let mut r = gw.req(method.clone(), path).json(&body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            send(r)
        };
        call(None).await.err(401, "unauthorized");
        call(Some(&forged)).await.err(401, "unauthorized");
        call(Some("not-a-token")).await.err(401, "unauthorized");
        call(Some(&customer)).await.err(403, "forbidden");
    }
    assert_eq!(gw.weight("products"), 0, "a refused PUT changed the table");
    assert_eq!(count(&gw.sides("/api/products/1", 10).await, "legacy"), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_counters_match_the_traffic_sent() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 100, "")).await;
    assert_eq!(gw.counters("products").await, (0, 0, 0, 0));
    gw.sides("/api/products/1", 37).await;
    gw.set_weight("products", 0).await;
    gw.sides("/api/products/1", 23).await;
    // An upstream 5xx is counted as an error of its side; a 4xx is not.
    let a = send(gw.get("/api/products/1").header("x-want-status", "500")).await;
    assert_eq!(a.status, 500);
    let a = send(gw.get("/api/products/1").header("x-want-status", "404")).await;
    assert_eq!(a.status, 404);
    // Requests no route takes are not counted anywhere.
    send(gw.get("/api/other")).await.err(404, "no_route");
    assert_eq!(gw.counters("products").await, (25, 1, 37, 0));
    let one = gw.route("products").await;
    assert_eq!(one["stats"]["new"]["requests"], 37);
    assert_eq!(one["stats"]["legacy"]["requests"], 25);
    let buckets: u64 = one["stats"]["legacy"]["latency_buckets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(buckets, 25, "every request falls in one latency bucket");

    // The same counters for Prometheus, kept across the table swap of the weight change.
    let m = gw.admin_call(Method::GET, "/v1/admin/metrics", None).await;
    assert_eq!(m.status, 200, "{}", m.text);
    let value = |series: &str| -> u64 {
        m.text
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{}", m.text))
    };
    let r = |side: &str| format!("{{route=\"products\",side=\"{side}\"}}");
    assert_eq!(
        value(&format!("ficus_gateway_requests_total{}", r("legacy"))),
        25
    );
    assert_eq!(
        value(&format!("ficus_gateway_requests_total{}", r("new"))),
        37
    );
    assert_eq!(
        value(&format!("ficus_gateway_errors_total{}", r("legacy"))),
        1
    );
    let count = "ficus_gateway_request_duration_seconds_count";
    assert_eq!(value(&format!("{count}{}", r("legacy"))), 25);
    assert_eq!(
        value(
            "ficus_gateway_request_duration_seconds_bucket{route=\"products\",side=\"legacy\",le=\"+Inf\"}"
        ),
        25
    );
    assert_eq!(
        value("ficus_gateway_shadow_compared_total{route=\"products\"}"),
        0
    );
    let anon = send(gw.get("/v1/admin/metrics")).await;
    assert_eq!(anon.status, 401);
}

/// Two operators changing two different routes at once must both win, and both be told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admin_puts_to_different_routes_all_land() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let mut table = format!(
        "[upstreams]\nlegacy = \"{}\"\nnew = \"{}\"\n",
        legacy.url, new.url
    );
    for i in 0..32 {
        table.push_str(&format!(
            "\n[[routes]]\nname = \"r{i}\"\npath_prefix = \"/r{i}\"\nlegacy = \"legacy\"\nnew_reads = \"new\"\n"
        ));
    }
    let gw = Gw::start(&table).await;
    let puts = (0..32).map(|i| {
        gw.req(Method::PUT, &format!("/v1/admin/routes/r{i}"))
            .bearer_auth(&gw.admin)
            .json(&json!({"path_prefix": format!("/r{i}"), "legacy": "legacy", "new_reads": "new", "weight_new": 100}))
    });
    for a in send_all(puts).await {
        assert_eq!(a.status, 200, "{}", a.text);
    }
    let saved = gw.saved();
    let lost: Vec<String> = (0..32)
        .map(|i| format!("r{i}"))
        .filter(|n| gw.weight(n) != 100)
        .collect();
    let lost_in_file: Vec<&str> = saved
        .routes
        .iter()
        .filter(|r| r.weight_new != 100)
        .map(|r| r.name.as_str())
        .collect();
    assert!(
        lost.is_empty() && lost_in_file.is_empty(),
        "acknowledged PUTs lost: running table {lost:?}, file {lost_in_file:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Hot reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_moves_traffic_without_failing_a_request() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Arc::new(Gw::start(&simple_table(&legacy, &new, 0, "")).await);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // (started, status, side or error)
    let log: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (gw, stop, log) = (gw.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let entry = match gw.get("/api/products/1").send().await {
                        Ok(r) => {
                            let side = r
                                .headers()
                                .get("ficus-target")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("?")
                                .to_owned();
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            (started, status, side)
                        }
                        Err(e) => (started, 0, e.to_string()),
                    };
                    log.lock().unwrap().push(entry);
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let write1 = Instant::now();
    write_atomically(&gw.file, &simple_table(&legacy, &new, 100, ""));
    let took = gw.wait_for_weight("products", 100).await;
    let swapped1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let write2 = Instant::now();
    write_atomically(&gw.file, &simple_table(&legacy, &new, 0, ""));
    let took2 = gw.wait_for_weight("products", 0).await;
    let swapped2 = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(
        took < Duration::from_millis(1500) && took2 < Duration::from_millis(1500),
        "reloads took {took:?} and {took2:?} with a 500 ms poll"
    );

    let log = log.lock().unwrap();
    let failed: Vec<_> = log.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during reloads, e.g. {:?}",
        failed.len(),
        log.len(),
        failed.first()
    );
    let window = |from: Instant, to: Instant| -> Vec<&str> {
        log.iter()
            .filter(|(t, _, _)| *t >= from && *t < to)
            .map(|(_, _, s)| s.as_str())
            .collect()
    };
    let far_future = Instant::now() + Duration::from_secs(3600);
    for (name, from, to, side) in [
        ("before the first reload", t0, write1, "legacy"),
        ("after weight 100 was loaded", swapped1, write2, "new"),
        ("after weight 0 was loaded", swapped2, far_future, "legacy"),
    ] {
        let sides = window(from, to);
        assert!(sides.len() >= 10, "only {} requests {name}", sides.len());
        let wrong = sides.iter().filter(|s| **s != side).count();
        assert_eq!(
            wrong,
            0,
            "{wrong} of {} requests {name} were not {side}",
            sides.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_route_file_keeps_the_running_table() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(&legacy, &new, 100, "")).await;
    for broken in [
        "this is [[[ not toml".to_owned(),
        simple_table(&legacy, &new, 101, ""),
        simple_table(&legacy, &new, 30, "sticky = \"ip\""),
    ] {
        write_atomically(&gw.file, &broken);
        // Long enough for two polls of the file.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(gw.weight("products"), 100, "took in {broken}");
        assert_eq!(count(&gw.sides("/api/products/1", 20).await, "new"), 20);
    }
    // Fixing the file is picked up.
    write_atomically(&gw.file, &simple_table(&legacy, &new, 0, ""));
    gw.wait_for_weight("products", 0).await;
    assert_eq!(count(&gw.sides("/api/products/1", 20).await, "legacy"), 20);
}

// ---------------------------------------------------------------------------------------------
// 7. Faults

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_and_hanging_upstreams_answer_502_and_504_and_count_as_errors() {
    let legacy = upstream("legacy").await;
    let slow = upstream_with_delay("slow", Duration::from_secs(10)).await;
    let table = format!(
        r#"
[upstreams]
legacy = "{}"
dead = "{}"
slow = "{}"

[[routes]]
name = "down"
path_prefix = "/api/down"
legacy = "dead"

[[routes]]
name = "new-down"
path_prefix = "/api/new-down"
legacy = "legacy"
new_reads = "dead"
weight_new = 100

[[routes]]
name = "hang"
path_prefix = "/api/hang"
legacy = "slow"
timeout_ms = 300

[[routes]]
name = "fine"
path_prefix = "/api/fine"
legacy = "legacy"
"#,
        legacy.url,
        dead_url(),
        slow.url
    );
    let gw = Gw::start(&table).await;

    let a = send(gw.get("/api/down/1")).await;
    a.err(502, "upstream_unavailable");
    assert_eq!(a.header("ficus-target"), Some("legacy"));
    assert_eq!(a.header("ficus-route"), Some("down"));
    let a = send(gw.get("/api/new-down/1")).await;
    a.err(502, "upstream_unavailable");
    assert_eq!(a.header("ficus-target"), Some("new"));

    let started = Instant::now();
    let a = send(gw.get("/api/hang/1")).await;
    let took = started.elapsed();
    a.err(504, "upstream_timeout");
    assert_eq!(a.header("ficus-target"), Some("legacy"));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(1),
        "504 after {took:?} with timeout_ms = 300"
    );

    // The gateway keeps serving everything else.
    assert_eq!(send(gw.get("/api/fine/1")).await.side(), "legacy");

    assert_eq!(gw.counters("down").await, (1, 1, 0, 0));
    assert_eq!(gw.counters("new-down").await, (0, 0, 1, 1));
    assert_eq!(gw.counters("hang").await, (1, 1, 0, 0));
    assert_eq!(gw.counters("fine").await, (1, 0, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// 8. The CLI

/// Runs `ficus <args>` against the gateway; (success, stdout, stderr).
async fn ficus(gw: &Gw, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args(args)
        .env("FICUS_URL", &gw.url)
        .env("FICUS_TOKEN", token)
        .env("NO_PROXY", "127.0.0.1")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run ficus");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routes_cli_sets_and_lists_routes() {
    let (legacy, new) = (upstream("legacy").await, upstream("new").await);
    let gw = Gw::start(&simple_table(
        &legacy,
        &new,
        10,
        "new_prefix = \"/v1/products\"\nsticky = \"cookie:uid\"",
    ))
    .await;
    gw.sides("/api/products/1", 5).await;

    let (ok, out, err) = ficus(
        &gw,
        &gw.admin,
        &["routes", "set", "products", "--weight-new", "50"],
    )
    .await;
    assert!(ok, "routes set failed: {out}{err}");
    assert!(out.contains("50"), "{out}");
    let r = gw.route("products").await;
    assert_eq!(r["weight_new"], 50);
    assert_eq!(r["new_prefix"], "/v1/products", "routes set lost a field");
    assert_eq!(r["sticky"], "cookie:uid", "routes set lost a field");
    let saved = gw.saved();
    assert_eq!(saved.routes[0].weight_new, 50);

    // Shadow mode, its ignored fields and the timeout, from the CLI; the other fields stay.
    let (ok, out, err) = ficus(
        &gw,
        &gw.admin,
        &[
            "routes",
            "set",
            "products",
            "--shadow",
            "on",
            "--shadow-ignore",
            "updated_at, order.id",
            "--timeout-ms",
            "750",
        ],
    )
    .await;
    assert!(ok, "routes set --shadow failed: {out}{err}");
    assert!(out.contains("shadowed"), "{out}");
    let r = gw.route("products").await;
    assert_eq!(r["shadow"], true);
    assert_eq!(r["shadow_ignore"], json!(["updated_at", "order.id"]));
    assert_eq!(r["timeout_ms"], 750);
    assert_eq!(r["weight_new"], 50, "routes set lost a field");
    let saved = gw.saved();
    assert!(saved.routes[0].shadow);
    let (ok, out, err) = ficus(
        &gw,
        &gw.admin,
        &[
            "routes",
            "set",
            "products",
            "--shadow",
            "off",
            "--shadow-ignore",
            "",
        ],
    )
    .await;
    assert!(ok, "routes set --shadow off failed: {out}{err}");
    let r = gw.route("products").await;
    assert_ne!(r["shadow"], true, "{r}");
    assert!(
        r["shadow_ignore"].as_array().is_none_or(|a| a.is_empty()),
        "{r}"
    );
    let saved = gw.saved();
    assert!(!saved.routes[0].shadow && saved.routes[0].shadow_ignore.is_empty());
    // An unknown shadow value is refused by the CLI before anything is sent.
    let (ok, _, err) = ficus(
        &gw,
        &gw.admin,
        &["routes", "set", "products", "--shadow", "maybe"],
    )
    .await;
    assert!(!ok && err.contains("maybe"), "{err}");

    let (ok, out, err) = ficus(&gw, &gw.admin, &["routes", "list"]).await;
    assert!(ok, "routes list failed: {out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("products"))
        .unwrap_or_else(|| panic!("no products line in {out:?}"));
    assert!(
        line.contains("/api/products") && line.contains("50"),
        "{line}"
    );
    assert!(line.contains("req"), "{line}");

    // A non-admin token is refused and changes nothing.
    let customer = mint(&gw.auth, "cust", &["customer"]);
    let (ok, out, err) = ficus(
        &gw,
        &customer,
        &["routes", "set", "products", "--weight-new", "0"],
    )
    .await;
    assert!(!ok, "a customer changed a route: {out}");
    assert!(err.contains("403"), "{err}");
    assert_eq!(gw.weight("products"), 50);
}
