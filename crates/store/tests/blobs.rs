//! The blob store port and the reference table on every adapter (mem, a local directory,
//! an S3-compatible store when FICUS_TEST_S3_URL names one, SQLite, PostgreSQL when
//! FICUS_TEST_PG_URL is set), and the garbage collector: it keeps
//! referenced and young blobs, deletes old unreferenced ones, and releases the references
//! of bulk jobs that no longer need them.

use std::sync::Arc;

use ficus_store::blobs::{
    collect_garbage, conformance, put_bytes, BlobId, BlobRef, BlobRefs, BlobStore, GcConfig,
    LocalBlobStore, MemBlobRefs, MemBlobStore, PgBlobRefs, S3BlobStore, S3Config, SqliteBlobRefs,
    REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT,
};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::PgEventStore;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{JobQueue, NewBatch, NewJob};
use serde_json::json;

const SMALL_LIMIT_BYTES: u64 = 4 * 1024 * 1024;

#[tokio::test]
async fn mem_store_conformance() {
    let store = MemBlobStore::new(SMALL_LIMIT_BYTES);
    conformance::put_get_dedupe_list_delete(&store).await;
    let store = Arc::new(MemBlobStore::new(SMALL_LIMIT_BYTES));
    let s = store.clone();
    conformance::corruption_is_detected(store.as_ref(), move |id| s.corrupt(id)).await;
}

#[tokio::test]
async fn local_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalBlobStore::open(dir.path().join("blobs"), SMALL_LIMIT_BYTES).unwrap();
    conformance::put_get_dedupe_list_delete(&store).await;
    let paths = store.root().to_path_buf();
    let path_of = move |id: &BlobId| paths.join("sha256").join(&id.hex()[..2]).join(id.hex());
    let p = path_of.clone();
    conformance::corruption_is_detected(&store, move |id| {
        let path = p(id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[7] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    })
    .await;
    // A torn file (shorter than what was stored) is corrupt too.
    let info = put_bytes(&store, &conformance::sample_bytes(100_000, 9))
        .await
        .unwrap();
    let path = path_of(&info.id);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..50_000]).unwrap();
    let mut r = store.get(&info.id).await.unwrap();
    let mut out = Vec::new();
    let got = tokio::io::AsyncReadExt::read_to_end(&mut r, &mut out).await;
    assert_eq!(
        got.unwrap_err().kind(),
        std::io::ErrorKind::InvalidData,
        "a torn blob is never read as good"
    );
    // No part file is left behind by the puts, including the refused one.
    assert_eq!(
        std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
        0
    );
}

/// Environment variable naming an S3-compatible endpoint for tests (e.g. `moto_server`).
const TEST_S3_URL_ENV: &str = "FICUS_TEST_S3_URL";

#[tokio::test]
async fn s3_store_conformance() {
    let Some(endpoint) = std::env::var(TEST_S3_URL_ENV)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        eprintln!("skipped: {TEST_S3_URL_ENV} is not set");
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let bucket = format!("ficus-test-{}", uuid::Uuid::now_v7().simple());
    let store = S3BlobStore::new(S3Config {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        bucket,
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".into(),
        prefix: "blobs/".into(),
        spool_dir: spool.path().to_path_buf(),
        max_blob_bytes: SMALL_LIMIT_BYTES,
    })
    .unwrap();
    store.create_bucket().await.unwrap();
    conformance::put_get_dedupe_list_delete(&store).await;
    let bytes = conformance::sample_bytes(300_000, 5);
    let info = put_bytes(&store, &bytes).await.unwrap();
    let mut altered = bytes.clone();
    altered[1000] ^= 0x40;
    store.overwrite_unchecked(&info.id, altered).await.unwrap();
    let got = store
        .get(&info.id)
        .await
        .unwrap()
        .read_to_vec(1 << 20)
        .await;
    assert!(
        matches!(got, Err(ficus_store::blobs::BlobError::Corrupt(_))),
        "{got:?}"
    );
    assert_eq!(
        std::fs::read_dir(spool.path()).unwrap().count(),
        0,
        "spool files removed"
    );
}

#[tokio::test]
async fn a_blob_survives_reopening_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = conformance::sample_bytes(300_000, 4);
    let id = {
        let store = LocalBlobStore::open(dir.path(), SMALL_LIMIT_BYTES).unwrap();
        put_bytes(&store, &bytes).await.unwrap().id
    };
    let store = LocalBlobStore::open(dir.path(), SMALL_LIMIT_BYTES).unwrap();
    let got = store.get(&id).await.unwrap().read_to_vec(1 << 20).await;
    assert_eq!(got.unwrap(), bytes);
}

#[tokio::test]
async fn mem_refs_conformance() {
    conformance::refs_conformance(&MemBlobRefs::default()).await;
}

#[tokio::test]
async fn sqlite_refs_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    conformance::refs_conformance(&SqliteBlobRefs::open(store.clone()).await.unwrap()).await;
    store.shutdown().await;
}

