//! The conformance suite every [`JobQueue`](crate::JobQueue) adapter must pass.
//!
//! Each check is a public async function taking a fresh, empty queue. An adapter's test file
//! runs them all with [`job_queue_conformance!`](crate::job_queue_conformance):
//!
//! ```ignore
//! ficus_store::job_queue_conformance!(make_queue);
//! // where `async fn make_queue() -> (Arc<dyn JobQueue>, Box<dyn Any + Send>)`
//! // returns the queue and a guard (e.g. its temp dir) kept alive for the test.
//! ```
//!
//! Time is simulated: every call is given `now_ms` as a fixed base plus an offset, so delays
//! and lease expiry are exact and the suite never sleeps.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use crate::jobs::{JOB_ERROR_MAX_BYTES, JOB_NAME_MAX_BYTES, MAX_ENQUEUE_BATCH};
use crate::{
    BatchState, DeadFilter, Failure, Job, JobId, JobQueue, JobState, Lease, NewBatch, NewJob,
    QueueStats, StoreError,
};

/// The simulated clock's start.
const BASE: i64 = 1_000_000;
/// The visibility timeout most checks lease with.
const VIS: i64 = 1_000;

/// Generates one `#[tokio::test]` per job queue conformance check, each with a fresh queue
/// from `$make`.
#[macro_export]
macro_rules! job_queue_conformance {
    (optional $make:path) => {
        $crate::job_queue_conformance!(@list $make, optional);
    };
    (@list $make:path, $mode:ident) => {
        $crate::job_queue_conformance!(@tests $make, $mode;
            enqueue_assigns_ids_and_get_returns_the_job, invalid_enqueues_are_refused,
            lease_order_and_max, delayed_jobs_wait_for_run_at,
            expired_lease_is_leased_again_and_old_lease_is_void, heartbeat_extends_the_lease,
            complete_removes_the_job, fail_retry_then_dead, error_text_is_clipped,
            expired_last_attempt_goes_dead, release_does_not_count_the_attempt,
            unique_keys_dedupe_live_jobs, dead_letter_list_redrive_purge,
            stats_count_each_state, concurrent_leasers_never_share_a_job,
            expired_leases_compete_by_priority, ids_are_never_reused,
            redrive_keeps_unique_keys_unique, batch_counts_and_fans_in_once,
            batch_with_failures_still_fans_in, empty_batch_finishes_at_once,
            cancel_removes_unstarted_items, invalid_batches_are_refused);
    };
    ($make:path) => {
        $crate::job_queue_conformance!(@list $make, required);
    };
    (@tests $make:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((queue, _guard)) = $crate::conformance_factory!($mode, $make) else {
                    return;
                };
                $crate::conformance::jobs::$name(queue).await;
            }
        )*
    };
}

fn job(queue: &str, kind: &str) -> NewJob {
    NewJob::new(queue, kind, json!({ "kind": kind }))
}

fn at(queue: &str, kind: &str, run_at_ms: i64) -> NewJob {
    NewJob {
        run_at_ms: Some(run_at_ms),
        ..job(queue, kind)
    }
}

fn prio(queue: &str, kind: &str, priority: i32, run_at_ms: i64) -> NewJob {
    NewJob {
        priority,
        ..at(queue, kind, run_at_ms)
    }
}

/// The lease a freshly leased job carries, checking the job is in the leased state.
fn lease_of(j: &Job) -> Lease {
    assert_eq!(
        j.state,
        JobState::Leased,
        "a job returned by lease is Leased: {j:?}"
    );
    let l = j.lease.expect("a leased job carries its lease");
    assert_eq!(l.id, j.id, "the lease names its job");
    l
}

fn leases(jobs: &[Job]) -> Vec<Lease> {
    jobs.iter().map(lease_of).collect()
}

fn ids(jobs: &[Job]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

fn sorted(mut v: Vec<JobId>) -> Vec<JobId> {
    v.sort_unstable();
    v
}

async fn enqueue(q: &Arc<dyn JobQueue>, jobs: Vec<NewJob>, now: i64) -> Vec<JobId> {
    let n = jobs.len();
    let r = q.enqueue(jobs, now).await.unwrap();
    assert_eq!(r.len(), n, "one Enqueued per job");
    assert!(
        r.iter().all(|e| e.created),
        "jobs without a unique key are created: {r:?}"
    );
    r.iter().map(|e| e.id).collect()
}

async fn enqueue1(q: &Arc<dyn JobQueue>, job: NewJob, now: i64) -> JobId {
    enqueue(q, vec![job], now).await[0]
}

async fn lease(q: &Arc<dyn JobQueue>, queue: &str, max: usize, now: i64, vis: i64) -> Vec<Job> {
    let got = q.lease(queue, max, now, vis).await.unwrap();
    assert!(got.len() <= max, "lease returned more than max={max}");
    for j in &got {
        assert_eq!(j.queue, queue, "lease returns only jobs of its queue");
        assert_eq!(
            j.lease_expires_at_ms,
            Some(now + vis),
            "a lease expires at now + visibility"
        );
        lease_of(j);
    }
    got
}

/// Leases exactly one job and returns it with its lease.
async fn lease1(q: &Arc<dyn JobQueue>, queue: &str, now: i64, vis: i64) -> (Job, Lease) {
    let got = lease(q, queue, 1, now, vis).await;
    assert_eq!(
        got.len(),
        1,
        "expected one job leasable in {queue} at {now}"
    );
    let l = lease_of(&got[0]);
    (got.into_iter().next().unwrap(), l)
}

async fn get(q: &Arc<dyn JobQueue>, id: JobId) -> Job {
    q.get(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} should exist"))
}

/// The stats row of `queue`, if any (at most one).
async fn stats_of(q: &Arc<dyn JobQueue>, queue: &str, now: i64) -> Option<QueueStats> {
    let mut rows: Vec<QueueStats> = q
        .stats(now)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.queue == queue)
        .collect();
    assert!(rows.len() <= 1, "stats lists {queue} more than once");
    rows.pop()
}

fn qs(queue: &str, ready: u64, delayed: u64, in_flight: u64, dead: u64, wait: u64) -> QueueStats {
    QueueStats {
        queue: queue.into(),
        ready,
        delayed,
        in_flight,
        dead,
        oldest_ready_wait_ms: wait,
    }
}

