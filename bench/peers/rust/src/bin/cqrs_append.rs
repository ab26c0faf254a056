//! The append peer: single-event commands through cqrs-es's `CqrsFramework` on postgres-es,
//! from W concurrent writers for D seconds, printed as one JSON line the way
//! `ficus bench append` measures its own appends (rate, acknowledgement p50/p99).
//!
//!   cqrs_append <postgres url of a fresh database> <writers> <seconds>
//!
//! Each command goes to a new aggregate id, so its load reads an empty stream: the peer's best
//! case (an event-sourced load of a growing stream would make it slower as the run goes on).

use std::fmt;
use std::time::{Duration, Instant};

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use postgres_es::postgres_cqrs;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;

/// Connections in the peer's pool: postgres-es holds one per command in flight, and the
/// database server is shared, so this is capped below its connection limit.
const MAX_POOL_CONNECTIONS: u32 = 32;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    appended: u64,
}

struct Append {
    writer: usize,
    i: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum CounterEvent {
    Appended {
        w: usize,
        i: u64,
        sku: String,
        qty: u32,
    },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        "BenchEvent".to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// Appending never fails in this aggregate.
#[derive(Debug)]
struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl Aggregate for Counter {
    const TYPE: &'static str = "bench_counter";
    type Command = Append;
    type Event = CounterEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        command: Append,
        _services: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Never> {
        let event = CounterEvent::Appended {
            w: command.writer,
            i: command.i,
            sku: "SKU-1".to_owned(),
            qty: 1,
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, _event: CounterEvent) {
        self.appended += 1;
    }
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS events (
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL,
    event_version text NOT NULL,
    payload json NOT NULL,
    metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence))";

fn percentile(sorted: &[u32], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as u64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    anyhow::ensure!(
        args.len() == 4,
        "usage: cqrs_append <url> <writers> <seconds>"
    );
    let (url, writers, secs): (&str, usize, u64) = (&args[1], args[2].parse()?, args[3].parse()?);
    let pool = PgPoolOptions::new()
        .max_connections(MAX_POOL_CONNECTIONS.min(writers as u32 + 1))
        .connect(url)
        .await?;
    sqlx::query(SCHEMA).execute(&pool).await?;
    // postgres-es writes with the session's settings: make durability explicit, as Ficus does.
    sqlx::query("ALTER DATABASE CURRENT SET synchronous_commit = on")
        .execute(&pool)
        .await
        .ok();
    let cqrs = std::sync::Arc::new(postgres_cqrs::<Counter>(pool, vec![], ()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let cqrs = cqrs.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat_us = Vec::with_capacity(1 << 14);
            let mut i = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                cqrs.execute(&format!("w{w}-{i}"), Append { writer: w, i })
                    .await
                    .map_err(|e| anyhow::anyhow!("cqrs-es command failed: {e}"))?;
                lat_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                i += 1;
            }
            anyhow::Ok(lat_us)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let seconds = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "writers": writers, "appends": all.len(), "seconds": seconds,
            "appends_per_sec": all.len() as f64 / seconds,
            "p50_us": percentile(&all, 0.5), "p99_us": percentile(&all, 0.99),
        })
    );
    Ok(())
}
