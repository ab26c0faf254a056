//! The strangler-fig façade: a reverse proxy that sends each request to the legacy system or
//! to the new (CQRS) side, route by route, by weight, keeping each client on one side.
//!
//! The route table is swapped whole (an `Arc` behind a lock), so a reload never drops or
//! stalls a request in flight: it keeps the table it started with.

pub mod config;
pub mod diff;
pub mod resilience;
pub mod rollout;
pub mod rollout_ctl;
pub mod shadow;
pub mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::auth::Auth;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams};
use config::{GatewayConfig, RouteConfig, Sticky};

/// Idle keep-alive connections kept per upstream host.
pub const POOL_IDLE_PER_HOST: usize = 256;
/// Header naming the side a proxied answer came from.
pub const TARGET_HEADER: &str = "ficus-target";
/// Header naming the route that matched.
pub const ROUTE_HEADER: &str = "ficus-route";
/// Header carrying the time left to answer, ms. The gateway honors a smaller incoming budget
/// and passes on what is left of it, so the budget shrinks at every hop.
pub const DEADLINE_HEADER: &str = "ficus-deadline-ms";
/// Largest request body kept so a request can be retried.
pub const RETRY_BODY_LIMIT: usize = 64 * 1024;

/// Latency histogram bucket bounds, ms (the last bucket is everything above).
const LATENCY_BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 1000, 5000];

/// Counters of one side of one route.
#[derive(Default)]
pub struct SideStats {
    pub requests: AtomicU64,
    /// Retries sent, and retries the budget refused.
    pub retries: AtomicU64,
    pub retries_refused: AtomicU64,
    /// 5xx answers and transport failures.
    pub errors: AtomicU64,
    pub latency_us_total: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// The last few seconds, for a rollout's comparison (on only while the route has a plan).
    pub window: rollout::WindowCell,
}

impl SideStats {
    fn record(&self, elapsed: Duration, error: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = elapsed.as_micros().min(u64::MAX as u128) as u64;
        self.latency_us_total.fetch_add(us, Ordering::Relaxed);
        let ms = us / 1000;
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|b| ms < *b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.window.record(Some(elapsed), error);
    }

    fn json(&self) -> Value {
        let n = self.requests.load(Ordering::Relaxed);
        let mut buckets = serde_json::Map::new();
        for (i, b) in self.buckets.iter().enumerate() {
            let label = LATENCY_BUCKETS_MS
                .get(i)
                .map_or("+Inf".to_string(), |ms| format!("{ms}"));
            buckets.insert(format!("le_{label}_ms"), b.load(Ordering::Relaxed).into());
        }
        json!({
            "requests": n,
            "errors": self.errors.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "retries_refused": self.retries_refused.load(Ordering::Relaxed),
            "latency_ms_mean": if n == 0 { 0.0 } else {
                self.latency_us_total.load(Ordering::Relaxed) as f64 / n as f64 / 1000.0
            },
            "latency_buckets": buckets,
        })
    }
}

#[derive(Default)]
pub struct RouteStats {
    pub legacy: SideStats,
    pub new: SideStats,
    pub shadow: shadow::ShadowStats,
    /// Requests refused before reaching an upstream: by the rate limit, an open breaker, a
    /// full bulkhead.
    pub rate_limited: AtomicU64,
    pub breaker_refused: AtomicU64,
    pub bulkhead_full: AtomicU64,
    /// Last good answers by path and query, for `fallback_last_good`.
    last_good: std::sync::Mutex<HashMap<String, LastGood>>,
}

/// A remembered good answer.
#[derive(Clone)]
struct LastGood {
    content_type: Option<HeaderValue>,
    body: axum::body::Bytes,
    at: Instant,
}

/// Paths whose last good answer a route remembers; past this, the oldest half is dropped.
pub const LAST_GOOD_ENTRIES: usize = 1000;
/// Largest answer remembered as a last good one.
pub const LAST_GOOD_BODY_BYTES: usize = 64 * 1024;

impl RouteStats {
    fn remember(&self, key: String, entry: LastGood) {
        let mut m = self.last_good.lock().unwrap_or_else(|p| p.into_inner());
        resilience::make_room(&mut m, &key, LAST_GOOD_ENTRIES, |v| v.at);
        m.insert(key, entry);
    }

    fn last_good(&self, key: &str) -> Option<LastGood> {
        self.last_good
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }
}

/// The URI of `path` on `upstream`, with the route's prefix swapped for the side's.
fn target_uri(
    table: &RouteTable,
    route: &RouteConfig,
    upstream: &str,
    side: Side,
    path: &str,
    query: &str,
) -> Result<Uri, String> {
    let base = &table.upstreams[upstream];
    let prefix = match side {
        Side::New => route.new_prefix.as_ref(),
        Side::Legacy => route.legacy_prefix.as_ref(),
    };
    let rest = path
        .strip_prefix(route.path_prefix.trim_end_matches('/'))
        .unwrap_or(path);
    let base_path = base.path().trim_end_matches('/');
    // Only the path is new per request (one allocation); scheme and authority are reused as
    // parsed at load.
    let (head, tail) = match prefix {
        Some(p) => (p.trim_end_matches('/'), rest),
        None => ("", path),
    };
    let mut pq = String::with_capacity(base_path.len() + head.len() + tail.len() + query.len());
    pq.push_str(base_path);
    pq.push_str(head);
    pq.push_str(tail);
    pq.push_str(query);
    Uri::builder()
        .scheme(axum::http::uri::Scheme::HTTP)
        .authority(base.authority().expect("validated authority").clone())
        .path_and_query(pq)
        .build()
        .map_err(|e| e.to_string())
}

fn insert_rate_headers(h: &mut axum::http::HeaderMap, policy: &str, state: &str) {
    if let (Ok(p), Ok(s)) = (HeaderValue::from_str(policy), HeaderValue::from_str(state)) {
        h.insert(HeaderName::from_static("ratelimit-policy"), p);
        h.insert(HeaderName::from_static("ratelimit"), s);
    }
}

