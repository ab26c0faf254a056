//! Nobody gets in who should not: bearer tokens that are expired, not yet valid, use another
//! algorithm (`none`, RS256 or HS512 headers over an HMAC), carry a wrong signature, lack
//! `sub`, or are garbage get 401 `unauthorized`; every command and admin endpoint refuses the
//! wrong caller with 403 (a seller cannot reprice another's product, a customer cannot read
//! another's orders, only an admin reads raw streams, redrives or shifts routes) and the
//! refusals change nothing; and neither the HS256 secret nor a bearer token ever appears in
//! the server's debug logs.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ficus_gateway::Auth;
use ficus_server::app::{self, Running, ServerConfig};
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

mod common;
use common::{free_port, wait_ready};

const SECRET: &str = "security-test-secret";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A token with any header and payload, signed with HMAC-SHA256 under `key`.
fn hand_made(header: &Value, payload: &Value, key: &str) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

struct Server {
    running: Running,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Server {
            running,
            _dir: dir,
            http,
        }
    }

    fn token(&self, sub: &str, role: &str) -> String {
        self.running.token(sub, &[role], 3600)
    }

    /// Sends a request as `token` ("" for none) and returns status and JSON body.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if !token.is_empty() {
            r = r.header("authorization", format!("Bearer {token}"));
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn head(&self) -> u64 {
        let admin = self.token("ada", "admin");
        self.call(Method::GET, "/v1/all?limit=1", &admin, None)
            .await
            .1["head_position"]
            .as_u64()
            .unwrap()
    }
}

