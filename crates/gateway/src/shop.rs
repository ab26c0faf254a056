//! The reference domain over HTTP: product and order commands, and the queries on their read
//! models with read-your-own-writes (`min_position`) and `Ficus-Position` on every answer.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use ficus_core::{Metadata, Position};
use ficus_domain::money::{Currency, Money};
use ficus_domain::order::OrderCommand;
use ficus_domain::product::ProductCommand;
use ficus_domain::read_models::{self as rm, ProductSearch, ProductView};
use ficus_domain::service::{NewProduct, RequestedItem, Shop, DEFAULT_WAREHOUSE};
use ficus_runtime::CommandOutcome;
use ficus_store::{AppendResult, StoreError, StoredResponse};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::cache::{cached_query, position_etag, respond, respond_json_bytes, version_etag};
use crate::error::ApiError;
use crate::extract::{if_match, JsonBody, OptionalJsonBody, PathParams, QueryParams};
use crate::idempotency::KeyHold;
use crate::{AppState, CorrelationId};

/// The shop's commands: what a command process serves.
pub fn command_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/products", post(create_product))
        .route("/v1/products/{id}", delete(delete_product))
        .route("/v1/products/{id}/price", put(change_price))
        .route("/v1/products/{id}/stock", post(adjust_stock))
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/{id}/items", post(add_item))
        .route("/v1/orders/{id}/place", post(place_order))
        .route("/v1/orders/{id}/cancel", post(cancel_order))
}

/// The shop's queries on its read models: what a query process serves.
pub fn query_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/products", get(search_products))
        .route("/v1/products/{id}", get(get_product))
        .route("/v1/customers/{id}/orders", get(customer_orders))
        .route("/v1/analytics/orders", get(order_analytics))
}

// ---------------------------------------------------------------------------------------------
// Money at the edge: a JSON number with at most two decimals, parsed from its text, never
// through a float; written back as a JSON number from the exact minor units.

/// An amount as it appears in a response: a JSON number like `19.99`.
pub(crate) struct Amount(pub(crate) i64);

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = Money::from_minor(self.0).to_decimal_string();
        RawValue::from_string(text)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }
}

pub(crate) fn parse_amount(raw: &RawValue, field: &str) -> Result<Money, ApiError> {
    let text = raw.get().trim();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be a JSON number with at most 2 decimals"),
        ));
    }
    Money::parse_decimal(text).map_err(|e| ApiError::bad_request(e.code(), format!("{field}: {e}")))
}

