//! Shadow mode through the real gateway with real loopback upstreams: the legacy answer is
//! always served; the new side's answer is compared field by field, ignoring configured
//! fields; what differs between two legacy instances is noise and not a mismatch; a shadow
//! that hangs never slows the primary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::{Json, Router};
use ficus_gateway::{Auth, Claims};
use serde_json::{json, Value};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// An upstream answering product documents. `price_of_2` lets the new side disagree on one.
fn product_app(price_of_2: i64, hang: bool) -> Router {
    Router::new().route(
        "/products/{id}",
        get(move |Path(id): Path<i64>| async move {
            if hang {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            Json(json!({
                "id": id,
                "name": "Kettle",
                "price": if id == 2 { price_of_2 } else { 10 },
                "updated_at": ficus_store::now_ms(),
                "nonce": rand_nonce(),
            }))
        }),
    )
}

fn rand_nonce() -> String {
    format!(
        "{:x}",
        ficus_store::now_ms() as u128 * 2654435761 % 1_000_003 + rand_u64()
    )
}

fn rand_u64() -> u128 {
    uuid::Uuid::now_v7().as_u64_pair().1 as u128
}

struct Setup {
    _dir: tempfile::TempDir,
    gw: ficus_server::gateway::RunningGateway,
    admin: String,
}

async fn setup(new_hangs: bool, twin: bool, ignore: &[&str]) -> Setup {
    let legacy = serve(product_app(10, false)).await;
    let legacy2 = serve(product_app(10, false)).await;
    let new = serve(product_app(12, new_hangs)).await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    let ignore: Vec<String> = ignore.iter().map(|s| format!("{s:?}")).collect();
    let twin_line = if twin {
        "legacy_twin = \"legacy2\""
    } else {
        ""
    };
    std::fs::write(
        &routes,
        format!(
            r#"
[upstreams]
legacy = "{legacy}"
legacy2 = "{legacy2}"
new = "{new}"

[[routes]]
name = "products"
path_prefix = "/api/products"
legacy = "legacy"
legacy_prefix = "/products"
new_reads = "new"
new_prefix = "/products"
shadow = true
shadow_ignore = [{}]
{twin_line}
timeout_ms = 10000
"#,
            ignore.join(", ")
        ),
    )
    .unwrap();
    let auth = Arc::new(Auth::new("shadow-secret"));
    let admin = auth.mint(&Claims {
        sub: "ada".into(),
        roles: vec!["admin".into()],
        exp: None,
        nbf: None,
    });
    let gw = ficus_server::gateway::start(routes, "127.0.0.1:0".parse().unwrap(), auth)
        .await
        .unwrap();
    Setup {
        _dir: dir,
        gw,
        admin,
    }
}

async fn shadow_stats(s: &Setup, at_least: u64) -> Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = http
            .get(format!("{}/v1/admin/routes/products", s.gw.url()))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let shadow = v["stats"]["shadow"].clone();
        let seen = shadow["compared"].as_u64().unwrap() + shadow["errors"].as_u64().unwrap();
        if seen >= at_least || Instant::now() > deadline {
            return shadow;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatches_are_caught_and_ignored_fields_are_not() {
    let s = setup(false, false, &["updated_at", "nonce"]).await;
    let http = reqwest::Client::new();
    for id in [1, 1, 1, 2, 2] {
        let r = http
            .get(format!("{}/api/products/{id}", s.gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["ficus-target"], "legacy");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["price"], 10, "the legacy answer is the one served");
    }
    let shadow = shadow_stats(&s, 5).await;
    assert_eq!(shadow["compared"], 5, "{shadow}");
    assert_eq!(shadow["matched"], 3, "{shadow}");
    assert_eq!(shadow["mismatched"], 2, "{shadow}");
    let sample = &shadow["samples"][0];
    assert_eq!(sample["path"], "/api/products/2");
    assert_eq!(sample["differences"], json!(["$.price"]), "{sample}");
    s.gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_between_two_legacy_answers_is_subtracted() {
    // `nonce` differs on every answer; it is not ignored, but the twin shows it is noise.
    let with_twin = setup(false, true, &["updated_at"]).await;
    let without = setup(false, false, &["updated_at"]).await;
    let http = reqwest::Client::new();
    for s in [&with_twin, &without] {
        for _ in 0..4 {
            let r = http
                .get(format!("{}/api/products/1", s.gw.url()))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let a = shadow_stats(&with_twin, 4).await;
    assert_eq!(
        (a["matched"].as_u64(), a["mismatched"].as_u64()),
        (Some(4), Some(0)),
        "{a}"
    );
    assert_eq!(a["noise_suppressed"], 4, "{a}");
    let b = shadow_stats(&without, 4).await;
    assert_eq!(b["mismatched"], 4, "without a twin the nonce counts: {b}");
    with_twin.gw.stop().await.unwrap();
    without.gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_slows_the_primary() {
    let s = setup(true, false, &["updated_at", "nonce"]).await;
    let http = reqwest::Client::new();
    let start = Instant::now();
    for _ in 0..10 {
        let r = http
            .get(format!("{}/api/products/1", s.gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await.unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "10 primary answers took {:?} while the shadow hangs 5 s each",
        start.elapsed()
    );
    s.gw.stop().await.unwrap();
}
