//! The one codec between domain event enums and stored `(event type, JSON payload)` pairs.
//!
//! Domain events are `serde` enums tagged `{"type": .., "data": ..}`; the store keeps the tag
//! and the data apart, so the codec splits and joins them.

use serde_json::{Map, Value};

use crate::aggregate::DomainEvent;
use crate::event::{EventType, ValidationError};

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("event does not serialize to {{\"type\", \"data\"}}: {0}")]
    Shape(String),
    #[error("stored event {event_type} (schema {schema_version}) does not decode: {source}")]
    Decode {
        event_type: String,
        schema_version: u32,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Splits a domain event into its stored type name and payload.
pub fn encode<E: DomainEvent>(event: &E) -> Result<(EventType, Value), CodecError> {
    match serde_json::to_value(event)? {
        Value::Object(mut map) => {
            let ty = match map.remove("type") {
                Some(Value::String(s)) => s,
                _ => return Err(CodecError::Shape("missing string \"type\"".into())),
            };
            let data = map.remove("data").unwrap_or(Value::Null);
            Ok((EventType::new(ty)?, data))
        }
        other => Err(CodecError::Shape(format!("not an object: {other}"))),
    }
}

/// Joins a stored type name and payload back into the domain event.
pub fn decode<E: DomainEvent>(
    event_type: &str,
    schema_version: u32,
    payload: &Value,
) -> Result<E, CodecError> {
    let mut map = Map::with_capacity(2);
    map.insert("type".into(), Value::String(event_type.to_owned()));
    if !payload.is_null() {
        map.insert("data".into(), payload.clone());
    }
    serde_json::from_value(Value::Object(map)).map_err(|source| CodecError::Decode {
        event_type: event_type.to_owned(),
        schema_version,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type", content = "data")]
    enum Ev {
        Opened { owner: String },
        Closed,
    }
    impl DomainEvent for Ev {}

    #[test]
    fn round_trip() {
        for ev in [
            Ev::Opened {
                owner: "ann".into(),
            },
            Ev::Closed,
        ] {
            let (ty, data) = encode(&ev).unwrap();
            assert_eq!(decode::<Ev>(ty.as_str(), 1, &data).unwrap(), ev);
        }
        let (ty, data) = encode(&Ev::Opened { owner: "x".into() }).unwrap();
        assert_eq!(ty.as_str(), "Opened");
        assert_eq!(data["owner"], "x");
    }

    #[test]
    fn unknown_type_is_a_loud_error() {
        let err = decode::<Ev>("Exploded", 1, &Value::Null).unwrap_err();
        assert!(err.to_string().contains("Exploded"));
    }
}
