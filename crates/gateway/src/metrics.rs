//! `GET /metrics` in the Prometheus text format: the golden signals of every API route
//! (traffic, errors, latency histogram), and the state of the event store, projections and
//! job queues, read fresh at each scrape.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Latency histogram bucket bounds, seconds.
const BUCKETS_S: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Distinct (route, method, status) series kept; past this, new ones share one overflow series.
pub const MAX_SERIES: usize = 2000;

#[derive(Default)]
struct Series {
    count: AtomicU64,
    sum_us: AtomicU64,
    buckets: [AtomicU64; BUCKETS_S.len()],
}

/// Upper bounds of the append batch-size histogram, events per committed batch.
const BATCH_BUCKETS: [u64; 11] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// HTTP request counters by route pattern, method and status.
#[derive(Default)]
pub struct HttpMetrics {
    series: Mutex<BTreeMap<(String, String, u16), Arc<Series>>>,
    /// Requests being served now, by route pattern (saturation); bounded by [`MAX_SERIES`].
    in_flight: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// Committed append batches, as the store's live feed delivers them.
    pub appends: AppendStats,
    /// Job throughput through this process's queue handle, when the server counts it.
    pub jobs: Option<Arc<ficus_runtime::telemetry::JobCounters>>,
}

/// Append throughput and group-commit batch sizes.
#[derive(Default)]
pub struct AppendStats {
    batches: AtomicU64,
    events: AtomicU64,
    /// Batches the watcher missed because it fell behind the live feed (not counted above).
    missed_batches: AtomicU64,
    buckets: [AtomicU64; BATCH_BUCKETS.len()],
}

impl AppendStats {
    fn record(&self, events: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        for (i, b) in BATCH_BUCKETS.iter().enumerate() {
            if events as u64 <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn render(&self, out: &mut String) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            out,
            "ficus_append_batches_total",
            "Committed append batches (group commits) seen on the live feed.",
            &[(String::new(), load(&self.batches) as f64)],
        );
        gauge(
            out,
            "ficus_appended_events_total",
            "Events in those batches (append throughput).",
            &[(String::new(), load(&self.events) as f64)],
        );
        gauge(
            out,
            "ficus_append_batches_missed_total",
            "Batches not counted because the metrics watcher fell behind the live feed.",
            &[(String::new(), load(&self.missed_batches) as f64)],
        );
        let name = "ficus_append_batch_events";
        let _ = writeln!(
            out,
            "# HELP {name} Events per committed append batch.\n# TYPE {name} histogram"
        );
        let n = load(&self.batches);
        for (le, b) in BATCH_BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", load(b));
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(out, "{name}_sum {}", load(&self.events));
        let _ = writeln!(out, "{name}_count {n}");
    }
}

/// Counts the store's committed batches into [`HttpMetrics::appends`] until shutdown.
pub fn watch_appends(st: &AppState) -> tokio::task::JoinHandle<()> {
    let (metrics, shutdown) = (st.http_metrics.clone(), st.shutdown.clone());
    let mut live = st.store.live();
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let next = tokio::select! {
                _ = shutdown.wait() => return,
                n = live.recv() => n,
            };
            match next {
                Ok(batch) => metrics.appends.record(batch.len()),
                Err(RecvError::Lagged(n)) => {
                    metrics
                        .appends
                        .missed_batches
                        .fetch_add(n, Ordering::Relaxed);
                }
                Err(RecvError::Closed) => return,
            }
        }
    })
}

/// A series' key, owned (in the map) or borrowed (to look one up): `(route, method, status)`
/// compared as the owned tuple compares, so a lookup needs no allocation.
trait SeriesKey {
    fn parts(&self) -> (&str, &str, u16);
}

impl SeriesKey for (String, String, u16) {
    fn parts(&self) -> (&str, &str, u16) {
        (&self.0, &self.1, self.2)
    }
}

impl SeriesKey for (&str, &str, u16) {
    fn parts(&self) -> (&str, &str, u16) {
        (self.0, self.1, self.2)
    }
}

