//! `ficus demo`: starts a server on the embedded backend, seeds the reference domain through
//! the real HTTP API, drives a mix of commands and queries, and prints what to look at next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde_json::{json, Value};

use crate::app::{self, ServerConfig};

/// Options of `ficus demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub config: ServerConfig,
    /// How long to drive traffic.
    pub duration: Duration,
    /// Concurrent simulated clients.
    pub clients: usize,
    /// Stop after the traffic instead of serving until Ctrl-C.
    pub exit_after_traffic: bool,
}

const PRODUCTS: &[(&str, &str, &str, &str)] = &[
    (
        "Espresso grinder",
        "Conical burr grinder for espresso and filter",
        "kitchen",
        "189.00",
    ),
    (
        "Cast iron skillet",
        "Pre-seasoned 28 cm skillet, oven safe",
        "kitchen",
        "39.90",
    ),
    (
        "Chef knife",
        "20 cm stainless chef knife with full tang",
        "kitchen",
        "74.50",
    ),
    (
        "Pour-over kettle",
        "Gooseneck kettle with thermometer",
        "kitchen",
        "45.00",
    ),
    (
        "Garden hose",
        "25 m kink-free hose with brass fittings",
        "garden",
        "29.99",
    ),
    (
        "Pruning shears",
        "Bypass pruner for branches up to 2 cm",
        "garden",
        "19.95",
    ),
    (
        "Raised bed kit",
        "Cedar raised bed, 120 x 60 cm",
        "garden",
        "129.00",
    ),
    (
        "Watering can",
        "Galvanized 9 litre watering can",
        "garden",
        "24.00",
    ),
    (
        "Wooden train set",
        "52-piece wooden train set with bridge",
        "toys",
        "59.00",
    ),
    (
        "Puzzle 1000",
        "1000-piece landscape jigsaw puzzle",
        "toys",
        "14.99",
    ),
    (
        "Kite",
        "Stunt kite with dual lines, for beginners",
        "toys",
        "34.90",
    ),
    (
        "Building blocks",
        "Bucket of 300 colourful building blocks",
        "toys",
        "27.50",
    ),
    (
        "Field guide to birds",
        "Illustrated field guide, 600 species",
        "books",
        "22.00",
    ),
    (
        "Rust in practice",
        "Systems programming with Rust, hands-on",
        "books",
        "49.00",
    ),
    (
        "Event sourcing explained",
        "Events, projections and sagas from the ground up",
        "books",
        "39.00",
    ),
    (
        "Strangler fig migrations",
        "Moving a monolith without a big-bang rewrite",
        "books",
        "44.00",
    ),
];

struct Stats {
    commands: AtomicU64,
    queries: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        Ok((status, body))
    }
}