pub async fn enqueue_assigns_ids_and_get_returns_the_job(q: Arc<dyn JobQueue>) {
    let qn = "enq";
    let payload = json!({
        "amount": 1250, "note": "é ünïcode ✓", "nested": {"a": [1, 2, null]},
        "big": 9_007_199_254_740_993_i64, "f": 0.5
    });
    let a = NewJob {
        priority: 3,
        max_attempts: 7,
        unique_key: Some("ua".into()),
        ..NewJob::new(qn, "send-email", payload.clone())
    };
    let r = q
        .enqueue(
            vec![
                a,
                at(qn, "b", BASE + 5_000),
                NewJob::new(qn, "c", json!(null)),
            ],
            BASE,
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 3);
    assert!(r.iter().all(|e| e.created), "all created: {r:?}");
    assert!(r[0].id > 0, "job ids are positive");
    assert!(
        r[0].id < r[1].id && r[1].id < r[2].id,
        "ids increase in enqueue order: {r:?}"
    );
    let d = enqueue1(&q, job("enq-2", "d"), BASE + 1).await;
    assert!(d > r[2].id, "ids increase across enqueue calls");

    assert_eq!(
        get(&q, r[0].id).await,
        Job {
            id: r[0].id,
            queue: qn.into(),
            kind: "send-email".into(),
            payload,
            priority: 3,
            state: JobState::Ready,
            attempts: 0,
            max_attempts: 7,
            run_at_ms: BASE,
            created_at_ms: BASE,
            last_error: None,
            unique_key: Some("ua".into()),
            lease: None,
            lease_expires_at_ms: None,
            batch_id: None,
        },
        "get returns the enqueued job, ready, run_at = now when not given"
    );
    let b = get(&q, r[1].id).await;
    assert_eq!(
        (b.state, b.attempts, b.run_at_ms, b.max_attempts, b.priority),
        (JobState::Ready, 0, BASE + 5_000, 25, 0)
    );
    assert_eq!(get(&q, r[2].id).await.payload, json!(null));
    assert_eq!(get(&q, d).await.queue, "enq-2");
    assert_eq!(q.get(d + 1_000).await.unwrap(), None, "unknown id: None");
    assert!(
        q.enqueue(vec![], BASE).await.unwrap().is_empty(),
        "an empty enqueue returns nothing"
    );
}

pub async fn invalid_enqueues_are_refused(q: Arc<dyn JobQueue>) {
    let qn = "inv";
    enqueue1(&q, job(qn, "ok"), BASE).await;
    let before = q.stats(BASE).await.unwrap();
    let long = "k".repeat(JOB_NAME_MAX_BYTES + 1);
    let bad: Vec<(&str, NewJob)> = vec![
        ("empty queue name", job("", "k")),
        ("empty kind", job(qn, "")),
        ("kind over the limit", job(qn, &long)),
        ("queue name over the limit", job(&long, "k")),
        (
            "max_attempts 0",
            NewJob {
                max_attempts: 0,
                ..job(qn, "k")
            },
        ),
        (
            "empty unique key",
            NewJob {
                unique_key: Some(String::new()),
                ..job(qn, "k")
            },
        ),
    ];
    for (what, j) in bad {
        // A valid job before the bad one, in a queue that has none: all or nothing.
        let batch = vec![job(qn, "ok"), job("inv-fresh", "ok"), j];
        match q.enqueue(batch, BASE).await {
            Err(StoreError::Invalid(_)) => {}
            other => panic!("{what}: expected StoreError::Invalid, got {other:?}"),
        }
        assert_eq!(
            q.stats(BASE).await.unwrap(),
            before,
            "{what}: nothing enqueued"
        );
    }
    let too_many = (0..MAX_ENQUEUE_BATCH + 1)
        .map(|_| job("inv-fresh", "k"))
        .collect();
    assert!(
        matches!(q.enqueue(too_many, BASE).await, Err(StoreError::Invalid(_))),
        "more than MAX_ENQUEUE_BATCH jobs is Invalid"
    );
    assert_eq!(q.stats(BASE).await.unwrap(), before, "nothing enqueued");
    // Exactly at the name limit is fine.
    let max = "k".repeat(JOB_NAME_MAX_BYTES);
    let id = enqueue1(&q, job(&max, &max), BASE).await;
    assert_eq!(get(&q, id).await.kind, max);
}

pub async fn lease_order_and_max(q: Arc<dyn JobQueue>) {
    let qn = "order";
    let ids = enqueue(
        &q,
        vec![
            prio(qn, "a", 0, BASE - 300),
            prio(qn, "b", 5, BASE - 100),
            prio(qn, "c", 5, BASE - 200),
            prio(qn, "d", 0, BASE - 300),
            prio(qn, "e", -1, BASE - 1_000),
            prio(qn, "f", 10, BASE + 500), // delayed: not yet
            prio("order-other", "g", 100, BASE - 5_000),
        ],
        BASE,
    )
    .await;
    let (a, b, c, d, e) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    let mut held = Vec::new();
    for (want, name) in [(c, "c"), (b, "b"), (a, "a"), (d, "d"), (e, "e")] {
        let (j, l) = lease1(&q, qn, BASE, VIS).await;
        assert_eq!(
            j.id, want,
            "lease order: priority desc, run_at asc, id asc; expected {name}"
        );
        assert_eq!(j.attempts, 1, "leasing counts an attempt");
        assert_eq!(j.kind, name);
        held.push(l);
    }
    assert!(
        lease(&q, qn, 10, BASE, VIS).await.is_empty(),
        "leased jobs are not leased again while the lease holds; delayed ones wait"
    );
    assert!(
        lease(&q, qn, 10, BASE + 400, VIS).await.is_empty(),
        "still held, f still delayed"
    );
    let got_c = get(&q, c).await;
    assert_eq!(
        (
            got_c.state,
            got_c.attempts,
            got_c.lease,
            got_c.lease_expires_at_ms
        ),
        (JobState::Leased, 1, Some(held[0]), Some(BASE + VIS)),
        "get shows the lease"
    );
    assert_eq!(
        get(&q, ids[6]).await.state,
        JobState::Ready,
        "other queue untouched"
    );

    // `max` caps a lease; one call takes the best `max` jobs.
    let qm = "order-max";
    let ids = enqueue(
        &q,
        vec![
            prio(qm, "p1", 1, BASE),
            prio(qm, "p3", 3, BASE),
            prio(qm, "p2", 2, BASE),
            prio(qm, "p3", 3, BASE),
            prio(qm, "p0", 0, BASE),
        ],
        BASE,
    )
    .await;
    let first = lease(&q, qm, 3, BASE, VIS).await;
    assert_eq!(
        sorted(self::ids(&first)),
        sorted(vec![ids[1], ids[2], ids[3]]),
        "a lease of max 3 takes the 3 best jobs"
    );
    let second = lease(&q, qm, 3, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&second)), vec![ids[0], ids[4]]);
    assert!(lease(&q, qm, 3, BASE, VIS).await.is_empty());
}