impl<'a> std::borrow::Borrow<dyn SeriesKey + 'a> for (String, String, u16) {
    fn borrow(&self) -> &(dyn SeriesKey + 'a) {
        self
    }
}

impl PartialEq for dyn SeriesKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn SeriesKey + '_ {}

impl PartialOrd for dyn SeriesKey + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn SeriesKey + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// Decrements a route's in-flight gauge when the request ends (or is dropped).
struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpMetrics {
    /// Metrics that also report job throughput from `jobs`.
    pub fn with_job_counters(jobs: Arc<ficus_runtime::telemetry::JobCounters>) -> Self {
        Self {
            jobs: Some(jobs),
            ..Self::default()
        }
    }

    fn series(&self, route: &str, method: &str, status: u16) -> Arc<Series> {
        let mut m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        // A known series is found without building its key (the common case, every request).
        let view: &dyn SeriesKey = &(route, method, status);
        if let Some(s) = m.get(view) {
            return s.clone();
        }
        let key = if m.len() >= MAX_SERIES {
            ("other".to_owned(), "other".to_owned(), 0)
        } else {
            (route.to_owned(), method.to_owned(), status)
        };
        m.entry(key).or_default().clone()
    }

    fn enter(&self, route: &str) -> InFlight {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let g = match m.get(route) {
            Some(g) => g.clone(),
            None => {
                let key = if m.len() >= MAX_SERIES {
                    "other"
                } else {
                    route
                };
                m.entry(key.to_owned()).or_default().clone()
            }
        };
        g.fetch_add(1, Ordering::Relaxed);
        InFlight(g)
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let s = self.series(route, method, status);
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        for (i, b) in BUCKETS_S.iter().enumerate() {
            if seconds <= *b {
                s.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP ficus_http_requests_total API requests by route, method and status.\n",
        );
        out.push_str("# TYPE ficus_http_requests_total counter\n");
        let m = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, method, status), s) in m.iter() {
            let _ = writeln!(
                out,
                "ficus_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count.load(Ordering::Relaxed)
            );
        }
        // Errors are the 5xx answers (the server's fault); 4xx are the caller's and stay in
        // the requests counter by status.
        let mut errors: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for ((route, method, status), s) in m.iter() {
            let e = errors.entry((route, method)).or_default();
            if *status >= 500 {
                *e += s.count.load(Ordering::Relaxed);
            }
        }
        let samples: Vec<(String, f64)> = errors
            .into_iter()
            .map(|((r, m), n)| (format!("route=\"{r}\",method=\"{m}\""), n as f64))
            .collect();
        gauge(
            out,
            "ficus_http_errors_total",
            "5xx answers by route and method.",
            &samples,
        );
        let samples: Vec<(String, f64)> = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(r, n)| (format!("route=\"{r}\""), n.load(Ordering::Relaxed) as f64))
            .collect();
        gauge(
            out,
            "ficus_http_requests_in_flight",
            "Requests being served now, by route (saturation).",
            &samples,
        );
        out.push_str(
            "# HELP ficus_http_request_duration_seconds API latency by route and method.\n",
        );
        out.push_str("# TYPE ficus_http_request_duration_seconds histogram\n");
        // Histograms are per route and method (all statuses together).
        let mut merged: BTreeMap<(&str, &str), (u64, u64, [u64; BUCKETS_S.len()])> =
            BTreeMap::new();
        for ((route, method, _), s) in m.iter() {
            let e = merged
                .entry((route, method))
                .or_insert((0, 0, [0; BUCKETS_S.len()]));
            e.0 += s.count.load(Ordering::Relaxed);
            e.1 += s.sum_us.load(Ordering::Relaxed);
            for (i, b) in s.buckets.iter().enumerate() {
                e.2[i] += b.load(Ordering::Relaxed);
            }
        }
        for ((route, method), (count, sum_us, buckets)) in merged {
            write_histogram(
                out,
                "ficus_http_request_duration_seconds",
                &format!("route=\"{route}\",method=\"{method}\""),
                BUCKETS_S.iter().copied().zip(buckets),
                count,
                sum_us as f64 / 1e6,
            );
        }
    }
}

