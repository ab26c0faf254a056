//! Proves HTTP caching of query answers through a real server on loopback, on both backends:
//! every query carries an `ETag` and `Cache-Control`, a matching `If-None-Match` (a list, weak
//! tags, `*`) gets `304` with no body, a price change gives a new tag and a `200`; `If-Match`
//! guards every command on an existing stream; and with the cache-aside layer on, the next
//! event invalidates a cached answer (a read with `min_position` never gets the stale one),
//! 1,000 concurrent misses on one key cause exactly one read-model read, and the number of
//! cached answers stays within its bound.

use std::time::Duration;

use ficus_server::app::{self, Running, ServerConfig};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;

struct Srv {
    running: Running,
    _data: TestData,
    http: reqwest::Client,
    admin: String,
    seller: String,
    customer: String,
}

impl Srv {
    async fn start(b: Backend, configure: impl FnOnce(&mut ServerConfig)) -> Srv {
        let data = TestData::new(b);
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        configure(&mut cfg);
        let running = app::start(cfg).await.expect("server starts");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Srv {
            admin: running.token("admin-1", &["admin"], HOUR),
            seller: running.token("seller-1", &["seller"], HOUR),
            customer: running.token("cust-1", &["customer"], HOUR),
            running,
            _data: data,
            http,
        }
    }

    async fn with_cache(b: Backend, max_entries: usize) -> Srv {
        Srv::start(b, |c| {
            c.api.read_cache.enabled = true;
            c.api.read_cache.max_entries = max_entries;
        })
        .await
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.stop())
            .await
            .expect("stop finishes within 10 s")
            .expect("clean stop");
    }

    fn req(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if token.is_empty() {
            rb
        } else {
            rb.bearer_auth(token)
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Response {
        rb.send().await.expect("request reaches the server")
    }

    /// Creates a product and answers its id and the position of its creation.
    async fn product(&self, name: &str, price: &str) -> (String, u64) {
        let body: Value = serde_json::from_str(&format!(
            r#"{{"name":"{name}","category":"garden","price":{price},"currency":"EUR"}}"#
        ))
        .unwrap();
        let r = self
            .send(
                self.req(Method::POST, "/v1/products", &self.seller)
                    .json(&body),
            )
            .await;
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["position"].as_u64().unwrap(),
        )
    }

    /// Changes a product's price; answers the new position.
    async fn set_price(&self, id: &str, price: &str) -> u64 {
        let body: Value = serde_json::from_str(&format!(r#"{{"price":{price}}}"#)).unwrap();
        let r = self
            .send(
                self.req(
                    Method::PUT,
                    &format!("/v1/products/{id}/price"),
                    &self.seller,
                )
                .json(&body),
            )
            .await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        v["position"].as_u64().unwrap()
    }

    /// `GET path` with `token` and, if given, `If-None-Match`.
    async fn get(&self, path: &str, token: &str, if_none_match: Option<&str>) -> Response {
        let mut rb = self.req(Method::GET, path, token);
        if let Some(t) = if_none_match {
            rb = rb.header("if-none-match", t);
        }
        self.send(rb).await
    }

    fn backend_reads(&self) -> u64 {
        self.cache().stats().backend_reads
    }

    fn cache(&self) -> &ficus_gateway::cache::ShopCache {
        self.running
            .state
            .read_cache
            .as_deref()
            .expect("the cache is on")
    }

    /// Waits until the catalog has applied `position` without reading it through HTTP.
    async fn catalog_at(&self, position: u64) {
        self.running
            .state
            .read
            .catalog()
            .wait_for(position, Duration::from_secs(10))
            .await
            .expect("catalog catches up");
    }
}

fn etag(r: &Response) -> String {
    r.headers()
        .get("etag")
        .expect("an ETag")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a `304` with `tag` and no body.
async fn not_modified(r: Response, tag: &str) {
    assert_eq!(r.status(), 304);
    assert_eq!(etag(&r), tag);
    assert!(r.headers().get("ficus-position").is_some());
    assert!(r.bytes().await.unwrap().is_empty(), "a 304 has no body");
}

async fn etag_and_304_on_every_query(b: Backend) {
    let s = Srv::start(b, |_| {}).await;
    let (id, pos) = s.product("Rake", "12.50").await;
    let details = format!("/v1/products/{id}?min_position={pos}");

    // Details: the product's version, revalidated on every use.
    let r = s.get(&details, "", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), "\"1\"");
    assert_eq!(r.headers()["cache-control"], "private, no-cache");
    for tag in ["\"1\"", "W/\"1\"", "\"9\", W/\"1\"", "*"] {
        not_modified(s.get(&details, "", Some(tag)).await, "\"1\"").await;
    }
    let r = s.get(&details, "", Some("\"2\"")).await;
    assert_eq!(r.status(), 200);
    // `*` matches only a current representation: an unknown product is still a 404.
    let r = s.get("/v1/products/nope", "", Some("*")).await;
    assert_eq!(r.status(), 404);

    // Search: the catalog's position.
    let search = format!("/v1/products?q=rake&min_position={pos}");
    let r = s.get(&search, "", None).await;
    assert_eq!(r.status(), 200);
    let list_tag = etag(&r);
    assert_eq!(
        list_tag,
        format!("\"p{}\"", r.headers()["ficus-position"].to_str().unwrap())
    );
    not_modified(s.get(&search, "", Some(&list_tag)).await, &list_tag).await;

    // A price change: new tags and full answers for the old ones.
    let pos = s.set_price(&id, "13.00").await;
    let details = format!("/v1/products/{id}?min_position={pos}");
    let r = s.get(&details, "", Some("\"1\"")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), "\"2\"");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["price"], json!(13.0));
    let search = format!("/v1/products?q=rake&min_position={pos}");
    let r = s.get(&search, "", Some(&list_tag)).await;
    assert_eq!(r.status(), 200);
    assert_ne!(etag(&r), list_tag);

    // A customer's orders and the analytics: the orders read model's position.
    let r = s
        .send(
            s.req(Method::POST, "/v1/orders", &s.customer)
                .json(&json!({"items": [{"product_id": id, "quantity": 1}]})),
        )
        .await;
    assert_eq!(r.status(), 201);
    let pos = r.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();
    let today = ficus_core::time::format_date(ficus_core::time::day_of_ms(ficus_store::now_ms()));
    for (path, token) in [
        (
            format!("/v1/customers/cust-1/orders?min_position={pos}"),
            &s.customer,
        ),
        (
            format!("/v1/analytics/orders?from={today}&to={today}&min_position={pos}"),
            &s.admin,
        ),
    ] {
        let r = s.get(&path, token, None).await;
        assert_eq!(r.status(), 200, "{path}");
        let tag = etag(&r);
        assert!(tag.starts_with("\"p"), "{tag}");
        assert_eq!(r.headers()["cache-control"], "private, no-cache");
        not_modified(s.get(&path, token, Some(&tag)).await, &tag).await;
    }
    s.stop().await;
}

