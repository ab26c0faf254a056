//! The conformance suite every [`IdempotencyStore`] adapter must pass, run with
//! [`idempotency_conformance!`](crate::idempotency_conformance):
//!
//! ```ignore
//! ficus_store::idempotency_conformance!(make);
//! // where `async fn make() -> (Arc<dyn IdempotencyStore>, Arc<dyn EventStore>, Box<dyn Any + Send>)`
//! // gives the same adapter as both ports, and a guard kept alive for the test;
//! ficus_store::idempotency_conformance!(optional make_pg); // `Option` of the same
//! ```
//!
//! Times are passed in explicitly, so leases and retention are checked without sleeping.

use std::sync::Arc;

use ficus_core::{EventType, ExpectedVersion, NewEvent, StreamId};
use serde_json::json;

use crate::idempotency::{
    Claim, ClaimRequest, IdempotencyStore, Responder, StoredResponse, Ticket,
};
use crate::{new_event, AppendResult, EventStore, StoreError};

/// Generates one `#[tokio::test]` per check, each with a fresh adapter from `$make`.
#[macro_export]
macro_rules! idempotency_conformance {
    (optional $make:path) => {
        $crate::idempotency_conformance!(@list $make, optional);
    };
    ($make:path) => {
        $crate::idempotency_conformance!(@list $make, required);
    };
    (@list $make:path, $mode:ident) => {
        $crate::idempotency_conformance!(@tests $make, $mode;
            claim_append_then_replay, different_request_same_key_is_a_mismatch,
            live_claim_is_in_progress_and_expired_one_is_taken_over,
            lost_claim_writes_nothing, concurrent_claims_have_one_owner,
            answer_without_events_and_release, scopes_are_independent,
            refused_expectation_keeps_the_claim, retention_and_bounded_purge);
    };
    (@tests $make:path, $mode:ident; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((keys, events, _guard)) = $crate::conformance_factory!($mode, $make)
                else {
                    return;
                };
                $crate::conformance::idempotency::$name(keys, events).await;
            }
        )*
    };
}

const LEASE_MS: i64 = 1_000;
const RETENTION_MS: i64 = 100_000;
/// A made-up clock far from 0, so `now - retention` stays positive.
const T0: i64 = 1_000_000;

fn req<'a>(scope: &'a str, key: &'a str, fingerprint: &'a str, now_ms: i64) -> ClaimRequest<'a> {
    ClaimRequest {
        scope,
        key,
        fingerprint,
        now_ms,
        lease_ms: LEASE_MS,
        retention_ms: RETENTION_MS,
    }
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

fn evs(n: u64) -> Vec<NewEvent> {
    (0..n)
        .map(|i| new_event(EventType::new("Keyed").unwrap(), json!({ "i": i })))
        .collect()
}

/// The answer a command would give: built from where its append landed.
fn responder() -> Responder {
    Arc::new(|r: &AppendResult| StoredResponse {
        status: 201,
        body: json!({"version": r.last_version, "position": r.last_position}).to_string(),
    })
}

async fn owned(keys: &dyn IdempotencyStore, r: &ClaimRequest<'_>) -> Ticket {
    match keys.claim(r).await.unwrap() {
        Claim::Owned(t) => t,
        other => panic!("expected to own {}/{}, got {other:?}", r.scope, r.key),
    }
}

pub async fn claim_append_then_replay(
    keys: Arc<dyn IdempotencyStore>,
    events: Arc<dyn EventStore>,
) {
    // Something else in the log first, so positions and versions differ.
    events
        .append(&sid("other"), ExpectedVersion::Any, evs(3))
        .await
        .unwrap();
    let t = owned(&*keys, &req("alice", "k1", "fp", T0)).await;
    let r = keys
        .append_completing(
            &t,
            &sid("s"),
            ExpectedVersion::NoStream,
            evs(2),
            responder(),
        )
        .await
        .unwrap();
    assert_eq!((r.first_version, r.last_version), (1, 2));
    assert_eq!((r.first_position, r.last_position), (4, 5));
    let expected = StoredResponse {
        status: 201,
        body: json!({"version": 2, "position": 5}).to_string(),
    };
    for later in [T0 + 1, T0 + LEASE_MS * 10, T0 + RETENTION_MS - 1] {
        assert_eq!(
            keys.claim(&req("alice", "k1", "fp", later)).await.unwrap(),
            Claim::Replay(expected.clone())
        );
    }
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 2);
    let rec = keys.get("alice", "k1").await.unwrap().unwrap();
    assert_eq!(rec.response, Some(expected));
    assert_eq!(rec.created_at_ms, T0);
    // The ticket is spent: a second append through it is refused and writes nothing.
    let again = keys
        .append_completing(&t, &sid("s"), ExpectedVersion::Any, evs(1), responder())
        .await;
    assert!(matches!(again, Err(StoreError::ClaimLost)), "{again:?}");
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 2);
}

