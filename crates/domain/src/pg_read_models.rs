//! The PostgreSQL twins of [`crate::read_models`], for a deployment where several `ficus`
//! processes share one PostgreSQL: the same read models, the same queries, the same answers.
//!
//! - [`PgCatalogProjection`]: product details (`rm_catalog_products`, stock per warehouse in
//!   `rm_catalog_product_stock`) and product search (a `tsvector` column with a GIN index,
//!   corpus figures in `rm_catalog_search_stats`);
//! - [`PgOrdersProjection`]: a customer's order summaries (`rm_orders_summaries`), order
//!   analytics per UTC day and currency (`rm_orders_analytics_daily`) and who bought what
//!   (`rm_orders_buyers`).
//!
//! Every table is prefixed `rm_` so it cannot clash with Ficus's own `ficus_*` tables in the
//! same schema. Money is integer minor units (`bigint`) end to end.
//!
//! # Same answers as SQLite
//!
//! Text columns are `COLLATE "C"`, so ordering and equality are bytewise, as SQLite's default
//! `BINARY` collation (a database collation such as `en_US` would order names differently).
//!
//! Search mirrors SQLite's FTS5 `unicode61 remove_diacritics 2` tokenizer and its `bm25` rank
//! rather than PostgreSQL's own text-search parser, stemming and `ts_rank`, which would find and
//! order other products:
//!
//! - the text of name and description is split into tokens in Rust ([`search_tokens`]): runs
//!   of alphanumeric characters, lower-cased, with the diacritics of Latin-1 and Latin
//!   Extended-A letters removed (`é` → `e`); the query text goes through the same function, and
//!   each query word matches any token it is a prefix of, all words required (FTS5's
//!   `"word"* "word"*`);
//! - the `tsvector` holds the same tokens (cut to [`LEXEME_MAX_CHARS`] so that no token can
//!   exceed PostgreSQL's lexeme limit) and serves as the GIN-indexed pre-filter, a prefix
//!   `tsquery` (`'word':* & ...`); the exact prefix test on the full tokens rechecks it;
//! - the rank is FTS5's `bm25` (k1 = 1.2, b = 0.75, every column weight 1) computed in SQL
//!   from the tokens, with the corpus figures (live products, their tokens) FTS5 uses; then
//!   name, then id, as in SQLite.
//!
//! Known differences: diacritics outside Latin-1 and Latin Extended-A (e.g. Vietnamese
//! letters, Greek tonos) are kept here where SQLite removes them; characters that Rust deems
//! alphanumeric but `unicode61` does not (combining marks of some scripts) split tokens there
//! and not here. Two ranks that differ only in the last bit of a double may order differently.

use ficus_core::time::{day_of_ms, MS_PER_DAY};
use ficus_core::RecordedEvent;
use ficus_runtime::{PgProjection, ProjectionError};
use ficus_store::postgres::unavailable;
use ficus_store::StoreError;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row};

use crate::order::OrderEvent;
use crate::product::ProductEvent;
use crate::read_models::{
    decode_if, text_words, DailyOrders, OrderSummary, PlacedOrder, PricePoint, ProductPage,
    ProductSearch, ProductView, ORDERS_MAX_LIMIT, ORDER_EVENT_TYPES, PLAN_MAX_ROWS,
    PRICE_HISTORY_MAX, PRODUCT_EVENT_TYPES, RELATED_MAX, SEARCH_MAX_LIMIT, SEARCH_MAX_OFFSET,
    SEARCH_MAX_TERMS,
};

/// Longest token kept in the `tsvector`, in characters: 4 bytes each at most, under
/// PostgreSQL's 2 047-byte lexeme limit. Longer tokens are still matched exactly, through the
/// recheck on the full tokens.
pub const LEXEME_MAX_CHARS: usize = 500;

fn pg_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => unavailable(format!("{e}: {db}")),
        None => unavailable(e),
    }
}

