//! Committed events travel from the PostgreSQL outbox over NATS JetStream to other processes:
//! a live subscriber in another process sees an append within 2 s although its store polls
//! only every 30 s, both processes see the same gap-free order, the stream holds each event
//! once even when the relay publishes a range again, no outbox row is lost while NATS is
//! away, the outbox drains to empty, and a round stuck on a lock gives up within its timeout. Runs against the real servers named by
//! `FICUS_TEST_PG_URL` and `FICUS_TEST_NATS_URL`; skipped without either. Every test uses its
//! own schema and JetStream stream, and deletes both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ficus_core::{EventType, ExpectedVersion, NewEvent, RecordedEvent, StreamId};
use ficus_store::nats::testing::StreamGuard;
use ficus_store::nats::{
    test_nats_url, BusConfig, BusSubscriber, NatsBus, MSG_ID_HEADER, POSITION_HEADER,
};
use ficus_store::postgres::testing::{fresh_schema, test_url};
use ficus_store::postgres::{
    announce_from_bus, outbox_backlog, OutboxRelay, PgConfig, PgEventStore, RelayConfig,
    RelayError, RelayHandle,
};
use ficus_store::{new_event, EventStore, Subscription};
use serde_json::json;

/// Both service URLs, or `None` with a note on stderr.
fn services() -> Option<(String, String)> {
    match (test_url(), test_nats_url()) {
        (Some(pg), Some(nats)) => Some((pg, nats)),
        _ => {
            eprintln!(
                "skipped: set FICUS_TEST_PG_URL and FICUS_TEST_NATS_URL to run the NATS bus tests"
            );
            None
        }
    }
}

/// A config whose stream and subjects no other run uses.
fn bus_config(nats_url: &str) -> BusConfig {
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let unique = &unique[unique.len() - 16..];
    BusConfig {
        stream_name: format!("FICUS_TEST_{unique}"),
        subject_prefix: format!("ficus.test{unique}.events"),
        max_age: Duration::from_secs(600),
        max_bytes: 64 << 20,
        ..BusConfig::new(nats_url, "test")
    }
}

/// Deletes the test's JetStream stream when dropped, even after a failed assertion.
/// A store config where only the bus can deliver other processes' commits quickly.
fn pg_config(mut config: PgConfig) -> PgConfig {
    config.pool_size = 6;
    config.outbox = true;
    config.listen_notify = false;
    config.poll_interval = Duration::from_secs(30);
    config
}

/// One "process": a store, its relay and its bus subscriber.
struct Process {
    relay: RelayHandle,
    announcer: BusSubscriber,
    store: Arc<PgEventStore>,
}

async fn start(config: PgConfig, bus: &NatsBus) -> Process {
    let store = Arc::new(PgEventStore::open(config).await.expect("open the store"));
    let announcer = announce_from_bus(bus, &store)
        .await
        .expect("subscribe to the bus");
    let relay = OutboxRelay::new(store.clone(), bus.clone(), RelayConfig::default()).spawn();
    Process {
        relay,
        announcer,
        store,
    }
}

fn ev(n: u64) -> NewEvent {
    new_event(EventType::new("Noted").unwrap(), json!({ "n": n }))
}

/// A subscription from the start of the (empty) log, driven until it is live, so whatever it
/// delivers next came through the live feed, not a catch-up read.
async fn live_subscription(store: &Arc<PgEventStore>) -> Subscription {
    let mut sub = Subscription::new(store.clone() as Arc<dyn EventStore>, 1);
    let nothing = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(nothing.is_err(), "the log should be empty");
    assert!(sub.is_live());
    sub
}

async fn collect(sub: &mut Subscription, n: usize, deadline: Instant) -> Vec<RecordedEvent> {
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(e) => got.push(e.expect("subscription")),
            Err(_) => panic!("only {} of {n} events arrived in time", got.len()),
        }
    }
    got
}

