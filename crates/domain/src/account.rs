//! The bank-account ledger of DESIGN.md, the example of time travel: a `BankAccount` is opened
//! in one currency, takes deposits and withdrawals in exact minor units, and never goes below
//! zero. Its state at any past version or instant is a fold of a prefix of its stream
//! ([`ficus_runtime::Repository::load_as_of`]).
//!
//! It is also the example of schema evolution. Its events are at schema version 2; the
//! ledger's first release wrote version 1, which the upcasters below still read:
//! - `AccountOpened` v1 named the owner `owner`; v2 calls it `owner_id`.
//! - `MoneyDeposited` / `MoneyWithdrawn` v1 carried the amount as decimal text (`"12.50"`);
//!   v2 carries integer minor units (`1250`), like every amount in Ficus.
//!
//! And of snapshots: an account is snapshotted every [`SNAPSHOT_EVERY_EVENTS`] events.

use ficus_core::upcast::Upcasters;
use ficus_core::{Aggregate, DomainEvent, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::money::{Currency, Money};
use crate::service::Actor;
use crate::{check_id, ErrorKind};

/// An account is snapshotted whenever its stream's version crosses a multiple of this.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 100;
/// The version of the account's snapshot shape (the serde form of [`BankAccount`]).
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;
/// The role that may act on any account.
pub const ADMIN_ROLE: &str = "admin";

/// What may be asked of an account. Ids and `at_ms` (Unix ms, UTC) come from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Opens the account for `owner_id`: the actor itself, or anyone when the actor is an
    /// admin.
    Open {
        account_id: String,
        owner_id: String,
        /// The holder's name as it appears on statements: personal data of `owner_id`.
        holder_name: Option<String>,
        currency: Currency,
        by: Actor,
        at_ms: i64,
    },
    /// Adds `amount` (> 0, in the account's currency).
    Deposit {
        amount: Money,
        by: Actor,
        at_ms: i64,
    },
    /// Takes `amount` (> 0) out; refused when the balance would go below zero.
    Withdraw {
        amount: Money,
        by: Actor,
        at_ms: i64,
    },
}

/// What happened to an account (schema version 2). Every event carries `account_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum AccountEvent {
    AccountOpened {
        account_id: String,
        owner_id: String,
        /// Personal data of `owner_id`, stored encrypted under the owner's key (see
        /// [`declare_personal_fields`]); reads `"[erased]"` once the key is destroyed. Absent
        /// in events written before it existed, which read as `None` (no upcaster needed: the
        /// field is optional, so the schema version stays 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        holder_name: Option<String>,
        currency: Currency,
        at_ms: i64,
    },
    MoneyDeposited {
        account_id: String,
        /// Minor units, > 0.
        amount: Money,
        at_ms: i64,
    },
    MoneyWithdrawn {
        account_id: String,
        /// Minor units, > 0.
        amount: Money,
        at_ms: i64,
    },
}

/// Longest holder name, in characters.
pub const HOLDER_NAME_MAX_CHARS: usize = 200;

/// The ledger's personal data: `AccountOpened.holder_name`, whose subject is `owner_id`.
pub fn declare_personal_fields(fields: &mut ficus_store::PersonalFields) {
    fields.declare(
        "AccountOpened",
        <AccountEvent as DomainEvent>::SCHEMA_VERSION,
        "/owner_id",
        &["/holder_name"],
    );
}

/// The stored event types of the ledger.
pub const ACCOUNT_EVENT_TYPES: [&str; 3] = ["AccountOpened", "MoneyDeposited", "MoneyWithdrawn"];

impl DomainEvent for AccountEvent {
    const SCHEMA_VERSION: u32 = 2;

    fn register_upcasters(upcasters: &mut Upcasters) {
        upcasters.register("AccountOpened", 1, |payload| {
            rename_field(payload, "owner", "owner_id")
        });
        for ty in ["MoneyDeposited", "MoneyWithdrawn"] {
            upcasters.register(ty, 1, amount_text_to_minor_units);
        }
    }
}

