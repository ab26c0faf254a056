//! Event attachments by claim check, over real HTTP on both backends: a file larger than the
//! JSON body limit is uploaded to the blob store (`POST /v1/blobs`) and only its reference
//! travels in an event; the append records that the event refers to it, so a garbage
//! collection with no grace period keeps it while an upload no event refers to is removed; an
//! event naming a blob that was never uploaded is refused (400 `unknown_blob`) and writes
//! nothing; the attachment is fetched by reference with its bytes intact. A refused upload
//! (no token, wrong role) is answered as a refusal, not a broken pipe.

mod common;

use common::{Backend, TestData};
use ficus_server::app;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

async fn upload(http: &reqwest::Client, base: &str, token: &str, bytes: Vec<u8>) -> (u16, Value) {
    let r = http
        .post(format!("{base}/v1/blobs"))
        .bearer_auth(token)
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let r = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn an_attachment_travels_by_reference_and_outlives_gc(b: Backend) {
    let data = TestData::new(b);
    let running = app::start(data.config("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("server starts");
    let base = running.url();
    let admin = running.token("ada", &["admin"], 3600);
    let seller = running.token("sam", &["seller"], 3600);
    let http = reqwest::Client::new();

    // 3 MiB: three times the JSON body limit, so it could not travel inside an event.
    let file: Vec<u8> = (0..3 * MIB).map(|i| (i * 31 % 251) as u8).collect();
    let digest = format!("sha256:{:x}", Sha256::digest(&file));
    // Refused uploads are answered after the body is read, so the client sees the refusal
    // rather than a connection closed under its write.
    let (s, r) = upload(&http, &base, &seller, file.clone()).await;
    assert_eq!((s, r["code"].as_str()), (403, Some("forbidden")), "{r}");
    let r = http
        .post(format!("{base}/v1/blobs"))
        .body(file.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, attachment) = upload(&http, &base, &admin, file.clone()).await;
    assert_eq!(s, 201, "{attachment}");
    assert_eq!(attachment["$blob"], digest.as_str());
    assert_eq!(attachment["size"], 3 * MIB);
    // An upload no event will refer to.
    let (s, orphan) = upload(&http, &base, &admin, b"nobody needs me".to_vec()).await;
    assert_eq!(s, 201, "{orphan}");

    // An event naming a blob that was never uploaded: refused, nothing written.
    let ghost = json!({"$blob": format!("sha256:{}", "0".repeat(64)), "size": 1});
    let (s, r) = post(
        &http,
        format!("{base}/v1/streams/claims-1"),
        &admin,
        json!({"events": [{"type": "ClaimFiled", "data": {"scan": ghost}}]}),
    )
    .await;
    assert_eq!((s, r["code"].as_str()), (400, Some("unknown_blob")), "{r}");
    let r = http
        .get(format!("{base}/v1/streams/claims-1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let read: Value = r.json().await.unwrap();
    assert_eq!(
        read["code"], "stream_not_found",
        "nothing was written: {read}"
    );

    // The event carries only the reference, nested anywhere in its data.
    let reference = json!({"$blob": attachment["$blob"], "size": attachment["size"]});
    let (s, r) = post(
        &http,
        format!("{base}/v1/streams/claims-1"),
        &admin,
        json!({"events": [{"type": "ClaimFiled",
                           "data": {"claim": "c-1", "documents": [{"scan": reference}]}}]}),
    )
    .await;
    assert_eq!(s, 201, "{r}");
    // A refused append (wrong expected version) gives its reference back.
    let (s, r) = post(
        &http,
        format!("{base}/v1/streams/claims-1"),
        &admin,
        json!({"expected_version": 7,
               "events": [{"type": "ClaimFiled", "data": {"scan": {"$blob": orphan["$blob"], "size": orphan["size"]}}}]}),
    )
    .await;
    assert_eq!(s, 409, "{r}");

    // A collection with no grace period: the attachment stays, the orphan goes.
    let (s, report) = post(
        &http,
        format!("{base}/v1/blobs/gc"),
        &admin,
        json!({"grace_ms": 0}),
    )
    .await;
    assert_eq!(s, 200, "{report}");
    let orphan_url = format!("{base}/v1/blobs/{}", orphan["$blob"].as_str().unwrap());
    let r = http
        .get(orphan_url)
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an upload nothing refers to is collected");

    let read: Value = http
        .get(format!("{base}/v1/streams/claims-1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stored = &read["events"][0]["data"]["documents"][0]["scan"];
    assert_eq!(stored["$blob"], digest.as_str(), "{read}");
    let href = format!("{base}/v1/blobs/{}", stored["$blob"].as_str().unwrap());
    let r = http.get(href).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), file.as_slice());
    running.stop().await.unwrap();
}

on_both_backends!(an_attachment_travels_by_reference_and_outlives_gc);