/// The sample lines of one Prometheus histogram series: a `_bucket` line per upper bound (in
/// seconds, with its cumulative count), `+Inf`, `_sum` and `_count`.
pub(crate) fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    cumulative: impl IntoIterator<Item = (f64, u64)>,
    count: u64,
    sum_seconds: f64,
) {
    for (le, n) in cumulative {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {sum_seconds}");
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Counts every request by its route pattern (never the raw path, so ids do not explode the
/// series).
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // The pattern (shared, not copied) and the method: nothing allocated per request.
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = req.method().clone();
    let started = Instant::now();
    let _in_flight = st.http_metrics.enter(route);
    let resp = next.run(req).await;
    st.http_metrics.observe(
        route,
        method.as_str(),
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

fn gauge(out: &mut String, name: &str, help: &str, samples: &[(String, f64)]) {
    // Names ending in `_total` are counters; everything else here is a gauge.
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

pub async fn render(State(st): State<AppState>) -> Response {
    let mut out = String::new();
    st.http_metrics.render(&mut out);
    st.http_metrics.appends.render(&mut out);
    let sse_in_use = st
        .config
        .max_sse_subscribers
        .saturating_sub(st.sse_permits.available_permits());
    gauge(
        &mut out,
        "ficus_sse_subscribers",
        "Live SSE subscribers served now (saturation; the limit is ficus_sse_subscribers_limit).",
        &[(String::new(), sse_in_use as f64)],
    );
    gauge(
        &mut out,
        "ficus_sse_subscribers_limit",
        "Live SSE subscribers served at most.",
        &[(String::new(), st.config.max_sse_subscribers as f64)],
    );
    if let Some(cache) = &st.read_cache {
        let c = cache.stats();
        let one = |v: u64| [(String::new(), v as f64)];
        let figures = [
            (
                "ficus_read_cache_entries",
                "Query answers cached now.",
                c.entries,
            ),
            (
                "ficus_read_cache_hits_total",
                "Queries answered from the read cache.",
                c.hits,
            ),
            (
                "ficus_read_cache_backend_reads_total",
                "Read-model reads the read cache made (one per coalesced miss).",
                c.backend_reads,
            ),
            (
                "ficus_read_cache_evictions_total",
                "Cached answers evicted to stay within the bound.",
                c.evictions,
            ),
        ];
        for (name, help, v) in figures {
            gauge(&mut out, name, help, &one(v));
        }
    }
    gauge(
        &mut out,
        "ficus_event_store_head_position",
        "Position of the last durable event.",
        &[(String::new(), st.store.head_position() as f64)],
    );
    let p = st.projections();
    let by = |f: &dyn Fn(&ficus_runtime::ReadModelHandle) -> f64| -> Vec<(String, f64)> {
        p.iter()
            .map(|h| (format!("projection=\"{}\"", h.name()), f(h)))
            .collect()
    };
    gauge(
        &mut out,
        "ficus_projection_checkpoint",
        "Position a read model has applied.",
        &by(&|h| h.status().checkpoint as f64),
    );
    gauge(
        &mut out,
        "ficus_projection_lag_events",
        "Events committed but not yet applied.",
        &by(&|h| h.lag_events() as f64),
    );
    gauge(
        &mut out,
        "ficus_projection_lag_ms",
        "Milliseconds from commit to application of the last applied event.",
        &by(&|h| h.status().last_lag_ms as f64),
    );
    if let Some(b) = &st.bus {
        let r = b.relay.stats();
        let one = |v: u64| [(String::new(), v as f64)];
        gauge(
            &mut out,
            "ficus_outbox_published_total",
            "Events this process's relay published to the bus and saw acknowledged.",
            &one(r.published),
        );
        gauge(
            &mut out,
            "ficus_outbox_duplicates_total",
            "Re-publishes the bus recognised by event id and dropped.",
            &one(r.duplicates),
        );
        gauge(
            &mut out,
            "ficus_outbox_failed_rounds_total",
            "Relay rounds that failed and were retried after a backoff.",
            &one(r.retries),
        );
        if let Ok(backlog) = ficus_store::postgres::outbox_backlog(&b.store).await {
            gauge(
                &mut out,
                "ficus_outbox_backlog_events",
                "Committed events not yet published to the bus (all processes).",
                &one(backlog.events),
            );
        }
    }
    if let Some(j) = &st.http_metrics.jobs {
        let load = |a: &AtomicU64| [(String::new(), a.load(Ordering::Relaxed) as f64)];
        gauge(
            &mut out,
            "ficus_jobs_enqueued_total",
            "Jobs enqueued by this process (bulk-job items included).",
            &load(&j.enqueued),
        );
        gauge(
            &mut out,
            "ficus_jobs_completed_total",
            "Jobs completed by this process's workers.",
            &load(&j.completed),
        );
        gauge(
            &mut out,
            "ficus_jobs_retried_total",
            "Failed attempts scheduled for a retry.",
            &load(&j.retried),
        );
        gauge(
            &mut out,
            "ficus_jobs_dead_total",
            "Jobs moved to the dead-letter queue.",
            &load(&j.dead),
        );
    }
    if let Ok(stats) = st.jobs.stats(ficus_store::now_ms()).await {
        let q = |f: &dyn Fn(&ficus_store::QueueStats) -> u64| -> Vec<(String, f64)> {
            stats
                .iter()
                .map(|s| (format!("queue=\"{}\"", s.queue), f(s) as f64))
                .collect()
        };
        gauge(
            &mut out,
            "ficus_queue_ready",
            "Jobs ready to run now.",
            &q(&|s| s.ready),
        );
        gauge(
            &mut out,
            "ficus_queue_delayed",
            "Jobs waiting for their run time.",
            &q(&|s| s.delayed),
        );
        gauge(
            &mut out,
            "ficus_queue_in_flight",
            "Jobs leased by a worker.",
            &q(&|s| s.in_flight),
        );
        gauge(
            &mut out,
            "ficus_queue_dead",
            "Jobs in the dead-letter queue.",
            &q(&|s| s.dead),
        );
        gauge(
            &mut out,
            "ficus_queue_oldest_ready_wait_ms",
            "How long the oldest ready job has waited.",
            &q(&|s| s.oldest_ready_wait_ms),
        );
    }
    if let Some(f) = &st.fulfilment {
        render_sagas(&mut out, &f.orchestrator.metrics().snapshot());
    }
    render_memory(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The process's own figures under the names Prometheus's process collectors use (resident
/// memory, open descriptors; Linux only, left out where `/proc` is not there), and SQLite's
/// heap memory against its process-wide soft limit (`--sqlite-memory-limit-mib`): whether
/// memory growth is SQLite's bounded page caches filling or something else.
fn render_memory(out: &mut String) {
    let one = |v: u64| [(String::new(), v as f64)];
    if let Some(rss) = resident_bytes() {
        gauge(
            out,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            &one(rss),
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            out,
            "process_open_fds",
            "Number of open file descriptors.",
            &one(fds.count() as u64),
        );
    }
    gauge(
        out,
        "ficus_sqlite_memory_bytes",
        "Heap memory all SQLite connections of the process hold now.",
        &one(ficus_store::sqlite::memory_used()),
    );
    gauge(
        out,
        "ficus_sqlite_memory_highwater_bytes",
        "Most heap memory SQLite has held at once since the process started.",
        &one(ficus_store::sqlite::memory_highwater()),
    );
    gauge(
        out,
        "ficus_sqlite_memory_limit_bytes",
        "Soft limit on SQLite's heap memory (0: none).",
        &one(ficus_store::sqlite::memory_limit()),
    );
}

/// `VmRSS` of this process from `/proc/self/status`, in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The saga families: sagas started and finished, step attempts by outcome, step durations.
fn render_sagas(out: &mut String, m: &ficus_runtime::saga_metrics::SagaMetricsSnapshot) {
    let started: Vec<(String, f64)> = m
        .started
        .iter()
        .map(|(kind, n)| (format!("saga=\"{kind}\""), *n as f64))
        .collect();
    gauge(
        out,
        "ficus_sagas_started_total",
        "Sagas this process started.",
        &started,
    );
    let finished: Vec<(String, f64)> = m
        .finished
        .iter()
        .map(|((kind, outcome), n)| {
            (
                format!("saga=\"{kind}\",outcome=\"{}\"", outcome.as_str()),
                *n as f64,
            )
        })
        .collect();
    gauge(
        out,
        "ficus_sagas_finished_total",
        "Sagas this process finished, by outcome (completed, or failed after compensating).",
        &finished,
    );
    let steps: Vec<(String, f64)> = m
        .steps
        .iter()
        .map(|((kind, step, outcome), n)| {
            (
                format!(
                    "saga=\"{kind}\",step=\"{step}\",outcome=\"{}\"",
                    outcome.as_str()
                ),
                *n as f64,
            )
        })
        .collect();
    gauge(
        out,
        "ficus_saga_steps_total",
        "Recorded step and compensation attempts, by outcome.",
        &steps,
    );
    let name = "ficus_saga_step_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} How long a step's invocation took.\n# TYPE {name} histogram"
    );
    for ((kind, step), d) in &m.durations {
        write_histogram(
            out,
            name,
            &format!("saga=\"{kind}\",step=\"{step}\""),
            ficus_runtime::saga_metrics::STEP_BUCKETS_S
                .iter()
                .copied()
                .zip(d.buckets),
            d.count,
            d.sum_seconds,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &HttpMetrics, route: &str, method: &str, status: u16) -> Option<u64> {
        let series = m.series.lock().unwrap();
        let key: &dyn SeriesKey = &(route, method, status);
        series.get(key).map(|s| s.count.load(Ordering::Relaxed))
    }

    #[test]
    fn a_series_is_found_by_borrowed_parts_and_new_ones_past_the_bound_go_to_other() {
        let m = HttpMetrics::default();
        m.observe("/v1/products/{id}", "GET", 200, 0.001);
        m.observe("/v1/products/{id}", "GET", 200, 0.002);
        m.observe("/v1/products/{id}", "GET", 404, 0.001);
        assert_eq!(count(&m, "/v1/products/{id}", "GET", 200), Some(2));
        assert_eq!(count(&m, "/v1/products/{id}", "GET", 404), Some(1));
        assert_eq!(count(&m, "/v1/products/{id}", "POST", 200), None);
        for i in 0..MAX_SERIES {
            m.observe(&format!("/r{i}"), "GET", 200, 0.001);
        }
        assert_eq!(m.series.lock().unwrap().len(), MAX_SERIES + 1);
        // Past the bound a known series still counts as itself; a new one counts as other.
        m.observe("/v1/products/{id}", "GET", 200, 0.001);
        m.observe("/never-seen", "GET", 200, 0.001);
        assert_eq!(count(&m, "/v1/products/{id}", "GET", 200), Some(3));
        assert_eq!(count(&m, "/never-seen", "GET", 200), None);
        assert!(count(&m, "other", "other", 0).is_some_and(|n| n >= 2));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "ficus_http_requests_total{route=\"/v1/products/{id}\",method=\"GET\",status=\"200\"} 3"
        ));
    }

    #[test]
    fn in_flight_counts_while_a_request_is_served() {
        let m = HttpMetrics::default();
        let a = m.enter("/v1/x");
        let b = m.enter("/v1/x");
        assert_eq!(
            m.in_flight.lock().unwrap()["/v1/x"].load(Ordering::Relaxed),
            2
        );
        drop((a, b));
        assert_eq!(
            m.in_flight.lock().unwrap()["/v1/x"].load(Ordering::Relaxed),
            0
        );
    }
}
