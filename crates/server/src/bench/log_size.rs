//! `ficus bench log-size`: whether the cost of appending and reading stays flat as the global
//! log grows (10^4 … 10^7 events), on SQLite or PostgreSQL.
//!
//! One store is filled step by step: at each size the log holds `size` events in streams of
//! [`FILL_STREAM_EVENTS`] (written concurrently, so group commit batches them), and then the
//! same probes run against it:
//! - a durable single-event append with an exact expected version to an existing stream
//!   (what a command does), from one writer, so its latency is one commit's;
//! - a read of a whole 100-event stream picked at random (what loading an aggregate does);
//! - a read of a 100-event page of the global log at a random position (what a catching-up
//!   subscriber does).
//!
//! Every probe is checked (the versions, the page lengths and positions), so a wrong answer
//! fails the bench rather than timing an empty read.

use std::time::Instant;

use ficus_core::{EventType, ExpectedVersion, StreamId};
use ficus_store::{new_event, EventStore};
use rand::Rng as _;
use serde::Serialize;
use serde_json::json;

use super::{percentile, BenchStore, Opened};

/// Events per fill stream (and per fill append): a typical aggregate's length.
pub const FILL_STREAM_EVENTS: usize = 100;
/// Fill appends in flight at once.
const FILL_TASKS: usize = 16;
/// Streams the append probe spreads over (each gets probes / this many appends).
const PROBE_STREAMS: usize = 20;
/// Events per global-log page read.
const PAGE_EVENTS: usize = 100;

/// The figures at one log size.
#[derive(Debug, Clone, Serialize)]
pub struct LogSizeRun {
    pub log_events: u64,
    /// Seconds it took to grow the log to this size from the previous one.
    pub fill_secs: f64,
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    pub stream_read_p50_us: u64,
    pub stream_read_p99_us: u64,
    pub page_read_p50_us: u64,
    pub page_read_p99_us: u64,
}

fn micros(t: Instant) -> u32 {
    t.elapsed().as_micros().min(u32::MAX as u128) as u32
}

