//! Proves the PostgreSQL read models answer every query exactly as the SQLite ones: one
//! realistic shop history (products created, repriced, restocked, deleted; orders created,
//! filled, placed, cancelled) is folded by both, and every query (search by text, category,
//! price, pages; product details and stock; the views' product page with price history and
//! related products; a customer's orders; analytics per day; buyers; placed orders of a day;
//! a seller's products) compares equal. Needs `FICUS_TEST_PG_URL`
//! (skipped without it).

use std::sync::Arc;
use std::time::Duration;

use ficus_core::Metadata;
use ficus_domain::money::{Currency, Money};
use ficus_domain::order::OrderCommand;
use ficus_domain::pg_read_models as pg;
use ficus_domain::product::ProductCommand;
use ficus_domain::read_models::{self as lite, CatalogProjection, OrdersProjection, ProductSearch};
use ficus_domain::service::{Actor, NewProduct, RequestedItem, Shop};
use ficus_runtime::{
    PgProjectionHandle, PgProjectionRunner, ProjectionHandle, ProjectionRunner, Repository,
    Shutdown,
};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::PgEventStore;
use ficus_store::EventStore;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const HOUR_MS: i64 = 3_600_000;
const WAIT: Duration = Duration::from_secs(30);

const CATEGORIES: &[&str] = &["plants", "tools", "books", "Plants"];
const WORDS: &[&str] = &[
    "fig",
    "ficus",
    "figure",
    "tree",
    "small",
    "large",
    "pot",
    "pottery",
    "crème",
    "creme",
    "Brûlée",
    "garden",
    "gardening",
    "hand",
    "handle",
    "red",
    "green",
    "bonsai",
    "leaf",
    "leaves",
    "Łódź",
    "spade",
    "2-pack",
    "x1",
    "über",
    "uber",
    "naïve",
    "Ångström",
];
const SELLERS: &[&str] = &["seller-a", "seller-b", "seller-c"];
const CUSTOMERS: &[&str] = &["cust-1", "cust-2", "cust-3", "cust-4", "cust-5"];

/// A small deterministic generator (no external randomness: failures reproduce).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn words(&mut self, max: usize) -> String {
        let n = 1 + self.below(max);
        (0..n)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn seller(id: &str) -> Actor {
    Actor {
        user_id: id.into(),
        roles: vec!["seller".into()],
    }
}

fn customer(id: &str) -> Actor {
    Actor {
        user_id: id.into(),
        roles: vec!["customer".into()],
    }
}

struct Product {
    id: String,
    seller: &'static str,
    currency: &'static str,
    price_minor: i64,
    deleted: bool,
}

