//! The transactional outbox relay on PostgreSQL (to be written).