/// Grows the log of `store` from its head to `target` events in fill streams numbered from
/// `next_stream`; answers the next free stream number.
async fn fill(
    store: &std::sync::Arc<dyn EventStore>,
    next_stream: u64,
    target: u64,
) -> anyhow::Result<u64> {
    let ty = EventType::new("BenchFilled")?;
    let head = store.head_position();
    let streams = target
        .saturating_sub(head)
        .div_ceil(FILL_STREAM_EVENTS as u64);
    let mut tasks = Vec::with_capacity(FILL_TASKS);
    for t in 0..FILL_TASKS as u64 {
        let (store, ty) = (store.clone(), ty.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < streams {
                let n = next_stream + i;
                let stream = StreamId::new(format!("fill-{n}"))?;
                let events = (0..FILL_STREAM_EVENTS)
                    .map(|k| {
                        new_event(
                            ty.clone(),
                            json!({"stream": n, "k": k, "sku": "SKU-1", "qty": 1}),
                        )
                    })
                    .collect();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await?;
                i += FILL_TASKS as u64;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(next_stream + streams)
}

/// Runs the probes `probes` times each against a log of `fill_streams` fill streams.
async fn probe(
    store: &std::sync::Arc<dyn EventStore>,
    fill_streams: u64,
    probes: usize,
    versions: &mut [u64; PROBE_STREAMS],
) -> anyhow::Result<(Vec<u32>, Vec<u32>, Vec<u32>)> {
    let ty = EventType::new("BenchProbe")?;
    let mut rng = rand::thread_rng();
    let (mut append, mut stream_read, mut page_read) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..probes {
        let p = i % PROBE_STREAMS;
        let stream = StreamId::new(format!("probe-{p}"))?;
        let expected = match versions[p] {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        };
        let t = Instant::now();
        let r = store
            .append(
                &stream,
                expected,
                vec![new_event(ty.clone(), json!({"i": i}))],
            )
            .await?;
        append.push(micros(t));
        anyhow::ensure!(r.last_version == versions[p] + 1, "probe append version");
        versions[p] = r.last_version;

        let n = rng.gen_range(0..fill_streams);
        let stream = StreamId::new(format!("fill-{n}"))?;
        let t = Instant::now();
        let events = store.read_stream(&stream, 1, FILL_STREAM_EVENTS).await?;
        stream_read.push(micros(t));
        anyhow::ensure!(events.len() == FILL_STREAM_EVENTS, "fill-{n} is short");

        let head = store.head_position();
        let from = rng.gen_range(1..=head.saturating_sub(PAGE_EVENTS as u64).max(1));
        let t = Instant::now();
        let page = store.read_all(from, PAGE_EVENTS).await?;
        page_read.push(micros(t));
        anyhow::ensure!(
            page.first().map(|e| e.position) == Some(from) && page.len() == PAGE_EVENTS,
            "the page at {from} is not {PAGE_EVENTS} events from there"
        );
    }
    Ok((append, stream_read, page_read))
}

/// Grows one store through `sizes` (ascending) and prints a line per size as it finishes.
pub async fn run(at: &BenchStore, sizes: &[u64], probes: usize) -> anyhow::Result<Vec<LogSizeRun>> {
    anyhow::ensure!(sizes.windows(2).all(|w| w[0] < w[1]), "sizes must ascend");
    let opened = Opened::open(at, "logsize").await?;
    let store = opened.store();
    println!(
        "log size on {}: {probes} probes per size; fill streams of {FILL_STREAM_EVENTS} events",
        at.backend()
    );
    println!(
        "{:>11} {:>9} {:>12} {:>12} {:>13} {:>13} {:>12} {:>12}",
        "log events",
        "fill (s)",
        "append p50",
        "append p99",
        "stream p50",
        "stream p99",
        "page p50",
        "page p99"
    );
    let mut out = Vec::new();
    let mut next_stream = 0;
    let mut versions = [0u64; PROBE_STREAMS];
    for &size in sizes {
        let t = Instant::now();
        next_stream = fill(&store, next_stream, size).await?;
        let fill_secs = t.elapsed().as_secs_f64();
        let log_events = store.head_position();
        let (mut a, mut s, mut p) =
            probe(&store, next_stream, probes.max(1), &mut versions).await?;
        a.sort_unstable();
        s.sort_unstable();
        p.sort_unstable();
        let r = LogSizeRun {
            log_events,
            fill_secs,
            append_p50_us: percentile(&a, 0.5),
            append_p99_us: percentile(&a, 0.99),
            stream_read_p50_us: percentile(&s, 0.5),
            stream_read_p99_us: percentile(&s, 0.99),
            page_read_p50_us: percentile(&p, 0.5),
            page_read_p99_us: percentile(&p, 0.99),
        };
        println!(
            "{:>11} {:>9.1} {:>10} µs {:>9} µs {:>10} µs {:>10} µs {:>9} µs {:>9} µs",
            r.log_events,
            r.fill_secs,
            r.append_p50_us,
            r.append_p99_us,
            r.stream_read_p50_us,
            r.stream_read_p99_us,
            r.page_read_p50_us,
            r.page_read_p99_us
        );
        out.push(r);
    }
    if let (Some(first), Some(last)) = (out.first(), out.last()) {
        let ratio = |a: u64, b: u64| b as f64 / a.max(1) as f64;
        println!(
            "from {} to {} events: append p50 x{:.2}, stream read p50 x{:.2}, page read p50 x{:.2}",
            first.log_events,
            last.log_events,
            ratio(first.append_p50_us, last.append_p50_us),
            ratio(first.stream_read_p50_us, last.stream_read_p50_us),
            ratio(first.page_read_p50_us, last.page_read_p50_us)
        );
    }
    drop(store);
    opened.close().await;
    Ok(out)
}