/// Drives the shop through a history; returns product ids, and the days orders were placed on.
async fn drive(shop: &Shop) -> (Vec<String>, Vec<i64>) {
    let meta = Metadata::default();
    let mut rng = Lcg(7);
    let mut products: Vec<Product> = Vec::new();
    let mut at = T0;

    // Hand-written products: ties, prefixes, repeated words, diacritics.
    let fixed: &[(&str, &str, &str, i64)] = &[
        (
            "Fig tree",
            "A small Ficus carica, fig fig fig.",
            "plants",
            2000,
        ),
        ("Fig", "", "plants", 1500),
        ("Ficus bonsai", "Small tree in a pot.", "plants", 4500),
        ("Crème pot", "Pottery for crème brûlée", "tools", 1200),
        ("Creme pot", "Pottery for creme brulee", "tools", 1200),
        (
            "Garden spade",
            "Hand tool; handle of ash. 2-pack",
            "tools",
            3300,
        ),
        ("Über garden", "Łódź edition, naïve", "books", 999),
        ("fig", "", "Plants", 100),
    ];
    for (i, (name, description, category, price)) in fixed.iter().enumerate() {
        let currency = if i % 3 == 2 { "USD" } else { "EUR" };
        let s = SELLERS[i % 2];
        let id = format!("fixed-{i}");
        create(
            shop,
            s,
            &id,
            name,
            description,
            category,
            *price,
            currency,
            at,
        )
        .await;
        products.push(Product {
            id,
            seller: s,
            currency,
            price_minor: *price,
            deleted: false,
        });
        at += 1_000;
    }
    // Seeded products.
    for i in 0..60 {
        let s = SELLERS[rng.below(SELLERS.len())];
        let currency = if rng.below(4) == 0 { "USD" } else { "EUR" };
        let price = 100 + rng.below(20_000) as i64;
        let category = CATEGORIES[rng.below(CATEGORIES.len())];
        let name = rng.words(3);
        let description = if rng.below(5) == 0 {
            String::new()
        } else {
            rng.words(12)
        };
        let id = format!("p-{i:03}");
        create(
            shop,
            s,
            &id,
            &name,
            &description,
            category,
            price,
            currency,
            at,
        )
        .await;
        products.push(Product {
            id,
            seller: s,
            currency,
            price_minor: price,
            deleted: false,
        });
        at += 60_000;
    }
    // Reprices (up, or down by at most a third), stock moves in several warehouses.
    for _ in 0..80 {
        let n = products.len();
        let p = &mut products[rng.below(n)];
        at += 30_000;
        if rng.below(2) == 0 {
            let new = if rng.below(2) == 0 {
                (p.price_minor + 1 + rng.below(500) as i64).min(1_000_000)
            } else {
                p.price_minor - p.price_minor / 3
            };
            let cmd = ProductCommand::UpdatePrice {
                actor_id: p.seller.into(),
                new_price: Money::from_minor(new),
                at_ms: at,
            };
            shop.product_command(&p.id, cmd, &meta, None).await.unwrap();
            p.price_minor = new;
        } else {
            let cmd = ProductCommand::AdjustStock {
                actor_id: p.seller.into(),
                warehouse: ["main", "east", "west"][rng.below(3)].into(),
                delta: 1 + rng.below(40) as i64,
                at_ms: at,
            };
            shop.product_command(&p.id, cmd, &meta, None).await.unwrap();
        }
    }

    // Orders over five days: created with items, items added, placed, some cancelled.
    let mut placed_days = Vec::new();
    let mut order_no = 0;
    for day in 0..5i64 {
        for _ in 0..8 {
            order_no += 1;
            let at = T0 + day * 24 * HOUR_MS + (1 + rng.below(22) as i64) * HOUR_MS;
            let c = CUSTOMERS[rng.below(CUSTOMERS.len())];
            let currency = if rng.below(3) == 0 { "USD" } else { "EUR" };
            let live: Vec<&Product> = products
                .iter()
                .filter(|p| !p.deleted && p.currency == currency)
                .collect();
            let order_id = format!("o-{order_no:03}");
            let first: Vec<RequestedItem> = (0..rng.below(3))
                .map(|_| RequestedItem {
                    product_id: live[rng.below(live.len())].id.clone(),
                    quantity: 1 + rng.below(4) as u32,
                })
                .collect();
            shop.create_order(&customer(c), &order_id, &first, at, &meta)
                .await
                .unwrap();
            for k in 0..rng.below(3) {
                let item = RequestedItem {
                    product_id: live[rng.below(live.len())].id.clone(),
                    quantity: 1 + rng.below(3) as u32,
                };
                shop.add_item(
                    &customer(c),
                    &order_id,
                    item,
                    at + 1 + k as i64,
                    &meta,
                    None,
                )
                .await
                .unwrap();
            }
            let outcome = rng.below(5);
            if outcome >= 1 {
                let place = OrderCommand::Place {
                    actor_id: c.into(),
                    at_ms: at + 100,
                };
                // An empty order cannot be placed: that refusal is part of the history too.
                let placed = shop.order_command(&order_id, place, &meta, None).await;
                if placed.is_ok() {
                    placed_days.push(ficus_core::time::day_of_ms(at + 100));
                }
            }
            if outcome == 1 || outcome == 0 && rng.below(2) == 0 {
                let cancel = OrderCommand::Cancel {
                    actor_id: c.into(),
                    reason: Some("changed mind".into()),
                    at_ms: at + 200,
                };
                shop.order_command(&order_id, cancel, &meta, None)
                    .await
                    .unwrap();
            }
        }
        // Deletions between days: ordered products stay buyers' history.
        let n = products.len();
        let p = &mut products[rng.below(n)];
        if !p.deleted {
            let cmd = ProductCommand::Delete {
                actor_id: p.seller.into(),
                reason: "discontinued".into(),
                at_ms: T0 + day * 24 * HOUR_MS + 23 * HOUR_MS,
            };
            shop.product_command(&p.id, cmd, &meta, None).await.unwrap();
            p.deleted = true;
        }
    }
    // A fixed product that matches many searches goes too: the corpus shrinks.
    let cmd = ProductCommand::Delete {
        actor_id: SELLERS[0].into(),
        reason: "recalled".into(),
        at_ms: T0 + 6 * 24 * HOUR_MS,
    };
    if !products[0].deleted {
        shop.product_command(&products[0].id, cmd, &meta, None)
            .await
            .unwrap();
    }
    placed_days.sort();
    placed_days.dedup();
    (products.into_iter().map(|p| p.id).collect(), placed_days)
}

