//! Blobs of the claim check over HTTP: fetch one by reference (streamed, with its hash as the
//! ETag), and, for admins, upload one (an event attachment, streamed into the store, never
//! through the JSON body limit), delete one or run a garbage-collection pass.
//!
//! Event attachments: an event appended through the raw streams API may carry references
//! (`{"$blob": "sha256:..", "size": N}`) to uploaded blobs anywhere in its data. The append
//! records a reference from the event to each (after checking that it exists) before the
//! events are written, so the collector never removes an attachment of a stored event; an
//! upload that no event refers to is removed after the grace period.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_store::blobs::{
    BlobError, BlobId, BlobReader, BlobRef, REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT,
    REF_EVENT,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{OptionalJsonBody, PathParams};
use crate::AppState;

/// Most blob references one append's events may carry.
pub const MAX_ATTACHMENTS_PER_APPEND: usize = 100;
/// References looked at to decide whether a caller owns a blob.
const OWNER_CHECK_MAX_REFS: usize = 100;
/// Bytes sent per body frame of a blob: what one download holds in memory at a time.
pub const BLOB_FRAME_BYTES: usize = ficus_store::blobs::BLOB_CHUNK_BYTES;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/blobs", post(upload))
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

/// The request body as an `AsyncRead`, frame by frame (never whole in memory).
struct BodyReader {
    stream: axum::body::BodyDataStream,
    buf: Bytes,
}

impl tokio::io::AsyncRead for BodyReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures::Stream;
        use std::task::Poll;
        while self.buf.is_empty() {
            match std::pin::Pin::new(&mut self.stream).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(std::io::Error::other(e.to_string())))
                }
                Poll::Ready(Some(Ok(b))) => self.buf = b,
            }
        }
        let n = self.buf.len().min(out.remaining());
        let chunk = self.buf.split_to(n);
        out.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// `POST /v1/blobs` (admin): stores the body as a blob and answers its reference. Nothing
/// refers to it yet: an event must, within the collector's grace period.
async fn upload(
    State(st): State<AppState>,
    caller: Result<Caller, ApiError>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut reader = BodyReader {
        stream: body.into_data_stream(),
        buf: Bytes::new(),
    };
    if let Err(e) = caller.and_then(|c| c.require_role("admin")) {
        return Err(drain_then(&mut reader, e).await);
    }
    let info = match st.claims.blobs().put(&mut reader).await {
        Ok(info) => info,
        Err(e) => return Err(drain_then(&mut reader, e.into()).await),
    };
    let mut reference = info.reference();
    reference["href"] = json!(format!("/v1/blobs/{}", info.id));
    Ok((StatusCode::CREATED, Json(reference)))
}

/// Most bytes of a refused upload read and thrown away before the refusal is answered.
pub const REFUSED_UPLOAD_DRAIN_BYTES: u64 = 16 * 1024 * 1024;
/// Longest time spent reading a refused upload before answering.
pub const REFUSED_UPLOAD_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads what is left of a refused upload (bounded by [`REFUSED_UPLOAD_DRAIN_BYTES`] and
/// [`REFUSED_UPLOAD_DRAIN_TIME`]) and gives back the refusal. A server that answers without
/// reading the body closes the connection on a client still writing it, which then sees a
/// broken pipe instead of the 401/403/413; reading the rest first, as nginx's lingering close
/// does, lets an ordinary client read the answer. A body past the bounds is cut off.
async fn drain_then(reader: &mut BodyReader, refusal: ApiError) -> ApiError {
    let mut sink = tokio::io::sink();
    let mut rest = reader.take(REFUSED_UPLOAD_DRAIN_BYTES);
    let _ = tokio::time::timeout(
        REFUSED_UPLOAD_DRAIN_TIME,
        tokio::io::copy(&mut rest, &mut sink),
    )
    .await;
    refusal
}

/// Every blob reference in `v`, at most `limit` (more is an error).
fn references_in(v: &Value, out: &mut Vec<BlobId>, limit: usize) -> Result<(), ApiError> {
    if let Some((id, _)) = ficus_store::blobs::reference_of(v) {
        if out.len() >= limit {
            return Err(ApiError::bad_request(
                "too_many_attachments",
                format!("one append may refer to at most {limit} blobs"),
            ));
        }
        out.push(id);
        return Ok(());
    }
    match v {
        Value::Array(items) => items.iter().try_for_each(|x| references_in(x, out, limit)),
        Value::Object(m) => m.values().try_for_each(|x| references_in(x, out, limit)),
        _ => Ok(()),
    }
}

/// Records a reference from each event to each blob its data names, checking first that every
/// one exists. Answers what was recorded, for [`release_attachments`] if the append fails.
pub(crate) async fn record_attachments(
    st: &AppState,
    stream: &str,
    events: &[ficus_core::NewEvent],
) -> Result<Vec<String>, ApiError> {
    let mut per_event = Vec::new();
    let mut total = Vec::new();
    for e in events {
        let mut ids = Vec::new();
        references_in(
            &e.payload,
            &mut ids,
            MAX_ATTACHMENTS_PER_APPEND - total.len().min(MAX_ATTACHMENTS_PER_APPEND),
        )?;
        total.extend(ids.iter().cloned());
        per_event.push((format!("{stream}/{}", e.id), ids));
    }
    for id in &total {
        if st.claims.blobs().stat(id).await?.is_none() {
            return Err(ApiError::bad_request(
                "unknown_blob",
                format!("no blob {id}: upload it first (POST /v1/blobs)"),
            ));
        }
    }
    let mut recorded = Vec::new();
    let now = ficus_store::now_ms();
    for (referrer, ids) in per_event {
        for id in ids {
            st.claims
                .refs()
                .add(&BlobRef::new(id, REF_EVENT, referrer.clone(), now))
                .await?;
        }
        recorded.push(referrer);
    }
    Ok(recorded)
}

/// Gives back the references of an append that was refused.
pub(crate) async fn release_attachments(st: &AppState, referrers: &[String]) {
    for r in referrers {
        if let Err(e) = st.claims.refs().release(REF_EVENT, r).await {
            // A reference left behind only keeps its blob longer; it is never wrong.
            tracing::warn!(referrer = %r, error = %e, "releasing an attachment reference failed");
        }
    }
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