/// v1 → v2 of `AccountOpened`: `owner` became `owner_id`.
fn rename_field(mut payload: Value, from: &str, to: &str) -> Result<Value, String> {
    let map = payload.as_object_mut().ok_or("payload is not an object")?;
    let value = map
        .remove(from)
        .ok_or_else(|| format!("no {from:?} field"))?;
    map.insert(to.to_owned(), value);
    Ok(payload)
}

/// v1 → v2 of the money events: the decimal text `"12.50"` became the integer 1250, parsed
/// digit by digit (never through a float), as the API parses amounts.
fn amount_text_to_minor_units(mut payload: Value) -> Result<Value, String> {
    let amount = payload
        .get("amount")
        .and_then(Value::as_str)
        .ok_or("no decimal-text \"amount\" field")?;
    let minor = Money::parse_decimal(amount).map_err(|e| e.to_string())?;
    payload["amount"] = Value::from(minor.minor());
    Ok(payload)
}

/// Why an account command was refused. Each variant's doc gives its HTTP status and `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// A malformed id. 400, `invalid_field`.
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// An amount of zero or less. 400, `invalid_amount`.
    #[error("amount must be greater than 0.00, got {0}")]
    NonPositiveAmount(Money),
    /// A withdrawal larger than the balance: no overdraft. 422, `insufficient_funds`.
    #[error("balance {balance} does not cover {amount}")]
    InsufficientFunds { balance: Money, amount: Money },
    /// A deposit that would take the balance past the money cap. 422,
    /// `balance_limit_exceeded`.
    #[error("the balance would exceed the largest amount an account may hold")]
    BalanceLimitExceeded,
    /// The actor is neither the owner nor an admin. 403, `not_account_owner`.
    #[error("only the account's owner or an admin may do this")]
    NotAccountOwner,
    /// The account was never opened. 404, `account_not_found`.
    #[error("account not found")]
    AccountNotFound,
    /// `Open` for an account that exists. 409, `account_already_exists`.
    #[error("account {0} already exists")]
    AccountAlreadyExists(String),
}

impl AccountError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            AccountError::InvalidField { .. } | AccountError::NonPositiveAmount(_) => {
                ErrorKind::Invalid
            }
            AccountError::InsufficientFunds { .. } | AccountError::BalanceLimitExceeded => {
                ErrorKind::Rule
            }
            AccountError::NotAccountOwner => ErrorKind::Forbidden,
            AccountError::AccountNotFound => ErrorKind::NotFound,
            AccountError::AccountAlreadyExists(_) => ErrorKind::Conflict,
        }
    }

    /// Machine-readable snake_case code for API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::InvalidField { .. } => "invalid_field",
            AccountError::NonPositiveAmount(_) => "invalid_amount",
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
            AccountError::BalanceLimitExceeded => "balance_limit_exceeded",
            AccountError::NotAccountOwner => "not_account_owner",
            AccountError::AccountNotFound => "account_not_found",
            AccountError::AccountAlreadyExists(_) => "account_already_exists",
        }
    }
}

/// The state of one account, folded from its events. Its serde form is the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BankAccount {
    /// `None` until `AccountOpened`.
    details: Option<Details>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Details {
    account_id: String,
    owner_id: String,
    currency: Currency,
    balance: Money,
    opened_at_ms: i64,
    /// Deposits and withdrawals so far.
    movements: u64,
}

impl BankAccount {
    pub fn exists(&self) -> bool {
        self.details.is_some()
    }
    pub fn account_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.account_id.as_str())
    }
    pub fn owner_id(&self) -> Option<&str> {
        self.details.as_ref().map(|d| d.owner_id.as_str())
    }
    pub fn currency(&self) -> Option<&Currency> {
        self.details.as_ref().map(|d| &d.currency)
    }
    pub fn balance(&self) -> Money {
        self.details.as_ref().map_or(Money::ZERO, |d| d.balance)
    }
    pub fn opened_at_ms(&self) -> Option<i64> {
        self.details.as_ref().map(|d| d.opened_at_ms)
    }
    /// Deposits and withdrawals so far.
    pub fn movements(&self) -> u64 {
        self.details.as_ref().map_or(0, |d| d.movements)
    }

    /// Whether `actor` may see and move this account's money: its owner or an admin.
    pub fn permits(&self, actor: &Actor) -> bool {
        self.owner_id() == Some(actor.user_id.as_str()) || actor.has_role(ADMIN_ROLE)
    }

    /// The account as `actor` may act on it.
    fn accessible(&self, actor: &Actor) -> Result<&Details, AccountError> {
        let details = self.details.as_ref().ok_or(AccountError::AccountNotFound)?;
        if !self.permits(actor) {
            return Err(AccountError::NotAccountOwner);
        }
        Ok(details)
    }
}