pub async fn delayed_jobs_wait_for_run_at(q: Arc<dyn JobQueue>) {
    let qn = "delay";
    let ids = enqueue(
        &q,
        vec![
            at(qn, "later", BASE + 1_000),
            job(qn, "now"),
            at(qn, "much-later", BASE + 2_000),
        ],
        BASE,
    )
    .await;
    assert_eq!(
        stats_of(&q, qn, BASE).await,
        Some(qs(qn, 1, 2, 0, 0, 0)),
        "future run_at counts as delayed, not ready"
    );
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(self::ids(&got), vec![ids[1]], "only the due job is leased");
    assert_eq!(q.complete(&leases(&got)).await.unwrap(), vec![true]);
    assert!(
        lease(&q, qn, 10, BASE + 999, VIS).await.is_empty(),
        "not leased before run_at"
    );
    assert_eq!(
        stats_of(&q, qn, BASE + 999).await,
        Some(qs(qn, 0, 2, 0, 0, 0))
    );
    assert_eq!(
        stats_of(&q, qn, BASE + 1_000).await,
        Some(qs(qn, 1, 1, 0, 0, 0)),
        "due at run_at exactly"
    );
    assert_eq!(
        stats_of(&q, qn, BASE + 1_250).await,
        Some(qs(qn, 1, 1, 0, 0, 250)),
        "oldest_ready_wait_ms counts from run_at"
    );
    let got = lease(&q, qn, 10, BASE + 1_000, VIS).await;
    assert_eq!(self::ids(&got), vec![ids[0]], "leased at run_at");
    assert_eq!(q.complete(&leases(&got)).await.unwrap(), vec![true]);
    let got = lease(&q, qn, 10, BASE + 2_500, VIS).await;
    assert_eq!(self::ids(&got), vec![ids[2]], "leased after run_at");
}

pub async fn expired_lease_is_leased_again_and_old_lease_is_void(q: Arc<dyn JobQueue>) {
    let qn = "expire";
    let id = enqueue1(&q, job(qn, "slow"), BASE).await;
    let (_, old) = lease1(&q, qn, BASE, VIS).await;
    assert!(lease(&q, qn, 10, BASE + VIS / 2, VIS).await.is_empty());
    let (j, new) = lease1(&q, qn, BASE + VIS + 500, VIS).await;
    assert_eq!(j.id, id);
    assert_eq!(j.attempts, 2, "the re-lease counts a second attempt");
    assert_ne!(old.token, new.token, "a new lease gets a new token");
    let now = BASE + VIS + 600;
    assert_eq!(
        q.heartbeat(&[old], now, VIS).await.unwrap(),
        vec![false],
        "old lease cannot heartbeat"
    );
    assert!(
        !q.fail(old, "late", Failure::RetryAt { at_ms: now }, now)
            .await
            .unwrap(),
        "old lease cannot fail"
    );
    assert!(
        !q.fail(old, "late", Failure::Dead, now).await.unwrap(),
        "old lease cannot fail to dead"
    );
    assert_eq!(
        q.release(&[old]).await.unwrap(),
        vec![false],
        "old lease cannot release"
    );
    assert_eq!(
        q.complete(&[old]).await.unwrap(),
        vec![false],
        "old lease cannot complete"
    );
    let g = get(&q, id).await;
    assert_eq!(
        (
            g.state,
            g.attempts,
            g.lease,
            g.last_error,
            g.lease_expires_at_ms
        ),
        (
            JobState::Leased,
            2,
            Some(new),
            None,
            Some(BASE + VIS + 500 + VIS)
        ),
        "the old lease's calls changed nothing"
    );
    assert_eq!(q.heartbeat(&[new], now, VIS).await.unwrap(), vec![true]);
    assert_eq!(q.complete(&[new]).await.unwrap(), vec![true]);
    assert_eq!(q.get(id).await.unwrap(), None);
}

pub async fn heartbeat_extends_the_lease(q: Arc<dyn JobQueue>) {
    let qn = "hb";
    let ids = enqueue(&q, vec![job(qn, "beating"), job(qn, "silent")], BASE).await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&got)), ids);
    let ls = leases(&got);
    let beating = *ls.iter().find(|l| l.id == ids[0]).unwrap();
    let bogus = Lease {
        id: ids[1] + 1_000,
        token: beating.token,
    };
    assert_eq!(
        q.heartbeat(&[beating, bogus], BASE + 800, VIS)
            .await
            .unwrap(),
        vec![true, false]
    );
    let g = get(&q, ids[0]).await;
    assert_eq!(
        (g.state, g.attempts, g.lease, g.lease_expires_at_ms),
        (JobState::Leased, 1, Some(beating), Some(BASE + 800 + VIS)),
        "heartbeat moves the expiry to now + visibility, counts no attempt, keeps the token"
    );
    let again = lease(&q, qn, 10, BASE + 1_200, VIS).await;
    assert_eq!(
        self::ids(&again),
        vec![ids[1]],
        "only the job without heartbeat is re-leased at the old expiry"
    );
    let late = lease(&q, qn, 10, BASE + 1_900, VIS).await;
    assert_eq!(
        self::ids(&late),
        vec![ids[0]],
        "leased again after the extended expiry"
    );
    assert_eq!(late[0].attempts, 2);
    assert_eq!(
        q.heartbeat(&[beating], BASE + 1_900, VIS).await.unwrap(),
        vec![false],
        "a heartbeat cannot revive an expired, re-leased lease"
    );
}

pub async fn complete_removes_the_job(q: Arc<dyn JobQueue>) {
    let qn = "done";
    let ids = enqueue(&q, vec![job(qn, "a"), job(qn, "b"), job(qn, "c")], BASE).await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&got)), ids);
    let l: Vec<Lease> = ids
        .iter()
        .map(|id| *leases(&got).iter().find(|l| l.id == *id).unwrap())
        .collect();
    assert_eq!(q.complete(&[l[0]]).await.unwrap(), vec![true]);
    assert_eq!(q.get(ids[0]).await.unwrap(), None, "completed job is gone");
    assert_eq!(
        q.complete(&[l[0]]).await.unwrap(),
        vec![false],
        "completing twice"
    );
    // b's and c's leases expire and both are leased again: their first leases are stale.
    let again = lease(&q, qn, 10, BASE + 2 * VIS, VIS).await;
    assert_eq!(sorted(self::ids(&again)), ids[1..]);
    let relet = leases(&again);
    let b2 = *relet.iter().find(|l| l.id == ids[1]).unwrap();
    let c2 = *relet.iter().find(|l| l.id == ids[2]).unwrap();
    let (b_stale, c_stale) = (l[1], l[2]);
    let bogus = Lease {
        id: ids[2] + 1_000,
        token: 1,
    };
    assert_eq!(
        q.complete(&[b_stale, c2, b2, bogus, l[0], c_stale])
            .await
            .unwrap(),
        vec![false, true, true, false, false, false],
        "batch complete: [stale b, c2, b2, unknown id, completed a, stale c]"
    );
    for id in ids {
        assert_eq!(q.get(id).await.unwrap(), None);
    }
    assert_eq!(
        stats_of(&q, qn, BASE + 3 * VIS).await,
        None,
        "a queue without jobs is absent from stats"
    );
}

