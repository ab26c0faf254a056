//! `GET /metrics` serves Prometheus text with the golden signals of every API route (by
//! route pattern, never by raw path) and the state of the event store, projections and
//! queues; under load every family moves (traffic, errors, latency buckets, in-flight, SSE
//! slots, append throughput and batch sizes, projection positions, queue depth/in-flight/
//! dead/oldest wait), and so do the façade's on its admin endpoint (shadow mismatches,
//! rate-limit, breaker and bulkhead refusals, breaker state, bulkhead occupancy); the example
//! alert rules in docs/alerts.yml parse and name only families served here.

use ficus_server::app::{self, ServerConfig};
use ficus_store::{Failure, NewJob};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_traffic_errors_latency_and_backlogs() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some("metrics".into());
    let running = app::start(cfg).await.unwrap();
    let base = running.url();
    let http = reqwest::Client::new();
    let seller = running.token("sam", &["seller"], 600);
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&seller)
        .json(&json!({"name": "Kettle", "category": "kitchen", "price": 9.5, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for id in ["nope-1", "nope-2", "nope-3"] {
        let r = http
            .get(format!("{base}/v1/products/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
    }
    // One dead job in a queue.
    let jobs = &running.state.jobs;
    jobs.enqueue(vec![NewJob::new("metrics-q", "k", json!({}))], 0)
        .await
        .unwrap();
    let leased = jobs.lease("metrics-q", 1, 0, 1000).await.unwrap();
    jobs.fail(leased[0].lease.unwrap(), "boom", Failure::Dead, 0)
        .await
        .unwrap();

    let r = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(
        has(r#"ficus_http_requests_total{route="/v1/products/{id}",method="GET",status="404"} 3"#),
        "{text}"
    );
    assert!(has(
        r#"ficus_http_requests_total{route="/v1/products",method="POST",status="201"} 1"#
    ));
    assert!(!text.contains("nope-1"), "raw ids never become labels");
    assert!(has(
        r#"ficus_http_request_duration_seconds_count{route="/v1/products/{id}",method="GET"} 3"#
    ));
    assert!(text.contains(
        r#"ficus_http_request_duration_seconds_bucket{route="/v1/products/{id}",method="GET",le="+Inf"} 3"#
    ));
    assert!(has("ficus_event_store_head_position 1"), "{text}");
    assert!(text.contains(r#"ficus_projection_lag_events{projection="catalog"}"#));
    assert!(has(r#"ficus_queue_dead{queue="metrics-q"} 1"#), "{text}");
    // The process's own memory and descriptors (this test process is the server), and
    // SQLite's memory against its bound (none set in-process).
    let rss = sample(&text, "process_resident_memory_bytes", &[]);
    assert!(rss > f64::from(1u32 << 20), "{rss}");
    assert!(sample(&text, "process_open_fds", &[]) >= 3.0, "{text}");
    let sqlite = sample(&text, "ficus_sqlite_memory_bytes", &[]);
    assert!(sqlite > 0.0 && sqlite < rss, "{sqlite} of {rss}");
    assert!(sample(&text, "ficus_sqlite_memory_highwater_bytes", &[]) >= sqlite);
    assert!(has("ficus_sqlite_memory_limit_bytes 0"), "{text}");
    running.stop().await.unwrap();
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

fn has_family(text: &str, name: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("# TYPE {name} ")))
}

async fn scrape(http: &reqwest::Client, url: &str, token: Option<&str>) -> String {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.text().await.unwrap()
}

/// A legacy system with a failing path, a slow path and plain JSON; and a "new" side that
/// answers every read differently (so every shadow comparison is a mismatch).
async fn upstreams() -> (String, String) {
    use axum::extract::Request;
    let legacy = axum::Router::new().fallback(|req: Request| async move {
        let path = req.uri().path().to_owned();
        if path.starts_with("/fail") {
            return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
        }
        if path.starts_with("/slow") {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        axum::Json(json!({"side": "legacy"})).into_response()
    });
    let new = axum::Router::new().fallback(|| async { axum::Json(json!({"side": "new"})) });
    let mut urls = Vec::new();
    for app in [legacy, new] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", l.local_addr().unwrap()));
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    }
    (urls.remove(0), urls.remove(0))
}

use axum::response::IntoResponse as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_moves_under_load() {
    let (legacy, new) = upstreams().await;
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.toml");
    std::fs::write(
        &routes,
        format!(
            r#"
[upstreams]
legacy = "{legacy}"
new = "{new}"

[[routes]]
name = "shadowed"
path_prefix = "/s"
legacy = "legacy"
new_reads = "new"
shadow = true

[[routes]]
name = "limited"
path_prefix = "/limited"
legacy = "legacy"
rate_limit = {{ requests = 2, window_s = 60 }}

[[routes]]
name = "fragile"
path_prefix = "/fail"
legacy = "legacy"
breaker = {{ window = 4, min_calls = 2, failure_rate = 0.5, open_ms = 60000 }}

[[routes]]
name = "narrow"
path_prefix = "/slow"
legacy = "legacy"
bulkhead = {{ max_concurrent = 1, max_wait_ms = 10 }}
"#
        ),
    )
    .unwrap();
    let gw_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some("metrics-load".into());
    cfg.gateway = Some((routes, gw_addr));
    // A query waiting for a position that never comes gives up (503) after this long.
    cfg.api.read_your_writes_timeout = std::time::Duration::from_millis(400);
    let running = app::start(cfg).await.unwrap();
    let base = running.url();
    let gw = format!("http://{gw_addr}");
    let http = reqwest::Client::new();
    let seller = running.token("sam", &["seller"], 600);
    let admin = running.token("ada", &["admin"], 600);
    let before = scrape(&http, &format!("{base}/metrics"), None).await;
    let gw_before = scrape(&http, &format!("{gw}/v1/admin/metrics"), Some(&admin)).await;

    // Appends: 24 commands at once, which the writer groups into batches.
    let creates = (0..24).map(|i| {
        http.post(format!("{base}/v1/products"))
            .bearer_auth(&seller)
            .json(&json!({"name": format!("Item {i}"), "category": "load", "price": 5, "currency": "EUR"}))
            .send()
    });
    let (mut product, mut head) = (String::new(), 0);
    for r in futures::future::join_all(creates).await {
        let r = r.unwrap();
        assert_eq!(r.status(), 201);
        let body: serde_json::Value = r.json().await.unwrap();
        product = body["id"].as_str().unwrap().to_owned();
        head = head.max(body["position"].as_u64().unwrap());
    }
    // Job throughput: a bulk job of 24 items runs through the worker pool.
    let r = http
        .get(format!(
            "{base}/v1/products?category=load&limit=1&min_position={head}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&seller)
        .json(&json!({"kind": "reprice_category", "params": {"category": "load", "percent": 10}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let bulk: serde_json::Value = r.json().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let b: serde_json::Value = http
            .get(format!("{base}/v1/jobs/{}", bulk["id"].as_str().unwrap()))
            .bearer_auth(&seller)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if b["state"] != "running" {
            assert_eq!(b["done"], 24, "{b}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "bulk job stuck: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Saturation: a query waiting for a far position is in flight while we scrape, then
    // fails with a 5xx; a live SSE subscriber holds a slot.
    let waiting = tokio::spawn(
        http.get(format!("{base}/v1/products/{product}?min_position=1000000"))
            .send(),
    );
    let sse = http
        .get(format!("{base}/v1/subscribe"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    // Queues: ready, in flight, dead, and an oldest wait.
    let jobs = &running.state.jobs;
    let batch: Vec<NewJob> = (0..5)
        .map(|i| NewJob::new("load-q", "k", json!({ "n": i })))
        .collect();
    jobs.enqueue(batch, ficus_store::now_ms()).await.unwrap();
    let leased = jobs
        .lease("load-q", 2, ficus_store::now_ms(), 60_000)
        .await
        .unwrap();
    jobs.fail(
        leased[0].lease.unwrap(),
        "boom",
        Failure::Dead,
        ficus_store::now_ms(),
    )
    .await
    .unwrap();
    // The façade: shadow mismatches, rate-limit refusals, a breaker that opens, a bulkhead
    // that is full.
    for _ in 0..3 {
        assert_eq!(
            http.get(format!("{gw}/s/x")).send().await.unwrap().status(),
            200
        );
    }
    let mut limited = Vec::new();
    for _ in 0..4 {
        limited.push(
            http.get(format!("{gw}/limited"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(limited, [200, 200, 429, 429]);
    for _ in 0..4 {
        http.get(format!("{gw}/fail")).send().await.unwrap();
    }
    let slow = tokio::spawn(http.get(format!("{gw}/slow")).send());
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;

    let during = scrape(&http, &format!("{base}/metrics"), None).await;
    let gw_during = scrape(&http, &format!("{gw}/v1/admin/metrics"), Some(&admin)).await;
    let refused = http.get(format!("{gw}/slow")).send().await.unwrap();
    assert_eq!(refused.status(), 503, "the bulkhead is full");
    assert_eq!(slow.await.unwrap().unwrap().status(), 200);
    assert_eq!(waiting.await.unwrap().unwrap().status(), 503);
    drop(sse);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let after = scrape(&http, &format!("{base}/metrics"), None).await;
    let gw_after = scrape(&http, &format!("{gw}/v1/admin/metrics"), Some(&admin)).await;

    let grew = |name: &str, labels: &[&str], by: f64| {
        let (a, b) = (sample(&before, name, labels), sample(&after, name, labels));
        assert!(b - a >= by, "{name}{labels:?}: {a} -> {b}\n{after}");
    };
    // Golden signals per route: traffic, errors, latency (real buckets), saturation.
    grew(
        "ficus_http_requests_total",
        &[r#"route="/v1/products""#, r#"status="201""#],
        24.0,
    );
    grew(
        "ficus_http_errors_total",
        &[r#"route="/v1/products/{id}""#],
        1.0,
    );
    grew(
        "ficus_http_request_duration_seconds_count",
        &[r#"route="/v1/products""#],
        24.0,
    );
    grew(
        "ficus_http_request_duration_seconds_bucket",
        &[r#"route="/v1/products""#, r#"le="5""#],
        24.0,
    );
    assert_eq!(
        sample(
            &during,
            "ficus_http_requests_in_flight",
            &[r#"route="/v1/products/{id}""#]
        ),
        1.0,
        "{during}"
    );
    assert_eq!(
        sample(
            &after,
            "ficus_http_requests_in_flight",
            &[r#"route="/v1/products/{id}""#]
        ),
        0.0
    );
    assert_eq!(sample(&during, "ficus_sse_subscribers", &[]), 1.0);
    assert_eq!(sample(&after, "ficus_sse_subscribers", &[]), 0.0);
    // Append throughput and batch sizes.
    grew("ficus_appended_events_total", &[], 24.0);
    grew("ficus_append_batches_total", &[], 1.0);
    grew("ficus_append_batch_events_count", &[], 1.0);
    let batches = sample(&after, "ficus_append_batches_total", &[]);
    assert_eq!(
        sample(
            &after,
            "ficus_append_batch_events_bucket",
            &[r#"le="+Inf""#]
        ),
        batches
    );
    // Job throughput: 24 items and 5 direct jobs enqueued (the fan-in is enqueued by the store
    // itself when the batch ends), the items completed, one dead.
    grew("ficus_jobs_enqueued_total", &[], 29.0);
    grew("ficus_jobs_completed_total", &[], 24.0);
    grew("ficus_jobs_dead_total", &[], 1.0);
    assert!(has_family(&after, "ficus_jobs_retried_total"));
    // Projection position moves; lag is reported in events and ms.
    grew(
        "ficus_projection_checkpoint",
        &[r#"projection="catalog""#],
        24.0,
    );
    assert!(has_family(&after, "ficus_projection_lag_events"));
    assert!(has_family(&after, "ficus_projection_lag_ms"));
    // Queue depth, in flight, dead, oldest wait.
    assert_eq!(
        sample(&after, "ficus_queue_ready", &[r#"queue="load-q""#]),
        3.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "ficus_queue_in_flight", &[r#"queue="load-q""#]),
        1.0
    );
    assert_eq!(
        sample(&after, "ficus_queue_dead", &[r#"queue="load-q""#]),
        1.0
    );
    assert!(
        sample(
            &after,
            "ficus_queue_oldest_ready_wait_ms",
            &[r#"queue="load-q""#]
        ) >= 1000.0
    );

    // The façade's families, on its admin endpoint.
    let gw_grew = |name: &str, labels: &[&str], by: f64| {
        let (a, b) = (
            sample(&gw_before, name, labels),
            sample(&gw_after, name, labels),
        );
        assert!(b - a >= by, "{name}{labels:?}: {a} -> {b}\n{gw_after}");
    };
    gw_grew(
        "ficus_gateway_shadow_mismatched_total",
        &[r#"route="shadowed""#],
        3.0,
    );
    gw_grew(
        "ficus_gateway_refusals_total",
        &[r#"route="limited""#, r#"reason="rate_limited""#],
        2.0,
    );
    gw_grew(
        "ficus_gateway_refusals_total",
        &[r#"route="fragile""#, r#"reason="circuit_open""#],
        1.0,
    );
    gw_grew(
        "ficus_gateway_refusals_total",
        &[r#"route="narrow""#, r#"reason="bulkhead_full""#],
        1.0,
    );
    gw_grew("ficus_gateway_errors_total", &[r#"route="fragile""#], 2.0);
    assert_eq!(
        sample(
            &gw_before,
            "ficus_gateway_breaker_open",
            &[r#"route="fragile""#]
        ),
        0.0
    );
    assert_eq!(
        sample(
            &gw_after,
            "ficus_gateway_breaker_open",
            &[r#"route="fragile""#]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &gw_during,
            "ficus_gateway_bulkhead_in_use",
            &[r#"route="narrow""#]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &gw_after,
            "ficus_gateway_bulkhead_in_use",
            &[r#"route="narrow""#]
        ),
        0.0
    );

    // The example alert rules parse as YAML, and every metric they name is served.
    let served = format!("{after}{gw_after}");
    for (alert, expr) in alert_rules() {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("ficus_"));
        for name in names {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| has_family(&served, f))
                .unwrap_or(name);
            assert!(
                has_family(&served, family),
                "{alert} names {name}, not served"
            );
        }
    }
    running.stop().await.unwrap();
}

/// (alert, expr) of every rule in docs/alerts.yml, parsed by a real YAML parser (PyYAML).
fn alert_rules() -> Vec<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/alerts.yml");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             doc = yaml.safe_load(open(sys.argv[1]))\n\
             print(json.dumps([[r['alert'], r['expr']] for g in doc['groups'] for r in g['rules']]))",
            path,
        ])
        .output()
        .expect("python3 (with PyYAML) checks docs/alerts.yml");
    assert!(
        out.status.success(),
        "docs/alerts.yml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(rules.len() >= 4, "{rules:?}");
    rules
}
