//! Kill -9 at random moments loses no acknowledged append and never leaves a torn batch: a
//! child process appends from many tasks and prints each acknowledged batch; the test kills it
//! with SIGKILL, reopens the store and checks every acknowledged event is there, intact, and
//! every batch in the log is whole. Seeded: `FICUS_TEST_SEED` reproduces a run,
//! `FICUS_KILL_ROUNDS` sets the number of rounds (default 20).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ficus_store::sqlite::{SqliteConfig, SqliteEventStore};
use ficus_store::EventStore;
use rand::{Rng, SeedableRng};

struct Ack {
    first: u64,
    last: u64,
    batch: String,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("ACK ")?.split(' ');
    Some(Ack {
        first: parts.next()?.parse().ok()?,
        last: parts.next()?.parse().ok()?,
        batch: parts.next()?.to_owned(),
    })
}

/// Runs the child until it is killed; returns the batches it acknowledged.
fn run_and_kill(dir: &std::path::Path, kill_after: Duration) -> Vec<Ack> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ficus"))
        .args(["debug", "append-loop", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ficus");
    let stdout = child.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut acks = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "READY" {
                let _ = ready_tx.send(());
            } else if let Some(a) = parse_ack(&line) {
                acks.push(a);
            }
            // A line cut by the kill does not parse and is not an acknowledgement.
        }
        acks
    });
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("child did not start");
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL"); // std sends SIGKILL on Unix
    child.wait().expect("reap child");
    reader.join().expect("reader thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_loses_no_acknowledged_append() {
    let seed: u64 = std::env::var("FICUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let rounds: usize = std::env::var("FICUS_KILL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("kill -9 campaign: seed {seed}, {rounds} rounds (FICUS_TEST_SEED={seed} reproduces the kill times)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Ack> = Vec::new();
    let mut total_acked_events = 0u64;
    for round in 0..rounds {
        let kill_after = Duration::from_millis(rng.gen_range(5..250));
        let acks = run_and_kill(dir.path(), kill_after);
        total_acked_events += acks.iter().map(|a| a.last - a.first + 1).sum::<u64>();
        acked.extend(acks);

        let store = SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default())
            .expect("reopen after kill");
        let head = store.head_position();
        let mut log = Vec::new();
        while (log.len() as u64) < head {
            let page = store.read_all(log.len() as u64 + 1, 10_000).await.unwrap();
            assert!(
                !page.is_empty(),
                "round {round}: log shorter than head {head}"
            );
            log.extend(page);
        }
        // The global log is gapless and per-stream versions are contiguous.
        let mut versions: HashMap<String, u64> = HashMap::new();
        for (i, e) in log.iter().enumerate() {
            assert_eq!(e.position, i as u64 + 1, "round {round}: gap in the log");
            let v = versions.entry(e.stream_id.to_string()).or_default();
            *v += 1;
            assert_eq!(
                e.version, *v,
                "round {round}: version gap in {}",
                e.stream_id
            );
        }
        // Every batch in the log is whole: all n events, consecutive, in order.
        let mut batches: BTreeMap<String, Vec<(u64, u64, u64)>> = BTreeMap::new();
        for e in &log {
            let b = e.payload["batch"].as_str().expect("batch id").to_owned();
            let k = e.payload["k"].as_u64().expect("k");
            let n = e.payload["n"].as_u64().expect("n");
            batches.entry(b).or_default().push((e.position, k, n));
        }
        for (b, evs) in &batches {
            let n = evs[0].2;
            assert_eq!(evs.len() as u64, n, "round {round}: torn batch {b}");
            for (j, (pos, k, _)) in evs.iter().enumerate() {
                assert_eq!(*k, j as u64, "round {round}: batch {b} out of order");
                assert_eq!(
                    *pos,
                    evs[0].0 + j as u64,
                    "round {round}: batch {b} not contiguous"
                );
            }
        }
        // Every acknowledged batch is there, at the positions it was acknowledged with.
        for a in &acked {
            let evs = batches.get(&a.batch).unwrap_or_else(|| {
                panic!(
                    "round {round}: acknowledged batch {} lost (seed {seed})",
                    a.batch
                )
            });
            assert_eq!(evs[0].0, a.first, "round {round}: batch {} moved", a.batch);
            assert_eq!(
                evs.last().unwrap().0,
                a.last,
                "round {round}: batch {} moved",
                a.batch
            );
        }
        drop(store);
    }
    eprintln!("kill -9 campaign: {rounds} rounds, {} acknowledged batches ({total_acked_events} events) all present", acked.len());
    assert!(
        !acked.is_empty(),
        "the child never acknowledged anything: the test proved nothing"
    );
}
