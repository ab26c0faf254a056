//! The `Product` aggregate: a seller's catalogue entry with its price and per-warehouse stock.

use std::collections::BTreeMap;

use ficus_core::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};
use crate::{check_id, check_text, ErrorKind};

/// Highest price a product may have: 10 000.00.
pub const MAX_PRICE: Money = Money::from_minor(1_000_000);
pub const NAME_MAX_CHARS: usize = 200;
pub const DESCRIPTION_MAX_CHARS: usize = 5000;
pub const CATEGORY_MAX_CHARS: usize = 100;
pub const DELETE_REASON_MAX_CHARS: usize = 500;
pub const WAREHOUSE_MAX_BYTES: usize = 64;
/// Most units one warehouse may hold. Keeps quantities, and their sum over warehouses, far from
/// `i64` overflow.
pub const MAX_STOCK_PER_WAREHOUSE: i64 = 1_000_000_000;

/// What may be asked of a product. Ids and `at_ms` (Unix ms, UTC) come from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    Create {
        product_id: String,
        seller_id: String,
        name: String,
        description: String,
        category: String,
        price: Money,
        currency: Currency,
        /// `(warehouse, quantity)` to stock right away; a quantity of 0 still registers the
        /// warehouse.
        initial_stock: Option<(String, i64)>,
        at_ms: i64,
    },
    UpdatePrice {
        actor_id: String,
        new_price: Money,
        at_ms: i64,
    },
    AdjustStock {
        actor_id: String,
        warehouse: String,
        /// Units added (positive) or removed (negative); never 0.
        delta: i64,
        at_ms: i64,
    },
    Delete {
        actor_id: String,
        reason: String,
        at_ms: i64,
    },
    /// Sets `quantity` units aside for `reservation_id` (an order's fulfilment), taken from
    /// the warehouses in name order. Idempotent: a reservation already made is not made
    /// again. Issued by the system (the fulfilment saga), not by a seller.
    ReserveStock {
        reservation_id: String,
        quantity: u32,
        at_ms: i64,
    },
    /// Puts a reservation's units back. Idempotent; releasing a reservation never made closes
    /// its id, so a reservation arriving late (after a timed-out call) is refused.
    ReleaseStock { reservation_id: String, at_ms: i64 },
}

/// Units of one reservation taken from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse: String,
    pub quantity: i64,
    /// Units in `warehouse` after this allocation was taken (or put back).
    pub new_quantity: i64,
}

/// Longest reservation id, in bytes.
pub const RESERVATION_ID_MAX_BYTES: usize = 200;

/// What happened to a product. Every event carries `product_id`, so a read model can use each
/// one on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum ProductEvent {
    ProductCreated {
        product_id: String,
        seller_id: String,
        name: String,
        description: String,
        category: String,
        price: Money,
        currency: Currency,
        at_ms: i64,
    },
    ProductPriceChanged {
        product_id: String,
        old_price: Money,
        new_price: Money,
        at_ms: i64,
    },
    StockAdjusted {
        product_id: String,
        warehouse: String,
        delta: i64,
        /// Units in `warehouse` after the adjustment.
        new_quantity: i64,
        at_ms: i64,
    },
    ProductDeleted {
        product_id: String,
        reason: String,
        at_ms: i64,
    },
    StockReserved {
        product_id: String,
        reservation_id: String,
        allocations: Vec<Allocation>,
        at_ms: i64,
    },
    /// The reservation's units are back; no allocations when it was never made (its id is
    /// closed all the same).
    StockReleased {
        product_id: String,
        reservation_id: String,
        allocations: Vec<Allocation>,
        at_ms: i64,
    },
}

impl DomainEvent for ProductEvent {}