/// A lower-case letter without its diacritic, for Latin-1 and Latin Extended-A (the letters
/// whose canonical decomposition is a base letter and marks, as FTS5's `remove_diacritics`).
fn fold_diacritic(c: char) -> char {
    match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => 'c',
        'ď' => 'd',
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => 'e',
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => 'g',
        'ĥ' => 'h',
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' => 'i',
        'ĵ' => 'j',
        'ķ' => 'k',
        'ĺ' | 'ļ' | 'ľ' => 'l',
        'ñ' | 'ń' | 'ņ' | 'ň' => 'n',
        'ò'..='ö' | 'ō' | 'ŏ' | 'ő' => 'o',
        'ŕ' | 'ŗ' | 'ř' => 'r',
        'ś' | 'ŝ' | 'ş' | 'š' => 's',
        'ţ' | 'ť' => 't',
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => 'u',
        'ŵ' => 'w',
        'ý' | 'ÿ' | 'ŷ' => 'y',
        'ź' | 'ż' | 'ž' => 'z',
        other => other,
    }
}

/// The search tokens of `text`: runs of alphanumeric characters (the split the SQLite query
/// side uses), lower-cased, diacritics removed. See the module documentation.
pub fn search_tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text_words(text).map(|t| {
        t.chars()
            .flat_map(char::to_lowercase)
            .map(fold_diacritic)
            .collect()
    })
}

/// The query words of a search (as SQLite's `fts_query`: at most [`SEARCH_MAX_TERMS`]), or
/// `None` when the text has no word at all.
fn query_terms(text: &str) -> Option<Vec<String>> {
    let terms: Vec<String> = search_tokens(text).take(SEARCH_MAX_TERMS).collect();
    (!terms.is_empty()).then_some(terms)
}

/// A token as a `tsquery`/`tsvector` lexeme: cut to [`LEXEME_MAX_CHARS`].
fn lexeme(token: &str) -> &str {
    match token.char_indices().nth(LEXEME_MAX_CHARS) {
        Some((at, _)) => &token[..at],
        None => token,
    }
}

/// The prefix `tsquery` requiring every term, e.g. `'red':* & 'shoe':*`. Terms are alphanumeric
/// only, so they need no escaping inside the quotes.
fn prefix_tsquery(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("'{}':*", lexeme(t)))
        .collect::<Vec<_>>()
        .join(" & ")
}

/// Product details and product search, in PostgreSQL.
pub struct PgCatalogProjection;

#[async_trait::async_trait]
impl PgProjection for PgCatalogProjection {
    fn name(&self) -> &str {
        "catalog"
    }

