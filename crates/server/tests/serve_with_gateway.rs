//! `ficus serve` with the gateway embedded: one process serves the API and fronts it with
//! the strangler-fig façade, whose routes send reads to the process's own query side or to
//! the legacy system.

use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use ficus_server::app::{self, ServerConfig};
use serde_json::{json, Value};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_gateway_fronts_the_api() {
    let legacy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_url = format!("http://{}", legacy.local_addr().unwrap());
    let app = Router::new().fallback(get(|| async { Json(json!({"legacy": true})) }));
    tokio::spawn(async move { axum::serve(legacy, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let (api, gw) = (free_addr(), free_addr());
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            r#"
[upstreams]
legacy = "{legacy_url}"
query = "http://{api}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
new_reads = "query"
new_prefix = "/v1/products"
weight_new = 100
"#
        ),
    )
    .unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"), api);
    cfg.auth_secret = Some("embedded".into());
    cfg.gateway = Some((routes, gw));
    let running = app::start(cfg).await.unwrap();
    let http = reqwest::Client::new();
    let seller = running.token("sam", &["seller"], 600);
    let admin = running.token("ada", &["admin"], 600);
    let created: Value = http
        .post(format!("http://{api}/v1/products"))
        .bearer_auth(&seller)
        .json(&json!({"name": "Kettle", "category": "kitchen", "price": 12.5, "currency": "EUR"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let pos = created["position"].as_u64().unwrap();

    // Through the gateway: the old URL reaches the new query side.
    let r = http
        .get(format!("http://{gw}/api/products/{id}?min_position={pos}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ficus-target"], "new");
    let product: Value = r.json().await.unwrap();
    assert_eq!(product["name"], "Kettle");

    // Roll back to legacy through the embedded gateway's admin API.
    let mut route: Value = http
        .get(format!("http://{gw}/v1/admin/routes/products"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    route.as_object_mut().unwrap().remove("stats");
    route["weight_new"] = json!(0);
    let r = http
        .put(format!("http://{gw}/v1/admin/routes/products"))
        .bearer_auth(&admin)
        .json(&route)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .get(format!("http://{gw}/api/products/{id}"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["ficus-target"], "legacy");
    assert_eq!(r.json::<Value>().await.unwrap()["legacy"], true);

    running.stop().await.unwrap();
    assert!(
        http.get(format!("http://{gw}/health/live"))
            .send()
            .await
            .is_err(),
        "the gateway stops with the server"
    );
}