/// A command on an existing stream, given the `If-Match` value to send.
type Command<'a> = Box<dyn Fn(&str) -> RequestBuilder + 'a>;

async fn if_match_guards_every_versioned_command(b: Backend) {
    let s = Srv::start(b, |_| {}).await;
    let (id, _) = s.product("Hoe", "20.00").await;
    let r = s
        .send(
            s.req(Method::POST, "/v1/orders", &s.customer)
                .json(&json!({"items": [{"product_id": id, "quantity": 1}]})),
        )
        .await;
    let order = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // (request, the stream's current version): a stale tag is a 409 that writes nothing, the
    // current one goes through.
    let cmds: Vec<(Command<'_>, u64)> = vec![
        (
            Box::new(|v| {
                s.req(Method::PUT, &format!("/v1/products/{id}/price"), &s.seller)
                    .header("if-match", v)
                    .json(&json!({"price": 21}))
            }),
            1,
        ),
        (
            Box::new(|v| {
                s.req(Method::POST, &format!("/v1/products/{id}/stock"), &s.seller)
                    .header("if-match", v)
                    .json(&json!({"warehouse": "main", "delta": 1}))
            }),
            2,
        ),
        (
            Box::new(|v| {
                s.req(
                    Method::POST,
                    &format!("/v1/orders/{order}/items"),
                    &s.customer,
                )
                .header("if-match", v)
                .json(&json!({"product_id": id, "quantity": 1}))
            }),
            2,
        ),
        (
            Box::new(|v| {
                s.req(
                    Method::POST,
                    &format!("/v1/orders/{order}/cancel"),
                    &s.customer,
                )
                .header("if-match", v)
            }),
            3,
        ),
        (
            Box::new(|v| {
                s.req(Method::DELETE, &format!("/v1/products/{id}"), &s.seller)
                    .header("if-match", v)
                    .json(&json!({"reason": "discontinued"}))
            }),
            3,
        ),
    ];
    for (cmd, version) in &cmds {
        let head = s.running.state.store.head_position();
        let stale = format!("\"{}\"", version + 5);
        let r = s.send(cmd(&stale)).await;
        assert_eq!(r.status(), 409);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "wrong_expected_version");
        assert_eq!(v["actual_version"], json!(version));
        assert_eq!(
            s.running.state.store.head_position(),
            head,
            "a 409 writes nothing"
        );
        let r = s.send(cmd(&format!("W/\"{version}\""))).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    drop(cmds);
    s.stop().await;
}

