//! Proves, on real SQLite files, the two ways the ledger outlives its code: snapshots (loading
//! reads the latest snapshot plus the tail; a snapshot that no longer decodes, is of an older
//! shape or does not match the log is discarded and rebuilt, never a failure; time travel
//! stays exact), and schema evolution (a log written by the ledger's first release, v1
//! events, replays through the aggregate, a projection and a live subscription in the current
//! shape, because the store is read through the domain's upcasters).

use std::sync::Arc;
use std::time::Duration;

use ficus_core::codec::decode;
use ficus_core::{EventType, ExpectedVersion, Metadata, NewEvent, RecordedEvent, StreamId};
use ficus_domain::account::{AccountEvent, BankAccount, SNAPSHOT_SCHEMA_VERSION};
use ficus_domain::ledger::{AccountHolder, Ledger};
use ficus_domain::money::{Currency, Money};
use ficus_domain::service::Actor;
use ficus_runtime::projection::{ProjectionError, SqliteProjection};
use ficus_runtime::{AsOf, CommandError, ProjectionRunner, Repository, Shutdown};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteSnapshotStore};
use ficus_store::{EventStore, Snapshot, SnapshotStore, Subscription, UpcastingStore};
use rusqlite::{OptionalExtension, Transaction};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn ann() -> Actor {
    Actor {
        user_id: "ann".into(),
        roles: vec![],
    }
}

/// Polls `f` every 10 ms until it answers `Some`, at most [`WAIT`].
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_stand_in_for_the_prefix_and_bad_ones_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let events: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let snapshots: Arc<dyn SnapshotStore> =
        Arc::new(SqliteSnapshotStore::open(dir.path().join("snapshots.db")).unwrap());
    let repo = Repository::new(events.clone()).with_snapshots(snapshots.clone());
    let plain = Repository::new(events.clone());
    let ledger = Ledger::new(repo.clone());
    let meta = Metadata::default();
    let eur = Currency::new("EUR").unwrap();
    ledger
        .open(
            &ann(),
            "a1",
            AccountHolder {
                owner_id: "ann".into(),
                name: None,
            },
            eur,
            1,
            &meta,
        )
        .await
        .unwrap();
    // 250 deposits of 0.01 .. 2.50: the version crosses 100 and 200.
    for i in 1..=250 {
        ledger
            .deposit(&ann(), "a1", Money::from_minor(i), 2, &meta, None)
            .await
            .unwrap();
    }
    let stream = StreamId::new("account-a1").unwrap();
    let balance = 250 * 251 / 2;
    let taken = eventually("the snapshot at version 200", || async {
        snapshots
            .load(&stream)
            .await
            .unwrap()
            .filter(|s| s.version == 200)
    })
    .await;
    assert_eq!(taken.schema_version, SNAPSHOT_SCHEMA_VERSION);
    let full = plain.load::<BankAccount>("a1").await.unwrap();
    let fast = repo.load::<BankAccount>("a1").await.unwrap();
    assert_eq!((fast.version, fast.state.balance().minor()), (251, balance));
    assert_eq!(fast.state, full.state);
    assert_eq!(fast.position, full.position);

    // The snapshot really stands in for its prefix: a planted state (valid, but wrong on
    // purpose) shows through, plus the 51-event tail.
    let mut planted = taken.clone();
    planted.state["details"]["balance"] = json!(1_000_000);
    snapshots.save(&planted).await.unwrap();
    let tail: i64 = (200..=250).sum();
    let seen = repo.load::<BankAccount>("a1").await.unwrap();
    assert_eq!(seen.state.balance().minor(), 1_000_000 + tail);

    // What must never be trusted is discarded and the state rebuilt from events:
    let bad = [
        // a state that no longer decodes (the shape changed without a version bump),
        Snapshot {
            state: json!({"details": {"balance": "lots"}}),
            ..planted.clone()
        },
        // a state of an older snapshot shape,
        Snapshot {
            schema_version: SNAPSHOT_SCHEMA_VERSION - 1,
            ..planted.clone()
        },
        // a snapshot whose event is not at that position in this log (another log's),
        Snapshot {
            position: planted.position + 1,
            ..planted.clone()
        },
        // a snapshot past the end of the stream.
        Snapshot {
            version: 300,
            position: 300,
            ..planted.clone()
        },
    ];
    for b in bad {
        snapshots.save(&b).await.unwrap();
        let loaded = repo.load::<BankAccount>("a1").await.unwrap();
        assert_eq!(loaded.state, full.state, "trusted a bad snapshot: {b:?}");
        eventually("a rebuilt snapshot", || async {
            snapshots.load(&stream).await.unwrap().filter(|s| {
                s.version == 251
                    && s.schema_version == SNAPSHOT_SCHEMA_VERSION
                    && s.state["details"]["balance"] == json!(balance)
            })
        })
        .await;
    }

    // Time travel is exact with or without a usable snapshot.
    snapshots.save(&taken).await.ok();
    let fresh = tempfile::tempdir().unwrap();
    let clean: Arc<dyn SnapshotStore> =
        Arc::new(SqliteSnapshotStore::open(fresh.path().join("snapshots.db")).unwrap());
    let repo = Repository::new(events.clone()).with_snapshots(clean.clone());
    assert_eq!(repo.snapshot::<BankAccount>("a1").await.unwrap(), Some(251));
    for v in [1, 2, 100, 150, 200, 250, 251] {
        let past = repo
            .load_as_of::<BankAccount>("a1", AsOf::Version(v))
            .await
            .unwrap();
        let want: i64 = (1..v as i64).sum();
        assert_eq!(
            (past.version, past.state.balance().minor()),
            (v, want),
            "as of {v}"
        );
    }
    let beyond = repo
        .load_as_of::<BankAccount>("a1", AsOf::Version(9_999))
        .await
        .unwrap();
    assert_eq!(beyond.version, 251);
    let before = repo
        .load_as_of::<BankAccount>("a1", AsOf::Time(0))
        .await
        .unwrap();
    assert_eq!((before.version, before.state.exists()), (0, false));
}