#[tokio::test]
async fn postgres_refs_conformance() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "blobrefs");
    let store = PgEventStore::open(config).await.unwrap();
    conformance::refs_conformance(&PgBlobRefs::for_store(&store)).await;
    store.shutdown().await;
}

const HOUR_MS: i64 = 3600 * 1000;

#[tokio::test]
async fn gc_keeps_referenced_and_young_blobs_and_deletes_old_unreferenced_ones() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let refs = SqliteBlobRefs::open(events.clone()).await.unwrap();
    let jobs = SqliteJobQueue::new(events.clone());
    let blobs = LocalBlobStore::open(dir.path().join("blobs"), SMALL_LIMIT_BYTES).unwrap();
    let config = GcConfig {
        grace_ms: 24 * HOUR_MS,
    };
    let now = ficus_store::now_ms();

    let referenced = put_bytes(&blobs, b"referenced").await.unwrap().id;
    let orphan = put_bytes(&blobs, b"orphan").await.unwrap().id;
    refs.add(&BlobRef::new(referenced.clone(), "test", "owner", now))
        .await
        .unwrap();

    // Now: both are young, nothing goes.
    let r = collect_garbage(&blobs, &refs, Some(&jobs), &config, now)
        .await
        .unwrap();
    assert_eq!((r.kept_young, r.deleted_blobs), (2, 0), "{r:?}");

    // A day and a bit later: the orphan goes, the referenced one stays.
    let later = now + 25 * HOUR_MS;
    let r = collect_garbage(&blobs, &refs, Some(&jobs), &config, later)
        .await
        .unwrap();
    assert_eq!((r.kept_referenced, r.deleted_blobs), (1, 1), "{r:?}");
    assert!(blobs.stat(&orphan).await.unwrap().is_none());
    assert!(blobs.stat(&referenced).await.unwrap().is_some());

    // A blob put again renews its age: the second put's referrer gets the whole grace.
    let again = put_bytes(&blobs, b"again").await.unwrap();
    let r = collect_garbage(&blobs, &refs, None, &config, again.created_at_ms + HOUR_MS)
        .await
        .unwrap();
    assert_eq!(r.deleted_blobs, 0, "{r:?}");

    // Released: collected.
    refs.release("test", "owner").await.unwrap();
    let r = collect_garbage(&blobs, &refs, Some(&jobs), &config, later)
        .await
        .unwrap();
    assert!(r.deleted_blobs >= 1, "{r:?}");
    assert!(blobs.stat(&referenced).await.unwrap().is_none());
    events.shutdown().await;
}

#[tokio::test]
async fn gc_releases_what_a_finished_bulk_job_no_longer_needs() {
    let dir = tempfile::tempdir().unwrap();
    let events = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let refs = SqliteBlobRefs::open(events.clone()).await.unwrap();
    let jobs = SqliteJobQueue::new(events.clone());
    let blobs = MemBlobStore::default();
    let config = GcConfig {
        grace_ms: 24 * HOUR_MS,
    };
    let now = ficus_store::now_ms();
    let batch = jobs
        .create_batch(
            NewBatch {
                id: "batch-1".into(),
                queue: "q".into(),
                kind: "k".into(),
                params: json!({}),
                fan_in: Some(NewJob::new("q", "k.finish", json!({}))),
            },
            vec![NewJob::new("q", "k.item", json!({}))],
            now,
        )
        .await
        .unwrap();
    let params = put_bytes(&blobs, b"params").await.unwrap().id;
    let part = put_bytes(&blobs, b"part").await.unwrap().id;
    let result = put_bytes(&blobs, b"result").await.unwrap().id;
    let gone = put_bytes(&blobs, b"of a job that never was")
        .await
        .unwrap()
        .id;
    for (blob, kind, id) in [
        (&params, REF_BATCH_PARAMS, "batch-1".to_owned()),
        (&part, REF_BATCH_PART, "batch-1/0".to_owned()),
        (&result, REF_BATCH_RESULT, "batch-1".to_owned()),
        (&gone, REF_BATCH_PARAMS, "no-such-batch".to_owned()),
    ] {
        refs.add(&BlobRef::new(blob.clone(), kind, id, now))
            .await
            .unwrap();
    }
    let later = now + 25 * HOUR_MS;
    // Running: only the missing batch's reference goes.
    let r = collect_garbage(&blobs, &refs, Some(&jobs), &config, later)
        .await
        .unwrap();
    assert_eq!((r.released_refs, r.deleted_blobs), (1, 1), "{r:?}");
    assert!(blobs.stat(&gone).await.unwrap().is_none());

    // With its result recorded: parameters and parts go, the result stays.
    jobs.set_batch_result(&batch.id, json!({"blob": "x"}))
        .await
        .unwrap();
    let r = collect_garbage(&blobs, &refs, Some(&jobs), &config, later)
        .await
        .unwrap();
    assert_eq!((r.released_refs, r.deleted_blobs), (2, 2), "{r:?}");
    assert!(blobs.stat(&result).await.unwrap().is_some());
    assert!(blobs.stat(&params).await.unwrap().is_none());
    assert!(blobs.stat(&part).await.unwrap().is_none());
    events.shutdown().await;
}