fn positive(amount: Money) -> Result<Money, AccountError> {
    if amount.minor() > 0 {
        Ok(amount)
    } else {
        Err(AccountError::NonPositiveAmount(amount))
    }
}

impl Aggregate for BankAccount {
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    const KIND: &'static str = "account";

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open {
                account_id,
                owner_id,
                holder_name,
                currency,
                by,
                at_ms,
            } => {
                if self.exists() {
                    return Err(AccountError::AccountAlreadyExists(account_id.clone()));
                }
                let invalid = |field| move |reason| AccountError::InvalidField { field, reason };
                check_id(account_id).map_err(invalid("account_id"))?;
                check_id(owner_id).map_err(invalid("owner_id"))?;
                if let Some(name) = holder_name {
                    crate::check_text(name, true, HOLDER_NAME_MAX_CHARS)
                        .map_err(invalid("holder_name"))?;
                }
                if *owner_id != by.user_id && !by.has_role(ADMIN_ROLE) {
                    return Err(AccountError::NotAccountOwner);
                }
                Ok(vec![AccountEvent::AccountOpened {
                    account_id: account_id.clone(),
                    owner_id: owner_id.clone(),
                    holder_name: holder_name.clone(),
                    currency: currency.clone(),
                    at_ms: *at_ms,
                }])
            }
            AccountCommand::Deposit { amount, by, at_ms } => {
                let details = self.accessible(by)?;
                let amount = positive(*amount)?;
                details
                    .balance
                    .checked_add(amount)
                    .ok_or(AccountError::BalanceLimitExceeded)?;
                Ok(vec![AccountEvent::MoneyDeposited {
                    account_id: details.account_id.clone(),
                    amount,
                    at_ms: *at_ms,
                }])
            }
            AccountCommand::Withdraw { amount, by, at_ms } => {
                let details = self.accessible(by)?;
                let amount = positive(*amount)?;
                if amount > details.balance {
                    return Err(AccountError::InsufficientFunds {
                        balance: details.balance,
                        amount,
                    });
                }
                Ok(vec![AccountEvent::MoneyWithdrawn {
                    account_id: details.account_id.clone(),
                    amount,
                    at_ms: *at_ms,
                }])
            }
        }
    }

    fn evolve(&mut self, event: &AccountEvent) {
        match event {
            // The holder's name is not kept in the state: a snapshot would hold it in plaintext,
            // beyond the reach of its key (docs/adr/0011).
            AccountEvent::AccountOpened {
                account_id,
                owner_id,
                holder_name: _,
                currency,
                at_ms,
            } => {
                self.details = Some(Details {
                    account_id: account_id.clone(),
                    owner_id: owner_id.clone(),
                    currency: currency.clone(),
                    balance: Money::ZERO,
                    opened_at_ms: *at_ms,
                    movements: 0,
                });
            }
            // Saturating rather than checked: `decide` already refused overflows, and evolve
            // must not panic even on a corrupt stream.
            AccountEvent::MoneyDeposited { amount, .. } => {
                if let Some(d) = &mut self.details {
                    d.balance = Money::from_minor(d.balance.minor().saturating_add(amount.minor()));
                    d.movements += 1;
                }
            }
            AccountEvent::MoneyWithdrawn { amount, .. } => {
                if let Some(d) = &mut self.details {
                    d.balance = Money::from_minor(d.balance.minor().saturating_sub(amount.minor()));
                    d.movements += 1;
                }
            }
        }
    }

    fn snapshot_policy() -> Option<SnapshotPolicy<Self>> {
        Some(SnapshotPolicy::json(
            SNAPSHOT_EVERY_EVENTS,
            SNAPSHOT_SCHEMA_VERSION,
        ))
    }
}
