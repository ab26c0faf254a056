//! Crypto-shredding through `ShreddingStore` on a real SQLite file and a real PostgreSQL schema
//! (skipped without `FICUS_TEST_PG_URL`), and in memory: declared personal fields are stored as
//! ciphertext (the raw log holds no plaintext, plain and keyed appends alike), read back in
//! plaintext from `read_stream`, `read_all` and live batches, read as `"[erased]"` once the
//! subject's keys are destroyed (also by a fresh process with a cold cache), other subjects
//! and the rest of the history untouched, a second destroy idempotent, and a forgotten subject
//! that comes back gets a new key.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
use ficus_store::shredding::{SubjectKeys, ENCRYPTED_PREFIX, ERASED};
use ficus_store::{
    new_event, Claim, ClaimRequest, EventStore, IdempotencyStore, PersonalFields, Shredder,
    ShreddingStore, StoredResponse,
};
use futures::future::BoxFuture;
use serde_json::json;

const ANN_NAME: &str = "Ann Secretname";
const ANN_STREET: &str = "12 Hidden Lane";
const BOB_NAME: &str = "Bob Plainview";
const LATER_NAME: &str = "Ann Returned";

/// Reads every stored payload of the log as its backend keeps it, bypassing all wrappers.
type RawPayloads = Box<dyn Fn() -> BoxFuture<'static, Vec<String>> + Send + Sync>;

struct Backend {
    events: Arc<dyn EventStore>,
    keyed: Arc<dyn IdempotencyStore>,
    /// Opens the key table afresh, as a restarted process would.
    keys: Box<dyn Fn() -> Arc<dyn SubjectKeys> + Send + Sync>,
    raw: RawPayloads,
    _guard: Box<dyn Any + Send>,
}

fn fields() -> PersonalFields {
    let mut f = PersonalFields::new();
    // `new_event` writes schema version 1.
    f.declare(
        "AccountOpened",
        1,
        "/owner_id",
        &["/holder_name", "/address/street"],
    );
    f
}

fn opened(owner: &str, name: Option<&str>, street: &str) -> NewEvent {
    new_event(
        EventType::new("AccountOpened").unwrap(),
        json!({"account_id": format!("acc-{owner}"), "owner_id": owner, "holder_name": name,
               "address": {"street": street, "city": "Lyon"}, "currency": "EUR", "at_ms": 1}),
    )
}

