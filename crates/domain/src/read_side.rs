//! The shop's query side, on either backend: one set of queries that reads the SQLite read
//! models ([`crate::read_models`]) of an embedded deployment or the PostgreSQL ones
//! ([`crate::pg_read_models`]) of a scale-out deployment, and answers with the same values and
//! the position they reflect.
//!
//! Each answer is read in one transaction together with the read model's checkpoint, so the
//! position is exactly the one the answer reflects (a `REPEATABLE READ` snapshot on
//! PostgreSQL, where another process's runner may commit at any moment).

use std::future::Future;
use std::pin::Pin;

use ficus_core::Position;
use ficus_runtime::pg_projection::begin_read;
use ficus_runtime::{PgProjectionHandle, ProjectionHandle, ReadModelHandle};
use ficus_store::postgres::{no_answer, unavailable};
use ficus_store::StoreError;
use tokio_postgres::error::SqlState;
use tokio_postgres::{IsolationLevel, Transaction};

use crate::pg_read_models as pg;
use crate::read_models::{
    self as rm, DailyOrders, OrderSummary, PlacedOrder, ProductSearch, ProductView,
};

/// Where the shop's read models live and are read.
#[derive(Clone)]
pub enum ShopReadSide {
    /// Embedded: SQLite files run by this process's [`ficus_runtime::ProjectionRunner`]s.
    Sqlite {
        catalog: ProjectionHandle,
        orders: ProjectionHandle,
    },
    /// Scale-out: PostgreSQL tables applied by whichever process's
    /// [`ficus_runtime::PgProjectionRunner`] is active (this one or another).
    Postgres {
        catalog: PgProjectionHandle,
        orders: PgProjectionHandle,
    },
}

/// A PostgreSQL read inside a transaction: boxed so that it may borrow the transaction.
type PgRead<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => unavailable(format!("{e}: {db}")),
        None => unavailable(e),
    }
}

/// Runs `read` in a read-only `REPEATABLE READ` transaction on `handle`'s pool and returns its
/// answer with the checkpoint of the same snapshot; an empty answer at position 0. The whole
/// transaction is bounded by the handle's read timeout: a query blocked on a lock or on a
/// connection that stopped answering answers unavailable (503) and its connection is closed.
async fn pg_read<T: Default>(
    handle: &PgProjectionHandle,
    read: impl for<'a> FnOnce(&'a Transaction<'a>) -> PgRead<'a, T>,
) -> Result<(T, Position), StoreError> {
    let mut conn = handle.pool().get().await.map_err(unavailable)?;
    let limit = handle.read_timeout();
    let answer = tokio::time::timeout(limit, pg_read_on(&mut conn, handle.name(), read)).await;
    answer.unwrap_or_else(|_| Err(no_answer(conn, limit)))
}

async fn pg_read_on<T: Default>(
    conn: &mut deadpool_postgres::Object,
    name: &str,
    read: impl for<'a> FnOnce(&'a Transaction<'a>) -> PgRead<'a, T>,
) -> Result<(T, Position), StoreError> {
    // The driver's own transaction (not the pool's wrapper), which the queries take.
    let client: &mut tokio_postgres::Client = conn;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_err)?;
    // The checkpoint, and the serving copy's tables first on the search path: a blue/green
    // rebuild's switch is one row update, so this snapshot reads the old copy or the new one.
    let position = match begin_read(&tx, name).await {
        Ok(p) => p,
        // No runner has created the checkpoint table yet: nothing is applied.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => 0,
        Err(e) => return Err(pg_err(e)),
    };
    // At position 0 the read model is empty by definition (its tables may not even exist
    // yet: the first runner creates them when it takes over, and a rebuild recreates them
    // empty in the same transaction that resets the checkpoint).
    if position == 0 {
        return Ok((T::default(), 0));
    }
    let out = read(&tx).await?;
    tx.commit().await.map_err(pg_err)?;
    Ok((out, position))
}

impl ShopReadSide {
    /// The catalog read model (product details and search).
    pub fn catalog(&self) -> ReadModelHandle {
        match self {
            ShopReadSide::Sqlite { catalog, .. } => ReadModelHandle::Sqlite(catalog.clone()),
            ShopReadSide::Postgres { catalog, .. } => ReadModelHandle::Postgres(catalog.clone()),
        }
    }

    /// The orders read model (summaries, analytics, buyers).
    pub fn orders(&self) -> ReadModelHandle {
        match self {
            ShopReadSide::Sqlite { orders, .. } => ReadModelHandle::Sqlite(orders.clone()),
            ShopReadSide::Postgres { orders, .. } => ReadModelHandle::Postgres(orders.clone()),
        }
    }

