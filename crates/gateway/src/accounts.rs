//! The ledger example over HTTP: open an account, deposit, withdraw, and read an account now
//! or as it was at a past version (`?as_of_version=N`) or instant (`?as_of=<RFC 3339 | ms>`).
//!
//! Reads fold the account's stream (from its latest snapshot), not a read model: time travel
//! is a fold of a prefix of the stream. Only the account's owner (the token's `sub`) or an
//! admin may act on or read an account.

use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ficus_core::{Position, Version};
use ficus_domain::account::BankAccount;
use ficus_domain::ledger::{Ledger, LedgerError};
use ficus_domain::money::{Currency, Money};
use ficus_runtime::{AsOf, Loaded};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{if_match, JsonBody, PathParams, QueryParams};
use crate::shop::{answer, metadata, parse_amount, Amount};
use crate::{AppState, CorrelationId};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/accounts", post(open_account))
        .route("/v1/accounts/{id}", get(get_account))
        .route("/v1/accounts/{id}/deposits", post(deposit))
        .route("/v1/accounts/{id}/withdrawals", post(withdraw))
}

/// The ledger on the server's repository (and so its snapshot store).
fn ledger(st: &AppState) -> Ledger {
    Ledger::new(st.shop.repository().clone())
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        if let LedgerError::Store(s) = e {
            return s.into();
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = ApiError::new(status, e.code(), e.to_string());
        match e {
            LedgerError::Conflict { actual, .. } => err = err.with("actual_version", actual),
            LedgerError::VersionNotFound { current, .. } => {
                err = err.with("current_version", current)
            }
            _ => {}
        }
        err
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenDto {
    currency: String,
    /// Whose account it is; only an admin may name someone other than itself.
    #[serde(default)]
    owner_id: Option<String>,
    /// The holder's name: personal data of the owner, stored encrypted under the owner's key
    /// and erased by `DELETE /v1/subjects/{owner_id}/keys`.
    #[serde(default)]
    holder_name: Option<String>,
}

async fn open_account(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    JsonBody(body): JsonBody<OpenDto>,
) -> Result<Response, ApiError> {
    let currency =
        Currency::new(body.currency).map_err(|e| ApiError::bad_request(e.code(), e.to_string()))?;
    let owner_id = body.owner_id.unwrap_or_else(|| caller.0.user_id.clone());
    let id = uuid::Uuid::now_v7().to_string();
    let out = ledger(&st)
        .open(
            &caller.0,
            &id,
            ficus_domain::ledger::AccountHolder {
                owner_id,
                name: body.holder_name,
            },
            currency,
            ficus_store::now_ms(),
            &metadata(&caller, &corr),
        )
        .await?;
    Ok(answer(StatusCode::CREATED, &id, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MovementDto {
    /// A JSON number with at most two decimals, in the account's currency.
    amount: Box<RawValue>,
}

/// The amount of a deposit or withdrawal: > 0 is the aggregate's rule, the grammar is the
/// edge's.
fn movement_amount(body: &MovementDto) -> Result<Money, ApiError> {
    parse_amount(&body.amount, "amount")
}

async fn deposit(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<MovementDto>,
) -> Result<Response, ApiError> {
    let amount = movement_amount(&body)?;
    let out = ledger(&st)
        .deposit(
            &caller.0,
            &id,
            amount,
            ficus_store::now_ms(),
            &metadata(&caller, &corr),
            if_match(&headers)?,
        )
        .await?;
    Ok(answer(StatusCode::CREATED, &id, out))
}

async fn withdraw(
    State(st): State<AppState>,
    caller: Caller,
    Extension(corr): Extension<CorrelationId>,
    headers: HeaderMap,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<MovementDto>,
) -> Result<Response, ApiError> {
    let amount = movement_amount(&body)?;
    let out = ledger(&st)
        .withdraw(
            &caller.0,
            &id,
            amount,
            ficus_store::now_ms(),
            &metadata(&caller, &corr),
            if_match(&headers)?,
        )
        .await?;
    Ok(answer(StatusCode::CREATED, &id, out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AsOfQuery {
    /// A stream version, ≥ 1.
    as_of_version: Option<String>,
    /// An RFC 3339 timestamp, or milliseconds since the Unix epoch.
    as_of: Option<String>,
}

impl AsOfQuery {
    fn parse(&self) -> Result<Option<AsOf>, ApiError> {
        let invalid = |m: String| ApiError::bad_request("invalid_query", m);
        match (&self.as_of_version, &self.as_of) {
            (Some(_), Some(_)) => Err(invalid("give as_of_version or as_of, not both".into())),
            (Some(v), None) => match v.parse::<Version>() {
                Ok(v) if v >= 1 => Ok(Some(AsOf::Version(v))),
                _ => Err(invalid(format!(
                    "as_of_version must be a stream version (an integer ≥ 1), got {v:?}"
                ))),
            },
            (None, Some(t)) => parse_instant(t)
                .map(|ms| Some(AsOf::Time(ms)))
                .ok_or_else(|| {
                    invalid(format!(
                        "as_of must be an RFC 3339 timestamp like 2026-01-01T12:00:00Z or \
                     milliseconds since the Unix epoch, got {t:?}"
                    ))
                }),
            (None, None) => Ok(None),
        }
    }
}

/// Longest `as_of` text looked at; anything longer is refused before parsing.
const AS_OF_MAX_CHARS: usize = 64;

/// RFC 3339, or a non-negative integer count of milliseconds since the Unix epoch.
fn parse_instant(text: &str) -> Option<i64> {
    if text.is_empty() || text.len() > AS_OF_MAX_CHARS {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    ficus_core::time::parse_rfc3339_ms(text)
}

#[derive(Serialize)]
struct AccountDto {
    id: String,
    owner_id: String,
    currency: String,
    balance: Amount,
    /// Deposits and withdrawals folded into `balance`.
    movements: u64,
    opened_at: String,
    /// The stream version this state is at (the requested one, for `as_of_version`).
    version: Version,
    position: Position,
}

fn account_dto(id: &str, loaded: &Loaded<BankAccount>) -> AccountDto {
    let a = &loaded.state;
    AccountDto {
        id: id.to_owned(),
        owner_id: a.owner_id().unwrap_or_default().to_owned(),
        currency: a.currency().map(|c| c.to_string()).unwrap_or_default(),
        balance: Amount(a.balance().minor()),
        movements: a.movements(),
        opened_at: ficus_core::time::format_rfc3339_ms(a.opened_at_ms().unwrap_or(0)),
        version: loaded.version,
        position: loaded.position,
    }
}

async fn get_account(
    State(st): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<AsOfQuery>,
) -> Result<Response, ApiError> {
    let as_of = q.parse()?;
    let loaded = ledger(&st).get(&caller.0, &id, as_of).await?;
    let mut resp = Json(account_dto(&id, &loaded)).into_response();
    // Only the current state is something an `If-Match` can name.
    if as_of.is_none() {
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", loaded.version)) {
            resp.headers_mut().insert(header::ETAG, v);
        }
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::parse_instant;

    #[test]
    fn instants_are_rfc3339_or_milliseconds() {
        assert_eq!(parse_instant("0"), Some(0));
        assert_eq!(parse_instant("1767225600000"), Some(1_767_225_600_000));
        assert_eq!(
            parse_instant("2026-01-01T00:00:00Z"),
            Some(1_767_225_600_000)
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "yesterday",
            &"9".repeat(70),
            "99999999999999999999",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }
}