    fn schema(&self) -> &str {
        // `search_tokens` keeps every token of name then description, in order (the bm25
        // term frequencies and document length); `search` holds them as a tsvector for the
        // GIN index. Stats: one row, the live (not deleted) products and their tokens.
        r#"CREATE TABLE IF NOT EXISTS rm_catalog_products (
            id            text COLLATE "C" PRIMARY KEY,
            name          text COLLATE "C" NOT NULL,
            description   text NOT NULL,
            category      text COLLATE "C" NOT NULL,
            price_minor   bigint NOT NULL,
            currency      text NOT NULL,
            seller_id     text COLLATE "C" NOT NULL,
            stock_total   bigint NOT NULL DEFAULT 0,
            deleted       boolean NOT NULL DEFAULT false,
            created_at_ms bigint NOT NULL,
            updated_at_ms bigint NOT NULL,
            version       bigint NOT NULL,
            search_tokens text[] NOT NULL,
            token_count   integer NOT NULL,
            search        tsvector NOT NULL
        );
        CREATE INDEX IF NOT EXISTS rm_catalog_products_category_price
            ON rm_catalog_products (category, price_minor);
        CREATE INDEX IF NOT EXISTS rm_catalog_products_price ON rm_catalog_products (price_minor);
        CREATE INDEX IF NOT EXISTS rm_catalog_products_name ON rm_catalog_products (name, id);
        CREATE INDEX IF NOT EXISTS rm_catalog_products_seller_category
            ON rm_catalog_products (seller_id, category, id);
        CREATE INDEX IF NOT EXISTS rm_catalog_products_search
            ON rm_catalog_products USING gin (search);
        CREATE TABLE IF NOT EXISTS rm_catalog_product_stock (
            product_id text COLLATE "C" NOT NULL,
            warehouse  text COLLATE "C" NOT NULL,
            quantity   bigint NOT NULL,
            PRIMARY KEY (product_id, warehouse)
        );
        CREATE TABLE IF NOT EXISTS rm_catalog_product_prices (
            product_id  text COLLATE "C" NOT NULL,
            version     bigint NOT NULL,
            price_minor bigint NOT NULL,
            at_ms       bigint NOT NULL,
            PRIMARY KEY (product_id, version)
        );
        CREATE TABLE IF NOT EXISTS rm_catalog_search_stats (
            id     integer PRIMARY KEY CHECK (id = 1),
            docs   bigint NOT NULL,
            tokens bigint NOT NULL
        );
        INSERT INTO rm_catalog_search_stats (id, docs, tokens) VALUES (1, 0, 0)
            ON CONFLICT (id) DO NOTHING;"#
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS rm_catalog_products; DROP TABLE IF EXISTS rm_catalog_product_stock;
         DROP TABLE IF EXISTS rm_catalog_product_prices; DROP TABLE IF EXISTS rm_catalog_search_stats;"
    }

    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
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
                let tokens: Vec<String> = search_tokens(&name)
                    .chain(search_tokens(&description))
                    .collect();
                let lexemes: Vec<&str> = tokens.iter().map(|t| lexeme(t)).collect();
                let token_count = i32::try_from(tokens.len()).expect("a product text is small");
                tx.execute(
                    "INSERT INTO rm_catalog_products (id, name, description, category,
                        price_minor, currency, seller_id, created_at_ms, updated_at_ms, version,
                        search_tokens, token_count, search)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9, $10, $11,
                        array_to_tsvector($12::text[]))",
                    &[
                        &product_id,
                        &name,
                        &description,
                        &category,
                        &price.minor(),
                        &currency.as_str(),
                        &seller_id,
                        &at_ms,
                        &version,
                        &tokens,
                        &token_count,
                        &lexemes,
                    ],
                )
                .await?;
                tx.execute(
                    "UPDATE rm_catalog_search_stats SET docs = docs + 1, tokens = tokens + $1
                     WHERE id = 1",
                    &[&i64::from(token_count)],
                )
                .await?;
                tx.execute(
                    "INSERT INTO rm_catalog_product_prices (product_id, version, price_minor, at_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&product_id, &version, &price.minor(), &at_ms],
                )
                .await?;
            }
            ProductEvent::ProductPriceChanged {
                product_id,
                new_price,
                at_ms,
                ..
            } => {
                tx.execute(
                    "UPDATE rm_catalog_products SET price_minor = $2, updated_at_ms = $3,
                        version = $4
                     WHERE id = $1",
                    &[&product_id, &new_price.minor(), &at_ms, &version],
                )
                .await?;
                tx.execute(
                    "INSERT INTO rm_catalog_product_prices (product_id, version, price_minor, at_ms)
                     VALUES ($1, $2, $3, $4)",
                    &[&product_id, &version, &new_price.minor(), &at_ms],
                )
                .await?;
            }
            ProductEvent::StockAdjusted {
                product_id,
                warehouse,
                new_quantity,
                at_ms,
                ..
            } => {
                tx.execute(
                    "INSERT INTO rm_catalog_product_stock (product_id, warehouse, quantity)
                     VALUES ($1, $2, $3)
                     ON CONFLICT (product_id, warehouse) DO UPDATE SET quantity = $3",
                    &[&product_id, &warehouse, &new_quantity],
                )
                .await?;
                tx.execute(
                    "UPDATE rm_catalog_products SET updated_at_ms = $2, version = $3,
                        stock_total = (SELECT COALESCE(SUM(quantity), 0)::bigint
                                       FROM rm_catalog_product_stock WHERE product_id = $1)
                     WHERE id = $1",
                    &[&product_id, &at_ms, &version],
                )
                .await?;
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
                        "INSERT INTO rm_catalog_product_stock (product_id, warehouse, quantity)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (product_id, warehouse) DO UPDATE SET quantity = $3",
                        &[&product_id, &a.warehouse, &a.new_quantity],
                    )
                    .await?;
                }
                tx.execute(
                    "UPDATE rm_catalog_products SET updated_at_ms = $2, version = $3,
                        stock_total = (SELECT COALESCE(SUM(quantity), 0)::bigint
                                       FROM rm_catalog_product_stock WHERE product_id = $1)
                     WHERE id = $1",
                    &[&product_id, &at_ms, &version],
                )
                .await?;
            }
            ProductEvent::ProductDeleted {
                product_id, at_ms, ..
            } => {
                // A deleted product leaves the search corpus (SQLite deletes its FTS row).
                let was_live = tx
                    .query_opt(
                        "SELECT token_count FROM rm_catalog_products WHERE id = $1 AND NOT deleted",
                        &[&product_id],
                    )
                    .await?;
                tx.execute(
                    "UPDATE rm_catalog_products SET deleted = true, updated_at_ms = $2,
                        version = $3
                     WHERE id = $1",
                    &[&product_id, &at_ms, &version],
                )
                .await?;
                if let Some(row) = was_live {
                    tx.execute(
                        "UPDATE rm_catalog_search_stats SET docs = docs - 1,
                            tokens = tokens - $1 WHERE id = 1",
                        &[&i64::from(row.get::<_, i32>(0))],
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

const PRODUCT_COLUMNS: &str = "p.id, p.name, p.description, p.category, p.price_minor, \
    p.currency, p.seller_id, p.stock_total, p.deleted, p.updated_at_ms, p.version";

fn product_row(r: &Row) -> ProductView {
    ProductView {
        id: r.get(0),
        name: r.get(1),
        description: r.get(2),
        category: r.get(3),
        price_minor: r.get(4),
        currency: r.get(5),
        seller_id: r.get(6),
        stock_total: r.get(7),
        deleted: r.get(8),
        updated_at_ms: r.get(9),
        version: r.get::<_, i64>(10) as u64,
    }
}

/// Product details by id (deleted products included, flagged).
pub async fn get_product<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> Result<Option<ProductView>, StoreError> {
    let row = client
        .query_opt(
            &format!("SELECT {PRODUCT_COLUMNS} FROM rm_catalog_products p WHERE p.id = $1"),
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    Ok(row.as_ref().map(product_row))
}

/// Stock per warehouse of one product, by warehouse id.
pub async fn product_stock<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT warehouse, quantity FROM rm_catalog_product_stock WHERE product_id = $1
             ORDER BY warehouse",
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// A product's prices, newest first, at most [`PRICE_HISTORY_MAX`].
pub async fn price_history<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> Result<Vec<PricePoint>, StoreError> {
    let rows = client
        .query(
            "SELECT price_minor, at_ms, version FROM rm_catalog_product_prices
             WHERE product_id = $1 ORDER BY version DESC LIMIT $2",
            &[&id, &i64::from(PRICE_HISTORY_MAX)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| PricePoint {
            price_minor: r.get(0),
            at_ms: r.get(1),
            version: r.get::<_, i64>(2) as u64,
        })
        .collect())
}

/// Live products of `category` other than `id`, by id, at most [`RELATED_MAX`].
pub async fn related_products<C: GenericClient + Sync>(
    client: &C,
    id: &str,
    category: &str,
) -> Result<Vec<ProductView>, StoreError> {
    let rows = client
        .query(
            &format!(
                "SELECT {PRODUCT_COLUMNS} FROM rm_catalog_products p
                 WHERE p.category = $1 AND p.id <> $2 AND NOT p.deleted ORDER BY p.id LIMIT $3"
            ),
            &[&category, &id, &i64::from(RELATED_MAX)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(product_row).collect())
}

/// The [`ProductPage`] of a product (deleted ones included, flagged in `product`).
pub async fn product_page<C: GenericClient + Sync>(
    client: &C,
    id: &str,
) -> Result<Option<ProductPage>, StoreError> {
    let Some(product) = get_product(client, id).await? else {
        return Ok(None);
    };
    Ok(Some(ProductPage {
        stock: product_stock(client, id).await?,
        price_history: price_history(client, id).await?,
        related: related_products(client, id, &product.category).await?,
        product,
    }))
}

/// FTS5's `bm25()` of row `p` for the query terms `$1` (negated, so lower is better, as
/// SQLite's `rank`): per term, `idf * f * (k1 + 1) / (f + k1 * (1 - b + b * D / avgdl))` with
/// `f` the term's occurrences in the row (as a prefix), `D` the row's tokens, `avgdl` the mean
/// over live products and `idf = ln((N - n + 0.5) / (n + 0.5))`, at least 1e-6, `n` the live
/// products holding the term. Summed in term order, as FTS5 does.
const BM25_RANK: &str = "(SELECT -sum(
        t.idf * (t.f * (1.2::float8 + 1.0::float8))
        / (t.f + 1.2::float8 * (1.0::float8 - 0.75::float8
                                + 0.75::float8 * p.token_count::float8 / st.avgdl))
        ORDER BY t.i)
     FROM (SELECT q.i,
                  (SELECT count(*) FROM unnest(p.search_tokens) tok
                   WHERE starts_with(tok, q.term))::float8 AS f,
                  idf.idf
           FROM unnest($1::text[]) WITH ORDINALITY AS q(term, i)
           JOIN idf ON idf.i = q.i) t)";

/// Per query term (`$1`, in order), its inverse document frequency over live products.
const IDF_CTE: &str = "idf AS (
        SELECT q.i, CASE WHEN x.v <= 0 THEN 1e-6::float8 ELSE x.v END AS idf
        FROM st, unnest($1::text[]) WITH ORDINALITY AS q(term, i),
             LATERAL (SELECT count(*)::float8 AS n FROM rm_catalog_products d
                      WHERE NOT d.deleted
                        AND d.search @@ (format('%L', left(q.term, 500)) || ':*')::tsquery
                        AND EXISTS (SELECT 1 FROM unnest(d.search_tokens) tok
                                    WHERE starts_with(tok, q.term))) h,
             LATERAL (SELECT ln((st.docs - h.n + 0.5::float8) / (h.n + 0.5::float8)) AS v) x
    )";

/// Matching products (best text match first, then by name) and the total number of matches,
/// as [`crate::read_models::search_products`].
pub async fn search_products<C: GenericClient + Sync>(
    client: &C,
    q: &ProductSearch,
) -> Result<(u64, Vec<ProductView>), StoreError> {
    let terms = q.text.as_deref().and_then(query_terms);
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut filters = vec!["NOT p.deleted".to_string()];
    if let Some(terms) = &terms {
        // $1: the terms (exact prefix recheck and rank), $2: the indexed pre-filter.
        args.push(Box::new(terms.clone()));
        args.push(Box::new(prefix_tsquery(terms)));
        filters.push("p.search @@ $2::text::tsquery".into());
        filters.push(
            "NOT EXISTS (SELECT 1 FROM unnest($1::text[]) qt WHERE NOT EXISTS (
                 SELECT 1 FROM unnest(p.search_tokens) tok WHERE starts_with(tok, qt)))"
                .into(),
        );
    }
    if let Some(c) = &q.category {
        args.push(Box::new(c.clone()));
        filters.push(format!("p.category = ${}", args.len()));
    }
    if let Some(min) = q.min_price_minor {
        args.push(Box::new(min));
        filters.push(format!("p.price_minor >= ${}", args.len()));
    }
    if let Some(max) = q.max_price_minor {
        args.push(Box::new(max));
        filters.push(format!("p.price_minor <= ${}", args.len()));
    }
    let filter = filters.join(" AND ");
    let params: Vec<&(dyn ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let total: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM rm_catalog_products p WHERE {filter}"),
            &params,
        )
        .await
        .map_err(pg_err)?
        .get(0);
    let limit = i64::from(q.limit.min(SEARCH_MAX_LIMIT));
    let offset = i64::from(q.offset.min(SEARCH_MAX_OFFSET));
    let mut page_params = params.clone();
    page_params.push(&limit);
    page_params.push(&offset);
    let n = params.len();
    let sql = if terms.is_some() {
        format!(
            "WITH st AS (SELECT docs::float8 AS docs,
                                tokens::float8 / NULLIF(docs, 0)::float8 AS avgdl
                         FROM rm_catalog_search_stats WHERE id = 1),
                  {IDF_CTE}
             SELECT {PRODUCT_COLUMNS}, {BM25_RANK} AS rank
             FROM rm_catalog_products p, st WHERE {filter}
             ORDER BY rank, p.name, p.id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        )
    } else {
        format!(
            "SELECT {PRODUCT_COLUMNS} FROM rm_catalog_products p WHERE {filter}
             ORDER BY p.name, p.id LIMIT ${} OFFSET ${}",
            n + 1,
            n + 2
        )
    };
    let rows = client.query(&sql, &page_params).await.map_err(pg_err)?;
    Ok((total as u64, rows.iter().map(product_row).collect()))
}