/// Why a product command was refused. Each variant's doc gives its HTTP status and `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    /// A field is malformed (blank name, bad warehouse id, zero delta, ...). 400,
    /// `invalid_field`.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// The price is negative or above 10 000.00. 422, `price_out_of_range`.
    #[error("price {price} is outside 0.00..={}", MAX_PRICE)]
    PriceOutOfRange { price: Money },
    /// The new price is less than half the old one. 422, `price_cut_too_large`.
    #[error("price may not be cut by more than 50% at once: {old_price} -> {new_price}")]
    PriceCutTooLarge { old_price: Money, new_price: Money },
    /// The actor is not the seller who owns the product. 403, `not_product_owner`.
    #[error("only the seller who owns this product may change it")]
    NotProductOwner,
    /// The product was never created. 404, `product_not_found`.
    #[error("product not found")]
    ProductNotFound,
    /// `Create` for a product that already exists (deleted ones included). 409,
    /// `product_already_exists`.
    #[error("product {product_id} already exists")]
    ProductAlreadyExists { product_id: String },
    /// The product is deleted and can no longer change. 422, `product_deleted`.
    #[error("product {product_id} is deleted")]
    ProductDeleted { product_id: String },
    /// Removing more units than the warehouse holds. 422, `insufficient_stock`.
    #[error("warehouse {warehouse} holds {available}; adjusting by {delta} would go negative")]
    InsufficientStock {
        warehouse: String,
        available: i64,
        delta: i64,
    },
    /// Adding units beyond `MAX_STOCK_PER_WAREHOUSE`. 422, `stock_limit_exceeded`.
    #[error(
        "warehouse {warehouse} may hold at most {} units",
        MAX_STOCK_PER_WAREHOUSE
    )]
    StockLimitExceeded { warehouse: String },
    /// The reservation was released (or refused) before: its id cannot reserve again. 422,
    /// `reservation_closed`.
    #[error("reservation {reservation_id} is closed")]
    ReservationClosed { reservation_id: String },
}

impl ProductError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The price bounds are business rules of the domain (DESIGN.md), hence 422.
            ProductError::InvalidField { .. } => ErrorKind::Invalid,
            ProductError::PriceOutOfRange { .. }
            | ProductError::PriceCutTooLarge { .. }
            | ProductError::ProductDeleted { .. }
            | ProductError::InsufficientStock { .. }
            | ProductError::StockLimitExceeded { .. }
            | ProductError::ReservationClosed { .. } => ErrorKind::Rule,
            ProductError::NotProductOwner => ErrorKind::Forbidden,
            ProductError::ProductNotFound => ErrorKind::NotFound,
            ProductError::ProductAlreadyExists { .. } => ErrorKind::Conflict,
        }
    }

    /// Machine-readable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            ProductError::InvalidField { .. } => "invalid_field",
            ProductError::PriceOutOfRange { .. } => "price_out_of_range",
            ProductError::PriceCutTooLarge { .. } => "price_cut_too_large",
            ProductError::NotProductOwner => "not_product_owner",
            ProductError::ProductNotFound => "product_not_found",
            ProductError::ProductAlreadyExists { .. } => "product_already_exists",
            ProductError::ProductDeleted { .. } => "product_deleted",
            ProductError::InsufficientStock { .. } => "insufficient_stock",
            ProductError::StockLimitExceeded { .. } => "stock_limit_exceeded",
            ProductError::ReservationClosed { .. } => "reservation_closed",
        }
    }
}

/// A product is snapshotted whenever its stream's version crosses a multiple of this: a
/// product busy with price changes, restocks and reservations would otherwise cost every
/// command a fold of its whole history (the soak test's latency crept with it).
pub const SNAPSHOT_EVERY_EVENTS: u64 = 100;
/// The version of the product's snapshot shape (the serde form of [`Product`]).
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

/// The state of one product, folded from its events. Its serde form is the snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Product {
    /// `None` until `ProductCreated`.
    details: Option<Details>,
    deleted: bool,
    /// Reservations by id: `Some(allocations)` while held, `None` once released. Kept after
    /// release so that a repeated or late reservation is recognised.
    reservations: BTreeMap<String, Option<Vec<Allocation>>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Details {
    product_id: String,
    seller_id: String,
    name: String,
    description: String,
    category: String,
    price: Money,
    currency: Currency,
    stock: BTreeMap<String, i64>,
}

static NO_STOCK: BTreeMap<String, i64> = BTreeMap::new();

