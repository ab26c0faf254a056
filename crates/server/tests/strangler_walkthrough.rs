//! The strangler-fig walkthrough (docs/strangler-walkthrough.md) driven for real on loopback,
//! with the example route file and catalog: a Ficus server, the legacy shop and the gateway.
//! The products route goes 0 % → shadow → 10 % (sticky) → 100 % → legacy off → rollback, and
//! at each step the test checks what a user of the old URLs would see.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_server::app::{self, ServerConfig};
use ficus_server::client::{Remote, RouteChange};
use ficus_server::legacy;
use serde_json::{json, Value};

const ROUTES: &str = include_str!("../../../examples/strangler/routes.toml");
const CATALOG: &str = include_str!("../../../examples/strangler/catalog.txt");
const SECRET: &str = "strangler-walkthrough";
/// Longest any awaited condition may take on a slow, shared machine.
const DEADLINE: Duration = Duration::from_secs(30);

/// GETs `url` until it is not a 503: a read with `min_position` answers 503 while the read
/// model is behind, for at most the server's read-your-writes timeout.
async fn get_fresh(
    http: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut req = http.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.unwrap();
        if r.status() != 503 || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One product of the catalog, with the id both systems know it by.
struct Seeded {
    id: String,
    name: String,
    body: Value,
}

/// A product as the catalog file describes it: `name|category|price|stock|description`.
fn catalog() -> Vec<(String, Value)> {
    CATALOG
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 5, "catalog line {line:?}");
            let body = json!({
                "name": f[0],
                "category": f[1],
                "price": serde_json::from_str::<Value>(f[2]).unwrap(),
                "currency": "EUR",
                "stock": f[3].parse::<i64>().unwrap(),
                "description": f[4],
            });
            (f[0].to_owned(), body)
        })
        .collect()
}

struct Walk {
    http: reqwest::Client,
    gw: String,
    admin: String,
    seller: String,
    ficus: String,
    products: Vec<Seeded>,
}

/// What a user sees: which side answered, the status, the body.
struct Seen {
    target: String,
    status: u16,
    body: Value,
}

impl Walk {
    async fn get(&self, path: &str, user: &str) -> Seen {
        let r = self
            .http
            .get(format!("{}{path}", self.gw))
            .header("x-user-id", user)
            .send()
            .await
            .unwrap();
        let target = r
            .headers()
            .get("ficus-target")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let status = r.status().as_u16();
        let body = r.json().await.unwrap_or(Value::Null);
        Seen {
            target,
            status,
            body,
        }
    }

    fn product(&self, name: &str) -> &Seeded {
        self.products.iter().find(|p| p.name == name).unwrap()
    }

    /// Every product by its old URL, then the old list URL: six reads.
    async fn read_catalog(&self, user: &str) -> Vec<Seen> {
        let mut seen = Vec::new();
        for p in &self.products {
            seen.push(self.get(&format!("/api/products/{}", p.id), user).await);
        }
        seen.push(self.get("/api/products", user).await);
        seen
    }

