//! Products are snapshotted (every 100 events) on real SQLite files: a busy product — stock
//! adjustments, price changes, reservations made and released — loads from its latest
//! snapshot plus the tail into exactly the state a fold of the whole stream gives, and keeps
//! deciding the same way (a repeated reservation is still recognised after the snapshot).

use std::sync::Arc;
use std::time::Duration;

use ficus_core::{Metadata, StreamId};
use ficus_domain::money::{Currency, Money};
use ficus_domain::product::{Product, ProductCommand, SNAPSHOT_SCHEMA_VERSION};
use ficus_domain::service::{Actor, NewProduct, Shop};
use ficus_runtime::Repository;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteSnapshotStore};
use ficus_store::{EventStore, SnapshotStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_product_loads_from_its_snapshot_into_the_folded_state() {
    let dir = tempfile::tempdir().unwrap();
    let events: Arc<dyn EventStore> = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let snapshots: Arc<dyn SnapshotStore> =
        Arc::new(SqliteSnapshotStore::open(dir.path().join("snapshots.db")).unwrap());
    let repo = Repository::new(events.clone()).with_snapshots(snapshots.clone());
    let plain = Repository::new(events.clone());
    let shop = Shop::new(repo.clone());
    let sam = Actor {
        user_id: "sam".into(),
        roles: vec!["seller".into()],
    };
    let meta = Metadata::default();
    let product = NewProduct {
        name: "Kettle".into(),
        description: "steel".into(),
        category: "kitchen".into(),
        price: Money::from_minor(2000),
        currency: Currency::new("EUR").unwrap(),
        stock: Some(("main".into(), 1000)),
    };
    shop.create_product(&sam, "p1", product, 1, &meta)
        .await
        .unwrap();
    // 240 more events: restocks in two warehouses, price changes, reservations (every 10th
    // released again).
    for i in 1..=240i64 {
        let cmd = match i % 4 {
            0 => ProductCommand::UpdatePrice {
                actor_id: "sam".into(),
                new_price: Money::from_minor(2000 + i),
                at_ms: i,
            },
            1 => ProductCommand::ReserveStock {
                reservation_id: format!("r{i}"),
                quantity: 1,
                at_ms: i,
            },
            2 if i % 10 == 2 => ProductCommand::ReleaseStock {
                reservation_id: format!("r{}", i - 1),
                at_ms: i,
            },
            _ => ProductCommand::AdjustStock {
                actor_id: "sam".into(),
                warehouse: if i % 3 == 0 { "main" } else { "east" }.into(),
                delta: 2,
                at_ms: i,
            },
        };
        shop.product_command("p1", cmd, &meta, None).await.unwrap();
    }
    let stream = StreamId::new("product-p1").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken = loop {
        if let Some(s) = snapshots.load(&stream).await.unwrap() {
            if s.version == 200 {
                break s;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no snapshot at 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(taken.schema_version, SNAPSHOT_SCHEMA_VERSION);

    let full = plain.load::<Product>("p1").await.unwrap();
    let fast = repo.load::<Product>("p1").await.unwrap();
    // Creation with stock is two events, then one per command.
    assert_eq!(fast.version, 242);
    assert_eq!(fast.version, full.version);
    assert_eq!(
        serde_json::to_value(&fast.state).unwrap(),
        serde_json::to_value(&full.state).unwrap(),
        "the snapshot plus the tail is the fold of the whole stream"
    );
    assert_eq!(fast.state.price(), Some(Money::from_minor(2240)));

    // A reservation made before the snapshot is still recognised: repeating it takes nothing.
    let before = repo.load::<Product>("p1").await.unwrap().version;
    shop.product_command(
        "p1",
        ProductCommand::ReserveStock {
            reservation_id: "r5".into(),
            quantity: 1,
            at_ms: 999,
        },
        &meta,
        None,
    )
    .await
    .unwrap();
    let after = repo.load::<Product>("p1").await.unwrap();
    assert_eq!(
        after.version, before,
        "a repeated reservation appends nothing"
    );

    // The snapshot really stands in for its prefix: a planted name shows through.
    let mut planted = taken.clone();
    planted.state["details"]["name"] = serde_json::json!("Planted");
    snapshots.save(&planted).await.unwrap();
    let seen = repo.load::<Product>("p1").await.unwrap();
    assert_eq!(seen.state.name(), Some("Planted"));
    let folded = plain.load::<Product>("p1").await.unwrap();
    assert_eq!(folded.state.name(), Some("Kettle"));
}
