//! Storage health of the embedded store, and its fault-injection control (docs/adr/0014).
//!
//! `/health/ready` reports the `storage` check: whether the event log's last write reached the
//! disk. While it did not, each readiness call sends one probe write, so the process becomes
//! ready again on its own once the device works (no client write needed).
//!
//! `GET/PUT/DELETE /v1/admin/storage-fault` (admin role) read, set and clear the injected
//! fault. They answer `404 fault_injection_disabled` unless the server was started with
//! `--fault-injection`, which is never the case in a normal deployment.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ficus_store::sqlite::{FaultPlan, StorageFault, MAX_FAULT_DELAY_MS};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::{AppState, READY_PROBE_TIMEOUT};

pub fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/admin/storage-fault",
        get(get_fault).put(put_fault).delete(clear_fault),
    )
}

/// The readiness check of the embedded store's writes, when this process has one.
pub(crate) async fn ready_check(st: &AppState) -> Option<Value> {
    let store = st.sqlite.as_ref()?;
    if store.storage_fault().is_some() {
        // Find out whether the device works again; a refusal leaves the fault in place.
        let _ = tokio::time::timeout(READY_PROBE_TIMEOUT, store.probe_write()).await;
    }
    let fault = store.storage_fault();
    let mut check = json!({"ok": fault.is_none(), "backend": "sqlite"});
    if let Some(why) = fault {
        check["error"] = json!(why);
    }
    if let Some(plan) = store.fault_plan() {
        check["injected_fault"] = json!(plan.current().map(|f| f.name()));
    }
    Some(check)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFault {
    fault: String,
    delay_ms: Option<u64>,
}

fn plan(st: &AppState) -> Result<&std::sync::Arc<FaultPlan>, ApiError> {
    st.sqlite
        .as_ref()
        .and_then(|s| s.fault_plan())
        .ok_or_else(|| {
            ApiError::not_found(
                "fault_injection_disabled",
                "storage-fault injection is off (start the server with --fault-injection)",
            )
        })
}

fn describe(st: &AppState, plan: &FaultPlan) -> Json<Value> {
    let current = plan.current();
    Json(json!({
        "fault": current.map(|f| f.name()),
        "delay_ms": match current {
            Some(StorageFault::SlowDisk { delay_ms }) => Some(delay_ms),
            _ => None,
        },
        "injected": plan.injected(),
        "storage_fault": st.sqlite.as_ref().and_then(|s| s.storage_fault()),
    }))
}

async fn get_fault(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let plan = plan(&st)?;
    Ok(describe(&st, plan))
}

async fn put_fault(
    State(st): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<SetFault>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let plan = plan(&st)?;
    let delay_ms = body.delay_ms.unwrap_or(0);
    if body.fault == "slow_disk" && !(1..=MAX_FAULT_DELAY_MS).contains(&delay_ms) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("slow_disk takes delay_ms in 1..={MAX_FAULT_DELAY_MS}"),
        ));
    }
    if body.fault != "slow_disk" && body.delay_ms.is_some() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "delay_ms applies to slow_disk only",
        ));
    }
    let fault = StorageFault::parse(&body.fault, delay_ms).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_field",
            "fault is one of disk_full, fsync_error, short_write, slow_disk",
        )
    })?;
    plan.set(Some(fault));
    tracing::warn!(fault = fault.name(), by = %caller.0.user_id, "storage fault injected");
    Ok(describe(&st, plan))
}

async fn clear_fault(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let plan = plan(&st)?;
    plan.clear();
    tracing::warn!(by = %caller.0.user_id, "storage fault cleared");
    Ok(describe(&st, plan))
}
