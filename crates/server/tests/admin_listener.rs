//! `ficus serve --admin-listen` over real HTTP on both backends: the admin-only routes (raw
//! streams, projections and their rebuild, queues and the dead-letter redrive/purge, subject
//! keys, /v1/admin/*, the console) answer 404 `route_not_found` on the public address, exactly
//! like a route that does not exist, and work on the admin address, where token and role
//! checks still apply (401 without a token, 403 without the admin role); the public API is
//! not served on the admin address; health, readiness and metrics answer on both. The same
//! split for `ficus gateway --admin-listen` (the façade's admin API and console).

use std::time::Duration;

use ficus_server::app::{self, Running};
use reqwest::Method;
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;

/// Admin-only operations, with a body where they take one.
fn admin_calls() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (
            Method::POST,
            "/v1/streams/drill-admin",
            Some(json!({"events": [{"type": "Noted", "data": {}}]})),
        ),
        (Method::GET, "/v1/streams/drill-admin", None),
        (Method::GET, "/v1/all", None),
        (Method::GET, "/v1/projections", None),
        (
            Method::POST,
            "/v1/projections/catalog/rebuild",
            Some(json!({})),
        ),
        (
            Method::GET,
            "/v1/analytics/orders?from=2026-01-01&to=2026-01-02",
            None,
        ),
        (Method::GET, "/v1/queues", None),
        (Method::GET, "/v1/queues/shop/dead", None),
        (
            Method::POST,
            "/v1/queues/shop/dead/redrive",
            Some(json!({})),
        ),
        (Method::DELETE, "/v1/queues/shop/dead", None),
        (Method::DELETE, "/v1/subjects/someone/keys", None),
        (Method::GET, "/v1/admin/storage-fault", None),
        (Method::GET, "/console", None),
    ]
}

struct Srv {
    running: Running,
    http: reqwest::Client,
    admin: String,
    seller: String,
}

impl Srv {
    fn public(&self) -> String {
        self.running.url()
    }

    fn admin_url(&self) -> String {
        format!(
            "http://{}",
            self.running.admin_addr.expect("an admin address")
        )
    }

