//! The gateway's protections with real loopback upstreams: a failing upstream opens the
//! breaker (fail fast with 503 and Retry-After, or the route's static fallback) and it
//! recovers through half-open; a bulkhead refuses quickly when full and keeps a healthy
//! route fast; the rate limit answers 429 with exact RateLimit headers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use ficus_gateway::{Auth, Claims};
use serde_json::Value;

struct Upstream {
    url: String,
    calls: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

async fn upstream(delay: Duration) -> Upstream {
    let calls = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let (c, f) = (calls.clone(), failing.clone());
    let app = Router::new().fallback(get(move || {
        let (c, f) = (c.clone(), f.clone());
        async move {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            if f.load(Ordering::SeqCst) {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
            } else {
                (axum::http::StatusCode::OK, "ok")
            }
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        url,
        calls,
        failing,
    }
}

async fn gateway(
    toml: String,
) -> (
    tempfile::TempDir,
    ficus_server::gateway::RunningGateway,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(&routes, toml).unwrap();
    let auth = Arc::new(Auth::new("resilience-secret"));
    let admin = auth.mint(&Claims {
        sub: "ada".into(),
        roles: vec!["admin".into()],
        exp: None,
        nbf: None,
    });
    let gw = ficus_server::gateway::start(routes, "127.0.0.1:0".parse().unwrap(), auth)
        .await
        .unwrap();
    (dir, gw, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_and_recovers() {
    let up = upstream(Duration::ZERO).await;
    let (_dir, gw, admin) = gateway(format!(
        r#"
[upstreams]
legacy = "{}"

[[routes]]
name = "r"
path_prefix = "/"
legacy = "legacy"
breaker = {{ window = 10, min_calls = 4, failure_rate = 0.5, open_ms = 400, half_open_probes = 2 }}
"#,
        up.url
    ))
    .await;
    let http = reqwest::Client::new();
    up.failing.store(true, Ordering::SeqCst);
    for _ in 0..4 {
        let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    let calls = up.calls.load(Ordering::SeqCst);
    let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "circuit_open");
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        calls,
        "open: the upstream is not called"
    );

    // Healthy again; after open_ms the probes pass and the breaker closes.
    up.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    for _ in 0..3 {
        let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let v: Value = http
        .get(format!("{}/v1/admin/routes/r", gw.url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stats"]["breakers"]["legacy"]["state"], "closed", "{v}");
    assert_eq!(v["stats"]["breakers"]["legacy"]["times_opened"], 1);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_serves_the_fallback() {
    let up = upstream(Duration::ZERO).await;
    let (_dir, gw, _admin) = gateway(format!(
        r#"
[upstreams]
legacy = "{}"

[[routes]]
name = "r"
path_prefix = "/"
legacy = "legacy"
fallback = '{{"products": [], "degraded": true}}'
breaker = {{ window = 4, min_calls = 2, failure_rate = 1.0, open_ms = 60000 }}
"#,
        up.url
    ))
    .await;
    let http = reqwest::Client::new();
    up.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(
            http.get(format!("{}/x", gw.url()))
                .send()
                .await
                .unwrap()
                .status(),
            500
        );
    }
    let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ficus-fallback"], "static");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["degraded"], true);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_bulkhead_refuses_fast_and_spares_other_routes() {
    let slow = upstream(Duration::from_millis(400)).await;
    let fast = upstream(Duration::ZERO).await;
    let (_dir, gw, _admin) = gateway(format!(
        r#"
[upstreams]
slow = "{}"
fast = "{}"

[[routes]]
name = "slow"
path_prefix = "/slow"
legacy = "slow"
bulkhead = {{ max_concurrent = 2, max_wait_ms = 50 }}

[[routes]]
name = "fast"
path_prefix = "/fast"
legacy = "fast"
"#,
        slow.url, fast.url
    ))
    .await;
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (http, url) = (http.clone(), format!("{}/slow", gw.url()));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), t.elapsed())
        }));
    }
    // While the slow route is saturated, the fast one answers at once.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let r = http.get(format!("{}/fast", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "fast route took {:?}",
        t.elapsed()
    );
    let mut ok = 0;
    for task in tasks {
        let (status, took) = task.await.unwrap();
        match status {
            200 => ok += 1,
            503 => assert!(took < Duration::from_millis(300), "refusal took {took:?}"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 2, "exactly the bulkhead's size got through");
    assert_eq!(slow.calls.load(Ordering::SeqCst), 2);
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_answers_429_with_exact_headers() {
    let up = upstream(Duration::ZERO).await;
    let (_dir, gw, _admin) = gateway(format!(
        r#"
[upstreams]
legacy = "{}"

[[routes]]
name = "r"
path_prefix = "/"
legacy = "legacy"
rate_limit = {{ requests = 3, window_s = 60, key = "header:x-client" }}
"#,
        up.url
    ))
    .await;
    let http = reqwest::Client::new();
    let get = |client: &'static str| {
        http.get(format!("{}/x", gw.url()))
            .header("x-client", client)
            .send()
    };
    for left in [2, 1, 0] {
        let r = get("a").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-policy"], "\"default\";q=3;w=60");
        let state = r.headers()["ratelimit"].to_str().unwrap().to_owned();
        assert!(
            state.starts_with(&format!("\"default\";r={left};t=")),
            "{state}"
        );
    }
    let r = get("a").await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["retry-after"],
        "20",
        "one request refills in 60/3 s"
    );
    assert_eq!(r.headers()["ratelimit-policy"], "\"default\";q=3;w=60");
    assert_eq!(r.headers()["ratelimit"], "\"default\";r=0;t=60");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(
        get("b").await.unwrap().status(),
        200,
        "another key has its own quota"
    );
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        4,
        "refused requests never reach the upstream"
    );
    gw.stop().await.unwrap();
}

