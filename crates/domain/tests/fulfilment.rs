//! Proves the order-fulfilment saga on a real SQLite event log, given/when/then, with failures
//! injected at every step: each failure runs the compensations of every started step in
//! reverse order (cancel shipment, refund, release stock, reject order), transient failures
//! are retried a bounded number of times with per-step timeouts, compensations are retried
//! until done, and a driver that dies right after any record of the saga is replaced by one
//! that finishes it with no step taking effect twice.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_core::Metadata;
use ficus_domain::fulfilment::{
    saga_id_of, Fulfilment, FulfilmentConfig, FulfilmentSaga, PaymentError, PaymentLedger,
    Payments, Shipment, FULFILMENT_SAGA, STEP_CHARGE, STEP_CONFIRM, STEP_ORDER, STEP_RESERVE,
    STEP_SHIP,
};
use ficus_domain::money::{Currency, Money};
use ficus_domain::order::{Order, OrderCommand, OrderStatus};
use ficus_domain::product::Product;
use ficus_domain::service::{Actor, NewProduct, RequestedItem, Shop};
use ficus_runtime::backoff::Backoff;
use ficus_runtime::saga::{
    RecordMoment, Saga, SagaEvent, SagaJobHandler, SagaOrchestrator, SagaState, SagaStatus,
    StepContext, StepError, StepPolicy, SAGA_QUEUE,
};
use ficus_runtime::{PoolConfig, Repository, Shutdown, WorkerPool};
use ficus_store::sqlite::{SqliteConfig, SqliteEventStore, SqliteJobQueue};
use ficus_store::{EventStore, JobQueue};
use serde_json::{json, Value};

/// Longest any test here waits for a saga before failing.
const WAIT: Duration = Duration::from_secs(15);

fn seller() -> Actor {
    Actor {
        user_id: "seller-1".into(),
        roles: vec!["seller".into()],
    }
}

fn customer() -> Actor {
    Actor {
        user_id: "cust-1".into(),
        roles: vec!["customer".into()],
    }
}

fn fast_config() -> FulfilmentConfig {
    FulfilmentConfig {
        step_timeout: Duration::from_secs(2),
        payment_timeout: Duration::from_millis(300),
        max_attempts: 3,
        backoff: Backoff {
            base_ms: 5,
            max_ms: 20,
        },
    }
}

