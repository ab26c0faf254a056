//! `ficus bench snapshots`: how long loading one aggregate takes as its stream grows, folding
//! every event versus its latest snapshot plus the tail, on the SQLite backend.
//!
//! Each stream is a `BankAccount` (opened, then deposits) written in large batches straight to
//! the store, as a long-lived account would have accumulated them. The snapshot is taken
//! [`TAIL_EVENTS`] events before the end (the policy snapshots every 100 events, so a load
//! finds 50 events after the snapshot on average), then the tail is written. Both loads must
//! agree on the state and version, or the bench fails.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ficus_core::{codec, DomainEvent, EventType, ExpectedVersion, NewEvent, StreamId};
use ficus_domain::account::{AccountEvent, BankAccount};
use ficus_domain::money::{Currency, Money};
use ficus_runtime::Repository;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteSnapshotStore};
use ficus_store::{EventStore, MAX_READ_LIMIT};
use serde::Serialize;

/// Events after the snapshot when a stream is loaded with snapshots.
pub const TAIL_EVENTS: u64 = 50;
/// Events per append while the stream is written.
const WRITE_BATCH_EVENTS: usize = MAX_READ_LIMIT;

/// The figures of one stream length.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotRun {
    pub events: u64,
    /// Median load time folding every event.
    pub without_ms: f64,
    /// Median load time from the snapshot plus the tail.
    pub with_ms: f64,
    /// Seconds spent writing the stream (not part of the measurement).
    pub write_secs: f64,
    /// Median durable append of one more event to the stream, with its exact expected
    /// version (what a command on this aggregate does), in microseconds.
    pub append_us: f64,
}

/// Single-event appends timed per stream length.
const APPENDS_TIMED: usize = 25;

fn median_ms(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn encode(e: &AccountEvent) -> anyhow::Result<(EventType, serde_json::Value)> {
    Ok(codec::encode(e)?)
}

/// Appends `count` deposits of 0.01 to the account's stream, in large batches.
async fn write_deposits(
    store: &Arc<dyn EventStore>,
    stream: &StreamId,
    account_id: &str,
    count: u64,
) -> anyhow::Result<()> {
    let (ty, payload) = encode(&AccountEvent::MoneyDeposited {
        account_id: account_id.to_owned(),
        amount: Money::from_minor(1),
        at_ms: 0,
    })?;
    let mut left = count;
    while left > 0 {
        let n = left.min(WRITE_BATCH_EVENTS as u64);
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| NewEvent {
                id: uuid::Uuid::now_v7(),
                event_type: ty.clone(),
                schema_version: AccountEvent::SCHEMA_VERSION,
                metadata: Default::default(),
                payload: payload.clone(),
            })
            .collect();
        store.append(stream, ExpectedVersion::Any, batch).await?;
        left -= n;
    }
    Ok(())
}

/// Measures one stream of `events` events (≥ 2) in a fresh store under `dir`.
pub async fn run_one(dir: &Path, events: u64, loads: usize) -> anyhow::Result<SnapshotRun> {
    anyhow::ensure!(events >= 2, "a stream needs at least 2 events");
    let tag = format!("bench-snap-{events}-{}", uuid::Uuid::now_v7());
    let config = SqliteConfig {
        max_append_events: WRITE_BATCH_EVENTS,
        max_batch_events: WRITE_BATCH_EVENTS,
        ..SqliteConfig::default()
    };
    let sqlite = Arc::new(SqliteEventStore::open(
        dir.join(format!("{tag}.db")),
        config,
    )?);
    let store: Arc<dyn EventStore> = sqlite.clone();
    let snapshots = Arc::new(SqliteSnapshotStore::open(
        dir.join(format!("{tag}-snapshots.db")),
    )?);
    let account_id = "bench";
    let stream = Repository::stream_of::<BankAccount>(account_id)?;
    let started = Instant::now();
    let (ty, payload) = encode(&AccountEvent::AccountOpened {
        account_id: account_id.to_owned(),
        owner_id: "bench".into(),
        holder_name: None,
        currency: Currency::new("EUR")?,
        at_ms: 0,
    })?;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![NewEvent {
                id: uuid::Uuid::now_v7(),
                event_type: ty,
                schema_version: AccountEvent::SCHEMA_VERSION,
                metadata: Default::default(),
                payload,
            }],
        )
        .await?;
    let tail = TAIL_EVENTS.min(events / 2);
    write_deposits(&store, &stream, account_id, events - 1 - tail).await?;
    let with = Repository::new(store.clone()).with_snapshots(snapshots.clone());
    let taken = with.snapshot::<BankAccount>(account_id).await?;
    anyhow::ensure!(taken == Some(events - tail), "snapshot at {taken:?}");
    write_deposits(&store, &stream, account_id, tail).await?;
    let write_secs = started.elapsed().as_secs_f64();

    let plain = Repository::new(store.clone());
    let (mut without_ms, mut with_ms) = (Vec::new(), Vec::new());
    for _ in 0..loads.max(1) {
        let t = Instant::now();
        let full = plain.load::<BankAccount>(account_id).await?;
        without_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let fast = with.load::<BankAccount>(account_id).await?;
        with_ms.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            full.version == events && fast.version == events && full.state == fast.state,
            "the two loads disagree"
        );
        anyhow::ensure!(fast.state.balance() == Money::from_minor(events as i64 - 1));
    }
    // One more event at a time, as a command would append it, while the stream is this long.
    let (ty, payload) = encode(&AccountEvent::MoneyDeposited {
        account_id: account_id.to_owned(),
        amount: Money::from_minor(1),
        at_ms: 0,
    })?;
    let mut append_us = Vec::with_capacity(APPENDS_TIMED);
    for i in 0..APPENDS_TIMED as u64 {
        let event = NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type: ty.clone(),
            schema_version: AccountEvent::SCHEMA_VERSION,
            metadata: Default::default(),
            payload: payload.clone(),
        };
        let t = Instant::now();
        let r = store
            .append(&stream, ExpectedVersion::Exact(events + i), vec![event])
            .await?;
        append_us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(r.last_version == events + i + 1, "append version");
    }
    drop((plain, with, store));
    sqlite.shutdown().await;
    drop((sqlite, snapshots));
    for file in std::fs::read_dir(dir)? {
        let path = file?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&tag))
        {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(SnapshotRun {
        events,
        without_ms: median_ms(without_ms),
        with_ms: median_ms(with_ms),
        write_secs,
        append_us: median_ms(append_us),
    })
}

/// Runs every stream length and prints a line for each as it finishes.
pub async fn run(dir: &Path, lengths: &[u64], loads: usize) -> anyhow::Result<Vec<SnapshotRun>> {
    std::fs::create_dir_all(dir)?;
    println!(
        "snapshot loads on sqlite: median of {} load(s); snapshot {TAIL_EVENTS} events before the end",
        loads.max(1)
    );
    println!(
        "{:>10} {:>16} {:>16} {:>10} {:>10} {:>12}",
        "events", "without (ms)", "with (ms)", "speedup", "write (s)", "append (µs)"
    );
    let mut out = Vec::new();
    for &n in lengths {
        let r = run_one(dir, n, loads).await?;
        println!(
            "{:>10} {:>16.3} {:>16.3} {:>9.1}x {:>10.1} {:>12.0}",
            r.events,
            r.without_ms,
            r.with_ms,
            r.without_ms / r.with_ms.max(1e-9),
            r.write_secs,
            r.append_us
        );
        out.push(r);
    }
    Ok(out)
}
