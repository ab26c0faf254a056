//! The claim check end to end over HTTP on loopback, on both backends: a 50 MiB job result is
//! written once into the blob store and fetched by reference (bytes, length and hash
//! checked), a large job parameter travels by reference and reaches the worker resolved,
//! only the job's submitter or an admin may fetch its blobs, and the garbage collector keeps
//! young and referenced blobs and removes unreferenced old ones.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Backend, TestData};
use ficus_runtime::claim_check::ClaimCheckHandler;
use ficus_runtime::{JobError, JobHandler};
use ficus_server::app::{self, Running};
use ficus_store::blobs::{put_bytes, reference_of, REF_BATCH_PARAMS};
use ficus_store::{Job, NewBatch, NewJob};
use futures::StreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;

struct Srv {
    running: Running,
    http: reqwest::Client,
    admin: String,
    _data: TestData,
}

impl Srv {
    async fn start(b: Backend) -> Srv {
        Self::start_with(b, |_| {}).await
    }

    async fn start_with(b: Backend, configure: impl FnOnce(&mut app::ServerConfig)) -> Srv {
        let data = TestData::new(b);
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        configure(&mut cfg);
        let running = app::start(cfg).await.expect("server starts");
        let admin = running.token("admin-1", &["admin"], 3600);
        Srv {
            running,
            http: reqwest::Client::new(),
            admin,
            _data: data,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.running.url())
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    async fn get_json(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    /// The job once its final step recorded a result (at most 120 s).
    async fn wait_result(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, job) = self.get_json(&format!("/v1/jobs/{id}"), &self.admin).await;
            assert_eq!(status, 200, "{job}");
            if !job["result"].is_null() {
                return job;
            }
            assert!(Instant::now() < deadline, "no result in time: {job}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.running.stop().await.expect("clean stop");
    }
}

/// What a `sample_report` of `size` bytes holds, written independently of the server's code:
/// the preface, then 16-byte numbered lines, cut at `size`.
fn expected_report(preface: &str, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize + 16);
    out.extend_from_slice(preface.as_bytes());
    let mut k = 0u64;
    while (out.len() as u64) < size {
        let mut line = [b'0'; 16];
        line[15] = b'\n';
        let mut n = k;
        for d in (0..15).rev() {
            line[d] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.extend_from_slice(&line);
        k += 1;
    }
    out.truncate(size as usize);
    out
}

/// A preface over the default claim-check size (256 KiB), under the body limit (1 MiB).
fn big_preface() -> String {
    (0..20_000).map(|i| format!("preface {i:07}\n")).collect()
}

/// Files in the blob directory of exactly `size` bytes.
fn stored_blobs_of_size(s: &Srv, size: u64) -> usize {
    let root = s._data.dir.path().join("blobs").join("sha256");
    let mut n = 0;
    for shard in std::fs::read_dir(root).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if f.metadata().unwrap().len() == size {
                n += 1;
            }
        }
    }
    n
}

async fn a_50_mib_result_is_stored_once_and_fetched_by_reference(b: Backend) {
    let s = Srv::start(b).await;
    fifty_mib_round_trip(&s, b == Backend::Sqlite).await;
    s.stop().await;
}

/// Environment variable naming an S3-compatible endpoint for tests (e.g. `moto_server`).
const TEST_S3_URL_ENV: &str = "FICUS_TEST_S3_URL";

/// The same round trip with the blobs in an S3-compatible store (skipped without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_result_through_an_s3_blob_store() {
    let Some(endpoint) = std::env::var(TEST_S3_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!("skipped: {TEST_S3_URL_ENV} is not set");
        return;
    };
    let target = ficus_server::blobs::S3Target {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        bucket: format!("ficus-http-{}", uuid::Uuid::now_v7().simple()),
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        prefix: "t/".into(),
    };
    let spool = tempfile::tempdir().unwrap();
    ficus_store::blobs::S3BlobStore::new(ficus_store::blobs::S3Config {
        endpoint: target.endpoint.clone(),
        bucket: target.bucket.clone(),
        region: target.region.clone(),
        access_key_id: target.access_key_id.clone(),
        secret_access_key: target.secret_access_key.clone(),
        prefix: target.prefix.clone(),
        spool_dir: spool.path().to_path_buf(),
        max_blob_bytes: 1 << 30,
    })
    .unwrap()
    .create_bucket()
    .await
    .unwrap();
    let s = Srv::start_with(Backend::Sqlite, |cfg| cfg.blobs.s3 = Some(target)).await;
    fifty_mib_round_trip(&s, false).await;
    s.stop().await;
}

