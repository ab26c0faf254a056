//! Proves the PostgreSQL projection runner against a real PostgreSQL: it builds a read model from the log and stays live at the head; of two competing runners exactly one applies, and when the active one dies (its lock session terminated and its task aborted, as after kill -9) or is fenced out while appends continue, a standby takes over from the committed checkpoint with every event applied exactly once; a rebuild requested from any process gives the same read model; a process without a runner follows the checkpoint another process commits. Needs `FICUS_TEST_PG_URL` (skipped without it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use ficus_core::{EventType, ExpectedVersion, Position, RecordedEvent, StreamId};
use ficus_runtime::pg_projection::PgRebuildError;
use ficus_runtime::{
    PgProjection, PgProjectionHandle, PgProjectionRunner, ProjectionError, ProjectionState,
    Shutdown, WaitError,
};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{PgConfig, PgEventStore};
use ficus_store::{new_event, EventStore, MAX_READ_LIMIT};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Most appends an open-ended workload makes before it stops on its own.
const MAX_WORKLOAD_APPENDS: u64 = 5_000;
const NAME: &str = "tally";

/// Per stream: how many events and the sum of their `amount`. `tally_applied` has no key, so
/// an event applied twice shows up as a duplicate position rather than as an error.
struct Tally;

#[async_trait]
impl PgProjection for Tally {
    fn name(&self) -> &str {
        NAME
    }

    fn schema(&self) -> &str {
        "CREATE TABLE IF NOT EXISTS tally_streams (
             stream text PRIMARY KEY,
             events bigint NOT NULL,
             amount_sum bigint NOT NULL
         );
         CREATE TABLE IF NOT EXISTS tally_applied (position bigint NOT NULL);"
    }

    fn drop_schema(&self) -> &str {
        "DROP TABLE IF EXISTS tally_streams; DROP TABLE IF EXISTS tally_applied;"
    }

    async fn apply(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        let amount = event
            .payload
            .get("amount")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        tx.execute(
            "INSERT INTO tally_applied (position) VALUES ($1)",
            &[&(event.position as i64)],
        )
        .await?;
        tx.execute(
            "INSERT INTO tally_streams (stream, events, amount_sum) VALUES ($1, 1, $2)
             ON CONFLICT (stream) DO UPDATE SET events = tally_streams.events + 1,
                 amount_sum = tally_streams.amount_sum + EXCLUDED.amount_sum",
            &[&event.stream_id.as_str(), &amount],
        )
        .await?;
        Ok(())
    }
}

type Tallies = BTreeMap<String, (i64, i64)>;

