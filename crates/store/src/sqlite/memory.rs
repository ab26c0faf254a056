//! The process-wide bound on SQLite's own memory. Every SQLite connection of the process (the
//! event log's writer and readers, each read model's, the snapshot store's) keeps a page
//! cache of up to its `cache_size`; together they grow with the working set until each is
//! full, which on a busy server is tens of MiB arriving over many minutes. The soft heap
//! limit bounds the sum: past it, SQLite recycles clean cache pages instead of allocating, so
//! its memory stops growing at a figure the operator chose (`--sqlite-memory-limit-mib`).

/// Default bound on the memory all SQLite connections of the process hold, in MiB: room for
/// the event log writer's own cache (64 MiB by default) and the readers' beside it.
pub const DEFAULT_SQLITE_MEMORY_LIMIT_MIB: u64 = 128;
/// Smallest bound accepted, in MiB: below it the page caches thrash.
pub const MIN_SQLITE_MEMORY_LIMIT_MIB: u64 = 4;

/// Sets the soft limit on the heap memory SQLite holds in this process, in bytes (0 turns the
/// limit off). Returns the limit in force before.
pub fn set_memory_limit(bytes: u64) -> u64 {
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    // SAFETY: sqlite3_soft_heap_limit64 takes a plain integer, is thread-safe in the bundled
    // build (SQLITE_THREADSAFE=1) and may be called at any time.
    let before = unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(bytes) };
    before.max(0) as u64
}

/// The soft limit on SQLite's heap memory in force now, in bytes (0: no limit).
pub fn memory_limit() -> u64 {
    // SAFETY: as `set_memory_limit`; a negative argument reads the limit without changing it.
    let limit = unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(-1) };
    limit.max(0) as u64
}

/// Bytes of heap memory SQLite holds right now, across every connection of the process.
pub fn memory_used() -> u64 {
    // SAFETY: a read of SQLite's memory statistics; no arguments, thread-safe.
    let used = unsafe { rusqlite::ffi::sqlite3_memory_used() };
    used.max(0) as u64
}

/// The most heap memory SQLite has held at once since the process started.
pub fn memory_highwater() -> u64 {
    // SAFETY: as `memory_used`; 0 leaves the high-water mark as it is.
    let high = unsafe { rusqlite::ffi::sqlite3_memory_highwater(0) };
    high.max(0) as u64
}