/// Submits a 50 MiB `sample_report` with a parameter over the claim-check size, fetches the
/// result by reference and checks it; then submits it again and finds the same blob
/// (`count_local_copies`: and one copy of it in the local blob directory).
async fn fifty_mib_round_trip(s: &Srv, count_local_copies: bool) {
    let preface = big_preface();
    assert!(preface.len() > 256 * 1024 && preface.len() < 1024 * 1024);
    let size = 50 * MIB;
    let params = json!({"size_bytes": size, "preface": preface});
    let (status, job) = s
        .post(
            "/v1/jobs",
            &s.admin,
            json!({"kind": "sample_report", "params": params}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    // The parameters travelled by reference: the job holds only it (and who submitted it).
    let (params_blob, params_size) = reference_of(&job["params"]).expect("params by reference");
    assert!(job["params"].get("preface").is_none(), "{}", job["params"]);
    assert_eq!(job["params"]["submitted_by"], "admin-1");
    let id = job["id"].as_str().unwrap().to_owned();

    let done = s.wait_result(&id).await;
    assert_eq!(done["state"], "completed", "{done}");
    let blob = &done["result"]["blob"];
    let (blob_id, blob_size) = reference_of(blob).expect("result by reference");
    assert_eq!(blob_size, size);
    let href = blob["href"].as_str().unwrap();
    assert_eq!(href, format!("/v1/blobs/{blob_id}"));

    // Fetched by reference, streamed: length, ETag and bytes checked.
    let r = s
        .http
        .get(s.url(href))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(size));
    assert_eq!(
        r.headers()["etag"].to_str().unwrap(),
        format!("\"{blob_id}\"")
    );
    let mut hasher = Sha256::new();
    let mut got = Vec::with_capacity(size as usize);
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("body chunk");
        hasher.update(&chunk);
        got.extend_from_slice(&chunk);
    }
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(format!("sha256:{hex}"), blob_id.to_string());
    let want = expected_report(&preface, size);
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the report's bytes are the preface, then the lines"
    );
    drop((got, want));

    // The worker saw the preface resolved: it is in the report. The parameters' blob holds
    // exactly what was submitted.
    let (status, stored) = {
        let r = s
            .http
            .get(s.url(&format!("/v1/blobs/{params_blob}")))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    };
    assert_eq!(status, 200);
    assert_eq!(stored.len() as u64, params_size);
    assert_eq!(serde_json::from_slice::<Value>(&stored).unwrap(), params);

    // Stored once: the same report again is the same blob, and the directory has one copy.
    let (status, again) = s
        .post(
            "/v1/jobs",
            &s.admin,
            json!({"kind": "sample_report", "params": params}),
        )
        .await;
    assert_eq!(status, 202, "{again}");
    let again = s.wait_result(again["id"].as_str().unwrap()).await;
    assert_eq!(again["result"]["blob"]["$blob"], blob_id.to_string());
    if count_local_copies {
        assert_eq!(stored_blobs_of_size(s, size), 1);
    }
}

async fn only_the_submitter_or_an_admin_fetches_a_jobs_blobs(b: Backend) {
    let s = Srv::start(b).await;
    let seller = s.running.token("seller-1", &["seller"], 3600);
    let other = s.running.token("seller-2", &["seller"], 3600);
    // A category long enough to travel by reference (it matches no product: no items).
    let category = "c".repeat(300 * 1024);
    let (status, job) = s
        .post(
            "/v1/jobs",
            &seller,
            json!({"kind": "reprice_category", "params": {"category": category, "percent": 5}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let (params_blob, _) = reference_of(&job["params"]).expect("params by reference");
    let path = format!("/v1/blobs/{params_blob}");
    let (status, _) = s.get_json(&path, &seller).await;
    assert_eq!(status, 200, "the submitter may fetch its job's blob");
    let (status, err) = s.get_json(&path, &other).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("blob_not_found"))
    );
    let (status, _) = s.get_json(&path, &s.admin).await;
    assert_eq!(status, 200);

    let unknown = format!("/v1/blobs/sha256:{}", "0".repeat(64));
    let (status, err) = s.get_json(&unknown, &s.admin).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("blob_not_found"))
    );
    assert!(err["message"].is_string());
    let (status, err) = s.get_json("/v1/blobs/not-a-hash", &s.admin).await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_blob")));
    let (status, err) = s.post("/v1/blobs/gc", &seller, json!({})).await;
    assert_eq!((status, err["code"].as_str()), (403, Some("forbidden")));
    let (status, err) = s
        .post("/v1/blobs/gc", &s.admin, json!({"grace_ms": -1}))
        .await;
    assert_eq!((status, err["code"].as_str()), (400, Some("invalid_grace")));
    s.stop().await;
}

