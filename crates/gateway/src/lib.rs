//! The HTTP face of Ficus: axum routes, DTOs, auth, and the mapping of errors to statuses.
//!
//! Architecture invariant: this is the only crate that knows HTTP. It turns requests into
//! calls on the runtime and the domain, and their answers into JSON.

mod accounts;
pub mod admin_listener;
pub mod auth;
mod blobs;
mod bulk;
pub mod cache;
pub mod console;
mod error;
mod extract;
#[doc(hidden)]
pub mod fuzzing;
pub mod idempotency;
pub mod metrics;
mod openapi;
pub mod payments;
pub mod proxy;
mod queues;
mod sagas;
mod shop;
mod storage;
mod streams;
mod subjects;
mod views;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_domain::jobs::BulkJobs;
use ficus_domain::read_side::ShopReadSide;
use ficus_domain::service::Shop;
use ficus_runtime::telemetry::{self, TraceContext, TraceParent};
use ficus_runtime::{ProjectionState, ReadModelHandle, Shutdown};
use ficus_store::{EventStore, JobQueue};
use opentelemetry::trace::TraceContextExt as _;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use auth::{Auth, Claims};
pub use error::ApiError;

/// Header carrying the position a query's answer reflects.
pub const POSITION_HEADER: &str = "ficus-position";
/// Header carrying the request's correlation id (taken from the request or created).
pub const CORRELATION_HEADER: &str = "x-correlation-id";
/// Longest correlation id kept from a request, in bytes.
const CORRELATION_MAX_BYTES: usize = 128;

/// Limits of the HTTP API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted; more is a 413.
    pub max_body_bytes: usize,
    /// Longest a query waits for `min_position` before answering 503 `read_model_lagging`.
    pub read_your_writes_timeout: Duration,
    /// Live SSE subscribers served at once; more get 503.
    pub max_sse_subscribers: usize,
    /// Interval of SSE keep-alive comments.
    pub sse_keep_alive: Duration,
    /// Retention, in-flight lease and wait of `Idempotency-Key`s on command routes.
    pub idempotency: ficus_store::IdempotencyConfig,
    /// The in-process cache-aside layer in front of the shop's read models (off by default).
    pub read_cache: ficus_runtime::ReadCacheConfig,
    /// How far behind the log a projection may be while `/health/ready` still says ready.
    pub ready_lag: ReadyLagBound,
}

/// The lag bound of readiness: a process whose read models are further behind than this
/// answers 503 on `/health/ready`, so a load balancer stops sending it queries that would
/// read stale data (a process catching up after a start, or a query process whose
/// projectors have all stopped). `None` leaves that side unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyLagBound {
    /// Most events committed to the log but not yet applied.
    pub max_events: Option<u64>,
    /// Longest commit-to-apply delay of the last applied event, counted only while the
    /// projection is behind (a caught-up projection is ready whatever its history).
    pub max_ms: Option<u64>,
}

impl Default for ReadyLagBound {
    fn default() -> Self {
        Self {
            max_events: Some(READY_DEFAULT_MAX_LAG_EVENTS),
            max_ms: Some(READY_DEFAULT_MAX_LAG_MS),
        }
    }
}

/// Default of [`ReadyLagBound::max_events`].
pub const READY_DEFAULT_MAX_LAG_EVENTS: u64 = 100_000;
/// Default of [`ReadyLagBound::max_ms`].
pub const READY_DEFAULT_MAX_LAG_MS: u64 = 60_000;

impl ReadyLagBound {
    /// Why a projection `lag_events` behind, whose last event took `last_lag_ms` to apply,
    /// is outside the bound; `None` when it is within.
    pub fn broken_by(&self, lag_events: u64, last_lag_ms: u64) -> Option<String> {
        if let Some(max) = self.max_events.filter(|max| lag_events > *max) {
            return Some(format!("{lag_events} events behind, bound {max}"));
        }
        match self.max_ms {
            Some(max) if lag_events > 0 && last_lag_ms > max => Some(format!(
                "{lag_events} events behind and the last took {last_lag_ms} ms to apply, bound {max} ms"
            )),
            _ => None,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            read_your_writes_timeout: Duration::from_secs(5),
            max_sse_subscribers: 256,
            sse_keep_alive: Duration::from_secs(15),
            idempotency: Default::default(),
            read_cache: Default::default(),
            ready_lag: Default::default(),
        }
    }
}

