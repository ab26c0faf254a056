//! Property tests proving that, under concurrent appenders, both event store adapters (mem and SQLite) give exactly one winner per stream version, keep a gapless global log in commit order, and leave nothing behind for a conflicting append.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ficus_core::{EventType, ExpectedVersion, Position, RecordedEvent, StreamId, Version};
use ficus_store::mem::MemEventStore;
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::{new_event, AppendResult, EventStore, StoreError, MAX_READ_LIMIT};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;
use uuid::Uuid;

/// Longest a single property case may take before it counts as a hang.
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
enum Adapter {
    Mem,
    Sqlite,
}

/// A fresh, empty store of one adapter, plus what must outlive it.
struct Fixture {
    store: Arc<dyn EventStore>,
    sqlite: Option<Arc<SqliteEventStore>>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    fn new(adapter: Adapter) -> Self {
        match adapter {
            Adapter::Mem => Self {
                store: Arc::new(MemEventStore::new()),
                sqlite: None,
                _dir: None,
            },
            Adapter::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let store = Arc::new(
                    SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
                        .expect("open sqlite store"),
                );
                Self {
                    store: store.clone(),
                    sqlite: Some(store),
                    _dir: Some(dir),
                }
            }
        }
    }

    async fn close(self) {
        if let Some(s) = &self.sqlite {
            s.shutdown().await;
        }
    }
}

/// Runs one async property case on its own multi-thread runtime, bounded by [`CASE_TIMEOUT`].
fn block_on<F>(case: F) -> Result<(), TestCaseError>
where
    F: Future<Output = Result<(), TestCaseError>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        match tokio::time::timeout(CASE_TIMEOUT, case).await {
            Ok(r) => r,
            Err(_) => Err(TestCaseError::fail("property case timed out (hang?)")),
        }
    })
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn event_type() -> EventType {
    EventType::new("Probed").unwrap()
}

/// The whole global log, page by page.
async fn read_whole_log(store: &dyn EventStore) -> Result<Vec<RecordedEvent>, TestCaseError> {
    let mut all: Vec<RecordedEvent> = Vec::new();
    loop {
        let from = all.last().map_or(1, |e| e.position + 1);
        let page = store
            .read_all(from, MAX_READ_LIMIT)
            .await
            .map_err(|e| TestCaseError::fail(format!("read_all: {e}")))?;
        if page.is_empty() {
            return Ok(all);
        }
        all.extend(page);
    }
}

// ---------------------------------------------------------------------------------------------
// a. Optimistic writers racing on one stream with `Exact(last observed version)`.
// ---------------------------------------------------------------------------------------------

/// One writer's record: its winning appends and its lost races.
#[derive(Default)]
struct WriterLog {
    /// (what the store reported, the event id, the version the writer expected)
    wins: Vec<(AppendResult, Uuid, Version)>,
    /// (the event id, the version the writer expected, the version the store reported)
    conflicts: Vec<(Uuid, Version, Version)>,
}

