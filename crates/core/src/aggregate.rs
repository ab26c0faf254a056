//! Aggregates as pure functions: `decide` turns a command into events, `evolve` folds an
//! event into state. Neither does I/O; the runtime loads, decides and appends around them.

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use crate::upcast::Upcasters;

/// A domain event type that the codec can store. Implement it on a `serde` enum tagged with
/// `#[serde(tag = "type", content = "data")]`: the tag becomes the stored event type.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// The schema version written with new events of this type.
    const SCHEMA_VERSION: u32 = 1;

    /// Registers the upcasters that bring this type's events stored at older schema versions
    /// up to [`DomainEvent::SCHEMA_VERSION`]. None by default: every stored event is current.
    fn register_upcasters(_upcasters: &mut Upcasters) {}
}

/// How an aggregate's state is snapshotted: every `every_events` events, in a JSON shape whose
/// version is `schema_version`. A stored snapshot of another version, or one that no longer
/// decodes, is ignored and rebuilt from the events: a snapshot is a cache, never the truth.
pub struct SnapshotPolicy<A> {
    /// A snapshot is taken whenever the stream's version crosses a multiple of this (≥ 1).
    pub every_events: u64,
    /// The version of the state's snapshot shape. Bump it whenever that shape changes.
    pub schema_version: u32,
    pub encode: fn(&A) -> Result<Value, String>,
    pub decode: fn(Value) -> Result<A, String>,
}

impl<A> Clone for SnapshotPolicy<A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for SnapshotPolicy<A> {}

impl<A> std::fmt::Debug for SnapshotPolicy<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotPolicy")
            .field("every_events", &self.every_events)
            .field("schema_version", &self.schema_version)
            .finish()
    }
}

impl<A: Serialize + DeserializeOwned> SnapshotPolicy<A> {
    /// Snapshots the state through its `serde` form.
    pub fn json(every_events: u64, schema_version: u32) -> Self {
        Self {
            every_events: every_events.max(1),
            schema_version,
            encode: |a| serde_json::to_value(a).map_err(|e| e.to_string()),
            decode: |v| serde_json::from_value(v).map_err(|e| e.to_string()),
        }
    }
}

/// A consistency boundary whose state is the fold of its events.
pub trait Aggregate: Default + Clone + std::fmt::Debug {
    type Command;
    type Event: DomainEvent;
    type Error: std::error::Error;

    /// Stream prefix: an instance `id` lives in stream `{KIND}-{id}`.
    const KIND: &'static str;

    /// Checks the command against the current state and returns the events it causes.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies one event to the state. Must accept every event `decide` ever produced.
    fn evolve(&mut self, event: &Self::Event);

    /// Whether and how the repository snapshots this aggregate. `None` (the default): it is
    /// always folded from its whole stream.
    fn snapshot_policy() -> Option<SnapshotPolicy<Self>> {
        None
    }

    /// Folds events into a fresh state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        let mut state = Self::default();
        for e in events {
            state.evolve(e);
        }
        state
    }
}