    async fn call(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

async fn admin_routes_only_on_the_admin_address(b: Backend) {
    let data = TestData::new(b);
    let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some(SECRET.into());
    cfg.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let running = app::start(cfg).await.expect("server starts");
    let srv = Srv {
        admin: running.token("admin-1", &["admin"], HOUR),
        seller: running.token("seller-1", &["seller"], HOUR),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap(),
        running,
    };
    assert_ne!(srv.public(), srv.admin_url());
    let (public, admin) = (srv.public(), srv.admin_url());

    // The public API works on the public address, and only there.
    let product = json!({"name": "Lamp", "category": "home", "price": 19.99, "currency": "EUR"});
    let (s, p) = srv
        .call(
            &public,
            Method::POST,
            "/v1/products",
            Some(&srv.seller),
            Some(product.clone()),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let (s, b) = srv
        .call(
            &admin,
            Method::POST,
            "/v1/products",
            Some(&srv.seller),
            Some(product),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("route_not_found")),
        "{b}"
    );
    let (s, _) = srv
        .call(&admin, Method::GET, "/v1/products", None, None)
        .await;
    assert_eq!(s, 404);

    // What the public side answers for a route that does not exist at all.
    let (s, missing) = srv
        .call(
            &public,
            Method::GET,
            "/v1/no-such-route",
            Some(&srv.admin),
            None,
        )
        .await;
    assert_eq!(s, 404);

    for (method, path, body) in admin_calls() {
        // Public address: indistinguishable from a missing route, even with an admin token.
        let (s, b) = srv
            .call(
                &public,
                method.clone(),
                path,
                Some(&srv.admin),
                body.clone(),
            )
            .await;
        assert_eq!(s, 404, "public {method} {path}: {b}");
        assert_eq!(b, missing, "public {method} {path}");
        // Admin address: the admin's call is served...
        let (s, b) = srv
            .call(&admin, method.clone(), path, Some(&srv.admin), body.clone())
            .await;
        let fault_control_off =
            path == "/v1/admin/storage-fault" && b["code"] == "fault_injection_disabled";
        assert!(
            (200..300).contains(&s) || fault_control_off,
            "admin {method} {path}: {s} {b}"
        );
        // ...and the checks stay: the console page is public HTML, every API call needs an
        // admin token.
        if path != "/console" {
            let (s, b) = srv
                .call(&admin, method.clone(), path, None, body.clone())
                .await;
            assert_eq!(
                (s, b["code"].as_str()),
                (401, Some("unauthorized")),
                "{method} {path}"
            );
            let (s, b) = srv
                .call(
                    &admin,
                    method.clone(),
                    path,
                    Some(&srv.seller),
                    body.clone(),
                )
                .await;
            assert_eq!(
                (s, b["code"].as_str()),
                (403, Some("forbidden")),
                "{method} {path}"
            );
        }
    }

    // The console's reads of jobs and sagas work on the admin address too (served: the
    // answer is about the job, not a missing route).
    for path in ["/v1/jobs/no-such-job", "/v1/sagas/no-such-saga"] {
        let (s, b) = srv
            .call(&admin, Method::GET, path, Some(&srv.admin), None)
            .await;
        assert_eq!(s, 404, "{path}: {b}");
        assert_ne!(b["code"], "route_not_found", "{path} is served: {b}");
    }

    // The admin side sees what the public side wrote.
    let id = p["id"].as_str().unwrap();
    let (s, b) = srv
        .call(
            &admin,
            Method::GET,
            &format!("/v1/streams/product-{id}"),
            Some(&srv.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["events"].as_array().unwrap().len(), 1);

    // Health, readiness and metrics answer on both addresses.
    for base in [&public, &admin] {
        for path in ["/health/live", "/health/ready"] {
            let (s, b) = srv.call(base, Method::GET, path, None, None).await;
            assert_eq!(s, 200, "{base}{path}: {b}");
        }
        let resp = srv
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{base}/metrics");
        assert!(resp.text().await.unwrap().contains("# TYPE"));
    }
    srv.running.stop().await.unwrap();
}

on_both_backends!(admin_routes_only_on_the_admin_address);

/// `ficus gateway --admin-listen`: the façade's admin API and console move to the admin
/// address (token checks kept), the proxying address answers them 404 and still proxies,
/// the admin address proxies nothing, and /health/live answers on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_admin_api_only_on_the_admin_address() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.toml");
    // Upstreams on a closed port: a proxied request is answered by the façade with 502/503.
    std::fs::write(
        &file,
        "[upstreams]\nlegacy = \"http://127.0.0.1:9\"\nnew = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"products\"\npath_prefix = \"/api/products\"\nlegacy = \"legacy\"\nnew_reads = \"new\"\nweight_new = 0\n",
    )
    .unwrap();
    let auth = Arc::new(ficus_gateway::Auth::new(SECRET));
    let gw = ficus_server::gateway::start_with(
        file,
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
        auth.clone(),
    )
    .await
    .unwrap();
    let public = gw.url();
    let admin = format!("http://{}", gw.admin_addr.expect("an admin address"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let ada = app::mint(&auth, "ada", &["admin"], 600);
    let sam = app::mint(&auth, "sam", &["seller"], 600);
    let get = |url: String, token: Option<String>| {
        let mut req = http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.unwrap();
            let s = r.status().as_u16();
            let b: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap_or(Value::Null);
            (s, b)
        }
    };
    for path in [
        "/v1/admin/routes",
        "/v1/admin/routes/products",
        "/v1/admin/metrics",
    ] {
        let (s, b) = get(format!("{public}{path}"), Some(ada.clone())).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (404, Some("route_not_found")),
            "public {path}: {b}"
        );
        let (s, b) = get(format!("{admin}{path}"), Some(ada.clone())).await;
        assert_eq!(s, 200, "admin {path}: {b}");
        let (s, _) = get(format!("{admin}{path}"), None).await;
        assert_eq!(s, 401, "admin {path} without a token");
        let (s, _) = get(format!("{admin}{path}"), Some(sam.clone())).await;
        assert_eq!(s, 403, "admin {path} as a seller");
    }
    let (s, _) = get(format!("{public}/console"), None).await;
    assert_eq!(s, 404);
    let (s, _) = get(format!("{admin}/console"), None).await;
    assert_eq!(s, 200);
    // The public side still proxies (to a dead upstream: a gateway error, not a 404); the
    // admin side proxies nothing.
    let (s, b) = get(format!("{public}/api/products/1"), None).await;
    assert!(s >= 500, "proxied: {s} {b}");
    let (s, b) = get(format!("{admin}/api/products/1"), None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("route_not_found")),
        "{b}"
    );
    for base in [&public, &admin] {
        let (s, _) = get(format!("{base}/health/live"), None).await;
        assert_eq!(s, 200, "{base}/health/live");
    }
    gw.stop().await.unwrap();
}
