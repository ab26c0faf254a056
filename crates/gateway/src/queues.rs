//! Job-queue operations (admin): queue depths, the dead-letter queue of each queue (list,
//! redrive, purge), and one job item by id.
//!
//! `/v1/jobs/{id}` is left for bulk jobs; a single work item lives at `/v1/jobs/items/{id}`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_store::jobs::JOB_NAME_MAX_BYTES;
use ficus_store::{DeadFilter, Job, JobId, JobState};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{OptionalJsonBody, PathParams, QueryParams};
use crate::AppState;

/// Most dead jobs one list returns.
pub const DEAD_MAX_LIMIT: u64 = 1000;
const DEAD_DEFAULT_LIMIT: u64 = 100;
/// Most ids one redrive or purge filter may name.
pub const FILTER_MAX_IDS: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/queues", get(list_queues))
        .route("/v1/queues/{name}/dead", get(list_dead).delete(purge_dead))
        .route("/v1/queues/{name}/dead/redrive", post(redrive))
        .route("/v1/jobs/items/{id}", get(get_item))
}

/// A queue name from the path: 1..=128 bytes, else 400 `invalid_queue`.
fn queue_name(name: String) -> Result<String, ApiError> {
    if name.is_empty() || name.len() > JOB_NAME_MAX_BYTES {
        return Err(ApiError::bad_request(
            "invalid_queue",
            format!("a queue name is 1-{JOB_NAME_MAX_BYTES} bytes"),
        ));
    }
    Ok(name)
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Ready => "ready",
        JobState::Leased => "leased",
        JobState::Dead => "dead",
    }
}

/// The fields a dead-letter listing shows of a job.
fn job_json(j: &Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind,
        "payload": j.payload,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "last_error": j.last_error,
        "created_at": ficus_core::time::format_rfc3339_ms(j.created_at_ms),
        "run_at": ficus_core::time::format_rfc3339_ms(j.run_at_ms),
    })
}

/// One job item in any state: [`job_json`] plus its queue, state and priority.
fn item_json(j: &Job) -> Value {
    let mut v = job_json(j);
    v["queue"] = json!(j.queue);
    v["state"] = json!(state_name(j.state));
    v["priority"] = json!(j.priority);
    v
}

async fn list_queues(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let stats = st.jobs.stats(ficus_store::now_ms()).await?;
    let queues: Vec<Value> = stats
        .iter()
        .map(|s| {
            json!({
                "name": s.queue,
                "ready": s.ready,
                "delayed": s.delayed,
                "in_flight": s.in_flight,
                "dead": s.dead,
                "oldest_ready_wait_ms": s.oldest_ready_wait_ms,
            })
        })
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    limit: Option<u64>,
}

async fn list_dead(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    QueryParams(q): QueryParams<DeadQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let name = queue_name(name)?;
    let limit = match q.limit.unwrap_or(DEAD_DEFAULT_LIMIT) {
        l @ 1..=DEAD_MAX_LIMIT => l as usize,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {DEAD_MAX_LIMIT}"),
            ))
        }
    };
    let jobs = st.jobs.list_dead(&name, limit).await?;
    Ok(Json(json!({
        "jobs": jobs.iter().map(job_json).collect::<Vec<_>>()
    })))
}

async fn get_item(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<JobId>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let job = st
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("job_not_found", format!("no job item {id}")))?;
    Ok(Json(item_json(&job)))
}

/// Which dead jobs a redrive or purge touches; no body (or `{}`) is all of them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadFilterDto {
    ids: Option<Vec<JobId>>,
    kind: Option<String>,
}

/// The filter of an optional body, which must be a JSON object when given (so `[]` or `null`
/// is refused rather than read as "all").
type FilterBody = OptionalJsonBody<Map<String, Value>>;

fn dead_filter(body: Option<Map<String, Value>>) -> Result<DeadFilter, ApiError> {
    let dto: DeadFilterDto = serde_json::from_value(Value::Object(body.unwrap_or_default()))
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    if dto
        .ids
        .as_ref()
        .is_some_and(|ids| ids.len() > FILTER_MAX_IDS)
    {
        return Err(ApiError::bad_request(
            "invalid_filter",
            format!("ids may name at most {FILTER_MAX_IDS} jobs"),
        ));
    }
    if dto
        .kind
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > JOB_NAME_MAX_BYTES)
    {
        return Err(ApiError::bad_request(
            "invalid_filter",
            format!("kind is 1-{JOB_NAME_MAX_BYTES} bytes"),
        ));
    }
    Ok(DeadFilter {
        ids: dto.ids,
        kind: dto.kind,
    })
}

async fn redrive(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    OptionalJsonBody(body): FilterBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let name = queue_name(name)?;
    let filter = dead_filter(body)?;
    let n = st
        .jobs
        .redrive(&name, &filter, ficus_store::now_ms())
        .await?;
    Ok(Json(json!({ "redriven": n })))
}

async fn purge_dead(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    OptionalJsonBody(body): FilterBody,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let name = queue_name(name)?;
    let filter = dead_filter(body)?;
    let n = st.jobs.purge_dead(&name, &filter).await?;
    Ok(Json(json!({ "purged": n })))
}
