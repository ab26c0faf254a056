//! `ficus bench lag`: projection lag — from an append's acknowledgement to the moment the read
//! model has applied it — at a steady append rate, on the embedded store with the shop's real
//! catalog projection (one SQLite read model, checkpoint in the same transaction).
//!
//! Writers append `ProductPriceChanged` events, one per append and durable, to a seeded
//! catalog at a paced total rate (the goal is 10,000 events/s). Every `sample_every`-th
//! append is followed: a task waits on the runner's published checkpoint for its position and
//! records the time since the acknowledgement. The achieved rate is reported beside the target,
//! so a run that could not keep up says so instead of reporting a lag it never had.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ficus_core::{codec, DomainEvent, ExpectedVersion, NewEvent};
use ficus_domain::money::{Currency, Money};
use ficus_domain::product::{Product, ProductEvent};
use ficus_domain::read_models::CatalogProjection;
use ficus_runtime::{ProjectionRunner, Repository, Shutdown};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::EventStore;
use serde::Serialize;

use super::percentile;

/// Products in the seeded catalog the price changes spread over.
pub const LAG_PRODUCTS: usize = 1000;
/// Longest one sampled event may take to become visible before the bench fails.
const VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most lag samples kept (the rest of a very long run is not sampled).
const MAX_SAMPLES: usize = 1 << 20;

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LagRun {
    pub target_events_per_sec: f64,
    pub events_per_sec: f64,
    pub events: u64,
    pub seconds: f64,
    pub writers: usize,
    pub samples: usize,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
}

fn event(e: &ProductEvent) -> anyhow::Result<NewEvent> {
    let (event_type, payload) = codec::encode(e)?;
    Ok(NewEvent {
        id: uuid::Uuid::now_v7(),
        event_type,
        schema_version: ProductEvent::SCHEMA_VERSION,
        metadata: Default::default(),
        payload,
    })
}

/// Runs `writers` tasks appending at `rate` events/s in total for `secs`, in a fresh store under
/// `dir`, and follows every `sample_every`-th event into the catalog read model.
pub async fn run(
    dir: &Path,
    rate: f64,
    secs: f64,
    writers: usize,
    sample_every: u64,
) -> anyhow::Result<LagRun> {
    anyhow::ensure!(
        rate > 0.0 && secs > 0.0,
        "rate and duration must be positive"
    );
    let writers = writers.clamp(1, LAG_PRODUCTS);
    std::fs::create_dir_all(dir)?;
    let sqlite = Arc::new(SqliteEventStore::open(
        dir.join("lag.db"),
        SqliteConfig::default(),
    )?);
    let store: Arc<dyn EventStore> = sqlite.clone();
    let shutdown = Shutdown::new();
    let (catalog, task) = ProjectionRunner::spawn(
        Arc::new(CatalogProjection),
        &dir.join("read-models"),
        store.clone(),
        shutdown.clone(),
    )?;

    // The catalog the price changes apply to.
    let eur = Currency::new("EUR")?;
    let mut seeds = Vec::with_capacity(LAG_PRODUCTS);
    for p in 0..LAG_PRODUCTS {
        let id = format!("lag{p:04}");
        let stream = Repository::stream_of::<Product>(&id)?;
        let created = event(&created(&id, eur.clone()))?;
        let store = store.clone();
        seeds.push(tokio::spawn(async move {
            store
                .append(&stream, ExpectedVersion::NoStream, vec![created])
                .await
        }));
    }
    for s in seeds {
        s.await??;
    }
    catalog
        .wait_for(store.head_position(), VISIBLE_TIMEOUT)
        .await
        .map_err(|e| anyhow::anyhow!("the catalog did not catch up with the seed: {e}"))?;

    let lags_us: Arc<Mutex<Vec<u32>>> = Arc::default();
    let interval = Duration::from_secs_f64(writers as f64 / rate);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let (store, catalog, lags_us) = (store.clone(), catalog.clone(), lags_us.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            // A late tick is made up for at once, so the average rate holds.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut append_us: Vec<u32> = Vec::new();
            let mut waits = Vec::new();
            let mut n = 0u64;
            // Each writer keeps to its own products (w, w + writers, ...), so no two writers
            // share a stream.
            let owned = (LAG_PRODUCTS - w).div_ceil(writers);
            while Instant::now() < deadline {
                tick.tick().await;
                let p = w + (n as usize % owned) * writers;
                let id = format!("lag{p:04}");
                let stream = Repository::stream_of::<Product>(&id)?;
                let (old, new) = if n.is_multiple_of(2) {
                    (1000, 1100)
                } else {
                    (1100, 1000)
                };
                let e = event(&ProductEvent::ProductPriceChanged {
                    product_id: id,
                    old_price: Money::from_minor(old),
                    new_price: Money::from_minor(new),
                    at_ms: ficus_store::now_ms(),
                })?;
                let t = Instant::now();
                let r = store.append(&stream, ExpectedVersion::Any, vec![e]).await?;
                append_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if (n + w as u64).is_multiple_of(sample_every.max(1)) {
                    let (catalog, lags_us) = (catalog.clone(), lags_us.clone());
                    waits.push(tokio::spawn(async move {
                        catalog
                            .wait_for(r.last_position, VISIBLE_TIMEOUT)
                            .await
                            .map_err(|e| anyhow::anyhow!("event not visible: {e}"))?;
                        let lag = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        let mut l = lags_us.lock().unwrap_or_else(|e| e.into_inner());
                        if l.len() < MAX_SAMPLES {
                            l.push(lag);
                        }
                        anyhow::Ok(())
                    }));
                }
                n += 1;
            }
            for wait in waits {
                wait.await??;
            }
            anyhow::Ok((n, append_us))
        }));
    }
    let mut events = 0;
    let mut appends: Vec<u32> = Vec::new();
    for t in tasks {
        let (n, a) = t.await??;
        events += n;
        appends.extend(a);
    }
    let seconds = started.elapsed().as_secs_f64();
    shutdown.trigger();
    let _ = task.await;
    drop((catalog, store));
    sqlite.shutdown().await;

    let mut lags = std::mem::take(&mut *lags_us.lock().unwrap_or_else(|e| e.into_inner()));
    lags.sort_unstable();
    appends.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(LagRun {
        target_events_per_sec: rate,
        events_per_sec: events as f64 / seconds,
        events,
        seconds,
        writers,
        samples: lags.len(),
        lag_p50_ms: ms(percentile(&lags, 0.5)),
        lag_p99_ms: ms(percentile(&lags, 0.99)),
        lag_max_ms: ms(lags.last().copied().unwrap_or(0) as u64),
        append_p50_us: percentile(&appends, 0.5),
        append_p99_us: percentile(&appends, 0.99),
    })
}

/// The seed event of one product.
fn created(id: &str, currency: Currency) -> ProductEvent {
    ProductEvent::ProductCreated {
        product_id: id.to_owned(),
        seller_id: "bench".into(),
        name: format!("Lag bench product {id}"),
        description: "a product whose price the lag bench keeps changing".into(),
        category: "bench".into(),
        price: Money::from_minor(1000),
        currency,
        at_ms: ficus_store::now_ms(),
    }
}