async fn exact_writers_race(
    adapter: Adapter,
    writers: usize,
    appends_each: usize,
) -> Result<(), TestCaseError> {
    let fx = Fixture::new(adapter);
    let store = fx.store.clone();
    let s = sid("race-exact");

    let mut tasks = Vec::new();
    for w in 0..writers {
        let (store, s) = (store.clone(), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut log = WriterLog::default();
            let mut observed = store.stream_version(&s).await?;
            let mut attempt = 0u64;
            while log.wins.len() < appends_each {
                attempt += 1;
                let e = new_event(event_type(), json!({ "writer": w, "attempt": attempt }));
                let id = e.id;
                match store
                    .append(&s, ExpectedVersion::Exact(observed), vec![e])
                    .await
                {
                    Ok(r) => {
                        log.wins.push((r, id, observed));
                        observed = r.last_version;
                    }
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        log.conflicts.push((id, observed, actual));
                        observed = store.stream_version(&s).await?;
                    }
                    Err(other) => return Err(other),
                }
                if attempt.is_multiple_of(3) {
                    tokio::task::yield_now().await;
                }
            }
            Ok::<_, StoreError>(log)
        }));
    }
    let mut logs = Vec::new();
    for t in tasks {
        let log = t
            .await
            .map_err(|e| TestCaseError::fail(format!("writer task panicked: {e}")))?
            .map_err(|e| TestCaseError::fail(format!("unexpected store error: {e}")))?;
        logs.push(log);
    }

    let final_version = store.stream_version(&s).await.unwrap();
    let stored = store.read_stream(&s, 1, MAX_READ_LIMIT).await.unwrap();
    let total_wins: usize = logs.iter().map(|l| l.wins.len()).sum();

    prop_assert_eq!(total_wins, writers * appends_each);
    prop_assert_eq!(
        total_wins as Version,
        final_version,
        "successful appends must equal the final stream version"
    );
    prop_assert_eq!(store.head_position(), final_version);
    // Stored versions are exactly 1..=N.
    let versions: Vec<Version> = stored.iter().map(|e| e.version).collect();
    prop_assert_eq!(versions, (1..=final_version).collect::<Vec<_>>());

    // Exactly one winner per version, and it is the event stored at that version.
    let mut winner_of: HashMap<Version, Uuid> = HashMap::new();
    for log in &logs {
        for (r, id, expected) in &log.wins {
            prop_assert_eq!(r.first_version, r.last_version);
            prop_assert_eq!(
                r.first_version,
                expected + 1,
                "won at the version it expected"
            );
            prop_assert!(
                winner_of.insert(r.first_version, *id).is_none(),
                "version {} won twice",
                r.first_version
            );
            let at = &stored[(r.first_version - 1) as usize];
            prop_assert_eq!(
                at.id,
                *id,
                "stored event at version {} is not the winner's",
                r.first_version
            );
            prop_assert_eq!(at.position, r.first_position);
            prop_assert_eq!(r.first_position, r.last_position);
        }
        // Wins of one writer are in increasing version order (it never goes back in time).
        for pair in log.wins.windows(2) {
            prop_assert!(pair[0].0.last_version < pair[1].0.first_version);
        }
    }
    prop_assert_eq!(winner_of.len() as Version, final_version);

    // A lost race reports a newer version and writes nothing.
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.id).collect();
    for log in &logs {
        for (id, expected, actual) in &log.conflicts {
            prop_assert!(
                actual > expected,
                "conflict at {} reported actual {}",
                expected,
                actual
            );
            prop_assert!(*actual <= final_version);
            prop_assert!(
                !stored_ids.contains(id),
                "a conflicting append left its event behind"
            );
        }
    }
    // The global log holds nothing but the winners.
    let all = read_whole_log(store.as_ref()).await?;
    prop_assert_eq!(all.len() as Version, final_version);
    prop_assert_eq!(&all, &stored);

    fx.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// b. Random mixes of appends from several concurrent tasks.
// ---------------------------------------------------------------------------------------------

const STREAMS: usize = 3;

#[derive(Debug, Clone)]
struct Op {
    stream: usize,
    size: usize,
    expected: ExpectedVersion,
}

