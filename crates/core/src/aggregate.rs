//! Aggregates as pure functions: `decide` turns a command into events, `evolve` folds an
//! event into state. Neither does I/O; the runtime loads, decides and appends around them.

use serde::{de::DeserializeOwned, Serialize};

/// A domain event type that the codec can store. Implement it on a `serde` enum tagged with
/// `#[serde(tag = "type", content = "data")]`: the tag becomes the stored event type.
pub trait DomainEvent: Serialize + DeserializeOwned + Clone + std::fmt::Debug {
    /// The schema version written with new events of this type.
    const SCHEMA_VERSION: u32 = 1;
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
