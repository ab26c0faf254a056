//! The `Order` aggregate: a customer's basket that is filled while in draft, then placed or
//! cancelled.
//!
//! The aggregate never looks prices up: the caller reads the product's current price and puts
//! it into the `OrderLine`, so `decide` stays pure and the order keeps the price it was quoted.

use ficus_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};
use crate::product::MAX_PRICE;
use crate::{check_id, check_text, ErrorKind};

/// Most lines an order may hold.
pub const MAX_LINES: usize = 50;
/// Most units of one product an order may hold (over all its lines for that product).
pub const MAX_QUANTITY: u32 = 10_000;
pub const CANCEL_REASON_MAX_CHARS: usize = 500;

/// One product at one quoted price, as requested by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    pub product_id: String,
    /// 1..=`MAX_QUANTITY`.
    pub quantity: u32,
    /// The product's price when the line was requested; 0.00..=10 000.00.
    pub unit_price: Money,
    pub currency: Currency,
}

/// What may be asked of an order. Ids and `at_ms` (Unix ms, UTC) come from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Opens a draft order, possibly empty (fill it later with `AddItem`).
    Create {
        order_id: String,
        customer_id: String,
        items: Vec<OrderLine>,
        at_ms: i64,
    },
    /// Adds units to a draft order. A product already in the order at the same unit price is
    /// merged into its line (quantity increased); at a different unit price (the price changed
    /// between two additions) it becomes a separate line, so each unit keeps the price quoted
    /// when it was added.
    AddItem {
        actor_id: String,
        line: OrderLine,
        at_ms: i64,
    },
    Place {
        actor_id: String,
        at_ms: i64,
    },
    /// Cancels a draft or placed order.
    Cancel {
        actor_id: String,
        reason: Option<String>,
        at_ms: i64,
    },
    /// Places the order for fulfilment: like `Place`, and the order is then `pending` until
    /// the fulfilment saga confirms or rejects it.
    PlaceForFulfilment {
        actor_id: String,
        at_ms: i64,
    },
    /// The fulfilment saga succeeded (system command). Idempotent.
    Confirm {
        at_ms: i64,
    },
    /// The fulfilment saga failed and undid its steps (system command). Idempotent; a no-op
    /// on an order that was never placed for fulfilment.
    Reject {
        reason: String,
        at_ms: i64,
    },
}

/// Where an order is in its life. Serialized lowercase: `"draft"`, `"placed"`, `"cancelled"`,
/// and with fulfilment `"pending"`, then `"confirmed"` or `"rejected"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Draft,
    Placed,
    Cancelled,
    /// Placed for fulfilment; the saga has not ended.
    Pending,
    Confirmed,
    Rejected,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Draft => "draft",
            OrderStatus::Placed => "placed",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
        }
    }
}

/// What happened to an order. Every event carries `order_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum OrderEvent {
    OrderCreated {
        order_id: String,
        customer_id: String,
        /// The currency of the initial items; `None` when the order was created empty.
        currency: Option<Currency>,
        at_ms: i64,
    },
    OrderItemAdded {
        order_id: String,
        product_id: String,
        /// Units added by this event (not the merged line's quantity).
        quantity: u32,
        unit_price: Money,
        /// Carried so an order created empty learns its currency from its first item.
        currency: Currency,
        /// `unit_price × quantity` for the units added by this event.
        line_total: Money,
        at_ms: i64,
    },
    OrderPlaced {
        order_id: String,
        customer_id: String,
        total: Money,
        /// Units over all lines.
        item_count: u32,
        at_ms: i64,
    },
    OrderCancelled {
        order_id: String,
        reason: Option<String>,
        at_ms: i64,
    },
    /// Follows `OrderPlaced` when the order was placed for fulfilment.
    OrderFulfilmentPending {
        order_id: String,
        at_ms: i64,
    },
    OrderConfirmed {
        order_id: String,
        at_ms: i64,
    },
    OrderRejected {
        order_id: String,
        reason: String,
        at_ms: i64,
    },
}

impl DomainEvent for OrderEvent {}