async fn cached_answers_are_invalidated_by_the_next_event(b: Backend) {
    let s = Srv::with_cache(b, 100).await;
    let (id, pos) = s.product("Spade", "30.00").await;
    let path = |p: u64| format!("/v1/products/{id}?min_position={p}");
    let r = s.get(&path(pos), "", None).await;
    assert_eq!(etag(&r), "\"1\"");
    let reads = s.backend_reads();
    // Served from the cache while nothing changes: no read-model read, still a 304.
    not_modified(s.get(&path(pos), "", Some("\"1\"")).await, "\"1\"").await;
    let r = s.get(&format!("/v1/products/{id}"), "", None).await;
    assert_eq!(r.json::<Value>().await.unwrap()["price"], json!(30.0));
    assert_eq!(s.backend_reads(), reads);
    assert!(s.cache().stats().hits >= 2);

    // The next event invalidates it: read-your-own-write gets the new price, not the cache.
    let pos = s.set_price(&id, "25.00").await;
    let r = s.get(&path(pos), "", Some("\"1\"")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(etag(&r), "\"2\"");
    assert_eq!(r.json::<Value>().await.unwrap()["price"], json!(25.0));
    assert_eq!(s.backend_reads(), reads + 1);
    // Without min_position too, once the projection has applied the event.
    let pos = s.set_price(&id, "24.00").await;
    s.catalog_at(pos).await;
    let r = s.get(&format!("/v1/products/{id}"), "", None).await;
    assert_eq!(r.json::<Value>().await.unwrap()["price"], json!(24.0));

    // Lists as well: a search cached before a new product is re-read after it.
    let r = s.get("/v1/products?category=garden", "", None).await;
    assert_eq!(r.json::<Value>().await.unwrap()["total"], json!(1));
    let (_, pos) = s.product("Shears", "15.00").await;
    let r = s
        .get(
            &format!("/v1/products?category=garden&min_position={pos}"),
            "",
            None,
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["total"], json!(2));
    s.stop().await;
}

async fn a_thousand_concurrent_misses_cause_one_read(b: Backend) {
    let s = Srv::with_cache(b, 100).await;
    let (id, pos) = s.product("Trowel", "8.00").await;
    s.catalog_at(pos).await;
    let before = s.backend_reads();
    let path = format!("/v1/products/{id}");
    let answers = futures::future::join_all((0..1000).map(|_| async {
        let r = s.get(&path, "", None).await;
        (r.status().as_u16(), etag(&r))
    }));
    let answers = tokio::time::timeout(Duration::from_secs(60), answers)
        .await
        .expect("1,000 requests answer in time");
    assert!(answers.iter().all(|a| a == &(200, "\"1\"".to_owned())));
    assert_eq!(
        s.backend_reads() - before,
        1,
        "one read-model read for 1,000 requests"
    );
    // Operators see the same counter on /metrics.
    let metrics = s
        .get("/metrics", &s.admin, None)
        .await
        .text()
        .await
        .unwrap();
    let line = format!("ficus_read_cache_backend_reads_total {}", s.backend_reads());
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    s.stop().await;
}

async fn the_cache_stays_within_its_bound(b: Backend) {
    let s = Srv::with_cache(b, 5).await;
    let mut last = 0;
    let mut ids = Vec::new();
    for i in 0..12 {
        let (id, pos) = s.product(&format!("Pot {i}"), "3.00").await;
        ids.push(id);
        last = pos;
    }
    for id in &ids {
        let r = s
            .get(&format!("/v1/products/{id}?min_position={last}"), "", None)
            .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["id"], json!(id));
    }
    let stats = s.cache().stats();
    assert_eq!(stats.entries, 5);
    assert_eq!(stats.evictions, 7);
    s.stop().await;
}

on_both_backends!(
    etag_and_304_on_every_query,
    if_match_guards_every_versioned_command,
    cached_answers_are_invalidated_by_the_next_event,
    a_thousand_concurrent_misses_cause_one_read,
    the_cache_stays_within_its_bound,
);