/// A payment service twin whose next calls fail, hang, or lose their answer after the effect.
#[derive(Default)]
struct FlakyPayments {
    ledger: PaymentLedger,
    /// Charge calls still to fail with `Unavailable` before reaching the ledger.
    charge_outages: AtomicU32,
    /// Charge calls still to take effect and then hang (the answer never arrives).
    charge_lost_answers: AtomicU32,
    /// Every charge is declined.
    decline: AtomicBool,
    /// Refund calls still to fail with `Unavailable`.
    refund_outages: AtomicU32,
    charge_calls: AtomicU32,
    refund_calls: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Payments for FlakyPayments {
    async fn charge(
        &self,
        key: &str,
        customer_id: &str,
        amount: Money,
        currency: &Currency,
    ) -> Result<String, PaymentError> {
        self.charge_calls.fetch_add(1, Ordering::SeqCst);
        if take(&self.charge_outages) {
            return Err(PaymentError::Unavailable("injected outage".into()));
        }
        if self.decline.load(Ordering::SeqCst) {
            return Err(PaymentError::Declined("injected decline".into()));
        }
        let r = Payments::charge(&self.ledger, key, customer_id, amount, currency).await;
        if take(&self.charge_lost_answers) {
            // The effect happened; the caller's per-step timeout must end this call.
            std::future::pending::<()>().await;
        }
        r
    }

    async fn refund(&self, charge_key: &str) -> Result<(), PaymentError> {
        self.refund_calls.fetch_add(1, Ordering::SeqCst);
        if take(&self.refund_outages) {
            return Err(PaymentError::Unavailable("injected refund outage".into()));
        }
        Payments::refund(&self.ledger, charge_key).await
    }
}

/// The fulfilment saga with a failure injected at one step: `fails` invocations of `step`
/// fail (permanently or not), before or after the step's real effect.
struct Faulty {
    inner: FulfilmentSaga,
    step: &'static str,
    fails: AtomicU32,
    permanent: bool,
    after_effect: bool,
}

#[async_trait]
impl Saga for Faulty {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn steps(&self) -> &[StepPolicy] {
        self.inner.steps()
    }
    async fn run(&self, ctx: &StepContext) -> Result<Value, StepError> {
        if ctx.step == self.step && take(&self.fails) {
            if self.after_effect {
                self.inner.run(ctx).await?;
            }
            let msg = format!("injected failure at {}", self.step);
            return Err(if self.permanent {
                StepError::Permanent(msg)
            } else {
                StepError::Retry(msg)
            });
        }
        self.inner.run(ctx).await
    }
    async fn compensate(&self, ctx: &StepContext) -> Result<(), StepError> {
        self.inner.compensate(ctx).await
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteEventStore>,
    repo: Repository,
    payments: Arc<FlakyPayments>,
}

const ORDER: &str = "o-1";

/// Given two products (fig ×10 in two warehouses, olive ×3) and a pending order of 6 figs and
/// `olives` olives at 20.00 and 30.00.
async fn given_pending_order(olives: u32) -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let repo = Repository::new(store.clone());
    let shop = Shop::new(repo.clone());
    let meta = Metadata::default();
    for (id, price, wh, stock) in [("fig", "20.00", "a", 4), ("olive", "30.00", "a", 3)] {
        let input = NewProduct {
            name: id.into(),
            description: String::new(),
            category: "plants".into(),
            price: Money::parse_decimal(price).unwrap(),
            currency: Currency::new("EUR").unwrap(),
            stock: Some((wh.into(), stock)),
        };
        shop.create_product(&seller(), id, input, 1, &meta)
            .await
            .unwrap();
    }
    let more = ficus_domain::product::ProductCommand::AdjustStock {
        actor_id: "seller-1".into(),
        warehouse: "b".into(),
        delta: 6,
        at_ms: 2,
    };
    shop.product_command("fig", more, &meta, None)
        .await
        .unwrap();
    let items = [
        RequestedItem {
            product_id: "fig".into(),
            quantity: 6,
        },
        RequestedItem {
            product_id: "olive".into(),
            quantity: olives,
        },
    ];
    shop.create_order(&customer(), ORDER, &items, 3, &meta)
        .await
        .unwrap();
    let place = OrderCommand::PlaceForFulfilment {
        actor_id: "cust-1".into(),
        at_ms: 4,
    };
    shop.order_command(ORDER, place, &meta, None).await.unwrap();
    World {
        _dir: dir,
        store,
        repo,
        payments: Arc::new(FlakyPayments::default()),
    }
}

impl World {
    fn saga(&self) -> FulfilmentSaga {
        FulfilmentSaga::new(self.repo.clone(), self.payments.clone(), fast_config())
    }

    fn orchestrator(&self, saga: Arc<dyn Saga>) -> SagaOrchestrator {
        SagaOrchestrator::new(self.store.clone()).with(saga)
    }

    /// When the saga is driven to its end.
    async fn drive(&self, saga: Arc<dyn Saga>) -> SagaState {
        let o = self.orchestrator(saga);
        tokio::time::timeout(
            WAIT,
            o.drive(
                &saga_id_of(ORDER),
                FULFILMENT_SAGA,
                json!({ "order_id": ORDER }),
            ),
        )
        .await
        .expect("saga ends in time")
        .expect("saga drives")
    }

    fn faulty(
        &self,
        step: &'static str,
        fails: u32,
        permanent: bool,
        after_effect: bool,
    ) -> Arc<dyn Saga> {
        Arc::new(Faulty {
            inner: self.saga(),
            step,
            fails: AtomicU32::new(fails),
            permanent,
            after_effect,
        })
    }

    async fn order_status(&self) -> OrderStatus {
        self.repo
            .load::<Order>(ORDER)
            .await
            .unwrap()
            .state
            .status()
            .unwrap()
    }

    async fn stock(&self, product: &str) -> i64 {
        self.repo
            .load::<Product>(product)
            .await
            .unwrap()
            .state
            .stock_total()
    }