/// Whether a request body can be kept in memory within `limit`: its length is declared and
/// within it, or it is a read with no body. A body of unknown length is never buffered.
fn body_fits(parts: &axum::http::request::Parts, limit: usize) -> bool {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(
            is_read(&parts.method) && !parts.headers.contains_key(header::TRANSFER_ENCODING),
            |n| n <= limit,
        )
}

/// Reads a whole request body of at most `limit` bytes; a failure is the client's 400.
async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, Response> {
    http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| {
            json_error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("reading the request body: {e}"),
            )
        })
}

fn last_good_key(path: &str, query: &str) -> String {
    format!("{path}{query}")
}

/// The response headers a route compares, lower-case, in the route's order.
fn chosen_headers(headers: &axum::http::HeaderMap, names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| {
            let n = n.to_ascii_lowercase();
            headers
                .get(n.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| (n.clone(), v.to_owned()))
        })
        .collect()
}

/// A prepared comparison: the copies to send and what to compare.
struct ShadowJob {
    client: Client<HttpConnector, Body>,
    shadow: Option<Request>,
    twin: Option<Request>,
    ignore: Vec<String>,
    headers: Vec<String>,
    limit: usize,
    timeout: Duration,
    path: String,
    /// Holds one of the bounded comparison slots until the job ends.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Sends one copy and reads its answer, within the route's timeout and body limit.
async fn fetch_copy(
    client: &Client<HttpConnector, Body>,
    req: Option<Request>,
    timeout: Duration,
    limit: usize,
    headers: &[String],
) -> Option<diff::Answer> {
    let req = req?;
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .ok()?
        .ok()?;
    let (parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, limit);
    let bytes = tokio::time::timeout(timeout, http_body_util::BodyExt::collect(limited))
        .await
        .ok()?
        .ok()?
        .to_bytes();
    Some(diff::Answer {
        status: parts.status.as_u16(),
        headers: chosen_headers(&parts.headers, headers),
        body: bytes.to_vec(),
    })
}

impl ShadowJob {
    /// Sends the copies, waits for the primary's body, compares, records. Runs off the
    /// request path: nothing here can delay or fail the primary answer.
    async fn run(
        self,
        mut primary: diff::Answer,
        primary_body: oneshot::Receiver<Option<Vec<u8>>>,
        stats: Arc<RouteStats>,
    ) {
        let ShadowJob {
            client,
            shadow: shadow_req,
            twin: twin_req,
            ignore,
            headers,
            limit,
            timeout,
            path,
            _permit,
        } = self;
        let wants_twin = twin_req.is_some();
        let (shadow, twin) = tokio::join!(
            fetch_copy(&client, shadow_req, timeout, limit, &headers),
            fetch_copy(&client, twin_req, timeout, limit, &headers)
        );
        let Some(shadow) = shadow else {
            stats.shadow.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if wants_twin && twin.is_none() {
            stats.shadow.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tokio::time::timeout(timeout, primary_body).await {
            Ok(Ok(Some(body))) => primary.body = body,
            // The client went away, or the body was over the limit: nothing to compare.
            _ => {
                stats.shadow.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let (diffs, noise) = shadow::compare(&primary, &shadow, twin.as_ref(), &ignore);
        stats.shadow.record(&path, &diffs, &noise);
    }
}

/// The protections of one route (breakers and bulkheads per side). They belong to a table:
/// a reload starts them afresh.
pub struct Guards {
    pub breakers: [Option<resilience::Breaker>; 2],
    bulkheads: [Option<Arc<tokio::sync::Semaphore>>; 2],
    pub limiter: Option<resilience::RateLimiter>,
    pub retry_budget: Option<resilience::RetryBudget>,
}

impl Guards {
    fn new(r: &RouteConfig) -> Self {
        let breaker = || r.breaker.clone().map(resilience::Breaker::new);
        let bulkhead = || {
            r.bulkhead
                .as_ref()
                .map(|b| Arc::new(tokio::sync::Semaphore::new(b.max_concurrent)))
        };
        Self {
            breakers: [breaker(), breaker()],
            bulkheads: [bulkhead(), bulkhead()],
            limiter: r.rate_limit.clone().map(resilience::RateLimiter::new),
            retry_budget: r
                .retry
                .as_ref()
                .map(|c| resilience::RetryBudget::new(c.budget_ratio)),
        }
    }
}

/// The running route table: config plus its parsed pieces.
pub struct RouteTable {
    pub config: GatewayConfig,
    upstreams: HashMap<String, Uri>,
    sticky: Vec<Option<Sticky>>,
    pub guards: Vec<Guards>,
    /// Each route's counters (shared with the tables before and after a reload).
    stats: Vec<Arc<RouteStats>>,
    /// Each route's name as a response header value, made once.
    route_headers: Vec<Option<HeaderValue>>,
}

impl RouteTable {
    pub fn new(config: GatewayConfig) -> Result<Self, String> {
        config.validate()?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|(k, v)| (k.clone(), v.parse().expect("validated URL")))
            .collect();
        let sticky = config
            .routes
            .iter()
            .map(|r| {
                r.sticky
                    .as_deref()
                    .map(|s| Sticky::parse(s).expect("validated"))
            })
            .collect();
        let guards = config.routes.iter().map(Guards::new).collect();
        let stats = config.routes.iter().map(|_| Arc::default()).collect();
        let route_headers = config
            .routes
            .iter()
            .map(|r| HeaderValue::from_str(&r.name).ok())
            .collect();
        Ok(Self {
            config,
            upstreams,
            sticky,
            guards,
            stats,
            route_headers,
        })
    }

    /// The same table, counting into the counters `stats_of` gives for each route's name.
    fn with_stats(mut self, stats_of: impl Fn(&str) -> Arc<RouteStats>) -> Self {
        self.stats = self
            .config
            .routes
            .iter()
            .map(|r| stats_of(&r.name))
            .collect();
        self
    }
}

/// Where the table comes from and goes to.
pub struct Gateway {
    table: RwLock<Arc<RouteTable>>,
    /// The running table's number (unique in the process, see [`TABLE_GENERATIONS`]): a
    /// worker thread reuses its cached copy of the `Arc` while it is unchanged, so a request
    /// reads one shared word instead of taking the lock every thread shares.
    table_gen: AtomicU64,
    stats: RwLock<HashMap<String, Arc<RouteStats>>>,
    /// Comparisons in flight; past the limit, shadows are skipped.
    shadow_slots: Arc<tokio::sync::Semaphore>,
    /// The TOML file the table is read from and saved to, if any.
    file: Option<PathBuf>,
    /// Serializes changes to the table (admin writes and file reloads), so two admin
    /// changes cannot lose one another.
    change: std::sync::Mutex<()>,
    file_mtime: RwLock<Option<SystemTime>>,
    auth: Arc<Auth>,
    /// Each route's rollout state (`rollout_ctl.rs`), kept next to the route file.
    pub rollouts: rollout_ctl::Rollouts,
}

/// Which side served a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Legacy,
    New,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Legacy => 0,
            Side::New => 1,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Side::Legacy => "legacy",
            Side::New => "new",
        }
    }
}

fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Methods whose repetition has no extra effect (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

/// Hop-by-hop headers are for one connection only (RFC 9110 §7.6.1) and are not forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Numbers every route table in the process, so a thread's cached table can never be taken
/// for another gateway's (tests run several in one process).
static TABLE_GENERATIONS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last table this thread used, with its number.
    static TABLE_CACHE: std::cell::RefCell<Option<(u64, Arc<RouteTable>)>> =
        const { std::cell::RefCell::new(None) };

    /// The shadow copies' client, one per thread (the primary request goes through the
    /// lighter pool of [`upstream`]): a copy is sent on a connection owned by the thread (and
    /// runtime) that serves the request, with no cross-thread hand-off.
    static CLIENT: Client<HttpConnector, Body> = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector)
    };
}

