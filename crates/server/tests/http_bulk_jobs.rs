//! End-to-end proof of bulk jobs over real HTTP: reprice, export and notification jobs run to
//! completion on the server's worker pool with the right effects (new prices carrying the job's
//! correlation id, one CSV row per placed order, one notification per buyer); items a business
//! rule refuses go to the dead-letter queue and the job says so; a re-delivered notification
//! item notifies once; cancelling removes the items not yet started and skips the final step;
//! and callers or input the API refuses get JSON 4xx errors.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ficus_domain::jobs::ShopJobHandler;
use ficus_runtime::JobHandler;
use ficus_server::app::{self, Running, ServerConfig};
use ficus_store::{BatchState, NewBatch, NewJob};
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

mod common;
use common::{Backend, TestData};

const SECRET: &str = "test-secret";
const HOUR: i64 = 3600;
const ADMIN: &str = "admin-1";
const SELLER: &str = "seller-1";
const SELLER2: &str = "seller-2";
/// No `Authorization` header.
const ANON: &str = "";
/// Longest wait for a job to finish.
const JOB_WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Harness

#[derive(Debug)]
struct Resp {
    status: u16,
    content_type: String,
    body: Value,
    text: String,
}

impl Resp {
    #[track_caller]
    fn ok(self, status: u16) -> Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a JSON error `{code, message}` with this status and code.
    #[track_caller]
    fn err(self, status: u16, code: &str) -> Self {
        assert_eq!(
            (self.status, self.body["code"].as_str().unwrap_or("")),
            (status, code),
            "body: {}",
            self.text
        );
        assert!(
            self.body["message"].is_string(),
            "no message: {}",
            self.text
        );
        assert!(
            self.content_type.starts_with("application/json"),
            "error is not JSON: {}",
            self.content_type
        );
        self
    }

    #[track_caller]
    fn u64(&self, field: &str) -> u64 {
        self.body[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no integer {field:?} in {}", self.text))
    }

    #[track_caller]
    fn string(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field:?} in {}", self.text))
            .to_owned()
    }
}

/// A server of its own on 127.0.0.1:0 in a temporary data directory, with a client and tokens.
struct Srv {
    running: Running,
    data: TestData,
    http: reqwest::Client,
    admin: String,
    seller: String,
    seller2: String,
}

impl Srv {
    async fn start(b: Backend) -> Srv {
        Self::start_with(b, |_| {}).await
    }