    async fn shipment(&self) -> Shipment {
        self.repo.load::<Shipment>(ORDER).await.unwrap().state
    }

    /// The saga's recorded events, as `(type, step)`.
    async fn log(&self) -> Vec<(String, String)> {
        let stream = ficus_runtime::saga::saga_stream(&saga_id_of(ORDER)).unwrap();
        let events = self.store.read_stream(&stream, 1, 1000).await.unwrap();
        events
            .iter()
            .map(|e| {
                let ev: SagaEvent =
                    ficus_core::codec::decode(e.event_type.as_str(), e.schema_version, &e.payload)
                        .unwrap();
                let step = match ev {
                    SagaEvent::StepStarted { step, .. }
                    | SagaEvent::StepSucceeded { step, .. }
                    | SagaEvent::StepFailed { step, .. }
                    | SagaEvent::CompensationStarted { step, .. }
                    | SagaEvent::Compensated { step, .. }
                    | SagaEvent::CompensationFailed { step, .. } => step,
                    _ => String::new(),
                };
                (e.event_type.as_str().to_owned(), step)
            })
            .collect()
    }

    /// The steps compensated, in the order they were.
    async fn compensated(&self) -> Vec<String> {
        self.log()
            .await
            .into_iter()
            .filter(|(t, _)| t == "Compensated")
            .map(|(_, s)| s)
            .collect()
    }

    fn charge(&self) -> Option<ficus_domain::fulfilment::Charge> {
        self.payments
            .ledger
            .get(&format!("{}:{STEP_CHARGE}", saga_id_of(ORDER)))
    }
}

fn steps(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn every_step_succeeds_and_the_order_is_confirmed() {
    let w = given_pending_order(2).await;
    assert_eq!(w.order_status().await, OrderStatus::Pending);

    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Completed);
    assert_eq!(w.order_status().await, OrderStatus::Confirmed);
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (4, 1));
    let charge = w.charge().expect("charged");
    assert_eq!(charge.amount, Money::parse_decimal("180.00").unwrap());
    assert!(!charge.refunded);
    assert_eq!(w.payments.ledger.effects(), 1);
    assert!(w.shipment().await.exists());
    // Six figs: all four of warehouse a, then two of b (warehouses in name order).
    let fig = w.repo.load::<Product>("fig").await.unwrap().state;
    assert_eq!((fig.stock("a"), fig.stock("b")), (0, 4));
    let log = w.log().await;
    assert_eq!(log.first().unwrap().0, "SagaStarted");
    assert_eq!(log.last().unwrap().0, "SagaCompleted");
    assert!(w.compensated().await.is_empty());
    // Driving a finished saga again changes nothing.
    let again = w.drive(Arc::new(w.saga())).await;
    assert_eq!(again.version, end.version);
}

#[tokio::test]
async fn no_stock_releases_what_was_reserved_and_rejects_the_order() {
    // Four olives but three in stock: the figs are reserved first, then the olives fail.
    let w = given_pending_order(4).await;

    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(end.failure.as_ref().unwrap().0, STEP_RESERVE);
    assert_eq!(w.compensated().await, steps(&[STEP_RESERVE, STEP_ORDER]));
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert_eq!(
        w.payments.charge_calls.load(Ordering::SeqCst),
        0,
        "never charged"
    );
    assert!(!w.shipment().await.exists());
    // A refusal by the rules is not retried.
    let starts = w
        .log()
        .await
        .iter()
        .filter(|(t, s)| t == "StepStarted" && s == STEP_RESERVE)
        .count();
    assert_eq!(starts, 1);
}

#[tokio::test]
async fn a_declined_payment_voids_the_charge_releases_stock_and_rejects() {
    let w = given_pending_order(2).await;
    w.payments.decline.store(true, Ordering::SeqCst);

    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(end.failure.as_ref().unwrap().0, STEP_CHARGE);
    assert_eq!(
        w.compensated().await,
        steps(&[STEP_CHARGE, STEP_RESERVE, STEP_ORDER])
    );
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert_eq!(w.payments.ledger.effects(), 0);
    // The refund voided the key: a charge arriving late is declined.
    let key = format!("{}:{STEP_CHARGE}", saga_id_of(ORDER));
    assert!(w
        .payments
        .ledger
        .charge(&key, "cust-1", Money::parse_decimal("1.00").unwrap(), "EUR")
        .is_err());
    assert!(!w.shipment().await.exists());
}