/// A v1 event as the ledger's first release wrote it.
fn v1(ty: &str, payload: Value) -> NewEvent {
    NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type: EventType::new(ty).unwrap(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload,
    }
}

/// A read model of balances that decodes strictly with the current event type: a v1 payload
/// reaching it would stop it with a decode error.
struct Balances;

impl SqliteProjection for Balances {
    fn name(&self) -> &str {
        "balances"
    }
    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS balances (account_id TEXT PRIMARY KEY, owner_id TEXT NOT NULL,
                                              balance_minor INTEGER NOT NULL)"
    }
    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS balances"
    }
    fn apply(&self, tx: &Transaction<'_>, e: &RecordedEvent) -> Result<(), ProjectionError> {
        match decode::<AccountEvent>(e.event_type.as_str(), e.schema_version, &e.payload)? {
            AccountEvent::AccountOpened {
                account_id,
                owner_id,
                ..
            } => {
                tx.execute(
                    "INSERT INTO balances VALUES (?1, ?2, 0)",
                    (&account_id, &owner_id),
                )?;
            }
            AccountEvent::MoneyDeposited {
                account_id, amount, ..
            } => {
                tx.execute(
                    "UPDATE balances SET balance_minor = balance_minor + ?2 WHERE account_id = ?1",
                    (&account_id, amount.minor()),
                )?;
            }
            AccountEvent::MoneyWithdrawn {
                account_id, amount, ..
            } => {
                tx.execute(
                    "UPDATE balances SET balance_minor = balance_minor - ?2 WHERE account_id = ?1",
                    (&account_id, amount.minor()),
                )?;
            }
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_the_first_release_replays_in_the_current_shape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let stream = StreamId::new("account-old-1").unwrap();
    // The first release's log, written raw into a real file: v1 shapes only.
    {
        let store = SqliteEventStore::open(&path, SqliteConfig::default()).unwrap();
        let history = vec![
            v1(
                "AccountOpened",
                json!({"account_id": "old-1", "owner": "ann", "currency": "EUR", "at_ms": 1}),
            ),
            v1(
                "MoneyDeposited",
                json!({"account_id": "old-1", "amount": "100.00", "at_ms": 2}),
            ),
            v1(
                "MoneyWithdrawn",
                json!({"account_id": "old-1", "amount": "0.10", "at_ms": 3}),
            ),
            v1(
                "MoneyDeposited",
                json!({"account_id": "old-1", "amount": "5", "at_ms": 4}),
            ),
        ];
        store
            .append(&stream, ExpectedVersion::NoStream, history)
            .await
            .unwrap();
        store.shutdown().await;
    }
    let raw: Arc<dyn EventStore> =
        Arc::new(SqliteEventStore::open(&path, SqliteConfig::default()).unwrap());
    // Without the upcasters the current code cannot read its own history: loudly.
    match Repository::new(raw.clone())
        .load::<BankAccount>("old-1")
        .await
    {
        Err(CommandError::Codec(e)) => assert!(e.to_string().contains("AccountOpened"), "{e}"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    let store = UpcastingStore::wrap(raw.clone(), ficus_domain::upcasters());

    // The aggregate.
    let loaded = Repository::new(store.clone())
        .load::<BankAccount>("old-1")
        .await
        .unwrap();
    assert_eq!(loaded.version, 4);
    assert_eq!(loaded.state.owner_id(), Some("ann"));
    assert_eq!(loaded.state.balance(), Money::from_minor(10_490));

    // A subscription, catching up then live; the current code appends v2 next to v1.
    let mut sub = Subscription::new(store.clone(), 1);
    for _ in 0..4 {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.schema_version, 2, "{e:?}");
        decode::<AccountEvent>(e.event_type.as_str(), e.schema_version, &e.payload).unwrap();
    }
    Ledger::new(Repository::new(store.clone()))
        .withdraw(
            &ann(),
            "old-1",
            Money::from_minor(490),
            5,
            &Metadata::default(),
            None,
        )
        .await
        .unwrap();
    // An old process still writing v1 during a rolling upgrade: read live in the v2 shape.
    raw.append(
        &stream,
        ExpectedVersion::Exact(5),
        vec![v1(
            "MoneyDeposited",
            json!({"account_id": "old-1", "amount": "0.01", "at_ms": 6}),
        )],
    )
    .await
    .unwrap();
    let mut amounts = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.schema_version, 2);
        amounts.push(e.payload["amount"].clone());
    }
    assert_eq!(amounts, [json!(490), json!(1)]);

    // A projection, replaying the whole mixed log into its read model.
    let shutdown = Shutdown::new();
    let (handle, task) = ProjectionRunner::spawn(
        Arc::new(Balances),
        dir.path(),
        store.clone(),
        shutdown.clone(),
    )
    .unwrap();
    handle
        .wait_for(6, WAIT)
        .await
        .expect("the projection reaches the head");
    let (row, _) = handle
        .db()
        .query(|c| {
            c.query_row(
                "SELECT owner_id, balance_minor FROM balances WHERE account_id = 'old-1'",
                [],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()
            .map_err(ficus_store::sqlite::unavailable)
        })
        .await
        .unwrap();
    assert_eq!(row, Some(("ann".to_owned(), 10_001)));
    shutdown.trigger();
    task.await.unwrap();
}