/// Ids and prices of a seller's live products in a category, by id.
pub async fn seller_products_in_category<C: GenericClient + Sync>(
    client: &C,
    seller_id: &str,
    category: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = client
        .query(
            "SELECT id, price_minor FROM rm_catalog_products
             WHERE seller_id = $1 AND category = $2 AND NOT deleted ORDER BY id LIMIT $3",
            &[&seller_id, &category, &i64::from(PLAN_MAX_ROWS + 1)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Order summaries, order analytics and buyers, in PostgreSQL.
pub struct PgOrdersProjection;

#[async_trait::async_trait]
impl PgProjection for PgOrdersProjection {
    fn name(&self) -> &str {
        "orders"
    }

    fn schema(&self) -> &str {
        r#"CREATE TABLE IF NOT EXISTS rm_orders_summaries (
            id            text COLLATE "C" PRIMARY KEY,
            customer_id   text COLLATE "C" NOT NULL,
            status        text NOT NULL,
            total_minor   bigint NOT NULL DEFAULT 0,
            currency      text,
            item_count    bigint NOT NULL DEFAULT 0,
            created_at_ms bigint NOT NULL,
            placed_at_ms  bigint,
            version       bigint NOT NULL
        );
        CREATE INDEX IF NOT EXISTS rm_orders_summaries_customer
            ON rm_orders_summaries (customer_id, created_at_ms DESC, id DESC);
        CREATE INDEX IF NOT EXISTS rm_orders_summaries_placed
            ON rm_orders_summaries (placed_at_ms, id) WHERE placed_at_ms IS NOT NULL;
        CREATE TABLE IF NOT EXISTS rm_orders_buyers (
            product_id  text COLLATE "C" NOT NULL,
            customer_id text COLLATE "C" NOT NULL,
            PRIMARY KEY (product_id, customer_id)
        );
        CREATE TABLE IF NOT EXISTS rm_orders_analytics_daily (
            day         bigint NOT NULL,
            currency    text COLLATE "C" NOT NULL,
            orders      bigint NOT NULL,
            total_minor bigint NOT NULL,
            PRIMARY KEY (day, currency)
        );"#
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS rm_orders_summaries; DROP TABLE IF EXISTS rm_orders_analytics_daily;
         DROP TABLE IF EXISTS rm_orders_buyers;"
    }

    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
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
                    "INSERT INTO rm_orders_summaries (id, customer_id, status, currency,
                        created_at_ms, version) VALUES ($1, $2, 'draft', $3, $4, $5)",
                    &[
                        &order_id,
                        &customer_id,
                        &currency.as_ref().map(|c| c.as_str()),
                        &at_ms,
                        &version,
                    ],
                )
                .await?;
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
                    "INSERT INTO rm_orders_buyers (product_id, customer_id)
                     SELECT $2, customer_id FROM rm_orders_summaries WHERE id = $1
                     ON CONFLICT DO NOTHING",
                    &[&order_id, &product_id],
                )
                .await?;
                tx.execute(
                    "UPDATE rm_orders_summaries SET total_minor = total_minor + $2,
                        item_count = item_count + $3, currency = COALESCE(currency, $4),
                        version = $5
                     WHERE id = $1",
                    &[
                        &order_id,
                        &line_total.minor(),
                        &i64::from(quantity),
                        &currency.as_str(),
                        &version,
                    ],
                )
                .await?;
            }
            OrderEvent::OrderPlaced {
                order_id,
                total,
                item_count,
                at_ms,
                ..
            } => {
                let currency: Option<String> = tx
                    .query_opt(
                        "UPDATE rm_orders_summaries SET status = 'placed', total_minor = $2,
                            item_count = $3, placed_at_ms = $4, version = $5
                         WHERE id = $1 RETURNING currency",
                        &[
                            &order_id,
                            &total.minor(),
                            &i64::from(item_count),
                            &at_ms,
                            &version,
                        ],
                    )
                    .await?
                    .and_then(|r| r.get(0));
                tx.execute(
                    "INSERT INTO rm_orders_analytics_daily AS a (day, currency, orders, total_minor)
                     VALUES ($1, $2, 1, $3)
                     ON CONFLICT (day, currency) DO UPDATE
                     SET orders = a.orders + 1, total_minor = a.total_minor + EXCLUDED.total_minor",
                    &[&day_of_ms(at_ms), &currency.unwrap_or_default(), &total.minor()],
                )
                .await?;
            }
            OrderEvent::OrderCancelled { order_id, .. } => {
                tx.execute(
                    "UPDATE rm_orders_summaries SET status = 'cancelled', version = $2
                     WHERE id = $1",
                    &[&order_id, &version],
                )
                .await?;
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
                    "UPDATE rm_orders_summaries SET status = $3, version = $2 WHERE id = $1",
                    &[&order_id, &version, &status],
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// A customer's orders, newest first.
pub async fn customer_orders<C: GenericClient + Sync>(
    client: &C,
    customer_id: &str,
    limit: u32,
) -> Result<Vec<OrderSummary>, StoreError> {
    let rows = client
        .query(
            "SELECT id, status, total_minor, currency, item_count, created_at_ms
             FROM rm_orders_summaries WHERE customer_id = $1
             ORDER BY created_at_ms DESC, id DESC LIMIT $2",
            &[&customer_id, &i64::from(limit.min(ORDERS_MAX_LIMIT))],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            Ok(OrderSummary {
                id: r.get(0),
                status: r.get(1),
                total_minor: r.get(2),
                currency: r.get(3),
                item_count: u32::try_from(r.get::<_, i64>(4))
                    .map_err(|_| StoreError::Corrupt("order item count out of range".into()))?,
                created_at_ms: r.get(5),
            })
        })
        .collect()
}

