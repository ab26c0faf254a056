//! The gateway's route table: upstreams and routes, read from a TOML file (or set through the
//! admin API), validated as a whole before it replaces the running table.
//!
//! ```toml
//! [upstreams]
//! legacy = "http://127.0.0.1:8081"
//! query = "http://127.0.0.1:7070"
//! command = "http://127.0.0.1:7070"
//!
//! [[routes]]
//! name = "products"
//! path_prefix = "/api/products"     # matched on whole segments
//! methods = ["GET", "POST"]         # optional; all methods when absent
//! legacy = "legacy"
//! new_reads = "query"               # GET/HEAD go here when routed to the new side
//! new_writes = "command"            # POST/PUT/PATCH/DELETE go here
//! new_prefix = "/v1/products"       # path rewrite on the new side (old URLs keep working)
//! weight_new = 10                   # percent of traffic on the new side (0 = rollback)
//! sticky = "header:x-user-id"       # or "cookie:uid", "user" (the bearer token's sub)
//! ```
//!
//! Routes are tried in file order and the first match wins (as in Envoy), so put narrower
//! prefixes first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resilience::{BreakerConfig, BulkheadConfig, RateLimitConfig, RetryConfig};

/// Most routes a table may hold.
pub const MAX_ROUTES: usize = 1000;
/// Most upstreams a table may hold.
pub const MAX_UPSTREAMS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Taken from the URL when set through the admin API.
    #[serde(default)]
    pub name: String,
    pub path_prefix: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Upstream serving the legacy side.
    pub legacy: String,
    /// Upstream for reads (GET/HEAD) on the new side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_reads: Option<String>,
    /// Upstream for writes on the new side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_writes: Option<String>,
    /// Replaces `path_prefix` in paths sent to the new side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_prefix: Option<String>,
    /// Replaces `path_prefix` in paths sent to the legacy side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_prefix: Option<String>,
    /// Percent of traffic sent to the new side, 0..=100.
    #[serde(default)]
    pub weight_new: u8,
    /// What keeps one client on one side: `header:NAME`, `cookie:NAME` or `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<String>,
    /// Longest an upstream may take to answer, ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Shadow mode: requests served by the legacy side are also sent to the new side and the
    /// two answers compared (the new side's answer is never served).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
    /// JSON fields left out of the comparison: a key name anywhere (`updated_at`) or a dotted
    /// path from the top (`order.id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_ignore: Vec<String>,
    /// Response headers compared (lower-case names); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_headers: Vec<String>,
    /// A second legacy instance: what differs between the two legacy answers is noise and
    /// is not counted as a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_twin: Option<String>,
    /// Largest request or response body copied for a comparison; larger ones are served but
    /// not shadowed.
    #[serde(default = "default_shadow_body_limit")]
    pub shadow_body_limit: usize,
    /// Fails fast with 503 while the route's upstream keeps failing (per side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerConfig>,
    /// Bounds the calls in flight to the route's upstream (per side).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<BulkheadConfig>,
    /// Requests per window and client key; 429 past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// Retries of idempotent requests (or ones with an `Idempotency-Key`) on transport
    /// errors and 502/503/504, with backoff, full jitter and a retry budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// A static JSON body served (200, `ficus-fallback: static`) when the upstream is
    /// open-circuited or its bulkhead is full, instead of a 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// Keep the last good answer of each GET path (2xx, small) and serve it, marked
    /// `ficus-fallback: last-good`, when the upstream may not be called; before the static
    /// fallback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fallback_last_good: bool,
    /// Progressive delivery: weights in steps, judged against bounds (`rollout.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::RolloutPlan>,
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn default_shadow_body_limit() -> usize {
    1024 * 1024
}

/// Largest `shadow_body_limit` accepted.
pub const MAX_SHADOW_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Upstream name → base URL (`http://host:port`, optionally with a path prefix).
    #[serde(default)]
    pub upstreams: BTreeMap<String, String>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// What keeps a client on one side of a split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(String),
    Cookie(String),
    User,
}

impl Sticky {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some(("header", name)) if !name.is_empty() => {
                Ok(Sticky::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if !name.is_empty() => Ok(Sticky::Cookie(name.to_owned())),
            None if s == "user" => Ok(Sticky::User),
            _ => Err(format!(
                "sticky must be \"header:NAME\", \"cookie:NAME\" or \"user\", not {s:?}"
            )),
        }
    }
}