pub async fn different_request_same_key_is_a_mismatch(
    keys: Arc<dyn IdempotencyStore>,
    _events: Arc<dyn EventStore>,
) {
    let t = owned(&*keys, &req("alice", "k", "fp-a", T0)).await;
    // In flight or completed, another fingerprint is a mismatch.
    assert_eq!(
        keys.claim(&req("alice", "k", "fp-b", T0 + 1))
            .await
            .unwrap(),
        Claim::Mismatch
    );
    let answer = StoredResponse {
        status: 200,
        body: "{}".into(),
    };
    assert!(keys.complete(&t, &answer).await.unwrap());
    assert_eq!(
        keys.claim(&req("alice", "k", "fp-b", T0 + 2))
            .await
            .unwrap(),
        Claim::Mismatch
    );
    assert_eq!(
        keys.claim(&req("alice", "k", "fp-a", T0 + 3))
            .await
            .unwrap(),
        Claim::Replay(answer)
    );
}

pub async fn live_claim_is_in_progress_and_expired_one_is_taken_over(
    keys: Arc<dyn IdempotencyStore>,
    _events: Arc<dyn EventStore>,
) {
    let first = owned(&*keys, &req("alice", "k", "fp", T0)).await;
    assert_eq!(
        keys.claim(&req("alice", "k", "fp", T0 + LEASE_MS - 1))
            .await
            .unwrap(),
        Claim::InProgress
    );
    // The holder is presumed dead once its lease ran out: a retry takes the key over.
    let second = owned(&*keys, &req("alice", "k", "fp", T0 + LEASE_MS)).await;
    assert_ne!(first.token, second.token);
    assert_eq!(
        (first.created_at_ms, second.created_at_ms),
        (T0, T0),
        "the same use of the key"
    );
    let rec = keys.get("alice", "k").await.unwrap().unwrap();
    assert_eq!(rec.token, second.token);
    assert_eq!(
        rec.created_at_ms, T0,
        "a takeover keeps the key's creation time"
    );
    assert_eq!(rec.locked_until_ms, T0 + 2 * LEASE_MS);
    assert_eq!(
        keys.claim(&req("alice", "k", "fp", T0 + LEASE_MS + 1))
            .await
            .unwrap(),
        Claim::InProgress
    );
}

pub async fn lost_claim_writes_nothing(
    keys: Arc<dyn IdempotencyStore>,
    events: Arc<dyn EventStore>,
) {
    let stale = owned(&*keys, &req("alice", "k", "fp", T0)).await;
    let fresh = owned(&*keys, &req("alice", "k", "fp", T0 + LEASE_MS)).await;
    // The first holder wakes up after its lease: its events must not land.
    let late = keys
        .append_completing(&stale, &sid("s"), ExpectedVersion::Any, evs(2), responder())
        .await;
    assert!(matches!(late, Err(StoreError::ClaimLost)), "{late:?}");
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 0);
    assert_eq!(events.head_position(), 0);
    assert!(!keys
        .complete(
            &stale,
            &StoredResponse {
                status: 200,
                body: "{}".into()
            }
        )
        .await
        .unwrap());
    keys.release(&stale).await.unwrap();
    assert!(
        keys.get("alice", "k").await.unwrap().is_some(),
        "release by a stale ticket is a no-op"
    );
    // The new holder's append goes through, once.
    keys.append_completing(&fresh, &sid("s"), ExpectedVersion::Any, evs(2), responder())
        .await
        .unwrap();
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 2);
    assert!(matches!(
        keys.claim(&req("alice", "k", "fp", T0 + LEASE_MS + 1))
            .await
            .unwrap(),
        Claim::Replay(_)
    ));
}

pub async fn concurrent_claims_have_one_owner(
    keys: Arc<dyn IdempotencyStore>,
    events: Arc<dyn EventStore>,
) {
    const CALLERS: usize = 10;
    let start = Arc::new(tokio::sync::Barrier::new(CALLERS));
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (keys, start) = (keys.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let claim = keys.claim(&req("alice", "same", "fp", T0)).await.unwrap();
            if let Claim::Owned(t) = &claim {
                keys.append_completing(t, &sid("s"), ExpectedVersion::Any, evs(1), responder())
                    .await
                    .unwrap();
            }
            claim
        }));
    }
    let mut owners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Owned(_) => owners += 1,
            Claim::InProgress | Claim::Replay(_) => {}
            Claim::Mismatch => panic!("same fingerprint judged a mismatch"),
        }
    }
    assert_eq!(owners, 1);
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 1);
}