/// Everything a handler may use: one shared [`AppParts`], so a clone is one reference count.
/// axum clones the state for every extractor and middleware of every request; cloning the
/// parts themselves (dozens of reference counts, channel and watch handles) took about a
/// quarter of the CPU of a cached product query in a profile (`perf record` under wrk).
#[derive(Clone)]
pub struct AppState(Arc<AppParts>);

impl AppState {
    pub fn new(parts: AppParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppParts;

    fn deref(&self) -> &AppParts {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct AppParts {
    pub store: Arc<dyn EventStore>,
    pub jobs: Arc<dyn JobQueue>,
    pub bulk: BulkJobs,
    pub shop: Shop,
    /// Where commands' idempotency keys live: the event store's own backend, so a key's
    /// answer commits with the command's events.
    pub idempotency: Arc<dyn ficus_store::IdempotencyStore>,
    /// Seals and opens personal fields; `DELETE /v1/subjects/{id}/keys` destroys keys with it.
    pub shredder: Arc<ficus_store::Shredder>,
    /// The shop's read models, SQLite or PostgreSQL: what queries read and wait on.
    pub read: ShopReadSide,
    /// Cached query answers, when `ApiConfig::read_cache` is on.
    pub read_cache: Option<Arc<cache::ShopCache>>,
    pub auth: Arc<Auth>,
    pub config: Arc<ApiConfig>,
    pub sse_permits: Arc<Semaphore>,
    pub shutdown: Shutdown,
    pub http_metrics: Arc<metrics::HttpMetrics>,
    /// The embedded event store itself, when the backend is SQLite: readiness reports its
    /// storage health, and `/v1/admin/storage-fault` drives its fault injection.
    pub sqlite: Option<Arc<ficus_store::sqlite::SqliteEventStore>>,
    /// Which backend holds the event log and the job queue ("sqlite" or "postgres").
    pub backend: &'static str,
    /// The NATS JetStream bus between processes and its outbox relay, when configured.
    pub bus: Option<BusState>,
    /// Order fulfilment, when a payment service is configured: placing an order then makes
    /// it `pending` and starts its saga.
    pub fulfilment: Option<ficus_domain::fulfilment::Fulfilment>,
    /// The blob store and its references (the claim check): large job parameters and
    /// results, served by `GET /v1/blobs/{id}`.
    pub claims: ficus_runtime::claim_check::ClaimCheck,
}

/// What the API shows of the bus: readiness probes it, `/metrics` reports the relay.
#[derive(Clone)]
pub struct BusState {
    pub bus: ficus_store::nats::NatsBus,
    pub relay: Arc<ficus_store::postgres::RelayHandle>,
    pub store: Arc<ficus_store::postgres::PgEventStore>,
}

/// Longest a readiness probe waits for a backend before calling it down.
pub const READY_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl AppState {
    pub fn projections(&self) -> [ReadModelHandle; 2] {
        self.read.projections()
    }
}

/// The correlation id of a request, as put in its extensions by the middleware.
#[derive(Clone, Debug)]
pub struct CorrelationId(pub String);

/// Header carrying the W3C trace context (taken from the request or created; the answer
/// names this server's span).
pub const TRACEPARENT_HEADER: &str = "traceparent";

async fn correlation(mut req: Request, next: Next) -> Response {
    let incoming = req
        .headers()
        .get(TRACEPARENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    // This request's own span: a child of the caller's, or the root of a new trace.
    let own = incoming.map_or_else(TraceParent::new_root, |p| p.child());
    // The caller's id if it is acceptable (its header value is answered as it came), else a
    // new one, formatted on the stack.
    let given = req
        .headers()
        .get(CORRELATION_HEADER)
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty() && b.len() <= CORRELATION_MAX_BYTES && b.iter().all(u8::is_ascii_graphic)
        })
        .cloned();
    let (id, id_header) = match given {
        Some(v) => (String::from_utf8_lossy(v.as_bytes()).into_owned(), Some(v)),
        None => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let s = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
            (s.to_owned(), HeaderValue::from_str(s).ok())
        }
    };
    req.extensions_mut().insert(CorrelationId(id.clone()));
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = req.uri().path(),
        correlation_id = id.as_str(),
        trace_id = own.trace_id_hex(),
    );
    if let Some(parent) = &incoming {
        let _ = span.set_parent(parent.otel_context());
    }
    // With an OpenTelemetry exporter the span has its own id, which the answer must name.
    let otel = span.context().span().span_context().clone();
    let own = if otel.is_valid() && otel.trace_id().to_bytes() == own.trace_id {
        TraceParent {
            span_id: otel.span_id().to_bytes(),
            ..own
        }
    } else {
        own
    };
    let ctx = TraceContext {
        correlation_id: id,
        traceparent: Some(own),
    };
    let mut resp = telemetry::scope(ctx, next.run(req).instrument(span)).await;
    if let Some(v) = id_header {
        resp.headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), v);
    }
    if let Ok(v) = HeaderValue::from_bytes(&own.header_bytes()) {
        resp.headers_mut()
            .insert(HeaderName::from_static(TRACEPARENT_HEADER), v);
    }
    resp
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

