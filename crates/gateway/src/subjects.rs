//! Data subjects (admin): `DELETE /v1/subjects/{id}/keys` destroys a subject's encryption
//! keys, which erases the personal fields of every event naming it (crypto-shredding,
//! docs/adr/0011-crypto-shredding.md). The events stay: streams keep their versions and
//! positions, aggregates still load; the personal fields read as `"[erased]"`.
//!
//! Idempotent: the answer is `204 No Content` whether the subject had keys or not, so a retry
//! after a lost answer succeeds, and the answer does not tell whether a subject ever existed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::delete;
use axum::Router;
use ficus_store::shredding::MAX_SUBJECT_BYTES;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::PathParams;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/subjects/{id}/keys", delete(forget_subject))
}

async fn forget_subject(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_role("admin")?;
    if id.is_empty() || id.len() > MAX_SUBJECT_BYTES {
        return Err(ApiError::bad_request(
            "invalid_subject",
            format!("a subject id has 1..={MAX_SUBJECT_BYTES} bytes"),
        ));
    }
    // Durable before answered: the key table's delete has committed when this returns.
    let destroyed = st.shredder.forget(&id).await?;
    tracing::info!(subject = %id, keys = destroyed, by = %caller.0.user_id, "subject keys destroyed");
    Ok(StatusCode::NO_CONTENT)
}