pub async fn answer_without_events_and_release(
    keys: Arc<dyn IdempotencyStore>,
    events: Arc<dyn EventStore>,
) {
    // A refused command records its refusal: the repeat gets the same refusal.
    let t = owned(&*keys, &req("alice", "refused", "fp", T0)).await;
    let refusal = StoredResponse {
        status: 422,
        body: json!({"code": "order_empty"}).to_string(),
    };
    assert!(keys.complete(&t, &refusal).await.unwrap());
    assert!(
        !keys.complete(&t, &refusal).await.unwrap(),
        "completes once"
    );
    assert_eq!(
        keys.claim(&req("alice", "refused", "fp", T0 + 1))
            .await
            .unwrap(),
        Claim::Replay(refusal)
    );
    // A failed command gives its key back: the retry owns it at once.
    let t = owned(&*keys, &req("alice", "failed", "fp", T0)).await;
    keys.release(&t).await.unwrap();
    assert!(keys.get("alice", "failed").await.unwrap().is_none());
    owned(&*keys, &req("alice", "failed", "fp", T0 + 1)).await;
    assert_eq!(events.head_position(), 0);
}

pub async fn scopes_are_independent(keys: Arc<dyn IdempotencyStore>, events: Arc<dyn EventStore>) {
    let a = owned(&*keys, &req("alice", "k", "fp-a", T0)).await;
    let b = owned(&*keys, &req("bob", "k", "fp-b", T0)).await;
    keys.append_completing(&a, &sid("a"), ExpectedVersion::Any, evs(1), responder())
        .await
        .unwrap();
    keys.append_completing(&b, &sid("b"), ExpectedVersion::Any, evs(1), responder())
        .await
        .unwrap();
    let (Claim::Replay(ra), Claim::Replay(rb)) = (
        keys.claim(&req("alice", "k", "fp-a", T0 + 1))
            .await
            .unwrap(),
        keys.claim(&req("bob", "k", "fp-b", T0 + 1)).await.unwrap(),
    ) else {
        panic!("both callers replay their own answer");
    };
    assert_ne!(ra, rb);
    assert_eq!(events.head_position(), 2);
}

pub async fn refused_expectation_keeps_the_claim(
    keys: Arc<dyn IdempotencyStore>,
    events: Arc<dyn EventStore>,
) {
    events
        .append(&sid("s"), ExpectedVersion::Any, evs(1))
        .await
        .unwrap();
    let t = owned(&*keys, &req("alice", "k", "fp", T0)).await;
    let refused = keys
        .append_completing(
            &t,
            &sid("s"),
            ExpectedVersion::NoStream,
            evs(1),
            responder(),
        )
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::WrongExpectedVersion { actual: 1, .. })
    ));
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 1);
    // Still held: the command may decide again on fresh state and append with the same ticket.
    assert_eq!(
        keys.get("alice", "k").await.unwrap().unwrap().response,
        None
    );
    keys.append_completing(
        &t,
        &sid("s"),
        ExpectedVersion::Exact(1),
        evs(1),
        responder(),
    )
    .await
    .unwrap();
    assert_eq!(events.stream_version(&sid("s")).await.unwrap(), 2);
}

pub async fn retention_and_bounded_purge(
    keys: Arc<dyn IdempotencyStore>,
    _events: Arc<dyn EventStore>,
) {
    let answer = StoredResponse {
        status: 200,
        body: "{}".into(),
    };
    for i in 0..5 {
        let key = format!("k{i}");
        let t = owned(&*keys, &req("alice", &key, "fp", T0 + i)).await;
        assert!(keys.complete(&t, &answer).await.unwrap());
    }
    // Past the window a record no longer answers, even before a sweep removed it: the key is
    // fresh again (and may carry another request).
    let late = T0 + RETENTION_MS;
    owned(&*keys, &req("alice", "k0", "other-fp", late)).await;
    assert!(matches!(
        keys.claim(&req("alice", "k1", "fp", late)).await.unwrap(),
        Claim::Replay(_)
    ));
    // Sweeps delete the oldest first, at most `limit` each. k0 was re-created at `late`.
    assert_eq!(keys.purge(T0 + 4, 2).await.unwrap(), 2);
    assert!(keys.get("alice", "k1").await.unwrap().is_none());
    assert!(keys.get("alice", "k2").await.unwrap().is_none());
    assert_eq!(keys.purge(T0 + 4, 2).await.unwrap(), 1);
    assert!(keys.get("alice", "k3").await.unwrap().is_none());
    assert_eq!(keys.purge(T0 + 4, 2).await.unwrap(), 0);
    assert!(keys.get("alice", "k4").await.unwrap().is_some());
    assert!(keys.get("alice", "k0").await.unwrap().is_some());
}
