//! Proves the backend-for-frontend views through a real server on loopback, on both backends:
//! `/v1/mobile/products/{id}` answers exactly the compact fields and `/v1/web/products/{id}`
//! the rich page (stock per warehouse, newest-first bounded price history, bounded related
//! products of the same category), both from the read models with `min_position`, `ETag`
//! (the product's version for mobile, the catalog's position for web) and `304`, with and
//! without the cache-aside layer; deleted and unknown products are 404s.

use std::time::Duration;

use ficus_server::app::{self, Running};
use reqwest::{Method, Response};
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";

struct Srv {
    running: Running,
    _data: TestData,
    http: reqwest::Client,
    seller: String,
}

impl Srv {
    async fn start(b: Backend, cache: bool) -> Srv {
        let data = TestData::new(b);
        let mut cfg = data.config("127.0.0.1:0".parse().unwrap());
        cfg.auth_secret = Some(SECRET.into());
        cfg.api.read_cache.enabled = cache;
        let running = app::start(cfg).await.expect("server starts");
        Srv {
            seller: running.token("seller-1", &["seller"], 3600),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            running,
            _data: data,
        }
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.stop())
            .await
            .expect("stop finishes within 10 s")
            .expect("clean stop");
    }

    /// A seller's command; answers `{id, version, position}`.
    async fn send(&self, method: Method, path: &str, body: &str) -> Value {
        let r = self
            .http
            .request(method, format!("{}{path}", self.running.url()))
            .bearer_auth(&self.seller)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert!(status == 200 || status == 201, "{path}: {v}");
        v
    }

    /// A seller's command; answers the position it was appended at.
    async fn command(&self, method: Method, path: &str, body: &str) -> u64 {
        self.send(method, path, body).await["position"]
            .as_u64()
            .unwrap()
    }

    async fn product(&self, name: &str, category: &str, price: &str) -> (String, u64) {
        let body = format!(
            r#"{{"name":"{name}","description":"About {name}","category":"{category}","price":{price},"currency":"EUR","stock":5}}"#
        );
        let v = self.send(Method::POST, "/v1/products", &body).await;
        (
            v["id"].as_str().unwrap().to_owned(),
            v["position"].as_u64().unwrap(),
        )
    }

    /// `GET /v1/{client}/products/{id}?min_position=...`: status, ETag and the body.
    async fn view(
        &self,
        client: &str,
        id: &str,
        min_position: u64,
        if_none_match: Option<&str>,
    ) -> (u16, Response) {
        let mut rb = self.http.get(format!(
            "{}/v1/{client}/products/{id}?min_position={min_position}",
            self.running.url()
        ));
        if let Some(t) = if_none_match {
            rb = rb.header("if-none-match", t);
        }
        let r = rb.send().await.unwrap();
        (r.status().as_u16(), r)
    }
}

fn etag(r: &Response) -> String {
    r.headers()["etag"].to_str().unwrap().to_owned()
}

async fn views(b: Backend, cache: bool) {
    let s = Srv::start(b, cache).await;
    let (fig, _) = s.product("fig", "plants", "10.00").await;
    let (aloe, _) = s.product("aloe", "plants", "4.00").await;
    let (_rake, _) = s.product("rake", "tools", "9.00").await;
    s.command(
        Method::PUT,
        &format!("/v1/products/{fig}/price"),
        r#"{"price":12.50}"#,
    )
    .await;
    let pos = s
        .command(
            Method::POST,
            &format!("/v1/products/{fig}/stock"),
            r#"{"warehouse":"north","delta":3}"#,
        )
        .await;

    // Mobile: exactly the compact fields; tagged with the product's version (created, stocked,
    // repriced, restocked: 4).
    let (status, r) = s.view("mobile", &fig, pos, None).await;
    assert_eq!(status, 200);
    assert_eq!(etag(&r), "\"4\"");
    assert_eq!(r.headers()["cache-control"], "private, no-cache");
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"id": fig, "name": "fig", "price": 12.5, "currency": "EUR", "thumbnail": null})
    );

    // Web: the rich page, tagged with the catalog's position.
    let (status, r) = s.view("web", &fig, pos, None).await;
    assert_eq!(status, 200);
    let web_tag = etag(&r);
    assert_eq!(web_tag, format!("\"p{pos}\""));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["description"], "About fig");
    assert_eq!(v["stock_total"], 8);
    assert_eq!(
        v["stock"],
        json!([{"warehouse": "main", "quantity": 5}, {"warehouse": "north", "quantity": 3}])
    );
    let history: Vec<(Value, u64)> = v["price_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["price"].clone(), h["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(history, vec![(json!(12.5), 3), (json!(10.0), 1)]);
    assert_eq!(
        v["related"],
        json!([{"id": aloe, "name": "aloe", "price": 4.0, "currency": "EUR", "in_stock": true}])
    );

    // 304s on both, then a change to a related product: the web page changes, mobile not.
    assert_eq!(s.view("mobile", &fig, pos, Some("\"4\"")).await.0, 304);
    assert_eq!(s.view("web", &fig, pos, Some(&web_tag)).await.0, 304);
    let pos = s
        .command(
            Method::PUT,
            &format!("/v1/products/{aloe}/price"),
            r#"{"price":5}"#,
        )
        .await;
    assert_eq!(s.view("mobile", &fig, pos, Some("W/\"4\"")).await.0, 304);
    let (status, r) = s.view("web", &fig, pos, Some(&web_tag)).await;
    assert_eq!(status, 200);
    assert_ne!(etag(&r), web_tag);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["related"][0]["price"], json!(5.0));

    // Deleted and unknown products are 404s on every view.
    let pos = s
        .command(
            Method::DELETE,
            &format!("/v1/products/{aloe}"),
            r#"{"reason":"gone"}"#,
        )
        .await;
    for client in ["mobile", "web"] {
        assert_eq!(s.view(client, &aloe, pos, None).await.0, 404);
        let (status, r) = s.view(client, "nope", pos, None).await;
        assert_eq!(status, 404);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "product_not_found");
    }
    let (_, r) = s.view("web", &fig, pos, None).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["related"], json!([]), "a deleted product is not related");
    s.stop().await;
}

async fn views_without_cache(b: Backend) {
    views(b, false).await
}

async fn views_with_cache(b: Backend) {
    views(b, true).await
}

async fn history_and_related_are_bounded(b: Backend) {
    let s = Srv::start(b, false).await;
    let (id, _) = s.product("pot", "pottery", "1.00").await;
    for i in 0..7 {
        s.product(&format!("bowl{i}"), "pottery", "2.00").await;
    }
    let mut pos = 0;
    for i in 2..=25 {
        pos = s
            .command(
                Method::PUT,
                &format!("/v1/products/{id}/price"),
                &format!(r#"{{"price":{i}}}"#),
            )
            .await;
    }
    let (status, r) = s.view("web", &id, pos, None).await;
    assert_eq!(status, 200);
    let v: Value = r.json().await.unwrap();
    let history = v["price_history"].as_array().unwrap();
    assert_eq!(history.len(), 20);
    assert_eq!(history[0]["price"], json!(25.0), "newest first");
    assert_eq!(history[19]["price"], json!(6.0));
    assert_eq!(v["related"].as_array().unwrap().len(), 5);
    s.stop().await;
}

on_both_backends!(
    views_without_cache,
    views_with_cache,
    history_and_related_are_bounded
);
