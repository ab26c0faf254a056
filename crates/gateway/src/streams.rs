//! Raw event-store endpoints (admin): append, read a stream, read the global log, and live
//! subscriptions over Server-Sent Events. Also projection status and rebuild.

use std::convert::Infallible;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ficus_core::{EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
use ficus_runtime::PgRebuildError;
use ficus_store::{Subscription, SubscriptionError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::{AppState, CorrelationId};

/// Most events a raw read returns per page.
pub const READ_MAX_LIMIT: u64 = 1000;
const READ_DEFAULT_LIMIT: u64 = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{stream}", get(read_stream).post(append))
        .route("/v1/all", get(read_all))
        .route("/v1/subscribe", get(subscribe))
}

/// The JSON shape of a recorded event (shared with the bus's messages).
pub use ficus_store::event_json;

pub(crate) fn stream_id(s: String) -> Result<StreamId, ApiError> {
    StreamId::new(s).map_err(|e| ApiError::bad_request("invalid_stream_id", e.to_string()))
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum ExpectedDto {
    Exact(u64),
    Named(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendEventDto {
    #[serde(default)]
    pub(crate) id: Option<uuid::Uuid>,
    #[serde(rename = "type")]
    pub(crate) event_type: String,
    #[serde(default)]
    pub(crate) data: Value,
    #[serde(default)]
    pub(crate) metadata: Option<Metadata>,
    #[serde(default)]
    pub(crate) schema_version: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AppendDto {
    #[serde(default)]
    pub(crate) expected_version: Option<ExpectedDto>,
    pub(crate) events: Vec<AppendEventDto>,
}

pub(crate) fn expected(dto: Option<ExpectedDto>) -> Result<ExpectedVersion, ApiError> {
    Ok(match dto {
        None => ExpectedVersion::Any,
        Some(ExpectedDto::Exact(v)) => ExpectedVersion::Exact(v),
        Some(ExpectedDto::Named(s)) => match s.as_str() {
            "any" => ExpectedVersion::Any,
            "no_stream" => ExpectedVersion::NoStream,
            "exists" => ExpectedVersion::Exists,
            _ => return Err(ApiError::bad_request(
                "invalid_expected_version",
                "expected_version is a version number or one of \"any\", \"no_stream\", \"exists\"",
            )),
        },
    })
}

async fn append(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    PathParams(stream): PathParams<String>,
    JsonBody(body): JsonBody<AppendDto>,
) -> Result<Response, ApiError> {
    caller.require_role("admin")?;
    let stream = stream_id(stream)?;
    let expected = expected(body.expected_version)?;
    if body.events.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "events must hold at least one event",
        ));
    }
    let mut events = Vec::with_capacity(body.events.len());
    for e in body.events {
        let event_type = EventType::new(e.event_type)
            .map_err(|err| ApiError::bad_request("invalid_event_type", err.to_string()))?;
        let schema_version = e.schema_version.unwrap_or(1).max(1);
        ficus_domain::check_raw_event(
            stream.as_str(),
            event_type.as_str(),
            schema_version,
            &e.data,
        )
        .map_err(|m| ApiError::bad_request("invalid_event", m))?;
        let mut metadata = e.metadata.unwrap_or_default();
        metadata
            .correlation_id
            .get_or_insert_with(|| corr.0.clone());
        metadata
            .user_id
            .get_or_insert_with(|| caller.0.user_id.clone());
        // The request's trace goes with the events, as on the shop's commands; a traceparent
        // the client put into the metadata itself is kept.
        if !metadata
            .extra
            .contains_key(ficus_runtime::telemetry::TRACEPARENT_KEY)
        {
            if let Some(ctx) = ficus_runtime::telemetry::current() {
                ctx.stamp_metadata(&mut metadata);
            }
        }
        events.push(NewEvent {
            id: e.id.unwrap_or_else(uuid::Uuid::now_v7),
            event_type,
            schema_version,
            metadata,
            payload: e.data,
        });
    }
    // Attachments (blob references in the data) are referenced before the events exist, so
    // the collector cannot remove one in between; a refused append gives them back.
    let referrers = crate::blobs::record_attachments(&st, stream.as_str(), &events).await?;
    let r = match st.store.append(&stream, expected, events).await {
        Ok(r) => r,
        Err(e) => {
            crate::blobs::release_attachments(&st, &referrers).await;
            return Err(e.into());
        }
    };
    let body = json!({
        "stream": stream,
        "first_version": r.first_version,
        "last_version": r.last_version,
        "position": r.last_position,
        "first_position": r.first_position,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadStreamQuery {
    from_version: Option<u64>,
    limit: Option<u64>,
}

pub(crate) fn limit(l: Option<u64>) -> Result<usize, ApiError> {
    match l.unwrap_or(READ_DEFAULT_LIMIT) {
        l @ 1..=READ_MAX_LIMIT => Ok(l as usize),
        _ => Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {READ_MAX_LIMIT}"),
        )),
    }
}

async fn read_stream(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(stream): PathParams<String>,
    QueryParams(q): QueryParams<ReadStreamQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let stream = stream_id(stream)?;
    let limit = limit(q.limit)?;
    let events = st
        .store
        .read_stream(&stream, q.from_version.unwrap_or(1).max(1), limit)
        .await?;
    if events.is_empty() && st.store.stream_version(&stream).await? == 0 {
        return Err(ApiError::not_found(
            "stream_not_found",
            format!("stream {stream} does not exist"),
        ));
    }
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>()
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadAllQuery {
    pub(crate) from_position: Option<u64>,
    pub(crate) limit: Option<u64>,
}

async fn read_all(
    State(st): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<ReadAllQuery>,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let limit = limit(q.limit)?;
    let events = st
        .store
        .read_all(q.from_position.unwrap_or(1).max(1), limit)
        .await?;
    Ok(Json(json!({
        "events": events.iter().map(event_json).collect::<Vec<_>>(),
        "head_position": st.store.head_position(),
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeQuery {
    pub(crate) from_position: Option<u64>,
}

/// The position a subscription starts at: right after the `Last-Event-ID` a reconnecting
/// client sends (a position this server sent: decimal, below `i64::MAX`), else the query's
/// `from_position`, else the start of the log.
pub(crate) fn resume_position(
    last_event_id: Option<&axum::http::HeaderValue>,
    from_position: Option<u64>,
) -> Result<u64, ApiError> {
    match last_event_id {
        Some(v) => Ok(parse_last_event_id(v)? + 1),
        None => Ok(from_position.unwrap_or(1)),
    }
}

/// A `Last-Event-ID` header as the position it names.
pub(crate) fn parse_last_event_id(v: &axum::http::HeaderValue) -> Result<u64, ApiError> {
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|p| *p < i64::MAX as u64)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_last_event_id",
                "Last-Event-ID must be a position the server sent",
            )
        })
}

/// Live subscription over SSE: one event per message, `id:` = position. A reconnecting
/// client sends `Last-Event-ID` and resumes right after it. A subscriber too slow for the live
/// feed gets an `event: error` message with code `subscriber_fell_behind` and the stream
/// ends; it reconnects with its last id and loses nothing.
async fn subscribe(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(q): QueryParams<SubscribeQuery>,
) -> Result<Response, ApiError> {
    caller.require_role("admin")?;
    let from = resume_position(headers.get("last-event-id"), q.from_position)?;
    let permit = st.sse_permits.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "too_many_subscribers",
            "the server serves its limit of live subscribers",
        )
    })?;
    let sub = Subscription::new(st.store.clone(), from);
    let shutdown = st.shutdown.clone();
    let stream = futures::stream::unfold(
        (sub, shutdown, permit, false),
        |(mut sub, shutdown, permit, done)| async move {
            if done {
                return None;
            }
            let next = tokio::select! {
                _ = shutdown.wait() => return None,
                n = sub.next() => n,
            };
            let (msg, done) = match next {
                Ok(e) => (
                    SseEvent::default()
                        .id(e.position.to_string())
                        .data(event_json(&e).to_string()),
                    false,
                ),
                Err(err) => {
                    let code = match err {
                        SubscriptionError::FellBehind { .. } => "subscriber_fell_behind",
                        SubscriptionError::Closed => "store_closed",
                        SubscriptionError::Store(_) => "store_unavailable",
                    };
                    let body = json!({"code": code, "message": err.to_string(),
                                      "next_position": sub.next_position()});
                    (
                        SseEvent::default().event("error").data(body.to_string()),
                        true,
                    )
                }
            };
            Some((Ok::<_, Infallible>(msg), (sub, shutdown, permit, done)))
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(st.config.sse_keep_alive))
        .into_response())
}

pub async fn list_projections(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_role("admin")?;
    let list: Vec<Value> = st
        .projections()
        .iter()
        .map(|p| {
            let s = p.status();
            let mut status = json!({
                "name": p.name(),
                "checkpoint": s.checkpoint,
                "state": format!("{:?}", s.state),
                "lag_events": p.lag_events(),
                "last_lag_ms": s.last_lag_ms,
                "events_applied": s.events_applied,
                "mode": p.mode(),
            });
            if let Some(r) = &s.rebuild {
                status["rebuild"] = rebuild_json(r);
            }
            status
        })
        .collect();
    Ok(Json(
        json!({"projections": list, "head_position": st.store.head_position()}),
    ))
}

/// A blue/green rebuild's progress while the current copy serves: the new copy's position,
/// the head it replays toward, and its last failure (retried) if any.
pub(crate) fn rebuild_json(r: &ficus_runtime::RebuildProgress) -> Value {
    let mut v = json!({"position": r.position, "target": r.target});
    if let Some(e) = &r.error {
        v["error"] = json!(e);
    }
    v
}

/// Longest a rebuild request waits for the active runner (in any process, on PostgreSQL) to
/// reset the read model before answering 503 `rebuild_pending`.
const REBUILD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn rebuild_projection(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
) -> Result<Response, ApiError> {
    caller.require_role("admin")?;
    let handle = st
        .projections()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            ApiError::not_found("projection_not_found", format!("no projection {name}"))
        })?;
    handle.rebuild(REBUILD_WAIT).await.map_err(|e| match e {
        // Recorded: whichever runner leads next performs it.
        PgRebuildError::Pending { .. } => ApiError::unavailable("rebuild_pending", e.to_string()),
        PgRebuildError::Store(e) => e.into(),
        PgRebuildError::Stopped(m) => ApiError::unavailable("rebuild_failed", m),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"name": name, "target_position": st.store.head_position()})),
    )
        .into_response())
}
