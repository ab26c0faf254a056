//! Proves every rule of the `BankAccount` aggregate (open, deposit, withdraw without
//! overdraft, who may act) with given/when/then; that its events survive the codec; that its
//! v1 events upcast to the current shape; and that its state round-trips as a snapshot.

use ficus_core::{codec, Aggregate, DomainEvent};
use ficus_domain::account::{AccountCommand, AccountError, AccountEvent, BankAccount};
use ficus_domain::money::{Currency, Money, MAX_ABS_MINOR};
use ficus_domain::service::Actor;
use ficus_domain::ErrorKind;
use ficus_testkit::AggregateTest;
use serde_json::json;

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const ACC: &str = "acc-1";
const OWNER: &str = "ann";

fn actor(id: &str, roles: &[&str]) -> Actor {
    Actor {
        user_id: id.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
    }
}

fn owner() -> Actor {
    actor(OWNER, &[])
}

fn eur() -> Currency {
    Currency::new("EUR").unwrap()
}

fn m(minor: i64) -> Money {
    Money::from_minor(minor)
}

fn opened() -> AccountEvent {
    AccountEvent::AccountOpened {
        account_id: ACC.into(),
        owner_id: OWNER.into(),
        holder_name: None,
        currency: eur(),
        at_ms: T0,
    }
}

fn deposited(minor: i64) -> AccountEvent {
    AccountEvent::MoneyDeposited {
        account_id: ACC.into(),
        amount: m(minor),
        at_ms: T0,
    }
}

fn withdrawn(minor: i64) -> AccountEvent {
    AccountEvent::MoneyWithdrawn {
        account_id: ACC.into(),
        amount: m(minor),
        at_ms: T0,
    }
}

fn open_by(by: Actor, owner_id: &str) -> AccountCommand {
    AccountCommand::Open {
        account_id: ACC.into(),
        owner_id: owner_id.into(),
        holder_name: None,
        currency: eur(),
        by,
        at_ms: T0,
    }
}

fn deposit(minor: i64, by: Actor) -> AccountCommand {
    AccountCommand::Deposit {
        amount: m(minor),
        by,
        at_ms: T0,
    }
}

fn withdraw(minor: i64, by: Actor) -> AccountCommand {
    AccountCommand::Withdraw {
        amount: m(minor),
        by,
        at_ms: T0,
    }
}

#[test]
fn an_owner_opens_an_account_for_itself() {
    let state = AggregateTest::<BankAccount>::given_no_previous_events()
        .when(&open_by(owner(), OWNER))
        .then_expect_events(vec![opened()]);
    assert_eq!(state.owner_id(), Some(OWNER));
    assert_eq!(state.balance(), Money::ZERO);
    assert_eq!(state.currency(), Some(&eur()));
}

#[test]
fn only_an_admin_opens_an_account_for_someone_else() {
    AggregateTest::<BankAccount>::given_no_previous_events()
        .when(&open_by(actor("admin-1", &["admin"]), OWNER))
        .then_expect_events(vec![opened()]);
    let err = AggregateTest::<BankAccount>::given_no_previous_events()
        .when(&open_by(actor("bob", &["customer"]), OWNER))
        .then_expect_error();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Forbidden, "not_account_owner")
    );
}

#[test]
fn opening_twice_or_with_a_bad_id_is_refused() {
    let err = AggregateTest::<BankAccount>::given(vec![opened()])
        .when(&open_by(owner(), OWNER))
        .then_expect_error();
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Conflict, "account_already_exists")
    );
    let err = AggregateTest::<BankAccount>::given_no_previous_events()
        .when(&open_by(owner(), "has space"))
        .then_expect_error();
    assert_eq!(err.code(), "invalid_field");
}

#[test]
fn deposits_and_withdrawals_move_the_balance_exactly() {
    let state = AggregateTest::<BankAccount>::given(vec![opened(), deposited(10_050)])
        .when(&withdraw(10_049, owner()))
        .then_expect_events(vec![withdrawn(10_049)]);
    assert_eq!(state.balance(), m(1));
    assert_eq!(state.movements(), 2);
    // Withdrawing the whole balance is allowed: zero is not an overdraft.
    let state = AggregateTest::<BankAccount>::given(vec![opened(), deposited(500)])
        .when(&withdraw(500, owner()))
        .then_expect_events(vec![withdrawn(500)]);
    assert_eq!(state.balance(), Money::ZERO);
}

