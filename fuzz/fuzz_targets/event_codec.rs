//! Fuzzes the one stored-event decoder: arbitrary bytes → JSON → the domain's upcasters →
//! `ficus_core::codec::decode` for every domain event type. Nothing may panic, and whatever
//! decodes must re-encode to a current-schema payload that decodes to the same value.
//!
//! Input: byte 0 picks the event family, byte 1 the stored schema version, the rest is a JSON
//! document `{"type": .., "data": ..}` (the shape the seed corpus holds).
#![no_main]

use ficus_core::codec::{decode, encode};
use ficus_core::DomainEvent;
use ficus_domain::{account, fulfilment, money::Money, order, product};
use ficus_runtime::saga::SagaEvent;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Reads a stored event the way the store does (upcast, then decode) and checks the round trip.
fn read_back<E>(upcasters: &ficus_core::Upcasters, ty: &str, version: u32, payload: &Value)
where
    E: DomainEvent + PartialEq + std::fmt::Debug,
{
    let (version, current) = match upcasters.upcast(ty, version, payload) {
        Ok(Some((v, p))) => (v, p),
        Ok(None) => (version, payload.clone()),
        // A payload that does not have its version's shape: a loud error, which is fine.
        Err(_) => return,
    };
    let Ok(event) = decode::<E>(ty, version, &current) else {
        return;
    };
    let (ty2, data2) = encode(&event).expect("a decoded event re-encodes");
    assert_eq!(
        ty2.as_str(),
        ty,
        "the stored type name survives the round trip"
    );
    // What the writer stores today is current: no upcaster may touch it.
    assert_eq!(
        upcasters
            .upcast(ty2.as_str(), E::SCHEMA_VERSION, &data2)
            .ok(),
        Some(None),
        "a current payload of {ty} is not upcast again"
    );
    let again =
        decode::<E>(ty2.as_str(), E::SCHEMA_VERSION, &data2).expect("a re-encoded event decodes");
    assert_eq!(again, event, "decode(encode(e)) == e for {ty}");
}

fuzz_target!(|data: &[u8]| {
    let [family, version, rest @ ..] = data else {
        return;
    };
    let version = u32::from(*version % 4);
    let Ok(doc) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    let ty = doc.get("type").and_then(Value::as_str).unwrap_or("");
    let payload = doc.get("data").cloned().unwrap_or(Value::Null);
    let upcasters = ficus_domain::upcasters();
    let prefix = match family % 5 {
        0 => {
            read_back::<product::ProductEvent>(&upcasters, ty, version, &payload);
            "product-"
        }
        1 => {
            read_back::<order::OrderEvent>(&upcasters, ty, version, &payload);
            "order-"
        }
        2 => {
            read_back::<account::AccountEvent>(&upcasters, ty, version, &payload);
            "account-"
        }
        3 => {
            read_back::<fulfilment::ShipmentEvent>(&upcasters, ty, version, &payload);
            "shipment-"
        }
        _ => {
            read_back::<SagaEvent>(&upcasters, ty, version, &payload);
            "saga-"
        }
    };
    // The raw stream API's check of an event appended to a domain stream: never a panic.
    let id = ["product_id", "order_id", "account_id"]
        .iter()
        .find_map(|f| payload.get(*f).and_then(Value::as_str))
        .unwrap_or("x");
    let _ = ficus_domain::check_raw_event(&format!("{prefix}{id}"), ty, version, &payload);
    // Money is its own decoder (decimal text, the v1 amounts): parse → print → parse.
    if let Some(text) = payload.get("amount").and_then(Value::as_str) {
        if let Ok(m) = Money::parse_decimal(text) {
            let printed = m.to_decimal_string();
            assert_eq!(
                Money::parse_decimal(&printed).ok(),
                Some(m),
                "{text:?} → {printed:?}"
            );
        }
    }
});
