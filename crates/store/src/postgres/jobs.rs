//! The job queue on PostgreSQL (to be written).

/// Migration 2: the job queue's tables.
pub(crate) const SCHEMA: &str = "SELECT 1;";
