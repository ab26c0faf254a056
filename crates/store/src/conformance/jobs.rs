//! The conformance suite every [`JobQueue`](crate::JobQueue) adapter must pass.
