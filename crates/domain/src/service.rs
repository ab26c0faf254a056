//! The command side of the reference domain: who may do what, and the lookups a command needs
//! before its aggregate can decide (an order takes each product's current price).
//!
//! Every call goes through [`Repository::execute`], so each is one optimistic append to one
//! stream. Errors come back as [`ShopError`], which knows its API status and code.

use std::collections::BTreeMap;

use ficus_core::{Metadata, Version};
use ficus_runtime::{CommandError, CommandOutcome, Repository};
use ficus_store::StoreError;

use crate::money::{Currency, Money};
use crate::order::{Order, OrderCommand, OrderError, OrderLine, MAX_LINES};
use crate::product::{Product, ProductCommand, ProductError};
use crate::ErrorKind;

/// What the caller is allowed to be, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub roles: Vec<String>,
}

impl Actor {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a shop command was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error(transparent)]
    Product(ProductError),
    #[error(transparent)]
    Order(OrderError),
    /// The caller's role does not allow this command. (403 `forbidden`)
    #[error("{0}")]
    Forbidden(String),
    /// An order names a product that does not exist or was deleted. (422)
    #[error("product {product_id}: {reason}")]
    UnknownProduct {
        product_id: String,
        reason: &'static str,
    },
    /// The stream moved on (stale `If-Match`, or a race lost too often). (409
    /// `wrong_expected_version`)
    #[error("{message}")]
    Conflict { message: String, actual: Version },
    /// A malformed id. (400 `invalid_field`)
    #[error("{0}")]
    Invalid(String),
    /// The store is unavailable. (503 `store_unavailable`)
    #[error(transparent)]
    Store(StoreError),
    /// A stored event no longer decodes: a bug or corruption, loud. (500 `internal`)
    #[error("{0}")]
    Internal(String),
}

impl ShopError {
    /// The API status of this error.
    pub fn status(&self) -> u16 {
        match self {
            ShopError::Product(e) => e.kind().http_status(),
            ShopError::Order(e) => e.kind().http_status(),
            ShopError::Forbidden(_) => ErrorKind::Forbidden.http_status(),
            ShopError::UnknownProduct { .. } => ErrorKind::Rule.http_status(),
            ShopError::Conflict { .. } => ErrorKind::Conflict.http_status(),
            ShopError::Invalid(_) => ErrorKind::Invalid.http_status(),
            ShopError::Store(StoreError::Invalid(_)) => 400,
            ShopError::Store(StoreError::WrongExpectedVersion { .. }) => 409,
            ShopError::Store(StoreError::Unavailable(_)) => 503,
            ShopError::Store(StoreError::StorageFault(_) | StoreError::OutcomeUnknown(_)) => 503,
            ShopError::Store(StoreError::ClaimLost) => 409,
            ShopError::Store(StoreError::Corrupt(_)) | ShopError::Internal(_) => 500,
        }
    }

    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ShopError::Product(e) => e.code(),
            ShopError::Order(e) => e.code(),
            ShopError::Forbidden(_) => "forbidden",
            ShopError::UnknownProduct { reason, .. } => {
                if *reason == "deleted" {
                    "product_deleted"
                } else {
                    "unknown_product"
                }
            }
            ShopError::Conflict { .. } => "wrong_expected_version",
            ShopError::Invalid(_) => "invalid_field",
            ShopError::Store(StoreError::Invalid(_)) => "invalid_request",
            ShopError::Store(StoreError::WrongExpectedVersion { .. }) => "wrong_expected_version",
            ShopError::Store(StoreError::Unavailable(_)) => "store_unavailable",
            ShopError::Store(StoreError::StorageFault(_)) => "storage_unavailable",
            ShopError::Store(StoreError::OutcomeUnknown(_)) => "storage_outcome_unknown",
            ShopError::Store(StoreError::ClaimLost) => "request_in_progress",
            ShopError::Store(StoreError::Corrupt(_)) | ShopError::Internal(_) => "internal",
        }
    }
}

fn lift<E: std::error::Error>(wrap: fn(E) -> ShopError) -> impl Fn(CommandError<E>) -> ShopError {
    move |e| match e {
        CommandError::Domain(d) => wrap(d),
        CommandError::Conflict {
            stream,
            expected,
            actual,
        } => ShopError::Conflict {
            message: format!("{stream} is at version {actual}, expected {expected}"),
            actual,
        },
        CommandError::InvalidId(v) => ShopError::Invalid(v.to_string()),
        CommandError::Codec(c) => ShopError::Internal(c.to_string()),
        CommandError::Store(s) => ShopError::Store(s),
    }
}

/// Input of `create_product`, already parsed from the request.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub name: String,
    pub description: String,
    pub category: String,
    pub price: Money,
    pub currency: Currency,
    pub stock: Option<(String, i64)>,
}

/// One requested order line: a product and how many.
#[derive(Debug, Clone)]
pub struct RequestedItem {
    pub product_id: String,
    pub quantity: u32,
}