async fn wait_for_empty_outbox(store: &PgEventStore) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let backlog = outbox_backlog(store).await.unwrap();
        if backlog.rows == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox still holds {backlog:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_in_one_process_reaches_a_live_subscriber_in_another_within_two_seconds() {
    let Some((pg, nats)) = services() else { return };
    let (config, _schema) = fresh_schema(&pg, "busone");
    let config = pg_config(config);
    let bus_config = bus_config(&nats);
    let _stream = StreamGuard(bus_config.clone());
    let bus = NatsBus::connect(bus_config).await.expect("connect to NATS");
    let a = start(config.clone(), &bus).await;
    let b = start(config, &bus).await;
    let mut sub = live_subscription(&b.store).await;

    let event = ev(1);
    let id = event.id;
    let sent = Instant::now();
    a.store
        .append(
            &StreamId::new("note-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![event],
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .expect("the event should arrive through the bus within 2 s")
        .unwrap();
    eprintln!("append on A to delivery on B: {:?}", sent.elapsed());
    assert_eq!((got.id, got.position), (id, 1));
    assert!(b.announcer.received() >= 1);
    wait_for_empty_outbox(&a.store).await;
    // Usually A's relay, woken by its commit; B's polling relay may take the row first.
    assert_eq!(a.relay.stats().published + b.relay.stats().published, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_appends_from_two_processes_arrive_at_both_in_the_same_gap_free_order() {
    const TASKS_PER_PROCESS: u64 = 4;
    const APPENDS_PER_TASK: u64 = 40;
    let Some((pg, nats)) = services() else { return };
    let (config, _schema) = fresh_schema(&pg, "busmany");
    let config = pg_config(config);
    let bus_config = bus_config(&nats);
    let _stream = StreamGuard(bus_config.clone());
    let bus = NatsBus::connect(bus_config).await.expect("connect to NATS");
    let a = start(config.clone(), &bus).await;
    let b = start(config, &bus).await;
    let mut sub_a = live_subscription(&a.store).await;
    let mut sub_b = live_subscription(&b.store).await;

    let started = Instant::now();
    let mut writers = Vec::new();
    for (p, store) in [&a.store, &b.store].into_iter().enumerate() {
        for t in 0..TASKS_PER_PROCESS {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                let mut events = 0;
                for i in 0..APPENDS_PER_TASK {
                    let stream = StreamId::new(format!("note-{p}-{t}-{}", i % 3)).unwrap();
                    let batch: Vec<_> = (0..1 + i % 3).map(|k| ev(i * 10 + k)).collect();
                    events += batch.len();
                    store
                        .append(&stream, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                }
                events
            }));
        }
    }
    let mut total = 0;
    for w in writers {
        total += w.await.unwrap();
    }
    // Far below the 30 s poll: only the bus can deliver the other process's commits this fast.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen_a = collect(&mut sub_a, total, deadline).await;
    let seen_b = collect(&mut sub_b, total, deadline).await;
    eprintln!(
        "{total} events from two processes delivered to both in {:?}",
        started.elapsed()
    );

    let positions: Vec<u64> = seen_a.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total as u64).collect::<Vec<_>>());
    assert_eq!(
        seen_a, seen_b,
        "both processes see the same events in the same order"
    );
    assert_eq!(seen_a, a.store.read_all(1, total).await.unwrap());

    wait_for_empty_outbox(&a.store).await;
    let relayed = a.relay.stats().published + b.relay.stats().published;
    assert_eq!(relayed, total as u64, "each event published once");
    assert_eq!(bus.stream_messages().await.unwrap(), total as u64);
    assert!(a.relay.stats().published > 0 && b.relay.stats().published > 0);
}

/// Runs rounds by hand until the outbox is empty; returns (events published, duplicates).
async fn drain(relay: &OutboxRelay) -> (usize, u64) {
    let (mut events, mut duplicates) = (0, 0);
    loop {
        let o = relay.relay_round().await.expect("relay round");
        if o.events == 0 {
            return (events, duplicates);
        }
        events += o.events;
        duplicates += o.duplicates;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republished_ranges_are_deduplicated_and_rows_survive_a_missing_stream() {
    let Some((pg, nats)) = services() else { return };
    let (config, _schema) = fresh_schema(&pg, "busdedup");
    let config = pg_config(config);
    let bus_config = bus_config(&nats);
    let _stream = StreamGuard(bus_config.clone());
    let bus = NatsBus::connect(bus_config).await.expect("connect to NATS");
    let store = Arc::new(PgEventStore::open(config).await.unwrap());
    // A small round limit so a group commit is cut across rounds.
    let relay = OutboxRelay::new(
        store.clone(),
        bus.clone(),
        RelayConfig {
            max_round_events: 7,
            ..RelayConfig::default()
        },
    );
    let stream = StreamId::new("note.eu-1").unwrap();
    for i in 0..3 {
        let batch = (0..10).map(|k| ev(i * 10 + k)).collect();
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    assert_eq!(outbox_backlog(&store).await.unwrap().events, 30);

    assert_eq!(drain(&relay).await, (30, 0));
    assert_eq!(outbox_backlog(&store).await.unwrap().rows, 0);
    assert_eq!(bus.stream_messages().await.unwrap(), 30);
    // One relay publishes in log order; every message names its event.
    let events = store.read_all(1, 100).await.unwrap();
    for (i, e) in events.iter().enumerate() {
        let (headers, body) = bus.stream_message(i as u64 + 1).await.unwrap();
        assert_eq!(
            headers.get(MSG_ID_HEADER).unwrap().as_str(),
            e.id.to_string()
        );
        assert_eq!(
            headers.get(POSITION_HEADER).unwrap().as_str(),
            e.position.to_string()
        );
        assert_eq!(body["id"], json!(e.id));
        assert_eq!(body["position"], json!(e.position));
        assert_eq!(body["stream"], json!("note.eu-1"));
        assert_eq!(body["data"], e.payload);
    }

    // A crash between publishing and deleting leaves the rows: put them back and relay again.
    store
        .pool()
        .get()
        .await
        .unwrap()
        .execute("INSERT INTO ficus_outbox VALUES (1, 30)", &[])
        .await
        .unwrap();
    assert_eq!(
        drain(&relay).await,
        (30, 30),
        "every re-publish is a duplicate"
    );
    assert_eq!(
        bus.stream_messages().await.unwrap(),
        30,
        "each event stored once"
    );
    assert_eq!(outbox_backlog(&store).await.unwrap().rows, 0);

    // NATS refuses (no stream for the subjects): the round rolls back and the rows stay.
    bus.delete_stream().await.unwrap();
    store
        .append(&stream, ExpectedVersion::Any, (0..5).map(ev).collect())
        .await
        .unwrap();
    let failed = relay.relay_round().await;
    assert!(matches!(failed, Err(RelayError::Bus(_))), "{failed:?}");
    assert_eq!(outbox_backlog(&store).await.unwrap().events, 5);
    assert!(relay.stats().last_error.is_some());
    bus.ensure_stream().await.unwrap();
    assert_eq!(drain(&relay).await, (5, 0));
    assert_eq!(bus.stream_messages().await.unwrap(), 5);
    assert_eq!(outbox_backlog(&store).await.unwrap().rows, 0);
    let stats = relay.stats();
    assert_eq!((stats.published, stats.duplicates), (65, 30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_relay_retries_until_nats_takes_the_events() {
    let Some((pg, nats)) = services() else { return };
    let (config, _schema) = fresh_schema(&pg, "busretry");
    let config = pg_config(config);
    let bus_config = bus_config(&nats);
    let _stream = StreamGuard(bus_config.clone());
    let bus = NatsBus::connect(bus_config).await.expect("connect to NATS");
    bus.delete_stream().await.unwrap();
    let store = Arc::new(PgEventStore::open(config).await.unwrap());
    let relay = OutboxRelay::new(store.clone(), bus.clone(), RelayConfig::default()).spawn();
    store
        .append(
            &StreamId::new("note-1").unwrap(),
            ExpectedVersion::Any,
            (0..3).map(ev).collect(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay.stats().retries < 2 {
        assert!(Instant::now() < deadline, "the relay should keep retrying");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(outbox_backlog(&store).await.unwrap().events, 3);
    bus.ensure_stream().await.unwrap();
    wait_for_empty_outbox(&store).await;
    assert_eq!(bus.stream_messages().await.unwrap(), 3);
    assert_eq!(relay.stats().published, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_stuck_on_a_lock_gives_up_within_its_timeout_and_the_next_one_publishes() {
    let Some((pg, nats)) = services() else { return };
    let (config, _schema) = fresh_schema(&pg, "busstuck");
    let config = pg_config(config);
    let bus_config = bus_config(&nats);
    let _stream = StreamGuard(bus_config.clone());
    let bus = NatsBus::connect(bus_config).await.expect("connect to NATS");
    let store = Arc::new(PgEventStore::open(config.clone()).await.unwrap());
    let round_timeout = Duration::from_millis(500);
    let relay = OutboxRelay::new(
        store.clone(),
        bus.clone(),
        RelayConfig {
            round_timeout,
            ..RelayConfig::default()
        },
    );
    let stream = StreamId::new("note.eu-1").unwrap();
    let batch = (0..5).map(ev).collect();
    store
        .append(&stream, ExpectedVersion::Any, batch)
        .await
        .unwrap();

    // Another session holds the outbox table: the round's row locks wait behind it, as they
    // would behind a connection that stopped answering.
    let holder_pool = ficus_store::postgres::pool(&config).unwrap();
    let mut holder = holder_pool.get().await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE ficus_outbox IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let started = Instant::now();
    let stuck = tokio::time::timeout(Duration::from_secs(10), relay.relay_round())
        .await
        .expect("a stuck round must give up within its timeout, not wait for the lock");
    let waited = started.elapsed();
    let err = stuck.expect_err("the round cannot have taken the locked rows");
    assert!(err.to_string().contains("no answer"), "{err}");
    assert!(
        waited >= round_timeout && waited < round_timeout * 4,
        "gave up after {waited:?}"
    );
    assert_eq!(relay.stats().rounds, 0);
    assert!(relay.stats().last_error.unwrap().contains("no answer"));
    assert_eq!(bus.stream_messages().await.unwrap(), 0);

    tx.rollback().await.unwrap();
    assert_eq!(drain(&relay).await, (5, 0));
    assert_eq!(bus.stream_messages().await.unwrap(), 5);
    assert_eq!(outbox_backlog(&store).await.unwrap().rows, 0);
}
