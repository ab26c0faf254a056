//! The event envelope and the identifiers it carries.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Position of an event in the global log. Positions start at 1 and have no gaps:
/// the n-th committed event has position n. `0` means "before the first event".
pub type Position = u64;

/// Version of an event within its stream. Versions start at 1 and have no gaps;
/// a stream's version is the version of its last event, `0` when the stream does not exist.
pub type Version = u64;

/// Longest stream id accepted, in bytes.
pub const STREAM_ID_MAX_BYTES: usize = 200;
/// Longest event type accepted, in bytes.
pub const EVENT_TYPE_MAX_BYTES: usize = 200;

/// Why an identifier was refused. Maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// The stream id is empty, too long or has characters outside `[A-Za-z0-9_.:@-]`. (400)
    #[error("stream id must be 1-{STREAM_ID_MAX_BYTES} characters of A-Z a-z 0-9 _ . : @ - and must not start with '$': {0:?}")]
    StreamId(String),
    /// The event type is empty, too long or has characters outside `[A-Za-z0-9_.:-]`. (400)
    #[error(
        "event type must be 1-{EVENT_TYPE_MAX_BYTES} characters of A-Z a-z 0-9 _ . : -: {0:?}"
    )]
    EventType(String),
}

fn valid_ident(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b) || extra.contains(&b))
}

/// A validated stream id, e.g. `order-0193...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        if valid_ident(&s, STREAM_ID_MAX_BYTES, b"@") && !s.starts_with('$') {
            Ok(Self(s))
        } else {
            Err(ValidationError::StreamId(s))
        }
    }
    /// The stream of one aggregate instance: `{kind}-{id}`.
    pub fn for_aggregate(kind: &str, id: &str) -> Result<Self, ValidationError> {
        Self::new(format!("{kind}-{id}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StreamId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A validated event type name, e.g. `ProductCreated`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
        let s = s.into();
        if valid_ident(&s, EVENT_TYPE_MAX_BYTES, b"") {
            Ok(Self(s))
        } else {
            Err(ValidationError::EventType(s))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EventType::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Event metadata: who caused the event and in answer to what. Free-form extra keys are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An event about to be appended. The caller chooses its id (UUID v7 by convention).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: EventType,
    pub schema_version: u32,
    pub metadata: Metadata,
    pub payload: Value,
}

/// An event as stored: the envelope plus the positions the store assigned at commit.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream_id: StreamId,
    pub version: Version,
    pub position: Position,
    pub event_type: EventType,
    pub schema_version: u32,
    /// Commit time, milliseconds since the Unix epoch (UTC).
    pub recorded_at_ms: i64,
    pub metadata: Metadata,
    pub payload: Value,
}

/// What the writer expects the stream's version to be before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must have at least one event.
    Exists,
    /// The stream's last event must have exactly this version (`0` is the same as `NoStream`).
    Exact(Version),
}

impl ExpectedVersion {
    /// Whether a stream currently at `current` (0 = no stream) satisfies this expectation.
    pub fn admits(self, current: Version) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::Exists => current > 0,
            ExpectedVersion::Exact(v) => current == v,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no_stream"),
            ExpectedVersion::Exists => f.write_str("exists"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_validated() {
        assert!(StreamId::new("order-123").is_ok());
        assert!(StreamId::new("a@b.c:d_e").is_ok());
        assert!(StreamId::new("").is_err());
        assert!(StreamId::new("$all").is_err());
        assert!(StreamId::new("has space").is_err());
        assert!(StreamId::new("x".repeat(STREAM_ID_MAX_BYTES + 1)).is_err());
        assert!(EventType::new("OrderPlaced").is_ok());
        assert!(EventType::new("Order/Placed").is_err());
    }

    #[test]
    fn expected_version_rules() {
        use ExpectedVersion::*;
        assert!(Any.admits(0) && Any.admits(7));
        assert!(NoStream.admits(0) && !NoStream.admits(1));
        assert!(Exists.admits(3) && !Exists.admits(0));
        assert!(Exact(2).admits(2) && !Exact(2).admits(3));
        assert!(Exact(0).admits(0));
    }

    #[test]
    fn metadata_keeps_extra_keys() {
        let m: Metadata = serde_json::from_str(r#"{"correlation_id":"c1","tenant":"t9"}"#).unwrap();
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.extra["tenant"], "t9");
        let back = serde_json::to_value(&m).unwrap();
        assert_eq!(back["tenant"], "t9");
    }
}