fn expected_strategy() -> impl Strategy<Value = ExpectedVersion> {
    prop_oneof![
        Just(ExpectedVersion::Any),
        Just(ExpectedVersion::NoStream),
        Just(ExpectedVersion::Exists),
        (0u64..8).prop_map(ExpectedVersion::Exact),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (0..STREAMS, 1usize..5, expected_strategy()).prop_map(|(stream, size, expected)| Op {
        stream,
        size,
        expected,
    })
}

fn stream_name(i: usize) -> StreamId {
    sid(&format!("mix-{i}"))
}

/// What one append attempt did, as its caller saw it.
#[derive(Debug)]
struct Attempt {
    task: usize,
    stream: StreamId,
    expected: ExpectedVersion,
    ids: Vec<Uuid>,
    outcome: Result<AppendResult, StoreError>,
}

async fn random_mix(adapter: Adapter, plans: Vec<Vec<Op>>) -> Result<(), TestCaseError> {
    let fx = Fixture::new(adapter);
    let store = fx.store.clone();
    // Joined before any append: every committed batch arrives here, in commit order.
    let mut live = store.live();

    let mut tasks = Vec::new();
    for (task, plan) in plans.into_iter().enumerate() {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut attempts = Vec::new();
            for (i, op) in plan.into_iter().enumerate() {
                let events: Vec<_> = (0..op.size)
                    .map(|k| new_event(event_type(), json!({ "task": task, "op": i, "k": k })))
                    .collect();
                let ids = events.iter().map(|e| e.id).collect();
                let stream = stream_name(op.stream);
                let outcome = store.append(&stream, op.expected, events).await;
                attempts.push(Attempt {
                    task,
                    stream,
                    expected: op.expected,
                    ids,
                    outcome,
                });
                if i % 2 == 1 {
                    tokio::task::yield_now().await;
                }
            }
            attempts
        }));
    }
    let mut attempts = Vec::new();
    for t in tasks {
        attempts.extend(
            t.await
                .map_err(|e| TestCaseError::fail(format!("task panicked: {e}")))?,
        );
    }

    let head: Position = store.head_position();
    let all = read_whole_log(store.as_ref()).await?;

    // The global log is exactly positions 1..=head.
    let positions: Vec<Position> = all.iter().map(|e| e.position).collect();
    prop_assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "global log has a gap"
    );

    // Each stream's versions are contiguous from 1, in log order, and read_stream agrees.
    for i in 0..STREAMS {
        let s = stream_name(i);
        let in_log: Vec<&RecordedEvent> = all.iter().filter(|e| e.stream_id == s).collect();
        let versions: Vec<Version> = in_log.iter().map(|e| e.version).collect();
        prop_assert_eq!(versions, (1..=in_log.len() as Version).collect::<Vec<_>>());
        prop_assert_eq!(
            store.stream_version(&s).await.unwrap(),
            in_log.len() as Version
        );
        let read = store.read_stream(&s, 1, MAX_READ_LIMIT).await.unwrap();
        prop_assert_eq!(read.iter().collect::<Vec<_>>(), in_log);
    }

    let logged_ids: HashSet<Uuid> = all.iter().map(|e| e.id).collect();
    prop_assert_eq!(logged_ids.len(), all.len(), "an event id appears twice");

    let mut committed_events = 0u64;
    let mut ranges: Vec<(Position, Position)> = Vec::new();
    let mut last_position_of_task: HashMap<usize, Position> = HashMap::new();
    for a in &attempts {
        match &a.outcome {
            Ok(r) => {
                let n = a.ids.len() as u64;
                committed_events += n;
                prop_assert_eq!(r.last_position + 1 - r.first_position, n, "{:?}", r);
                prop_assert_eq!(r.last_version + 1 - r.first_version, n, "{:?}", r);
                prop_assert!(
                    a.expected.admits(r.first_version - 1),
                    "append with {} committed on version {}",
                    a.expected,
                    r.first_version - 1
                );
                // What read_all shows at the reported positions is this append, in order.
                let slice = &all[(r.first_position - 1) as usize..r.last_position as usize];
                for (k, e) in slice.iter().enumerate() {
                    prop_assert_eq!(e.id, a.ids[k]);
                    prop_assert_eq!(&e.stream_id, &a.stream);
                    prop_assert_eq!(e.version, r.first_version + k as u64);
                }
                // A task's appends commit in the order it awaited them.
                if let Some(prev) = last_position_of_task.insert(a.task, r.last_position) {
                    prop_assert!(prev < r.first_position);
                }
                ranges.push((r.first_position, r.last_position));
            }
            Err(StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            }) => {
                prop_assert_eq!(stream, &a.stream);
                prop_assert_eq!(*expected, a.expected);
                prop_assert!(
                    !a.expected.admits(*actual),
                    "conflict reported although {} admits {}",
                    a.expected,
                    actual
                );
                for id in &a.ids {
                    prop_assert!(
                        !logged_ids.contains(id),
                        "a failed append left {} behind",
                        id
                    );
                }
            }
            Err(e) => return Err(TestCaseError::fail(format!("unexpected store error: {e}"))),
        }
    }
    prop_assert_eq!(
        committed_events,
        head,
        "committed events must fill the log exactly"
    );
    // The successful appends tile 1..=head: contiguous, disjoint, nothing else in the log.
    ranges.sort_unstable();
    let mut next = 1;
    for (first, last) in ranges {
        prop_assert_eq!(first, next, "appends overlap or leave a hole");
        next = last + 1;
    }
    prop_assert_eq!(next, head + 1);

    // Live batches left in commit order: concatenated, they are the global log.
    let mut live_events: Vec<RecordedEvent> = Vec::new();
    while let Ok(batch) = live.try_recv() {
        live_events.extend(batch.iter().cloned());
    }
    prop_assert_eq!(live_events.len(), all.len());
    for (l, e) in live_events.iter().zip(&all) {
        prop_assert_eq!(l.position, e.position);
        prop_assert_eq!(l.id, e.id);
        prop_assert_eq!(l.version, e.version);
    }

    fx.close().await;
    Ok(())
}

fn plans_strategy() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op_strategy(), 1..12), 2..5)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn mem_exact_writers_one_winner_per_version(writers in 2usize..7, appends_each in 1usize..6) {
        block_on(exact_writers_race(Adapter::Mem, writers, appends_each))?;
    }

    #[test]
    fn sqlite_exact_writers_one_winner_per_version(writers in 2usize..7, appends_each in 1usize..6) {
        block_on(exact_writers_race(Adapter::Sqlite, writers, appends_each))?;
    }

    #[test]
    fn mem_random_mix_keeps_log_gapless_and_in_commit_order(plans in plans_strategy()) {
        block_on(random_mix(Adapter::Mem, plans))?;
    }

    #[test]
    fn sqlite_random_mix_keeps_log_gapless_and_in_commit_order(plans in plans_strategy()) {
        block_on(random_mix(Adapter::Sqlite, plans))?;
    }
}
