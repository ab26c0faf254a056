//! `Idempotency-Key` on command routes (docs/adr/0008-idempotency-keys.md).
//!
//! [`guard`] runs before a command handler when the request carries the header: it claims the
//! key for the caller (the token's `sub`) with a fingerprint of method, path and body. A key
//! already answered is replayed (same status and body, `Idempotent-Replayed: true`); one used
//! for another request is `422 idempotency_key_reused`; one held by an in-flight request is
//! waited for (bounded) and then `409 request_in_progress`. A claimed request runs with a
//! [`KeyHold`] in its extensions: a shop command's append goes through it, so the events and
//! the recorded answer commit together; a bulk job takes its batch id from it
//! ([`KeyHold::effect_id`]), so a retry finds the batch instead of creating a second. What the handler answered without appending (a refusal, a
//! no-op) is recorded afterwards; a conflict or a server error gives the key back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ficus_domain::service::Shop;
use ficus_store::idempotency::{ClaimedAppends, MAX_IDEMPOTENCY_KEY_BYTES};
use ficus_store::{Claim, ClaimRequest, IdempotencyStore, Responder, StoredResponse, Ticket};
use sha2::{Digest, Sha256};

use crate::auth::Caller;
use crate::error::{ApiError, RETRY_AFTER_SECS};
use crate::AppState;

/// The request header naming a command's idempotency key.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// The response header marking an answer replayed from a key's record.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Largest answer recorded for a key; a larger one is not recorded (the key is given back).
/// Command answers are a few hundred bytes.
pub const MAX_RECORDED_BODY_BYTES: usize = 64 * 1024;

/// A request's claim on its idempotency key, for the handler to route its append through.
#[derive(Clone)]
pub struct KeyHold {
    ticket: Ticket,
    keys: Arc<dyn IdempotencyStore>,
    /// Set when an append completed the claim with its answer.
    completed: Arc<AtomicBool>,
}

impl KeyHold {
    /// `shop` with its append completing this claim; the recorded answer is `respond`'s.
    pub fn shop(&self, st: &AppState, respond: Responder) -> Shop {
        st.shop.on_store(Arc::new(ClaimedAppends::new(
            st.store.clone(),
            self.keys.clone(),
            self.ticket.clone(),
            respond,
            self.completed.clone(),
        )))
    }
}

impl KeyHold {
    /// The id of this use of the key's effect, for a write that is not an append (a bulk
    /// job's batch): every holder of the key derives the same id, also after a crash and a
    /// takeover, so the write either finds its earlier self or is refused as a duplicate.
    pub fn effect_id(&self) -> String {
        effect_id(
            &self.ticket.scope,
            &self.ticket.key,
            self.ticket.created_at_ms,
        )
    }
}

/// A UUID-shaped digest of (scope, key, creation time of the key's record).
pub fn effect_id(scope: &str, key: &str, created_at_ms: i64) -> String {
    let mut h = Sha256::new();
    for part in [
        scope.as_bytes(),
        key.as_bytes(),
        &created_at_ms.to_be_bytes(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Checks a key: 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] printable ASCII characters.
fn parse_key(value: &HeaderValue) -> Result<&str, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_idempotency_key",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} printable ASCII \
                 characters"
            ),
        )
    };
    let bytes = value.as_bytes();
    if bytes.is_empty()
        || bytes.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !bytes.iter().all(|b| (0x20..=0x7e).contains(b))
    {
        return Err(bad());
    }
    value.to_str().map_err(|_| bad())
}

/// What a repeat must match: SHA-256 over method, path with query, and body, as hex.
pub fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(method.as_str().as_bytes());
    h.update(b"\n");
    h.update(path_and_query.as_bytes());
    h.update(b"\n");
    h.update(body);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn replay(r: StoredResponse) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, r.body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    resp
}

/// The idempotency middleware of the command routes (see the module doc).
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match guarded(st, req, next).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn guarded(st: AppState, req: Request, next: Next) -> Result<Response, ApiError> {
    let keyed = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && req.headers().contains_key(IDEMPOTENCY_KEY_HEADER);
    if !keyed {
        return Ok(next.run(req).await);
    }
    let (mut parts, body) = req.into_parts();
    let key = parse_key(&parts.headers[IDEMPOTENCY_KEY_HEADER])?.to_owned();
    // The key belongs to the caller: the same key from someone else is another key.
    let caller = Caller::from_request_parts(&mut parts, &st).await?;
    let body = axum::body::to_bytes(body, st.config.max_body_bytes)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over {} bytes", st.config.max_body_bytes),
            )
        })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let print = fingerprint(&parts.method, path, &body);
    let cfg = &st.config.idempotency;
    let deadline = tokio::time::Instant::now() + cfg.in_flight_wait;
    let ticket = loop {
        let claim = st
            .idempotency
            .claim(&ClaimRequest {
                scope: &caller.0.user_id,
                key: &key,
                fingerprint: &print,
                now_ms: ficus_store::now_ms(),
                lease_ms: cfg.lease.as_millis() as i64,
                retention_ms: cfg.retention.as_millis() as i64,
            })
            .await?;
        match claim {
            Claim::Owned(t) => break t,
            Claim::Replay(r) => return Ok(replay(r)),
            Claim::Mismatch => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request (method, path or body)",
                ))
            }
            Claim::InProgress if tokio::time::Instant::now() + cfg.in_flight_poll < deadline => {
                tokio::time::sleep(cfg.in_flight_poll).await;
            }
            Claim::InProgress => {
                let mut e = ApiError::new(
                    StatusCode::CONFLICT,
                    "request_in_progress",
                    "a request with this Idempotency-Key is still in flight; retry later",
                );
                e.retry_after_secs = Some(RETRY_AFTER_SECS);
                return Err(e);
            }
        }
    };
    let hold = KeyHold {
        ticket: ticket.clone(),
        keys: st.idempotency.clone(),
        completed: Arc::new(AtomicBool::new(false)),
    };
    parts.extensions.insert(hold.clone());
    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    if hold.completed.load(Ordering::Acquire) {
        return Ok(resp);
    }
    settle(&st, &ticket, resp).await
}

/// Records the answer of a claimed request that appended nothing, or gives the key back.
///
/// Recorded: successes and refusals (4xx), which a repeat would only repeat. Given back:
/// conflicts (409: the stream moved or the claim was lost; a retry may decide differently)
/// and server errors (5xx: nothing was written, a retry should run the command again).
async fn settle(st: &AppState, ticket: &Ticket, resp: Response) -> Result<Response, ApiError> {
    let status = resp.status();
    let give_back = status == StatusCode::CONFLICT || status.is_server_error();
    if give_back {
        if let Err(e) = st.idempotency.release(ticket).await {
            // The lease runs out by itself; only a retry before then waits.
            tracing::warn!(error = %e, "could not give an idempotency key back");
        }
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_RECORDED_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let _ = st.idempotency.release(ticket).await;
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("answer not recordable: {e}"),
            ));
        }
    };
    let record = StoredResponse {
        status: status.as_u16(),
        body: String::from_utf8_lossy(&bytes).into_owned(),
    };
    // Not recorded (store down, claim lost): the answer still goes out; a repeat within the
    // lease waits, after it runs the command again, which wrote nothing the first time.
    match st.idempotency.complete(ticket, &record).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(key = %ticket.key, "idempotency claim lost before recording"),
        Err(e) => tracing::warn!(error = %e, "could not record an idempotent answer"),
    }
    Ok(Response::from_parts(parts, Body::from(bytes)))
}
