//! Proves that `ficus import legacy` moves the example legacy shop's products into Ficus through
//! the anti-corruption layer exactly once: an import aborted mid-batch and run again leaves
//! every translatable product once (one `ProductCreated`, translated fields, import metadata),
//! refuses and reports the untranslatable rows, and a later run applies only the legacy changes.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{cli_token, free_port, wait_ready};
use serde_json::{json, Value};

const SECRET: &str = "legacy-import";
/// Products written through the legacy shop's API.
const PRODUCTS: usize = 300;
const BATCH: usize = 50;
const DEADLINE: Duration = Duration::from_secs(30);

/// What the legacy shop was given for one product.
#[derive(Debug, Clone)]
struct Expected {
    name: String,
    category: String,
    price_cents: i64,
    stock: i64,
}

fn id_of(i: usize) -> String {
    format!("p-{i:03}")
}

fn import(legacy_db: &Path, data_dir: &Path, abort_after_rows: Option<u64>) -> Output {
    import_to(legacy_db, data_dir, &[], abort_after_rows)
}

/// `ficus import legacy` with `store_args` (none: the embedded store in `data_dir`).
fn import_to(
    legacy_db: &Path,
    data_dir: &Path,
    store_args: &[&str],
    abort_after_rows: Option<u64>,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ficus"));
    cmd.args(["import", "legacy", "--legacy-db"])
        .arg(legacy_db)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--batch", &BATCH.to_string()])
        .args(store_args)
        .env_remove("FICUS_STORE")
        .env_remove("FICUS_PG_SCHEMA");
    if let Some(n) = abort_after_rows {
        cmd.env("FICUS_TEST_ABORT_IMPORT_AFTER_ROWS", n.to_string());
    }
    cmd.output().expect("run ficus import")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(http: &reqwest::Client, data_dir: &Path) -> Server {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .env("FICUS_AUTH_HS256_SECRET", SECRET)
        .env_remove("FICUS_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus serve");
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    wait_ready(http, &server.base).await;
    server
}

/// GETs `url` until it is not a 503 (a `min_position` read while the read model catches up).
async fn get_fresh(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = http.get(url).send().await.unwrap();
        if r.status() != 503 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stream(http: &reqwest::Client, base: &str, admin: &str, name: &str) -> Value {
    let r = http
        .get(format!("{base}/v1/streams/{name}?limit=1000"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "reading stream {name}");
    r.json().await.unwrap()
}

fn count(stream: &Value, ty: &str) -> usize {
    common::events_of_type(stream, ty).len()
}

/// The position of the import's last checkpoint: the log's head after an import.
async fn import_head(http: &reqwest::Client, base: &str, admin: &str) -> u64 {
    let s = stream(http, base, admin, "import-legacy").await;
    let events = s["events"].as_array().unwrap();
    events.last().unwrap()["position"].as_u64().unwrap()
}

/// Checks every product against what the legacy shop holds, through Ficus's HTTP API.
async fn check_products(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    expected: &BTreeMap<String, Expected>,
    updated_at: &BTreeMap<String, String>,
) {
    let head = import_head(http, base, admin).await;
    let r = get_fresh(
        http,
        &format!("{base}/v1/products?limit=100&min_position={head}"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(
        list["total"],
        json!(expected.len()),
        "every translatable product once, nothing else"
    );
    for (id, e) in expected {
        let r = http
            .get(format!("{base}/v1/products/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "product {id}");
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["name"], json!(e.name), "{id}");
        assert_eq!(p["description"], json!(format!("legacy item {id}")), "{id}");
        assert_eq!(p["category"], json!(e.category), "{id}");
        let cents = (p["price"].as_f64().unwrap() * 100.0).round() as i64;
        assert_eq!(cents, e.price_cents, "{id}: {p}");
        assert_eq!(p["currency"], json!("EUR"), "{id}");
        assert_eq!(p["stock_total"], json!(e.stock), "{id}");
        assert_eq!(p["seller_id"], json!("legacy-shop"), "{id}");
        // The commands are dated with the legacy row's own `updated_at`.
        assert_eq!(p["updated_at"], json!(updated_at[id]), "{id}");
        let s = stream(http, base, admin, &format!("product-{id}")).await;
        assert_eq!(count(&s, "ProductCreated"), 1, "{id}: {s}");
        for ev in s["events"].as_array().unwrap() {
            assert_eq!(ev["metadata"]["correlation_id"], json!("import:legacy"));
            assert_eq!(
                ev["metadata"]["causation_id"],
                json!(format!("legacy:{id}"))
            );
        }
    }
}

/// `updated_at` of every legacy row, as the legacy shop keeps it.
fn legacy_updated_at(db: &Path) -> BTreeMap<String, String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT id, updated_at FROM products WHERE typeof(updated_at) = 'text'")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    rows.map(|r| r.unwrap()).collect()
}

async fn put_legacy(http: &reqwest::Client, base: &str, id: &str, e: &Expected) {
    let r = http
        .put(format!("{base}/api/products/{id}"))
        .json(&json!({
            "name": e.name,
            "description": format!("legacy item {id}"),
            "category": e.category,
            "price": e.price_cents as f64 / 100.0,
            "currency": "EUR",
            "stock": e.stock,
        }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "legacy PUT {id}: {}", r.status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_import_resumes_without_duplicates_and_a_rerun_applies_changes() {
    let dir = tempfile::tempdir().unwrap();
    let legacy_db = dir.path().join("legacy-shop.db");
    let data_dir = dir.path().join("ficus-data");
    let http = reqwest::Client::new();

    // The legacy shop's data, written through its own API.
    let legacy = ficus_server::legacy::start(&legacy_db, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut expected = BTreeMap::new();
    for i in 1..=PRODUCTS {
        let e = Expected {
            name: format!("Item {i}"),
            category: ["kitchen", "garden", "books"][i % 3].to_owned(),
            price_cents: 100 + (i as i64) * 37,
            stock: (i as i64) % 11,
        };
        put_legacy(&http, &legacy.url(), &id_of(i), &e).await;
        expected.insert(id_of(i), e);
    }
    legacy.stop().await.unwrap();
    // Old rows the legacy API would refuse today, as a long-lived database holds them.
    {
        let conn = rusqlite::Connection::open(&legacy_db).unwrap();
        let now = "2020-01-01T00:00:00.000Z";
        let long_name = "n".repeat(201);
        let rows: [(
            &str,
            &str,
            rusqlite::types::Value,
            &str,
            rusqlite::types::Value,
        ); 5] = [
            ("bad-currency", "Cup", 100.into(), "eur", 1.into()),
            ("bad-price", "Cup", 2_000_000.into(), "EUR", 1.into()),
            ("bad-name", &long_name, 100.into(), "EUR", 1.into()),
            (
                "bad-stock-type",
                "Cup",
                100.into(),
                "EUR",
                "lots".to_owned().into(),
            ),
            ("bad id", "Cup", 100.into(), "EUR", 1.into()),
        ];
        for (id, name, price, currency, stock) in rows {
            conn.execute(
                "INSERT INTO products (id, name, description, category, price_cents, currency, \
                 stock, updated_at) VALUES (?1, ?2, '', 'misc', ?3, ?4, ?5, ?6)",
                rusqlite::params![id, name, price, currency, stock, now],
            )
            .unwrap();
        }
    }
    let rows = PRODUCTS as u64 + 5;

    // First run: killed (abort, no cleanup) in the middle of its third batch, after 130 rows:
    // two batches are checkpointed, 30 rows of the third are imported but not checkpointed.
    let out = import(&legacy_db, &data_dir, Some(130));
    assert!(!out.status.success(), "the drill aborts the import");

    // Second run: resumes after the second batch and finishes the pass.
    let out = import(&legacy_db, &data_dir, None);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The 30 rows done before the crash are found as already imported, not created again.
    assert!(
        text.contains(&format!(
            "import legacy: read {rows}, created {}, updated 0, unchanged 30, refused 5",
            PRODUCTS - 30
        )),
        "{text}"
    );
    for (id, code) in [
        ("bad-currency", "invalid_currency"),
        ("bad-price", "price_out_of_range"),
        ("bad-name", "text_too_long"),
        ("bad-stock-type", "malformed_column"),
        ("bad id", "invalid_id"),
    ] {
        assert!(
            text.contains(&format!("refused {id}: {code}")),
            "{id}: {text}"
        );
    }

    let updated_at = legacy_updated_at(&legacy_db);
    let admin = cli_token(SECRET, "admin", "admin");
    {
        let server = serve(&http, &data_dir).await;
        check_products(&http, &server.base, &admin, &expected, &updated_at).await;
        // The embedded store has one process: an import beside a server is refused.
        let out = import(&legacy_db, &data_dir, None);
        assert!(!out.status.success(), "{}", stdout(&out));
        for id in [
            "bad-currency",
            "bad-price",
            "bad-name",
            "bad-stock-type",
            "bad%20id",
        ] {
            let r = http
                .get(format!("{}/v1/products/{id}", server.base))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{id} is absent");
        }
    }

    // The legacy shop keeps changing until the switch: a price up, a stock change, both,
    // and a price cut Ficus's rules refuse (more than 50 % at once).
    let legacy = ficus_server::legacy::start(&legacy_db, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut changed = expected.clone();
    changed.get_mut("p-001").unwrap().price_cents += 500;
    changed.get_mut("p-002").unwrap().stock += 9;
    {
        let e = changed.get_mut("p-003").unwrap();
        e.price_cents += 1;
        e.stock = 0;
    }
    changed.get_mut("p-004").unwrap().price_cents /= 4;
    for id in ["p-001", "p-002", "p-003", "p-004"] {
        put_legacy(&http, &legacy.url(), id, &changed[id]).await;
    }
    legacy.stop().await.unwrap();

    // Third run: a new pass; only the differences are commands.
    let out = import(&legacy_db, &data_dir, None);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "import legacy: read {rows}, created 0, updated 3, unchanged {}, refused 6",
            PRODUCTS - 4
        )),
        "{text}"
    );
    assert!(
        text.contains("refused p-004: price_cut_too_large"),
        "{text}"
    );

    // p-004 keeps its old price: the cut was refused, and reported.
    let mut after = changed.clone();
    after.insert("p-004".into(), expected["p-004"].clone());
    let mut after_updated_at = updated_at.clone();
    let now_updated_at = legacy_updated_at(&legacy_db);
    for id in ["p-001", "p-002", "p-003"] {
        after_updated_at.insert(id.into(), now_updated_at[id].clone());
    }
    let server = serve(&http, &data_dir).await;
    check_products(&http, &server.base, &admin, &after, &after_updated_at).await;
    let s = stream(&http, &server.base, &admin, "product-p-001").await;
    assert_eq!(count(&s, "ProductPriceChanged"), 1);
    assert_eq!(count(&s, "StockAdjusted"), 1, "only the initial stock: {s}");
    let s = stream(&http, &server.base, &admin, "product-p-002").await;
    assert_eq!(count(&s, "ProductPriceChanged"), 0);
    assert_eq!(count(&s, "StockAdjusted"), 2);
    let s = stream(&http, &server.base, &admin, "product-p-003").await;
    assert_eq!(count(&s, "ProductPriceChanged"), 1);
    assert_eq!(count(&s, "StockAdjusted"), 2);
    let s = stream(&http, &server.base, &admin, "product-p-004").await;
    assert_eq!(s["events"].as_array().unwrap().len(), 2, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_an_interrupted_import_resumes_without_duplicates() {
    use ficus_store::EventStore;
    let Some(url) = ficus_store::postgres::testing::test_url() else {
        eprintln!("FICUS_TEST_PG_URL is not set: skipped");
        return;
    };
    let (pg, _guard) = ficus_store::postgres::testing::fresh_schema(&url, "import");
    let dir = tempfile::tempdir().unwrap();
    let legacy_db = dir.path().join("legacy-shop.db");
    let http = reqwest::Client::new();
    let legacy = ficus_server::legacy::start(&legacy_db, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    const N: usize = 120;
    for i in 1..=N {
        let e = Expected {
            name: format!("Item {i}"),
            category: "books".into(),
            price_cents: 500 + i as i64,
            stock: 3,
        };
        put_legacy(&http, &legacy.url(), &id_of(i), &e).await;
    }
    legacy.stop().await.unwrap();
    let store_args = ["--store", url.as_str(), "--pg-schema", pg.schema.as_str()];
    let data_dir = dir.path().join("unused");

    // Killed 20 rows into its second batch, then run to the end.
    let out = import_to(&legacy_db, &data_dir, &store_args, Some(70));
    assert!(!out.status.success(), "the drill aborts the import");
    let out = import_to(&legacy_db, &data_dir, &store_args, None);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "import legacy: read {N}, created {}, updated 0, unchanged 20, refused 0",
            N - 20
        )),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A run after a completed pass finds everything in place.
    let out = import_to(&legacy_db, &data_dir, &store_args, None);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "import legacy: read {N}, created 0, updated 0, unchanged {N}, refused 0"
        )),
        "{text}"
    );

    let store = ficus_store::postgres::PgEventStore::open(pg.clone())
        .await
        .unwrap();
    for i in 1..=N {
        let id = id_of(i);
        let stream = ficus_core::StreamId::new(format!("product-{id}")).unwrap();
        let events = store.read_stream(&stream, 1, 100).await.unwrap();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, ["ProductCreated", "StockAdjusted"], "{id}");
        assert_eq!(events[0].payload["price"], json!(500 + i as i64), "{id}");
        assert_eq!(
            events[0].metadata.causation_id.as_deref(),
            Some(format!("legacy:{id}").as_str())
        );
    }
}