/// Why an order command was refused. Each variant's doc gives its HTTP status and `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// A field is malformed (bad id, unit price out of range, blank reason, ...). 400,
    /// `invalid_field`.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// A line's quantity is 0 or above `MAX_QUANTITY`. 422, `invalid_quantity`.
    #[error(
        "quantity {quantity} of product {product_id} is outside 1..={}",
        MAX_QUANTITY
    )]
    InvalidQuantity { product_id: String, quantity: u32 },
    /// Merging would put more than `MAX_QUANTITY` units of one product in the order. 422,
    /// `quantity_limit_exceeded`.
    #[error(
        "an order may hold at most {} units of product {product_id}",
        MAX_QUANTITY
    )]
    QuantityLimitExceeded { product_id: String },
    /// The order would have more than `MAX_LINES` lines. 422, `too_many_items`.
    #[error("an order may have at most {} lines", MAX_LINES)]
    TooManyItems,
    /// A line's currency differs from the order's. 422, `currency_mismatch`.
    #[error("line in {found} does not match the order currency {expected}")]
    CurrencyMismatch { expected: Currency, found: Currency },
    /// A line total or the order total would exceed the money cap. 422, `order_total_too_large`.
    #[error("order total would be too large")]
    OrderTotalTooLarge,
    /// Placing an order without lines. 422, `empty_order`.
    #[error("an empty order cannot be placed")]
    EmptyOrder,
    /// The order is placed: it cannot be placed again nor changed. 422, `order_already_placed`.
    #[error("order {order_id} has already been placed")]
    OrderAlreadyPlaced { order_id: String },
    /// The order is cancelled: nothing more may happen to it. 422, `order_cancelled`.
    #[error("order {order_id} is cancelled")]
    OrderCancelled { order_id: String },
    /// The actor is not the customer who owns the order. 403, `not_order_owner`.
    #[error("only the customer who owns this order may change it")]
    NotOrderOwner,
    /// The order's fulfilment is under way, or over: it cannot be cancelled. 422,
    /// `order_in_fulfilment`.
    #[error("order {order_id} is {status}: its fulfilment decides what happens to it")]
    OrderInFulfilment {
        order_id: String,
        status: &'static str,
    },
    /// `Confirm` of an order that is not pending. 422, `order_not_pending`.
    #[error("order {order_id} is not pending")]
    OrderNotPending { order_id: String },
    /// The order was never created. 404, `order_not_found`.
    #[error("order not found")]
    OrderNotFound,
    /// `Create` for an order that already exists. 409, `order_already_exists`.
    #[error("order {order_id} already exists")]
    OrderAlreadyExists { order_id: String },
}

impl OrderError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // "quantity > 0" is an aggregate invariant (DESIGN.md), hence 422.
            OrderError::InvalidField { .. } => ErrorKind::Invalid,
            OrderError::InvalidQuantity { .. }
            | OrderError::QuantityLimitExceeded { .. }
            | OrderError::TooManyItems
            | OrderError::CurrencyMismatch { .. }
            | OrderError::OrderTotalTooLarge
            | OrderError::EmptyOrder
            | OrderError::OrderAlreadyPlaced { .. }
            | OrderError::OrderCancelled { .. }
            | OrderError::OrderInFulfilment { .. }
            | OrderError::OrderNotPending { .. } => ErrorKind::Rule,
            OrderError::NotOrderOwner => ErrorKind::Forbidden,
            OrderError::OrderNotFound => ErrorKind::NotFound,
            OrderError::OrderAlreadyExists { .. } => ErrorKind::Conflict,
        }
    }

    /// Machine-readable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            OrderError::InvalidField { .. } => "invalid_field",
            OrderError::InvalidQuantity { .. } => "invalid_quantity",
            OrderError::QuantityLimitExceeded { .. } => "quantity_limit_exceeded",
            OrderError::TooManyItems => "too_many_items",
            OrderError::CurrencyMismatch { .. } => "currency_mismatch",
            OrderError::OrderTotalTooLarge => "order_total_too_large",
            OrderError::EmptyOrder => "empty_order",
            OrderError::OrderAlreadyPlaced { .. } => "order_already_placed",
            OrderError::OrderCancelled { .. } => "order_cancelled",
            OrderError::OrderInFulfilment { .. } => "order_in_fulfilment",
            OrderError::OrderNotPending { .. } => "order_not_pending",
            OrderError::NotOrderOwner => "not_order_owner",
            OrderError::OrderNotFound => "order_not_found",
            OrderError::OrderAlreadyExists { .. } => "order_already_exists",
        }
    }
}

