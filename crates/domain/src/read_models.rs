//! The reference domain's read models, each a [`SqliteProjection`] in its own file:
//!
//! - `catalog`: product details (one denormalized row per product, stock per warehouse) and
//!   product search (FTS5 full text over name and description, category and price filters);
//! - `orders`: a customer's order summaries (newest first) and order analytics (placed orders
//!   and their totals per UTC day of placement and currency).
//!
//! Each projection reacts only to its own event types and decodes them with the one codec: an
//! event of a known type that does not decode stops the projection loudly; event types it does
//! not know are not its business and are passed over.

use ficus_core::codec::decode;
use ficus_core::RecordedEvent;
use ficus_runtime::{ProjectionError, SqliteProjection};
use ficus_store::sqlite::unavailable;
use ficus_store::StoreError;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::order::OrderEvent;
use crate::product::ProductEvent;

pub(crate) const PRODUCT_EVENT_TYPES: &[&str] = &[
    "ProductCreated",
    "ProductPriceChanged",
    "StockAdjusted",
    "ProductDeleted",
    "StockReserved",
    "StockReleased",
];
pub(crate) const ORDER_EVENT_TYPES: &[&str] = &[
    "OrderCreated",
    "OrderItemAdded",
    "OrderPlaced",
    "OrderCancelled",
    "OrderFulfilmentPending",
    "OrderConfirmed",
    "OrderRejected",
];

pub(crate) fn decode_if<E: ficus_core::DomainEvent>(
    event: &RecordedEvent,
    prefix: &str,
    types: &[&str],
) -> Result<Option<E>, ProjectionError> {
    if !event.stream_id.as_str().starts_with(prefix) || !types.contains(&event.event_type.as_str())
    {
        return Ok(None);
    }
    Ok(Some(decode(
        event.event_type.as_str(),
        event.schema_version,
        &event.payload,
    )?))
}

/// Product details and product search.
pub struct CatalogProjection;

