//! The reference e-commerce domain, written against the public Ficus API.
//!
//! The write side is pure: aggregates decide and evolve without I/O or a clock. Time
//! (`at_ms`, Unix milliseconds UTC) and ids arrive inside the commands.

pub mod account;
pub mod fulfilment;
pub mod jobs;
pub mod ledger;
pub mod legacy_acl;
pub mod money;
pub mod order;
pub mod pg_read_models;
pub mod product;
pub mod read_models;
pub mod read_side;
pub mod service;

/// The upcasters of every event type the domain has stored over its releases: wrap the
/// store with them ([`ficus_store::UpcastingStore::wrap`]) and every reader sees the current
/// shapes.
pub fn upcasters() -> ficus_core::Upcasters {
    ficus_core::Upcasters::new()
        .with::<product::ProductEvent>()
        .with::<order::OrderEvent>()
        .with::<account::AccountEvent>()
}

/// The personal fields of the domain's events (crypto-shredding, docs/adr/0011): wrap the
/// store with them ([`ficus_store::ShreddingStore::wrap`]) and they are stored encrypted under
/// their subject's key.
pub fn personal_fields() -> ficus_store::PersonalFields {
    let mut fields = ficus_store::PersonalFields::new();
    account::declare_personal_fields(&mut fields);
    fields
}

/// Checks an event appended through the raw stream API to a stream this domain owns
/// (`product-{id}`, `order-{id}`, `account-{id}`, `shipment-{id}`; `saga-{id}` is refused
/// outright). Such an event must decode as the aggregate's own event type and name the
/// stream's id, or the aggregate (and its read models) could no longer be loaded. Streams outside the domain are not its business: `Ok`.
pub fn check_raw_event(
    stream: &str,
    event_type: &str,
    schema_version: u32,
    payload: &serde_json::Value,
) -> Result<(), String> {
    use ficus_core::codec::decode;
    let (id, id_field, decoded) = if let Some(id) = stream.strip_prefix("product-") {
        let d = decode::<product::ProductEvent>(event_type, schema_version, payload).map(|_| ());
        (id, "product_id", d)
    } else if let Some(id) = stream.strip_prefix("order-") {
        let d = decode::<order::OrderEvent>(event_type, schema_version, payload).map(|_| ());
        (id, "order_id", d)
    } else if let Some(id) = stream.strip_prefix("account-") {
        // An older schema version is fine as long as it upcasts to a decodable event.
        let current = upcasters()
            .upcast(event_type, schema_version, payload)
            .map_err(|e| format!("stream {stream} belongs to the ledger: {e}"))?;
        let (version, current) = current.unwrap_or((schema_version, payload.clone()));
        let d = decode::<account::AccountEvent>(event_type, version, &current).map(|_| ());
        (id, "account_id", d)
    } else if stream.starts_with("saga-") {
        // A saga's record of what it did: an event slipped in could skip a compensation.
        return Err(format!(
            "stream {stream} holds a saga's state: only its orchestrator writes it"
        ));
    } else if let Some(id) = stream.strip_prefix("shipment-") {
        let d =
            decode::<fulfilment::ShipmentEvent>(event_type, schema_version, payload).map(|_| ());
        (id, "order_id", d)
    } else {
        return Ok(());
    };
    decoded.map_err(|e| format!("stream {stream} belongs to the shop domain: {e}"))?;
    if payload.get(id_field).and_then(|v| v.as_str()) != Some(id) {
        return Err(format!(
            "an event in stream {stream} must carry {id_field} = {id:?}"
        ));
    }
    Ok(())
}

/// How a refused command maps onto an API response.
///
/// The rule of thumb: `Invalid` means the command is wrong on its own, whatever the state;
/// `Rule` means the command is well formed but the current state (or a business limit) does not
/// allow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A field is missing, malformed or out of its allowed range. (400)
    Invalid,
    /// A business rule refuses the command in the current state. (422)
    Rule,
    /// The actor may not do this to this aggregate. (403)
    Forbidden,
    /// The aggregate does not exist. (404)
    NotFound,
    /// The command collides with what exists, e.g. creating twice. (409)
    Conflict,
}

impl ErrorKind {
    /// The HTTP status this kind maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Invalid => 400,
            ErrorKind::Rule => 422,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
        }
    }
}

/// Longest id accepted for products, orders, sellers and customers, in bytes.
pub const ID_MAX_BYTES: usize = 128;

/// Checks an id: 1..=`ID_MAX_BYTES` bytes of `[A-Za-z0-9_.:@-]`. That is the stream-id alphabet,
/// so `{kind}-{id}` is always a valid stream id, and UUIDs or `user@example` both fit.
pub(crate) fn check_id(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= ID_MAX_BYTES
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1-{ID_MAX_BYTES} characters of A-Z a-z 0-9 _ . : @ -"
        ))
    }
}

/// Checks free text: at most `max` characters (Unicode scalar values, not bytes), and, when
/// `required`, at least one non-whitespace character.
pub(crate) fn check_text(value: &str, required: bool, max: usize) -> Result<(), String> {
    if required && value.trim().is_empty() {
        return Err("must not be blank".into());
    }
    // Counting stops early so a huge string costs no more than `max + 1` steps.
    if value.chars().nth(max).is_some() {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_text() {
        assert!(check_id("0193a5f0-7c1e-7b3a-9d2e-1f2a3b4c5d6e").is_ok());
        assert!(check_id("user@example.com").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("has space").is_err());
        assert!(check_id(&"a".repeat(ID_MAX_BYTES)).is_ok());
        assert!(check_id(&"a".repeat(ID_MAX_BYTES + 1)).is_err());
        assert!(check_text("  ", true, 5).is_err());
        assert!(check_text("", false, 5).is_ok());
        assert!(check_text("ééééé", true, 5).is_ok());
        assert!(check_text("éééééé", true, 5).is_err());
        assert_eq!(ErrorKind::Rule.http_status(), 422);
    }
}