fn stream(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn name_of(e: &RecordedEvent) -> &str {
    e.payload["holder_name"].as_str().unwrap_or("<none>")
}

async fn scenario(b: Backend) {
    let shredder = Shredder::new(fields(), (b.keys)());
    let store = ShreddingStore::wrap(b.events.clone(), Some(b.keyed.clone()), shredder.clone());
    let mut live = store.live();

    // Ann through a plain append, Bob through a keyed (idempotent) one.
    store
        .append(
            &stream("account-ann"),
            ExpectedVersion::NoStream,
            vec![
                opened("ann", Some(ANN_NAME), ANN_STREET),
                new_event(
                    EventType::new("MoneyDeposited").unwrap(),
                    json!({"account_id": "acc-ann", "amount": 500, "at_ms": 2}),
                ),
            ],
        )
        .await
        .unwrap();
    let Claim::Owned(ticket) = store
        .claim(&ClaimRequest {
            scope: "bob",
            key: "k1",
            fingerprint: "f",
            now_ms: ficus_store::now_ms(),
            lease_ms: 30_000,
            retention_ms: 3_600_000,
        })
        .await
        .unwrap()
    else {
        panic!("a fresh key is owned");
    };
    store
        .append_completing(
            &ticket,
            &stream("account-bob"),
            ExpectedVersion::NoStream,
            vec![opened("bob", Some(BOB_NAME), "1 Open Road")],
            Arc::new(|_| StoredResponse {
                status: 201,
                body: "{}".into(),
            }),
        )
        .await
        .unwrap();

    // Read back in plaintext: stream reads, the global log and live batches.
    let ann = store
        .read_stream(&stream("account-ann"), 1, 100)
        .await
        .unwrap();
    assert_eq!(name_of(&ann[0]), ANN_NAME);
    assert_eq!(ann[0].payload["address"]["street"], ANN_STREET);
    assert_eq!(ann[0].payload["address"]["city"], "Lyon");
    let all = store.read_all(1, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(name_of(&all[2]), BOB_NAME);
    let mut seen_live = Vec::new();
    while seen_live.len() < 3 {
        let batch = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("live batches arrive")
            .unwrap();
        seen_live.extend(batch.iter().cloned());
    }
    assert_eq!(name_of(&seen_live[0]), ANN_NAME);
    assert_eq!(name_of(&seen_live[2]), BOB_NAME);

    // The stored log holds ciphertext only.
    let raw = (b.raw)().await;
    assert_eq!(raw.len(), 3);
    let text = raw.join("\n");
    for secret in [ANN_NAME, ANN_STREET, BOB_NAME] {
        assert!(
            !text.contains(secret),
            "plaintext {secret:?} in the log: {text}"
        );
    }
    // Two personal fields in each of the two `AccountOpened` events.
    assert_eq!(text.matches(ENCRYPTED_PREFIX).count(), 4, "{text}");
    assert!(
        text.contains("Lyon"),
        "undeclared fields stay plain: {text}"
    );

    // Forget Ann: her fields read as erased, everything else as before.
    assert_eq!(shredder.forget("ann").await.unwrap(), 1);
    assert_eq!(shredder.forget("ann").await.unwrap(), 0, "idempotent");
    let after = store.read_all(1, 100).await.unwrap();
    assert_eq!(after.len(), 3);
    assert_eq!(name_of(&after[0]), ERASED);
    assert_eq!(after[0].payload["address"]["street"], ERASED);
    assert_eq!(after[0].payload["address"]["city"], "Lyon");
    assert_eq!(after[1].payload["amount"], 500);
    assert_eq!(name_of(&after[2]), BOB_NAME);
    for (a, b) in all.iter().zip(&after) {
        assert_eq!(
            (a.id, a.version, a.position, &a.stream_id),
            (b.id, b.version, b.position, &b.stream_id)
        );
    }

    // A restarted process (cold cache, key table reopened) finds her erased too.
    let cold = ShreddingStore::wrap(b.events.clone(), None, Shredder::new(fields(), (b.keys)()));
    let ann_cold = cold
        .read_stream(&stream("account-ann"), 1, 10)
        .await
        .unwrap();
    assert_eq!(name_of(&ann_cold[0]), ERASED);

    // Ann comes back: a new key for the new event, the old one stays erased; appends still
    // work on her stream at the next version.
    let r = store
        .append(
            &stream("account-ann-2"),
            ExpectedVersion::NoStream,
            vec![opened("ann", Some(LATER_NAME), "3 New Street")],
        )
        .await
        .unwrap();
    store
        .append(
            &stream("account-ann"),
            ExpectedVersion::Exact(2),
            vec![new_event(
                EventType::new("MoneyDeposited").unwrap(),
                json!({"account_id": "acc-ann", "amount": 100, "at_ms": 3}),
            )],
        )
        .await
        .unwrap();
    let back = store.read_all(r.first_position, 1).await.unwrap();
    assert_eq!(name_of(&back[0]), LATER_NAME);
    let ann = store
        .read_stream(&stream("account-ann"), 1, 10)
        .await
        .unwrap();
    assert_eq!(ann.len(), 3);
    assert_eq!(name_of(&ann[0]), ERASED);

    // A personal event that does not name its subject is refused and writes nothing.
    let head = store.head_position();
    let bad = new_event(
        EventType::new("AccountOpened").unwrap(),
        json!({"account_id": "x", "holder_name": "No Owner"}),
    );
    let err = store
        .append(&stream("account-x"), ExpectedVersion::Any, vec![bad])
        .await
        .unwrap_err();
    assert!(matches!(err, ficus_store::StoreError::Invalid(_)), "{err}");
    assert_eq!(store.head_position(), head);
}

#[tokio::test]
async fn mem() {
    let events = Arc::new(ficus_store::mem::MemEventStore::new());
    let keys: Arc<dyn SubjectKeys> = Arc::new(ficus_store::shredding::MemSubjectKeys::default());
    let reader = events.clone();
    scenario(Backend {
        events: events.clone(),
        keyed: events,
        keys: Box::new(move || keys.clone()),
        raw: Box::new(move || {
            let reader = reader.clone();
            Box::pin(async move {
                reader
                    .read_all(1, 1000)
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.payload.to_string())
                    .collect()
            })
        }),
        _guard: Box::new(()),
    })
    .await;
}

#[tokio::test]
async fn sqlite() {
    use ficus_store::shredding::SqliteSubjectKeys;
    use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("events.db");
    let key_file = dir.path().join("subject-keys.db");
    let events = Arc::new(SqliteEventStore::open(&log, SqliteConfig::default()).unwrap());
    scenario(Backend {
        events: events.clone(),
        keyed: events.clone(),
        keys: Box::new(move || Arc::new(SqliteSubjectKeys::open(&key_file).unwrap())),
        raw: Box::new(move || {
            let log = log.clone();
            Box::pin(async move {
                // The file itself, through a connection of its own.
                let c = rusqlite::Connection::open(&log).unwrap();
                let mut q = c
                    .prepare("SELECT payload FROM events ORDER BY position")
                    .unwrap();
                let rows = q.query_map([], |r| r.get::<_, String>(0)).unwrap();
                rows.map(Result::unwrap).collect()
            })
        }),
        _guard: Box::new(dir),
    })
    .await;
    events.shutdown().await;
}

#[tokio::test]
async fn sqlite_key_file_keeps_no_destroyed_key() {
    use ficus_store::shredding::SqliteSubjectKeys;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("subject-keys.db");
    let keys = SqliteSubjectKeys::open(&path).unwrap();
    let k = keys.key_for("ann").await.unwrap();
    assert_eq!(
        keys.key_for("ann").await.unwrap().key_id,
        k.key_id,
        "one live key"
    );
    let kb = keys.key_by_id(&k.key_id).await.unwrap().expect("live");
    assert_eq!(keys.destroy("ann").await.unwrap(), 1);
    assert!(keys.key_by_id(&k.key_id).await.unwrap().is_none());
    // Neither the file nor its WAL holds the key's bytes any more.
    for f in ["subject-keys.db", "subject-keys.db-wal"] {
        let bytes = std::fs::read(dir.path().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(kb.len()).any(|w| w == kb),
            "{f} still holds the destroyed key"
        );
    }
}

#[tokio::test]
async fn postgres() {
    use ficus_store::postgres::testing::{fresh_schema, test_url};
    use ficus_store::postgres::PgEventStore;
    use ficus_store::shredding::PgSubjectKeys;
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, guard) = fresh_schema(&url, "shred");
    let events = Arc::new(PgEventStore::open(config.clone()).await.unwrap());
    let pool = events.pool().clone();
    let for_keys = events.clone();
    scenario(Backend {
        events: events.clone(),
        keyed: events.clone(),
        keys: Box::new(move || Arc::new(PgSubjectKeys::for_store(&for_keys))),
        raw: Box::new(move || {
            let pool = pool.clone();
            Box::pin(async move {
                let c = pool.get().await.unwrap();
                c.query(
                    "SELECT payload::text FROM ficus_events ORDER BY position",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<String>>()
            })
        }),
        _guard: Box::new(()),
    })
    .await;
    events.shutdown().await;
    drop(guard);
}