async fn gc_keeps_young_and_referenced_blobs_and_removes_the_rest(b: Backend) {
    let s = Srv::start(b).await;
    let (status, job) = s
        .post(
            "/v1/jobs",
            &s.admin,
            json!({"kind": "sample_report", "params": {"size_bytes": 1000, "preface": "hi\n"}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let done = s.wait_result(job["id"].as_str().unwrap()).await;
    let result = done["result"]["blob"]["$blob"].as_str().unwrap().to_owned();
    let claims = &s.running.state.claims;
    let orphan = put_bytes(claims.blobs().as_ref(), b"nothing refers to me")
        .await
        .unwrap()
        .id;

    // The server's grace period (24 h): everything is young.
    let (status, r) = s.post("/v1/blobs/gc", &s.admin, json!({})).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted_blobs"], 0, "{r}");
    // No grace: the orphan goes, the job's result stays (its job references it).
    let (status, r) = s
        .post("/v1/blobs/gc", &s.admin, json!({"grace_ms": 0}))
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["deleted_blobs"], 1, "{r}");
    assert!(r["kept_referenced"].as_u64().unwrap() >= 1, "{r}");
    assert!(claims.blobs().stat(&orphan).await.unwrap().is_none());
    let path = format!("/v1/blobs/{result}");
    let resp = s
        .http
        .get(s.url(&path))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);

    // An admin deletes the result: its references go with it, and it is gone.
    let req = s.http.delete(s.url(&path)).bearer_auth(&s.admin);
    let r: Value = req.send().await.unwrap().json().await.unwrap();
    assert_eq!(r["released_refs"], 1, "{r}");
    let (status, err) = s.get_json(&path, &s.admin).await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("blob_not_found"))
    );
    s.stop().await;
}

/// Records the payloads it is handed.
struct Recorder(Mutex<Vec<Value>>);

#[async_trait::async_trait]
impl JobHandler for Recorder {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.0.lock().unwrap().push(job.payload.clone());
        Ok(())
    }
}

async fn a_large_payload_is_queued_by_reference_and_resolved_for_the_handler(b: Backend) {
    let s = Srv::start(b).await;
    let st = &s.running.state;
    let big = json!({"rows": (0..40_000).map(|i| format!("row {i}")).collect::<Vec<_>>()});
    let payload = st
        .claims
        .check_in(big.clone(), REF_BATCH_PARAMS, "claim-1")
        .await
        .unwrap();
    let (_, size) = reference_of(&payload).expect("over the size: a reference");
    assert_eq!(size, serde_json::to_vec(&big).unwrap().len() as u64);
    let small = st
        .claims
        .check_in(json!({"a": 1}), REF_BATCH_PARAMS, "claim-1")
        .await
        .unwrap();
    assert_eq!(small, json!({"a": 1}), "a small payload travels as it is");
    // A queue of its own, so the server's pool leaves the items to this test.
    let queue = "claim-check-test";
    st.jobs
        .create_batch(
            NewBatch {
                id: "claim-1".into(),
                queue: queue.into(),
                kind: "k".into(),
                params: json!({}),
                fan_in: None,
            },
            vec![NewJob::new(queue, "k.item", payload.clone())],
            ficus_store::now_ms(),
        )
        .await
        .unwrap();
    let leased = st
        .jobs
        .lease(queue, 10, ficus_store::now_ms(), 60_000)
        .await
        .unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        leased[0].payload, payload,
        "the queue holds only the reference"
    );
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let handler = ClaimCheckHandler {
        inner: recorder.clone(),
        claims: st.claims.clone(),
    };
    handler.handle(&leased[0]).await.unwrap();
    assert_eq!(recorder.0.lock().unwrap().as_slice(), &[big]);

    // A reference to a blob that is not there is a permanent failure, not a silent skip.
    let mut lost = leased[0].clone();
    lost.payload = json!({"$blob": format!("sha256:{}", "ab".repeat(32)), "size": 10});
    assert!(matches!(
        handler.handle(&lost).await,
        Err(JobError::Permanent(_))
    ));
    s.stop().await;
}

on_both_backends!(
    a_50_mib_result_is_stored_once_and_fetched_by_reference,
    only_the_submitter_or_an_admin_fetches_a_jobs_blobs,
    gc_keeps_young_and_referenced_blobs_and_removes_the_rest,
    a_large_payload_is_queued_by_reference_and_resolved_for_the_handler,
);