#[test]
fn no_overdraft() {
    let err = AggregateTest::<BankAccount>::given(vec![opened(), deposited(500)])
        .when(&withdraw(501, owner()))
        .then_expect_error();
    assert_eq!(
        err,
        AccountError::InsufficientFunds {
            balance: m(500),
            amount: m(501)
        }
    );
    assert_eq!(
        (err.kind(), err.code()),
        (ErrorKind::Rule, "insufficient_funds")
    );
    AggregateTest::<BankAccount>::given(vec![opened()])
        .when(&withdraw(1, owner()))
        .then_expect_error_message("does not cover");
}

#[test]
fn amounts_must_be_positive() {
    for minor in [0, -1, -10_000] {
        for cmd in [deposit(minor, owner()), withdraw(minor, owner())] {
            let err = AggregateTest::<BankAccount>::given(vec![opened(), deposited(100)])
                .when(&cmd)
                .then_expect_error();
            assert_eq!(
                (err.kind(), err.code()),
                (ErrorKind::Invalid, "invalid_amount")
            );
        }
    }
}

#[test]
fn the_balance_stays_under_the_money_cap() {
    AggregateTest::<BankAccount>::given(vec![opened(), deposited(MAX_ABS_MINOR - 1)])
        .when(&deposit(1, owner()))
        .then_expect_events(vec![deposited(1)]);
    let err = AggregateTest::<BankAccount>::given(vec![opened(), deposited(MAX_ABS_MINOR)])
        .when(&deposit(1, owner()))
        .then_expect_error();
    assert_eq!(err.code(), "balance_limit_exceeded");
}

#[test]
fn only_the_owner_or_an_admin_moves_money() {
    let err = AggregateTest::<BankAccount>::given(vec![opened(), deposited(100)])
        .when(&withdraw(50, actor("bob", &["customer"])))
        .then_expect_error();
    assert_eq!(err, AccountError::NotAccountOwner);
    AggregateTest::<BankAccount>::given(vec![opened(), deposited(100)])
        .when(&withdraw(50, actor("admin-1", &["admin"])))
        .then_expect_events(vec![withdrawn(50)]);
}

#[test]
fn nothing_happens_to_an_account_never_opened() {
    for cmd in [deposit(1, owner()), withdraw(1, owner())] {
        let err = AggregateTest::<BankAccount>::given_no_previous_events()
            .when(&cmd)
            .then_expect_error();
        assert_eq!(
            (err.kind(), err.code()),
            (ErrorKind::NotFound, "account_not_found")
        );
    }
}

#[test]
fn events_survive_the_codec_in_minor_units() {
    for e in [opened(), deposited(1250), withdrawn(1)] {
        let (ty, payload) = codec::encode(&e).unwrap();
        assert_eq!(
            codec::decode::<AccountEvent>(ty.as_str(), AccountEvent::SCHEMA_VERSION, &payload)
                .unwrap(),
            e
        );
    }
    let (_, payload) = codec::encode(&deposited(1250)).unwrap();
    assert_eq!(payload["amount"], json!(1250));
}

#[test]
fn v1_events_upcast_to_the_current_shape() {
    let up = ficus_domain::upcasters();
    let v1_opened = json!({"account_id": ACC, "owner": OWNER, "currency": "EUR", "at_ms": T0});
    let (v, p) = up.upcast("AccountOpened", 1, &v1_opened).unwrap().unwrap();
    assert_eq!(v, AccountEvent::SCHEMA_VERSION);
    assert_eq!(
        codec::decode::<AccountEvent>("AccountOpened", v, &p).unwrap(),
        opened()
    );
    let v1_deposit = json!({"account_id": ACC, "amount": "12.50", "at_ms": T0});
    let (v, p) = up
        .upcast("MoneyDeposited", 1, &v1_deposit)
        .unwrap()
        .unwrap();
    assert_eq!(
        codec::decode::<AccountEvent>("MoneyDeposited", v, &p).unwrap(),
        deposited(1250)
    );
    // A v1 payload without the shape v1 promised is a loud error, not a guess.
    let bad = json!({"account_id": ACC, "amount": 12.5, "at_ms": T0});
    assert!(up.upcast("MoneyWithdrawn", 1, &bad).is_err());
    // Current events are left alone.
    assert!(up
        .upcast("MoneyDeposited", 2, &json!({"amount": 5}))
        .unwrap()
        .is_none());
}

#[test]
fn the_state_round_trips_as_a_snapshot() {
    let state = BankAccount::replay([opened(), deposited(700), withdrawn(200)].iter());
    let policy = BankAccount::snapshot_policy().expect("accounts are snapshotted");
    let value = (policy.encode)(&state).unwrap();
    assert_eq!((policy.decode)(value).unwrap(), state);
    assert!((policy.decode)(json!({"details": {"balance": "x"}})).is_err());
}