#[allow(clippy::too_many_arguments)]
async fn create(
    shop: &Shop,
    seller_id: &str,
    id: &str,
    name: &str,
    description: &str,
    category: &str,
    price_minor: i64,
    currency: &str,
    at_ms: i64,
) {
    let input = NewProduct {
        name: name.into(),
        description: description.into(),
        category: category.into(),
        price: Money::from_minor(price_minor),
        currency: Currency::new(currency).unwrap(),
        stock: Some(("main".into(), (price_minor % 7) * 3)),
    };
    shop.create_product(&seller(seller_id), id, input, at_ms, &Metadata::default())
        .await
        .unwrap();
}

/// The searches to compare: texts alone and with every filter, and pages.
fn searches() -> Vec<ProductSearch> {
    let mut texts: Vec<Option<String>> = vec![None, Some(String::new()), Some("  ***  ".into())];
    for w in WORDS {
        texts.push(Some((*w).into()));
    }
    for t in [
        "f",
        "fi",
        "FIG",
        "fig tree",
        "tree fig",
        "fig fig",
        "small tree pot",
        "pot",
        "po",
        "creme",
        "CRÈME",
        "brulee",
        "lodz",
        "łódź",
        "uber",
        "naive",
        "angstrom",
        "2",
        "pack",
        "x",
        "zzz",
        "fig zzz",
        "\"; DROP TABLE x; --",
        "gard",
        "handle hand",
        "le",
    ] {
        texts.push(Some(t.into()));
    }
    let mut out = Vec::new();
    for text in &texts {
        out.push(ProductSearch {
            text: text.clone(),
            limit: 100,
            ..Default::default()
        });
        for c in CATEGORIES.iter().chain(&["nothing"]) {
            out.push(ProductSearch {
                text: text.clone(),
                category: Some((*c).into()),
                limit: 100,
                ..Default::default()
            });
        }
        for (min, max) in [
            (Some(1000), None),
            (None, Some(2000)),
            (Some(1200), Some(1200)),
        ] {
            out.push(ProductSearch {
                text: text.clone(),
                category: Some("plants".into()),
                min_price_minor: min,
                max_price_minor: max,
                limit: 100,
                ..Default::default()
            });
            out.push(ProductSearch {
                text: text.clone(),
                min_price_minor: min,
                max_price_minor: max,
                limit: 100,
                ..Default::default()
            });
        }
    }
    // Pages, of text and of browsing, and out-of-range limits and offsets.
    for text in [
        None,
        Some("fig".to_string()),
        Some("pot".into()),
        Some("garden".into()),
    ] {
        for (limit, offset) in [
            (0, 0),
            (1, 0),
            (3, 0),
            (3, 3),
            (3, 6),
            (7, 2),
            (5, 50),
            (1000, 0),
            (10, 1_000_000),
        ] {
            out.push(ProductSearch {
                text: text.clone(),
                limit,
                offset,
                ..Default::default()
            });
        }
    }
    out
}