#[tokio::test]
async fn a_payment_outage_is_retried_with_a_bound_then_compensated() {
    let w = given_pending_order(2).await;
    w.payments.charge_outages.store(100, Ordering::SeqCst);

    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(
        w.payments.charge_calls.load(Ordering::SeqCst),
        3,
        "max_attempts calls"
    );
    assert_eq!(end.step(STEP_CHARGE).unwrap().attempts, 3);
    assert_eq!(
        w.compensated().await,
        steps(&[STEP_CHARGE, STEP_RESERVE, STEP_ORDER])
    );
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
}

#[tokio::test]
async fn a_short_outage_is_ridden_out_by_retries() {
    let w = given_pending_order(2).await;
    w.payments.charge_outages.store(2, Ordering::SeqCst);

    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Completed);
    assert_eq!(w.order_status().await, OrderStatus::Confirmed);
    assert_eq!(w.payments.charge_calls.load(Ordering::SeqCst), 3);
    assert_eq!(w.payments.ledger.effects(), 1);
}

#[tokio::test]
async fn a_lost_payment_answer_times_out_and_the_retry_does_not_charge_twice() {
    let w = given_pending_order(2).await;
    w.payments.charge_lost_answers.store(1, Ordering::SeqCst);

    let started = std::time::Instant::now();
    let end = w.drive(Arc::new(w.saga())).await;

    assert_eq!(end.status, SagaStatus::Completed);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "the step timed out once"
    );
    let failed: Vec<_> = w
        .log()
        .await
        .into_iter()
        .filter(|(t, _)| t == "StepFailed")
        .collect();
    assert_eq!(
        failed,
        vec![("StepFailed".to_owned(), STEP_CHARGE.to_owned())]
    );
    assert!(end
        .step(STEP_CHARGE)
        .unwrap()
        .last_error
        .as_deref()
        .unwrap()
        .contains("timed out"));
    assert_eq!(w.payments.charge_calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        w.payments.ledger.effects(),
        1,
        "the second call found the first charge"
    );
    assert_eq!(w.order_status().await, OrderStatus::Confirmed);
}

#[tokio::test]
async fn a_shipment_failure_refunds_releases_and_rejects() {
    let w = given_pending_order(2).await;

    let end = w.drive(w.faulty(STEP_SHIP, 100, false, false)).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(end.failure.as_ref().unwrap().0, STEP_SHIP);
    assert_eq!(
        w.compensated().await,
        steps(&[STEP_SHIP, STEP_CHARGE, STEP_RESERVE, STEP_ORDER])
    );
    assert!(w.charge().unwrap().refunded);
    assert_eq!(w.payments.ledger.effects(), 2, "one charge, one refund");
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert!(w.shipment().await.is_cancelled());
}

#[tokio::test]
async fn a_shipment_made_whose_answer_was_lost_is_cancelled_by_the_compensation() {
    let w = given_pending_order(2).await;

    let end = w.drive(w.faulty(STEP_SHIP, 100, true, true)).await;

    assert_eq!(end.status, SagaStatus::Failed);
    let shipment = w.shipment().await;
    assert!(shipment.exists() && shipment.is_cancelled());
    assert!(w.charge().unwrap().refunded);
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
}

#[tokio::test]
async fn a_confirmation_failure_undoes_every_step() {
    let w = given_pending_order(2).await;

    let end = w.drive(w.faulty(STEP_CONFIRM, 100, false, false)).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(
        w.compensated().await,
        steps(&[
            STEP_CONFIRM,
            STEP_SHIP,
            STEP_CHARGE,
            STEP_RESERVE,
            STEP_ORDER
        ])
    );
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert!(w.shipment().await.is_cancelled());
    assert!(w.charge().unwrap().refunded);
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
}

#[tokio::test]
async fn an_order_step_failure_only_rejects() {
    let w = given_pending_order(2).await;

    let end = w.drive(w.faulty(STEP_ORDER, 100, true, false)).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(w.compensated().await, steps(&[STEP_ORDER]));
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
}