#[track_caller]
fn refused(got: (u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {}", got.1);
    assert_eq!(got.1["code"], code, "{what}: {}", got.1);
    assert!(got.1["message"].is_string(), "{what}: {}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_401() {
    let s = Server::start().await;
    let hs = json!({"alg": "HS256", "typ": "JWT"});
    let admin_claims = |extra: Value| {
        let mut c = json!({"sub": "mallory", "roles": ["admin"]});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let good = hand_made(&hs, &admin_claims(json!({"exp": now() + 600})), SECRET);
    // The hand-made token is right, so each refusal below is for its one defect.
    assert_eq!(s.call(Method::GET, "/v1/all", &good, None).await.0, 200);
    let (h, p, _) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
            parts.next().unwrap().to_owned(),
        )
    };
    let cases: Vec<(String, &str)> = vec![
        (
            hand_made(&hs, &admin_claims(json!({"exp": now() - 5})), SECRET),
            "expired",
        ),
        (
            hand_made(&hs, &admin_claims(json!({"nbf": now() + 600})), SECRET),
            "not yet valid",
        ),
        (
            format!("{}.{p}.", B64.encode(r#"{"alg":"none","typ":"JWT"}"#)),
            "alg none, no signature",
        ),
        (
            format!("{}.{p}.", B64.encode(r#"{"alg":"None"}"#)),
            "alg None",
        ),
        (
            // RS/HS confusion: an RS256 header with an HMAC over the shared secret (as if the
            // secret were the public key).
            hand_made(
                &json!({"alg": "RS256", "typ": "JWT"}),
                &admin_claims(json!({})),
                SECRET,
            ),
            "RS256 header",
        ),
        (
            hand_made(&json!({"alg": "HS512"}), &admin_claims(json!({})), SECRET),
            "HS512 header",
        ),
        (
            hand_made(&json!({"alg": "hs256"}), &admin_claims(json!({})), SECRET),
            "lowercase alg",
        ),
        (
            hand_made(&json!({}), &admin_claims(json!({})), SECRET),
            "no alg",
        ),
        (
            hand_made(&hs, &admin_claims(json!({})), "another-secret"),
            "wrong key",
        ),
        (
            format!(
                "{h}.{}.{}",
                B64.encode(admin_claims(json!({"sub": "root"})).to_string()),
                good.rsplit('.').next().unwrap()
            ),
            "payload swapped under a valid signature",
        ),
        (
            format!("{h}.{p}.{}", B64.encode([0u8; 32])),
            "zero signature",
        ),
        (format!("{h}.{p}."), "empty signature"),
        (
            hand_made(&hs, &json!({"roles": ["admin"]}), SECRET),
            "missing sub",
        ),
        (
            hand_made(&hs, &json!({"sub": "", "roles": ["admin"]}), SECRET),
            "empty sub",
        ),
        (
            hand_made(&hs, &json!({"sub": 7, "roles": ["admin"]}), SECRET),
            "sub not a string",
        ),
        (
            hand_made(&hs, &admin_claims(json!({"exp": "never"})), SECRET),
            "exp not a number",
        ),
        (
            hand_made(&hs, &json!(["mallory", ["admin"]]), SECRET),
            "claims not an object",
        ),
        ("garbage".into(), "garbage"),
        ("a.b.c".into(), "three garbage parts"),
        (format!("{good}.x"), "four parts"),
        ("....".into(), "only dots"),
        (format!("{h}.%%%.{p}"), "not base64"),
        (
            format!("{}.{p}.x", B64.encode("not json")),
            "header not JSON",
        ),
        ("x".repeat(20_000), "oversized"),
    ];
    let before = s.head().await;
    for (token, what) in &cases {
        refused(
            s.call(Method::GET, "/v1/all", token, None).await,
            401,
            "unauthorized",
            what,
        );
        // A write with the same token is refused too, and writes nothing.
        let body = json!({"name": "x", "category": "c", "price": 1, "currency": "EUR"});
        refused(
            s.call(Method::POST, "/v1/products", token, Some(body))
                .await,
            401,
            "unauthorized",
            what,
        );
    }
    // Wrong scheme or no header at all.
    for header in [
        "Basic YWRhOmFkYQ==",
        "Token abc",
        &format!("Bearer{good}"),
        "Bearer",
        "",
    ] {
        let mut r = s.http.get(format!("{}/v1/all", s.running.url()));
        if !header.is_empty() {
            r = r.header("authorization", header);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        refused(
            (status, resp.json().await.unwrap()),
            401,
            "unauthorized",
            header,
        );
    }
    assert_eq!(s.head().await, before, "a refused token wrote something");
    eprintln!(
        "security: {} forged or broken tokens refused with 401",
        cases.len() + 5
    );
    s.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_and_admin_endpoint_refuses_the_wrong_caller() {
    let s = Server::start().await;
    let (sam, sue) = (s.token("sam", "seller"), s.token("sue", "seller"));
    let (cat, cy) = (s.token("cat", "customer"), s.token("cy", "customer"));
    let admin = s.token("ada", "admin");
    let nobody = s.running.token("nobody", &[], 3600);

    let (st, p) = s
        .call(Method::POST, "/v1/products", &sam, Some(json!({"name": "Lamp", "category": "home", "price": 20, "currency": "EUR", "stock": 10})))
        .await;
    assert_eq!(st, 201, "{p}");
    let product = p["id"].as_str().unwrap().to_owned();
    let (st, o) = s
        .call(
            Method::POST,
            "/v1/orders",
            &cat,
            Some(json!({"items": [{"product_id": product, "quantity": 1}]})),
        )
        .await;
    assert_eq!(st, 201, "{o}");
    let order = o["id"].as_str().unwrap().to_owned();
    // Sam's bulk job, for the job-visibility checks.
    let (st, job) = s
        .call(
            Method::POST,
            "/v1/jobs",
            &sam,
            Some(
                json!({"kind": "reprice_category", "params": {"category": "home", "percent": 10}}),
            ),
        )
        .await;
    assert_eq!(st, 202, "{job}");
    let job = job["id"].as_str().unwrap().to_owned();
    // Let the job finish so its price change does not move the head during the checks.
    for _ in 0..100 {
        let (_, j) = s
            .call(Method::GET, &format!("/v1/jobs/{job}"), &sam, None)
            .await;
        if j["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = s.head().await;

    // Commands on someone else's things.
    let price = json!({"price": 25});
    for (method, path, token, body, status, code) in [
        (
            Method::PUT,
            format!("/v1/products/{product}/price"),
            &sue,
            Some(price.clone()),
            403,
            "not_product_owner",
        ),
        (
            Method::PUT,
            format!("/v1/products/{product}/price"),
            &cat,
            Some(price.clone()),
            403,
            "not_product_owner",
        ),
        (
            Method::PUT,
            format!("/v1/products/{product}/price"),
            &admin,
            Some(price.clone()),
            403,
            "not_product_owner",
        ),
        (
            Method::POST,
            format!("/v1/products/{product}/stock"),
            &sue,
            Some(json!({"warehouse": "main", "delta": -10})),
            403,
            "not_product_owner",
        ),
        (
            Method::DELETE,
            format!("/v1/products/{product}"),
            &sue,
            Some(json!({"reason": "spite"})),
            403,
            "not_product_owner",
        ),
        (
            Method::POST,
            "/v1/products".into(),
            &cat,
            Some(json!({"name": "X", "category": "c", "price": 1, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/products".into(),
            &nobody,
            Some(json!({"name": "X", "category": "c", "price": 1, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/orders".into(),
            &sam,
            Some(json!({"items": [{"product_id": product, "quantity": 1}]})),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            format!("/v1/orders/{order}/items"),
            &cy,
            Some(json!({"product_id": product, "quantity": 1})),
            403,
            "not_order_owner",
        ),
        (
            Method::POST,
            format!("/v1/orders/{order}/place"),
            &cy,
            None,
            403,
            "not_order_owner",
        ),
        (
            Method::POST,
            format!("/v1/orders/{order}/cancel"),
            &cy,
            None,
            403,
            "not_order_owner",
        ),
        (
            Method::POST,
            format!("/v1/orders/{order}/place"),
            &sam,
            None,
            403,
            "not_order_owner",
        ),
        (
            Method::GET,
            "/v1/customers/cat/orders".into(),
            &cy,
            None,
            403,
            "forbidden",
        ),
        (
            Method::GET,
            "/v1/customers/cat/orders".into(),
            &sam,
            None,
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/jobs".into(),
            &cat,
            Some(
                json!({"kind": "reprice_category", "params": {"category": "home", "percent": 10}}),
            ),
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/jobs".into(),
            &sam,
            Some(
                json!({"kind": "export_orders", "params": {"from": "2026-01-01", "to": "2026-01-02"}}),
            ),
            403,
            "forbidden",
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}"),
            &sue,
            None,
            404,
            "job_not_found",
        ),
        (
            Method::POST,
            format!("/v1/jobs/{job}/cancel"),
            &sue,
            None,
            404,
            "job_not_found",
        ),
    ] {
        let what = format!("{method} {path}");
        refused(
            s.call(method, &path, token, body).await,
            status,
            code,
            &what,
        );
    }
    // Only admin: raw streams, the global log, subscriptions, projections, queues, the
    // dead-letter queue and its redrive, job items, analytics.
    let admin_only: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/streams/product-{product}"), None),
        (
            Method::POST,
            "/v1/streams/anything".into(),
            Some(json!({"events": [{"type": "X", "data": {}}]})),
        ),
        (Method::GET, "/v1/all".into(), None),
        (Method::GET, "/v1/subscribe".into(), None),
        (Method::GET, "/v1/projections".into(), None),
        (Method::POST, "/v1/projections/catalog/rebuild".into(), None),
        (Method::GET, "/v1/queues".into(), None),
        (Method::GET, "/v1/queues/shop/dead".into(), None),
        (Method::DELETE, "/v1/queues/shop/dead".into(), None),
        (
            Method::POST,
            "/v1/queues/shop/dead/redrive".into(),
            Some(json!({})),
        ),
        (Method::GET, "/v1/jobs/items/1".into(), None),
        (
            Method::GET,
            "/v1/analytics/orders?from=2026-01-01&to=2026-01-31".into(),
            None,
        ),
    ];
    for (method, path, body) in &admin_only {
        for (who, token) in [("seller", &sam), ("customer", &cat), ("no role", &nobody)] {
            let what = format!("{method} {path} as {who}");
            refused(
                s.call(method.clone(), path, token, body.clone()).await,
                403,
                "forbidden",
                &what,
            );
        }
        let what = format!("{method} {path} without a token");
        refused(
            s.call(method.clone(), path, "", body.clone()).await,
            401,
            "unauthorized",
            &what,
        );
    }
    assert_eq!(s.head().await, before, "a refused call wrote something");

    // The owners and the admin do get through (so the refusals above are about the caller).
    assert_eq!(
        s.call(Method::GET, "/v1/customers/cat/orders", &cat, None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call(Method::GET, "/v1/customers/cat/orders", &admin, None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call(Method::GET, &format!("/v1/jobs/{job}"), &admin, None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.call(Method::GET, "/v1/queues/shop/dead", &admin, None)
            .await
            .0,
        200
    );
    let (st, body) = s
        .call(
            Method::PUT,
            &format!("/v1/products/{product}/price"),
            &sam,
            Some(price),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    eprintln!(
        "security: {} endpoint × caller refusals checked",
        18 + admin_only.len() * 4
    );
    s.running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_admin_shifts_gateway_routes() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    std::fs::write(
        &file,
        "[upstreams]\nlegacy = \"http://127.0.0.1:9\"\nnew = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"products\"\npath_prefix = \"/api/products\"\nlegacy = \"legacy\"\nnew_reads = \"new\"\nweight_new = 0\n",
    )
    .unwrap();
    let auth = Arc::new(Auth::new(SECRET));
    let gw = ficus_server::gateway::start(file, "127.0.0.1:0".parse().unwrap(), auth.clone())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/admin/routes/products", gw.addr);
    let shift = json!({"path_prefix": "/api/products", "legacy": "legacy", "new_reads": "new", "weight_new": 100});
    for (token, status) in [
        (app::mint(&auth, "sam", &["seller"], 600), 403),
        (app::mint(&auth, "cat", &["customer"], 600), 403),
        (app::mint(&Auth::new("wrong"), "ada", &["admin"], 600), 401),
        (app::mint(&auth, "ada", &["admin"], -10), 401),
    ] {
        let r = http
            .put(&url)
            .bearer_auth(&token)
            .json(&shift)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert!(r.json::<Value>().await.unwrap()["code"].is_string());
    }
    let r = http
        .get(&url)
        .bearer_auth(app::mint(&auth, "ada", &["admin"], 600))
        .send()
        .await
        .unwrap();
    let route: Value = r.json().await.unwrap();
    assert_eq!(
        route["weight_new"], 0,
        "a refused shift changed the route: {route}"
    );
    let r = http
        .put(&url)
        .bearer_auth(app::mint(&auth, "ada", &["admin"], 600))
        .json(&shift)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "the admin may shift: {}",
        r.text().await.unwrap()
    );
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_debug_logs() {
    // A secret unlike anything else in the logs, so a match cannot be a coincidence.
    let secret = format!("s3cr3t-{}", uuid::Uuid::now_v7().simple());
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("ficus.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .env("FICUS_AUTH_HS256_SECRET", &secret)
        .env("FICUS_LOG", "debug")
        .env("FICUS_LOG_FORMAT", "json")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let auth = Auth::new(secret.clone());
    let seller = app::mint(&auth, "sam", &["seller"], 600);
    let admin = app::mint(&auth, "ada", &["admin"], 600);
    let forged = app::mint(&Auth::new("not-the-secret"), "eve", &["admin"], 600);
    let expired = app::mint(&auth, "old", &["admin"], -60);
    // A workload that succeeds, fails, and is refused, with tokens in every place a careless
    // log line could pick them up: the Authorization header, a bad header, the query string.
    for i in 0..20 {
        let r = http
            .post(format!("{base}/v1/products"))
            .bearer_auth(&seller)
            .json(&json!({"name": format!("Lamp {i}"), "category": "home", "price": 20, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    for token in [&forged, &expired, &admin] {
        let _ = http
            .get(format!("{base}/v1/all"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let _ = http
            .get(format!("{base}/v1/products?q={token}"))
            .send()
            .await
            .unwrap();
        let _ = http
            .post(format!("{base}/v1/products"))
            .header("authorization", format!("Basic {token}"))
            .body("{not json")
            .send()
            .await
            .unwrap();
    }
    let _ = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&seller)
        .json(&json!({"kind": "reprice_category", "params": {"category": "home", "percent": 5}}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let mut logs = String::new();
    std::fs::File::open(&log_path)
        .unwrap()
        .read_to_string(&mut logs)
        .unwrap();
    let lines = logs.lines().count();
    assert!(
        lines > 20,
        "debug logging produced only {lines} lines:\n{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| serde_json::from_str::<Value>(l).is_ok()),
        "the logs are not JSON lines"
    );
    let mut needles = vec![("the HS256 secret", secret.clone())];
    for (name, t) in [
        ("seller token", &seller),
        ("admin token", &admin),
        ("forged token", &forged),
        ("expired token", &expired),
    ] {
        needles.push((name, t.clone()));
        // The signature alone is as good as the token to an attacker who can read payloads.
        needles.push((name, t.rsplit('.').next().unwrap().to_owned()));
    }
    for (name, needle) in &needles {
        if let Some(line) = logs.lines().find(|l| l.contains(needle.as_str())) {
            panic!("the {name} appears in the logs: {line}");
        }
    }
    eprintln!("security: {lines} debug log lines, no secret and no token in them");
}
