//! Admin routes on their own listen address (`ficus serve --admin-listen`).
//!
//! [`ADMIN_ROUTES`] is the admin surface: every operation only the admin role may call (the
//! handlers' unconditional `require_role("admin")`, and "Needs the admin role" in the OpenAPI
//! document; a unit test keeps the two in step), plus the operator console. When an admin
//! address is set, the public listener answers those routes `404 route_not_found` (exactly
//! as for a route that does not exist, so the public side does not even reveal them), and the
//! admin listener serves only them plus [`SHARED_ROUTES`] (health, readiness, metrics, the
//! OpenAPI document), which both sides keep so probes and scrapers can use either, and the
//! console's reads of jobs and sagas ([`CONSOLE_READS`]). Token and
//! role checks are unchanged on the admin side: a separate address is a second fence, not a
//! replacement for the first.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Which routes one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Everything (no separate admin address).
    All,
    /// The public side of a split: everything but the admin routes.
    Public,
    /// The admin side of a split: the admin routes and the shared ones.
    Admin,
}

/// `(method, path)` of every admin-only operation; `*` is any method, `{x}` one path segment,
/// `{*x}` the rest of the path.
pub const ADMIN_ROUTES: &[(&str, &str)] = &[
    // Raw streams and the global log.
    ("*", "/v1/streams/{stream}"),
    ("*", "/v1/all"),
    ("*", "/v1/subscribe"),
    // Projections: status and blue/green rebuild.
    ("*", "/v1/projections"),
    ("*", "/v1/projections/{name}/rebuild"),
    // The admin dashboard's analytics query.
    ("*", "/v1/analytics/orders"),
    // Queues, their dead-letter queues (list, purge, redrive) and job items.
    ("*", "/v1/queues"),
    ("*", "/v1/queues/{name}/dead"),
    ("*", "/v1/queues/{name}/dead/redrive"),
    ("*", "/v1/jobs/items/{id}"),
    // Blob deletion and garbage collection (fetching a blob is not admin-only).
    ("POST", "/v1/blobs"),
    ("DELETE", "/v1/blobs/{id}"),
    ("*", "/v1/blobs/gc"),
    // Crypto-shredding.
    ("*", "/v1/subjects/{id}/keys"),
    // Everything under /v1/admin (storage-fault injection, ...).
    ("*", "/v1/admin/{*rest}"),
    // The operator console and its assets.
    ("*", "/console"),
    ("*", "/console/{*rest}"),
];

/// Routes both listeners serve.
pub const SHARED_ROUTES: &[&str] = &[
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v1/openapi.json",
];

/// Public reads the console also makes (an admin may read any job or saga), so it works
/// on the admin address; they stay on the public one for their owners.
pub const CONSOLE_READS: &[&str] = &["/v1/jobs/{id}", "/v1/sagas/{id}"];

fn is_console_read(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && CONSOLE_READS.iter().any(|p| path_matches(p, path))
}

/// Whether `path` matches the route pattern `pattern`.
fn path_matches(pattern: &str, path: &str) -> bool {
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) if w.starts_with("{*") => return !g.is_empty(),
            (Some(w), Some(g)) if w.starts_with('{') => {
                if g.is_empty() {
                    return false;
                }
            }
            (Some(w), Some(g)) => {
                if w != g {
                    return false;
                }
            }
            _ => return false,
        }
    }
}

/// Whether a request for `method path` is an admin operation.
pub fn is_admin(method: &Method, path: &str) -> bool {
    ADMIN_ROUTES.iter().any(|(m, p)| {
        let method_ok = match *m {
            "*" => true,
            // axum answers HEAD with the GET route.
            "GET" => method == Method::GET || method == Method::HEAD,
            m => method.as_str() == m,
        };
        method_ok && path_matches(p, path)
    })
}