impl Product {
    pub fn exists(&self) -> bool {
        self.details.is_some()
    }
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
    pub fn product_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.product_id.as_str())
    }
    pub fn seller_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.seller_id.as_str())
    }
    pub fn name(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.name.as_str())
    }
    pub fn description(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.description.as_str())
    }
    pub fn category(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.category.as_str())
    }
    pub fn price(&self) -> Option<Money> {
        self.details.as_ref().map(|d| d.price)
    }
    pub fn currency(&self) -> Option<&Currency> {
        self.details.as_ref().map(|d| &d.currency)
    }
    /// Units in one warehouse (0 for a warehouse never stocked).
    pub fn stock(&self, warehouse: &str) -> i64 {
        self.stock_by_warehouse()
            .get(warehouse)
            .copied()
            .unwrap_or(0)
    }
    /// Units per warehouse, for every warehouse ever stocked.
    pub fn stock_by_warehouse(&self) -> &BTreeMap<String, i64> {
        self.details.as_ref().map_or(&NO_STOCK, |d| &d.stock)
    }
    /// The allocations of a reservation still held (`None`: never made, or released).
    pub fn reservation(&self, reservation_id: &str) -> Option<&[Allocation]> {
        self.reservations
            .get(reservation_id)
            .and_then(|r| r.as_deref())
    }
    /// Units over all warehouses.
    pub fn stock_total(&self) -> i64 {
        // Saturating: state must never panic, even if a corrupt stream broke the per-warehouse cap.
        self.stock_by_warehouse()
            .values()
            .fold(0i64, |acc, q| acc.saturating_add(*q))
    }

    /// The product as the given actor may change it: it exists, the actor owns it, and it is not
    /// deleted (checked in that order, so a stranger learns nothing about deletion).
    fn owned_live(&self, actor_id: &str) -> Result<&Details, ProductError> {
        let details = self.details.as_ref().ok_or(ProductError::ProductNotFound)?;
        if actor_id != details.seller_id {
            return Err(ProductError::NotProductOwner);
        }
        if self.deleted {
            return Err(ProductError::ProductDeleted {
                product_id: details.product_id.clone(),
            });
        }
        Ok(details)
    }
}

fn invalid(field: &'static str) -> impl FnOnce(String) -> ProductError {
    move |reason| ProductError::InvalidField { field, reason }
}

fn check_price(price: Money) -> Result<(), ProductError> {
    if price.is_negative() || price > MAX_PRICE {
        return Err(ProductError::PriceOutOfRange { price });
    }
    Ok(())
}

fn check_warehouse(warehouse: &str) -> Result<(), ProductError> {
    let ok = !warehouse.is_empty()
        && warehouse.len() <= WAREHOUSE_MAX_BYTES
        && warehouse
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid("warehouse")(format!(
            "must be 1-{WAREHOUSE_MAX_BYTES} characters of A-Z a-z 0-9 _ -"
        )))
    }
}

fn check_reservation_id(id: &str) -> Result<(), ProductError> {
    let ok = !id.is_empty()
        && id.len() <= RESERVATION_ID_MAX_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(invalid("reservation_id")(format!(
            "must be 1-{RESERVATION_ID_MAX_BYTES} characters of A-Z a-z 0-9 _ . : @ -"
        )))
    }
}

impl Aggregate for Product {
    type Command = ProductCommand;
    type Event = ProductEvent;
    type Error = ProductError;

