//! Correlation and trace context carried from a request into everything it causes.
//!
//! The gateway parses (or creates) a W3C `traceparent`, makes a child span id for its own
//! work and runs the request inside [`scope`]. What the request writes picks the context up
//! from there: event metadata stores it (`correlation_id` and `traceparent` side by side),
//! and jobs enqueued through [`TracedJobQueue`] carry it in their payload under
//! [`JOB_TRACE_KEY`]. Projections and workers read it back and open a span per event or job
//! with `correlation_id` and `trace_id` fields, parented on the stored `traceparent` so an
//! OpenTelemetry exporter (when the binary installs one) puts them in the request's trace.
//!
//! Parsing is done here rather than with an OpenTelemetry propagator so that the ids exist
//! (and reach logs and metadata) whether or not an exporter is configured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use ficus_core::Metadata;
use ficus_store::{
    Batch, DeadFilter, Enqueued, Failure, Job, JobId, JobQueue, Lease, NewBatch, NewJob,
    QueueStats, StoreError,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rand::RngCore;
use serde_json::{json, Value};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Key of the trace context in a job's JSON payload (objects only).
pub const JOB_TRACE_KEY: &str = "_trace";
/// Key of the `traceparent` in event metadata (next to `correlation_id`).
pub const TRACEPARENT_KEY: &str = "traceparent";
/// Longest correlation id kept, in bytes (a longer one is replaced by a fresh id).
pub const CORRELATION_MAX_BYTES: usize = 128;

/// A W3C trace context: trace id, parent span id and the sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// The two lowercase hex digits of `b` (by table: this runs on every request).
fn hex_pair(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 0x0f)]]
}

