//! The order-fulfilment saga: an order placed for fulfilment is `pending` while the saga
//! reserves its stock, charges the customer through the payment service, and creates its
//! shipment; then the order is `confirmed`. When a step cannot be done (no stock, payment
//! declined, the payment service down past its retries) the saga undoes what it started in
//! reverse order — cancel the shipment, refund, release the stock — and rejects the order.
//!
//! Every step is idempotent on its side, keyed by the saga's step key: a reservation's id is
//! the key (the product remembers it), a charge's key is the key (the payment service
//! remembers it), a shipment lives in its own stream created once. Every compensation also
//! closes its key, so an effect arriving late (after a timed-out call) is refused.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ficus_core::{Aggregate, DomainEvent, Metadata, Version};
use ficus_runtime::backoff::Backoff;
use ficus_runtime::saga::{Saga, SagaOrchestrator, StepContext, StepError, StepPolicy};
use ficus_runtime::{CommandError, CommandOutcome, Repository};
use ficus_store::JobQueue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::money::{Currency, Money};
use crate::order::{Order, OrderCommand, OrderStatus};
use crate::product::{Product, ProductCommand};
use crate::service::{Actor, Shop, ShopError};

/// The saga kind of order fulfilment.
pub const FULFILMENT_SAGA: &str = "order_fulfilment";

/// The saga id of an order's fulfilment (its stream is `saga-fulfilment-{order_id}`).
pub fn saga_id_of(order_id: &str) -> String {
    format!("fulfilment-{order_id}")
}

/// Why the payment service did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The payment was refused for good (card declined, charge key voided). Not retried.
    #[error("payment declined: {0}")]
    Declined(String),
    /// The service is down, slow, or its breaker is open. Retried.
    #[error("payment service unavailable: {0}")]
    Unavailable(String),
}

/// A payment service: charges and refunds, each idempotent by key.
#[async_trait]
pub trait Payments: Send + Sync + 'static {
    /// Charges `amount` once per `key`: a repeat returns the first charge's id.
    async fn charge(
        &self,
        key: &str,
        customer_id: &str,
        amount: Money,
        currency: &Currency,
    ) -> Result<String, PaymentError>;
    /// Refunds the charge made with `charge_key`, once. When no charge was made with it, the
    /// key is voided so that a charge arriving later is declined.
    async fn refund(&self, charge_key: &str) -> Result<(), PaymentError>;
}

/// One charge as a [`PaymentLedger`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub charge_id: String,
    pub customer_id: String,
    pub amount: Money,
    pub currency: String,
    pub refunded: bool,
}

/// Most charge keys a ledger keeps; past it new charges are refused (a debug service, not a
/// bank).
pub const LEDGER_MAX_KEYS: usize = 100_000;

#[derive(Debug, Default)]
struct LedgerState {
    /// `None`: the key was voided by a refund that found no charge.
    charges: BTreeMap<String, Option<Charge>>,
    effects: u64,
}

/// The book of a payment service: charges by key, counted effects. The in-memory payment
/// twin for tests, and the state behind `ficus debug payments`.
#[derive(Debug, Default, Clone)]
pub struct PaymentLedger {
    state: Arc<Mutex<LedgerState>>,
}

