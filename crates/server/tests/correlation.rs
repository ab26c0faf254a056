//! One correlation id finds everything a request caused: the `ficus` binary returns it (and a
//! W3C `traceparent` of the same trace), stores both in the events' metadata (read back over
//! the streams API), logs them on the projection's lines applying those events and on the
//! worker's lines running the jobs the request enqueued; with `--otlp-endpoint` the spans
//! reach an OTLP/HTTP collector in the caller's trace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{cli_token, free_port, get_json, wait_ready};

const SECRET: &str = "correlation-secret";

struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let log = dir.join("ficus.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(dir.join("data"))
    .args(extra)
    .env("FICUS_AUTH_HS256_SECRET", SECRET)
    .env("FICUS_LOG_FORMAT", "json")
    // The per-event and per-job lines are debug; the rest of the server stays at info.
    .env("FICUS_LOG", "info,ficus_runtime=debug")
    .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Server {
        child: cmd.spawn().expect("spawn ficus serve"),
        base: format!("http://127.0.0.1:{port}"),
        log,
    }
}

fn log_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// Waits (at most 15 s) for a log line matching `pred`.
async fn wait_for_line(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(l) = log_lines(path).into_iter().find(&pred) {
            return l;
        }
        assert!(Instant::now() < deadline, "no log line {what} in:\n{}", {
            std::fs::read_to_string(path).unwrap_or_default()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn trace_of(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    (parts[1], parts[2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_correlation_id_finds_the_events_the_projection_and_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &server.base).await;
    let base = &server.base;
    let seller = cli_token(SECRET, "sam", "seller");
    let admin = cli_token(SECRET, "ada", "admin");
    let corr = "order-flow-7f3a";
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let caller_span = "b7ad6b7169203331";

    // A command: the answer names the id and a span of the caller's trace.
    let r = http
        .post(format!("{base}/v1/products"))
        .bearer_auth(&seller)
        .header("x-correlation-id", corr)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"name": "Kettle", "category": "kitchen", "price": 20, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-correlation-id"], corr);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_owned();
    let (t, server_span) = trace_of(&answered);
    assert_eq!(t, trace, "the answer continues the caller's trace");
    assert_ne!(server_span, caller_span, "the server's span is a child");
    let body: Value = r.json().await.unwrap();
    let product = body["id"].as_str().unwrap().to_owned();
    let position = body["position"].as_u64().unwrap();

    // Its events, read back over the streams API, carry both ids.
    let all = get_json(&http, &format!("{base}/v1/all?limit=100"), &admin).await;
    let mine: Vec<&Value> = all["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["metadata"]["correlation_id"] == corr)
        .collect();
    assert!(!mine.is_empty(), "{all}");
    let stream = mine[0]["stream"].as_str().unwrap();
    let read = get_json(&http, &format!("{base}/v1/streams/{stream}"), &admin).await;
    let meta = &read["events"][0]["metadata"];
    assert_eq!(meta["correlation_id"], corr, "{read}");
    assert_eq!(
        meta["traceparent"],
        answered.as_str(),
        "the stored context names the request's span"
    );

    // The projection applying it logs under the same ids.
    let r = http
        .get(format!(
            "{base}/v1/products/{product}?min_position={position}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let applied = wait_for_line(&server.log, "applying the event", |l| {
        l["message"] == "applied event"
            && l["correlation_id"] == corr
            && l["projection"] == "catalog"
    })
    .await;
    assert_eq!(applied["trace_id"], trace, "{applied}");
    assert_eq!(applied["span"], "apply_event");

    // A bulk job submitted under the same correlation id (another request, another trace):
    // each of its items runs in a span with the submitting request's ids.
    let job_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&seller)
        .header("x-correlation-id", corr)
        .header("traceparent", format!("00-{job_trace}-00f067aa0ba902b7-01"))
        .json(
            &json!({"kind": "reprice_category", "params": {"category": "kitchen", "percent": 10}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.unwrap();
    let job_id = job["id"].as_str().unwrap().to_owned();
    let done = wait_for_line(&server.log, "finishing a job item", |l| {
        l["message"] == "job done"
            && l["kind"] == "reprice_category.item"
            && l["correlation_id"] == corr
    })
    .await;
    assert_eq!(done["trace_id"], job_trace, "{done}");
    assert_eq!(done["span"], "job");
    // The fan-in job of the bulk job carries them too.
    wait_for_line(&server.log, "finishing the fan-in", |l| {
        l["message"] == "job done"
            && l["kind"] == "reprice_category.finish"
            && l["correlation_id"] == corr
            && l["trace_id"] == job_trace
    })
    .await;
    let status = get_json(&http, &format!("{base}/v1/jobs/{job_id}"), &seller).await;
    assert_eq!(status["done"], 1, "{status}");

    // Every line is one JSON object with the common fields.
    for l in log_lines(&server.log) {
        for field in ["timestamp", "level", "message", "service", "version"] {
            assert!(l.get(field).is_some(), "{field} missing in {l}");
        }
        assert_eq!(l["service"], "ficus");
    }
}

/// A stand-in OTLP/HTTP collector: keeps every request body it is sent.
async fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let bodies: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = bodies.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let keep = keep.clone();
        async move {
            keep.lock().unwrap().push(body.to_vec());
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_propagated_into_exported_spans() {
    let (otlp, bodies) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &["--otlp-endpoint", &otlp],
        // Export every 100 ms instead of every 5 s.
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    );
    let http = reqwest::Client::new();
    wait_ready(&http, &server.base).await;
    let seller = cli_token(SECRET, "sam", "seller");
    let trace = "5e2a0c39f1b0d4a7c3e19b8f6d2a4c10";
    let caller_span = "1f2e3d4c5b6a7988";
    let r = http
        .post(format!("{}/v1/products", server.base))
        .bearer_auth(&seller)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"name": "Pan", "category": "kitchen", "price": 30, "currency": "EUR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_owned();
    let (t, server_span) = trace_of(&answered);
    assert_eq!(t, trace);
    assert_ne!(server_span, caller_span);

    // The request span (child of the caller's) and the projection's span applying its event
    // (child of the request's) reach the collector, in the caller's trace.
    let (trace_b, server_b, caller_b) = (unhex(trace), unhex(server_span), unhex(caller_span));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = bodies.lock().unwrap().concat();
        let request_span = contains(&got, &server_b) && contains(&got, &caller_b);
        if contains(&got, &trace_b) && request_span && contains(&got, b"apply_event") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the collector never got the spans ({} bytes in {} requests)",
            got.len(),
            bodies.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_appends_store_the_requests_trace_context() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, &server.base).await;
    let base = &server.base;
    let admin = cli_token(SECRET, "ada", "admin");
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    // An append through the raw streams API: its event carries the request's ids.
    let r = http
        .post(format!("{base}/v1/streams/audit-1"))
        .bearer_auth(&admin)
        .header("x-correlation-id", "raw-append-1")
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"events": [{"type": "AuditNoted", "data": {"n": 1}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let answered = r.headers()["traceparent"].to_str().unwrap().to_owned();
    assert_eq!(trace_of(&answered).0, trace);
    // A client that sets a traceparent in the event's own metadata keeps it.
    let own = "00-11111111111111111111111111111111-2222222222222222-01";
    let r = http
        .post(format!("{base}/v1/streams/audit-1"))
        .bearer_auth(&admin)
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .json(&json!({"events": [{"type": "AuditNoted", "data": {"n": 2},
                                  "metadata": {"traceparent": own}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let read = get_json(&http, &format!("{base}/v1/streams/audit-1"), &admin).await;
    let events = read["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{read}");
    assert_eq!(events[0]["metadata"]["correlation_id"], "raw-append-1");
    assert_eq!(
        events[0]["metadata"]["traceparent"],
        answered.as_str(),
        "the stored context names the request's span: {read}"
    );
    assert_eq!(events[1]["metadata"]["traceparent"], own, "{read}");
}