pub async fn fail_retry_then_dead(q: Arc<dyn JobQueue>) {
    let qn = "fail";
    let id = enqueue1(&q, job(qn, "flaky"), BASE).await;
    let (_, l1) = lease1(&q, qn, BASE, VIS).await;
    let retry = Failure::RetryAt {
        at_ms: BASE + 5_000,
    };
    assert!(q.fail(l1, "boom", retry, BASE + 10).await.unwrap());
    let g = get(&q, id).await;
    assert_eq!(
        (g.state, g.attempts, g.run_at_ms, g.last_error.as_deref()),
        (JobState::Ready, 1, BASE + 5_000, Some("boom")),
        "RetryAt: ready again at `at`, attempt and error kept"
    );
    assert_eq!((g.lease, g.lease_expires_at_ms), (None, None));
    assert!(
        !q.fail(l1, "again", retry, BASE + 11).await.unwrap(),
        "failing twice with one lease"
    );
    assert!(
        lease(&q, qn, 10, BASE + 4_999, VIS).await.is_empty(),
        "not leasable before RetryAt"
    );
    assert_eq!(
        stats_of(&q, qn, BASE + 4_999).await,
        Some(qs(qn, 0, 1, 0, 0, 0))
    );
    let (j, l2) = lease1(&q, qn, BASE + 5_000, VIS).await;
    assert_eq!(j.attempts, 2);
    assert_eq!(
        j.last_error.as_deref(),
        Some("boom"),
        "last_error kept while retrying"
    );
    assert!(q
        .fail(l2, "second", Failure::Dead, BASE + 5_001)
        .await
        .unwrap());
    let g = get(&q, id).await;
    assert_eq!(
        (g.state, g.attempts, g.last_error.as_deref(), g.lease),
        (JobState::Dead, 2, Some("second"), None),
        "Dead: in the dead-letter queue with its last error and attempts"
    );
    let dead = q.list_dead(qn, 10).await.unwrap();
    assert_eq!(dead, vec![g]);
    assert!(lease(&q, qn, 10, BASE + 100_000, VIS).await.is_empty());
    assert_eq!(q.complete(&[l2]).await.unwrap(), vec![false]);
    assert_eq!(
        stats_of(&q, qn, BASE + 100_000).await,
        Some(qs(qn, 0, 0, 0, 1, 0))
    );
}

pub async fn error_text_is_clipped(q: Arc<dyn JobQueue>) {
    let qn = "clip";
    // 1 + 3k bytes: JOB_ERROR_MAX_BYTES falls inside a 3-byte character.
    let long = format!("x{}", "€".repeat(JOB_ERROR_MAX_BYTES));
    let mut end = JOB_ERROR_MAX_BYTES;
    while !long.is_char_boundary(end) {
        end -= 1;
    }
    let want = &long[..end];
    assert!(want.len() < JOB_ERROR_MAX_BYTES && want.len() > JOB_ERROR_MAX_BYTES - 3);
    let exact = "e".repeat(JOB_ERROR_MAX_BYTES);
    let ids = enqueue(&q, vec![job(qn, "r"), job(qn, "d"), job(qn, "x")], BASE).await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    let l = |id: JobId| *leases(&got).iter().find(|l| l.id == id).unwrap();
    let retry = Failure::RetryAt { at_ms: BASE + 1 };
    assert!(q.fail(l(ids[0]), &long, retry, BASE).await.unwrap());
    assert!(q.fail(l(ids[1]), &long, Failure::Dead, BASE).await.unwrap());
    assert!(q.fail(l(ids[2]), &exact, retry, BASE).await.unwrap());
    assert_eq!(
        get(&q, ids[0]).await.last_error.as_deref(),
        Some(want),
        "RetryAt error clipped to JOB_ERROR_MAX_BYTES on a char boundary"
    );
    let dead = q.list_dead(qn, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some(want),
        "Dead error clipped"
    );
    assert_eq!(
        get(&q, ids[2]).await.last_error.as_deref(),
        Some(exact.as_str()),
        "an error of exactly the limit is kept whole"
    );
}

pub async fn expired_last_attempt_goes_dead(q: Arc<dyn JobQueue>) {
    let qn = "exhaust";
    let ids = enqueue(
        &q,
        vec![
            NewJob {
                max_attempts: 1,
                priority: 1,
                ..job(qn, "once")
            },
            NewJob {
                max_attempts: 2,
                ..job(qn, "twice")
            },
        ],
        BASE,
    )
    .await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&got)), ids);
    let old = leases(&got);
    let t1 = BASE + VIS + 500;
    let again = lease(&q, qn, 10, t1, VIS).await;
    assert_eq!(
        self::ids(&again),
        vec![ids[1]],
        "a job whose expired lease used its last attempt is not leased again"
    );
    assert_eq!(again[0].attempts, 2);
    let once = get(&q, ids[0]).await;
    assert_eq!(
        (once.state, once.attempts, once.lease),
        (JobState::Dead, 1, None),
        "it went dead"
    );
    let t2 = t1 + VIS + 500;
    assert!(lease(&q, qn, 10, t2, VIS).await.is_empty());
    let twice = get(&q, ids[1]).await;
    assert_eq!(
        (twice.state, twice.attempts, twice.lease),
        (JobState::Dead, 2, None)
    );
    assert_eq!(
        self::ids(&q.list_dead(qn, 10).await.unwrap()),
        ids,
        "both in the dead-letter queue, oldest first"
    );
    assert_eq!(
        q.complete(&[old[0], old[1], lease_of(&again[0])])
            .await
            .unwrap(),
        vec![false; 3],
        "no lease of a dead job completes"
    );
    assert_eq!(stats_of(&q, qn, t2).await, Some(qs(qn, 0, 0, 0, 2, 0)));
}

pub async fn release_does_not_count_the_attempt(q: Arc<dyn JobQueue>) {
    let qn = "release";
    let id = enqueue1(&q, job(qn, "r"), BASE).await;
    let (_, l1) = lease1(&q, qn, BASE, VIS).await;
    let retry = Failure::RetryAt { at_ms: BASE + 10 };
    assert!(q.fail(l1, "first", retry, BASE).await.unwrap());
    let (j, l2) = lease1(&q, qn, BASE + 10, VIS).await;
    assert_eq!(j.attempts, 2);
    assert_eq!(q.release(&[l2]).await.unwrap(), vec![true]);
    let g = get(&q, id).await;
    assert_eq!(
        (g.state, g.attempts, g.lease, g.lease_expires_at_ms),
        (JobState::Ready, 1, None, None),
        "released: ready, the attempt not counted"
    );
    assert_eq!(
        q.release(&[l2]).await.unwrap(),
        vec![false],
        "released twice"
    );
    assert_eq!(
        q.complete(&[l2]).await.unwrap(),
        vec![false],
        "a released lease is void"
    );
    let (j, l3) = lease1(&q, qn, BASE + 10, VIS).await;
    assert_eq!(
        (j.id, j.attempts),
        (id, 2),
        "leasable again immediately; attempts counted once"
    );
    assert_eq!(q.complete(&[l3]).await.unwrap(), vec![true]);
}