/// The reference domain's command side.
#[derive(Clone)]
pub struct Shop {
    repo: Repository,
}

/// Warehouse that `create_product`'s initial stock goes to when none is named.
pub const DEFAULT_WAREHOUSE: &str = "main";

impl Shop {
    pub fn new(repo: Repository) -> Self {
        Self { repo }
    }

    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// This shop with its commands' appends going to `store` (an idempotency claim's
    /// [`ficus_store::idempotency::ClaimedAppends`]); reads are the store's business.
    pub fn on_store(&self, store: std::sync::Arc<dyn ficus_store::EventStore>) -> Shop {
        Shop {
            repo: self.repo.with_store(store),
        }
    }

    /// Creates a product owned by the acting seller. Only sellers create products.
    pub async fn create_product(
        &self,
        actor: &Actor,
        product_id: &str,
        input: NewProduct,
        at_ms: i64,
        meta: &Metadata,
    ) -> Result<CommandOutcome, ShopError> {
        if !actor.has_role("seller") {
            return Err(ShopError::Forbidden("only sellers create products".into()));
        }
        let cmd = ProductCommand::Create {
            product_id: product_id.to_owned(),
            seller_id: actor.user_id.clone(),
            name: input.name,
            description: input.description,
            category: input.category,
            price: input.price,
            currency: input.currency,
            initial_stock: input.stock,
            at_ms,
        };
        self.repo
            .execute::<Product>(product_id, &cmd, meta, None)
            .await
            .map_err(lift(ShopError::Product))
    }

    /// Runs a product command (price, stock, delete); the aggregate checks ownership.
    pub async fn product_command(
        &self,
        product_id: &str,
        cmd: ProductCommand,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, ShopError> {
        self.repo
            .execute::<Product>(product_id, &cmd, meta, if_match)
            .await
            .map_err(lift(ShopError::Product))
    }

    /// Prices requested items at each product's current price.
    async fn price_items(&self, items: &[RequestedItem]) -> Result<Vec<OrderLine>, ShopError> {
        if items.len() > MAX_LINES {
            return Err(ShopError::Order(OrderError::TooManyItems));
        }
        let mut products: BTreeMap<&str, Product> = BTreeMap::new();
        let mut lines = Vec::with_capacity(items.len());
        for item in items {
            if !products.contains_key(item.product_id.as_str()) {
                let loaded = self
                    .repo
                    .load::<Product>(&item.product_id)
                    .await
                    .map_err(lift(ShopError::Product))?;
                products.insert(&item.product_id, loaded.state);
            }
            let product = &products[item.product_id.as_str()];
            let unknown = |reason| ShopError::UnknownProduct {
                product_id: item.product_id.clone(),
                reason,
            };
            if !product.exists() {
                return Err(unknown("does not exist"));
            }
            if product.is_deleted() {
                return Err(unknown("deleted"));
            }
            let (Some(price), Some(currency)) = (product.price(), product.currency()) else {
                return Err(unknown("has no price"));
            };
            lines.push(OrderLine {
                product_id: item.product_id.clone(),
                quantity: item.quantity,
                unit_price: price,
                currency: currency.clone(),
            });
        }
        Ok(lines)
    }

    /// Creates an order for the acting customer at the products' current prices.
    pub async fn create_order(
        &self,
        actor: &Actor,
        order_id: &str,
        items: &[RequestedItem],
        at_ms: i64,
        meta: &Metadata,
    ) -> Result<CommandOutcome, ShopError> {
        if !actor.has_role("customer") {
            return Err(ShopError::Forbidden("only customers create orders".into()));
        }
        let lines = self.price_items(items).await?;
        let cmd = OrderCommand::Create {
            order_id: order_id.to_owned(),
            customer_id: actor.user_id.clone(),
            items: lines,
            at_ms,
        };
        self.repo
            .execute::<Order>(order_id, &cmd, meta, None)
            .await
            .map_err(lift(ShopError::Order))
    }

    /// Adds an item at the product's current price; the aggregate checks ownership.
    pub async fn add_item(
        &self,
        actor: &Actor,
        order_id: &str,
        item: RequestedItem,
        at_ms: i64,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, ShopError> {
        let line = self
            .price_items(std::slice::from_ref(&item))
            .await?
            .pop()
            .expect("one item priced");
        let cmd = OrderCommand::AddItem {
            actor_id: actor.user_id.clone(),
            line,
            at_ms,
        };
        self.order_command(order_id, cmd, meta, if_match).await
    }

    /// Runs an order command (place, cancel); the aggregate checks ownership.
    pub async fn order_command(
        &self,
        order_id: &str,
        cmd: OrderCommand,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, ShopError> {
        self.repo
            .execute::<Order>(order_id, &cmd, meta, if_match)
            .await
            .map_err(lift(ShopError::Order))
    }
}