impl PaymentLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges once per key; a repeat returns the first charge.
    pub fn charge(
        &self,
        key: &str,
        customer_id: &str,
        amount: Money,
        currency: &str,
    ) -> Result<Charge, PaymentError> {
        let mut s = self.lock();
        match s.charges.get(key) {
            Some(Some(c)) => return Ok(c.clone()),
            Some(None) => {
                return Err(PaymentError::Declined(format!(
                    "charge key {key} is voided"
                )))
            }
            None => {}
        }
        if s.charges.len() >= LEDGER_MAX_KEYS {
            return Err(PaymentError::Unavailable("ledger full".into()));
        }
        if amount.is_negative() {
            return Err(PaymentError::Declined("negative amount".into()));
        }
        s.effects += 1;
        let charge = Charge {
            charge_id: format!("ch-{}", s.effects),
            customer_id: customer_id.to_owned(),
            amount,
            currency: currency.to_owned(),
            refunded: false,
        };
        s.charges.insert(key.to_owned(), Some(charge.clone()));
        Ok(charge)
    }

    /// Refunds the charge of `charge_key` once; voids a key never charged.
    pub fn refund(&self, charge_key: &str) -> Result<(), PaymentError> {
        let mut s = self.lock();
        match s.charges.get(charge_key).cloned() {
            Some(Some(c)) if !c.refunded => {
                s.effects += 1;
                s.charges.insert(
                    charge_key.to_owned(),
                    Some(Charge {
                        refunded: true,
                        ..c
                    }),
                );
            }
            Some(_) => {}
            None => {
                if s.charges.len() >= LEDGER_MAX_KEYS {
                    return Err(PaymentError::Unavailable("ledger full".into()));
                }
                s.charges.insert(charge_key.to_owned(), None);
            }
        }
        Ok(())
    }

    /// The charge made with `key` (`None`: never charged, or voided).
    pub fn get(&self, key: &str) -> Option<Charge> {
        self.lock().charges.get(key).cloned().flatten()
    }

    /// Charges and refunds that took effect (repeats excluded).
    pub fn effects(&self) -> u64 {
        self.lock().effects
    }

    /// Every key and its charge (`None`: voided).
    pub fn all(&self) -> BTreeMap<String, Option<Charge>> {
        self.lock().charges.clone()
    }
}

#[async_trait]
impl Payments for PaymentLedger {
    async fn charge(
        &self,
        key: &str,
        customer_id: &str,
        amount: Money,
        currency: &Currency,
    ) -> Result<String, PaymentError> {
        PaymentLedger::charge(self, key, customer_id, amount, currency.as_str())
            .map(|c| c.charge_id)
    }

    async fn refund(&self, charge_key: &str) -> Result<(), PaymentError> {
        PaymentLedger::refund(self, charge_key)
    }
}

/// A shipment: created once for an order, or cancelled (which also refuses a late creation).
#[derive(Debug, Clone, Default)]
pub struct Shipment {
    order_id: Option<String>,
    cancelled: bool,
}