/// Appends `bytes` as lowercase hex, two digits a byte.
fn push_hex(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        out.extend(hex_pair(b).map(char::from));
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(&mut s, bytes);
    s
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` header value. Per the W3C spec: lowercase hex, version `ff`
    /// invalid, all-zero ids invalid, a version `00` value has exactly four fields; a later
    /// version may append fields, which are ignored.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let version = unhex::<1>(parts.next()?)?[0];
        let trace_id = unhex::<16>(parts.next()?)?;
        let span_id = unhex::<8>(parts.next()?)?;
        let flags = unhex::<1>(parts.next()?)?[0];
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace (no incoming context), sampled.
    pub fn new_root() -> Self {
        let mut rng = rand::thread_rng();
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            rng.fill_bytes(&mut trace_id);
        }
        Self {
            trace_id,
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// The same trace with a new span id: what this process's own span is.
    pub fn child(&self) -> Self {
        Self {
            span_id: new_span_id(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// The header value (version 00).
    pub fn header(&self) -> String {
        let bytes = self.header_bytes();
        // Hex digits and dashes only: always ASCII.
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The header value (version 00) as its 55 ASCII bytes, built without allocating.
    pub fn header_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let hex_into = |out: &mut [u8], bytes: &[u8]| {
            for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
                pair.copy_from_slice(&hex_pair(b));
            }
        };
        hex_into(&mut out[3..35], &self.trace_id);
        hex_into(&mut out[36..52], &self.span_id);
        if self.sampled {
            out[54] = b'1';
        }
        out
    }

    /// The OpenTelemetry context whose remote parent is this span.
    pub fn otel_context(&self) -> opentelemetry::Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span = SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(span)
    }
}

fn new_span_id() -> [u8; 8] {
    let mut rng = rand::thread_rng();
    let mut id = [0u8; 8];
    while id == [0; 8] {
        rng.fill_bytes(&mut id);
    }
    id
}

/// What a request (or a job, or an event) carries along: its correlation id and trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub correlation_id: String,
    pub traceparent: Option<TraceParent>,
}

impl TraceContext {
    /// The JSON stored in a job's payload under [`JOB_TRACE_KEY`].
    pub fn to_json(&self) -> Value {
        let mut v = json!({"correlation_id": self.correlation_id});
        if let Some(tp) = &self.traceparent {
            v[TRACEPARENT_KEY] = json!(tp.header());
        }
        v
    }

    /// The context a job was enqueued with, if any.
    pub fn of_job(job: &Job) -> Option<Self> {
        let t = job.payload.get(JOB_TRACE_KEY)?;
        Some(Self {
            correlation_id: t.get("correlation_id")?.as_str()?.to_owned(),
            traceparent: t
                .get(TRACEPARENT_KEY)
                .and_then(Value::as_str)
                .and_then(TraceParent::parse),
        })
    }

    /// The context stored in an event's metadata, if any.
    pub fn of_metadata(m: &Metadata) -> Option<Self> {
        Some(Self {
            correlation_id: m.correlation_id.clone()?,
            traceparent: m
                .extra
                .get(TRACEPARENT_KEY)
                .and_then(Value::as_str)
                .and_then(TraceParent::parse),
        })
    }

    /// Puts the `traceparent` into event metadata (the correlation id has its own field).
    pub fn stamp_metadata(&self, m: &mut Metadata) {
        if m.correlation_id.is_none() {
            m.correlation_id = Some(self.correlation_id.clone());
        }
        if let Some(tp) = &self.traceparent {
            m.extra.insert(TRACEPARENT_KEY.into(), json!(tp.header()));
        }
    }

    /// Parents `span` on this context's trace (a no-op without an OpenTelemetry layer).
    pub fn parent(&self, span: &tracing::Span) {
        if let Some(tp) = &self.traceparent {
            // Only fails when no OpenTelemetry layer is installed, which is the default.
            let _ = span.set_parent(tp.otel_context());
        }
    }

    pub fn trace_id_hex(&self) -> Option<String> {
        self.traceparent.as_ref().map(TraceParent::trace_id_hex)
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `fut` with `ctx` as the current context (what [`current`] answers inside it).
pub async fn scope<F: std::future::Future>(ctx: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(ctx, fut).await
}

/// The context of the request (or job) this task is serving, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The span a projection opens to apply one event: carries the event's correlation and
/// trace ids, and is a child of the span that appended it.
pub fn event_span(projection: &str, m: &Metadata, position: u64) -> tracing::Span {
    let ctx = TraceContext::of_metadata(m);
    let span = tracing::info_span!(
        "apply_event",
        projection,
        position,
        correlation_id = ctx.as_ref().map(|c| c.correlation_id.as_str()),
        trace_id = ctx.as_ref().and_then(TraceContext::trace_id_hex),
    );
    if let Some(c) = &ctx {
        c.parent(&span);
    }
    span
}

/// The span a worker runs one job in.
pub fn job_span(job: &Job) -> tracing::Span {
    let ctx = TraceContext::of_job(job);
    let span = tracing::info_span!(
        "job",
        job = job.id,
        queue = %job.queue,
        kind = %job.kind,
        attempt = job.attempts,
        correlation_id = ctx.as_ref().map(|c| c.correlation_id.as_str()),
        trace_id = ctx.as_ref().and_then(TraceContext::trace_id_hex),
    );
    if let Some(c) = &ctx {
        c.parent(&span);
    }
    span
}

/// Job throughput as this process's queue handle saw it (for `/metrics`).
#[derive(Debug, Default)]
pub struct JobCounters {
    /// Jobs newly enqueued (a unique-key duplicate is not counted), bulk-job items included.
    pub enqueued: AtomicU64,
    /// Leases completed (the job's effect is done).
    pub completed: AtomicU64,
    /// Failed attempts put back for a retry, and jobs moved to the dead-letter queue.
    pub retried: AtomicU64,
    pub dead: AtomicU64,
}

/// A [`JobQueue`] that stamps every job enqueued inside a [`scope`] with that scope's
/// context (in an object payload under [`JOB_TRACE_KEY`]) and counts job throughput;
/// everything else passes through. A job already carrying a context keeps it (a fan-out
/// from a job stays in its trace).
pub struct TracedJobQueue {
    inner: Arc<dyn JobQueue>,
    counters: Arc<JobCounters>,
}

impl TracedJobQueue {
    pub fn new(inner: Arc<dyn JobQueue>) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    pub fn counters(&self) -> Arc<JobCounters> {
        self.counters.clone()
    }
}

fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn stamp(jobs: &mut [NewJob]) {
    let Some(ctx) = current() else { return };
    let v = ctx.to_json();
    for j in jobs {
        if let Value::Object(m) = &mut j.payload {
            m.entry(JOB_TRACE_KEY).or_insert_with(|| v.clone());
        }
    }
}

#[async_trait]
impl JobQueue for TracedJobQueue {
    async fn enqueue(
        &self,
        mut jobs: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Vec<Enqueued>, StoreError> {
        stamp(&mut jobs);
        let out = self.inner.enqueue(jobs, now_ms).await?;
        count(
            &self.counters.enqueued,
            out.iter().filter(|e| e.created).count(),
        );
        Ok(out)
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<Job>, StoreError> {
        self.inner.lease(queue, max, now_ms, visibility_ms).await
    }

    async fn heartbeat(
        &self,
        leases: &[Lease],
        now_ms: i64,
        visibility_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        self.inner.heartbeat(leases, now_ms, visibility_ms).await
    }

    async fn complete(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        let out = self.inner.complete(leases).await?;
        count(
            &self.counters.completed,
            out.iter().filter(|ok| **ok).count(),
        );
        Ok(out)
    }

    async fn fail(
        &self,
        lease: Lease,
        error: &str,
        failure: Failure,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let held = self.inner.fail(lease, error, failure, now_ms).await?;
        if held {
            match failure {
                Failure::RetryAt { .. } => count(&self.counters.retried, 1),
                Failure::Dead => count(&self.counters.dead, 1),
            }
        }
        Ok(held)
    }

    async fn release(&self, leases: &[Lease]) -> Result<Vec<bool>, StoreError> {
        self.inner.release(leases).await
    }

    async fn list_dead(&self, queue: &str, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.inner.list_dead(queue, limit).await
    }

    async fn redrive(
        &self,
        queue: &str,
        filter: &DeadFilter,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        self.inner.redrive(queue, filter, now_ms).await
    }

    async fn purge_dead(&self, queue: &str, filter: &DeadFilter) -> Result<u64, StoreError> {
        self.inner.purge_dead(queue, filter).await
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>, StoreError> {
        self.inner.get(id).await
    }

    async fn stats(&self, now_ms: i64) -> Result<Vec<QueueStats>, StoreError> {
        self.inner.stats(now_ms).await
    }

    async fn create_batch(
        &self,
        batch: NewBatch,
        mut items: Vec<NewJob>,
        now_ms: i64,
    ) -> Result<Batch, StoreError> {
        stamp(&mut items);
        let mut batch = batch;
        if let Some(f) = batch.fan_in.as_mut() {
            stamp(std::slice::from_mut(f));
        }
        let n = items.len();
        let out = self.inner.create_batch(batch, items, now_ms).await?;
        count(&self.counters.enqueued, n);
        Ok(out)
    }

    async fn get_batch(&self, id: &str) -> Result<Option<Batch>, StoreError> {
        self.inner.get_batch(id).await
    }

    async fn cancel_batch(&self, id: &str, now_ms: i64) -> Result<Option<Batch>, StoreError> {
        self.inner.cancel_batch(id, now_ms).await
    }

    async fn set_batch_result(&self, id: &str, result: Value) -> Result<bool, StoreError> {
        self.inner.set_batch_result(id, result).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_value_round_trips_through_the_header() {
        for b in 0..=255u8 {
            let tp = TraceParent {
                trace_id: [b.max(1); 16],
                span_id: [b.max(1); 8],
                sampled: b % 2 == 0,
            };
            let header = tp.header();
            assert_eq!(header.len(), 55);
            assert_eq!(
                header,
                format!(
                    "00-{}-{}-{:02x}",
                    tp.trace_id_hex(),
                    tp.span_id_hex(),
                    u8::from(tp.sampled)
                )
            );
            let back = TraceParent::parse(&header).unwrap();
            assert_eq!(
                (back.trace_id, back.span_id, back.sampled),
                (tp.trace_id, tp.span_id, tp.sampled)
            );
            assert_eq!(tp.span_id_hex(), format!("{:02x}", b.max(1)).repeat(8));
        }
    }

    #[test]
    fn traceparent_parses_the_spec_example_and_refuses_bad_ones() {
        let tp =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled);
        assert_eq!(
            tp.header(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let child = tp.child();
        assert_eq!(child.trace_id, tp.trace_id);
        assert_ne!(child.span_id, tp.span_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceParent::parse(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some_and(|t| !t.sampled)
        );
    }

    #[test]
    fn jobs_and_metadata_round_trip_the_context() {
        let ctx = TraceContext {
            correlation_id: "c-1".into(),
            traceparent: Some(TraceParent::new_root()),
        };
        let mut m = Metadata::default();
        ctx.stamp_metadata(&mut m);
        assert_eq!(TraceContext::of_metadata(&m), Some(ctx.clone()));
        let mut payload = json!({"n": 1});
        payload[JOB_TRACE_KEY] = ctx.to_json();
        let job = Job {
            id: 1,
            queue: "q".into(),
            kind: "k".into(),
            payload,
            priority: 0,
            state: ficus_store::JobState::Ready,
            attempts: 0,
            max_attempts: 1,
            run_at_ms: 0,
            created_at_ms: 0,
            last_error: None,
            unique_key: None,
            batch_id: None,
            lease: None,
            lease_expires_at_ms: None,
        };
        assert_eq!(TraceContext::of_job(&job), Some(ctx));
    }
}