    const KIND: &'static str = "product";

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, ProductError> {
        match command {
            ProductCommand::Create {
                product_id,
                seller_id,
                name,
                description,
                category,
                price,
                currency,
                initial_stock,
                at_ms,
            } => {
                if self.exists() {
                    return Err(ProductError::ProductAlreadyExists {
                        product_id: product_id.clone(),
                    });
                }
                check_id(product_id).map_err(invalid("product_id"))?;
                check_id(seller_id).map_err(invalid("seller_id"))?;
                check_text(name, true, NAME_MAX_CHARS).map_err(invalid("name"))?;
                check_text(description, false, DESCRIPTION_MAX_CHARS)
                    .map_err(invalid("description"))?;
                check_text(category, true, CATEGORY_MAX_CHARS).map_err(invalid("category"))?;
                check_price(*price)?;
                let mut events = vec![ProductEvent::ProductCreated {
                    product_id: product_id.clone(),
                    seller_id: seller_id.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    category: category.clone(),
                    price: *price,
                    currency: currency.clone(),
                    at_ms: *at_ms,
                }];
                if let Some((warehouse, quantity)) = initial_stock {
                    check_warehouse(warehouse)?;
                    if !(0..=MAX_STOCK_PER_WAREHOUSE).contains(quantity) {
                        return Err(invalid("initial_stock")(format!(
                            "quantity must be 0..={MAX_STOCK_PER_WAREHOUSE}"
                        )));
                    }
                    events.push(ProductEvent::StockAdjusted {
                        product_id: product_id.clone(),
                        warehouse: warehouse.clone(),
                        delta: *quantity,
                        new_quantity: *quantity,
                        at_ms: *at_ms,
                    });
                }
                Ok(events)
            }

            ProductCommand::UpdatePrice {
                actor_id,
                new_price,
                at_ms,
            } => {
                let details = self.owned_live(actor_id)?;
                check_price(*new_price)?;
                let old_price = details.price;
                if *new_price == old_price {
                    // Idempotent: repeating a price change is not a new fact.
                    return Ok(vec![]);
                }
                // "At most 50 % off" as integers: new >= old / 2 <=> 2 * new >= old, with no
                // rounding of odd cents. Both are <= MAX_PRICE, so the doubling cannot overflow.
                if 2 * new_price.minor() < old_price.minor() {
                    return Err(ProductError::PriceCutTooLarge {
                        old_price,
                        new_price: *new_price,
                    });
                }
                Ok(vec![ProductEvent::ProductPriceChanged {
                    product_id: details.product_id.clone(),
                    old_price,
                    new_price: *new_price,
                    at_ms: *at_ms,
                }])
            }

            ProductCommand::AdjustStock {
                actor_id,
                warehouse,
                delta,
                at_ms,
            } => {
                let details = self.owned_live(actor_id)?;
                check_warehouse(warehouse)?;
                if *delta == 0 {
                    return Err(invalid("delta")("must not be 0".into()));
                }
                let available = details.stock.get(warehouse).copied().unwrap_or(0);
                // In i128 so that even a delta near i64::MIN/MAX is compared without overflow.
                let new_quantity = i128::from(available) + i128::from(*delta);
                if new_quantity < 0 {
                    return Err(ProductError::InsufficientStock {
                        warehouse: warehouse.clone(),
                        available,
                        delta: *delta,
                    });
                }
                if new_quantity > i128::from(MAX_STOCK_PER_WAREHOUSE) {
                    return Err(ProductError::StockLimitExceeded {
                        warehouse: warehouse.clone(),
                    });
                }
                Ok(vec![ProductEvent::StockAdjusted {
                    product_id: details.product_id.clone(),
                    warehouse: warehouse.clone(),
                    delta: *delta,
                    // In 0..=MAX_STOCK_PER_WAREHOUSE, checked just above.
                    new_quantity: new_quantity as i64,
                    at_ms: *at_ms,
                }])
            }

            ProductCommand::ReserveStock {
                reservation_id,
                quantity,
                at_ms,
            } => {
                let details = self.details.as_ref().ok_or(ProductError::ProductNotFound)?;
                check_reservation_id(reservation_id)?;
                match self.reservations.get(reservation_id) {
                    Some(Some(_)) => return Ok(vec![]),
                    Some(None) => {
                        return Err(ProductError::ReservationClosed {
                            reservation_id: reservation_id.clone(),
                        })
                    }
                    None => {}
                }
                if self.deleted {
                    return Err(ProductError::ProductDeleted {
                        product_id: details.product_id.clone(),
                    });
                }
                if *quantity == 0 {
                    return Err(invalid("quantity")("must not be 0".into()));
                }
                let mut wanted = i64::from(*quantity);
                let mut allocations = Vec::new();
                for (warehouse, available) in &details.stock {
                    if wanted == 0 {
                        break;
                    }
                    let take = wanted.min(*available);
                    if take > 0 {
                        allocations.push(Allocation {
                            warehouse: warehouse.clone(),
                            quantity: take,
                            new_quantity: available - take,
                        });
                        wanted -= take;
                    }
                }
                if wanted > 0 {
                    return Err(ProductError::InsufficientStock {
                        warehouse: "*".into(),
                        available: self.stock_total(),
                        delta: -i64::from(*quantity),
                    });
                }
                Ok(vec![ProductEvent::StockReserved {
                    product_id: details.product_id.clone(),
                    reservation_id: reservation_id.clone(),
                    allocations,
                    at_ms: *at_ms,
                }])
            }

            ProductCommand::ReleaseStock {
                reservation_id,
                at_ms,
            } => {
                let details = self.details.as_ref().ok_or(ProductError::ProductNotFound)?;
                check_reservation_id(reservation_id)?;
                let allocations = match self.reservations.get(reservation_id) {
                    Some(None) => return Ok(vec![]),
                    Some(Some(held)) => held
                        .iter()
                        .map(|a| Allocation {
                            warehouse: a.warehouse.clone(),
                            quantity: a.quantity,
                            // Saturating: the cap was checked when the units were taken out.
                            new_quantity: details
                                .stock
                                .get(&a.warehouse)
                                .copied()
                                .unwrap_or(0)
                                .saturating_add(a.quantity),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                Ok(vec![ProductEvent::StockReleased {
                    product_id: details.product_id.clone(),
                    reservation_id: reservation_id.clone(),
                    allocations,
                    at_ms: *at_ms,
                }])
            }

            ProductCommand::Delete {
                actor_id,
                reason,
                at_ms,
            } => {
                let details = self.owned_live(actor_id)?;
                check_text(reason, true, DELETE_REASON_MAX_CHARS).map_err(invalid("reason"))?;
                Ok(vec![ProductEvent::ProductDeleted {
                    product_id: details.product_id.clone(),
                    reason: reason.clone(),
                    at_ms: *at_ms,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &ProductEvent) {
        match event {
            ProductEvent::ProductCreated {
                product_id,
                seller_id,
                name,
                description,
                category,
                price,
                currency,
                at_ms: _,
            } => {
                self.details = Some(Details {
                    product_id: product_id.clone(),
                    seller_id: seller_id.clone(),
                    name: name.clone(),
                    description: description.clone(),
                    category: category.clone(),
                    price: *price,
                    currency: currency.clone(),
                    stock: BTreeMap::new(),
                });
            }
            ProductEvent::ProductPriceChanged { new_price, .. } => {
                if let Some(d) = &mut self.details {
                    d.price = *new_price;
                }
            }
            ProductEvent::StockAdjusted {
                warehouse,
                new_quantity,
                ..
            } => {
                // The event states the resulting quantity, so replay does not redo arithmetic.
                if let Some(d) = &mut self.details {
                    d.stock.insert(warehouse.clone(), *new_quantity);
                }
            }
            ProductEvent::ProductDeleted { .. } => self.deleted = true,
            ProductEvent::StockReserved {
                reservation_id,
                allocations,
                ..
            } => {
                if let Some(d) = &mut self.details {
                    for a in allocations {
                        d.stock.insert(a.warehouse.clone(), a.new_quantity);
                    }
                }
                self.reservations
                    .insert(reservation_id.clone(), Some(allocations.clone()));
            }
            ProductEvent::StockReleased {
                reservation_id,
                allocations,
                ..
            } => {
                if let Some(d) = &mut self.details {
                    for a in allocations {
                        d.stock.insert(a.warehouse.clone(), a.new_quantity);
                    }
                }
                self.reservations.insert(reservation_id.clone(), None);
            }
        }
    }

    fn snapshot_policy() -> Option<ficus_core::SnapshotPolicy<Self>> {
        Some(ficus_core::SnapshotPolicy::json(
            SNAPSHOT_EVERY_EVENTS,
            SNAPSHOT_SCHEMA_VERSION,
        ))
    }
}
