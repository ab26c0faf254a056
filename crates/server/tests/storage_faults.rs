//! Storage faults over real HTTP on the embedded store (a server started with fault
//! injection): during disk full, short writes and fsync errors writes answer 503 with
//! `storage_unavailable` (or `storage_outcome_unknown` for the write whose fsync failed) and
//! `Retry-After`, reads answer 200, `/health/ready` is 503 naming the storage fault; after the
//! fault is cleared writes succeed without a restart; after a restart every acknowledged write
//! is in the log and no refused one is. The control endpoint is admin only and absent (404)
//! without `--fault-injection`.

use std::path::Path;
use std::time::{Duration, Instant};

use ficus_server::app::{self, Running, StoreConfig};
use ficus_store::sqlite::{FaultPlan, SqliteConfig};
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;
const STREAM: &str = "drill-storage";

struct Srv {
    running: Running,
    http: reqwest::Client,
    admin: String,
    seller: String,
}

impl Srv {
    async fn start(dir: &Path, fault_injection: bool) -> Srv {
        let mut cfg = app::ServerConfig::new(dir, "127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        cfg.store = StoreConfig::Embedded(SqliteConfig {
            faults: fault_injection.then(FaultPlan::new),
            ..SqliteConfig::default()
        });
        let running = app::start(cfg).await.expect("server starts");
        Srv {
            admin: running.token("admin-1", &["admin"], HOUR),
            seller: running.token("seller-1", &["seller"], HOUR),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            running,
        }
    }

    /// Status, body and `Retry-After` of one call.
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value, Option<String>) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, body, retry_after)
    }

    async fn append(&self, tag: &str) -> (u16, Value, Option<String>) {
        let body = json!({"events": [{"type": "Noted", "data": {"tag": tag}}]});
        self.call(
            Method::POST,
            &format!("/v1/streams/{STREAM}"),
            Some(&self.admin),
            Some(body),
        )
        .await
    }

    async fn set_fault(&self, body: Value) -> (u16, Value) {
        let (s, b, _) = self
            .call(
                Method::PUT,
                "/v1/admin/storage-fault",
                Some(&self.admin),
                Some(body),
            )
            .await;
        (s, b)
    }

    async fn clear_fault(&self) {
        let (s, b, _) = self
            .call(
                Method::DELETE,
                "/v1/admin/storage-fault",
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!((s, &b["fault"]), (200, &Value::Null), "{b}");
    }

    async fn ready(&self) -> (u16, Value) {
        let (s, b, _) = self.call(Method::GET, "/health/ready", None, None).await;
        (s, b)
    }

    /// Waits until readiness says 200 (the probe write clears the fault).
    async fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, b) = self.ready().await;
            if s == 200 {
                assert_eq!(b["checks"]["storage"]["ok"], true, "{b}");
                return b;
            }
            assert!(Instant::now() < deadline, "never ready again: {b}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tags of every `Noted` event of the drill stream, in log order.
    async fn logged_tags(&self) -> Vec<String> {
        let (s, b, _) = self
            .call(
                Method::GET,
                "/v1/all?from_position=1&limit=1000",
                Some(&self.admin),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["stream"] == STREAM)
            .map(|e| e["data"]["tag"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn product() -> Value {
    json!({"name": "Lamp", "category": "home", "price": 19.99, "currency": "EUR", "stock": 5})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_with_503_reads_served_ready_reports_then_recovery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Srv::start(dir.path(), true).await;
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();

    let (s, p, _) = srv
        .call(
            Method::POST,
            "/v1/products",
            Some(&srv.seller),
            Some(product()),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let product_id = p["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let tag = format!("ack-{i}");
        assert_eq!(srv.append(&tag).await.0, 201);
        acked.push(tag);
    }

    // The control is admin only and validates its input.
    let (s, b, _) = srv
        .call(
            Method::GET,
            "/v1/admin/storage-fault",
            Some(&srv.seller),
            None,
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")));
    let (s, b, _) = srv
        .call(
            Method::GET,
            "/v1/admin/storage-fault",
            Some(&srv.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["fault"], Value::Null);
    for bad in [
        json!({"fault": "meteor"}),
        json!({"fault": "slow_disk"}),
        json!({"fault": "disk_full", "delay_ms": 5}),
        json!({"fault": "slow_disk", "delay_ms": 999_999}),
    ] {
        let (s, b) = srv.set_fault(bad.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_field")),
            "{bad}"
        );
    }
    assert_eq!(srv.ready().await.0, 200);

    for fault in ["disk_full", "short_write"] {
        let (s, b) = srv.set_fault(json!({"fault": fault})).await;
        assert_eq!((s, b["fault"].as_str()), (200, Some(fault)), "{b}");
        for i in 0..2 {
            let tag = format!("refused-{fault}-{i}");
            let (s, b, retry) = srv.append(&tag).await;
            assert_eq!(s, 503, "{fault}: {b}");
            assert_eq!(b["code"], "storage_unavailable", "{b}");
            assert!(b["message"].as_str().is_some_and(|m| !m.is_empty()));
            assert!(retry.is_some(), "503 carries Retry-After");
            refused.push(tag);
        }
        let (s, b, _) = srv
            .call(
                Method::POST,
                "/v1/products",
                Some(&srv.seller),
                Some(product()),
            )
            .await;
        assert_eq!(
            (s, b["code"].as_str()),
            (503, Some("storage_unavailable")),
            "{b}"
        );
        // Reads keep working: the read model and the log.
        let (s, b, _) = srv
            .call(
                Method::GET,
                &format!("/v1/products/{product_id}"),
                None,
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let (s, b, _) = srv
            .call(
                Method::GET,
                &format!("/v1/streams/{STREAM}"),
                Some(&srv.admin),
                None,
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["events"].as_array().unwrap().len(), acked.len());
        // Not ready, and the reason names the storage.
        let (s, b) = srv.ready().await;
        assert_eq!(s, 503, "{b}");
        assert_eq!(b["status"], "not_ready");
        let storage = &b["checks"]["storage"];
        assert_eq!(storage["ok"], false, "{b}");
        assert!(
            storage["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{b}"
        );
        assert_eq!(storage["injected_fault"], fault);

        srv.clear_fault().await;
        srv.wait_ready().await;
        let tag = format!("ack-after-{fault}");
        let (s, b, _) = srv.append(&tag).await;
        assert_eq!(s, 201, "{b}");
        acked.push(tag);
    }

    // A failed fsync: the write it covered is committed but not acknowledged.
    let (s, _) = srv.set_fault(json!({"fault": "fsync_error"})).await;
    assert_eq!(s, 200);
    // The first write after the fault is committed but its fsync fails: outcome unknown. A
    // background write (a worker's lease) may take that place, so this one may already be a
    // plain refusal; either way it is never acknowledged.
    let (s, b, retry) = srv.append("first-after-fsync-fault").await;
    assert_eq!(s, 503, "{b}");
    assert!(retry.is_some());
    match b["code"].as_str() {
        Some("storage_outcome_unknown") => unknown.push("first-after-fsync-fault".into()),
        Some("storage_unavailable") => refused.push("first-after-fsync-fault".into()),
        other => panic!("unexpected code {other:?}: {b}"),
    }
    for i in 0..2 {
        let tag = format!("refused-fsync-{i}");
        let (s, b, _) = srv.append(&tag).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (503, Some("storage_unavailable")),
            "{b}"
        );
        refused.push(tag);
    }
    let (s, b) = srv.ready().await;
    assert_eq!(s, 503, "{b}");
    assert!(
        b["checks"]["storage"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("fsync")),
        "{b}"
    );
    let (s, b, _) = srv
        .call(
            Method::GET,
            &format!("/v1/products/{product_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    srv.clear_fault().await;
    srv.wait_ready().await;
    let (s, b, _) = srv.append("ack-after-fsync").await;
    assert_eq!(s, 201, "{b}");
    acked.push("ack-after-fsync".into());

    // A slow disk is slow, not a fault.
    let (s, _) = srv
        .set_fault(json!({"fault": "slow_disk", "delay_ms": 30}))
        .await;
    assert_eq!(s, 200);
    let (s, b, _) = srv.append("ack-slow").await;
    assert_eq!(s, 201, "{b}");
    acked.push("ack-slow".into());
    let (s, b, _) = srv
        .call(
            Method::GET,
            "/v1/admin/storage-fault",
            Some(&srv.admin),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(b["injected"].as_u64().unwrap() > 0, "{b}");
    srv.clear_fault().await;

    // Before the restart, the recovered write is visible in its place in the log.
    let before = srv.logged_tags().await;
    srv.running.stop().await.unwrap();

    let srv = Srv::start(dir.path(), false).await;
    let tags = srv.logged_tags().await;
    assert_eq!(tags, before, "the log survives the restart unchanged");
    for t in &acked {
        assert!(tags.contains(t), "acknowledged {t} is in the log: {tags:?}");
    }
    for t in &refused {
        assert!(!tags.contains(t), "refused {t} is not in the log: {tags:?}");
    }
    // A write whose fsync failed was recovered in place, so it is there too.
    for t in &unknown {
        assert!(tags.contains(t), "{t} recovered: {tags:?}");
    }
    assert_eq!(tags.len(), acked.len() + unknown.len());
    let (s, b, _) = srv
        .call(
            Method::GET,
            &format!("/v1/products/{product_id}"),
            None,
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // A normal deployment has no fault control at all.
    let (s, b, _) = srv
        .call(
            Method::PUT,
            "/v1/admin/storage-fault",
            Some(&srv.admin),
            Some(json!({"fault": "disk_full"})),
        )
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (404, Some("fault_injection_disabled")),
        "{b}"
    );
    let (s, b) = srv.ready().await;
    assert_eq!(s, 200, "{b}");
    srv.running.stop().await.unwrap();
}