impl SqliteProjection for CatalogProjection {
    fn name(&self) -> &str {
        "catalog"
    }

    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS products (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL,
            description   TEXT NOT NULL,
            category      TEXT NOT NULL,
            price_minor   INTEGER NOT NULL,
            currency      TEXT NOT NULL,
            seller_id     TEXT NOT NULL,
            stock_total   INTEGER NOT NULL DEFAULT 0,
            deleted       INTEGER NOT NULL DEFAULT 0,
            created_at_ms INTEGER NOT NULL,
            updated_at_ms INTEGER NOT NULL,
            version       INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS products_category_price ON products (category, price_minor);
        CREATE INDEX IF NOT EXISTS products_price ON products (price_minor);
        CREATE TABLE IF NOT EXISTS product_stock (
            product_id TEXT NOT NULL,
            warehouse  TEXT NOT NULL,
            quantity   INTEGER NOT NULL,
            PRIMARY KEY (product_id, warehouse)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS product_prices (
            product_id  TEXT NOT NULL,
            version     INTEGER NOT NULL,
            price_minor INTEGER NOT NULL,
            at_ms       INTEGER NOT NULL,
            PRIMARY KEY (product_id, version)
        ) WITHOUT ROWID;
        CREATE VIRTUAL TABLE IF NOT EXISTS products_fts USING fts5 (
            id UNINDEXED, name, description, tokenize = 'unicode61 remove_diacritics 2'
        );"
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS products; DROP TABLE IF EXISTS product_stock;
         DROP TABLE IF EXISTS product_prices; DROP TABLE IF EXISTS products_fts;"
    }

    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let Some(ev) = decode_if::<ProductEvent>(event, "product-", PRODUCT_EVENT_TYPES)? else {
            return Ok(());
        };
        let version = event.version as i64;
        match ev {
            ProductEvent::ProductCreated {
                product_id,
                seller_id,
                name,
                description,
                category,
                price,
                currency,
                at_ms,
            } => {
                tx.execute(
                    "INSERT INTO products (id, name, description, category, price_minor, currency,
                        seller_id, created_at_ms, updated_at_ms, version)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
                    params![
                        product_id,
                        name,
                        description,
                        category,
                        price.minor(),
                        currency.as_str(),
                        seller_id,
                        at_ms,
                        version
                    ],
                )?;
                tx.execute(
                    "INSERT INTO products_fts (id, name, description) VALUES (?1, ?2, ?3)",
                    params![product_id, name, description],
                )?;
                tx.execute(
                    "INSERT INTO product_prices (product_id, version, price_minor, at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![product_id, version, price.minor(), at_ms],
                )?;
            }
            ProductEvent::ProductPriceChanged {
                product_id,
                new_price,
                at_ms,
                ..
            } => {
                tx.execute(
                    "UPDATE products SET price_minor = ?2, updated_at_ms = ?3, version = ?4
                     WHERE id = ?1",
                    params![product_id, new_price.minor(), at_ms, version],
                )?;
                tx.execute(
                    "INSERT INTO product_prices (product_id, version, price_minor, at_ms)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![product_id, version, new_price.minor(), at_ms],
                )?;
            }
            ProductEvent::StockAdjusted {
                product_id,
                warehouse,
                new_quantity,
                at_ms,
                ..
            } => {
                tx.execute(
                    "INSERT INTO product_stock (product_id, warehouse, quantity) VALUES (?1, ?2, ?3)
                     ON CONFLICT (product_id, warehouse) DO UPDATE SET quantity = ?3",
                    params![product_id, warehouse, new_quantity],
                )?;
                tx.execute(
                    "UPDATE products SET updated_at_ms = ?2, version = ?3,
                        stock_total = (SELECT COALESCE(SUM(quantity), 0) FROM product_stock
                                       WHERE product_id = ?1)
                     WHERE id = ?1",
                    params![product_id, at_ms, version],
                )?;
            }
            ProductEvent::StockReserved {
                product_id,
                allocations,
                at_ms,
                ..
            }
            | ProductEvent::StockReleased {
                product_id,
                allocations,
                at_ms,
                ..
            } => {
                for a in &allocations {
                    tx.execute(
                        "INSERT INTO product_stock (product_id, warehouse, quantity)
                         VALUES (?1, ?2, ?3)
                         ON CONFLICT (product_id, warehouse) DO UPDATE SET quantity = ?3",
                        params![product_id, a.warehouse, a.new_quantity],
                    )?;
                }
                tx.execute(
                    "UPDATE products SET updated_at_ms = ?2, version = ?3,
                        stock_total = (SELECT COALESCE(SUM(quantity), 0) FROM product_stock
                                       WHERE product_id = ?1)
                     WHERE id = ?1",
                    params![product_id, at_ms, version],
                )?;
            }
            ProductEvent::ProductDeleted {
                product_id, at_ms, ..
            } => {
                tx.execute(
                    "UPDATE products SET deleted = 1, updated_at_ms = ?2, version = ?3
                     WHERE id = ?1",
                    params![product_id, at_ms, version],
                )?;
                tx.execute(
                    "DELETE FROM products_fts WHERE id = ?1",
                    params![product_id],
                )?;
            }
        }
        Ok(())
    }
}

/// One product as the query side serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub category: String,
    pub price_minor: i64,
    pub currency: String,
    pub seller_id: String,
    pub stock_total: i64,
    pub deleted: bool,
    pub updated_at_ms: i64,
    /// The product stream's version this row reflects.
    pub version: u64,
}

const PRODUCT_COLUMNS: &str = "p.id, p.name, p.description, p.category, p.price_minor, \
    p.currency, p.seller_id, p.stock_total, p.deleted, p.updated_at_ms, p.version";

