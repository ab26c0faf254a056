//! A small legacy shop: the "monolith" that the strangler-fig walkthrough
//! (`docs/strangler-walkthrough.md`) moves away from, step by step, behind `ficus gateway`.
//!
//! It is plain CRUD over one SQLite table, with its own REST URLs:
//!
//! ```text
//! GET    /api/products?category=&limit=&offset=  {"total": n, "products": [...]}, by name, then id
//! GET    /api/products/{id}                       one product
//! POST   /api/products                            create; the shop picks the id (201)
//! PUT    /api/products/{id}                       create or replace under a chosen id
//! PUT    /api/products/{id}/price                 {"price": 19.99}
//! DELETE /api/products/{id}                       204
//! GET    /health                                  {"status": "up"}
//! ```
//!
//! What makes it a legacy system, on purpose: rows are overwritten in place (no history, no
//! versions), writes answer with the whole product, there is no authentication (it trusts
//! the network, as many monoliths behind a gateway do), and unknown JSON fields and query
//! parameters are ignored. Its product document is the contract old clients rely on; Ficus's
//! `/v1/products` answers reproduce it field for field and add `seller_id` and `version`,
//! which is what lets the gateway's shadow mode compare the two answers meaningfully.
//!
//! Every input is bounded (body size, text lengths, price, stock, page size, catalog size)
//! and every refusal is a JSON `{"code", "message"}` with a 4xx status.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

/// Largest request body, bytes.
pub const BODY_MAX_BYTES: usize = 16 * 1024;
/// Most products the shop keeps; creating one more is refused.
pub const MAX_PRODUCTS: i64 = 100_000;
/// Longest product id, bytes (ids are ASCII letters, digits, `-`, `_`, `.`).
pub const ID_MAX_BYTES: usize = 64;
/// Longest name, description and category, characters (the same rules Ficus kept).
pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 5000;
pub const CATEGORY_MAX_CHARS: usize = 100;
/// Highest price, in cents (10 000.00).
pub const PRICE_MAX_CENTS: i64 = 1_000_000;
/// Most units in stock per product.
pub const STOCK_MAX: i64 = 1_000_000_000;
/// Page size of the product list: default and most.
pub const LIST_DEFAULT_LIMIT: u32 = 20;
pub const LIST_MAX_LIMIT: u32 = 100;
/// Deepest offset into the product list.
pub const LIST_MAX_OFFSET: u32 = 10_000;
/// Longest a stop waits for requests in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Database calls handed to blocking threads at once; more requests wait for a turn without
/// holding a thread (the one connection serves one call at a time anyway).
pub const DB_CALLS_MAX: usize = 8;

/// A running legacy shop.
pub struct RunningLegacy {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl RunningLegacy {
    /// The address it listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and lets requests in flight finish, waiting at most [`STOP_GRACE`].
    /// Once they have, the database is closed and the same file can be opened again by a new
    /// [`start`]. Dropping a `RunningLegacy` stops it the same way, without waiting.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        let mut server = self.server;
        match tokio::time::timeout(STOP_GRACE, &mut server).await {
            Ok(joined) => joined.context("the legacy shop's server task failed")??,
            Err(_) => {
                server.abort();
                tracing::warn!("legacy shop: stopped waiting for requests still in flight");
            }
        }
        Ok(())
    }
}

/// Opens (or creates) the shop's SQLite database at `db_path` and serves the shop on
/// `listen` until [`RunningLegacy::stop`].
pub async fn start(db_path: &Path, listen: SocketAddr) -> anyhow::Result<RunningLegacy> {
    let conn = open(db_path).with_context(|| format!("opening {}", db_path.display()))?;
    let db = Db {
        conn: Arc::new(Mutex::new(conn)),
        slots: Arc::new(Semaphore::new(DB_CALLS_MAX)),
    };
    // SO_REUSEADDR, so a stopped shop can be started again on the same port at once.
    let socket = match listen {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(listen)
        .with_context(|| format!("binding {listen}"))?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(db))
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, db = %db_path.display(), "legacy shop is serving");
    Ok(RunningLegacy { addr, stop, server })
}