    async fn start_with(b: Backend, configure: impl FnOnce(&mut ServerConfig)) -> Srv {
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
            admin: running.token(ADMIN, &["admin"], HOUR),
            seller: running.token(SELLER, &["seller"], HOUR),
            seller2: running.token(SELLER2, &["seller"], HOUR),
            running,
            data,
            http,
        }
    }

    async fn stop(self) {
        tokio::time::timeout(Duration::from_secs(10), self.running.stop())
            .await
            .expect("stop finishes within 10 s")
            .expect("clean stop");
    }

    fn token(&self, sub: &str, role: &str) -> String {
        self.running.token(sub, &[role], HOUR)
    }

    /// Head of the global log, straight from the store.
    fn head(&self) -> u64 {
        self.running.state.store.head_position()
    }

    /// Waits until both read models have applied everything written so far, so a job planned
    /// now sees it.
    async fn settle(&self) {
        let head = self.head();
        for p in self.running.state.projections() {
            p.wait_for(head, Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("{} reaches {head}: {e:?}", p.name()));
        }
    }

    fn request(&self, method: Method, path: &str, token: &str) -> RequestBuilder {
        let rb = self
            .http
            .request(method, format!("{}{path}", self.running.url()));
        if token.is_empty() {
            rb
        } else {
            rb.bearer_auth(token)
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Resp {
        let resp = rb.send().await.expect("request reaches the server");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            content_type,
            body,
            text,
        }
    }

    async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(self.request(Method::GET, path, token)).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(self.request(Method::POST, path, token).json(&body))
            .await
    }

    /// A POST with no body at all.
    async fn post_empty(&self, path: &str, token: &str) -> Resp {
        self.send(self.request(Method::POST, path, token)).await
    }

    /// Creates a product as the holder of `token` with `price` as the number's text; its id.
    async fn product(&self, token: &str, name: &str, category: &str, price: &str) -> String {
        let body = format!(
            r#"{{"name":{},"category":{},"price":{price},"currency":"EUR","stock":1000}}"#,
            json!(name),
            json!(category),
        );
        let rb = self
            .request(Method::POST, "/v1/products", token)
            .header("content-type", "application/json")
            .body(body);
        self.send(rb).await.ok(201).string("id")
    }

    /// The product's price as its JSON text (e.g. `11.00`), once the catalog is at the head.
    async fn price(&self, id: &str) -> String {
        let r = self
            .get(
                &format!("/v1/products/{id}?min_position={}", self.head()),
                ANON,
            )
            .await
            .ok(200);
        let start = r
            .text
            .find(r#""price":"#)
            .unwrap_or_else(|| panic!("no price in {}", r.text))
            + r#""price":"#.len();
        let rest = &r.text[start..];
        rest[..rest.find([',', '}']).unwrap()].to_owned()
    }

    /// Opens an order of `items` as the holder of `token` and places it unless `place` is
    /// false; the order's id.
    async fn order(&self, token: &str, items: &[(&str, i64)], place: bool) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
            .collect();
        let id = self
            .post("/v1/orders", token, json!({ "items": items }))
            .await
            .ok(201)
            .string("id");
        if place {
            self.post_empty(&format!("/v1/orders/{id}/place"), token)
                .await
                .ok(200);
        }
        id
    }

    async fn submit(&self, token: &str, kind: &str, params: Value) -> Resp {
        self.post("/v1/jobs", token, json!({"kind": kind, "params": params}))
            .await
    }

    /// Polls `GET /v1/jobs/{id}` until the job has left `running` and, unless it was cancelled,
    /// its final step has recorded a result (bounded by [`JOB_WAIT`]).
    async fn wait_job(&self, id: &str, token: &str) -> Value {
        let deadline = Instant::now() + JOB_WAIT;
        loop {
            let r = self.get(&format!("/v1/jobs/{id}"), token).await.ok(200);
            let state = r.string("state");
            if state == "cancelled" || (state != "running" && !r.body["result"].is_null()) {
                return r.body;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not finished within {JOB_WAIT:?}: {}",
                r.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The events of a stream, as admin.
    async fn stream_events(&self, stream: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/v1/streams/{stream}"), &self.admin)
            .await
            .ok(200);
        r.body["events"].as_array().expect("events").clone()
    }
}

fn today() -> i64 {
    ficus_core::time::day_of_ms(ficus_store::now_ms())
}

fn date(day: i64) -> String {
    ficus_core::time::format_date(day)
}

/// Checks the fields every bulk job answer carries.
#[track_caller]
fn assert_job_shape(job: &Value) {
    for field in [
        "id",
        "kind",
        "params",
        "state",
        "total",
        "done",
        "dead",
        "cancelled",
        "progress",
        "created_at",
        "finished_at",
        "result",
    ] {
        assert!(job.get(field).is_some(), "job lacks {field}: {job}");
    }
}

fn count(job: &Value, field: &str) -> u64 {
    job[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {field:?} in {job}"))
}

// ---------------------------------------------------------------------------------------------
// reprice_category

async fn reprice_category_changes_each_of_the_sellers_products_through_the_aggregate(b: Backend) {
    let s = Srv::start(b).await;
    let books = [
        s.product(&s.seller, "Book A", "books", "10.00").await,
        s.product(&s.seller, "Book B", "books", "20.00").await,
        s.product(&s.seller, "Book C", "books", "30.00").await,
    ];
    let rake = s.product(&s.seller, "Rake", "garden", "15.00").await;
    let other = s.product(&s.seller2, "Their book", "books", "40.00").await;
    s.settle().await;

    let r = s
        .submit(
            &s.seller,
            "reprice_category",
            json!({"category": "books", "percent": 10}),
        )
        .await
        .ok(202);
    assert_job_shape(&r.body);
    let job = r.string("id");
    assert_eq!(r.body["kind"], "reprice_category");
    assert_eq!(r.body["params"]["category"], "books");
    assert_eq!(r.body["params"]["percent"], 10);
    assert_eq!(r.body["params"]["submitted_by"], SELLER);
    assert_eq!(r.u64("total"), 3);
    assert_eq!(r.body["state"], "running");
    assert_eq!(r.body["result"], Value::Null);
    assert_eq!(r.body["finished_at"], Value::Null);

    let done = s.wait_job(&job, &s.seller).await;
    assert_job_shape(&done);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(
        (
            count(&done, "done"),
            count(&done, "dead"),
            count(&done, "cancelled")
        ),
        (3, 0, 0),
        "{done}"
    );
    assert_eq!(done["progress"], 1.0);
    assert!(done["finished_at"].is_string(), "{done}");
    assert_eq!(done["result"], json!({"done": 3, "dead": 0}));

    for (id, want) in books.iter().zip(["11.00", "22.00", "33.00"]) {
        assert_eq!(s.price(id).await, want, "price of {id}");
        let events = s.stream_events(&format!("product-{id}")).await;
        let changed: Vec<&Value> = events
            .iter()
            .filter(|e| e["type"] == "ProductPriceChanged")
            .collect();
        assert_eq!(changed.len(), 1, "one price change in {events:?}");
        let meta = &changed[0]["metadata"];
        assert_eq!(meta["correlation_id"], format!("job:{job}"), "{meta}");
        assert!(
            meta["causation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("job-item:")),
            "{meta}"
        );
        assert_eq!(meta["user_id"], SELLER, "{meta}");
    }
    // Another category, another seller: untouched.
    assert_eq!(s.price(&rake).await, "15.00");
    assert_eq!(s.price(&other).await, "40.00");
    for id in [&rake, &other] {
        let events = s.stream_events(&format!("product-{id}")).await;
        assert!(
            events.iter().all(|e| e["type"] != "ProductPriceChanged"),
            "{events:?}"
        );
    }
    // Nothing left behind on the queue.
    let dead = s.get("/v1/queues/shop/dead", &s.admin).await.ok(200);
    assert_eq!(dead.body["jobs"], json!([]));
    s.stop().await;
}

async fn reprice_refused_by_the_rules_sends_every_item_to_the_dead_letter_queue(b: Backend) {
    let s = Srv::start(b).await;
    let books = [
        s.product(&s.seller, "Book A", "books", "10.00").await,
        s.product(&s.seller, "Book B", "books", "20.00").await,
        s.product(&s.seller, "Book C", "books", "30.00").await,
    ];
    s.settle().await;

    let r = s
        .submit(
            &s.seller,
            "reprice_category",
            json!({"category": "books", "percent": -60}),
        )
        .await
        .ok(202);
    let job = r.string("id");
    assert_eq!(r.u64("total"), 3);
    let started = Instant::now();
    let done = s.wait_job(&job, &s.seller).await;
    assert_eq!(done["state"], "completed_with_failures", "{done}");
    assert_eq!(
        (
            count(&done, "done"),
            count(&done, "dead"),
            count(&done, "total")
        ),
        (0, 3, 3),
        "{done}"
    );
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["result"], json!({"done": 0, "dead": 3}));
    // A refusal is permanent: no retries with backoff before the items die.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    let dead = s.get("/v1/queues/shop/dead", &s.admin).await.ok(200);
    let jobs = dead.body["jobs"].as_array().expect("jobs").clone();
    assert_eq!(jobs.len(), 3, "{}", dead.text);
    let mut products = BTreeSet::new();
    for j in &jobs {
        assert_eq!(j["kind"], "reprice_category.item", "{j}");
        assert_eq!(j["attempts"], 1, "died on the first attempt: {j}");
        let error = j["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("50%"), "last_error names the rule: {j}");
        products.insert(j["payload"]["product_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(products, books.iter().cloned().collect::<BTreeSet<_>>());

    for (id, was) in books.iter().zip(["10.00", "20.00", "30.00"]) {
        assert_eq!(s.price(id).await, was, "price of {id}");
        let events = s.stream_events(&format!("product-{id}")).await;
        assert!(
            events.iter().all(|e| e["type"] != "ProductPriceChanged"),
            "{events:?}"
        );
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// export_orders

async fn export_orders_writes_one_csv_row_per_placed_order(b: Backend) {
    let s = Srv::start(b).await;
    let (c1, c2, c3) = (
        s.token("cust-1", "customer"),
        s.token("cust-2", "customer"),
        s.token("cust-3", "customer"),
    );
    let teapot = s.product(&s.seller, "Teapot", "kitchen", "12.50").await;
    let kettle = s.product(&s.seller2, "Kettle", "kitchen", "30.00").await;
    let first_day = today();
    let mut placed = BTreeMap::new();
    placed.insert(
        s.order(&c1, &[(&teapot, 2)], true).await,
        ("cust-1", "25.00"),
    );
    placed.insert(
        s.order(&c2, &[(&kettle, 1), (&teapot, 1)], true).await,
        ("cust-2", "42.50"),
    );
    placed.insert(
        s.order(&c1, &[(&kettle, 3)], true).await,
        ("cust-1", "90.00"),
    );
    let draft = s.order(&c3, &[(&teapot, 1)], false).await;
    let last_day = today();
    s.settle().await;

    let (from, to) = (date(first_day), date(last_day));
    let r = s
        .submit(&s.admin, "export_orders", json!({"from": from, "to": to}))
        .await
        .ok(202);
    let job = r.string("id");
    assert_eq!(r.u64("total"), (last_day - first_day + 1) as u64);
    let done = s.wait_job(&job, &s.admin).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(count(&done, "dead"), 0);

    let result = &done["result"];
    assert_eq!(result["rows"], 3, "{result}");
    // The CSV is in the blob store; the result names it by reference.
    let href = result["blob"]["href"].as_str().expect("result.blob.href");
    assert_eq!(
        href,
        format!("/v1/blobs/{}", result["blob"]["$blob"].as_str().unwrap())
    );
    let csv = s.get(href, &s.admin).await.ok(200).text;
    assert_eq!(result["blob"]["size"], csv.len() as u64, "{result}");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("order_id,customer_id,total,currency,placed_at")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let mut seen = BTreeMap::new();
    for row in rows {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f.len(), 5, "{row}");
        assert_eq!(f[3], "EUR", "{row}");
        assert!(
            f[4].len() >= 20 && f[4].ends_with('Z') && f[4].starts_with(&from[..4]),
            "placed_at is RFC 3339 UTC: {row}"
        );
        seen.insert(f[0].to_owned(), (f[1], f[2]));
    }
    assert_eq!(seen, placed, "{csv}");
    assert!(
        !csv.contains(&draft),
        "a draft order is not exported: {csv}"
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// notify_buyers

async fn notify_buyers_sends_one_notification_per_buyer(b: Backend) {
    let s = Srv::start(b).await;
    let customers: Vec<(String, String)> = (1..=4)
        .map(|i| {
            let id = format!("cust-{i}");
            let token = s.token(&id, "customer");
            (id, token)
        })
        .collect();
    let lamp = s.product(&s.seller, "Lamp", "home", "40.00").await;
    let rug = s.product(&s.seller, "Rug", "home", "80.00").await;
    s.order(&customers[0].1, &[(&lamp, 1)], true).await;
    s.order(&customers[0].1, &[(&lamp, 2)], true).await;
    s.order(&customers[1].1, &[(&lamp, 1), (&rug, 1)], true)
        .await;
    s.order(&customers[2].1, &[(&lamp, 1)], true).await;
    s.order(&customers[3].1, &[(&rug, 1)], true).await;
    s.settle().await;

    let message = "The lamp is back in stock";
    let r = s
        .submit(
            &s.seller,
            "notify_buyers",
            json!({"product_id": lamp, "message": message}),
        )
        .await
        .ok(202);
    let job = r.string("id");
    assert_eq!(r.u64("total"), 3, "one item per buyer: {}", r.text);
    let done = s.wait_job(&job, &s.seller).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(done["result"], json!({"done": 3, "dead": 0}));

    for (customer, _) in &customers[..3] {
        let events = s
            .stream_events(&format!("notification-{job}-{customer}"))
            .await;
        assert_eq!(events.len(), 1, "{customer}: {events:?}");
        let e = &events[0];
        assert_eq!(e["type"], "CustomerNotified");
        assert_eq!(
            e["data"],
            json!({"customer_id": customer, "product_id": lamp, "message": message})
        );
        assert_eq!(e["metadata"]["correlation_id"], format!("job:{job}"));
    }
    s.get(
        &format!("/v1/streams/notification-{job}-{}", customers[3].0),
        &s.admin,
    )
    .await
    .err(404, "stream_not_found");

    // Exactly one notification stream per buyer in the whole log.
    let all = s.get("/v1/all?limit=1000", &s.admin).await.ok(200);
    let streams: BTreeSet<String> = all.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "CustomerNotified")
        .map(|e| e["stream"].as_str().unwrap().to_owned())
        .collect();
    let want: BTreeSet<String> = customers[..3]
        .iter()
        .map(|(c, _)| format!("notification-{job}-{c}"))
        .collect();
    assert_eq!(streams, want);
    let notified = all.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "CustomerNotified")
        .count();
    assert_eq!(notified, 3);
    s.stop().await;
}

async fn a_redelivered_notification_item_notifies_once(b: Backend) {
    let s = Srv::start(b).await;
    let st = &s.running.state;
    let handler = ShopJobHandler {
        shop: st.shop.clone(),
        store: st.store.clone(),
        jobs: st.jobs.clone(),
        read: st.read.clone(),
        claims: st.claims.clone(),
    };
    // A queue of its own, so the server's pool leaves the item to this test.
    let queue = "redelivery-test";
    let batch = st
        .jobs
        .create_batch(
            NewBatch {
                id: "redelivery-1".into(),
                queue: queue.into(),
                kind: "notify_buyers".into(),
                params: json!({}),
                fan_in: None,
            },
            vec![NewJob::new(
                queue,
                "notify_buyers.item",
                json!({"customer_id": "cust-9", "product_id": "prod-1", "message": "hello"}),
            )],
            ficus_store::now_ms(),
        )
        .await
        .expect("batch");
    assert_eq!(batch.total, 1);
    let leased = st
        .jobs
        .lease(queue, 10, ficus_store::now_ms(), 60_000)
        .await
        .expect("lease");
    assert_eq!(leased.len(), 1);
    let job = &leased[0];
    assert_eq!(job.batch_id.as_deref(), Some("redelivery-1"));

    handler.handle(job).await.expect("first delivery");
    let head = s.head();
    // The worker "crashed" before its ack: the same item runs again.
    handler.handle(job).await.expect("second delivery is Ok");
    assert_eq!(s.head(), head, "the second delivery appended nothing");

    let events = s.stream_events("notification-redelivery-1-cust-9").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "CustomerNotified");
    assert_eq!(events[0]["metadata"]["correlation_id"], "job:redelivery-1");

    // The ack finally lands: the batch completes.
    let acked = st.jobs.complete(&[job.lease.unwrap()]).await.expect("ack");
    assert_eq!(acked, [true]);
    let b = st
        .jobs
        .get_batch("redelivery-1")
        .await
        .expect("get")
        .expect("batch");
    assert_eq!((b.state, b.done), (BatchState::Completed, 1));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation

async fn cancel_removes_unstarted_items_and_skips_the_final_step(b: Backend) {
    // A small local buffer, so most items are still unleased (cancellable) when the cancel
    // arrives, whatever the machine's speed.
    let s = Srv::start_with(b, |c| {
        c.shop_pool.prefetch = 16;
        c.shop_pool.concurrency = 4;
    })
    .await;
    let to = today();
    let from = to - 299;
    let r = s
        .submit(
            &s.admin,
            "export_orders",
            json!({"from": date(from), "to": date(to)}),
        )
        .await
        .ok(202);
    let job = r.string("id");
    assert_eq!(r.u64("total"), 300);

    let r = s
        .post_empty(&format!("/v1/jobs/{job}/cancel"), &s.admin)
        .await
        .ok(200);
    assert_job_shape(&r.body);
    assert_eq!(r.body["state"], "cancelled", "{}", r.text);
    let cancelled = r.u64("cancelled");
    assert!(cancelled > 0, "{}", r.text);
    assert!(
        r.u64("done") + r.u64("dead") + cancelled <= 300,
        "{}",
        r.text
    );
    assert!(r.body["finished_at"].is_string(), "{}", r.text);

    // Items already leased finish and count; the job stays cancelled and no fan-in runs.
    let deadline = Instant::now() + JOB_WAIT;
    let last = loop {
        let r = s.get(&format!("/v1/jobs/{job}"), &s.admin).await.ok(200);
        assert_eq!(r.body["state"], "cancelled", "{}", r.text);
        assert_eq!(r.u64("cancelled"), cancelled, "{}", r.text);
        if r.u64("done") + r.u64("dead") + r.u64("cancelled") == 300 {
            break r;
        }
        assert!(Instant::now() < deadline, "items never settled: {}", r.text);
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(last.body["progress"], 1.0);
    // Give a (wrongly) enqueued fan-in time to run, then check it did not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = s.get(&format!("/v1/jobs/{job}"), &s.admin).await.ok(200);
    assert_eq!(r.body["state"], "cancelled");
    assert_eq!(r.body["result"], Value::Null, "{}", r.text);
    let joined = s.data.dir.path().join("exports").join(format!("{job}.csv"));
    assert!(!joined.exists(), "no joined export at {}", joined.display());

    // Cancelling again answers the job unchanged.
    let again = s
        .post_empty(&format!("/v1/jobs/{job}/cancel"), &s.admin)
        .await
        .ok(200);
    assert_eq!(again.body, r.body);
    // Nothing of it is left on the queue.
    let q = s.get("/v1/queues", &s.admin).await.ok(200);
    for queue in q.body["queues"].as_array().unwrap() {
        if queue["name"] == "shop" {
            assert_eq!(
                (&queue["ready"], &queue["in_flight"], &queue["dead"]),
                (&json!(0), &json!(0), &json!(0)),
                "{queue}"
            );
        }
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Auth and validation

async fn callers_and_input_the_api_refuses(b: Backend) {
    let s = Srv::start(b).await;
    let customer = s.token("cust-1", "customer");
    let lamp = s.product(&s.seller, "Lamp", "home", "40.00").await;
    s.settle().await;
    let head = s.head();

    // Who may start what.
    s.submit(
        &customer,
        "reprice_category",
        json!({"category": "home", "percent": 10}),
    )
    .await
    .err(403, "forbidden");
    s.submit(
        &s.seller,
        "export_orders",
        json!({"from": "2024-01-01", "to": "2024-01-02"}),
    )
    .await
    .err(403, "forbidden");
    s.submit(
        &s.seller2,
        "notify_buyers",
        json!({"product_id": lamp, "message": "hi"}),
    )
    .await
    .err(403, "forbidden");
    for token in [ANON, "not-a-jwt"] {
        s.submit(
            token,
            "reprice_category",
            json!({"category": "home", "percent": 10}),
        )
        .await
        .err(401, "unauthorized");
    }

    // Bad kinds and params.
    s.submit(&s.seller, "delete_everything", json!({}))
        .await
        .err(400, "invalid_job");
    s.post("/v1/jobs", &s.seller, json!({"kind": "reprice_category"}))
        .await
        .err(400, "invalid_job");
    for params in [
        json!({"percent": 10}),
        json!({"category": "home"}),
        json!({"category": "", "percent": 10}),
        json!({"category": "home", "percent": 0}),
        json!({"category": "home", "percent": 1.5}),
        json!({"category": "home", "percent": -101}),
    ] {
        s.submit(&s.seller, "reprice_category", params.clone())
            .await
            .err(400, "invalid_job");
    }
    for params in [
        json!({"from": "2024-01-02", "to": "2024-01-01"}),
        json!({"from": "2024-01-01", "to": "2025-01-01"}),
        json!({"from": "yesterday", "to": "2024-01-01"}),
        json!({"from": "2024-01-01"}),
    ] {
        s.submit(&s.admin, "export_orders", params.clone())
            .await
            .err(400, "invalid_job");
    }
    s.submit(&s.seller, "notify_buyers", json!({"product_id": lamp}))
        .await
        .err(400, "invalid_job");
    s.submit(
        &s.seller,
        "notify_buyers",
        json!({"product_id": lamp, "message": "x".repeat(501)}),
    )
    .await
    .err(400, "invalid_job");
    s.submit(
        &s.seller,
        "notify_buyers",
        json!({"product_id": "no-such-product", "message": "hi"}),
    )
    .await
    .err(404, "product_not_found");
    s.post(
        "/v1/jobs",
        &s.seller,
        json!({"kind": "reprice_category", "params": {}, "extra": 1}),
    )
    .await
    .err(400, "invalid_json");
    s.post(
        "/v1/jobs",
        &s.seller,
        json!({"kind": "reprice_category", "params": [1]}),
    )
    .await
    .err(400, "invalid_json");
    let r = s
        .send(
            s.request(Method::POST, "/v1/jobs", &s.seller)
                .header("content-type", "text/plain")
                .body(r#"{"kind":"reprice_category","params":{}}"#),
        )
        .await;
    r.err(415, "unsupported_media_type");
    assert_eq!(s.head(), head, "a refused job wrote nothing");
    let q = s.get("/v1/queues", &s.admin).await.ok(200);
    assert_eq!(
        q.body["queues"],
        json!([]),
        "a refused job enqueued nothing"
    );

    // Who may see and cancel a job: its submitter and admins; others learn nothing.
    let job = s
        .submit(
            &s.seller,
            "reprice_category",
            json!({"category": "home", "percent": 5}),
        )
        .await
        .ok(202)
        .string("id");
    let path = format!("/v1/jobs/{job}");
    s.get(&path, &s.seller).await.ok(200);
    let seen = s.get(&path, &s.admin).await.ok(200);
    assert_eq!(seen.string("id"), job);
    for token in [&s.seller2, &customer] {
        s.get(&path, token).await.err(404, "job_not_found");
        s.post_empty(&format!("{path}/cancel"), token)
            .await
            .err(404, "job_not_found");
    }
    s.get(&path, ANON).await.err(401, "unauthorized");
    s.post_empty(&format!("{path}/cancel"), ANON)
        .await
        .err(401, "unauthorized");
    s.get("/v1/jobs/no-such-job", &s.admin)
        .await
        .err(404, "job_not_found");
    s.post_empty("/v1/jobs/no-such-job/cancel", &s.admin)
        .await
        .err(404, "job_not_found");
    let done = s.wait_job(&job, &s.seller).await;
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(s.price(&lamp).await, "42.00");

    // `submitted_by` is the caller's, whatever the params say: no one borrows another's job.
    let r = s
        .submit(
            &s.seller2,
            "reprice_category",
            json!({"category": "none-of-theirs", "percent": 5, "submitted_by": SELLER}),
        )
        .await
        .ok(202);
    assert_eq!(r.body["params"]["submitted_by"], SELLER2, "{}", r.text);
    // A job without items is finished at once, and its final step still runs.
    assert_eq!(
        (r.u64("total"), r.body["state"].as_str()),
        (0, Some("completed")),
        "{}",
        r.text
    );
    assert_eq!(r.body["progress"], 1.0);
    let empty = r.string("id");
    s.get(&format!("/v1/jobs/{empty}"), &s.seller)
        .await
        .err(404, "job_not_found");
    let done = s.wait_job(&empty, &s.seller2).await;
    assert_eq!(done["result"], json!({"done": 0, "dead": 0}));
    s.stop().await;
}

on_both_backends!(
    reprice_category_changes_each_of_the_sellers_products_through_the_aggregate,
    reprice_refused_by_the_rules_sends_every_item_to_the_dead_letter_queue,
    export_orders_writes_one_csv_row_per_placed_order,
    notify_buyers_sends_one_notification_per_buyer,
    a_redelivered_notification_item_notifies_once,
    cancel_removes_unstarted_items_and_skips_the_final_step,
    callers_and_input_the_api_refuses,
);