async fn sqlite<T: Send + 'static>(
    h: &ProjectionHandle,
    f: impl FnOnce(&rusqlite::Connection) -> Result<T, ficus_store::StoreError> + Send + 'static,
) -> T {
    h.db().query(f).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_read_models_answer_as_sqlite_ones() {
    let Some(url) = test_url() else {
        eprintln!("FICUS_TEST_PG_URL unset: skipping the PostgreSQL read-model test");
        return;
    };
    let (mut config, _schema) = fresh_schema(&url, "readmodels");
    config.pool_size = 6;
    let store = Arc::new(PgEventStore::open(config).await.unwrap());
    let dyn_store: Arc<dyn EventStore> = store.clone();
    let shop = Shop::new(Repository::new(dyn_store.clone()));
    let (product_ids, placed_days) = drive(&shop).await;
    let head = store.head_position();

    let shutdown = Shutdown::new();
    let dir = tempfile::tempdir().unwrap();
    let (lite_catalog, t1) = ProjectionRunner::spawn(
        Arc::new(CatalogProjection),
        dir.path(),
        dyn_store.clone(),
        shutdown.clone(),
    )
    .unwrap();
    let (lite_orders, t2) = ProjectionRunner::spawn(
        Arc::new(OrdersProjection),
        dir.path(),
        dyn_store.clone(),
        shutdown.clone(),
    )
    .unwrap();
    let spawn_pg = |p: Arc<dyn ficus_runtime::PgProjection>| {
        PgProjectionRunner::spawn(p, store.pool().clone(), dyn_store.clone(), shutdown.clone())
    };
    let (pg_catalog, t3): (PgProjectionHandle, _) = spawn_pg(Arc::new(pg::PgCatalogProjection));
    let (pg_orders, t4) = spawn_pg(Arc::new(pg::PgOrdersProjection));
    lite_catalog.wait_for(head, WAIT).await.unwrap();
    lite_orders.wait_for(head, WAIT).await.unwrap();
    pg_catalog.wait_for(head, WAIT).await.unwrap();
    pg_orders.wait_for(head, WAIT).await.unwrap();

    let conn = store.pool().get().await.unwrap();
    let client: &tokio_postgres::Client = &conn;

    // Search.
    let mut nonempty = 0;
    let mut multi = 0;
    let mut ranked = 0;
    for q in searches() {
        let q2 = q.clone();
        let want = sqlite(&lite_catalog, move |c| lite::search_products(c, &q2)).await;
        let got = pg::search_products(client, &q).await.unwrap();
        assert_eq!(got, want, "search {q:?}");
        nonempty += usize::from(!want.1.is_empty());
        let by_name = want
            .1
            .windows(2)
            .all(|w| (&w[0].name, &w[0].id) <= (&w[1].name, &w[1].id));
        ranked += usize::from(!by_name);
        multi += usize::from(want.1.len() > 2);
    }
    assert!(nonempty > 100 && multi > 40, "the searches find things");
    assert!(
        ranked > 20,
        "the text rank, not the name, orders many results"
    );

    // Product details, stock, a seller's products per category.
    let mut pages = 0;
    for id in product_ids.iter().map(String::as_str).chain(["nope"]) {
        let i = id.to_owned();
        let want = sqlite(&lite_catalog, move |c| lite::get_product(c, &i)).await;
        assert_eq!(pg::get_product(client, id).await.unwrap(), want, "{id}");
        let i = id.to_owned();
        let want = sqlite(&lite_catalog, move |c| lite::product_stock(c, &i)).await;
        assert_eq!(pg::product_stock(client, id).await.unwrap(), want, "{id}");
        // The product page of the views: price history and related products too.
        let i = id.to_owned();
        let want = sqlite(&lite_catalog, move |c| lite::product_page(c, &i)).await;
        assert_eq!(pg::product_page(client, id).await.unwrap(), want, "{id}");
        pages += usize::from(want.is_some_and(|p| p.price_history.len() > 1));
    }
    assert!(pages > 0, "some products were repriced");
    for s in SELLERS {
        for c in CATEGORIES {
            let want = sqlite(&lite_catalog, move |conn| {
                lite::seller_products_in_category(conn, s, c)
            })
            .await;
            let got = pg::seller_products_in_category(client, s, c).await.unwrap();
            assert_eq!(got, want, "{s} {c}");
        }
    }

    // A customer's orders, analytics, buyers, placed orders of a day.
    for c in CUSTOMERS.iter().chain(&["nobody"]) {
        for limit in [0, 1, 3, 50, 500] {
            let want = sqlite(&lite_orders, move |conn| {
                lite::customer_orders(conn, c, limit)
            })
            .await;
            let got = pg::customer_orders(client, c, limit).await.unwrap();
            assert_eq!(got, want, "{c} {limit}");
        }
    }
    let day0 = ficus_core::time::day_of_ms(T0);
    assert!(placed_days.len() >= 3, "orders were placed on several days");
    for (from, to) in [
        (day0, day0 + 10),
        (day0 + 1, day0 + 2),
        (day0 - 5, day0 - 1),
        (day0 + 3, day0 + 3),
    ] {
        let want = sqlite(&lite_orders, move |conn| {
            lite::order_analytics(conn, from, to)
        })
        .await;
        assert_eq!(pg::order_analytics(client, from, to).await.unwrap(), want);
    }
    for day in (day0 - 1)..(day0 + 7) {
        let want = sqlite(&lite_orders, move |conn| {
            lite::placed_orders_on_day(conn, day)
        })
        .await;
        assert_eq!(pg::placed_orders_on_day(client, day).await.unwrap(), want);
    }
    let mut bought = 0;
    for id in product_ids.iter().map(String::as_str).chain(["nope"]) {
        let i = id.to_owned();
        let want = sqlite(&lite_orders, move |c| lite::buyers_of_product(c, &i)).await;
        bought += usize::from(!want.is_empty());
        assert_eq!(
            pg::buyers_of_product(client, id).await.unwrap(),
            want,
            "{id}"
        );
    }
    assert!(bought > 10, "products were bought");

    // A rebuild from the log gives the same read model again.
    let applied_before = pg_catalog.status().events_applied;
    pg_catalog.rebuild(WAIT).await.unwrap();
    // `rebuild` returns once the request is recorded; the new copy replays and is switched in
    // later. Wait for the switch: these queries read the tables directly, without the
    // checkpoint-table lock a served query takes first, so they must not race it.
    let deadline = std::time::Instant::now() + WAIT;
    // The replay applies the whole log again before the switch.
    loop {
        let st = pg_catalog.status();
        if st.rebuild.is_none()
            && st.events_applied >= applied_before + head
            && st.checkpoint >= head
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild did not finish"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pg_catalog.wait_for(head, WAIT).await.unwrap();
    for q in searches().into_iter().step_by(7) {
        let q2 = q.clone();
        let want = sqlite(&lite_catalog, move |c| lite::search_products(c, &q2)).await;
        assert_eq!(
            pg::search_products(client, &q).await.unwrap(),
            want,
            "{q:?}"
        );
    }

    drop(conn);
    shutdown.trigger();
    for t in [t1, t2, t3, t4] {
        t.await.unwrap();
    }
}
