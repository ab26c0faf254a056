//! Sagas over HTTP: `GET /v1/sagas/{id}` answers a saga's state folded from its stream
//! `saga-{id}` — its status (`running`, `compensating`, `completed`, `failed`), each step's
//! status, attempts and last error, and why it failed. An order's fulfilment saga is
//! `fulfilment-{order_id}`.
//!
//! An admin may read any saga; anyone else only a fulfilment saga of their own order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ficus_runtime::saga::{SagaError, SagaOrchestrator, SagaState};
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::PathParams;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/sagas/{id}", get(get_saga))
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::Store(s) => s.into(),
            SagaError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "saga_not_found", e.to_string())
            }
            SagaError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.to_string())
            }
            SagaError::Corrupt(_) | SagaError::CompensationPending { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }
}

/// The customer a fulfilment saga acts for, once its first step has read the order.
fn customer_of(state: &SagaState) -> Option<&str> {
    state
        .step(ficus_domain::fulfilment::STEP_ORDER)?
        .output
        .as_ref()?
        .get("customer_id")?
        .as_str()
}

fn saga_json(s: &SagaState) -> Value {
    let steps: Vec<Value> = s
        .steps
        .iter()
        .map(|st| {
            json!({
                "name": st.name,
                "status": st.status,
                "attempts": st.attempts,
                "compensation_attempts": st.compensation_attempts,
                "last_error": st.last_error,
                "output": st.output,
            })
        })
        .collect();
    json!({
        "id": s.saga_id,
        "kind": s.kind,
        "status": s.status.as_str(),
        "input": s.input,
        "steps": steps,
        "failure": s.failure.as_ref().map(|(step, reason)| json!({"step": step, "reason": reason})),
        "started_at": ficus_core::time::format_rfc3339_ms(s.started_at_ms),
        "updated_at": ficus_core::time::format_rfc3339_ms(s.updated_at_ms),
        "version": s.version,
    })
}

async fn get_saga(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> Result<Response, ApiError> {
    // Reading needs no registered saga kinds: the state is the fold of the stream.
    let state = SagaOrchestrator::new(st.store.clone())
        .load(&id)
        .await?
        .ok_or_else(|| SagaError::NotFound(id.clone()))?;
    let actor = &caller.0;
    if !actor.has_role("admin") && customer_of(&state) != Some(actor.user_id.as_str()) {
        // The same answer as for a saga that does not exist: nothing is learnt about others'.
        return Err(SagaError::NotFound(id).into());
    }
    Ok(Json(saga_json(&state)).into_response())
}