#[tokio::test]
async fn a_failing_refund_is_retried_never_skipped() {
    let w = given_pending_order(2).await;
    // More refund failures than one drive tries: the drive hands the saga back (as the job
    // queue would retry it), and the next drive finishes the compensation.
    w.payments.refund_outages.store(7, Ordering::SeqCst);
    let saga = w.faulty(STEP_SHIP, 100, true, false);

    let first = w
        .orchestrator(saga.clone())
        .drive(
            &saga_id_of(ORDER),
            FULFILMENT_SAGA,
            json!({"order_id": ORDER}),
        )
        .await;
    assert!(
        first.is_err(),
        "the drive hands back a saga whose compensation is failing"
    );
    assert_eq!(w.order_status().await, OrderStatus::Pending);
    let end = w.drive(saga).await;

    assert_eq!(end.status, SagaStatus::Failed);
    assert_eq!(w.payments.refund_calls.load(Ordering::SeqCst), 8);
    assert!(w.charge().unwrap().refunded);
    assert_eq!(
        w.compensated().await,
        steps(&[STEP_SHIP, STEP_CHARGE, STEP_RESERVE, STEP_ORDER])
    );
    assert_eq!(w.order_status().await, OrderStatus::Rejected);
}

/// Kills the driver (a panic in its task) right after the saga's `n`-th record, then drives
/// the saga again with a fresh orchestrator. Returns the resumed saga's end.
async fn crash_after(w: &World, n: u64, saga: Arc<dyn Saga>) -> Option<SagaState> {
    let crashing = w
        .orchestrator(saga.clone())
        .with_record_hook(Arc::new(move |_, v, moment| {
            if v == n && moment == RecordMoment::After {
                panic!("injected crash after record {n}");
            }
        }));
    let run = tokio::spawn(async move {
        crashing
            .drive(
                &saga_id_of(ORDER),
                FULFILMENT_SAGA,
                json!({"order_id": ORDER}),
            )
            .await
    });
    let crashed = tokio::time::timeout(WAIT, run)
        .await
        .expect("in time")
        .is_err();
    if !crashed {
        return None;
    }
    Some(w.drive(saga).await)
}

#[tokio::test]
async fn a_driver_killed_after_any_record_is_resumed_without_a_second_effect() {
    // The success path: every record point of it.
    let mut n = 1;
    loop {
        let w = given_pending_order(2).await;
        let Some(end) = crash_after(&w, n, Arc::new(w.saga())).await else {
            assert!(n > 10, "the saga records more than ten events");
            break;
        };
        assert_eq!(end.status, SagaStatus::Completed, "crash after record {n}");
        assert_eq!(w.payments.ledger.effects(), 1, "crash after record {n}");
        assert_eq!(w.order_status().await, OrderStatus::Confirmed);
        assert_eq!(
            (w.stock("fig").await, w.stock("olive").await),
            (4, 1),
            "crash after record {n}"
        );
        n += 1;
    }
}

#[tokio::test]
async fn a_driver_killed_during_compensation_finishes_every_compensation() {
    let mut n = 1;
    loop {
        let w = given_pending_order(2).await;
        let saga = w.faulty(STEP_SHIP, 100, true, true);
        let Some(end) = crash_after(&w, n, saga).await else {
            assert!(n > 15);
            break;
        };
        assert_eq!(end.status, SagaStatus::Failed, "crash after record {n}");
        assert_eq!(
            w.compensated().await,
            steps(&[STEP_SHIP, STEP_CHARGE, STEP_RESERVE, STEP_ORDER]),
            "crash after record {n}"
        );
        assert_eq!(
            w.payments.ledger.effects(),
            2,
            "one charge, one refund; crash after {n}"
        );
        assert_eq!((w.stock("fig").await, w.stock("olive").await), (10, 3));
        assert_eq!(w.order_status().await, OrderStatus::Rejected);
        assert!(w.shipment().await.is_cancelled());
        n += 1;
    }
}