    pub fn projections(&self) -> [ReadModelHandle; 2] {
        [self.catalog(), self.orders()]
    }

    /// Product details by id (deleted products included, flagged).
    pub async fn get_product(
        &self,
        id: String,
    ) -> Result<(Option<ProductView>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { catalog, .. } => {
                catalog.db().query(move |c| rm::get_product(c, &id)).await
            }
            ShopReadSide::Postgres { catalog, .. } => {
                pg_read(catalog, move |tx| {
                    Box::pin(async move { pg::get_product(tx, &id).await })
                })
                .await
            }
        }
    }

    /// What the product views are shaped from (details, stock, price history, related
    /// products), read in one snapshot.
    pub async fn product_page(
        &self,
        id: String,
    ) -> Result<(Option<rm::ProductPage>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { catalog, .. } => {
                catalog.db().query(move |c| rm::product_page(c, &id)).await
            }
            ShopReadSide::Postgres { catalog, .. } => {
                pg_read(catalog, move |tx| {
                    Box::pin(async move { pg::product_page(tx, &id).await })
                })
                .await
            }
        }
    }

    /// Matching products and the total number of matches.
    pub async fn search_products(
        &self,
        q: ProductSearch,
    ) -> Result<((u64, Vec<ProductView>), Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { catalog, .. } => {
                catalog
                    .db()
                    .query(move |c| rm::search_products(c, &q))
                    .await
            }
            ShopReadSide::Postgres { catalog, .. } => {
                pg_read(catalog, move |tx| {
                    Box::pin(async move { pg::search_products(tx, &q).await })
                })
                .await
            }
        }
    }

    /// A seller's live products in a category (id, price), by id.
    pub async fn seller_products_in_category(
        &self,
        seller_id: String,
        category: String,
    ) -> Result<(Vec<(String, i64)>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { catalog, .. } => {
                catalog
                    .db()
                    .query(move |c| rm::seller_products_in_category(c, &seller_id, &category))
                    .await
            }
            ShopReadSide::Postgres { catalog, .. } => {
                pg_read(catalog, move |tx| {
                    Box::pin(async move {
                        pg::seller_products_in_category(tx, &seller_id, &category).await
                    })
                })
                .await
            }
        }
    }

    /// A customer's orders, newest first.
    pub async fn customer_orders(
        &self,
        customer_id: String,
        limit: u32,
    ) -> Result<(Vec<OrderSummary>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { orders, .. } => {
                orders
                    .db()
                    .query(move |c| rm::customer_orders(c, &customer_id, limit))
                    .await
            }
            ShopReadSide::Postgres { orders, .. } => {
                pg_read(orders, move |tx| {
                    Box::pin(async move { pg::customer_orders(tx, &customer_id, limit).await })
                })
                .await
            }
        }
    }

    /// Per-day totals of placed orders for days `from..=to`, oldest first.
    pub async fn order_analytics(
        &self,
        from_day: i64,
        to_day: i64,
    ) -> Result<(Vec<DailyOrders>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { orders, .. } => {
                orders
                    .db()
                    .query(move |c| rm::order_analytics(c, from_day, to_day))
                    .await
            }
            ShopReadSide::Postgres { orders, .. } => {
                pg_read(orders, move |tx| {
                    Box::pin(async move { pg::order_analytics(tx, from_day, to_day).await })
                })
                .await
            }
        }
    }

    /// Customers who ever ordered `product_id`, by id.
    pub async fn buyers_of_product(
        &self,
        product_id: String,
    ) -> Result<(Vec<String>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { orders, .. } => {
                orders
                    .db()
                    .query(move |c| rm::buyers_of_product(c, &product_id))
                    .await
            }
            ShopReadSide::Postgres { orders, .. } => {
                pg_read(orders, move |tx| {
                    Box::pin(async move { pg::buyers_of_product(tx, &product_id).await })
                })
                .await
            }
        }
    }

    /// Placed orders of one UTC day, in placement order.
    pub async fn placed_orders_on_day(
        &self,
        day: i64,
    ) -> Result<(Vec<PlacedOrder>, Position), StoreError> {
        match self {
            ShopReadSide::Sqlite { orders, .. } => {
                orders
                    .db()
                    .query(move |c| rm::placed_orders_on_day(c, day))
                    .await
            }
            ShopReadSide::Postgres { orders, .. } => {
                pg_read(orders, move |tx| {
                    Box::pin(async move { pg::placed_orders_on_day(tx, day).await })
                })
                .await
            }
        }
    }
}