/// Per-day totals of placed orders for days `from..=to` (day numbers), oldest first. Days
/// with no placed order are absent.
pub async fn order_analytics<C: GenericClient + Sync>(
    client: &C,
    from_day: i64,
    to_day: i64,
) -> Result<Vec<DailyOrders>, StoreError> {
    let rows = client
        .query(
            "SELECT day, currency, orders, total_minor FROM rm_orders_analytics_daily
             WHERE day BETWEEN $1 AND $2 ORDER BY day, currency",
            &[&from_day, &to_day],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| DailyOrders {
            day: r.get(0),
            currency: r.get(1),
            orders: r.get::<_, i64>(2) as u64,
            total_minor: r.get(3),
        })
        .collect())
}

/// Customers who ever ordered `product_id`, by id.
pub async fn buyers_of_product<C: GenericClient + Sync>(
    client: &C,
    product_id: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query(
            "SELECT customer_id FROM rm_orders_buyers WHERE product_id = $1
             ORDER BY customer_id LIMIT $2",
            &[&product_id, &i64::from(PLAN_MAX_ROWS + 1)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Placed orders of one UTC day, in placement order.
pub async fn placed_orders_on_day<C: GenericClient + Sync>(
    client: &C,
    day: i64,
) -> Result<Vec<PlacedOrder>, StoreError> {
    let from = day * MS_PER_DAY;
    let rows = client
        .query(
            "SELECT id, customer_id, total_minor, currency, placed_at_ms FROM rm_orders_summaries
             WHERE placed_at_ms >= $1 AND placed_at_ms < $2 ORDER BY placed_at_ms, id",
            &[&from, &(from + MS_PER_DAY)],
        )
        .await
        .map_err(pg_err)?;
    Ok(rows
        .iter()
        .map(|r| PlacedOrder {
            id: r.get(0),
            customer_id: r.get(1),
            total_minor: r.get(2),
            currency: r.get(3),
            placed_at_ms: r.get(4),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_fold_case_and_diacritics() {
        let t: Vec<String> = search_tokens("Crème BRÛLÉE, 2-pack; Łódź").collect();
        assert_eq!(t, ["creme", "brulee", "2", "pack", "łodz"]);
        assert_eq!(query_terms("  ***  "), None);
        assert_eq!(
            prefix_tsquery(&query_terms("\"; DROP TABLE x; --'").unwrap()),
            "'drop':* & 'table':* & 'x':*"
        );
        let long = "é".repeat(LEXEME_MAX_CHARS + 3);
        assert_eq!(lexeme(&long).chars().count(), LEXEME_MAX_CHARS);
    }
}