async fn live() -> impl IntoResponse {
    Json(json!({"status": "up"}))
}

/// One readiness check of a backend: `{ok, backend, probe_ms}`, plus `error` when the probe
/// failed. A probe that takes longer than [`READY_PROBE_TIMEOUT`] counts as down.
async fn probe_backend<T, E: std::fmt::Display>(
    backend: &str,
    probe: impl std::future::Future<Output = Result<T, E>>,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    let outcome = tokio::time::timeout(READY_PROBE_TIMEOUT, probe).await;
    let mut check = json!({"ok": matches!(outcome, Ok(Ok(_))), "backend": backend,
                           "probe_ms": started.elapsed().as_millis() as u64});
    if let Ok(Err(e)) = &outcome {
        check["error"] = json!(e.to_string());
    }
    check
}

async fn ready(State(st): State<AppState>) -> Response {
    let mut ok = !st.shutdown.is_triggered();
    let mut checks = serde_json::Map::new();
    checks.insert(
        "shutting_down".into(),
        json!({"ok": !st.shutdown.is_triggered()}),
    );
    let probe = ficus_core::StreamId::new("ficus-ready-probe").expect("valid stream id");
    let check = probe_backend(st.backend, st.store.stream_version(&probe)).await;
    ok &= check["ok"] == true;
    checks.insert("event_store".into(), check);
    let check = probe_backend(st.backend, st.jobs.get(ficus_store::JobId::MAX)).await;
    ok &= check["ok"] == true;
    checks.insert("job_queue".into(), check);
    // Reads can succeed while the disk refuses writes: the storage check says so.
    if let Some(check) = storage::ready_check(&st).await {
        ok &= check["ok"] == true;
        checks.insert("storage".into(), check);
    }
    if let Some(BusState { bus, .. }) = &st.bus {
        let mut check = probe_backend("nats", bus.stream_messages()).await;
        ok &= check["ok"] == true;
        check["stream"] = json!(bus.config().stream_name);
        checks.insert("bus".into(), check);
    }
    let bound = st.config.ready_lag;
    for p in st.projections() {
        let status = p.status();
        let lag_events = p.lag_events();
        let running = !matches!(
            status.state,
            ProjectionState::Failed { .. } | ProjectionState::Stopped
        );
        let lagging = bound.broken_by(lag_events, status.last_lag_ms);
        let healthy = running && lagging.is_none();
        ok &= healthy;
        let mut check = json!({"ok": healthy, "checkpoint": status.checkpoint,
                   "lag_events": lag_events, "last_lag_ms": status.last_lag_ms,
                   "max_lag_events": bound.max_events, "max_lag_ms": bound.max_ms,
                   "state": format!("{:?}", status.state), "mode": p.mode()});
        if let Some(why) = lagging {
            check["error"] = json!(format!("lagging: {why}"));
        }
        // A blue/green rebuild does not make the model unready: the current copy serves.
        if let Some(r) = &status.rebuild {
            check["rebuild"] = streams::rebuild_json(r);
        }
        checks.insert(format!("projection:{}", p.name()), check);
    }
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ok {"ready"} else {"not_ready"}, "checks": checks});
    (code, Json(body)).into_response()
}