pub async fn run(opts: DemoOptions) -> anyhow::Result<()> {
    let running = match app::start(opts.config.clone()).await {
        Ok(r) => r,
        Err(e) if opts.config.listen.port() != 0 => {
            eprintln!(
                "could not listen on {} ({e:#}); using a free port",
                opts.config.listen
            );
            let mut cfg = opts.config.clone();
            cfg.listen.set_port(0);
            app::start(cfg).await?
        }
        Err(e) => return Err(e),
    };
    let base = running.url();
    let hour = 3600;
    let sellers = [
        ("sam", running.token("sam", &["seller"], 24 * hour)),
        ("sue", running.token("sue", &["seller"], 24 * hour)),
    ];
    let customers: Vec<(String, String)> = ["cara", "cole", "cruz", "cyd"]
        .iter()
        .map(|c| (c.to_string(), running.token(c, &["customer"], 24 * hour)))
        .collect();
    let admin = running.token("ada", &["admin"], 24 * hour);
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: base.clone(),
    });

    println!(
        "Ficus demo — serving at {base} (data in {})",
        opts.config.data_dir.display()
    );
    println!("Seeding {} products from 2 sellers...", PRODUCTS.len());
    let mut product_ids = Vec::new();
    for (i, (name, description, category, price)) in PRODUCTS.iter().enumerate() {
        let (_, token) = &sellers[i % 2];
        let body = json!({
            "name": name, "description": description, "category": category,
            "price": serde_json::from_str::<Value>(price)?, "currency": "EUR",
            "stock": 50 + 10 * i as i64,
        });
        let (status, resp) = client
            .send(
                reqwest::Method::POST,
                "/v1/products",
                Some(token),
                Some(body),
            )
            .await?;
        anyhow::ensure!(status == 201, "seeding {name} failed: {status} {resp}");
        product_ids.push((resp["id"].as_str().context("product id")?.to_owned(), i % 2));
    }
    let product_ids = Arc::new(product_ids);
    let sellers = Arc::new(sellers);
    let customers = Arc::new(customers);
    let stats = Arc::new(Stats {
        commands: AtomicU64::new(0),
        queries: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });

    println!(
        "Driving {} clients for {} s: 90 % queries, 10 % commands (orders, price changes, stock)...",
        opts.clients,
        opts.duration.as_secs()
    );
    let deadline = Instant::now() + opts.duration;
    let mut tasks = Vec::new();
    for k in 0..opts.clients {
        let (client, stats) = (client.clone(), stats.clone());
        let (products, sellers, customers) =
            (product_ids.clone(), sellers.clone(), customers.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy_seeded(k as u64);
            while Instant::now() < deadline {
                let r =
                    traffic_step(&client, &mut rng, &products, &sellers, &customers, &stats).await;
                if r.is_err() {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let start = Instant::now();
    let mut last = (0u64, 0u64);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
        let (c, q) = (
            stats.commands.load(Ordering::Relaxed),
            stats.queries.load(Ordering::Relaxed),
        );
        let st = &running.state;
        println!(
            "t={:>3.0}s  commands {c:>6} (+{:>4}/s)  queries {q:>7} (+{:>5}/s)  head position {:>6}  lag: catalog {} orders {} events  refused {}  errors {}",
            start.elapsed().as_secs_f64(),
            c - last.0,
            q - last.1,
            st.store.head_position(),
            st.read.catalog().lag_events(),
            st.read.orders().lag_events(),
            stats.refused.load(Ordering::Relaxed),
            stats.errors.load(Ordering::Relaxed),
        );
        last = (c, q);
    }
    for t in tasks {
        let _ = t.await;
    }
    let (pid, _) = &product_ids[0];
    let (cust, cust_token) = &customers[0];
    let (_, seller_token) = &sellers[0];

    // Fan-out: a bulk job reprices every kitchen product of one seller, item by item, through
    // the same aggregate rules as a single price change.
    println!();
    println!("Bulk job: seller sam raises every kitchen price by 5 %...");
    let (status, job) = client
        .send(
            reqwest::Method::POST,
            "/v1/jobs",
            Some(seller_token),
            Some(json!({"kind": "reprice_category", "params": {"category": "kitchen", "percent": 5}})),
        )
        .await?;
    anyhow::ensure!(status == 202, "bulk job refused: {status} {job}");
    let job_id = job["id"].as_str().context("job id")?.to_owned();
    let job = loop {
        let (_, j) = client
            .send(
                reqwest::Method::GET,
                &format!("/v1/jobs/{job_id}"),
                Some(seller_token),
                None,
            )
            .await?;
        if j["state"] != "running" {
            break j;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "  job {job_id}: {} — {} items, {} done, {} dead",
        job["state"], job["total"], job["done"], job["dead"]
    );
    println!();
    println!("Done: {} commands, {} queries, {} refused by a business rule (as they should be), {} transport errors.",
        stats.commands.load(Ordering::Relaxed), stats.queries.load(Ordering::Relaxed),
        stats.refused.load(Ordering::Relaxed), stats.errors.load(Ordering::Relaxed));
    println!();
    println!("Tokens (valid 24 h):");
    println!("  SELLER={seller_token}");
    println!("  CUSTOMER={cust_token}");
    println!("  ADMIN={admin}");
    println!();
    println!("Try:");
    println!("  curl -s {base}/v1/products/{pid}");
    println!("  curl -s '{base}/v1/products?q=kettle&category=kitchen&max_price=100'");
    println!("  curl -s -X PUT {base}/v1/products/{pid}/price -H \"Authorization: Bearer $SELLER\" -H 'Content-Type: application/json' -d '{{\"price\": 1.00}}'   # refused: > 50 % cut");
    println!("  curl -s -H \"Authorization: Bearer $CUSTOMER\" {base}/v1/customers/{cust}/orders?limit=5");
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" '{base}/v1/analytics/orders?from=2020-01-01&to=2030-12-31'");
    println!(
        "  curl -s -H \"Authorization: Bearer $ADMIN\" '{base}/v1/all?from_position=1&limit=5'"
    );
    println!("  curl -N -H \"Authorization: Bearer $ADMIN\" '{base}/v1/subscribe?from_position=1'   # live, Ctrl-C to end");
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" {base}/v1/projections");
    println!("  curl -s -H \"Authorization: Bearer $SELLER\" {base}/v1/jobs/{job_id}");
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" {base}/v1/queues");
    println!("  FICUS_URL={base} FICUS_TOKEN=$SELLER cargo run --release -- jobs submit reprice_category '{{\"category\":\"garden\",\"percent\":-10}}'");
    println!("  curl -s {base}/v1/openapi.json");
    if opts.exit_after_traffic {
        running.stop().await?;
        return Ok(());
    }
    println!();
    println!("Still serving at {base}. Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    running.stop().await
}

/// Small extension so each client gets its own reproducible-enough stream of choices.
trait SeededRng {
    fn from_entropy_seeded(k: u64) -> Self;
}

impl SeededRng for rand::rngs::StdRng {
    fn from_entropy_seeded(k: u64) -> Self {
        use rand::SeedableRng;
        rand::rngs::StdRng::seed_from_u64(0xF1C0_5000 + k)
    }
}

async fn traffic_step(
    client: &Client,
    rng: &mut rand::rngs::StdRng,
    products: &[(String, usize)],
    sellers: &[(&str, String); 2],
    customers: &[(String, String)],
    stats: &Stats,
) -> anyhow::Result<()> {
    use reqwest::Method;
    let (pid, owner) = &products[rng.gen_range(0..products.len())];
    let (cust, cust_token) = &customers[rng.gen_range(0..customers.len())];
    let roll = rng.gen_range(0..100);
    let (status, body, is_command) = if roll < 5 {
        // A customer orders one to three products and places the order.
        let mut items = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            let (p, _) = &products[rng.gen_range(0..products.len())];
            items.push(json!({"product_id": p, "quantity": rng.gen_range(1..=3)}));
        }
        let (s, b) = client
            .send(
                Method::POST,
                "/v1/orders",
                Some(cust_token),
                Some(json!({"items": items})),
            )
            .await?;
        if s == 201 {
            let id = b["id"].as_str().unwrap_or_default().to_owned();
            let (s2, b2) = client
                .send(
                    Method::POST,
                    &format!("/v1/orders/{id}/place"),
                    Some(cust_token),
                    None,
                )
                .await?;
            // Read our own write: the summary must show the placed order.
            let pos = b2["position"].as_u64().unwrap_or(0);
            let path = format!("/v1/customers/{cust}/orders?limit=5&min_position={pos}");
            client
                .send(Method::GET, &path, Some(cust_token), None)
                .await?;
            stats.queries.fetch_add(1, Ordering::Relaxed);
            (s2, b2, true)
        } else {
            (s, b, true)
        }
    } else if roll < 8 {
        // The owning seller nudges a price: up to 60 % down (sometimes refused) or up.
        let pct: i64 = rng.gen_range(40..=130);
        let (s, b) = client
            .send(Method::GET, &format!("/v1/products/{pid}"), None, None)
            .await?;
        stats.queries.fetch_add(1, Ordering::Relaxed);
        if s != 200 {
            return Ok(());
        }
        let cents = (b["price"].as_f64().unwrap_or(10.0) * 100.0).round() as i64;
        let new_cents = (cents * pct / 100).clamp(100, 1_000_000);
        let price: Value =
            serde_json::from_str(&format!("{}.{:02}", new_cents / 100, new_cents % 100))?;
        let token = &sellers[*owner].1;
        let (s, b) = client
            .send(
                Method::PUT,
                &format!("/v1/products/{pid}/price"),
                Some(token),
                Some(json!({"price": price})),
            )
            .await?;
        (s, b, true)
    } else if roll < 10 {
        let token = &sellers[*owner].1;
        let delta = rng.gen_range(-5..=20);
        let warehouse = ["main", "east", "west"][rng.gen_range(0..3)];
        let delta = if delta == 0 { 1 } else { delta };
        let body = json!({"warehouse": warehouse, "delta": delta});
        let (s, b) = client
            .send(
                Method::POST,
                &format!("/v1/products/{pid}/stock"),
                Some(token),
                Some(body),
            )
            .await?;
        (s, b, true)
    } else if roll < 60 {
        let (s, b) = client
            .send(Method::GET, &format!("/v1/products/{pid}"), None, None)
            .await?;
        (s, b, false)
    } else if roll < 85 {
        let q = ["grinder", "garden", "wooden", "rust", "kettle", "guide"][rng.gen_range(0..6)];
        let path = format!("/v1/products?q={q}&max_price=150&limit=10");
        let (s, b) = client.send(Method::GET, &path, None, None).await?;
        (s, b, false)
    } else {
        let path = format!("/v1/customers/{cust}/orders?limit=10");
        let (s, b) = client
            .send(Method::GET, &path, Some(cust_token), None)
            .await?;
        (s, b, false)
    };
    let counter = if is_command {
        &stats.commands
    } else {
        &stats.queries
    };
    counter.fetch_add(1, Ordering::Relaxed);
    match status {
        200..=299 => {}
        400..=499 => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        _ => anyhow::bail!("server error {status}: {body}"),
    }
    Ok(())
}