pub async fn unique_keys_dedupe_live_jobs(q: Arc<dyn JobQueue>) {
    let (qa, qb) = ("uniq-a", "uniq-b");
    let keyed = |queue: &str, key: &str, n: u32| NewJob {
        unique_key: Some(key.into()),
        ..NewJob::new(queue, "k", json!({ "n": n }))
    };
    let first = q.enqueue(vec![keyed(qa, "k", 1)], BASE).await.unwrap()[0];
    assert!(first.created);
    let dup = q.enqueue(vec![keyed(qa, "k", 2)], BASE).await.unwrap()[0];
    assert_eq!(
        (dup.id, dup.created),
        (first.id, false),
        "same live key in the same queue returns the existing job"
    );
    assert_eq!(
        get(&q, first.id).await.payload,
        json!({"n": 1}),
        "the existing job is untouched"
    );
    let other = q.enqueue(vec![keyed(qb, "k", 3)], BASE).await.unwrap()[0];
    assert!(
        other.created && other.id != first.id,
        "another queue has its own keys"
    );

    // Leased, then retrying: still live.
    let (_, l) = lease1(&q, qa, BASE, VIS).await;
    let dup = q.enqueue(vec![keyed(qa, "k", 4)], BASE).await.unwrap()[0];
    assert_eq!(
        (dup.id, dup.created),
        (first.id, false),
        "a leased job holds its key"
    );
    assert!(q
        .fail(l, "e", Failure::RetryAt { at_ms: BASE + 100 }, BASE)
        .await
        .unwrap());
    let dup = q.enqueue(vec![keyed(qa, "k", 5)], BASE).await.unwrap()[0];
    assert_eq!(
        (dup.id, dup.created),
        (first.id, false),
        "a retrying job holds its key"
    );

    // Completed: the key is free.
    let (_, l) = lease1(&q, qa, BASE + 100, VIS).await;
    assert_eq!(q.complete(&[l]).await.unwrap(), vec![true]);
    let second = q
        .enqueue(vec![keyed(qa, "k", 6)], BASE + 100)
        .await
        .unwrap()[0];
    assert!(
        second.created && second.id > first.id,
        "the key is free once the job completed"
    );

    // Dead: the key is free.
    let (_, l) = lease1(&q, qa, BASE + 100, VIS).await;
    assert!(q.fail(l, "e", Failure::Dead, BASE + 100).await.unwrap());
    let third = q
        .enqueue(vec![keyed(qa, "k", 7)], BASE + 100)
        .await
        .unwrap()[0];
    assert!(
        third.created && third.id > second.id,
        "the key is free once the job is dead"
    );

    // Within one call.
    let r = q
        .enqueue(
            vec![
                keyed(qa, "m", 8),
                keyed(qa, "m", 9),
                keyed(qa, "n", 10),
                keyed(qa, "k", 11),
            ],
            BASE + 100,
        )
        .await
        .unwrap();
    assert_eq!(r.len(), 4);
    assert!(r[0].created, "{r:?}");
    assert_eq!(
        (r[1].id, r[1].created),
        (r[0].id, false),
        "a repeated key within one enqueue returns the first's id: {r:?}"
    );
    assert!(r[2].created && r[2].id > r[0].id, "{r:?}");
    assert_eq!(
        (r[3].id, r[3].created),
        (third.id, false),
        "dedupe against stored jobs too: {r:?}"
    );
    assert_eq!(get(&q, r[0].id).await.payload, json!({"n": 8}));
    assert_eq!(
        stats_of(&q, qa, BASE + 100).await,
        Some(qs(qa, 3, 0, 0, 1, 0)),
        "ready: third, m, n; dead: second"
    );
}

pub async fn dead_letter_list_redrive_purge(q: Arc<dyn JobQueue>) {
    let qn = "dlq";
    let kinds = ["a", "b", "a", "b", "c"];
    let ids = enqueue(&q, kinds.iter().map(|k| job(qn, k)).collect(), BASE).await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&got)), ids);
    let ls = leases(&got);
    for (i, id) in ids.iter().enumerate() {
        let l = *ls.iter().find(|l| l.id == *id).unwrap();
        let err = format!("e{i}");
        assert!(q
            .fail(l, &err, Failure::Dead, BASE + 1 + i as i64)
            .await
            .unwrap());
    }
    // A live job of kind "a", leased: redrive and purge must not touch it.
    let live = enqueue1(&q, job(qn, "a"), BASE + 10).await;
    let (_, live_lease) = lease1(&q, qn, BASE + 10, 60_000).await;
    assert_eq!(live_lease.id, live);

    let dead = q.list_dead(qn, 100).await.unwrap();
    assert_eq!(self::ids(&dead), ids, "list_dead: oldest first");
    for (i, d) in dead.iter().enumerate() {
        assert_eq!(
            (d.state, d.attempts, d.last_error.clone(), d.kind.as_str()),
            (JobState::Dead, 1, Some(format!("e{i}")), kinds[i])
        );
    }
    assert_eq!(
        self::ids(&q.list_dead(qn, 2).await.unwrap()),
        ids[..2],
        "limit"
    );
    assert!(q.list_dead("dlq-other", 100).await.unwrap().is_empty());
    assert_eq!(
        stats_of(&q, qn, BASE + 20).await,
        Some(qs(qn, 0, 0, 1, 5, 0))
    );

    let all = DeadFilter::default();
    let by_ids = |v: Vec<JobId>| DeadFilter {
        ids: Some(v),
        kind: None,
    };
    let by_kind = |k: &str| DeadFilter {
        ids: None,
        kind: Some(k.into()),
    };
    assert_eq!(
        q.redrive("dlq-other", &all, BASE + 20).await.unwrap(),
        0,
        "redrive is per queue"
    );
    assert_eq!(
        q.purge_dead("dlq-other", &by_ids(ids.clone()))
            .await
            .unwrap(),
        0,
        "purge is per queue"
    );
    assert_eq!(q.list_dead(qn, 100).await.unwrap().len(), 5);

    let t = BASE + 100;
    assert_eq!(
        q.redrive(qn, &by_ids(vec![ids[0], ids[1], live]), t)
            .await
            .unwrap(),
        2,
        "redrive by ids touches only dead ones"
    );
    for id in [ids[0], ids[1]] {
        let g = get(&q, id).await;
        assert_eq!(
            (g.state, g.attempts, g.lease),
            (JobState::Ready, 0, None),
            "redriven: ready with a fresh attempt budget"
        );
    }
    assert_eq!(get(&q, live).await.lease, Some(live_lease));
    assert_eq!(
        q.redrive(qn, &by_kind("a"), t).await.unwrap(),
        1,
        "redrive by kind: only the dead a"
    );
    assert_eq!(
        self::ids(&q.list_dead(qn, 100).await.unwrap()),
        ids[3..],
        "redriven jobs left the dead-letter queue"
    );
    assert_eq!(
        stats_of(&q, qn, t)
            .await
            .map(|s| (s.ready, s.in_flight, s.dead)),
        Some((3, 1, 2))
    );
    assert_eq!(
        q.purge_dead(qn, &by_kind("b")).await.unwrap(),
        1,
        "purge by kind: only the dead b"
    );
    assert_eq!(q.get(ids[3]).await.unwrap(), None, "purged");
    assert_eq!(
        get(&q, ids[1]).await.state,
        JobState::Ready,
        "a redriven b is not purged"
    );
    assert_eq!(
        q.purge_dead(qn, &by_kind("a")).await.unwrap(),
        0,
        "no dead a left"
    );
    assert_eq!(get(&q, live).await.state, JobState::Leased);
    assert_eq!(
        q.purge_dead(qn, &by_ids(vec![ids[0], ids[4], live]))
            .await
            .unwrap(),
        1,
        "purge by ids: only dead ones"
    );
    assert_eq!(q.get(ids[4]).await.unwrap(), None);
    assert_eq!(get(&q, ids[0]).await.state, JobState::Ready);
    assert!(q.list_dead(qn, 100).await.unwrap().is_empty());

    // The redriven jobs lease again, then die again; redrive all and purge all.
    let back = lease(&q, qn, 10, t, VIS).await;
    assert_eq!(sorted(self::ids(&back)), ids[..3]);
    assert!(
        back.iter().all(|j| j.attempts == 1),
        "fresh budget: first attempt"
    );
    for l in leases(&back) {
        assert!(q.fail(l, "again", Failure::Dead, t + 1).await.unwrap());
    }
    assert_eq!(q.redrive(qn, &all, t + 2).await.unwrap(), 3, "redrive all");
    assert!(q.list_dead(qn, 100).await.unwrap().is_empty());
    let back = lease(&q, qn, 10, t + 2, VIS).await;
    assert_eq!(sorted(self::ids(&back)), ids[..3]);
    for l in leases(&back) {
        assert!(q.fail(l, "again", Failure::Dead, t + 3).await.unwrap());
    }
    assert_eq!(q.purge_dead(qn, &all).await.unwrap(), 3, "purge all");
    for id in &ids[..3] {
        assert_eq!(q.get(*id).await.unwrap(), None);
    }
    assert_eq!(
        stats_of(&q, qn, t + 4).await,
        Some(qs(qn, 0, 0, 1, 0, 0)),
        "only the live job is left"
    );
    assert_eq!(q.complete(&[live_lease]).await.unwrap(), vec![true]);
    assert_eq!(stats_of(&q, qn, t + 4).await, None);
}