/// One line of an order's state: a product at one unit price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderItem {
    pub product_id: String,
    pub quantity: u32,
    pub unit_price: Money,
    pub line_total: Money,
}

/// The state of one order, folded from its events.
#[derive(Debug, Clone, Default)]
pub struct Order {
    /// `None` until `OrderCreated`.
    details: Option<Details>,
}

#[derive(Debug, Clone)]
struct Details {
    order_id: String,
    customer_id: String,
    /// Set by the first item; every later item must match it.
    currency: Option<Currency>,
    status: OrderStatus,
    lines: Vec<OrderItem>,
    total: Money,
}

impl Order {
    pub fn exists(&self) -> bool {
        self.details.is_some()
    }
    pub fn order_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.order_id.as_str())
    }
    pub fn customer_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.customer_id.as_str())
    }
    /// `None` before the order is created.
    pub fn status(&self) -> Option<OrderStatus> {
        self.details.as_ref().map(|d| d.status)
    }
    pub fn currency(&self) -> Option<&Currency> {
        self.details.as_ref().and_then(|d| d.currency.as_ref())
    }
    pub fn lines(&self) -> &[OrderItem] {
        self.details.as_ref().map_or(&[], |d| &d.lines)
    }
    pub fn line_count(&self) -> usize {
        self.lines().len()
    }
    /// Units over all lines.
    pub fn item_count(&self) -> u32 {
        self.lines()
            .iter()
            .fold(0u32, |acc, l| acc.saturating_add(l.quantity))
    }
    pub fn total(&self) -> Money {
        self.details.as_ref().map_or(Money::ZERO, |d| d.total)
    }

    /// The order as the given actor may change it: it exists and the actor owns it.
    fn owned(&self, actor_id: &str) -> Result<&Details, OrderError> {
        let details = self.details.as_ref().ok_or(OrderError::OrderNotFound)?;
        if actor_id != details.customer_id {
            return Err(OrderError::NotOrderOwner);
        }
        Ok(details)
    }
}

fn invalid(field: &'static str) -> impl FnOnce(String) -> OrderError {
    move |reason| OrderError::InvalidField { field, reason }
}

impl Details {
    /// Refuses unless the order is still a draft.
    fn ensure_draft(&self) -> Result<(), OrderError> {
        let order_id = self.order_id.clone();
        match self.status {
            OrderStatus::Draft => Ok(()),
            OrderStatus::Placed
            | OrderStatus::Pending
            | OrderStatus::Confirmed
            | OrderStatus::Rejected => Err(OrderError::OrderAlreadyPlaced { order_id }),
            OrderStatus::Cancelled => Err(OrderError::OrderCancelled { order_id }),
        }
    }