fn local_client() -> Client<HttpConnector, Body> {
    CLIENT.with(Client::clone)
}

/// FNV-1a: a hash that never changes between builds, so a sticky client keeps its side
/// across upgrades of the gateway.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// Removes hop-by-hop headers: the fixed list and any header the `Connection` field names.
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    // Most messages carry none (and a `Connection` field is one of them): one pass over the
    // few names present settles it without a hashed lookup per listed name.
    if !headers.keys().any(|k| HOP_BY_HOP.contains(&k.as_str())) {
        return;
    }
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// A metric's name (or name part), its help text, and how to read it from the counters.
type Series<T> = (&'static str, &'static str, fn(&T) -> u64);

fn json_error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

impl Gateway {
    pub fn new(
        config: GatewayConfig,
        file: Option<PathBuf>,
        auth: Arc<Auth>,
    ) -> Result<Self, String> {
        let stats: RwLock<HashMap<String, Arc<RouteStats>>> = RwLock::new(HashMap::new());
        let table = RouteTable::new(config)?.with_stats(|name| {
            stats
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(name.to_owned())
                .or_default()
                .clone()
        });

        let mtime = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        let rollouts = rollout_ctl::Rollouts::load(file.as_deref())?;
        Ok(Self {
            table: RwLock::new(Arc::new(table)),
            table_gen: AtomicU64::new(TABLE_GENERATIONS.fetch_add(1, Ordering::Relaxed)),
            stats,
            shadow_slots: Arc::new(tokio::sync::Semaphore::new(shadow::MAX_SHADOWS_IN_FLIGHT)),
            file,
            change: std::sync::Mutex::new(()),
            file_mtime: RwLock::new(mtime),
            auth,
            rollouts,
        })
    }

    /// Loads the table from a TOML file.
    pub fn from_file(file: PathBuf, auth: Arc<Auth>) -> Result<Self, String> {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        let cfg = GatewayConfig::from_toml(&text)?;
        Self::new(cfg, Some(file), auth)
    }

