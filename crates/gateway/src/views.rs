//! Backend-for-frontend views: client-shaped documents served from the same read models as the
//! rest of the query side.
//!
//! Views are declared, not hand-written handlers: [`VIEWS`] lists each one's route, which
//! validator tags it, and a shaping function from the one source document, the product page
//! ([`ProductPage`]: details, stock per warehouse, price history, related products, read in one
//! snapshot). One generic handler serves them all with the same `min_position` wait, cache-aside
//! read (both views share the `page:<id>` entry), `ETag`, `Cache-Control` and `304` behaviour as
//! the other queries. Adding a view is one entry and one shaping function.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ficus_domain::read_models::ProductPage;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cache::{cached_query, position_etag, respond, version_etag};
use crate::error::ApiError;
use crate::extract::{PathParams, QueryParams};
use crate::shop::{Amount, ConsistencyQuery};
use crate::AppState;

/// Which validator a view's `ETag` is.
#[derive(Clone, Copy)]
enum Tag {
    /// The product's version: the view shows only the product's own state.
    ProductVersion,
    /// The catalog's position: the view also shows other products (related ones).
    CatalogPosition,
}

/// One client-shaped view of a product page.
pub(crate) struct View {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    tag: Tag,
    shape: fn(&ProductPage) -> Box<RawValue>,
}

/// Every view the query side serves.
pub(crate) const VIEWS: &[View] = &[
    View {
        name: "mobile",
        path: "/v1/mobile/products/{id}",
        tag: Tag::ProductVersion,
        shape: mobile,
    },
    View {
        name: "web",
        path: "/v1/web/products/{id}",
        tag: Tag::CatalogPosition,
        shape: web,
    },
];

fn to_raw(doc: impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(&doc).expect("a view document serializes")
}

/// Compact, for small screens and slow links.
fn mobile(page: &ProductPage) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Mobile<'a> {
        id: &'a str,
        name: &'a str,
        price: Amount,
        currency: &'a str,
        /// The catalog holds no images yet: always `null`, so clients can already lay it out.
        thumbnail: Option<&'a str>,
    }
    let p = &page.product;
    to_raw(Mobile {
        id: &p.id,
        name: &p.name,
        price: Amount(p.price_minor),
        currency: &p.currency,
        thumbnail: None,
    })
}

/// Rich, for a product page in a browser.
fn web(page: &ProductPage) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Stock<'a> {
        warehouse: &'a str,
        quantity: i64,
    }
    #[derive(Serialize)]
    struct Price {
        price: Amount,
        at: String,
        version: u64,
    }
    #[derive(Serialize)]
    struct Related<'a> {
        id: &'a str,
        name: &'a str,
        price: Amount,
        currency: &'a str,
        in_stock: bool,
    }
    #[derive(Serialize)]
    struct Web<'a> {
        id: &'a str,
        name: &'a str,
        description: &'a str,
        category: &'a str,
        price: Amount,
        currency: &'a str,
        seller_id: &'a str,
        stock_total: i64,
        in_stock: bool,
        stock: Vec<Stock<'a>>,
        price_history: Vec<Price>,
        related: Vec<Related<'a>>,
        updated_at: String,
        version: u64,
    }
    let p = &page.product;
    to_raw(Web {
        id: &p.id,
        name: &p.name,
        description: &p.description,
        category: &p.category,
        price: Amount(p.price_minor),
        currency: &p.currency,
        seller_id: &p.seller_id,
        stock_total: p.stock_total,
        in_stock: p.stock_total > 0,
        stock: page
            .stock
            .iter()
            .map(|(warehouse, quantity)| Stock {
                warehouse,
                quantity: *quantity,
            })
            .collect(),
        price_history: page
            .price_history
            .iter()
            .map(|h| Price {
                price: Amount(h.price_minor),
                at: ficus_core::time::format_rfc3339_ms(h.at_ms),
                version: h.version,
            })
            .collect(),
        related: page
            .related
            .iter()
            .map(|r| Related {
                id: &r.id,
                name: &r.name,
                price: Amount(r.price_minor),
                currency: &r.currency,
                in_stock: r.stock_total > 0,
            })
            .collect(),
        updated_at: ficus_core::time::format_rfc3339_ms(p.updated_at_ms),
        version: p.version,
    })
}

/// Serves `view` of product `id`.
async fn serve(
    view: &'static View,
    st: AppState,
    headers: HeaderMap,
    id: String,
    q: ConsistencyQuery,
) -> Result<Response, ApiError> {
    tracing::debug!(view = view.name, product_id = %id, "serving a view");
    let (page, position) = cached_query(
        &st,
        st.read.catalog(),
        q.min_position,
        format!("page:{id}"),
        || st.read.product_page(id.clone()),
    )
    .await?;
    let Some(page) = page.as_ref().as_ref().filter(|p| !p.product.deleted) else {
        return Err(ApiError::not_found(
            "product_not_found",
            format!("no product {id}"),
        ));
    };
    let etag = match view.tag {
        Tag::ProductVersion => version_etag(page.product.version),
        Tag::CatalogPosition => position_etag(position),
    };
    Ok(respond(&headers, &etag, position, || (view.shape)(page)))
}

/// The routes of every view in [`VIEWS`].
pub fn routes() -> Router<AppState> {
    VIEWS.iter().fold(Router::new(), |router, view| {
        router.route(
            view.path,
            get(
                move |State(st): State<AppState>,
                      headers: HeaderMap,
                      PathParams(id): PathParams<String>,
                      QueryParams(q): QueryParams<ConsistencyQuery>| {
                    serve(view, st, headers, id, q)
                },
            ),
        )
    })
}
