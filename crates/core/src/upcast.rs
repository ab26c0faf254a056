//! Schema evolution: upcasters turn a stored event's payload from an older schema version into
//! the shape the current code expects, on read, so history never has to be rewritten.
//!
//! An upcaster is registered per event type and per version it reads: `(type, n)` takes a
//! payload written at version `n` and returns it at version `n + 1`. On read, every step from
//! the stored version up is applied in order, so an event written at v1 reaches v3 through
//! `1 → 2 → 3`; each step is written once, against its neighbour, never against all older
//! shapes. A payload at a version with no upcaster is already current (or newer: not this
//! registry's business) and passes through untouched, without a copy.
//!
//! The registry is pure (no I/O, no clock): the store adapter decorator in `ficus_store` applies
//! it to every event it hands out (see docs/adr/0009).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;

use crate::aggregate::DomainEvent;

/// One step: the payload at version `n` in, the payload at version `n + 1` out. An `Err` is a
/// stored payload that does not have the shape its version promises: a loud error.
pub type UpcastFn = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// Why a stored payload could not be brought to the current shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} at schema version {from_version} does not upcast: {reason}")]
pub struct UpcastError {
    pub event_type: String,
    pub from_version: u32,
    pub reason: String,
}

/// The upcasters of every event type a process reads, by type and by the version they read.
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<String, BTreeMap<u32, UpcastFn>>,
}

impl std::fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut m = f.debug_map();
        for (ty, steps) in &self.steps {
            m.entry(ty, &steps.keys().collect::<Vec<_>>());
        }
        m.finish()
    }
}

impl Upcasters {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the step that reads `event_type` at `from_version` and returns it at
    /// `from_version + 1`.
    ///
    /// # Panics
    /// When a step for the same type and version is already registered: two ways to read one
    /// stored shape is a wiring bug that must not be decided by registration order.
    pub fn register(
        &mut self,
        event_type: &str,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> &mut Self {
        let previous = self
            .steps
            .entry(event_type.to_owned())
            .or_default()
            .insert(from_version, Arc::new(step));
        assert!(
            previous.is_none(),
            "two upcasters registered for {event_type} at version {from_version}"
        );
        self
    }

    /// Adds the upcasters a domain event type declares ([`DomainEvent::register_upcasters`]).
    pub fn with<E: DomainEvent>(mut self) -> Self {
        E::register_upcasters(&mut self);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether an event of this type stored at this version would be changed.
    pub fn applies(&self, event_type: &str, schema_version: u32) -> bool {
        self.steps
            .get(event_type)
            .is_some_and(|s| s.contains_key(&schema_version))
    }

    /// The payload brought up through every registered step, with the version it reached; or
    /// `None` when no step applies (the payload is current as stored).
    pub fn upcast(
        &self,
        event_type: &str,
        schema_version: u32,
        payload: &Value,
    ) -> Result<Option<(u32, Value)>, UpcastError> {
        let Some(steps) = self.steps.get(event_type) else {
            return Ok(None);
        };
        let mut version = schema_version;
        let mut current: Option<Value> = None;
        while let Some(step) = steps.get(&version) {
            let input = current.take().unwrap_or_else(|| payload.clone());
            let out = step(input).map_err(|reason| UpcastError {
                event_type: event_type.to_owned(),
                from_version: version,
                reason,
            })?;
            current = Some(out);
            version += 1;
        }
        Ok(current.map(|p| (version, p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Upcasters {
        let mut u = Upcasters::new();
        // v1 had `cents`, v2 renamed it `amount_minor`, v3 added `currency`.
        u.register("Paid", 1, |mut p| {
            let cents = p
                .as_object_mut()
                .and_then(|o| o.remove("cents"))
                .ok_or("no cents")?;
            p["amount_minor"] = cents;
            Ok(p)
        });
        u.register("Paid", 2, |mut p| {
            p["currency"] = json!("EUR");
            Ok(p)
        });
        u
    }

    #[test]
    fn steps_chain_from_the_stored_version_up() {
        let u = registry();
        let (v, p) = u.upcast("Paid", 1, &json!({"cents": 5})).unwrap().unwrap();
        assert_eq!((v, p), (3, json!({"amount_minor": 5, "currency": "EUR"})));
        let (v, p) = u
            .upcast("Paid", 2, &json!({"amount_minor": 7}))
            .unwrap()
            .unwrap();
        assert_eq!((v, p), (3, json!({"amount_minor": 7, "currency": "EUR"})));
        assert!(u.applies("Paid", 1) && !u.applies("Paid", 3) && !u.applies("Other", 1));
    }

    #[test]
    fn current_and_unknown_types_pass_untouched() {
        let u = registry();
        assert_eq!(u.upcast("Paid", 3, &json!({"x": 1})).unwrap(), None);
        assert_eq!(u.upcast("Refunded", 1, &json!({"x": 1})).unwrap(), None);
    }

    #[test]
    fn a_payload_without_its_promised_shape_is_a_loud_error() {
        let err = registry()
            .upcast("Paid", 1, &json!({"euros": 5}))
            .unwrap_err();
        assert_eq!(err.from_version, 1);
        assert!(err.to_string().contains("no cents"), "{err}");
    }

    #[test]
    #[should_panic(expected = "two upcasters")]
    fn registering_one_step_twice_is_refused() {
        let mut u = registry();
        u.register("Paid", 1, Ok);
    }
}