#[tokio::test]
async fn two_drivers_of_one_saga_take_each_effect_once() {
    let w = given_pending_order(2).await;
    let (a, b) = (
        w.orchestrator(Arc::new(w.saga())),
        w.orchestrator(Arc::new(w.saga())),
    );
    let id = saga_id_of(ORDER);
    let input = json!({"order_id": ORDER});
    let (ra, rb) = tokio::join!(
        a.drive(&id, FULFILMENT_SAGA, input.clone()),
        b.drive(&id, FULFILMENT_SAGA, input.clone())
    );
    assert_eq!(ra.unwrap().status, SagaStatus::Completed);
    assert_eq!(rb.unwrap().status, SagaStatus::Completed);
    assert_eq!(w.payments.ledger.effects(), 1);
    assert_eq!((w.stock("fig").await, w.stock("olive").await), (4, 1));
    let starts = w
        .log()
        .await
        .iter()
        .filter(|(t, _)| t == "StepSucceeded")
        .count();
    assert_eq!(starts, 5, "each step recorded once");
}

#[tokio::test]
async fn placing_for_fulfilment_runs_the_saga_from_the_job_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteEventStore::open(dir.path().join("events.db"), SqliteConfig::default()).unwrap(),
    );
    let jobs: Arc<dyn JobQueue> = Arc::new(SqliteJobQueue::new(store.clone()));
    let repo = Repository::new(store.clone());
    let shop = Shop::new(repo.clone());
    let meta = Metadata::default();
    let input = NewProduct {
        name: "fig".into(),
        description: String::new(),
        category: "plants".into(),
        price: Money::parse_decimal("5.00").unwrap(),
        currency: Currency::new("EUR").unwrap(),
        stock: Some(("a".into(), 2)),
    };
    shop.create_product(&seller(), "fig", input, 1, &meta)
        .await
        .unwrap();
    let item = [RequestedItem {
        product_id: "fig".into(),
        quantity: 2,
    }];
    shop.create_order(&customer(), ORDER, &item, 2, &meta)
        .await
        .unwrap();
    let ledger = PaymentLedger::default();
    let saga = FulfilmentSaga::new(repo.clone(), Arc::new(ledger.clone()), fast_config());
    let orchestrator = SagaOrchestrator::new(store.clone()).with(Arc::new(saga));
    let fulfilment = Fulfilment {
        shop: shop.clone(),
        jobs: jobs.clone(),
        orchestrator: orchestrator.clone(),
        saga_start: ficus_domain::fulfilment::SagaStart::AfterAppend,
    };

    fulfilment
        .place(&customer(), ORDER, &meta, None)
        .await
        .unwrap();
    let pending = repo.load::<Order>(ORDER).await.unwrap().state.status();
    assert_eq!(pending, Some(OrderStatus::Pending));
    // A repeated place is refused and enqueues nothing new.
    assert!(fulfilment
        .place(&customer(), ORDER, &meta, None)
        .await
        .is_err());

    let shutdown = Shutdown::new();
    let pool = WorkerPool::spawn(
        jobs.clone(),
        Arc::new(SagaJobHandler {
            orchestrator: orchestrator.clone(),
        }),
        PoolConfig {
            poll_interval: Duration::from_millis(20),
            ..PoolConfig::new(SAGA_QUEUE)
        },
        None,
        shutdown.clone(),
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = repo.load::<Order>(ORDER).await.unwrap().state.status();
        if status == Some(OrderStatus::Confirmed) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order still {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    pool.join().await;
    assert_eq!(ledger.effects(), 1);
    let state = orchestrator
        .load(&saga_id_of(ORDER))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.status, SagaStatus::Completed);
}

#[test]
fn raw_appends_cannot_touch_a_saga_and_must_fit_a_shipment() {
    use ficus_domain::check_raw_event;
    let started = json!({"saga_id": "x", "kind": FULFILMENT_SAGA, "input": {}, "at_ms": 1});
    assert!(check_raw_event("saga-x", "SagaStarted", 1, &started).is_err());
    let created = json!({"order_id": "o-9", "lines": [["fig", 1]], "at_ms": 1});
    assert!(check_raw_event("shipment-o-9", "ShipmentCreated", 1, &created).is_ok());
    assert!(check_raw_event("shipment-o-8", "ShipmentCreated", 1, &created).is_err());
    assert!(check_raw_event("shipment-o-9", "Nonsense", 1, &created).is_err());
}
