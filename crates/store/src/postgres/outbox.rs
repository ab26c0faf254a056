//! The transactional outbox on PostgreSQL (to be written).

/// Migration 3: the outbox table, filled by `ficus_append` in the append's own transaction.
pub(crate) const SCHEMA: &str = "SELECT 1;";