/// The shop's one database connection, and the turns to use it.
#[derive(Clone)]
struct Db {
    conn: Arc<Mutex<Connection>>,
    slots: Arc<Semaphore>,
}

fn open(path: &Path) -> anyhow::Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS products (
             id          TEXT PRIMARY KEY,
             name        TEXT NOT NULL,
             description TEXT NOT NULL,
             category    TEXT NOT NULL,
             price_cents INTEGER NOT NULL,
             currency    TEXT NOT NULL,
             stock       INTEGER NOT NULL,
             updated_at  TEXT NOT NULL
         );
         CREATE INDEX IF NOT EXISTS products_by_name ON products (name, id);",
    )?;
    Ok(conn)
}

fn router(db: Db) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(json!({"status": "up"})) }))
        .route("/api/products", get(list_products).post(create_product))
        .route(
            "/api/products/{id}",
            get(get_product).put(put_product).delete(delete_product),
        )
        .route("/api/products/{id}/price", put(change_price))
        .fallback(|| async { LegacyError::not_found("no such URL") })
        .method_not_allowed_fallback(|| async {
            LegacyError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this URL",
            )
        })
        .layer(DefaultBodyLimit::max(BODY_MAX_BYTES))
        .with_state(db)
}

// ---------------------------------------------------------------------------------------------
// Errors: a status, a machine-readable code and a human message, as JSON.

#[derive(Debug)]
struct LegacyError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl LegacyError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for LegacyError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "legacy shop failed");
        }
        let body = json!({"code": self.code, "message": self.message});
        (self.status, Json(body)).into_response()
    }
}

impl From<rusqlite::Error> for LegacyError {
    fn from(e: rusqlite::Error) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "database", e.to_string())
    }
}

impl From<BytesRejection> for LegacyError {
    fn from(e: BytesRejection) -> Self {
        Self::new(e.status(), "invalid_body", e.body_text())
    }
}

type Answer = Result<Response, LegacyError>;

/// Runs `f` on the database off the async threads.
async fn with_db<T: Send + 'static>(
    db: &Db,
    f: impl FnOnce(&mut Connection) -> Result<T, LegacyError> + Send + 'static,
) -> Result<T, LegacyError> {
    let turn = db.slots.clone().acquire_owned().await.map_err(|_| {
        LegacyError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "the shop is stopping",
        )
    })?;
    let conn = db.conn.clone();
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        f(&mut conn.lock().unwrap_or_else(|p| p.into_inner()))
    })
    .await
    .map_err(|e| LegacyError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

// ---------------------------------------------------------------------------------------------
// Products

/// One row, as the shop answers it.
struct Product {
    id: String,
    name: String,
    description: String,
    category: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    updated_at: String,
}

const COLUMNS: &str = "id, name, description, category, price_cents, currency, stock, updated_at";

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        category: r.get(3)?,
        price_cents: r.get(4)?,
        currency: r.get(5)?,
        stock: r.get(6)?,
        updated_at: r.get(7)?,
    })
}

impl Product {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "category": self.category,
            // Cents are exact; the division gives the double nearest to the decimal price,
            // the same one a JSON reader makes of "19.99".
            "price": self.price_cents as f64 / 100.0,
            "currency": self.currency,
            "stock_total": self.stock,
            "in_stock": self.stock > 0,
            "updated_at": self.updated_at,
        })
    }
}

fn find(conn: &Connection, id: &str) -> Result<Option<Product>, LegacyError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM products WHERE id = ?1"),
            [id],
            product_row,
        )
        .optional()?)
}

fn found(conn: &Connection, id: &str) -> Result<Product, LegacyError> {
    find(conn, id)?.ok_or_else(|| LegacyError::not_found(format!("no product {id}")))
}

fn now() -> String {
    ficus_core::time::format_rfc3339_ms(ficus_store::now_ms())
}

