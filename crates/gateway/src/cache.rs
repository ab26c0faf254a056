//! HTTP caching of query answers: `ETag`, `Cache-Control`, `If-None-Match` → `304`, and the
//! optional in-process cache-aside layer ([`ficus_runtime::ReadCache`]) the queries read
//! through.
//!
//! Validators. A product's own document (details, the mobile view) is tagged with the
//! product's version, `"<version>"`: it changes exactly when one of the product's events is
//! applied, and it is the very tag a command sends back in `If-Match`. Anything assembled from
//! more than one stream (search, a customer's orders, analytics, the web view with related
//! products) is tagged with the read model's position, `"p<position>"`: the answer is a pure
//! function of the URL and the read-model snapshot at that position, and no cheaper per-answer
//! version exists. Both are strong validators (same tag ⇒ same bytes).
//!
//! `Cache-Control: private, no-cache`: a client (or its private cache) may keep the answer
//! but must revalidate it on every use, which costs a `304` with no body when nothing changed.
//! A max-age, even a short one, would let a client serve itself a stale copy right after its
//! own command, breaking read-your-own-writes; `private` because answers depend on the
//! caller's token (a customer's orders, the admin-only analytics).

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ficus_core::Position;
use ficus_runtime::{ReadCache, ReadModelHandle};
use ficus_store::StoreError;
use serde::Serialize;

use crate::error::ApiError;
use crate::{AppState, POSITION_HEADER};

/// The `Cache-Control` of every query answer (see the module doc for why).
pub const QUERY_CACHE_CONTROL: &str = "private, no-cache";

/// The cache-aside layer's values: each key's namespace fixes its concrete type, so the
/// downcast in [`cached_query`] cannot fail for a well-formed key.
pub type ShopCache = ReadCache<Arc<dyn Any + Send + Sync>>;

/// The tag of a document that is one aggregate's state: its version.
pub(crate) fn version_etag(version: u64) -> String {
    format!("\"{version}\"")
}

/// The tag of an answer assembled from a read model at `position`.
pub(crate) fn position_etag(position: Position) -> String {
    format!("\"p{position}\"")
}

/// Whether `If-None-Match` matches `etag` by weak comparison (RFC 9110 §13.1.2): `*` matches
/// any current representation; `W/` prefixes are ignored. A malformed header matches nothing,
/// so the client simply gets the full answer.
pub(crate) fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let mine = opaque(etag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == mine)
}

/// The answer to a query: `304` with the validators and no body when the client's copy is
/// current, else `200` with `body`. Both carry `ETag`, `Cache-Control` and `Ficus-Position`.
pub(crate) fn respond<T: Serialize>(
    headers: &HeaderMap,
    etag: &str,
    position: Position,
    body: impl FnOnce() -> T,
) -> Response {
    answer(headers, etag, position, || Json(body()).into_response())
}

/// [`respond`] for a body already serialized as JSON (a read-cache hit's bytes).
pub(crate) fn respond_json_bytes(
    headers: &HeaderMap,
    etag: &str,
    position: Position,
    body: Bytes,
) -> Response {
    answer(headers, etag, position, || {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    })
}

fn answer(
    headers: &HeaderMap,
    etag: &str,
    position: Position,
    full: impl FnOnce() -> Response,
) -> Response {
    let mut resp = if none_match(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        full()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(QUERY_CACHE_CONTROL),
    );
    h.insert(
        HeaderName::from_static(POSITION_HEADER),
        HeaderValue::from(position),
    );
    resp
}

/// Waits for `min_position` (bounded) on `model`, then answers with `read`'s result and the
/// position it reflects, through the cache-aside layer when it is on and `key` names the
/// answer (namespaced by query kind, e.g. `product-json:<id>`).
///
/// A cached answer is used only if it reflects at least both `min_position` and the read
/// model's checkpoint as this process knows it, so an applied event invalidates it and a
/// client never reads behind its own write.
pub(crate) async fn cached_query<T, F, Fut>(
    st: &AppState,
    model: ReadModelHandle,
    min_position: Option<Position>,
    key: String,
    read: F,
) -> Result<(Arc<T>, Position), ApiError>
where
    T: Send + Sync + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(T, Position), StoreError>>,
{
    if let Some(p) = min_position {
        model
            .wait_for(p, st.config.read_your_writes_timeout)
            .await?;
    }
    let Some(cache) = &st.read_cache else {
        let (value, position) = read().await?;
        return Ok((Arc::new(value), position));
    };
    let checkpoint = model.status().checkpoint;
    cache.observe_checkpoint(model.name(), checkpoint);
    let fresh_from = min_position.unwrap_or(0).max(checkpoint);
    let (value, position) = cache
        .get_or_load(&key, fresh_from, || {
            let pending = read();
            async move {
                let (value, position) = pending.await?;
                Ok::<_, StoreError>((Arc::new(value) as Arc<dyn Any + Send + Sync>, position))
            }
        })
        .await?;
    let value = value.downcast::<T>().map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("read cache key {key} holds another type of answer"),
        )
    })?;
    Ok((value, position))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn if_none_match_uses_weak_comparison_lists_and_star() {
        assert!(none_match(&with("\"3\""), "\"3\""));
        assert!(none_match(&with("W/\"3\""), "\"3\""));
        assert!(none_match(&with("\"1\", W/\"p9\" ,\"3\""), "\"3\""));
        assert!(none_match(&with("*"), "\"p4\""));
        assert!(!none_match(&with("\"4\""), "\"3\""));
        assert!(!none_match(&with("\"p3\""), "\"3\""));
        assert!(!none_match(&HeaderMap::new(), "\"3\""));
    }
}