pub async fn stats_count_each_state(q: Arc<dyn JobQueue>) {
    let (qa, qb, qc, qd) = ("stats-a", "stats-b", "stats-c", "stats-d");
    enqueue(
        &q,
        vec![
            prio(qa, "to-die", 20, BASE - 500),
            prio(qa, "to-hold", 10, BASE - 500),
            at(qa, "r1", BASE - 100),
            at(qa, "r2", BASE - 50),
            job(qa, "r3"),
            at(qa, "d1", BASE + 100),
            at(qa, "d2", BASE + 100),
            job(qc, "c"),
            job(qd, "d"),
        ],
        BASE,
    )
    .await;
    let (j, l) = lease1(&q, qa, BASE, 60_000).await;
    assert_eq!(j.kind, "to-die");
    assert!(q.fail(l, "x", Failure::Dead, BASE).await.unwrap());
    let (j, _held) = lease1(&q, qa, BASE, 60_000).await;
    assert_eq!(j.kind, "to-hold");
    enqueue1(&q, job(qb, "b"), BASE + 5).await;
    let (_, l) = lease1(&q, qc, BASE, VIS).await;
    assert_eq!(q.complete(&[l]).await.unwrap(), vec![true]);
    let (_, l) = lease1(&q, qd, BASE, VIS).await;
    assert!(q.fail(l, "x", Failure::Dead, BASE).await.unwrap());
    assert_eq!(q.purge_dead(qd, &DeadFilter::default()).await.unwrap(), 1);

    assert_eq!(
        stats_of(&q, qa, BASE + 10).await,
        Some(qs(qa, 3, 2, 1, 1, 110)),
        "ready 3, delayed 2, in flight 1, dead 1; the oldest ready job waited since BASE-100"
    );
    assert_eq!(
        stats_of(&q, qb, BASE + 10).await,
        Some(qs(qb, 1, 0, 0, 0, 5))
    );
    assert_eq!(
        stats_of(&q, qc, BASE + 10).await,
        None,
        "a queue whose jobs all completed is absent from stats"
    );
    assert_eq!(
        stats_of(&q, qd, BASE + 10).await,
        None,
        "a queue whose jobs were all purged is absent from stats"
    );
    assert_eq!(
        stats_of(&q, qa, BASE + 200).await,
        Some(qs(qa, 5, 0, 1, 1, 300)),
        "delayed jobs count as ready once due"
    );
    let all = q.stats(BASE + 10).await.unwrap();
    let mut names: Vec<&str> = all.iter().map(|s| s.queue.as_str()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [qa, qb],
        "stats lists every queue that has jobs, and only those"
    );
}

