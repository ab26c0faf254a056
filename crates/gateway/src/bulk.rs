//! Bulk jobs over HTTP: submit one (it fans out into items on the shop queue), follow its
//! progress and result, cancel it.

use axum::extract::{Extension, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_domain::jobs::BulkJobError;
use ficus_store::Batch;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams};
use crate::idempotency::KeyHold;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/cancel", post(cancel))
}

/// Submission, which takes `Idempotency-Key` (the router puts the idempotency guard on it).
pub fn submit_routes() -> Router<AppState> {
    Router::new().route("/v1/jobs", post(submit))
}

/// The JSON shape of a bulk job.
pub fn batch_json(b: &Batch) -> Value {
    let finished = b.done + b.dead + b.cancelled;
    let progress = if b.total == 0 {
        1.0
    } else {
        (finished as f64 / b.total as f64).min(1.0)
    };
    json!({
        "id": b.id,
        "kind": b.kind,
        "params": b.params,
        "state": b.state.as_str(),
        "total": b.total,
        "done": b.done,
        "dead": b.dead,
        "cancelled": b.cancelled,
        "progress": progress,
        "created_at": ficus_core::time::format_rfc3339_ms(b.created_at_ms),
        "finished_at": b.finished_at_ms.map(ficus_core::time::format_rfc3339_ms),
        "result": b.result.as_ref().map(crate::blobs::with_hrefs),
    })
}

impl From<BulkJobError> for ApiError {
    fn from(e: BulkJobError) -> Self {
        match e {
            BulkJobError::Invalid(m) => ApiError::bad_request("invalid_job", m),
            BulkJobError::Forbidden(m) => ApiError::forbidden(m),
            BulkJobError::NotFound(m) => ApiError::not_found("product_not_found", m),
            BulkJobError::TooLarge(m) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "too_many_items", m)
            }
            BulkJobError::Store(s) => s.into(),
            BulkJobError::Blob(b) => b.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitDto {
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) params: serde_json::Map<String, Value>,
}

async fn submit(
    State(st): State<AppState>,
    caller: Caller,
    hold: Option<Extension<KeyHold>>,
    JsonBody(body): JsonBody<SubmitDto>,
) -> Result<Response, ApiError> {
    let params = Value::Object(body.params);
    let now = ficus_store::now_ms();
    let batch = match hold {
        None => st.bulk.submit(&caller.0, &body.kind, params, now).await?,
        Some(Extension(hold)) => {
            // The batch id comes from the key: an earlier holder of this key that died before
            // its answer was recorded left its batch under the same id; answer with it rather
            // than fan out a second time.
            let id = hold.effect_id();
            match st.jobs.get_batch(&id).await? {
                Some(earlier) => earlier,
                None => {
                    st.bulk
                        .submit_with_id(&caller.0, &id, &body.kind, params, now)
                        .await?
                }
            }
        }
    };
    Ok((StatusCode::ACCEPTED, Json(batch_json(&batch))).into_response())
}

/// The batch, if the caller submitted it or is an admin; 404 otherwise (no hint that it
/// exists).
async fn visible_batch(st: &AppState, caller: &Caller, id: &str) -> Result<Batch, ApiError> {
    let not_found = || ApiError::not_found("job_not_found", format!("no bulk job {id}"));
    let batch = st.jobs.get_batch(id).await?.ok_or_else(not_found)?;
    let mine = batch.params["submitted_by"].as_str() == Some(caller.0.user_id.as_str());
    if mine || caller.0.has_role("admin") {
        Ok(batch)
    } else {
        Err(not_found())
    }
}

async fn status(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    let batch = visible_batch(&st, &caller, &id).await?;
    Ok(Json(batch_json(&batch)))
}

async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    visible_batch(&st, &caller, &id).await?;
    let batch = st
        .jobs
        .cancel_batch(&id, ficus_store::now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no bulk job {id}")))?;
    Ok(Json(batch_json(&batch)))
}