/// An upstream that answers 503 to its first `fail_first` calls, then 200 with the deadline
/// header it received.
async fn flaky(fail_first: u64, delay: Duration) -> Upstream {
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let app = Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let c = c.clone();
        async move {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(delay).await;
            let deadline = headers
                .get("ficus-deadline-ms")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if n <= fail_first {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, deadline)
            } else {
                (axum::http::StatusCode::OK, deadline)
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Upstream {
        url,
        calls,
        failing: Arc::new(AtomicBool::new(false)),
    }
}

fn retry_route(url: &str, retry: &str, timeout_ms: u64) -> String {
    format!(
        r#"
[upstreams]
legacy = "{url}"

[[routes]]
name = "r"
path_prefix = "/"
legacy = "legacy"
timeout_ms = {timeout_ms}
retry = {retry}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_and_others_are_not() {
    let up = flaky(2, Duration::ZERO).await;
    let (_dir, gw, admin) = gateway(retry_route(
        &up.url,
        "{ attempts = 3, base_ms = 1, max_ms = 5 }",
        5000,
    ))
    .await;
    let http = reqwest::Client::new();
    let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
    assert_eq!(r.status(), 200, "two 503s, then success");
    assert_eq!(up.calls.load(Ordering::SeqCst), 3);

    // A POST is not retried, unless it carries an Idempotency-Key.
    let up = flaky(1, Duration::ZERO).await;
    let (_d2, gw2, _) = gateway(retry_route(
        &up.url,
        "{ attempts = 3, base_ms = 1, max_ms = 5 }",
        5000,
    ))
    .await;
    let r = http
        .post(format!("{}/x", gw2.url()))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
    let r = http
        .post(format!("{}/x", gw2.url()))
        .header("idempotency-key", "k-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.calls.load(Ordering::SeqCst), 2);

    let v: Value = http
        .get(format!("{}/v1/admin/routes/r", gw.url()))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["stats"]["legacy"]["retries"], 2, "{v}");
    gw.stop().await.unwrap();
    gw2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_inside_their_budget() {
    // Always failing: without a budget 100 requests × 5 retries would be 600 calls.
    let up = flaky(u64::MAX, Duration::ZERO).await;
    let (_dir, gw, _) = gateway(retry_route(
        &up.url,
        "{ attempts = 5, base_ms = 0, max_ms = 1, budget_ratio = 0.1 }",
        5000,
    ))
    .await;
    let http = reqwest::Client::new();
    for _ in 0..100 {
        let r = http.get(format!("{}/x", gw.url())).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    let calls = up.calls.load(Ordering::SeqCst);
    // 100 first attempts + the reserve (10) + 10 % of 100.
    assert!(calls <= 100 + 10 + 10, "{calls} upstream calls");
    assert!(calls > 100, "some retries were spent");
    gw.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_budget_shrinks_downstream_and_is_enforced() {
    let up = flaky(0, Duration::ZERO).await;
    let (_dir, gw, _) = gateway(retry_route(&up.url, "{ attempts = 1 }", 200)).await;
    let http = reqwest::Client::new();
    // Without a caller budget, the route's timeout is the budget.
    let seen: u64 = http
        .get(format!("{}/x", gw.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen > 0 && seen <= 200, "upstream saw {seen} ms");
    // A smaller caller budget wins, and arrives smaller than it was sent.
    let seen: u64 = http
        .get(format!("{}/x", gw.url()))
        .header("ficus-deadline-ms", "80")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(seen > 0 && seen <= 80, "upstream saw {seen} ms");
    // A spent budget is refused at once.
    let r = http
        .get(format!("{}/x", gw.url()))
        .header("ficus-deadline-ms", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "deadline_exceeded");
    gw.stop().await.unwrap();

    // A slow upstream is cut off at the caller's budget, not the route's 5 s.
    let slow = flaky(0, Duration::from_secs(2)).await;
    let (_d2, gw2, _) = gateway(retry_route(&slow.url, "{ attempts = 1 }", 5000)).await;
    let t = Instant::now();
    let r = http
        .get(format!("{}/x", gw2.url()))
        .header("ficus-deadline-ms", "150")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        t.elapsed()
    );
    gw2.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_serves_the_last_good_answer() {
    let up = upstream(Duration::ZERO).await;
    let (_dir, gw, _admin) = gateway(format!(
        r#"
[upstreams]
legacy = "{}"

[[routes]]
name = "r"
path_prefix = "/"
legacy = "legacy"
fallback_last_good = true
fallback = '{{"degraded": true}}'
breaker = {{ window = 4, min_calls = 3, failure_rate = 0.6, open_ms = 60000 }}
"#,
        up.url
    ))
    .await;
    let http = reqwest::Client::new();
    // A good answer for /a is remembered.
    let r = http
        .get(format!("{}/a?x=1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(50)).await;
    up.failing.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        let r = http.get(format!("{}/b", gw.url())).send().await.unwrap();
        assert_eq!(r.status(), 500);
    }
    // Open: /a?x=1 gets its last good answer; /b never had one and gets the static fallback.
    let r = http
        .get(format!("{}/a?x=1", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ficus-fallback"], "last-good");
    assert!(r.headers().contains_key("age"));
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = http.get(format!("{}/b", gw.url())).send().await.unwrap();
    assert_eq!(r.headers()["ficus-fallback"], "static");
    gw.stop().await.unwrap();
}
