//! Entry points for the cargo-fuzz targets in `fuzz/` (issue #8): the request decoders the
//! handlers use, callable on raw bytes without a server. Not an API: hidden from the docs, and
//! each function is the handlers' own parsing and validation, composed as the handler does.

use axum::extract::Query;
use axum::http::{HeaderValue, Uri};
use serde_json::Value;

use crate::error::ApiError;
use crate::extract::parse_json;
use crate::{bulk, shop, streams};

/// The request bodies the fuzz target decodes; the first input byte picks one.
pub const BODY_KINDS: u8 = 9;

/// Decodes `body` as the JSON body of one route (picked by `kind % BODY_KINDS`) through
/// `JsonBody`'s parser and the checks the handler applies before it reaches the domain. A
/// refusal is an `ApiError` (a 4xx), never a panic.
pub fn http_body(kind: u8, body: &[u8]) -> Result<(), ApiError> {
    match kind % BODY_KINDS {
        // POST /v1/products
        0 => parse_json::<shop::CreateProductDto>(body)?
            .into_new_product()
            .map(drop),
        // PUT /v1/products/{id}/price
        1 => shop::parse_amount(&parse_json::<shop::PriceDto>(body)?.price, "price").map(drop),
        // POST /v1/products/{id}/stock, DELETE /v1/products/{id}
        2 => parse_json::<shop::StockDto>(body).map(drop),
        3 => parse_json::<shop::DeleteDto>(body).map(drop),
        // POST /v1/orders, POST /v1/orders/{id}/items
        4 => {
            let order = parse_json::<shop::CreateOrderDto>(body)?;
            order.items.into_iter().for_each(|i| drop(i.into_item()));
            Ok(())
        }
        5 => parse_json::<shop::ItemDto>(body).map(|i| drop(i.into_item())),
        // POST /v1/orders/{id}/cancel (an optional body)
        6 => parse_json::<shop::CancelDto>(body).map(drop),
        // POST /v1/bulk-jobs: the body; planning the items needs the read models.
        7 => parse_json::<bulk::SubmitDto>(body).map(drop),
        // POST /v1/streams/{stream}: the raw append, checked as the handler checks each event
        // (into a domain stream named by the first event's id field, so the domain's check runs).
        _ => {
            let dto = parse_json::<streams::AppendDto>(body)?;
            streams::expected(dto.expected_version)?;
            for e in dto.events {
                let event_type = ficus_core::EventType::new(e.event_type)
                    .map_err(|err| ApiError::bad_request("invalid_event_type", err.to_string()))?;
                let schema_version = e.schema_version.unwrap_or(1).max(1);
                let id = e
                    .data
                    .get("product_id")
                    .and_then(Value::as_str)
                    .unwrap_or("x");
                let stream = streams::stream_id(format!("product-{id}"))?;
                ficus_domain::check_raw_event(
                    stream.as_str(),
                    event_type.as_str(),
                    schema_version,
                    &e.data,
                )
                .map_err(|m| ApiError::bad_request("invalid_event", m))?;
            }
            Ok(())
        }
    }
}

/// Where `GET /v1/subscribe` starts for this `Last-Event-ID` header (raw bytes, as a client
/// sends them) and query string: the handler's own parsing. `Err` is the handler's 400.
pub fn sse_resume(last_event_id: Option<&[u8]>, query: &str) -> Result<u64, ApiError> {
    let header = match last_event_id {
        // Bytes hyper would refuse as a header value never reach the handler.
        Some(raw) => match HeaderValue::from_bytes(raw) {
            Ok(v) => Some(v),
            Err(_) => {
                return Err(ApiError::bad_request(
                    "invalid_header",
                    "not a header value",
                ))
            }
        },
        None => None,
    };
    let q = parse_query::<streams::SubscribeQuery>(query)?;
    streams::resume_position(header.as_ref(), q.from_position)
}

/// The position a `Last-Event-ID` names, as the handler reads it.
pub fn last_event_id(raw: &[u8]) -> Result<u64, ApiError> {
    let v = HeaderValue::from_bytes(raw)
        .map_err(|_| ApiError::bad_request("invalid_header", "not a header value"))?;
    streams::parse_last_event_id(&v)
}

/// `GET /v1/all`'s query (`from_position`, `limit`), as the handler reads it.
pub fn read_all_query(query: &str) -> Result<(u64, usize), ApiError> {
    let q = parse_query::<streams::ReadAllQuery>(query)?;
    Ok((
        q.from_position.unwrap_or(1).max(1),
        streams::limit(q.limit)?,
    ))
}

/// A query string through axum's `Query`, as `QueryParams` runs it.
fn parse_query<T: serde::de::DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let uri: Uri = format!("/v1/subscribe?{query}")
        .parse()
        .map_err(|_| ApiError::bad_request("invalid_query", "not a URI query"))?;
    Query::<T>::try_from_uri(&uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}