pub async fn concurrent_leasers_never_share_a_job(q: Arc<dyn JobQueue>) {
    let qn = "race";
    const JOBS: usize = 500;
    const WORKERS: usize = 4;
    let ids = enqueue(
        &q,
        (0..JOBS)
            .map(|i| NewJob::new(qn, "w", json!({ "i": i })))
            .collect(),
        BASE,
    )
    .await;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut round = 0;
            loop {
                let max = 1 + (w + round) % 7;
                round += 1;
                let got = q.lease(qn, max, BASE + 1, 60_000).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                assert!(got.len() <= max);
                for j in &got {
                    assert_eq!(j.attempts, 1, "job {} leased twice", j.id);
                }
                let ok = q.complete(&leases(&got)).await.unwrap();
                assert!(ok.iter().all(|b| *b), "a held lease completes: {ok:?}");
                mine.extend(got.iter().map(|j| j.id));
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for t in tasks {
        for id in t.await.unwrap() {
            total += 1;
            assert!(seen.insert(id), "job {id} was leased by two workers");
        }
    }
    assert_eq!(total, JOBS, "every job leased exactly once");
    assert_eq!(seen, ids.iter().copied().collect::<HashSet<_>>());
    assert!(lease(&q, qn, 10, BASE + 1, 60_000).await.is_empty());
    assert_eq!(stats_of(&q, qn, BASE + 1).await, None, "queue empty");
    for id in [ids[0], ids[JOBS / 2], ids[JOBS - 1]] {
        assert_eq!(q.get(id).await.unwrap(), None);
    }
}

pub async fn expired_leases_compete_by_priority(q: Arc<dyn JobQueue>) {
    // The port: "leases jobs that are ready now or whose lease expired, highest priority
    // first, then oldest run_at" - one order over both, not expired leases first.
    let qn = "expired-prio";
    let ids = enqueue(
        &q,
        vec![prio(qn, "lo", 0, BASE), prio(qn, "mid", 1, BASE)],
        BASE,
    )
    .await;
    let (lo, mid) = (ids[0], ids[1]);
    let got = lease(&q, qn, 10, BASE, VIS).await;
    assert_eq!(sorted(self::ids(&got)), ids);
    let mid_lease = *leases(&got).iter().find(|l| l.id == mid).unwrap();
    // mid's lease now expires after lo's.
    assert_eq!(
        q.heartbeat(&[mid_lease], BASE + 500, VIS).await.unwrap(),
        vec![true]
    );
    let hi = enqueue1(&q, prio(qn, "hi", 5, BASE + 10), BASE + 10).await;
    let now = BASE + 3 * VIS;
    let mut order = Vec::new();
    for _ in 0..3 {
        let (j, _) = lease1(&q, qn, now, VIS).await;
        order.push(j.kind);
    }
    assert_eq!(
        order,
        ["hi", "mid", "lo"],
        "lease max=1 three times over a ready hi (prio 5) and expired mid (1), lo (0)"
    );
    assert_eq!(get(&q, lo).await.attempts, 2);
    assert_eq!(get(&q, hi).await.attempts, 1);
}

pub async fn ids_are_never_reused(q: Arc<dyn JobQueue>) {
    // "Job ids are positive and increase in enqueue order", and `get` is None once a job is
    // completed or purged: a new job must never take a removed job's id.
    let qn = "ids";
    let ids = enqueue(&q, vec![job(qn, "a"), job(qn, "b"), job(qn, "c")], BASE).await;
    let got = lease(&q, qn, 10, BASE, VIS).await;
    let l = |id: JobId| *leases(&got).iter().find(|l| l.id == id).unwrap();
    assert_eq!(q.complete(&[l(ids[2])]).await.unwrap(), vec![true]);
    let d = enqueue1(&q, job(qn, "d"), BASE + 1).await;
    assert!(
        d > ids[2],
        "enqueue after completing the newest job: got id {d}, newest ever was {}",
        ids[2]
    );
    assert_eq!(q.get(ids[2]).await.unwrap(), None);
    assert!(q.fail(l(ids[1]), "x", Failure::Dead, BASE).await.unwrap());
    assert_eq!(q.complete(&[l(ids[0])]).await.unwrap(), vec![true]);
    let (_, ld) = lease1(&q, qn, BASE + 1, VIS).await;
    assert!(q.fail(ld, "x", Failure::Dead, BASE + 1).await.unwrap());
    assert_eq!(q.purge_dead(qn, &DeadFilter::default()).await.unwrap(), 2);
    // The table is empty now.
    let e = enqueue1(&q, job(qn, "e"), BASE + 2).await;
    assert!(
        e > d,
        "enqueue after every job was completed or purged: got id {e}, newest ever was {d}"
    );
}

pub async fn redrive_keeps_unique_keys_unique(q: Arc<dyn JobQueue>) {
    let qn = "uniq-redrive";
    let keyed = |n: u32| NewJob {
        unique_key: Some("k".into()),
        ..NewJob::new(qn, "k", json!({ "n": n }))
    };
    let a = enqueue1(&q, keyed(1), BASE).await;
    let (_, l) = lease1(&q, qn, BASE, VIS).await;
    assert!(q.fail(l, "x", Failure::Dead, BASE).await.unwrap());
    let b = enqueue1(&q, keyed(2), BASE).await;
    let live = |ja: &Job, jb: &Job| {
        [ja, jb]
            .iter()
            .filter(|j| j.state != JobState::Dead)
            .count()
    };
    let n = q
        .redrive(qn, &DeadFilter::default(), BASE + 1)
        .await
        .expect("redrive while the key is live again must not fail");
    let (ja, jb) = (get(&q, a).await, get(&q, b).await);
    assert_eq!(
        (n, ja.state, live(&ja, &jb)),
        (0, JobState::Dead, 1),
        "a dead job whose key is live again stays dead (one live job per key)"
    );
    let (_, l) = lease1(&q, qn, BASE + 1, VIS).await;
    assert!(q.fail(l, "x", Failure::Dead, BASE + 1).await.unwrap());
    // Two dead jobs with one key, none live: a redrive of all brings back exactly one.
    let n = q
        .redrive(qn, &DeadFilter::default(), BASE + 2)
        .await
        .expect("redrive of two dead jobs sharing a unique key must not fail");
    let (ja, jb) = (get(&q, a).await, get(&q, b).await);
    assert_eq!(
        (n, live(&ja, &jb)),
        (1, 1),
        "exactly one of two dead jobs sharing a key is redriven: {:?} / {:?}",
        ja.state,
        jb.state
    );
    let back = if ja.state == JobState::Ready { a } else { b };
    let dup = q.enqueue(vec![keyed(3)], BASE + 2).await.unwrap()[0];
    assert_eq!((dup.id, dup.created), (back, false));
}

fn new_batch(id: &str, queue: &str, fan_in_queue: &str) -> NewBatch {
    NewBatch {
        id: id.into(),
        queue: queue.into(),
        kind: "reprice".into(),
        params: json!({"category": "books"}),
        fan_in: Some(NewJob::new(
            fan_in_queue,
            "reprice.finish",
            json!({"note": "fan-in"}),
        )),
    }
}

fn items(queue: &str, n: usize) -> Vec<NewJob> {
    (0..n)
        .map(|i| NewJob::new(queue, "reprice.item", json!({ "i": i })))
        .collect()
}

pub async fn batch_counts_and_fans_in_once(q: Arc<dyn JobQueue>) {
    let b = q
        .create_batch(new_batch("b-1", "bq-1", "bq-1-fan"), items("bq-1", 5), BASE)
        .await
        .unwrap();
    assert_eq!(
        (b.state, b.total, b.done, b.dead),
        (BatchState::Running, 5, 0, 0)
    );
    assert_eq!(b.params, json!({"category": "books"}));
    let leased = lease(&q, "bq-1", 10, BASE, VIS).await;
    assert_eq!(leased.len(), 5);
    assert!(leased.iter().all(|j| j.batch_id.as_deref() == Some("b-1")));
    // Four done: still running, no fan-in yet.
    q.complete(&leases(&leased[..4])).await.unwrap();
    let b = q.get_batch("b-1").await.unwrap().unwrap();
    assert_eq!((b.state, b.done), (BatchState::Running, 4));
    assert!(lease(&q, "bq-1-fan", 10, BASE + 1, VIS).await.is_empty());
    // The last one: the batch completes and its fan-in is enqueued, once.
    q.complete(&leases(&leased[4..])).await.unwrap();
    let b = q.get_batch("b-1").await.unwrap().unwrap();
    assert_eq!((b.state, b.done, b.dead), (BatchState::Completed, 5, 0));
    assert!(b.finished_at_ms.is_some());
    let fan = lease(&q, "bq-1-fan", 10, BASE + 2, VIS).await;
    assert_eq!(fan.len(), 1, "exactly one fan-in job");
    assert_eq!(Some(fan[0].id), b.fan_in_job);
    assert_eq!(fan[0].kind, "reprice.finish");
    assert_eq!(fan[0].payload["batch_id"], "b-1");
    assert_eq!(fan[0].payload["done"], 5);
    assert_eq!(fan[0].payload["dead"], 0);
    assert_eq!(fan[0].payload["note"], "fan-in");
    // Completing a stale lease again changes nothing.
    assert_eq!(q.complete(&leases(&leased[4..])).await.unwrap(), [false]);
    assert_eq!(q.get_batch("b-1").await.unwrap().unwrap().done, 5);
    assert!(q
        .set_batch_result("b-1", json!({"file": "r.csv"}))
        .await
        .unwrap());
    assert_eq!(
        q.get_batch("b-1").await.unwrap().unwrap().result,
        Some(json!({"file": "r.csv"}))
    );
    assert!(!q.set_batch_result("nope", json!(1)).await.unwrap());
    assert!(q.get_batch("nope").await.unwrap().is_none());
    // A second batch with the same id is refused.
    assert!(matches!(
        q.create_batch(new_batch("b-1", "bq-1", "bq-1-fan"), items("bq-1", 1), BASE)
            .await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn batch_with_failures_still_fans_in(q: Arc<dyn JobQueue>) {
    q.create_batch(new_batch("b-2", "bq-2", "bq-2-fan"), items("bq-2", 3), BASE)
        .await
        .unwrap();
    let leased = lease(&q, "bq-2", 10, BASE, VIS).await;
    q.complete(&leases(&leased[..1])).await.unwrap();
    assert!(q
        .fail(lease_of(&leased[1]), "malformed", Failure::Dead, BASE)
        .await
        .unwrap());
    // The third one retries first: not finished yet.
    assert!(q
        .fail(
            lease_of(&leased[2]),
            "flaky",
            Failure::RetryAt { at_ms: BASE + 5 },
            BASE
        )
        .await
        .unwrap());
    let b = q.get_batch("b-2").await.unwrap().unwrap();
    assert_eq!((b.state, b.done, b.dead), (BatchState::Running, 1, 1));
    let again = lease(&q, "bq-2", 10, BASE + 5, VIS).await;
    assert_eq!(again.len(), 1);
    q.complete(&leases(&again)).await.unwrap();
    let b = q.get_batch("b-2").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.done, b.dead),
        (BatchState::CompletedWithFailures, 2, 1)
    );
    let fan = lease(&q, "bq-2-fan", 10, BASE + 6, VIS).await;
    assert_eq!(fan.len(), 1);
    assert_eq!(fan[0].payload["dead"], 1);
    // Redriving the dead item: it is dead no more, done once it completes; the batch stays
    // finished and its fan-in does not run again.
    assert_eq!(
        q.redrive("bq-2", &DeadFilter::default(), BASE + 7)
            .await
            .unwrap(),
        1
    );
    let r = lease(&q, "bq-2", 10, BASE + 7, VIS).await;
    q.complete(&leases(&r)).await.unwrap();
    let b = q.get_batch("b-2").await.unwrap().unwrap();
    assert_eq!(
        (b.state, b.done, b.dead),
        (BatchState::CompletedWithFailures, 3, 0)
    );
    assert!(lease(&q, "bq-2-fan", 10, BASE + 8, VIS).await.is_empty());
}

pub async fn empty_batch_finishes_at_once(q: Arc<dyn JobQueue>) {
    let b = q
        .create_batch(new_batch("b-3", "bq-3", "bq-3-fan"), vec![], BASE)
        .await
        .unwrap();
    assert_eq!((b.state, b.total), (BatchState::Completed, 0));
    let fan = lease(&q, "bq-3-fan", 10, BASE, VIS).await;
    assert_eq!(fan.len(), 1);
    assert_eq!(fan[0].payload["total"], 0);
}

pub async fn cancel_removes_unstarted_items(q: Arc<dyn JobQueue>) {
    q.create_batch(new_batch("b-4", "bq-4", "bq-4-fan"), items("bq-4", 6), BASE)
        .await
        .unwrap();
    let running = lease(&q, "bq-4", 2, BASE, VIS).await;
    let b = q.cancel_batch("b-4", BASE + 1).await.unwrap().unwrap();
    assert_eq!((b.state, b.cancelled), (BatchState::Cancelled, 4));
    assert!(
        lease(&q, "bq-4", 10, BASE + 2, VIS).await.is_empty(),
        "no item left to run"
    );
    // Running items finish and count as done; no fan-in for a cancelled batch.
    q.complete(&leases(&running)).await.unwrap();
    let b = q.get_batch("b-4").await.unwrap().unwrap();
    assert_eq!((b.state, b.done), (BatchState::Cancelled, 2));
    assert!(lease(&q, "bq-4-fan", 10, BASE + 3, VIS).await.is_empty());
    // Cancelling again, or an unknown batch.
    assert_eq!(
        q.cancel_batch("b-4", BASE + 4)
            .await
            .unwrap()
            .unwrap()
            .state,
        BatchState::Cancelled
    );
    assert!(q.cancel_batch("nope", BASE).await.unwrap().is_none());
}

pub async fn invalid_batches_are_refused(q: Arc<dyn JobQueue>) {
    let wrong_queue = q
        .create_batch(new_batch("b-5", "bq-5", "f"), items("elsewhere", 1), BASE)
        .await;
    assert!(matches!(wrong_queue, Err(StoreError::Invalid(_))));
    let too_many = q
        .create_batch(
            new_batch("b-6", "bq-5", "f"),
            items("bq-5", MAX_ENQUEUE_BATCH + 1),
            BASE,
        )
        .await;
    assert!(matches!(too_many, Err(StoreError::Invalid(_))));
    let no_id = q
        .create_batch(new_batch("", "bq-5", "f"), items("bq-5", 1), BASE)
        .await;
    assert!(matches!(no_id, Err(StoreError::Invalid(_))));
    assert!(q.get_batch("b-5").await.unwrap().is_none());
    assert!(
        stats_of(&q, "bq-5", BASE).await.is_none(),
        "nothing enqueued"
    );
}