    /// Checks one line against this draft and returns the event that adds it. Shared by
    /// `Create` (against a scratch state) and `AddItem`, so both enforce the same rules.
    fn add_line(&self, line: &OrderLine, at_ms: i64) -> Result<OrderEvent, OrderError> {
        check_id(&line.product_id).map_err(invalid("product_id"))?;
        if line.quantity == 0 || line.quantity > MAX_QUANTITY {
            return Err(OrderError::InvalidQuantity {
                product_id: line.product_id.clone(),
                quantity: line.quantity,
            });
        }
        if line.unit_price.is_negative() || line.unit_price > MAX_PRICE {
            return Err(invalid("unit_price")(format!(
                "must be 0.00..={MAX_PRICE}, got {}",
                line.unit_price
            )));
        }
        if let Some(expected) = &self.currency {
            if *expected != line.currency {
                return Err(OrderError::CurrencyMismatch {
                    expected: expected.clone(),
                    found: line.currency.clone(),
                });
            }
        }
        let merges = self
            .lines
            .iter()
            .any(|l| l.product_id == line.product_id && l.unit_price == line.unit_price);
        if !merges && self.lines.len() >= MAX_LINES {
            return Err(OrderError::TooManyItems);
        }
        // The unit limit is per product, over all of its lines at whatever price.
        let units_of_product: u32 = self
            .lines
            .iter()
            .filter(|l| l.product_id == line.product_id)
            .fold(0, |acc, l| acc.saturating_add(l.quantity));
        if units_of_product.saturating_add(line.quantity) > MAX_QUANTITY {
            return Err(OrderError::QuantityLimitExceeded {
                product_id: line.product_id.clone(),
            });
        }
        let line_total = line
            .unit_price
            .checked_mul(line.quantity)
            .ok_or(OrderError::OrderTotalTooLarge)?;
        self.total
            .checked_add(line_total)
            .ok_or(OrderError::OrderTotalTooLarge)?;
        Ok(OrderEvent::OrderItemAdded {
            order_id: self.order_id.clone(),
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            unit_price: line.unit_price,
            currency: line.currency.clone(),
            line_total,
            at_ms,
        })
    }
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    const KIND: &'static str = "order";