/// The read model, and how positions were applied: (rows, distinct positions, max).
async fn read_model(pool: &Pool) -> (Tallies, (i64, i64, i64)) {
    let conn = pool.get().await.unwrap();
    let tallies = conn
        .query(
            "SELECT stream, events, amount_sum FROM tally_streams ORDER BY stream",
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let r = conn
        .query_one(
            "SELECT count(*), count(DISTINCT position), coalesce(max(position), 0)
             FROM tally_applied",
            &[],
        )
        .await
        .unwrap();
    (tallies, (r.get(0), r.get(1), r.get(2)))
}

/// The read model recomputed from the whole log, and the log's head.
async fn recount(store: &dyn EventStore) -> (Tallies, Position) {
    let mut tallies = Tallies::new();
    let mut next = 1;
    loop {
        let page = store.read_all(next, MAX_READ_LIMIT).await.unwrap();
        let Some(last) = page.last() else { break };
        next = last.position + 1;
        for e in &page {
            let t = tallies.entry(e.stream_id.as_str().to_owned()).or_default();
            t.0 += 1;
            t.1 += e.payload["amount"].as_i64().unwrap_or(0);
        }
    }
    (tallies, next - 1)
}

/// Asserts the read model is exactly the log's recount with every position applied once.
async fn assert_exactly_once(pool: &Pool, store: &dyn EventStore) -> Position {
    let (expected, head) = recount(store).await;
    let (tallies, (rows, distinct, max)) = read_model(pool).await;
    assert_eq!(
        (rows, distinct, max),
        (head as i64, head as i64, head as i64),
        "every position 1..={head} applied exactly once"
    );
    assert_eq!(
        tallies, expected,
        "read model equals a recount from the log"
    );
    head
}

async fn open(config: &PgConfig) -> Arc<PgEventStore> {
    let mut config = config.clone();
    config.pool_size = 4;
    Arc::new(PgEventStore::open(config).await.unwrap())
}

fn spawn(store: &Arc<PgEventStore>, shutdown: &Shutdown) -> (PgProjectionHandle, JoinHandle<()>) {
    PgProjectionRunner::spawn(
        Arc::new(Tally),
        store.pool().clone(),
        store.clone(),
        shutdown.clone(),
    )
}

/// `appends` appends of 1-3 events over five streams, deterministic from `seed`.
async fn append_some(store: &dyn EventStore, appends: u64, seed: u64) {
    for i in 0..appends {
        append_one(store, i, seed).await;
    }
}

async fn append_one(store: &dyn EventStore, i: u64, seed: u64) {
    let ty = EventType::new("Tallied").unwrap();
    let stream = StreamId::new(format!("s{}", (i * 7 + seed) % 5)).unwrap();
    let events = (0..1 + i % 3)
        .map(|j| new_event(ty.clone(), json!({ "amount": (i * 3 + j + seed) % 17 })))
        .collect();
    store
        .append(&stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

/// Appends until `stop` is set (and at least `min_appends` were made), with a short pause
/// between appends so that they span a failover. Returns how many appends it made.
fn workload(
    store: Arc<PgEventStore>,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    min_appends: u64,
) -> JoinHandle<u64> {
    tokio::spawn(async move {
        let mut i = 0;
        while i < MAX_WORKLOAD_APPENDS && (i < min_appends || !stop.load(Ordering::SeqCst)) {
            append_one(store.as_ref(), i, 1).await;
            i += 1;
            made.store(i, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        i
    })
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The backend holding the projection's advisory lock, if any.
async fn lock_holder(admin: &Pool) -> Option<i32> {
    let conn = admin.get().await.unwrap();
    conn.query_opt(
        "WITH k AS (SELECT hashtext('ficus-projection:' || current_schema() || '.' || $1)::bigint
                    AS key)
         SELECT l.pid FROM pg_locks l, k
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = ((k.key >> 32) & 4294967295)::oid
           AND l.objid = (k.key & 4294967295)::oid",
        &[&NAME],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

async fn terminate(admin: &Pool, pid: i32) {
    let conn = admin.get().await.unwrap();
    conn.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
}

async fn table_generation(admin: &Pool) -> i64 {
    let conn = admin.get().await.unwrap();
    conn.query_one(
        "SELECT generation FROM ficus_projection_checkpoints WHERE name = $1",
        &[&NAME],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until exactly one of `handles` is active; returns its index.
async fn one_active(handles: &[&PgProjectionHandle]) -> usize {
    eventually("exactly one active runner", || {
        handles.iter().filter(|h| h.status().is_active()).count() == 1
    })
    .await;
    let active = handles.iter().position(|h| h.status().is_active()).unwrap();
    for (i, h) in handles.iter().enumerate() {
        if i != active {
            assert_eq!(h.status().state, ProjectionState::Standby);
        }
    }
    active
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_the_read_model_from_the_log_and_stays_live() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "pgprojlive");
    let store = open(&config).await;
    append_some(store.as_ref(), 200, 0).await;
    let head = store.head_position();

    let shutdown = Shutdown::new();
    let (handle, task) = spawn(&store, &shutdown);
    eventually("caught up and live", || {
        let s = handle.status();
        s.state == ProjectionState::Live && s.checkpoint == head
    })
    .await;
    assert_eq!(handle.status().generation, Some(1));
    assert_eq!(handle.checkpoint().await.unwrap(), head);
    assert_eq!(
        assert_exactly_once(handle.pool(), store.as_ref()).await,
        head
    );

    // Live: new appends are applied, read-your-writes waits see them.
    append_some(store.as_ref(), 40, 3).await;
    let head = store.head_position();
    assert_eq!(handle.wait_for(head, WAIT).await.unwrap(), head);
    assert_eq!(handle.checkpoint().await.unwrap(), head);
    assert_eq!(handle.lag_events(), 0);
    assert_eq!(
        assert_exactly_once(handle.pool(), store.as_ref()).await,
        head
    );
    let status = handle.status();
    assert_eq!(status.state, ProjectionState::Live);
    assert_eq!(status.events_applied, head);

    // A wait past the head is bounded.
    let started = Instant::now();
    match handle
        .wait_for(head + 1_000, Duration::from_millis(200))
        .await
    {
        Err(WaitError::Lagging { checkpoint, wanted }) => {
            assert_eq!((checkpoint, wanted), (head, head + 1_000))
        }
        other => panic!("expected Lagging, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    shutdown.trigger();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(handle.status().state, ProjectionState::Stopped);
    assert!(matches!(
        handle.wait_for(head + 1, Duration::from_secs(1)).await,
        Err(WaitError::Stopped)
    ));
    // A clean stop frees the lock for the next process.
    let admin = ficus_store::postgres::pool(&config).unwrap();
    let deadline = Instant::now() + WAIT;
    while lock_holder(&admin).await.is_some() {
        assert!(Instant::now() < deadline, "lock still held after shutdown");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_active_process_dies() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "pgprojkill");
    let admin = ficus_store::postgres::pool(&config).unwrap();
    // Three processes: one appends, two run the projection.
    let writer = open(&config).await;
    append_some(writer.as_ref(), 100, 0).await;
    let (a, b) = (open(&config).await, open(&config).await);
    let (sd_a, sd_b) = (Shutdown::new(), Shutdown::new());
    let (ha, ta) = spawn(&a, &sd_a);
    let (hb, tb) = spawn(&b, &sd_b);
    let mut procs = vec![(ha, ta, a, sd_a), (hb, tb, b, sd_b)];
    let active = one_active(&[&procs[0].0, &procs[1].0]).await;
    let first_generation = procs[active].0.status().generation.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let appender = workload(writer.clone(), stop.clone(), made.clone(), 100);
    // Mid-stream: the active one has applied part of the new appends.
    let start = writer.head_position();
    eventually("active runner applying the live appends", || {
        procs[active].0.status().checkpoint >= start + 20
    })
    .await;

    // kill -9: its lock session ends (PostgreSQL rolls back whatever it was doing) and the
    // process runs no more code.
    let pid = lock_holder(&admin)
        .await
        .expect("the active runner holds the lock");
    terminate(&admin, pid).await;
    let (dead_handle, dead_task, dead_store, _dead_shutdown) = procs.remove(active);
    dead_task.abort();
    let _ = dead_task.await;
    drop(dead_store);
    let applied_by_dead = dead_handle.status().checkpoint;
    let (survivor, task, store, shutdown) = procs.pop().unwrap();

    eventually("the standby takes over", || {
        survivor
            .status()
            .generation
            .is_some_and(|g| g > first_generation)
    })
    .await;
    let appends_at_takeover = made.load(Ordering::SeqCst);
    // Appends go on after the takeover, then stop.
    eventually("appends after the takeover", || {
        made.load(Ordering::SeqCst) >= appends_at_takeover + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(WAIT, appender).await.unwrap().unwrap();

    let head = writer.head_position();
    assert!(head > applied_by_dead, "the standby had work to take over");
    assert_eq!(survivor.wait_for(head, WAIT).await.unwrap(), head);
    assert_eq!(survivor.checkpoint().await.unwrap(), head);
    assert_eq!(assert_exactly_once(&admin, writer.as_ref()).await, head);
    assert_eq!(
        table_generation(&admin).await as u64,
        survivor.status().generation.unwrap()
    );
    // The dead process's handle still answers from the table.
    assert_eq!(dead_handle.checkpoint().await.unwrap(), head);

    shutdown.trigger();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    drop(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_or_disconnected_runner_steps_down_and_nothing_is_applied_twice() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "pgprojfence");
    let admin = ficus_store::postgres::pool(&config).unwrap();
    let writer = open(&config).await;
    append_some(writer.as_ref(), 50, 0).await;
    let (a, b) = (open(&config).await, open(&config).await);
    let (sd_a, sd_b) = (Shutdown::new(), Shutdown::new());
    let (ha, ta) = spawn(&a, &sd_a);
    let (hb, tb) = spawn(&b, &sd_b);
    let handles = [&ha, &hb];
    let active = one_active(&handles).await;
    let g1 = handles[active].status().generation.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let appender = workload(writer.clone(), stop.clone(), made.clone(), 50);

    // 1. Fenced: a takeover it did not see (the generation moved) while its session lives.
    //    Its next batch or check refuses to write, it steps down and closes its session.
    let conn = admin.get().await.unwrap();
    conn.execute(
        "UPDATE ficus_projection_checkpoints SET generation = generation + 1 WHERE name = $1",
        &[&NAME],
    )
    .await
    .unwrap();
    drop(conn);
    eventually("a new leadership after the fence", || {
        handles
            .iter()
            .any(|h| h.status().generation.is_some_and(|g| g > g1 + 1))
    })
    .await;
    let active = one_active(&handles).await;
    let g2 = handles[active].status().generation.unwrap();

    // 2. Disconnected: its lock session is terminated while the runner keeps running. It
    //    must notice, step down and compete again; whoever wins goes on from the checkpoint.
    let pid = lock_holder(&admin)
        .await
        .expect("the active runner holds the lock");
    terminate(&admin, pid).await;
    eventually("a new leadership after the disconnect", || {
        handles
            .iter()
            .any(|h| h.status().generation.is_some_and(|g| g > g2))
    })
    .await;
    let active = one_active(&handles).await;
    let made_now = made.load(Ordering::SeqCst);
    eventually("appends after the second takeover", || {
        made.load(Ordering::SeqCst) >= made_now + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    tokio::time::timeout(WAIT, appender).await.unwrap().unwrap();

    let head = writer.head_position();
    assert_eq!(handles[active].wait_for(head, WAIT).await.unwrap(), head);
    // The standby answers read-your-writes from the table.
    assert_eq!(
        handles[1 - active].wait_for(head, WAIT).await.unwrap(),
        head
    );
    assert_eq!(assert_exactly_once(&admin, writer.as_ref()).await, head);
    assert_eq!(one_active(&handles).await, active, "leadership is stable");

    sd_a.trigger();
    sd_b.trigger();
    for t in [ta, tb] {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_from_any_process_gives_the_same_read_model() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "pgprojrebuild");
    let admin = ficus_store::postgres::pool(&config).unwrap();
    let (a, b) = (open(&config).await, open(&config).await);
    append_some(a.as_ref(), 150, 0).await;
    let (sd_a, sd_b) = (Shutdown::new(), Shutdown::new());
    let (ha, ta) = spawn(&a, &sd_a);
    let (hb, tb) = spawn(&b, &sd_b);
    let handles = [&ha, &hb];
    let active = one_active(&handles).await;
    let head = a.head_position();
    assert_eq!(handles[active].wait_for(head, WAIT).await.unwrap(), head);
    let before = read_model(&admin).await;

    // From the standby: recorded in the table, performed by the active process.
    let applied = handles[active].status().events_applied;
    handles[1 - active].rebuild(WAIT).await.unwrap();
    assert_eq!(handles[active].wait_for(head, WAIT).await.unwrap(), head);
    eventually("live after the rebuild", || {
        let s = handles[active].status();
        s.state == ProjectionState::Live && s.events_applied == applied + head
    })
    .await;
    assert_eq!(read_model(&admin).await, before);
    assert_exactly_once(&admin, a.as_ref()).await;

    // From the active process itself, with appends in between.
    append_some(a.as_ref(), 30, 5).await;
    let head = a.head_position();
    handles[active].rebuild(WAIT).await.unwrap();
    assert_eq!(handles[active].wait_for(head, WAIT).await.unwrap(), head);
    assert_exactly_once(&admin, a.as_ref()).await;

    // With no runner anywhere, the request waits in the table for the next active one.
    sd_a.trigger();
    sd_b.trigger();
    for t in [ta, tb] {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    assert!(matches!(
        ha.rebuild(Duration::from_millis(200)).await,
        Err(PgRebuildError::Pending { .. })
    ));
    let shutdown = Shutdown::new();
    let (hc, tc) = spawn(&b, &shutdown);
    // Blue/green: the next runner serves the copy at the head at once and finishes the
    // rebuild (the earlier one, left unfinished by the shutdown, which the request joins).
    eventually("rebuilt by the next active runner", || {
        let s = hc.status();
        s.state == ProjectionState::Live && s.checkpoint == head && s.rebuild.is_none()
    })
    .await;
    assert_exactly_once(&admin, a.as_ref()).await;
    shutdown.trigger();
    tokio::time::timeout(WAIT, tc).await.unwrap().unwrap();
}

/// A process that runs no runner (a query process) follows the projection: its status shows
/// the checkpoint another process commits, its read-your-writes waits end when that process
/// has applied, and after a rebuild elsewhere a wait does not trust the stale checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sees_what_another_process_applies() {
    let Some(url) = test_url() else {
        eprintln!("skipped: FICUS_TEST_PG_URL is not set");
        return;
    };
    let (config, _guard) = fresh_schema(&url, "pgprojfollow");
    let admin = ficus_store::postgres::pool(&config).unwrap();
    let (runner_store, follower_store) = (open(&config).await, open(&config).await);
    let (sd_follow, sd_run) = (Shutdown::new(), Shutdown::new());
    // Followed before any runner exists: nothing applied, the tables are not even there.
    let (follower, follow_task) = PgProjectionHandle::follow(
        NAME,
        follower_store.pool().clone(),
        follower_store.clone(),
        sd_follow.clone(),
    );
    assert!(!follower.runs_here());
    assert_eq!(follower.checkpoint().await.unwrap(), 0);
    assert!(matches!(
        follower.wait_for(1, Duration::from_millis(200)).await,
        Err(WaitError::Lagging {
            checkpoint: 0,
            wanted: 1
        })
    ));
    append_some(runner_store.as_ref(), 40, 3).await;
    let head = runner_store.head_position();
    let (runner, run_task) = spawn(&runner_store, &sd_run);
    assert_eq!(follower.wait_for(head, WAIT).await.unwrap(), head);
    eventually("the follower's status reaches the head", || {
        let s = follower.status();
        s.checkpoint == head && s.state == ProjectionState::Standby && !s.is_active()
    })
    .await;
    assert_eq!(
        ficus_runtime::ReadModelHandle::Postgres(follower.clone()).mode(),
        "follower"
    );
    assert_eq!(
        ficus_runtime::ReadModelHandle::Postgres(runner.clone()).mode(),
        "active"
    );

    // A rebuild requested by the follower waits in the table while no runner is active.
    sd_run.trigger();
    tokio::time::timeout(WAIT, run_task).await.unwrap().unwrap();
    // A rebuild under way (as a crashed active runner leaves it in the row) is what the
    // follower reports as its progress, while the serving copy's checkpoint stays.
    admin
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE ficus_projection_checkpoints
             SET next_schema = 'not_created', next_position = 7, rebuild_target = $1",
            &[&(head as i64)],
        )
        .await
        .unwrap();
    eventually("the follower reports the rebuild's progress", || {
        let s = follower.status();
        s.checkpoint == head
            && s.rebuild
                == Some(ficus_runtime::RebuildProgress {
                    position: 7,
                    target: head,
                    error: None,
                })
    })
    .await;
    admin
        .get()
        .await
        .unwrap()
        .execute(
            "UPDATE ficus_projection_checkpoints SET next_schema = NULL, next_position = 0",
            &[],
        )
        .await
        .unwrap();
    eventually("the follower reports no rebuild", || {
        follower.status().rebuild.is_none()
    })
    .await;
    assert!(matches!(
        follower.rebuild(Duration::from_millis(200)).await,
        Err(PgRebuildError::Pending { .. })
    ));
    // The next runner performs it: it replays the whole log although the checkpoint it took
    // over was already the head.
    let sd_run = Shutdown::new();
    let (runner, run_task) = spawn(&runner_store, &sd_run);
    eventually("the pending rebuild is performed", || {
        let s = runner.status();
        s.events_applied == head && s.checkpoint == head
    })
    .await;
    assert_eq!(follower.wait_for(head, WAIT).await.unwrap(), head);
    assert_exactly_once(&admin, runner_store.as_ref()).await;

    sd_follow.trigger();
    tokio::time::timeout(WAIT, follow_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(follower.status().state, ProjectionState::Stopped);
    sd_run.trigger();
    tokio::time::timeout(WAIT, run_task).await.unwrap().unwrap();
}