const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl GatewayConfig {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: GatewayConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("the gateway config serializes")
    }

    /// Checks the table as a whole: every name is unique and every reference resolves.
    pub fn validate(&self) -> Result<(), String> {
        if self.routes.len() > MAX_ROUTES || self.upstreams.len() > MAX_UPSTREAMS {
            return Err(format!(
                "at most {MAX_ROUTES} routes and {MAX_UPSTREAMS} upstreams"
            ));
        }
        for (name, url) in &self.upstreams {
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| format!("upstream {name}: {url:?} is not a URL: {e}"))?;
            if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                return Err(format!("upstream {name}: {url:?} must be http://host:port"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.routes {
            r.validate(&self.upstreams)?;
            if !seen.insert(&r.name) {
                return Err(format!("route {} is defined twice", r.name));
            }
        }
        Ok(())
    }
}

impl RouteConfig {
    pub fn validate(&self, upstreams: &BTreeMap<String, String>) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(format!(
                "route name {n:?} must be 1-64 of A-Z a-z 0-9 - _ ."
            ));
        }
        for p in [
            Some(&self.path_prefix),
            self.new_prefix.as_ref(),
            self.legacy_prefix.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !p.starts_with('/') || p.contains(['?', '#']) {
                return Err(format!("route {n}: {p:?} must be a path starting with /"));
            }
        }
        for m in &self.methods {
            if !METHODS.contains(&m.as_str()) {
                return Err(format!("route {n}: unknown method {m:?}"));
            }
        }
        if self.weight_new > 100 {
            return Err(format!("route {n}: weight_new is a percent, 0..=100"));
        }
        for u in [
            Some(&self.legacy),
            self.new_reads.as_ref(),
            self.new_writes.as_ref(),
            self.legacy_twin.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !upstreams.contains_key(u) {
                return Err(format!("route {n}: no upstream named {u:?}"));
            }
        }
        if self.weight_new > 0 && self.new_reads.is_none() && self.new_writes.is_none() {
            return Err(format!(
                "route {n}: weight_new > 0 needs new_reads or new_writes"
            ));
        }
        if self.shadow && self.new_reads.is_none() && self.new_writes.is_none() {
            return Err(format!("route {n}: shadow needs new_reads or new_writes"));
        }
        if self.shadow_body_limit > MAX_SHADOW_BODY_BYTES {
            return Err(format!(
                "route {n}: shadow_body_limit is at most {MAX_SHADOW_BODY_BYTES} bytes"
            ));
        }
        if let Some(s) = &self.sticky {
            Sticky::parse(s).map_err(|e| format!("route {n}: {e}"))?;
        }
        if let Some(b) = &self.breaker {
            b.validate().map_err(|e| format!("route {n}: {e}"))?;
        }
        if let Some(b) = &self.bulkhead {
            if b.max_concurrent == 0 || b.max_concurrent > 100_000 || b.max_wait_ms > 60_000 {
                return Err(format!(
                    "route {n}: bulkhead max_concurrent in 1..=100000, max_wait_ms at most 60000"
                ));
            }
        }
        if let Some(r) = &self.rate_limit {
            r.validate().map_err(|e| format!("route {n}: {e}"))?;
        }
        if let Some(r) = &self.retry {
            r.validate().map_err(|e| format!("route {n}: {e}"))?;
        }
        if let Some(f) = &self.fallback {
            serde_json::from_str::<serde_json::Value>(f)
                .map_err(|e| format!("route {n}: fallback must be JSON: {e}"))?;
        }
        if let Some(plan) = &self.rollout {
            plan.validate().map_err(|e| format!("route {n}: {e}"))?;
            if self.new_reads.is_none() && self.new_writes.is_none() {
                return Err(format!(
                    "route {n}: a rollout needs new_reads or new_writes"
                ));
            }
        }
        if self.timeout_ms == 0 || self.timeout_ms > 600_000 {
            return Err(format!("route {n}: timeout_ms must be 1..=600000"));
        }
        Ok(())
    }

    /// Whether `path` falls under this route's prefix, on whole segments.
    pub fn matches_path(&self, path: &str) -> bool {
        let p = self.path_prefix.trim_end_matches('/');
        p.is_empty()
            || path == p
            || (path.starts_with(p) && path.as_bytes().get(p.len()) == Some(&b'/'))
    }

    /// Whether the route takes `method`. HEAD goes wherever GET does.
    pub fn matches_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m == method || (method == "HEAD" && m == "GET"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
        [upstreams]
        legacy = "http://127.0.0.1:8081"
        query = "http://127.0.0.1:7070"

        [[routes]]
        name = "products"
        path_prefix = "/api/products"
        legacy = "legacy"
        new_reads = "query"
        new_prefix = "/v1/products"
        weight_new = 10
        sticky = "header:X-User"
    "#;

    #[test]
    fn parses_validates_and_round_trips() {
        let cfg = GatewayConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(cfg.routes[0].weight_new, 10);
        assert_eq!(cfg.routes[0].timeout_ms, 30_000);
        assert_eq!(GatewayConfig::from_toml(&cfg.to_toml()).unwrap(), cfg);
        assert_eq!(
            Sticky::parse("header:X-User"),
            Ok(Sticky::Header("x-user".into()))
        );
    }

    #[test]
    fn refuses_broken_tables() {
        for (bad, why) in [
            (EXAMPLE.replace("weight_new = 10", "weight_new = 101"), "percent"),
            (EXAMPLE.replace("new_reads = \"query\"", "new_reads = \"nope\""), "no upstream"),
            (EXAMPLE.replace("header:X-User", "ip"), "sticky"),
            (EXAMPLE.replace("http://127.0.0.1:8081", "ftp://x"), "http://"),
            (EXAMPLE.replace("/api/products\"", "api\""), "starting with /"),
            (format!("{EXAMPLE}\nbogus = 1"), "unknown field"),
            (
                format!("{EXAMPLE}\n[[routes]]\nname = \"products\"\npath_prefix = \"/x\"\nlegacy = \"legacy\""),
                "twice",
            ),
        ] {
            let err = GatewayConfig::from_toml(&bad).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let cfg = GatewayConfig::from_toml(EXAMPLE).unwrap();
        let r = &cfg.routes[0];
        assert!(r.matches_path("/api/products"));
        assert!(r.matches_path("/api/products/7"));
        assert!(!r.matches_path("/api/productsX"));
        assert!(!r.matches_path("/api"));
    }
}