/// The middleware of a split listener: refuses what the other side serves.
pub(crate) async fn filter(State(listener): State<Listener>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let served = match listener {
        Listener::All => true,
        Listener::Public => !is_admin(req.method(), path),
        Listener::Admin => {
            SHARED_ROUTES.contains(&path)
                || is_admin(req.method(), path)
                || is_console_read(req.method(), path)
        }
    };
    if served {
        next.run(req).await
    } else {
        ApiError::not_found("route_not_found", "no such route").into_response()
    }
}

/// The façade's own admin surface (`ficus gateway`): its admin API under `/v1/admin` (routes,
/// weights, rollouts, its metrics and OpenAPI document) and the console.
pub fn is_gateway_admin(path: &str) -> bool {
    ["/v1/admin/{*rest}", "/console", "/console/{*rest}"]
        .iter()
        .any(|p| path_matches(p, path))
}

/// What both sides of a split façade serve: its liveness probe.
pub const GATEWAY_SHARED_ROUTES: &[&str] = &["/health/live"];

async fn gateway_filter(State(listener): State<Listener>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let served = match listener {
        Listener::All => true,
        // Not proxied either: `/v1/admin` is the façade's own namespace.
        Listener::Public => !is_gateway_admin(path),
        Listener::Admin => GATEWAY_SHARED_ROUTES.contains(&path) || is_gateway_admin(path),
    };
    if served {
        next.run(req).await
    } else {
        ApiError::not_found("route_not_found", "no such route").into_response()
    }
}

/// The façade's router (its admin API, the console, the proxy as fallback) as one side of a
/// split; on the admin side nothing is proxied.
pub fn gateway_side(router: axum::Router, listener: Listener) -> axum::Router {
    if listener == Listener::All {
        return router;
    }
    router.layer(axum::middleware::from_fn_with_state(
        listener,
        gateway_filter,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        assert!(path_matches(
            "/v1/queues/{name}/dead",
            "/v1/queues/shop/dead"
        ));
        assert!(!path_matches("/v1/queues/{name}/dead", "/v1/queues//dead"));
        assert!(!path_matches(
            "/v1/queues/{name}/dead",
            "/v1/queues/shop/dead/x"
        ));
        assert!(!path_matches("/v1/queues", "/v1/queuesx"));
        assert!(path_matches("/v1/admin/{*rest}", "/v1/admin/storage-fault"));
        assert!(path_matches("/v1/admin/{*rest}", "/v1/admin/a/b"));
        assert!(!path_matches("/v1/admin/{*rest}", "/v1/admin/"));
        assert!(!path_matches("/v1/admin/{*rest}", "/v1/admin"));
        assert!(is_admin(&Method::DELETE, "/v1/blobs/sha256:00"));
        assert!(!is_admin(&Method::GET, "/v1/blobs/sha256:00"));
        assert!(!is_admin(&Method::GET, "/v1/products"));
        assert!(is_admin(&Method::HEAD, "/console/app.js"));
        assert!(is_console_read(&Method::GET, "/v1/jobs/j-1"));
        assert!(!is_console_read(&Method::POST, "/v1/jobs/j-1/cancel"));
        assert!(!is_console_read(&Method::POST, "/v1/jobs"));
    }

    /// Every operation the OpenAPI document marks as admin-only is an admin route, and every
    /// other documented operation is not: a new admin endpoint cannot stay on the public side
    /// by being forgotten here.
    #[test]
    fn the_admin_routes_are_exactly_the_documented_admin_operations() {
        let spec = crate::openapi::spec();
        for (path, item) in spec["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Ok(m) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) else {
                    continue;
                };
                let text = |k: &str| op[k].as_str().unwrap_or("").to_owned();
                let documented_admin = text("description").contains("Needs the admin role")
                    || text("summary").ends_with("(admin)");
                // A concrete path for the template: every `{x}` becomes a sample segment.
                let concrete: String = path
                    .split('/')
                    .map(|s| if s.starts_with('{') { "x" } else { s })
                    .collect::<Vec<_>>()
                    .join("/");
                assert_eq!(
                    is_admin(&m, &concrete),
                    documented_admin,
                    "{method} {path}: admin route list and OpenAPI disagree"
                );
            }
        }
    }
}