    fn decide(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Create {
                order_id,
                customer_id,
                items,
                at_ms,
            } => {
                if self.exists() {
                    return Err(OrderError::OrderAlreadyExists {
                        order_id: order_id.clone(),
                    });
                }
                check_id(order_id).map_err(invalid("order_id"))?;
                check_id(customer_id).map_err(invalid("customer_id"))?;
                // Early, so a huge item list is refused before any work is done on it.
                if items.len() > MAX_LINES {
                    return Err(OrderError::TooManyItems);
                }
                let created = OrderEvent::OrderCreated {
                    order_id: order_id.clone(),
                    customer_id: customer_id.clone(),
                    currency: items.first().map(|l| l.currency.clone()),
                    at_ms: *at_ms,
                };
                // Each line is checked against the state as it would be after the previous
                // ones, exactly as if it were sent as a separate `AddItem`.
                let mut scratch = Order::default();
                scratch.evolve(&created);
                let mut events = vec![created];
                for line in items {
                    let added = scratch.owned(customer_id)?.add_line(line, *at_ms)?;
                    scratch.evolve(&added);
                    events.push(added);
                }
                Ok(events)
            }

            OrderCommand::AddItem {
                actor_id,
                line,
                at_ms,
            } => {
                let details = self.owned(actor_id)?;
                details.ensure_draft()?;
                Ok(vec![details.add_line(line, *at_ms)?])
            }

            OrderCommand::Place { actor_id, at_ms } => {
                let details = self.owned(actor_id)?;
                details.ensure_draft()?;
                if details.lines.is_empty() {
                    return Err(OrderError::EmptyOrder);
                }
                Ok(vec![OrderEvent::OrderPlaced {
                    order_id: details.order_id.clone(),
                    customer_id: details.customer_id.clone(),
                    total: details.total,
                    item_count: self.item_count(),
                    at_ms: *at_ms,
                }])
            }

            OrderCommand::PlaceForFulfilment { actor_id, at_ms } => {
                let place = OrderCommand::Place {
                    actor_id: actor_id.clone(),
                    at_ms: *at_ms,
                };
                let mut events = self.decide(&place)?;
                events.push(OrderEvent::OrderFulfilmentPending {
                    order_id: self.order_id().unwrap_or_default().to_owned(),
                    at_ms: *at_ms,
                });
                Ok(events)
            }

            OrderCommand::Confirm { at_ms } => {
                let details = self.details.as_ref().ok_or(OrderError::OrderNotFound)?;
                match details.status {
                    OrderStatus::Confirmed => Ok(vec![]),
                    OrderStatus::Pending => Ok(vec![OrderEvent::OrderConfirmed {
                        order_id: details.order_id.clone(),
                        at_ms: *at_ms,
                    }]),
                    _ => Err(OrderError::OrderNotPending {
                        order_id: details.order_id.clone(),
                    }),
                }
            }

            OrderCommand::Reject { reason, at_ms } => {
                let details = self.details.as_ref().ok_or(OrderError::OrderNotFound)?;
                match details.status {
                    OrderStatus::Pending => Ok(vec![OrderEvent::OrderRejected {
                        order_id: details.order_id.clone(),
                        reason: reason.chars().take(CANCEL_REASON_MAX_CHARS).collect(),
                        at_ms: *at_ms,
                    }]),
                    // Nothing to reject: already rejected, or never placed for fulfilment.
                    _ => Ok(vec![]),
                }
            }

            OrderCommand::Cancel {
                actor_id,
                reason,
                at_ms,
            } => {
                let details = self.owned(actor_id)?;
                match details.status {
                    OrderStatus::Cancelled => {
                        return Err(OrderError::OrderCancelled {
                            order_id: details.order_id.clone(),
                        })
                    }
                    // The saga holds stock and money for it: cancelling would leak both.
                    status @ (OrderStatus::Pending
                    | OrderStatus::Confirmed
                    | OrderStatus::Rejected) => {
                        return Err(OrderError::OrderInFulfilment {
                            order_id: details.order_id.clone(),
                            status: status.as_str(),
                        })
                    }
                    OrderStatus::Draft | OrderStatus::Placed => {}
                }
                if let Some(reason) = reason {
                    check_text(reason, true, CANCEL_REASON_MAX_CHARS).map_err(invalid("reason"))?;
                }
                Ok(vec![OrderEvent::OrderCancelled {
                    order_id: details.order_id.clone(),
                    reason: reason.clone(),
                    at_ms: *at_ms,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated {
                order_id,
                customer_id,
                currency,
                at_ms: _,
            } => {
                self.details = Some(Details {
                    order_id: order_id.clone(),
                    customer_id: customer_id.clone(),
                    currency: currency.clone(),
                    status: OrderStatus::Draft,
                    lines: Vec::new(),
                    total: Money::ZERO,
                });
            }
            OrderEvent::OrderItemAdded {
                product_id,
                quantity,
                unit_price,
                currency,
                line_total,
                ..
            } => {
                let Some(d) = &mut self.details else { return };
                d.currency.get_or_insert_with(|| currency.clone());
                // Saturating rather than checked: `decide` already refused overflows, and
                // evolve must not panic even on a corrupt stream.
                let add =
                    |a: Money, b: Money| Money::from_minor(a.minor().saturating_add(b.minor()));
                match d
                    .lines
                    .iter_mut()
                    .find(|l| l.product_id == *product_id && l.unit_price == *unit_price)
                {
                    Some(line) => {
                        line.quantity = line.quantity.saturating_add(*quantity);
                        line.line_total = add(line.line_total, *line_total);
                    }
                    None => d.lines.push(OrderItem {
                        product_id: product_id.clone(),
                        quantity: *quantity,
                        unit_price: *unit_price,
                        line_total: *line_total,
                    }),
                }
                d.total = add(d.total, *line_total);
            }
            OrderEvent::OrderPlaced { .. } => {
                if let Some(d) = &mut self.details {
                    d.status = OrderStatus::Placed;
                }
            }
            OrderEvent::OrderCancelled { .. } => {
                if let Some(d) = &mut self.details {
                    d.status = OrderStatus::Cancelled;
                }
            }
            OrderEvent::OrderFulfilmentPending { .. } => {
                if let Some(d) = &mut self.details {
                    d.status = OrderStatus::Pending;
                }
            }
            OrderEvent::OrderConfirmed { .. } => {
                if let Some(d) = &mut self.details {
                    d.status = OrderStatus::Confirmed;
                }
            }
            OrderEvent::OrderRejected { .. } => {
                if let Some(d) = &mut self.details {
                    d.status = OrderStatus::Rejected;
                }
            }
        }
    }
}