/// Which parts of the public API a process serves. Every process serves the operations
/// routes: health, readiness, metrics, the projection list and rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiRoutes {
    /// The shop's commands, the raw streams, bulk jobs and the job queues.
    pub commands: bool,
    /// The shop's queries on its read models.
    pub queries: bool,
}

impl ApiRoutes {
    pub const ALL: ApiRoutes = ApiRoutes {
        commands: true,
        queries: true,
    };
    pub const OPS_ONLY: ApiRoutes = ApiRoutes {
        commands: false,
        queries: false,
    };
}

/// What a process without the public API serves (a worker or a projector): health,
/// readiness, metrics and the projections, as JSON errors elsewhere.
pub fn ops_router(state: AppState) -> Router {
    router_for(state, ApiRoutes::OPS_ONLY)
}

/// The whole HTTP API.
pub fn router(state: AppState) -> Router {
    router_for(state, ApiRoutes::ALL)
}

/// The operations routes plus the parts of the API `routes` selects.
pub fn router_for(state: AppState, routes: ApiRoutes) -> Router {
    router_on(state, routes, admin_listener::Listener::All)
}

/// [`router_for`] as one side of a split between a public and an admin address
/// (`admin_listener.rs`).
pub fn router_on(state: AppState, routes: ApiRoutes, listener: admin_listener::Listener) -> Router {
    let max_body = state.config.max_body_bytes;
    let mut app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/v1/projections", get(streams::list_projections))
        .route(
            "/v1/projections/{name}/rebuild",
            post(streams::rebuild_projection),
        )
        .merge(storage::routes());
    if routes != ApiRoutes::OPS_ONLY {
        app = app.route("/v1/openapi.json", get(openapi::document));
    }
    // `Idempotency-Key` on the routes whose write completes the key atomically (ADR 0008).
    let keyed = || axum::middleware::from_fn_with_state(state.clone(), idempotency::guard);
    if routes.commands {
        app = app
            .merge(streams::routes())
            .merge(bulk::routes())
            .merge(blobs::routes())
            .merge(bulk::submit_routes().route_layer(keyed()))
            .merge(shop::command_routes().route_layer(keyed()))
            .merge(queues::routes())
            .merge(accounts::routes())
            .merge(subjects::routes())
            .merge(sagas::routes())
            .merge(console::routes());
    }
    if routes.queries {
        app = app.merge(shop::query_routes()).merge(views::routes());
    }
    app.fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            listener,
            admin_listener::filter,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::middleware::from_fn(correlation))
        .with_state(state)
}

#[cfg(test)]
mod ready_lag_tests {
    use super::ReadyLagBound;

    #[test]
    fn the_lag_bound_counts_events_and_the_delay_only_while_behind() {
        let bound = ReadyLagBound {
            max_events: Some(10),
            max_ms: Some(1000),
        };
        assert_eq!(bound.broken_by(10, 0), None, "at the bound is within it");
        assert!(bound.broken_by(11, 0).unwrap().contains("11 events behind"));
        assert_eq!(
            bound.broken_by(0, 5000),
            None,
            "caught up: a slow past is no lag"
        );
        assert!(bound.broken_by(1, 5000).unwrap().contains("5000 ms"));
        let open = ReadyLagBound {
            max_events: None,
            max_ms: None,
        };
        assert_eq!(open.broken_by(u64::MAX, u64::MAX), None);
    }
}