fn check_id(id: &str) -> Result<(), LegacyError> {
    if id.is_empty()
        || id.len() > ID_MAX_BYTES
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(LegacyError::bad(
            "invalid_id",
            format!("a product id is 1-{ID_MAX_BYTES} of A-Z a-z 0-9 - _ ."),
        ));
    }
    Ok(())
}

fn check_text(field: &str, value: &str, required: bool, max: usize) -> Result<(), LegacyError> {
    if required && value.trim().is_empty() {
        return Err(LegacyError::bad(
            "invalid_field",
            format!("{field} must not be blank"),
        ));
    }
    if value.chars().nth(max).is_some() {
        return Err(LegacyError::bad(
            "invalid_field",
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// A price given as a JSON number, in cents: 0.00..=10 000.00, at most two decimals.
fn price_cents(price: &serde_json::Number) -> Result<i64, LegacyError> {
    let bad = || {
        LegacyError::bad(
            "invalid_price",
            format!(
                "price must be a number from 0 to {} with at most 2 decimals",
                PRICE_MAX_CENTS / 100
            ),
        )
    };
    let p = price.as_f64().filter(|p| p.is_finite()).ok_or_else(bad)?;
    let cents = (p * 100.0).round();
    if (p * 100.0 - cents).abs() > 1e-6 || !(0.0..=PRICE_MAX_CENTS as f64).contains(&cents) {
        return Err(bad());
    }
    Ok(cents as i64)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, LegacyError> {
    serde_json::from_slice(body)
        .map_err(|e| LegacyError::bad("invalid_body", format!("the body is not valid: {e}")))
}

/// A product as clients send it. Unknown fields are ignored, as this shop always did.
#[derive(Deserialize)]
struct ProductInput {
    name: String,
    #[serde(default)]
    description: String,
    category: String,
    price: serde_json::Number,
    currency: String,
    #[serde(default)]
    stock: Option<i64>,
}

impl ProductInput {
    /// Checks the input and makes the row it describes.
    fn into_product(self, id: String) -> Result<Product, LegacyError> {
        check_text("name", &self.name, true, NAME_MAX_CHARS)?;
        check_text(
            "description",
            &self.description,
            false,
            DESCRIPTION_MAX_CHARS,
        )?;
        check_text("category", &self.category, true, CATEGORY_MAX_CHARS)?;
        let price_cents = price_cents(&self.price)?;
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(LegacyError::bad(
                "invalid_currency",
                "currency must be three capital letters, like EUR",
            ));
        }
        let stock = self.stock.unwrap_or(0);
        if !(0..=STOCK_MAX).contains(&stock) {
            return Err(LegacyError::bad(
                "invalid_stock",
                format!("stock must be 0..={STOCK_MAX}"),
            ));
        }
        Ok(Product {
            id,
            name: self.name,
            description: self.description,
            category: self.category,
            price_cents,
            currency: self.currency,
            stock,
            updated_at: now(),
        })
    }
}

/// Inserts or replaces `p`; answers whether it was new. A new row past [`MAX_PRODUCTS`] is
/// refused.
fn upsert(conn: &mut Connection, p: &Product) -> Result<bool, LegacyError> {
    let tx = conn.transaction()?;
    let exists = find(&tx, &p.id)?.is_some();
    if !exists {
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM products", [], |r| r.get(0))?;
        if n >= MAX_PRODUCTS {
            return Err(LegacyError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "catalog_full",
                format!("the shop holds at most {MAX_PRODUCTS} products"),
            ));
        }
    }
    tx.execute(
        &format!(
            "INSERT OR REPLACE INTO products ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            p.id,
            p.name,
            p.description,
            p.category,
            p.price_cents,
            p.currency,
            p.stock,
            p.updated_at
        ],
    )?;
    tx.commit()?;
    Ok(!exists)
}

fn created(p: &Product) -> Response {
    let mut resp = (StatusCode::CREATED, Json(p.json())).into_response();
    if let Ok(v) = format!("/api/products/{}", p.id).parse() {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

#[derive(Deserialize)]
struct ListQuery {
    category: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_products(
    State(db): State<Db>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer {
    let Query(q) = query.map_err(|e| LegacyError::bad("invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
    if !(1..=LIST_MAX_LIMIT).contains(&limit) {
        return Err(LegacyError::bad(
            "invalid_query",
            format!("limit must be 1..={LIST_MAX_LIMIT}"),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset > LIST_MAX_OFFSET {
        return Err(LegacyError::bad(
            "invalid_query",
            format!("offset must be at most {LIST_MAX_OFFSET}"),
        ));
    }
    let category = q.category.filter(|c| !c.is_empty());
    if let Some(c) = &category {
        check_text("category", c, true, CATEGORY_MAX_CHARS)?;
    }
    with_db(&db, move |conn| {
        // `?1 IS NULL` makes one statement serve both the filtered and the whole list.
        let filter = "WHERE (?1 IS NULL OR category = ?1)";
        let total: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM products {filter}"),
            [&category],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM products {filter} ORDER BY name, id LIMIT ?2 OFFSET ?3"
        ))?;
        let products = stmt
            .query_map(params![category, limit, offset], product_row)?
            .map(|p| p.map(|p| p.json()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Json(json!({"total": total, "products": products})).into_response())
    })
    .await
}

async fn get_product(State(db): State<Db>, UrlPath(id): UrlPath<String>) -> Answer {
    check_id(&id)?;
    with_db(&db, move |conn| {
        Ok(Json(found(conn, &id)?.json()).into_response())
    })
    .await
}

async fn create_product(State(db): State<Db>, body: Result<Bytes, BytesRejection>) -> Answer {
    let input: ProductInput = parse(&body?)?;
    let product = input.into_product(uuid::Uuid::now_v7().to_string())?;
    with_db(&db, move |conn| {
        upsert(conn, &product)?;
        Ok(created(&product))
    })
    .await
}

/// Creates or replaces the product under `id` (201 when new, 200 when replaced).
async fn put_product(
    State(db): State<Db>,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    check_id(&id)?;
    let input: ProductInput = parse(&body?)?;
    let product = input.into_product(id)?;
    with_db(&db, move |conn| {
        if upsert(conn, &product)? {
            Ok(created(&product))
        } else {
            Ok(Json(product.json()).into_response())
        }
    })
    .await
}

#[derive(Deserialize)]
struct PriceInput {
    price: serde_json::Number,
}

async fn change_price(
    State(db): State<Db>,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    check_id(&id)?;
    let input: PriceInput = parse(&body?)?;
    let cents = price_cents(&input.price)?;
    with_db(&db, move |conn| {
        let n = conn.execute(
            "UPDATE products SET price_cents = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, cents, now()],
        )?;
        if n == 0 {
            return Err(LegacyError::not_found(format!("no product {id}")));
        }
        Ok(Json(found(conn, &id)?.json()).into_response())
    })
    .await
}

async fn delete_product(State(db): State<Db>, UrlPath(id): UrlPath<String>) -> Answer {
    check_id(&id)?;
    with_db(&db, move |conn| {
        match conn.execute("DELETE FROM products WHERE id = ?1", [&id])? {
            0 => Err(LegacyError::not_found(format!("no product {id}"))),
            _ => Ok(StatusCode::NO_CONTENT.into_response()),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_exact_cents_within_bounds() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(price_cents(&n("19.99")).unwrap(), 1999);
        assert_eq!(price_cents(&n("0")).unwrap(), 0);
        assert_eq!(price_cents(&n("10000")).unwrap(), 1_000_000);
        for bad in ["-1", "10000.01", "1.999", "1e300"] {
            assert!(price_cents(&n(bad)).is_err(), "{bad}");
        }
        // The answer is the same JSON number a client would parse from the decimal text.
        let p = Product {
            id: "p".into(),
            name: "n".into(),
            description: String::new(),
            category: "c".into(),
            price_cents: 1999,
            currency: "EUR".into(),
            stock: 0,
            updated_at: now(),
        };
        assert_eq!(
            p.json()["price"],
            serde_json::from_str::<Value>("19.99").unwrap()
        );
    }
}