    pub fn table(&self) -> Arc<RouteTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// [`Gateway::table`] for the request path: the thread's cached `Arc` while the table's
    /// number is unchanged. A replace stores the number after the table (under the lock), so
    /// a thread that sees the new number also reads the new table.
    fn current_table(&self) -> Arc<RouteTable> {
        let generation = self.table_gen.load(Ordering::Acquire);
        TABLE_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            match &*cache {
                Some((g, t)) if *g == generation => t.clone(),
                _ => {
                    let guard = self.table.read().unwrap_or_else(|p| p.into_inner());
                    let t = guard.clone();
                    let g = self.table_gen.load(Ordering::Acquire);
                    drop(guard);
                    *cache = Some((g, t.clone()));
                    t
                }
            }
        })
    }

    fn route_stats(&self, name: &str) -> Arc<RouteStats> {
        if let Some(s) = self
            .stats
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return s.clone();
        }
        self.stats
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Replaces the whole table (validated first); requests in flight keep the old one.
    pub fn replace(&self, config: GatewayConfig) -> Result<(), String> {
        let table = Arc::new(RouteTable::new(config)?.with_stats(|n| self.route_stats(n)));
        self.install(table);
        Ok(())
    }

    /// Makes `table` the running one. Every write of the table goes through here: the new
    /// number is stored under the lock, after the table, so no thread keeps a stale cache.
    fn install(&self, table: Arc<RouteTable>) {
        let mut running = self.table.write().unwrap_or_else(|p| p.into_inner());
        *running = table;
        self.table_gen.store(
            TABLE_GENERATIONS.fetch_add(1, Ordering::Relaxed),
            Ordering::Release,
        );
    }

    /// Re-reads the file if it changed since the last read. A broken file leaves the running
    /// table in place (and says why).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let Some(file) = &self.file else {
            return Ok(false);
        };
        let _change = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        if mtime == *self.file_mtime.read().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        *self.file_mtime.write().unwrap_or_else(|p| p.into_inner()) = mtime;
        let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
        self.replace(GatewayConfig::from_toml(&text)?)?;
        Ok(true)
    }

    /// Writes the running table back to its file (temp file, fsync, rename, fsync of the
    /// directory), so that a change the admin API acknowledged survives a crash or power loss
    /// and a crash mid-write leaves the old table or the new one, never half of one.
    fn save(&self, config: &GatewayConfig) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        rollout_ctl::write_atomically(file, config.to_toml().as_bytes())
            .map_err(|e| format!("writing {}: {e}", file.display()))?;
        let mtime = std::fs::metadata(file).and_then(|m| m.modified()).ok();
        *self.file_mtime.write().unwrap_or_else(|p| p.into_inner()) = mtime;
        Ok(())
    }

    /// The sticky key of a request, if its route has one and the request carries it.
    fn sticky_key(&self, sticky: &Sticky, req: &Request) -> Option<String> {
        match sticky {
            Sticky::Header(name) => req
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Sticky::Cookie(name) => req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.to_owned()),
            Sticky::User => {
                let token = crate::auth::bearer_token(req.headers())?;
                let now = ficus_store::now_ms() / 1000;
                self.auth.verify(token, now).ok().map(|c| c.sub)
            }
        }
    }

    /// Picks a side: the new side for `weight_new` percent of clients. With a sticky key the
    /// choice is a hash of route and key, so a client stays on its side while the weight
    /// holds, and moves only one way as the weight grows.
    fn choose(&self, route: &RouteConfig, sticky: Option<&Sticky>, req: &Request) -> Side {
        match route.weight_new {
            0 => return Side::Legacy,
            100 => return Side::New,
            _ => {}
        }
        let point = match sticky.and_then(|s| self.sticky_key(s, req)) {
            Some(key) => stable_hash(&[route.name.as_bytes(), b"\0", key.as_bytes()]) % 100,
            None => rand::random::<u64>() % 100,
        };
        if point < route.weight_new as u64 {
            Side::New
        } else {
            Side::Legacy
        }
    }

    /// Proxies one request.
    pub async fn handle(&self, req: Request) -> Response {
        let arrived = Instant::now();
        let incoming_deadline_ms = req
            .headers()
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if incoming_deadline_ms == Some(0) {
            return json_error(
                StatusCode::GATEWAY_TIMEOUT,
                "deadline_exceeded",
                "the caller's deadline budget is already spent",
            );
        }
        let table = self.current_table();
        // The request's URI is kept (a reference-counted copy) for its path.
        let original_uri = req.uri().clone();
        let path = original_uri.path();
        let method = req.method().clone();
        let Some((i, route)) = table
            .config
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.matches_path(path) && r.matches_method(method.as_str()))
        else {
            return json_error(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("no route for {method} {path}"),
            );
        };
        let mut side = self.choose(route, table.sticky[i].as_ref(), &req);
        // CQRS routing: reads to the query side, writes to the command side.
        let new_upstream = if is_read(&method) {
            route.new_reads.as_ref().or(route.new_writes.as_ref())
        } else {
            route.new_writes.as_ref().or(route.new_reads.as_ref())
        };
        let upstream = match (side, new_upstream) {
            (Side::New, Some(u)) => u,
            _ => {
                side = Side::Legacy;
                &route.legacy
            }
        };
        let query = req
            .uri()
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let guards = &table.guards[i];
        let mut rate_headers = None;
        if let Some(limiter) = &guards.limiter {
            let key = self.rate_key(&limiter.config.key, &req);
            let decision = limiter.check(&key, Instant::now());
            let (policy, state) = limiter.headers(&decision);
            if !decision.allowed {
                table.stats[i].rate_limited.fetch_add(1, Ordering::Relaxed);
                let mut resp = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "more than {} requests in {} s",
                        limiter.config.requests, limiter.config.window_s
                    ),
                )
                .into_response();
                let h = resp.headers_mut();
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(decision.retry_after_s),
                );
                insert_rate_headers(h, &policy, &state);
                return resp;
            }
            rate_headers = Some((policy, state));
        }
        let breaker = guards.breakers[side.index()].as_ref();
        let admission = match breaker.map(|b| b.admit(Instant::now())) {
            None => None,
            Some(Ok(a)) => Some(a),
            Some(Err(wait)) => {
                table.stats[i]
                    .breaker_refused
                    .fetch_add(1, Ordering::Relaxed);
                table.stats[i].side(side).window.record(None, true);
                return self.unavailable(
                    route,
                    "circuit_open",
                    wait,
                    rate_headers.as_ref(),
                    self.last_good_for(route, &method, path, &query),
                );
            }
        };
        let _slot = match (&guards.bulkheads[side.index()], &route.bulkhead) {
            (Some(sem), Some(cfg)) => {
                let wait = Duration::from_millis(cfg.max_wait_ms);
                let permit = match sem.clone().try_acquire_owned() {
                    Ok(permit) => Ok(Ok(permit)),
                    // Boxed, as every slow path here: its future would enlarge every request's.
                    Err(_) => {
                        Box::pin(tokio::time::timeout(wait, sem.clone().acquire_owned())).await
                    }
                };
                match permit {
                    Ok(Ok(permit)) => Some(permit),
                    _ => {
                        table.stats[i].bulkhead_full.fetch_add(1, Ordering::Relaxed);
                        table.stats[i].side(side).window.record(None, true);
                        return self.unavailable(
                            route,
                            "bulkhead_full",
                            Duration::from_secs(1),
                            rate_headers.as_ref(),
                            self.last_good_for(route, &method, path, &query),
                        );
                    }
                }
            }
            _ => None,
        };
        let uri = match target_uri(&table, route, upstream, side, path, &query) {
            Ok(u) => u,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_path", e),
        };
        let (mut parts, body) = req.into_parts();
        let client_addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        parts.uri = uri;
        parts.version = axum::http::Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        let earlier_hops = parts.headers.contains_key("x-forwarded-for");
        if let Some(ip) = client_addr.as_ref().filter(|_| earlier_hops) {
            // Every incoming line is kept, in order, then this hop's client.
            let mut hops: Vec<String> = parts
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect();
            hops.push(ip.clone());
            let xff = hops.join(", ");
            if let Ok(v) = HeaderValue::from_str(&xff) {
                parts.headers.insert("x-forwarded-for", v);
            }
        } else if let Some(Ok(v)) = client_addr.map(HeaderValue::try_from) {
            parts.headers.insert("x-forwarded-for", v);
        }
        let stats = &table.stats[i];

        // Shadow mode: the legacy answer is served, a copy goes to the new side.
        let mut body = body;
        let mut shadow_job = None;
        if side == Side::Legacy && route.shadow {
            match Box::pin(self.prepare_shadow(
                &table,
                route,
                new_upstream,
                &parts,
                body,
                path,
                &query,
            ))
            .await
            {
                Ok((primary_body, job)) => {
                    body = primary_body;
                    shadow_job = job;
                }
                Err(resp) => return resp,
            }
            if shadow_job.is_none() {
                stats.shadow.skipped.fetch_add(1, Ordering::Relaxed);
            }
        }

        let side_stats = match side {
            Side::Legacy => &stats.legacy,
            Side::New => &stats.new,
        };
        let started = Instant::now();
        // The deadline budget: the route's timeout, or less if the caller's budget is
        // smaller; what is left is passed on, so it shrinks at every hop.
        let budget_ms = incoming_deadline_ms.map_or(route.timeout_ms, |d| d.min(route.timeout_ms));
        let deadline = arrived + Duration::from_millis(budget_ms);
        // Retries: only for requests safe to repeat, whose body could be kept (small).
        let retry = route.retry.as_ref().filter(|_| {
            shadow_job.is_none()
                && (is_idempotent(&parts.method) || parts.headers.contains_key("idempotency-key"))
        });
        let mut replay = None;
        if retry.is_some() && body_fits(&parts, RETRY_BODY_LIMIT) {
            let bytes = match Box::pin(read_body(body, RETRY_BODY_LIMIT)).await {
                Ok(b) => b,
                Err(resp) => return resp,
            };
            body = Body::from(bytes.clone());
            replay = Some(bytes);
        }
        if let Some(b) = &guards.retry_budget {
            b.deposit();
        }
        // What a retry needs to rebuild the request; nothing is copied when it cannot retry.
        let again = replay.as_ref().map(|_| {
            (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            )
        });
        let mut first = Some(Request::from_parts(parts, body));
        let mut attempt = 0u32;
        let outcome = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut req = match (first.take(), &again) {
                (Some(r), _) => r,
                (None, Some((method, uri, headers))) => {
                    let mut r = Request::new(Body::from(replay.clone().unwrap_or_default()));
                    *r.method_mut() = method.clone();
                    *r.uri_mut() = uri.clone();
                    *r.headers_mut() = headers.clone();
                    r
                }
                (None, None) => unreachable!("a retry always has what it needs to rebuild"),
            };
            req.headers_mut().insert(
                HeaderName::from_static(DEADLINE_HEADER),
                HeaderValue::from(remaining.as_millis() as u64),
            );
            let outcome = tokio::time::timeout(remaining, upstream::send(req)).await;
            let retryable = match &outcome {
                Ok(Ok(r)) => matches!(r.status().as_u16(), 502..=504),
                Ok(Err(_)) => true,
                // The budget is spent: nothing left to retry with.
                Err(_) => false,
            };
            let Some(cfg) = retry.filter(|_| retryable && replay.is_some()) else {
                break outcome;
            };
            if attempt >= cfg.attempts {
                break outcome;
            }
            if !guards.retry_budget.as_ref().is_some_and(|b| b.withdraw()) {
                side_stats.retries_refused.fetch_add(1, Ordering::Relaxed);
                break outcome;
            }
            attempt += 1;
            side_stats.retries.fetch_add(1, Ordering::Relaxed);
            let backoff = ficus_runtime::backoff::Backoff {
                base_ms: cfg.base_ms,
                max_ms: cfg.max_ms,
            };
            let pause = Duration::from_millis(backoff.delay_ms(attempt, &mut rand::thread_rng()));
            if Instant::now() + pause >= deadline {
                break outcome;
            }
            Box::pin(tokio::time::sleep(pause)).await;
        };
        let failed = !matches!(&outcome, Ok(Ok(r)) if !r.status().is_server_error());
        if let (Some(b), Some(a)) = (breaker, admission) {
            b.record(a, failed, started.elapsed(), Instant::now());
        }
        let mut resp = match outcome {
            Ok(Ok(resp)) => {
                side_stats.record(started.elapsed(), resp.status().is_server_error());
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                match shadow_job {
                    Some(job) => {
                        let head = diff::Answer {
                            status: parts.status.as_u16(),
                            headers: chosen_headers(&parts.headers, &route.shadow_headers),
                            body: Vec::new(),
                        };
                        let (tx, rx) = oneshot::channel();
                        let tee = shadow::Tee::new(body, route.shadow_body_limit, tx);
                        tokio::spawn(job.run(head, rx, stats.clone()));
                        Response::from_parts(parts, Body::new(tee))
                    }
                    None if route.fallback_last_good
                        && method == Method::GET
                        && parts.status.is_success() =>
                    {
                        // Keep a copy of this good answer for a rainy day.
                        let (tx, rx) = oneshot::channel();
                        let tee = shadow::Tee::new(body, LAST_GOOD_BODY_BYTES, tx);
                        let (stats, key) = (stats.clone(), last_good_key(path, &query));
                        // Copied: the answer's header values share its read buffer, which a
                        // kept value would hold on to.
                        let content_type = parts
                            .headers
                            .get(header::CONTENT_TYPE)
                            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
                        tokio::spawn(async move {
                            if let Ok(Some(bytes)) = rx.await {
                                stats.remember(
                                    key,
                                    LastGood {
                                        content_type,
                                        body: bytes.into(),
                                        at: Instant::now(),
                                    },
                                );
                            }
                        });
                        Response::from_parts(parts, Body::new(tee))
                    }
                    None => Response::from_parts(parts, Body::new(body)),
                }
            }
            Ok(Err(e)) => {
                side_stats.record(started.elapsed(), true);
                json_error(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    format!("upstream {upstream} failed: {e}"),
                )
            }
            Err(_) => {
                side_stats.record(started.elapsed(), true);
                json_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    format!(
                        "upstream {upstream} did not answer within {} ms",
                        route.timeout_ms
                    ),
                )
            }
        };
        let h = resp.headers_mut();
        if let Some((policy, state)) = &rate_headers {
            insert_rate_headers(h, policy, state);
        }
        h.insert(
            HeaderName::from_static(TARGET_HEADER),
            HeaderValue::from_static(side.as_str()),
        );
        if let Some(v) = &table.route_headers[i] {
            h.insert(HeaderName::from_static(ROUTE_HEADER), v.clone());
        }
        resp
    }

    /// The rate-limit key of a request: its client IP, a header, or the bearer token's user.
    fn rate_key(&self, key: &str, req: &Request) -> String {
        let found = match key {
            "user" => self.sticky_key(&Sticky::User, req),
            k => match k.strip_prefix("header:") {
                Some(name) => self.sticky_key(&Sticky::Header(name.to_ascii_lowercase()), req),
                None => None,
            },
        };
        found.unwrap_or_else(|| {
            req.extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip().to_string())
                .unwrap_or_default()
        })
    }

    fn last_good_for(
        &self,
        route: &RouteConfig,
        method: &Method,
        path: &str,
        query: &str,
    ) -> Option<LastGood> {
        (route.fallback_last_good && method == Method::GET)
            .then(|| {
                self.route_stats(&route.name)
                    .last_good(&last_good_key(path, query))
            })
            .flatten()
    }

    /// A 503 (or the route's static fallback) when the upstream may not be called now.
    fn unavailable(
        &self,
        route: &RouteConfig,
        code: &'static str,
        retry_after: Duration,
        rate_headers: Option<&(String, String)>,
        last_good: Option<LastGood>,
    ) -> Response {
        if let Some(good) = last_good {
            let mut r = Response::new(Body::from(good.body));
            let h = r.headers_mut();
            if let Some(ct) = good.content_type {
                h.insert(header::CONTENT_TYPE, ct);
            }
            h.insert("ficus-fallback", HeaderValue::from_static("last-good"));
            h.insert(header::AGE, HeaderValue::from(good.at.elapsed().as_secs()));
            if let Ok(v) = HeaderValue::from_str(&route.name) {
                h.insert(HeaderName::from_static(ROUTE_HEADER), v);
            }
            return r;
        }
        let mut resp = match &route.fallback {
            Some(body) => {
                let mut r = (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.clone(),
                )
                    .into_response();
                r.headers_mut()
                    .insert("ficus-fallback", HeaderValue::from_static("static"));
                r
            }
            None => {
                let mut r = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("route {} is protecting its upstream ({code})", route.name),
                )
                .into_response();
                let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                r
            }
        };
        if let Some((policy, state)) = rate_headers {
            insert_rate_headers(resp.headers_mut(), policy, state);
        }
        if let Ok(v) = HeaderValue::from_str(&route.name) {
            resp.headers_mut()
                .insert(HeaderName::from_static(ROUTE_HEADER), v);
        }
        resp
    }

    /// Buffers the request body (only when its length is known and within the limit) and
    /// prepares the copies for the new side and the legacy twin. The primary gets the same
    /// bytes. `Ok((body, None))`: not shadowed, the body is passed on untouched.
    #[allow(clippy::too_many_arguments)]
    async fn prepare_shadow(
        &self,
        table: &RouteTable,
        route: &RouteConfig,
        new_upstream: Option<&String>,
        parts: &axum::http::request::Parts,
        body: Body,
        path: &str,
        query: &str,
    ) -> Result<(Body, Option<ShadowJob>), Response> {
        let Some(new_upstream) = new_upstream else {
            return Ok((body, None));
        };
        if !body_fits(parts, route.shadow_body_limit) {
            return Ok((body, None));
        }
        let Ok(permit) = self.shadow_slots.clone().try_acquire_owned() else {
            return Ok((body, None));
        };
        let bytes = read_body(body, route.shadow_body_limit).await?;
        let copy = |upstream: &String, side: Side| -> Option<Request> {
            let uri = target_uri(table, route, upstream, side, path, query).ok()?;
            let mut req = Request::new(Body::from(bytes.clone()));
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = uri;
            *req.headers_mut() = parts.headers.clone();
            req.headers_mut().insert(
                HeaderName::from_static("ficus-shadow"),
                HeaderValue::from_static("1"),
            );
            Some(req)
        };
        let job = ShadowJob {
            client: local_client(),
            shadow: copy(new_upstream, Side::New),
            twin: route
                .legacy_twin
                .as_ref()
                .and_then(|t| copy(t, Side::Legacy)),
            ignore: route.shadow_ignore.clone(),
            headers: route.shadow_headers.clone(),
            limit: route.shadow_body_limit,
            timeout: Duration::from_millis(route.timeout_ms),
            path: path.to_owned(),
            _permit: permit,
        };
        Ok((Body::from(bytes), Some(job)))
    }

    /// Every route's counters in the Prometheus text format: requests, errors, retries and
    /// latency by route and side, shadow comparisons, and breaker states.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let table = self.table();
        let mut out = String::new();
        let counters: [Series<SideStats>; 4] = [
            (
                "ficus_gateway_requests_total",
                "Requests sent upstream, by route and side.",
                |s| s.requests.load(Ordering::Relaxed),
            ),
            (
                "ficus_gateway_errors_total",
                "5xx answers and transport failures.",
                |s| s.errors.load(Ordering::Relaxed),
            ),
            ("ficus_gateway_retries_total", "Retries sent.", |s| {
                s.retries.load(Ordering::Relaxed)
            }),
            (
                "ficus_gateway_retries_refused_total",
                "Retries the retry budget refused.",
                |s| s.retries_refused.load(Ordering::Relaxed),
            ),
        ];
        let sides = |i: usize| {
            let st = &table.stats[i];
            [(Side::Legacy, &st.legacy), (Side::New, &st.new)]
        };
        for (name, help, get) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, r) in table.config.routes.iter().enumerate() {
                for (side, st) in sides(i) {
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\",side=\"{}\"}} {}",
                        r.name,
                        side.as_str(),
                        get(st)
                    );
                }
            }
        }
        let name = "ficus_gateway_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Upstream latency by route and side.\n# TYPE {name} histogram"
        );
        for (i, r) in table.config.routes.iter().enumerate() {
            for (side, st) in sides(i) {
                let cumulative = st
                    .buckets
                    .iter()
                    .zip(LATENCY_BUCKETS_MS)
                    .scan(0, |n, (b, le)| {
                        *n += b.load(Ordering::Relaxed);
                        Some((le as f64 / 1000.0, *n))
                    });
                crate::metrics::write_histogram(
                    &mut out,
                    name,
                    &format!("route=\"{}\",side=\"{}\"", r.name, side.as_str()),
                    cumulative,
                    st.requests.load(Ordering::Relaxed),
                    st.latency_us_total.load(Ordering::Relaxed) as f64 / 1e6,
                );
            }
        }
        let shadow: [Series<shadow::ShadowStats>; 5] = [
            ("compared", "Shadow comparisons made.", |s| {
                s.compared.load(Ordering::Relaxed)
            }),
            ("mismatched", "Comparisons that differed.", |s| {
                s.mismatched.load(Ordering::Relaxed)
            }),
            ("errors", "Shadow copies that failed or timed out.", |s| {
                s.errors.load(Ordering::Relaxed)
            }),
            (
                "skipped",
                "Requests not shadowed (body too large, too many in flight).",
                |s| s.skipped.load(Ordering::Relaxed),
            ),
            (
                "noise_suppressed",
                "Differences the legacy twin showed too.",
                |s| s.noise_suppressed.load(Ordering::Relaxed),
            ),
        ];
        for (what, help, get) in shadow {
            let name = format!("ficus_gateway_shadow_{what}_total");
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, r) in table.config.routes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\"}} {}",
                    r.name,
                    get(&table.stats[i].shadow)
                );
            }
        }
        let name = "ficus_gateway_refusals_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests refused before any upstream, by reason.\n# TYPE {name} counter"
        );
        for (i, r) in table.config.routes.iter().enumerate() {
            let st = &table.stats[i];
            for (reason, n) in [
                ("rate_limited", &st.rate_limited),
                ("circuit_open", &st.breaker_refused),
                ("bulkhead_full", &st.bulkhead_full),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{route=\"{}\",reason=\"{reason}\"}} {}",
                    r.name,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let name = "ficus_gateway_bulkhead_in_use";
        let _ = writeln!(
            out,
            "# HELP {name} Requests holding a bulkhead slot, by route and side (of ficus_gateway_bulkhead_capacity).\n# TYPE {name} gauge"
        );
        for (i, r) in table.config.routes.iter().enumerate() {
            let (Some(cfg), guards) = (&r.bulkhead, &table.guards[i]) else {
                continue;
            };
            for side in [Side::Legacy, Side::New] {
                if let Some(sem) = &guards.bulkheads[side.index()] {
                    let used = cfg.max_concurrent.saturating_sub(sem.available_permits());
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\",side=\"{}\"}} {used}",
                        r.name,
                        side.as_str()
                    );
                }
            }
        }
        let name = "ficus_gateway_bulkhead_capacity";
        let _ = writeln!(
            out,
            "# HELP {name} Bulkhead slots per route and side.\n# TYPE {name} gauge"
        );
        for r in &table.config.routes {
            if let Some(cfg) = &r.bulkhead {
                let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", r.name, cfg.max_concurrent);
            }
        }
        let name = "ficus_gateway_breaker_open";
        let _ = writeln!(
            out,
            "# HELP {name} 1 while a route's breaker is open or half-open.\n# TYPE {name} gauge"
        );
        for (i, r) in table.config.routes.iter().enumerate() {
            for side in [Side::Legacy, Side::New] {
                if let Some(b) = &table.guards[i].breakers[side.index()] {
                    let open = u8::from(b.mode().name() != "closed");
                    let _ = writeln!(
                        out,
                        "{name}{{route=\"{}\",side=\"{}\"}} {open}",
                        r.name,
                        side.as_str()
                    );
                }
            }
        }
        self.rollouts.prometheus(self, &mut out);
        out
    }

    /// Routes, weights and counters, for the admin API.
    pub fn describe(&self) -> Value {
        let table = self.table();
        let routes: Vec<Value> = table
            .config
            .routes
            .iter()
            .map(|r| {
                let stats = self.route_stats(&r.name);
                let mut v = serde_json::to_value(r).expect("routes serialize");
                let guards = table
                    .config
                    .routes
                    .iter()
                    .position(|x| x.name == r.name)
                    .map(|i| &table.guards[i]);
                let breaker = |side: Side| {
                    guards.and_then(|g| g.breakers[side.index()].as_ref()).map(
                        |b| json!({"state": b.mode().name(), "times_opened": b.times_opened()}),
                    )
                };
                v["stats"] = json!({
                    "legacy": stats.legacy.json(),
                    "new": stats.new.json(),
                    "shadow": stats.shadow.json(),
                    "breakers": {"legacy": breaker(Side::Legacy), "new": breaker(Side::New)},
                    "refusals": {
                        "rate_limited": stats.rate_limited.load(Ordering::Relaxed),
                        "circuit_open": stats.breaker_refused.load(Ordering::Relaxed),
                        "bulkhead_full": stats.bulkhead_full.load(Ordering::Relaxed),
                    },
                });
                v
            })
            .collect();
        json!({"upstreams": table.config.upstreams, "routes": routes})
    }

    /// Sets (adds or replaces) one route: validates the whole new table, saves it, then swaps
    /// it in. A table that does not validate is `Invalid`; one that cannot be saved is
    /// `Unsaved` and is not applied either.
    pub fn set_route(&self, route: RouteConfig) -> Result<(), SetRouteError> {
        let _change = self.change.lock().unwrap_or_else(|p| p.into_inner());
        let mut config = self.table().config.clone();
        match config.routes.iter_mut().find(|r| r.name == route.name) {
            Some(r) => *r = route,
            None => config.routes.push(route),
        }
        let table = Arc::new(
            RouteTable::new(config.clone())
                .map_err(SetRouteError::Invalid)?
                .with_stats(|n| self.route_stats(n)),
        );
        self.save(&config).map_err(SetRouteError::Unsaved)?;
        self.install(table);
        Ok(())
    }
}