    async fn route(&self, name: &str) -> Value {
        self.http
            .get(format!("{}/v1/admin/routes/{name}", self.gw))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The products route's shadow counters once `at_least` comparisons have ended
    /// (compared or failed): they run off the request path, after the answer.
    async fn shadow_after(&self, at_least: u64) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let shadow = self.route("products").await["stats"]["shadow"].clone();
            let ended = shadow["compared"].as_u64().unwrap() + shadow["errors"].as_u64().unwrap();
            assert!(
                Instant::now() < deadline,
                "{ended} of {at_least} comparisons ended: {shadow}"
            );
            if ended >= at_least {
                return shadow;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `ficus routes set NAME --weight-new W`: the CLI's own code, against the gateway.
    async fn set_weight(&self, route: &str, weight: u8) {
        let remote = Remote {
            url: self.gw.clone(),
            token: self.admin.clone(),
        };
        let change = RouteChange {
            weight_new: Some(weight),
            ..RouteChange::default()
        };
        remote.route_set(route, change).await.unwrap();
        assert_eq!(self.route(route).await["weight_new"], weight);
    }

    /// A price change on Ficus's own API, read back through its read model.
    async fn ficus_price(&self, id: &str, price: f64) {
        let r: Value = self
            .http
            .put(format!("{}/v1/products/{id}/price", self.ficus))
            .bearer_auth(&self.seller)
            .json(&json!({ "price": price }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pos = r["position"].as_u64().expect("a position");
        let url = format!("{}/v1/products/{id}?min_position={pos}", self.ficus);
        let p: Value = get_fresh(&self.http, &url, &[]).await.json().await.unwrap();
        assert_eq!(p["price"], json!(price));
    }
}

/// Seeds the catalog the way `examples/strangler/seed.sh` does: into Ficus first, then into
/// the legacy shop under Ficus's id; returns once Ficus's read model holds it all.
async fn seed(http: &reqwest::Client, ficus: &str, legacy: &str, seller: &str) -> Vec<Seeded> {
    let mut out = Vec::new();
    let mut last = 0;
    for (name, body) in catalog() {
        let r = http
            .post(format!("{ficus}/v1/products"))
            .bearer_auth(seller)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        last = created["position"].as_u64().unwrap();
        let r = http
            .put(format!("{legacy}/api/products/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "the legacy shop creates it under Ficus's id"
        );
        out.push(Seeded { id, name, body });
    }
    let r = get_fresh(
        http,
        &format!("{ficus}/v1/products?min_position={last}"),
        &[],
    )
    .await;
    assert_eq!(r.status(), 200);
    out
}

/// Turns shadow mode on by editing the route file, as the walkthrough does, and waits for
/// the gateway to reload it.
async fn turn_shadow_on(walk: &Walk, routes: &std::path::Path) {
    let text = std::fs::read_to_string(routes).unwrap();
    let edited = text.replace("shadow = false", "shadow = true");
    assert_ne!(
        text, edited,
        "the example route file has a `shadow = false` line"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        // Written again on every pass: a file system with coarse timestamps may not show the
        // first write as a change.
        std::fs::write(routes, &edited).unwrap();
        let waited = Instant::now() + Duration::from_secs(1);
        while Instant::now() < waited {
            if walk.route("products").await["shadow"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(Instant::now() < deadline, "the gateway never reloaded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_moves_products_from_legacy_to_ficus_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Step 0: Ficus, the legacy shop, the gateway with the example route file; step 1: the
    // same catalog in both systems.
    let mut cfg = ServerConfig::new(dir.path().join("ficus"), "127.0.0.1:0".parse().unwrap());
    cfg.auth_secret = Some(SECRET.into());
    let ficus = app::start(cfg).await.unwrap();
    let seller = ficus.token("sam", &["seller"], 3600);
    let legacy_db = dir.path().join("legacy.db");
    let shop = legacy::start(&legacy_db, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let legacy_addr = shop.addr();
    let products = seed(&http, &ficus.url(), &shop.url(), &seller).await;

    let routes = dir.path().join("routes.toml");
    let text = ROUTES
        .replace("http://127.0.0.1:8081", &shop.url())
        .replace("http://127.0.0.1:7070", &ficus.url());
    assert_eq!(text.matches(&ficus.url()).count(), 2, "query and command");
    assert_eq!(text.matches(&shop.url()).count(), 1, "legacy");
    std::fs::write(&routes, text).unwrap();
    let auth = Arc::new(ficus_gateway::Auth::new(SECRET));
    let gw = ficus_server::gateway::start(routes.clone(), "127.0.0.1:0".parse().unwrap(), auth)
        .await
        .unwrap();
    let walk = Walk {
        http: http.clone(),
        gw: gw.url(),
        admin: ficus.token("ada", &["admin"], 3600),
        seller: seller.clone(),
        ficus: ficus.url(),
        products,
    };
    let kettle = walk.product("Kettle").id.clone();
    let notebook = walk.product("Notebook").id.clone();

    // Step 2, 100 % legacy: the legacy shop answers everything, through the old URLs.
    for seen in walk.read_catalog("u-1").await {
        assert_eq!((seen.target.as_str(), seen.status), ("legacy", 200));
        assert!(seen.body.get("version").is_none(), "a legacy answer");
    }
    for p in &walk.products {
        let seen = walk.get(&format!("/api/products/{}", p.id), "u-1").await;
        assert_eq!(seen.body["name"], p.body["name"]);
        assert_eq!(seen.body["price"], p.body["price"]);
    }
    let seen = walk.get("/health", "u-1").await;
    assert_eq!((seen.target.as_str(), seen.status), ("legacy", 200));

    // The monolith keeps changing meanwhile: a price change through the old URL lands in the
    // legacy shop only (writes stay there until the last step).
    let r = http
        .put(format!("{}/api/products/{kettle}/price", walk.gw))
        .json(&json!({"price": 19.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["ficus-target"], "legacy");
    assert_eq!(r.json::<Value>().await.unwrap()["price"], 19.0);

    // Step 3, shadow: legacy still answers; Ficus gets a copy of each read and the answers
    // are compared. The Kettle's price is the one real difference, on its page and in the list.
    turn_shadow_on(&walk, &routes).await;
    for seen in walk.read_catalog("u-1").await {
        assert_eq!((seen.target.as_str(), seen.status), ("legacy", 200));
    }
    let shadow = walk.shadow_after(6).await;
    assert_eq!(
        (
            &shadow["compared"],
            &shadow["matched"],
            &shadow["mismatched"]
        ),
        (&json!(6), &json!(4), &json!(2)),
        "{shadow}"
    );
    let samples = shadow["samples"].as_array().unwrap();
    let diffs: Vec<(&Value, &Value)> = samples
        .iter()
        .map(|s| (&s["path"], &s["differences"]))
        .collect();
    assert!(
        diffs.contains(&(
            &json!(format!("/api/products/{kettle}")),
            &json!(["$.price"])
        )),
        "{shadow}"
    );
    assert!(
        diffs.contains(&(&json!("/api/products"), &json!(["$.products[3].price"]))),
        "{shadow}"
    );

    // The fix: replay the missed change on Ficus. The same reads now all match.
    walk.ficus_price(&kettle, 19.0).await;
    walk.read_catalog("u-1").await;
    let shadow = walk.shadow_after(12).await;
    assert_eq!(
        (
            &shadow["compared"],
            &shadow["matched"],
            &shadow["mismatched"]
        ),
        (&json!(12), &json!(10), &json!(2)),
        "no new mismatch after the fix: {shadow}"
    );
    // Where the two still differ, honestly: a missing product is a 404 on both sides, but
    // the error codes differ.
    let seen = walk.get("/api/products/no-such-product", "u-1").await;
    assert_eq!((seen.target.as_str(), seen.status), ("legacy", 404));
    let shadow = walk.shadow_after(13).await;
    assert_eq!(shadow["mismatched"], 3, "{shadow}");
    let last = shadow["samples"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["path"], "/api/products/no-such-product");
    assert_eq!(last["differences"], json!(["$.code"]), "{last}");

    // Step 4, 10 %: about one user in ten reads from Ficus, and always the same users.
    walk.set_weight("products", 10).await;
    let kettle_path = format!("/api/products/{kettle}");
    let (mut on_new, mut served_by_legacy) = (0, 0);
    for u in 0..100 {
        let user = format!("user-{u}");
        let first = walk.get(&kettle_path, &user).await;
        for _ in 0..2 {
            let again = walk.get(&kettle_path, &user).await;
            assert_eq!(again.target, first.target, "{user} stays on one side");
        }
        assert_eq!(first.status, 200);
        assert_eq!(first.body["price"], 19.0, "both sides agree now");
        match first.target.as_str() {
            "new" => {
                on_new += 1;
                assert_eq!(first.body["seller_id"], "sam", "a Ficus answer");
            }
            "legacy" => served_by_legacy += 3,
            other => panic!("unexpected target {other:?}"),
        }
    }
    assert!((3..=25).contains(&on_new), "{on_new} of 100 users on Ficus");
    // The legacy side's answers are still shadowed, and they all match.
    let shadow = walk.shadow_after(13 + served_by_legacy).await;
    assert_eq!(shadow["mismatched"], 3, "{shadow}");

    // Step 5, 100 %: every read is Ficus's, through the rewritten old URLs.
    walk.set_weight("products", 100).await;
    let legacy_reads = walk.route("products").await["stats"]["legacy"]["requests"].clone();
    for (seen, p) in walk.read_catalog("u-2").await.iter().zip(&walk.products) {
        assert_eq!((seen.target.as_str(), seen.status), ("new", 200));
        assert_eq!(seen.body["id"].as_str(), Some(p.id.as_str()));
        assert_eq!(seen.body["name"], p.body["name"]);
        assert!(seen.body["version"].as_u64().is_some(), "a Ficus answer");
    }
    let list = walk.get("/api/products?category=kitchen", "u-2").await;
    assert_eq!(
        (list.target.as_str(), list.body["total"].clone()),
        ("new", json!(3))
    );
    assert_eq!(
        walk.route("products").await["stats"]["legacy"]["requests"],
        legacy_reads,
        "the legacy shop got no reads"
    );
    // Then the writes, in one step: the old price URL now changes Ficus.
    walk.set_weight("products-writes", 100).await;
    let r = http
        .put(format!("{}/api/products/{notebook}/price", walk.gw))
        .bearer_auth(&seller)
        .json(&json!({"price": 4.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["ficus-target"], "new");
    assert_eq!(r.status(), 200);
    let pos = r.json::<Value>().await.unwrap()["position"]
        .as_u64()
        .unwrap();
    let url = format!("{}/api/products/{notebook}?min_position={pos}", walk.gw);
    let r = get_fresh(&http, &url, &[("x-user-id", "u-2")]).await;
    assert_eq!(r.headers()["ficus-target"], "new");
    assert_eq!(r.json::<Value>().await.unwrap()["price"], 4.5);

    // Step 6, legacy off: the products route does not need it any more.
    shop.stop().await.unwrap();
    for seen in walk.read_catalog("u-3").await {
        assert_eq!((seen.target.as_str(), seen.status), ("new", 200));
    }
    let seen = walk.get("/health", "u-3").await;
    assert_eq!(
        seen.status, 502,
        "what is still routed to the legacy shop fails"
    );

    // Rollback is one command, as long as the legacy shop can be started again on its data.
    let shop = legacy::start(&legacy_db, legacy_addr).await.unwrap();
    walk.set_weight("products", 0).await;
    walk.set_weight("products-writes", 0).await;
    for seen in walk.read_catalog("u-3").await {
        assert_eq!((seen.target.as_str(), seen.status), ("legacy", 200));
        assert!(seen.body.get("version").is_none(), "a legacy answer");
    }
    // What was written to Ficus alone after the writes moved is not in the legacy shop.
    let seen = walk.get(&format!("/api/products/{notebook}"), "u-3").await;
    assert_eq!(seen.body["price"], 4.2, "the legacy shop missed the change");

    gw.stop().await.unwrap();
    shop.stop().await.unwrap();
    ficus.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_legacy_shop_is_bounded_crud_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shop = legacy::start(&dir.path().join("shop.db"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (http, url) = (reqwest::Client::new(), shop.url());
    let kettle = json!({
        "name": "Kettle", "category": "kitchen", "price": 24, "currency": "EUR", "stock": 3
    });

    let r = http
        .post(format!("{url}/api/products"))
        .json(&kettle)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/products/{}", created["id"].as_str().unwrap())
    );
    assert_eq!(
        (
            &created["price"],
            &created["stock_total"],
            &created["in_stock"]
        ),
        (&json!(24.0), &json!(3), &json!(true))
    );
    let got: Value = http
        .get(format!("{url}{location}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, created);

    // Create-or-replace under a chosen id: 201, then 200.
    for status in [201, 200] {
        let r = http
            .put(format!("{url}/api/products/p-1"))
            .json(&json!({"name": "Lamp", "category": "office", "price": 45.9, "currency": "EUR"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status);
    }
    let r = http
        .put(format!("{url}/api/products/p-1/price"))
        .json(&json!({"price": 39.99}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["price"], 39.99);
    let list: Value = http
        .get(format!("{url}/api/products?limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 2);
    assert_eq!(list["products"][0]["name"], "Kettle", "by name");

    // Bad input: a 4xx with a JSON code, and nothing changes. `with` makes a valid product
    // with some fields changed.
    let with = |changes: Value| {
        let mut p = json!({"name": "n", "category": "k", "price": 1, "currency": "EUR"});
        for (k, v) in changes.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let none = Value::Null;
    let long = json!("x".repeat(201));
    #[rustfmt::skip]
    let cases = [
        ("POST", "/api/products", with(json!({"name": " "})), 400, "invalid_field"),
        ("POST", "/api/products", with(json!({"name": long})), 400, "invalid_field"),
        ("POST", "/api/products", with(json!({"price": 1.001})), 400, "invalid_price"),
        ("POST", "/api/products", with(json!({"price": 10000.01})), 400, "invalid_price"),
        ("POST", "/api/products", with(json!({"price": "1"})), 400, "invalid_body"),
        ("POST", "/api/products", with(json!({"currency": "eur"})), 400, "invalid_currency"),
        ("POST", "/api/products", with(json!({"stock": -1})), 400, "invalid_stock"),
        ("POST", "/api/products", json!({"name": "n"}), 400, "invalid_body"),
        ("PUT", "/api/products/bad%20id", with(json!({})), 400, "invalid_id"),
        ("PUT", "/api/products/nope/price", json!({"price": 1}), 404, "not_found"),
        ("GET", "/api/products/nope", none.clone(), 404, "not_found"),
        ("GET", "/api/products?limit=101", none.clone(), 400, "invalid_query"),
        ("GET", "/api/products?limit=x", none.clone(), 400, "invalid_query"),
        ("DELETE", "/api/products/nope", none.clone(), 404, "not_found"),
        ("PATCH", "/api/products/p-1", none.clone(), 405, "method_not_allowed"),
        ("GET", "/api/nothing-here", none.clone(), 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let mut req = http.request(method.parse().unwrap(), format!("{url}{path}"));
        if !body.is_null() {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["code"], code, "{method} {path}: {err}");
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let r = http
        .post(format!("{url}/api/products"))
        .header("content-type", "application/json")
        .body(vec![b' '; legacy::BODY_MAX_BYTES + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "invalid_body");

    let r = http
        .delete(format!("{url}/api/products/p-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let list: Value = http
        .get(format!("{url}/api/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total"], 1, "only the delete changed anything: {list}");

    // The data outlives a restart on the same file.
    shop.stop().await.unwrap();
    let shop = legacy::start(&dir.path().join("shop.db"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let list: Value = http
        .get(format!("{}/api/products", shop.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["products"][0]["name"], "Kettle");
    shop.stop().await.unwrap();
}
