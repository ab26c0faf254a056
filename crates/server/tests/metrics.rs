//! `GET /metrics` serves Prometheus text with the golden signals of every API route (by
//! route pattern, never by raw path) and the state of the event store, projections and
//! queues.

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
    running.stop().await.unwrap();
}