fn product_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ProductView> {
    Ok(ProductView {
        id: r.get(0)?,
        name: r.get(1)?,
        description: r.get(2)?,
        category: r.get(3)?,
        price_minor: r.get(4)?,
        currency: r.get(5)?,
        seller_id: r.get(6)?,
        stock_total: r.get(7)?,
        deleted: r.get::<_, i64>(8)? != 0,
        updated_at_ms: r.get(9)?,
        version: r.get::<_, i64>(10)? as u64,
    })
}

/// Product details by id (deleted products included, flagged).
pub fn get_product(conn: &Connection, id: &str) -> Result<Option<ProductView>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM products p WHERE p.id = ?1"
    ))
    .and_then(|mut s| s.query_row([id], product_row).optional())
    .map_err(unavailable)
}

/// Stock per warehouse of one product, by warehouse id.
pub fn product_stock(conn: &Connection, id: &str) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT warehouse, quantity FROM product_stock WHERE product_id = ?1 ORDER BY warehouse",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Most price points a product's history answers (the newest).
pub const PRICE_HISTORY_MAX: u32 = 20;
/// Most related products (same category) answered for one product.
pub const RELATED_MAX: u32 = 5;

/// One price a product had, from the event (version) that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricePoint {
    pub price_minor: i64,
    pub at_ms: i64,
    pub version: u64,
}

/// A product's prices, newest first, at most [`PRICE_HISTORY_MAX`].
pub fn price_history(conn: &Connection, id: &str) -> Result<Vec<PricePoint>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT price_minor, at_ms, version FROM product_prices WHERE product_id = ?1
             ORDER BY version DESC LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![id, PRICE_HISTORY_MAX], |r| {
            Ok(PricePoint {
                price_minor: r.get(0)?,
                at_ms: r.get(1)?,
                version: r.get::<_, i64>(2)? as u64,
            })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Live products of `category` other than `id`, by id, at most [`RELATED_MAX`].
pub fn related_products(
    conn: &Connection,
    id: &str,
    category: &str,
) -> Result<Vec<ProductView>, StoreError> {
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM products p
         WHERE p.category = ?1 AND p.id <> ?2 AND p.deleted = 0 ORDER BY p.id LIMIT ?3"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(params![category, id, RELATED_MAX], product_row)
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Everything the product views are shaped from: the details, stock per warehouse, price
/// history and related products, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductPage {
    pub product: ProductView,
    pub stock: Vec<(String, i64)>,
    pub price_history: Vec<PricePoint>,
    pub related: Vec<ProductView>,
}

/// The [`ProductPage`] of a product (deleted ones included, flagged in `product`).
pub fn product_page(conn: &Connection, id: &str) -> Result<Option<ProductPage>, StoreError> {
    let Some(product) = get_product(conn, id)? else {
        return Ok(None);
    };
    Ok(Some(ProductPage {
        stock: product_stock(conn, id)?,
        price_history: price_history(conn, id)?,
        related: related_products(conn, id, &product.category)?,
        product,
    }))
}

/// Most products one search page returns.
pub const SEARCH_MAX_LIMIT: u32 = 100;
/// Deepest offset a search may page to.
pub const SEARCH_MAX_OFFSET: u32 = 10_000;
/// Most words of free text a search uses.
pub const SEARCH_MAX_TERMS: usize = 16;

/// A product search. Every filter is optional; deleted products are never found.
#[derive(Debug, Clone, Default)]
pub struct ProductSearch {
    /// Free text, matched word by word (each word a prefix) against name and description.
    pub text: Option<String>,
    pub category: Option<String>,
    pub min_price_minor: Option<i64>,
    pub max_price_minor: Option<i64>,
    pub limit: u32,
    pub offset: u32,
}

/// The words of free text: runs of alphanumeric characters. Both read-model backends split
/// search text (and the PostgreSQL one product text) with this one rule.
pub(crate) fn text_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
}