impl Shipment {
    pub fn exists(&self) -> bool {
        self.order_id.is_some()
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShipmentCommand {
    Create {
        order_id: String,
        /// `(product_id, units)`.
        lines: Vec<(String, u32)>,
        at_ms: i64,
    },
    Cancel {
        order_id: String,
        at_ms: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ShipmentEvent {
    ShipmentCreated {
        order_id: String,
        lines: Vec<(String, u32)>,
        at_ms: i64,
    },
    ShipmentCancelled {
        order_id: String,
        at_ms: i64,
    },
}

impl DomainEvent for ShipmentEvent {}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShipmentError {
    /// The shipment was cancelled: it cannot be created any more. 422,
    /// `shipment_cancelled`.
    #[error("shipment of order {0} is cancelled")]
    Cancelled(String),
}

impl Aggregate for Shipment {
    type Command = ShipmentCommand;
    type Event = ShipmentEvent;
    type Error = ShipmentError;
    const KIND: &'static str = "shipment";

    fn decide(&self, command: &ShipmentCommand) -> Result<Vec<ShipmentEvent>, ShipmentError> {
        match command {
            ShipmentCommand::Create {
                order_id,
                lines,
                at_ms,
            } => {
                if self.cancelled {
                    return Err(ShipmentError::Cancelled(order_id.clone()));
                }
                if self.exists() {
                    return Ok(vec![]);
                }
                Ok(vec![ShipmentEvent::ShipmentCreated {
                    order_id: order_id.clone(),
                    lines: lines.clone(),
                    at_ms: *at_ms,
                }])
            }
            ShipmentCommand::Cancel { order_id, at_ms } => {
                if self.cancelled {
                    return Ok(vec![]);
                }
                Ok(vec![ShipmentEvent::ShipmentCancelled {
                    order_id: order_id.clone(),
                    at_ms: *at_ms,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &ShipmentEvent) {
        match event {
            ShipmentEvent::ShipmentCreated { order_id, .. } => {
                self.order_id = Some(order_id.clone())
            }
            ShipmentEvent::ShipmentCancelled { .. } => self.cancelled = true,
        }
    }
}

/// Timeouts and retries of the fulfilment steps.
#[derive(Debug, Clone)]
pub struct FulfilmentConfig {
    /// Longest a store step (order, stock, shipment) may take.
    pub step_timeout: Duration,
    /// Longest one payment call may take (the payment client's own retries included).
    pub payment_timeout: Duration,
    /// Attempts of every step before it is given up.
    pub max_attempts: u32,
    pub backoff: Backoff,
}

impl Default for FulfilmentConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(5),
            payment_timeout: Duration::from_secs(5),
            max_attempts: 4,
            backoff: Backoff {
                base_ms: 100,
                max_ms: 2_000,
            },
        }
    }
}

/// The fulfilment saga's steps and compensations.
pub struct FulfilmentSaga {
    repo: Repository,
    payments: Arc<dyn Payments>,
    steps: Vec<StepPolicy>,
}

pub const STEP_ORDER: &str = "order";
pub const STEP_RESERVE: &str = "reserve_stock";
pub const STEP_CHARGE: &str = "charge_payment";
pub const STEP_SHIP: &str = "create_shipment";
pub const STEP_CONFIRM: &str = "confirm_order";

/// Retryable unless the aggregate refused: a refusal by the rules does not change on retry.
fn step_error<E: std::error::Error>(e: CommandError<E>) -> StepError {
    match e {
        CommandError::Domain(d) => StepError::Permanent(d.to_string()),
        CommandError::InvalidId(v) => StepError::Permanent(v.to_string()),
        CommandError::Codec(c) => StepError::Permanent(c.to_string()),
        other => StepError::Retry(other.to_string()),
    }
}

fn payment_error(e: PaymentError) -> StepError {
    match e {
        PaymentError::Declined(_) => StepError::Permanent(e.to_string()),
        PaymentError::Unavailable(_) => StepError::Retry(e.to_string()),
    }
}

fn meta(ctx: &StepContext) -> Metadata {
    Metadata {
        correlation_id: Some(format!("saga:{}", ctx.saga_id)),
        causation_id: Some(ctx.key.clone()),
        ..Default::default()
    }
}

/// What the `order` step read: what the later steps act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OrderFacts {
    customer_id: String,
    total: Money,
    currency: Option<Currency>,
    /// Units per product, summed over the order's lines.
    units: BTreeMap<String, u32>,
}

impl FulfilmentSaga {
    pub fn new(repo: Repository, payments: Arc<dyn Payments>, config: FulfilmentConfig) -> Self {
        let policy = |name, timeout| StepPolicy {
            name,
            timeout,
            max_attempts: config.max_attempts,
            backoff: config.backoff,
        };
        let store_step = config.step_timeout;
        Self {
            repo,
            payments,
            steps: vec![
                policy(STEP_ORDER, store_step),
                policy(STEP_RESERVE, store_step),
                policy(STEP_CHARGE, config.payment_timeout),
                policy(STEP_SHIP, store_step),
                policy(STEP_CONFIRM, store_step),
            ],
        }
    }

    fn order_id(ctx: &StepContext) -> Result<String, StepError> {
        ctx.input["order_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| StepError::Permanent("saga input has no order_id".into()))
    }

    fn facts(ctx: &StepContext) -> Result<OrderFacts, StepError> {
        ctx.outputs
            .get(STEP_ORDER)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| StepError::Permanent("the order step left no facts".into()))
    }

    async fn read_order(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let order_id = Self::order_id(ctx)?;
        let order = self
            .repo
            .load::<Order>(&order_id)
            .await
            .map_err(step_error)?
            .state;
        match order.status() {
            Some(OrderStatus::Pending | OrderStatus::Confirmed) => {}
            other => {
                return Err(StepError::Permanent(format!(
                    "order {order_id} is not pending ({})",
                    other.map_or("missing", |s| s.as_str())
                )))
            }
        }
        let mut units = BTreeMap::new();
        for line in order.lines() {
            let u: &mut u32 = units.entry(line.product_id.clone()).or_default();
            *u = u.saturating_add(line.quantity);
        }
        let facts = OrderFacts {
            customer_id: order.customer_id().unwrap_or_default().to_owned(),
            total: order.total(),
            currency: order.currency().cloned(),
            units,
        };
        serde_json::to_value(facts).map_err(|e| StepError::Permanent(e.to_string()))
    }

    async fn reserve(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let facts = Self::facts(ctx)?;
        for (product_id, quantity) in &facts.units {
            let cmd = ProductCommand::ReserveStock {
                reservation_id: ctx.key.clone(),
                quantity: *quantity,
                at_ms: ficus_store::now_ms(),
            };
            self.repo
                .execute::<Product>(product_id, &cmd, &meta(ctx), None)
                .await
                .map_err(step_error)?;
        }
        Ok(json!({"reservation_id": ctx.key, "products": facts.units.len()}))
    }

    async fn release(&self, ctx: &StepContext) -> Result<(), StepError> {
        let facts = Self::facts(ctx)?;
        for product_id in facts.units.keys() {
            let cmd = ProductCommand::ReleaseStock {
                reservation_id: ctx.key.clone(),
                at_ms: ficus_store::now_ms(),
            };
            self.repo
                .execute::<Product>(product_id, &cmd, &meta(ctx), None)
                .await
                .map_err(step_error)?;
        }
        Ok(())
    }

    async fn charge(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let facts = Self::facts(ctx)?;
        let currency = facts
            .currency
            .ok_or_else(|| StepError::Permanent("the order has no currency".into()))?;
        let charge_id = self
            .payments
            .charge(&ctx.key, &facts.customer_id, facts.total, &currency)
            .await
            .map_err(payment_error)?;
        Ok(json!({"charge_id": charge_id, "amount": facts.total.to_decimal_string()}))
    }

    async fn ship(&self, ctx: &StepContext) -> Result<Value, StepError> {
        let order_id = Self::order_id(ctx)?;
        let facts = Self::facts(ctx)?;
        let cmd = ShipmentCommand::Create {
            order_id: order_id.clone(),
            lines: facts.units.into_iter().collect(),
            at_ms: ficus_store::now_ms(),
        };
        self.repo
            .execute::<Shipment>(&order_id, &cmd, &meta(ctx), None)
            .await
            .map_err(step_error)?;
        Ok(json!({"shipment_id": order_id}))
    }

    async fn cancel_shipment(&self, ctx: &StepContext) -> Result<(), StepError> {
        let order_id = Self::order_id(ctx)?;
        let cmd = ShipmentCommand::Cancel {
            order_id: order_id.clone(),
            at_ms: ficus_store::now_ms(),
        };
        self.repo
            .execute::<Shipment>(&order_id, &cmd, &meta(ctx), None)
            .await
            .map_err(step_error)?;
        Ok(())
    }

    async fn order_command(&self, ctx: &StepContext, cmd: OrderCommand) -> Result<(), StepError> {
        let order_id = Self::order_id(ctx)?;
        self.repo
            .execute::<Order>(&order_id, &cmd, &meta(ctx), None)
            .await
            .map_err(step_error)?;
        Ok(())
    }
}

#[async_trait]
impl Saga for FulfilmentSaga {
    fn kind(&self) -> &'static str {
        FULFILMENT_SAGA
    }

    fn steps(&self) -> &[StepPolicy] {
        &self.steps
    }

    async fn run(&self, ctx: &StepContext) -> Result<Value, StepError> {
        match ctx.step.as_str() {
            STEP_ORDER => self.read_order(ctx).await,
            STEP_RESERVE => self.reserve(ctx).await,
            STEP_CHARGE => self.charge(ctx).await,
            STEP_SHIP => self.ship(ctx).await,
            STEP_CONFIRM => {
                let cmd = OrderCommand::Confirm {
                    at_ms: ficus_store::now_ms(),
                };
                self.order_command(ctx, cmd).await.map(|()| json!({}))
            }
            other => Err(StepError::Permanent(format!("unknown step {other}"))),
        }
    }

    async fn compensate(&self, ctx: &StepContext) -> Result<(), StepError> {
        match ctx.step.as_str() {
            STEP_ORDER => {
                let reason = ctx
                    .failure
                    .as_ref()
                    .map_or("fulfilment failed".to_owned(), |(step, e)| {
                        format!("{step}: {e}")
                    });
                let cmd = OrderCommand::Reject {
                    reason,
                    at_ms: ficus_store::now_ms(),
                };
                self.order_command(ctx, cmd).await
            }
            // Without the order's facts nothing was reserved.
            STEP_RESERVE if !ctx.outputs.contains_key(STEP_ORDER) => Ok(()),
            STEP_RESERVE => self.release(ctx).await,
            STEP_CHARGE => self.payments.refund(&ctx.key).await.map_err(payment_error),
            STEP_SHIP => self.cancel_shipment(ctx).await,
            // Confirming is the last step: when it failed, the order is still pending and
            // the order step's compensation rejects it.
            STEP_CONFIRM => Ok(()),
            other => Err(StepError::Permanent(format!("unknown step {other}"))),
        }
    }
}

/// How a placed order's fulfilment saga gets started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaStart {
    /// `place` enqueues the saga's job after the order's append (PostgreSQL: the jobs live
    /// in other tables and the append is a `ficus_append` call of its own). A crash between
    /// the two is healed by placing the order again.
    AfterAppend,
    /// The append itself records the start in the embedded outbox ([`outbox_rule`]), in the
    /// same transaction; the outbox relay enqueues the job. Nothing to do after the append.
    Outbox,
}

/// Places orders for fulfilment: the order turns `pending` and its saga is started.
#[derive(Clone)]
pub struct Fulfilment {
    pub shop: Shop,
    pub jobs: Arc<dyn JobQueue>,
    pub orchestrator: SagaOrchestrator,
    pub saga_start: SagaStart,
}

/// The outbox rule of the shop on the embedded store: an order placed for fulfilment
/// (`OrderFulfilmentPending`) starts its fulfilment saga. It reads only the order id.
pub fn outbox_rule() -> ficus_store::sqlite::OutboxRule {
    Arc::new(|_stream, events| {
        events
            .iter()
            .filter(|e| e.event_type.as_str() == "OrderFulfilmentPending")
            .filter_map(|e| e.payload["order_id"].as_str())
            .map(|order_id| ficus_store::sqlite::OutboxMessage {
                kind: ficus_runtime::outbox::SAGA_START.to_owned(),
                payload: ficus_runtime::outbox::saga_start_payload(
                    &saga_id_of(order_id),
                    FULFILMENT_SAGA,
                    json!({ "order_id": order_id }),
                ),
            })
            .collect()
    })
}

impl Fulfilment {
    /// Places the order (`pending`) and starts its fulfilment saga. With
    /// [`SagaStart::Outbox`] the start is recorded with the order's events and nothing can be
    /// lost between them. With [`SagaStart::AfterAppend`] the order's events are durable
    /// before the saga's job; a crash between the two leaves a pending order whose saga starts
    /// when the order is placed again (`order_already_placed` is answered, and the saga job is
    /// enqueued once more: its unique key makes that a no-op when it exists).
    pub async fn place(
        &self,
        actor: &Actor,
        order_id: &str,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, ShopError> {
        let cmd = OrderCommand::PlaceForFulfilment {
            actor_id: actor.user_id.clone(),
            at_ms: ficus_store::now_ms(),
        };
        match self.shop.order_command(order_id, cmd, meta, if_match).await {
            // The append recorded the start in the outbox, in its own transaction.
            Ok(outcome) if self.saga_start == SagaStart::Outbox => Ok(outcome),
            Ok(outcome) => {
                self.start(order_id).await?;
                Ok(outcome)
            }
            Err(e @ ShopError::Order(crate::order::OrderError::OrderAlreadyPlaced { .. }))
                if self.saga_start == SagaStart::AfterAppend =>
            {
                // A repeat of a place whose saga job may have been lost in a crash.
                let order = self.shop.repository().load::<Order>(order_id).await;
                if order.is_ok_and(|o| o.state.status() == Some(OrderStatus::Pending)) {
                    self.start(order_id).await?;
                }
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Enqueues the fulfilment saga of `order_id` (a no-op while its job exists).
    pub async fn start(&self, order_id: &str) -> Result<(), ShopError> {
        self.orchestrator
            .start(
                &*self.jobs,
                &saga_id_of(order_id),
                FULFILMENT_SAGA,
                json!({ "order_id": order_id }),
            )
            .await
            .map_err(|e| match e {
                ficus_runtime::saga::SagaError::Store(s) => ShopError::Store(s),
                other => ShopError::Internal(other.to_string()),
            })
    }
}