fn parse_amount_param(text: &str, field: &str) -> Result<i64, ApiError> {
    Money::parse_decimal(text)
        .map(Money::minor)
        .map_err(|e| ApiError::bad_request("invalid_query", format!("{field}: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Commands

pub(crate) fn metadata(caller: &Caller, corr: &CorrelationId) -> Metadata {
    let mut m = Metadata {
        correlation_id: Some(corr.0.clone()),
        causation_id: None,
        user_id: Some(caller.0.user_id.clone()),
        extra: Default::default(),
    };
    // The request's trace context (set by the correlation middleware) goes next to it.
    if let Some(ctx) = ficus_runtime::telemetry::current() {
        ctx.stamp_metadata(&mut m);
    }
    m
}

#[derive(Serialize)]
struct CommandAnswer {
    id: String,
    version: u64,
    position: Position,
}

pub(crate) fn answer(status: StatusCode, id: &str, out: CommandOutcome) -> Response {
    let mut resp = (
        status,
        Json(CommandAnswer {
            id: id.to_owned(),
            version: out.version,
            position: out.position,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", out.version)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// What a request's idempotency claim (if any) is, as a handler argument.
type Hold = Option<Extension<KeyHold>>;

/// The shop a command runs on. With an idempotency claim, its append records the answer
/// `status {id, version, position}` in the same transaction (the very body [`answer`] sends).
fn shop_for(st: &AppState, hold: &Hold, status: StatusCode, id: &str) -> Shop {
    let Some(Extension(hold)) = hold else {
        return st.shop.clone();
    };
    let id = id.to_owned();
    hold.shop(
        st,
        Arc::new(move |r: &AppendResult| {
            let body = CommandAnswer {
                id: id.clone(),
                version: r.last_version,
                position: r.last_position,
            };
            StoredResponse {
                status: status.as_u16(),
                body: serde_json::to_string(&body).expect("a command answer serializes"),
            }
        }),
    )
}

fn now_ms() -> i64 {
    ficus_store::now_ms()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateProductDto {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    pub(crate) category: String,
    pub(crate) price: Box<RawValue>,
    pub(crate) currency: String,
    #[serde(default)]
    pub(crate) stock: Option<i64>,
}

impl CreateProductDto {
    /// The body's money and currency checked (400 on a bad one); the product's own rules are
    /// the aggregate's.
    pub(crate) fn into_new_product(self) -> Result<NewProduct, ApiError> {
        let price = parse_amount(&self.price, "price")?;
        let currency = Currency::new(self.currency)
            .map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
        Ok(NewProduct {
            name: self.name,
            description: self.description,
            category: self.category,
            price,
            currency,
            stock: self.stock.map(|q| (DEFAULT_WAREHOUSE.to_owned(), q)),
        })
    }
}

async fn create_product(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    hold: Hold,
    JsonBody(body): JsonBody<CreateProductDto>,
) -> Result<Response, ApiError> {
    caller.require_role("seller")?;
    let input = body.into_new_product()?;
    let id = uuid::Uuid::now_v7().to_string();
    let out = shop_for(&st, &hold, StatusCode::CREATED, &id)
        .create_product(&caller.0, &id, input, now_ms(), &metadata(&caller, &corr))
        .await?;
    Ok(answer(StatusCode::CREATED, &id, out))
}

/// Runs a command on an existing product and answers `200 {id, version, position}`.
async fn product_command(
    st: &AppState,
    caller: &Caller,
    corr: &CorrelationId,
    headers: &HeaderMap,
    hold: &Hold,
    id: &str,
    cmd: ProductCommand,
) -> Result<Response, ApiError> {
    let meta = metadata(caller, corr);
    let out = shop_for(st, hold, StatusCode::OK, id)
        .product_command(id, cmd, &meta, if_match(headers)?)
        .await?;
    Ok(answer(StatusCode::OK, id, out))
}

/// Runs a command on an existing order and answers `200 {id, version, position}`.
async fn order_command(
    st: &AppState,
    caller: &Caller,
    corr: &CorrelationId,
    headers: &HeaderMap,
    hold: &Hold,
    id: &str,
    cmd: OrderCommand,
) -> Result<Response, ApiError> {
    let meta = metadata(caller, corr);
    let out = shop_for(st, hold, StatusCode::OK, id)
        .order_command(id, cmd, &meta, if_match(headers)?)
        .await?;
    Ok(answer(StatusCode::OK, id, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PriceDto {
    pub(crate) price: Box<RawValue>,
}

async fn change_price(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<PriceDto>,
) -> Result<Response, ApiError> {
    let new_price = parse_amount(&body.price, "price")?;
    let cmd = ProductCommand::UpdatePrice {
        actor_id: caller.0.user_id.clone(),
        new_price,
        at_ms: now_ms(),
    };
    product_command(&st, &caller, &corr, &headers, &hold, &id, cmd).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StockDto {
    pub(crate) warehouse: String,
    pub(crate) delta: i64,
}

async fn adjust_stock(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<StockDto>,
) -> Result<Response, ApiError> {
    let cmd = ProductCommand::AdjustStock {
        actor_id: caller.0.user_id.clone(),
        warehouse: body.warehouse,
        delta: body.delta,
        at_ms: now_ms(),
    };
    product_command(&st, &caller, &corr, &headers, &hold, &id, cmd).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteDto {
    pub(crate) reason: String,
}

async fn delete_product(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<DeleteDto>,
) -> Result<Response, ApiError> {
    let cmd = ProductCommand::Delete {
        actor_id: caller.0.user_id.clone(),
        reason: body.reason,
        at_ms: now_ms(),
    };
    product_command(&st, &caller, &corr, &headers, &hold, &id, cmd).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ItemDto {
    pub(crate) product_id: String,
    pub(crate) quantity: i64,
}

impl ItemDto {
    /// Out-of-range quantities are passed on clamped so the aggregate refuses them with its
    /// own rule (`invalid_quantity`), the same answer whatever the sign or size.
    pub(crate) fn into_item(self) -> RequestedItem {
        RequestedItem {
            product_id: self.product_id,
            quantity: self.quantity.clamp(0, u32::MAX as i64) as u32,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateOrderDto {
    pub(crate) items: Vec<ItemDto>,
}

async fn create_order(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    hold: Hold,
    JsonBody(body): JsonBody<CreateOrderDto>,
) -> Result<Response, ApiError> {
    caller.require_role("customer")?;
    let items: Vec<RequestedItem> = body.items.into_iter().map(ItemDto::into_item).collect();
    let id = uuid::Uuid::now_v7().to_string();
    let out = shop_for(&st, &hold, StatusCode::CREATED, &id)
        .create_order(&caller.0, &id, &items, now_ms(), &metadata(&caller, &corr))
        .await?;
    Ok(answer(StatusCode::CREATED, &id, out))
}

async fn add_item(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<ItemDto>,
) -> Result<Response, ApiError> {
    let out = shop_for(&st, &hold, StatusCode::OK, &id)
        .add_item(
            &caller.0,
            &id,
            body.into_item(),
            now_ms(),
            &metadata(&caller, &corr),
            if_match(&headers)?,
        )
        .await?;
    Ok(answer(StatusCode::OK, &id, out))
}

async fn place_order(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    if let Some(f) = &st.fulfilment {
        // With fulfilment on, the order turns `pending` and its saga is enqueued.
        let fulfilment = ficus_domain::fulfilment::Fulfilment {
            shop: shop_for(&st, &hold, StatusCode::OK, &id),
            ..f.clone()
        };
        let out = fulfilment
            .place(
                &caller.0,
                &id,
                &metadata(&caller, &corr),
                if_match(&headers)?,
            )
            .await?;
        return Ok(answer(StatusCode::OK, &id, out));
    }
    let cmd = OrderCommand::Place {
        actor_id: caller.0.user_id.clone(),
        at_ms: now_ms(),
    };
    order_command(&st, &caller, &corr, &headers, &hold, &id, cmd).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelDto {
    #[serde(default)]
    pub(crate) reason: Option<String>,
}

async fn cancel_order(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    hold: Hold,
    PathParams(id): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<CancelDto>,
) -> Result<Response, ApiError> {
    let cmd = OrderCommand::Cancel {
        actor_id: caller.0.user_id.clone(),
        reason: body.and_then(|b| b.reason),
        at_ms: now_ms(),
    };
    order_command(&st, &caller, &corr, &headers, &hold, &id, cmd).await
}

// ---------------------------------------------------------------------------------------------
// Queries

// Every query waits for `min_position` (bounded), reads through the cache-aside layer when it
// is on, and answers with `ETag`, `Cache-Control` and `Ficus-Position`, or `304` when the
// client's `If-None-Match` is current (see `cache.rs` for which tag each answer carries).

#[derive(Serialize)]
pub(crate) struct ProductDto {
    id: String,
    name: String,
    description: String,
    category: String,
    price: Amount,
    currency: String,
    seller_id: String,
    stock_total: i64,
    in_stock: bool,
    updated_at: String,
    version: u64,
}

impl From<ProductView> for ProductDto {
    fn from(p: ProductView) -> Self {
        Self {
            in_stock: p.stock_total > 0,
            updated_at: ficus_core::time::format_rfc3339_ms(p.updated_at_ms),
            id: p.id,
            name: p.name,
            description: p.description,
            category: p.category,
            price: Amount(p.price_minor),
            currency: p.currency,
            seller_id: p.seller_id,
            stock_total: p.stock_total,
            version: p.version,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    pub(crate) min_position: Option<Position>,
}

/// A live product's details as the JSON document `GET /v1/products/{id}` answers, with the
/// version that tags it. The read cache keeps this, not the [`ProductView`]: a cache hit then
/// costs no clone and no serialization, only the bytes' reference count.
struct ProductJson {
    version: u64,
    body: Bytes,
}

/// The product's answer and the catalog position it was read at; deleted or unknown → 404
/// `product_not_found`. Through the read cache when it is on (key `product-json:<id>`).
async fn read_product_json(
    st: &AppState,
    id: &str,
    min_position: Option<Position>,
) -> Result<(Arc<Option<ProductJson>>, Position), ApiError> {
    cached_query(
        st,
        st.read.catalog(),
        min_position,
        format!("product-json:{id}"),
        || async {
            let (found, position) = st.read.get_product(id.to_owned()).await?;
            let answer = match found {
                Some(p) if !p.deleted => {
                    let version = p.version;
                    let body = serde_json::to_vec(&ProductDto::from(p)).map_err(|e| {
                        StoreError::Corrupt(format!("product {id} did not serialize: {e}"))
                    })?;
                    Some(ProductJson {
                        version,
                        body: Bytes::from(body),
                    })
                }
                _ => None,
            };
            Ok((answer, position))
        },
    )
    .await
}

async fn get_product(
    State(st): State<AppState>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<ConsistencyQuery>,
) -> Result<Response, ApiError> {
    let (found, position) = read_product_json(&st, &id, q.min_position).await?;
    let Some(p) = found.as_ref() else {
        return Err(ApiError::not_found(
            "product_not_found",
            format!("no product {id}"),
        ));
    };
    // The product's own version: the document changes only with its own events.
    let etag = version_etag(p.version);
    Ok(respond_json_bytes(
        &headers,
        &etag,
        position,
        p.body.clone(),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: Option<String>,
    category: Option<String>,
    min_price: Option<String>,
    max_price: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
    min_position: Option<Position>,
}

#[derive(Serialize)]
struct SearchDto {
    total: u64,
    products: Vec<ProductDto>,
}

/// Longest free-text search accepted, in bytes.
const SEARCH_TEXT_MAX_BYTES: usize = 256;

async fn search_products(
    State(st): State<AppState>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SearchQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=rm::SEARCH_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {}", rm::SEARCH_MAX_LIMIT),
        ));
    }
    let offset = q.offset.unwrap_or(0);
    if offset > rm::SEARCH_MAX_OFFSET {
        return Err(ApiError::bad_request(
            "invalid_offset",
            format!("offset must be at most {}", rm::SEARCH_MAX_OFFSET),
        ));
    }
    if q.q
        .as_ref()
        .is_some_and(|t| t.len() > SEARCH_TEXT_MAX_BYTES)
    {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("q must be at most {SEARCH_TEXT_MAX_BYTES} bytes"),
        ));
    }
    let min = q
        .min_price
        .as_deref()
        .map(|t| parse_amount_param(t, "min_price"))
        .transpose()?;
    let max = q
        .max_price
        .as_deref()
        .map(|t| parse_amount_param(t, "max_price"))
        .transpose()?;
    let search = ProductSearch {
        text: q.q,
        category: q.category.filter(|c| !c.is_empty()),
        min_price_minor: min,
        max_price_minor: max,
        limit,
        offset,
    };
    let key = format!("search:{search:?}");
    let (found, position) = cached_query(&st, st.read.catalog(), q.min_position, key, || {
        st.read.search_products(search.clone())
    })
    .await?;
    // A list: tagged with the catalog's position, which moves with any product's event.
    let etag = position_etag(position);
    Ok(respond(&headers, &etag, position, || {
        let (total, products) = found.as_ref();
        SearchDto {
            total: *total,
            products: products.iter().cloned().map(ProductDto::from).collect(),
        }
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrdersQuery {
    limit: Option<u32>,
    min_position: Option<Position>,
}

#[derive(Serialize)]
struct OrderSummaryDto {
    id: String,
    status: String,
    total: Amount,
    currency: Option<String>,
    item_count: u32,
    created_at: String,
}

#[derive(Serialize)]
struct OrdersDto {
    orders: Vec<OrderSummaryDto>,
}

async fn customer_orders(
    State(st): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    PathParams(customer): PathParams<String>,
    QueryParams(q): QueryParams<OrdersQuery>,
) -> Result<Response, ApiError> {
    if caller.0.user_id != customer && !caller.0.has_role("admin") {
        return Err(ApiError::forbidden(
            "customers may list only their own orders",
        ));
    }
    let limit = q.limit.unwrap_or(rm::ORDERS_MAX_LIMIT);
    if !(1..=rm::ORDERS_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {}", rm::ORDERS_MAX_LIMIT),
        ));
    }
    let key = format!("orders:{limit}:{customer}");
    let (orders, position) = cached_query(&st, st.read.orders(), q.min_position, key, || {
        st.read.customer_orders(customer.clone(), limit)
    })
    .await?;
    // A list: tagged with the orders read model's position.
    let etag = position_etag(position);
    Ok(respond(&headers, &etag, position, || OrdersDto {
        orders: orders
            .iter()
            .map(|o| OrderSummaryDto {
                id: o.id.clone(),
                status: o.status.clone(),
                total: Amount(o.total_minor),
                currency: o.currency.clone(),
                item_count: o.item_count,
                created_at: ficus_core::time::format_rfc3339_ms(o.created_at_ms),
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnalyticsQuery {
    from: String,
    to: String,
    min_position: Option<Position>,
}

#[derive(Serialize)]
struct DayDto {
    date: String,
    currency: String,
    orders: u64,
    total: Amount,
}

#[derive(Serialize)]
struct AnalyticsDto {
    days: Vec<DayDto>,
}

async fn order_analytics(
    State(st): State<AppState>,
    headers: HeaderMap,
    caller: Caller,
    QueryParams(q): QueryParams<AnalyticsQuery>,
) -> Result<Response, ApiError> {
    caller.require_role("admin")?;
    let day = |s: &str, f: &str| {
        ficus_core::time::parse_date(s).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("{f} must be a date YYYY-MM-DD"))
        })
    };
    let (from, to) = (day(&q.from, "from")?, day(&q.to, "to")?);
    if to < from || to - from >= rm::ANALYTICS_MAX_DAYS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "from must not be after to, and the range at most {} days",
                rm::ANALYTICS_MAX_DAYS
            ),
        ));
    }
    let key = format!("analytics:{from}:{to}");
    let (days, position) = cached_query(&st, st.read.orders(), q.min_position, key, || {
        st.read.order_analytics(from, to)
    })
    .await?;
    // A report over many orders: tagged with the orders read model's position.
    let etag = position_etag(position);
    Ok(respond(&headers, &etag, position, || AnalyticsDto {
        days: days
            .iter()
            .map(|d| DayDto {
                date: ficus_core::time::format_date(d.day),
                currency: d.currency.clone(),
                orders: d.orders,
                total: Amount(d.total_minor),
            })
            .collect(),
    }))
}