/// Why a route change was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetRouteError {
    /// The table would not validate. (400 `invalid_route`)
    #[error("{0}")]
    Invalid(String),
    /// The route file could not be written. (500 `route_not_saved`)
    #[error("saving the route file: {0}")]
    Unsaved(String),
}

/// Polls the route file and swaps in a changed, valid table, until `shutdown`.
pub async fn watch_file(gw: Arc<Gateway>, every: Duration, shutdown: ficus_runtime::Shutdown) {
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match gw.reload_if_changed() {
            Ok(true) => tracing::info!("route table reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "route file is invalid; keeping the running table")
            }
        }
    }
}

/// The gateway's own endpoints plus the proxy as the fallback for everything else.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/admin/routes", get(list_routes))
        .route("/v1/admin/routes/{name}", get(get_route).put(put_route))
        .route(
            "/v1/admin/routes/{name}/rollout",
            get(rollout_ctl::get_rollout),
        )
        .route(
            "/v1/admin/routes/{name}/rollout/{action}",
            axum::routing::post(rollout_ctl::post_action),
        )
        .route("/v1/admin/metrics", get(metrics))
        .route(
            "/v1/admin/openapi.json",
            get(crate::openapi::gateway_admin::document),
        )
        .route(
            "/health/live",
            get(|| async { Json(json!({"status": "up"})) }),
        )
        .fallback(proxy)
        .with_state(gw)
}

