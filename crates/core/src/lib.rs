//! The Ficus domain kernel.
//!
//! Event envelope, stream versions, expected-version rules and the pure `decide`/`evolve`
//! traits for aggregates. Architecture invariant: this crate does no I/O, spawns no task and
//! reads no clock; time and ids are passed in by the caller.

pub mod aggregate;
pub mod codec;
pub mod event;
pub mod time;
pub mod upcast;

pub use aggregate::{Aggregate, DomainEvent, SnapshotPolicy};
pub use codec::CodecError;
pub use event::{
    EventType, ExpectedVersion, Metadata, NewEvent, Position, RecordedEvent, StreamId,
    ValidationError, Version,
};
pub use upcast::{UpcastError, Upcasters};
