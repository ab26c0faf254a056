//! Blobs of the claim check over HTTP: fetch one by reference (streamed, with its hash as the
//! ETag), and, for admins, delete one or run a garbage-collection pass.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_store::blobs::{
    BlobError, BlobId, BlobReader, REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{OptionalJsonBody, PathParams};
use crate::AppState;

/// References looked at to decide whether a caller owns a blob.
const OWNER_CHECK_MAX_REFS: usize = 100;
/// Bytes sent per body frame of a blob: what one download holds in memory at a time.
pub const BLOB_FRAME_BYTES: usize = ficus_store::blobs::BLOB_CHUNK_BYTES;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/blobs/{id}", get(fetch).delete(remove))
        .route("/v1/blobs/gc", post(collect))
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::NotFound(id) => {
                ApiError::not_found("blob_not_found", format!("no blob {id}"))
            }
            BlobError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "blob_too_large",
                e.to_string(),
            ),
            BlobError::Invalid(m) => ApiError::bad_request("invalid_blob", m),
            BlobError::Corrupt(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
            BlobError::Unavailable(m) => ApiError::unavailable("blob_store_unavailable", m),
        }
    }
}

fn not_found(id: &BlobId) -> ApiError {
    ApiError::not_found("blob_not_found", format!("no blob {id}"))
}

/// The blob, if the caller may read it: an admin any; anyone else one that a bulk job they
/// submitted references. Otherwise 404, with no hint that it exists.
async fn readable(st: &AppState, caller: &Caller, id: &BlobId) -> Result<(), ApiError> {
    if caller.0.has_role("admin") {
        return Ok(());
    }
    let refs = st.claims.refs().of_blob(id, OWNER_CHECK_MAX_REFS).await?;
    for r in refs {
        let kind = r.referrer_kind.as_str();
        if ![REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT].contains(&kind) {
            continue;
        }
        let batch = r.referrer_id.split('/').next().unwrap_or_default();
        if let Some(b) = st.jobs.get_batch(batch).await? {
            if b.params["submitted_by"].as_str() == Some(caller.0.user_id.as_str()) {
                return Ok(());
            }
        }
    }
    Err(not_found(id))
}

/// The body of a download: the blob's bytes in frames. The reader verifies the hash as the
/// last bytes go; a corrupt blob ends the body with an error (the connection is cut, so the
/// client never takes a short or altered body for the whole), and is logged.
fn body_of(reader: BlobReader) -> Body {
    let stream = futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = vec![0u8; BLOB_FRAME_BYTES];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(reader)))
            }
            Err(e) => {
                tracing::error!(blob = %reader.info().id, error = %e, "serving a blob failed");
                Some((Err(e), None))
            }
        }
    });
    Body::from_stream(stream)
}

async fn fetch(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    let id = BlobId::parse(&id)?;
    readable(&st, &caller, &id).await?;
    let reader = st.claims.blobs().get(&id).await?;
    let size = reader.info().size_bytes;
    let etag = format!("\"{id}\"");
    let mut resp = Response::new(body_of(reader));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Content-addressed: the bytes behind this URL never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=31536000, immutable"),
    );
    Ok(resp)
}

async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let id = BlobId::parse(&id)?;
    // References first: a crash between the two leaves an unreferenced blob, which the
    // collector removes; the other order could leave references to nothing.
    let released = st.claims.refs().release_blob(&id).await?;
    if !st.claims.blobs().delete(&id).await? {
        return Err(not_found(&id));
    }
    Ok(Json(
        json!({"id": id.to_string(), "released_refs": released}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GcDto {
    grace_ms: Option<i64>,
}

async fn collect(
    State(st): State<AppState>,
    caller: Caller,
    OptionalJsonBody(body): OptionalJsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let dto: GcDto = serde_json::from_value(Value::Object(body.unwrap_or_default()))
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    if dto.grace_ms.is_some_and(|g| g < 0) {
        return Err(ApiError::bad_request(
            "invalid_grace",
            "grace_ms must not be negative",
        ));
    }
    let report = st
        .claims
        .collect(Some(st.jobs.as_ref()), dto.grace_ms)
        .await?;
    Ok(Json(json!(report)))
}

/// `value` with an `href` (`/v1/blobs/{id}`) beside every top-level claim-check reference, for
/// a bulk job's result.
pub fn with_hrefs(value: &Value) -> Value {
    let Value::Object(m) = value else {
        return value.clone();
    };
    let mut out = m.clone();
    for v in out.values_mut() {
        if let Some((id, _)) = ficus_store::blobs::reference_of(v) {
            v["href"] = json!(format!("/v1/blobs/{id}"));
        }
    }
    Value::Object(out)
}