/// Whether [`router`] may answer `path` itself (the admin API, the console, liveness) rather
/// than only pass it to its fallback, the proxy. Errs on the side of yes: the router proxies
/// what it has no route for.
pub fn own_path(path: &str) -> bool {
    path.starts_with("/v1/admin/") || path.starts_with("/console") || path == "/health/live"
}

async fn proxy(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    gw.handle(req).await
}

/// The admin caller: a bearer token with the admin role.
fn require_admin(gw: &Gateway, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let token = crate::auth::bearer_token(headers)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?;
    let claims = gw
        .auth
        .verify(token, ficus_store::now_ms() / 1000)
        .map_err(|e| unauthorized(&e.to_string()))?;
    if claims.roles.iter().any(|r| r == "admin") {
        Ok(())
    } else {
        Err(ApiError::forbidden("this needs the admin role"))
    }
}

async fn metrics(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&gw, &headers)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        gw.prometheus(),
    )
        .into_response())
}

async fn list_routes(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    Ok(Json(gw.describe()))
}

async fn get_route(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
    PathParams(name): PathParams<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    let all = gw.describe();
    all["routes"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == name.as_str()))
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::not_found("route_not_found", format!("no route {name}")))
}

async fn put_route(
    State(gw): State<Arc<Gateway>>,
    headers: axum::http::HeaderMap,
    PathParams(name): PathParams<String>,
    JsonBody(mut route): JsonBody<RouteConfig>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&gw, &headers)?;
    route.name = name.clone();
    gw.set_route(route).map_err(|e| match e {
        SetRouteError::Invalid(m) => ApiError::bad_request("invalid_route", m),
        SetRouteError::Unsaved(m) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "route_not_saved", m)
        }
    })?;
    get_route(State(gw), headers, PathParams(name)).await
}

#[cfg(test)]
mod tests {
    use super::own_path;

    /// Every path the router (and the console merged into it) answers itself must count as
    /// its own, or `ficus gateway` would proxy it instead.
    #[test]
    fn the_routers_own_paths_are_not_proxied_around_it() {
        for path in [
            "/v1/admin/routes",
            "/v1/admin/routes/products",
            "/v1/admin/routes/products/rollout",
            "/v1/admin/routes/products/rollout/start",
            "/v1/admin/metrics",
            "/v1/admin/openapi.json",
            "/health/live",
            "/console",
            "/console/",
            "/console/app.js",
            "/console/app.css",
        ] {
            assert!(own_path(path), "{path}");
        }
        for path in [
            "/",
            "/api/products/1",
            "/v1/products",
            "/health/ready",
            "/v1/adminx",
        ] {
            assert!(!own_path(path), "{path}");
        }
    }
}
