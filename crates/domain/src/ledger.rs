//! The command and query side of the ledger example: opening accounts, moving money, and
//! reading an account now or as it was (time travel). Every command is one optimistic append
//! through [`Repository::execute`]; errors come back as [`LedgerError`], which knows its API
//! status and code.

use ficus_core::{Metadata, Version};
use ficus_runtime::{AsOf, CommandError, CommandOutcome, Loaded, Repository};
use ficus_store::StoreError;

use crate::account::{AccountCommand, AccountError, BankAccount};
use crate::money::{Currency, Money};
use crate::service::Actor;
use crate::ErrorKind;

/// Why a ledger call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Account(AccountError),
    /// `as_of_version` past the stream's end. (404 `version_not_found`)
    #[error("account {account_id} has no version {requested}; its latest is {current}")]
    VersionNotFound {
        account_id: String,
        requested: Version,
        current: Version,
    },
    /// The account did not exist yet at the requested version or instant. (404
    /// `account_not_found`)
    #[error("account {0} did not exist yet at that point")]
    NotYetOpened(String),
    /// The stream moved on (stale `If-Match`, or a race lost too often). (409
    /// `wrong_expected_version`)
    #[error("{message}")]
    Conflict { message: String, actual: Version },
    /// A malformed id. (400 `invalid_field`)
    #[error("{0}")]
    Invalid(String),
    /// The store failed. (503 `store_unavailable`, or its own status)
    #[error(transparent)]
    Store(StoreError),
    /// A stored event no longer decodes: a bug or corruption, loud. (500 `internal`)
    #[error("{0}")]
    Internal(String),
}

impl LedgerError {
    /// The API status of this error.
    pub fn status(&self) -> u16 {
        match self {
            LedgerError::Account(e) => e.kind().http_status(),
            LedgerError::VersionNotFound { .. } | LedgerError::NotYetOpened(_) => {
                ErrorKind::NotFound.http_status()
            }
            LedgerError::Conflict { .. } => ErrorKind::Conflict.http_status(),
            LedgerError::Invalid(_) => ErrorKind::Invalid.http_status(),
            LedgerError::Store(StoreError::Invalid(_)) => 400,
            LedgerError::Store(StoreError::WrongExpectedVersion { .. }) => 409,
            LedgerError::Store(StoreError::Unavailable(_)) => 503,
            LedgerError::Store(StoreError::StorageFault(_) | StoreError::OutcomeUnknown(_)) => 503,
            LedgerError::Store(StoreError::ClaimLost) => 409,
            LedgerError::Store(StoreError::Corrupt(_)) | LedgerError::Internal(_) => 500,
        }
    }

    /// The machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::Account(e) => e.code(),
            LedgerError::VersionNotFound { .. } => "version_not_found",
            LedgerError::NotYetOpened(_) => "account_not_found",
            LedgerError::Conflict { .. } => "wrong_expected_version",
            LedgerError::Invalid(_) => "invalid_field",
            LedgerError::Store(StoreError::Invalid(_)) => "invalid_request",
            LedgerError::Store(StoreError::WrongExpectedVersion { .. }) => "wrong_expected_version",
            LedgerError::Store(StoreError::Unavailable(_)) => "store_unavailable",
            LedgerError::Store(StoreError::StorageFault(_)) => "storage_unavailable",
            LedgerError::Store(StoreError::OutcomeUnknown(_)) => "storage_outcome_unknown",
            LedgerError::Store(StoreError::ClaimLost) => "request_in_progress",
            LedgerError::Store(StoreError::Corrupt(_)) | LedgerError::Internal(_) => "internal",
        }
    }
}

impl From<CommandError<AccountError>> for LedgerError {
    fn from(e: CommandError<AccountError>) -> Self {
        match e {
            CommandError::Domain(d) => LedgerError::Account(d),
            CommandError::Conflict {
                stream,
                expected,
                actual,
            } => LedgerError::Conflict {
                message: format!("{stream} is at version {actual}, expected {expected}"),
                actual,
            },
            CommandError::InvalidId(v) => LedgerError::Invalid(v.to_string()),
            CommandError::Codec(c) => LedgerError::Internal(c.to_string()),
            CommandError::Store(s) => LedgerError::Store(s),
        }
    }
}

/// Whose account is opened: the owner's user id, and the holder's name (personal data of the
/// owner, stored encrypted under the owner's key).
#[derive(Debug, Clone)]
pub struct AccountHolder {
    pub owner_id: String,
    pub name: Option<String>,
}

/// The ledger's command and query side.
#[derive(Clone)]
pub struct Ledger {
    repo: Repository,
}

impl Ledger {
    pub fn new(repo: Repository) -> Self {
        Self { repo }
    }

    /// Opens account `account_id` for `holder.owner_id` (the actor itself unless it is an admin).
    pub async fn open(
        &self,
        actor: &Actor,
        account_id: &str,
        holder: AccountHolder,
        currency: Currency,
        at_ms: i64,
        meta: &Metadata,
    ) -> Result<CommandOutcome, LedgerError> {
        let cmd = AccountCommand::Open {
            account_id: account_id.to_owned(),
            owner_id: holder.owner_id,
            holder_name: holder.name,
            currency,
            by: actor.clone(),
            at_ms,
        };
        Ok(self
            .repo
            .execute::<BankAccount>(account_id, &cmd, meta, None)
            .await?)
    }

    pub async fn deposit(
        &self,
        actor: &Actor,
        account_id: &str,
        amount: Money,
        at_ms: i64,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, LedgerError> {
        let cmd = AccountCommand::Deposit {
            amount,
            by: actor.clone(),
            at_ms,
        };
        Ok(self
            .repo
            .execute::<BankAccount>(account_id, &cmd, meta, if_match)
            .await?)
    }

    pub async fn withdraw(
        &self,
        actor: &Actor,
        account_id: &str,
        amount: Money,
        at_ms: i64,
        meta: &Metadata,
        if_match: Option<Version>,
    ) -> Result<CommandOutcome, LedgerError> {
        let cmd = AccountCommand::Withdraw {
            amount,
            by: actor.clone(),
            at_ms,
        };
        Ok(self
            .repo
            .execute::<BankAccount>(account_id, &cmd, meta, if_match)
            .await?)
    }

    /// The account now, or as it was at `as_of`. Only its owner or an admin may read it; the
    /// check is made on the current state (an account's owner never changes).
    pub async fn get(
        &self,
        actor: &Actor,
        account_id: &str,
        as_of: Option<AsOf>,
    ) -> Result<Loaded<BankAccount>, LedgerError> {
        let current = self.repo.load::<BankAccount>(account_id).await?;
        if !current.state.exists() {
            return Err(LedgerError::Account(AccountError::AccountNotFound));
        }
        if !current.state.permits(actor) {
            return Err(LedgerError::Account(AccountError::NotAccountOwner));
        }
        let Some(as_of) = as_of else {
            return Ok(current);
        };
        if let AsOf::Version(requested) = as_of {
            if requested > current.version {
                return Err(LedgerError::VersionNotFound {
                    account_id: account_id.to_owned(),
                    requested,
                    current: current.version,
                });
            }
        }
        let past = self
            .repo
            .load_as_of::<BankAccount>(account_id, as_of)
            .await?;
        if !past.state.exists() {
            return Err(LedgerError::NotYetOpened(account_id.to_owned()));
        }
        Ok(past)
    }
}