/// Turns free text into a safe FTS5 query: each word quoted, as a prefix, all required.
/// `None` when the text has no word at all.
fn fts_query(text: &str) -> Option<String> {
    let terms: Vec<String> = text_words(text)
        .take(SEARCH_MAX_TERMS)
        .map(|t| format!("\"{t}\"*"))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// Matching products (best text match first, then by name) and the total number of matches.
pub fn search_products(
    conn: &Connection,
    q: &ProductSearch,
) -> Result<(u64, Vec<ProductView>), StoreError> {
    let mut filters = vec!["p.deleted = 0".to_string()];
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let fts = q.text.as_deref().and_then(fts_query);
    let from = if let Some(fts) = &fts {
        args.push(fts.clone().into());
        filters.push(format!("products_fts MATCH ?{}", args.len()));
        "products_fts JOIN products p ON p.id = products_fts.id"
    } else {
        "products p"
    };
    if let Some(c) = &q.category {
        args.push(c.clone().into());
        filters.push(format!("p.category = ?{}", args.len()));
    }
    if let Some(min) = q.min_price_minor {
        args.push(min.into());
        filters.push(format!("p.price_minor >= ?{}", args.len()));
    }
    if let Some(max) = q.max_price_minor {
        args.push(max.into());
        filters.push(format!("p.price_minor <= ?{}", args.len()));
    }
    let filter = filters.join(" AND ");
    let order = if fts.is_some() {
        "products_fts.rank, p.name, p.id"
    } else {
        "p.name, p.id"
    };
    let total: i64 = conn
        .query_row(
            &format!("SELECT COUNT(*) FROM {from} WHERE {filter}"),
            rusqlite::params_from_iter(args.iter()),
            |r| r.get(0),
        )
        .map_err(unavailable)?;
    let mut page_args = args.clone();
    page_args.push((q.limit.min(SEARCH_MAX_LIMIT) as i64).into());
    page_args.push((q.offset.min(SEARCH_MAX_OFFSET) as i64).into());
    let n = args.len();
    let sql = format!(
        "SELECT {PRODUCT_COLUMNS} FROM {from} WHERE {filter} ORDER BY {order} \
         LIMIT ?{} OFFSET ?{}",
        n + 1,
        n + 2
    );
    let mut stmt = conn.prepare(&sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(page_args.iter()), product_row)
        .map_err(unavailable)?;
    let products = rows.collect::<Result<_, _>>().map_err(unavailable)?;
    Ok((total as u64, products))
}

/// Order summaries and order analytics.
pub struct OrdersProjection;

impl SqliteProjection for OrdersProjection {
    fn name(&self) -> &str {
        "orders"
    }

    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS order_summaries (
            id            TEXT PRIMARY KEY,
            customer_id   TEXT NOT NULL,
            status        TEXT NOT NULL,
            total_minor   INTEGER NOT NULL DEFAULT 0,
            currency      TEXT,
            item_count    INTEGER NOT NULL DEFAULT 0,
            created_at_ms INTEGER NOT NULL,
            placed_at_ms  INTEGER,
            version       INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS order_summaries_customer
            ON order_summaries (customer_id, created_at_ms DESC, id DESC);
        CREATE INDEX IF NOT EXISTS order_summaries_placed
            ON order_summaries (placed_at_ms) WHERE placed_at_ms IS NOT NULL;
        CREATE TABLE IF NOT EXISTS order_buyers (
            product_id  TEXT NOT NULL,
            customer_id TEXT NOT NULL,
            PRIMARY KEY (product_id, customer_id)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS order_analytics_daily (
            day         INTEGER NOT NULL,
            currency    TEXT NOT NULL,
            orders      INTEGER NOT NULL,
            total_minor INTEGER NOT NULL,
            PRIMARY KEY (day, currency)
        ) WITHOUT ROWID;"
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS order_summaries; DROP TABLE IF EXISTS order_analytics_daily;
         DROP TABLE IF EXISTS order_buyers;"
    }

    fn apply(&self, tx: &Transaction<'_>, event: &RecordedEvent) -> Result<(), ProjectionError> {
        let Some(ev) = decode_if::<OrderEvent>(event, "order-", ORDER_EVENT_TYPES)? else {
            return Ok(());
        };
        let version = event.version as i64;
        match ev {
            OrderEvent::OrderCreated {
                order_id,
                customer_id,
                currency,
                at_ms,
            } => {
                tx.execute(
                    "INSERT INTO order_summaries (id, customer_id, status, currency, created_at_ms,
                        version) VALUES (?1, ?2, 'draft', ?3, ?4, ?5)",
                    params![
                        order_id,
                        customer_id,
                        currency.as_ref().map(|c| c.as_str()),
                        at_ms,
                        version
                    ],
                )?;
            }
            OrderEvent::OrderItemAdded {
                order_id,
                product_id,
                quantity,
                currency,
                line_total,
                ..
            } => {
                // Who ordered what, for "notify every customer who bought a product".
                tx.execute(
                    "INSERT OR IGNORE INTO order_buyers (product_id, customer_id)
                     SELECT ?2, customer_id FROM order_summaries WHERE id = ?1",
                    params![order_id, product_id],
                )?;
                tx.execute(
                    "UPDATE order_summaries SET total_minor = total_minor + ?2,
                        item_count = item_count + ?3, currency = COALESCE(currency, ?4),
                        version = ?5
                     WHERE id = ?1",
                    params![
                        order_id,
                        line_total.minor(),
                        quantity,
                        currency.as_str(),
                        version
                    ],
                )?;
            }
            OrderEvent::OrderPlaced {
                order_id,
                total,
                item_count,
                at_ms,
                ..
            } => {
                tx.execute(
                    "UPDATE order_summaries SET status = 'placed', total_minor = ?2,
                        item_count = ?3, placed_at_ms = ?4, version = ?5
                     WHERE id = ?1",
                    params![order_id, total.minor(), item_count, at_ms, version],
                )?;
                let currency: Option<String> = tx
                    .query_row(
                        "SELECT currency FROM order_summaries WHERE id = ?1",
                        [&order_id],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                tx.execute(
                    "INSERT INTO order_analytics_daily (day, currency, orders, total_minor)
                     VALUES (?1, ?2, 1, ?3)
                     ON CONFLICT (day, currency) DO UPDATE
                     SET orders = orders + 1, total_minor = total_minor + ?3",
                    params![
                        ficus_core::time::day_of_ms(at_ms),
                        currency.unwrap_or_default(),
                        total.minor()
                    ],
                )?;
            }
            OrderEvent::OrderCancelled { order_id, .. } => {
                tx.execute(
                    "UPDATE order_summaries SET status = 'cancelled', version = ?2 WHERE id = ?1",
                    params![order_id, version],
                )?;
            }
            OrderEvent::OrderFulfilmentPending { order_id, .. }
            | OrderEvent::OrderConfirmed { order_id, .. }
            | OrderEvent::OrderRejected { order_id, .. } => {
                let status = match event.event_type.as_str() {
                    "OrderFulfilmentPending" => "pending",
                    "OrderConfirmed" => "confirmed",
                    _ => "rejected",
                };
                tx.execute(
                    "UPDATE order_summaries SET status = ?3, version = ?2 WHERE id = ?1",
                    params![order_id, version, status],
                )?;
            }
        }
        Ok(())
    }
}

/// Most order summaries one page returns.
pub const ORDERS_MAX_LIMIT: u32 = 50;

/// One row of a customer's order list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderSummary {
    pub id: String,
    pub status: String,
    pub total_minor: i64,
    pub currency: Option<String>,
    pub item_count: u32,
    pub created_at_ms: i64,
}

/// A customer's orders, newest first.
pub fn customer_orders(
    conn: &Connection,
    customer_id: &str,
    limit: u32,
) -> Result<Vec<OrderSummary>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, status, total_minor, currency, item_count, created_at_ms
             FROM order_summaries WHERE customer_id = ?1
             ORDER BY created_at_ms DESC, id DESC LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![customer_id, limit.min(ORDERS_MAX_LIMIT)], |r| {
            Ok(OrderSummary {
                id: r.get(0)?,
                status: r.get(1)?,
                total_minor: r.get(2)?,
                currency: r.get(3)?,
                item_count: r.get(4)?,
                created_at_ms: r.get(5)?,
            })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Longest date range an analytics query may cover, in days.
pub const ANALYTICS_MAX_DAYS: i64 = 3660;

/// Placed orders and their total on one UTC day, in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyOrders {
    /// Days since 1970-01-01.
    pub day: i64,
    pub currency: String,
    pub orders: u64,
    pub total_minor: i64,
}

/// Per-day totals of placed orders for days `from..=to` (day numbers), oldest first. Days
/// with no placed order are absent.
pub fn order_analytics(
    conn: &Connection,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<DailyOrders>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT day, currency, orders, total_minor FROM order_analytics_daily
             WHERE day BETWEEN ?1 AND ?2 ORDER BY day, currency",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![from_day, to_day], |r| {
            Ok(DailyOrders {
                day: r.get(0)?,
                currency: r.get(1)?,
                orders: r.get::<_, i64>(2)? as u64,
                total_minor: r.get(3)?,
            })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Most rows a bulk job's planner reads from a read model (one bulk job's item limit).
pub const PLAN_MAX_ROWS: u32 = 10_000;

/// Ids and prices of a seller's live products in a category, by id.
pub fn seller_products_in_category(
    conn: &Connection,
    seller_id: &str,
    category: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, price_minor FROM products
             WHERE seller_id = ?1 AND category = ?2 AND deleted = 0 ORDER BY id LIMIT ?3",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![seller_id, category, PLAN_MAX_ROWS + 1], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// Customers who ever ordered `product_id`, by id.
pub fn buyers_of_product(conn: &Connection, product_id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT customer_id FROM order_buyers WHERE product_id = ?1 ORDER BY customer_id
             LIMIT ?2",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![product_id, PLAN_MAX_ROWS + 1], |r| r.get(0))
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

/// One placed order, as an export lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedOrder {
    pub id: String,
    pub customer_id: String,
    pub total_minor: i64,
    pub currency: Option<String>,
    pub placed_at_ms: i64,
}

/// Placed orders of one UTC day, in placement order.
pub fn placed_orders_on_day(conn: &Connection, day: i64) -> Result<Vec<PlacedOrder>, StoreError> {
    let from = day * ficus_core::time::MS_PER_DAY;
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, customer_id, total_minor, currency, placed_at_ms FROM order_summaries
             WHERE placed_at_ms >= ?1 AND placed_at_ms < ?2 ORDER BY placed_at_ms, id",
        )
        .map_err(unavailable)?;
    let rows = stmt
        .query_map(params![from, from + ficus_core::time::MS_PER_DAY], |r| {
            Ok(PlacedOrder {
                id: r.get(0)?,
                customer_id: r.get(1)?,
                total_minor: r.get(2)?,
                currency: r.get(3)?,
                placed_at_ms: r.get(4)?,
            })
        })
        .map_err(unavailable)?;
    rows.collect::<Result<_, _>>().map_err(unavailable)
}

#[cfg(test)]
mod tests {
    use super::fts_query;

    #[test]
    fn fts_queries_are_quoted_words() {
        assert_eq!(fts_query("red shoe").as_deref(), Some("\"red\"* \"shoe\"*"));
        assert_eq!(
            fts_query("\"; DROP TABLE x; -- NEAR(").as_deref(),
            Some("\"DROP\"* \"TABLE\"* \"x\"* \"NEAR\"*")
        );
        assert_eq!(fts_query("  ***  "), None);
    }
}
