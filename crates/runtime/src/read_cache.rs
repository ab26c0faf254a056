//! An in-process cache-aside layer in front of read models, with request coalescing.
//!
//! Every cached answer carries the read-model position it reflects. An entry is served only
//! while it is at least as fresh as the caller needs: the read model's applied checkpoint as
//! this process knows it (the SQLite runner's published status, or a PostgreSQL runner's /
//! follower's checkpoint) and the caller's `min_position`. The checkpoint only moves when the
//! projection applies events, so an applied batch invalidates what the read model answered
//! before it, at the moment it commits: no time-to-live, and a read after a command with
//! `min_position` never sees an answer older than that command, whatever the timing of the
//! feed. (The granularity is the read model: one event on any product invalidates the
//! catalog's entries. Finer, per-key invalidation would need the event-to-key mapping of every
//! projection here, and a lagging live feed could then re-cache a pre-event read.)
//!
//! Misses on one key are coalesced (single-flight): the first caller reads the backend, every
//! concurrent caller for that key awaits the same read. The number of keys is bounded by
//! [`ReadCacheConfig::max_entries`]; the least recently used is evicted first.
//!
//! HTTP-free: the gateway builds keys from requests and turns answers into headers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ficus_core::Position;
use tokio::sync::OnceCell;

/// Default bound on cached answers when the cache is on.
pub const READ_CACHE_DEFAULT_MAX_ENTRIES: usize = 10_000;

/// How often a lookup retries when the coalesced read it joined turned out older than it
/// needs (a read that started before an event it must see); then it reads uncached.
pub const READ_CACHE_MAX_ATTEMPTS: usize = 3;

/// Whether the cache is on, and how many answers it holds at most.
#[derive(Debug, Clone)]
pub struct ReadCacheConfig {
    pub enabled: bool,
    /// Most keys held at once (at least 1); the least recently used is evicted beyond it.
    pub max_entries: usize,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_entries: READ_CACHE_DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What the cache did so far, for `/metrics` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Reads that went to the read model (one per coalesced miss).
    pub backend_reads: u64,
    /// Lookups answered from a fresh entry without waiting.
    pub hits: u64,
    /// Entries dropped to stay within the bound.
    pub evictions: u64,
    /// Keys held now.
    pub entries: u64,
}

type Cell<V> = Arc<OnceCell<(V, Position)>>;

struct Slot<V> {
    cell: Cell<V>,
    /// The LRU clock value of the last use, the key into `Inner::by_use`.
    used: u64,
}

struct Inner<V> {
    slots: HashMap<String, Slot<V>>,
    /// Keys by last use, oldest first.
    by_use: BTreeMap<u64, String>,
    clock: u64,
    /// The last checkpoint seen per read model (a handful of names), to notice a rebuild.
    checkpoints: HashMap<String, Position>,
}

/// Cached read-model answers of type `V` by key.
pub struct ReadCache<V> {
    inner: Mutex<Inner<V>>,
    max_entries: usize,
    backend_reads: AtomicU64,
    hits: AtomicU64,
    evictions: AtomicU64,
}

impl<V: Clone + Send + Sync + 'static> ReadCache<V> {
    pub fn new(config: &ReadCacheConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                slots: HashMap::new(),
                by_use: BTreeMap::new(),
                clock: 0,
                checkpoints: HashMap::new(),
            }),
            max_entries: config.max_entries.max(1),
            backend_reads: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> ReadCacheStats {
        ReadCacheStats {
            backend_reads: self.backend_reads.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.lock().slots.len() as u64,
        }
    }

    /// Drops every entry (after a rebuild, when positions start over).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.slots.clear();
        inner.by_use.clear();
    }

    /// Records read model `source`'s checkpoint as this process knows it. Checkpoints only go
    /// back when a read model is rebuilt (here or, on PostgreSQL, by another process): then
    /// every entry is dropped, since positions start over and an old answer could otherwise
    /// look fresh again.
    pub fn observe_checkpoint(&self, source: &str, checkpoint: Position) {
        let mut inner = self.lock();
        let last = inner.checkpoints.get(source).copied();
        if last.is_some_and(|last| checkpoint < last) {
            inner.slots.clear();
            inner.by_use.clear();
        }
        if last != Some(checkpoint) {
            inner.checkpoints.insert(source.to_owned(), checkpoint);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // A panic while holding the lock leaves only a cache behind: keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cell for `key`: the existing one unless it holds an answer older than `fresh_from`,
    /// else a new empty one (evicting the least recently used key if the bound is reached).
    /// Also whether it already held a fresh answer.
    fn cell(&self, key: &str, fresh_from: Position) -> (Cell<V>, bool) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let Inner { slots, by_use, .. } = &mut *inner;
        if let Some(slot) = slots.get_mut(key) {
            let fresh = slot.cell.get().map(|(_, p)| *p >= fresh_from);
            if fresh != Some(false) {
                by_use.remove(&slot.used);
                slot.used = now;
                by_use.insert(now, key.to_owned());
                return (slot.cell.clone(), fresh == Some(true));
            }
            // Stale: replaced below (callers already awaiting the old cell keep it).
            by_use.remove(&slot.used);
            slots.remove(key);
        }
        while slots.len() >= self.max_entries {
            let Some((_, oldest)) = by_use.pop_first() else {
                break;
            };
            slots.remove(&oldest);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        let cell: Cell<V> = Arc::new(OnceCell::new());
        slots.insert(
            key.to_owned(),
            Slot {
                cell: cell.clone(),
                used: now,
            },
        );
        by_use.insert(now, key.to_owned());
        (cell, false)
    }

    /// The answer for `key` reflecting at least position `fresh_from`: from the cache when an
    /// entry is that fresh, else from `load` (run once for all concurrent callers of the key).
    /// Failed loads are not cached; the next caller tries again.
    pub async fn get_or_load<E, F, Fut>(
        &self,
        key: &str,
        fresh_from: Position,
        load: F,
    ) -> Result<(V, Position), E>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(V, Position), E>>,
    {
        for _ in 0..READ_CACHE_MAX_ATTEMPTS {
            let (cell, hit) = self.cell(key, fresh_from);
            if hit {
                self.hits.fetch_add(1, Ordering::Relaxed);
            }
            let answer = cell
                .get_or_try_init(|| {
                    self.backend_reads.fetch_add(1, Ordering::Relaxed);
                    load()
                })
                .await?;
            if answer.1 >= fresh_from {
                return Ok(answer.clone());
            }
            // Joined a read that started before the position this caller needs: go again,
            // the stale entry is replaced by `cell`.
        }
        self.backend_reads.fetch_add(1, Ordering::Relaxed);
        load().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    fn cache(max_entries: usize) -> Arc<ReadCache<String>> {
        Arc::new(ReadCache::new(&ReadCacheConfig {
            enabled: true,
            max_entries,
        }))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thousand_concurrent_misses_make_one_read() {
        let c = cache(10);
        let reads = Arc::new(AtomicUsize::new(0));
        // The read is held open until every caller has joined, so all 1,000 are misses.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let (c, reads, gate) = (c.clone(), reads.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_load("k", 5, || {
                    let (reads, gate) = (reads.clone(), gate.clone());
                    async move {
                        reads.fetch_add(1, Ordering::SeqCst);
                        let _p = gate.acquire().await.unwrap();
                        Ok::<_, ()>(("v".to_owned(), 5))
                    }
                })
                .await
            }));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        gate.add_permits(1);
        for t in tasks {
            let got = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("no hang")
                .unwrap();
            assert_eq!(got, Ok(("v".to_owned(), 5)));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        assert_eq!(c.stats().backend_reads, 1);
    }

    #[tokio::test]
    async fn an_older_entry_is_read_again_and_the_bound_evicts_the_least_recent() {
        let c = cache(2);
        let load =
            |v: &'static str, p: Position| move || async move { Ok::<_, ()>((v.to_owned(), p)) };
        assert_eq!(
            c.get_or_load("a", 1, load("a1", 1)).await,
            Ok(("a1".into(), 1))
        );
        // Fresh enough: served from the cache, the loader is not called.
        assert_eq!(
            c.get_or_load("a", 1, load("x", 9)).await,
            Ok(("a1".into(), 1))
        );
        // The read model moved to 2: the entry is stale and read again.
        assert_eq!(
            c.get_or_load("a", 2, load("a2", 2)).await,
            Ok(("a2".into(), 2))
        );
        c.get_or_load("b", 2, load("b2", 2)).await.unwrap();
        c.get_or_load("a", 2, load("x", 9)).await.unwrap(); // a is now the most recent
        c.get_or_load("c", 2, load("c2", 2)).await.unwrap(); // evicts b
        let s = c.stats();
        assert_eq!(
            (s.entries, s.evictions, s.backend_reads, s.hits),
            (2, 1, 4, 2)
        );
        assert_eq!(
            c.get_or_load("a", 2, load("x", 9)).await,
            Ok(("a2".into(), 2))
        );
        assert_eq!(
            c.get_or_load("b", 2, load("b3", 2)).await,
            Ok(("b3".into(), 2))
        );
        // A checkpoint going back (a rebuild) drops everything.
        c.observe_checkpoint("catalog", 7);
        c.observe_checkpoint("orders", 1);
        c.observe_checkpoint("catalog", 8);
        assert_eq!(c.stats().entries, 2);
        c.observe_checkpoint("catalog", 0);
        assert_eq!(c.stats().entries, 0);
        // A failed load is not cached.
        let failed = c
            .get_or_load("d", 2, || async { Err::<(String, Position), _>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        assert_eq!(
            c.get_or_load("d", 2, load("d2", 2)).await,
            Ok(("d2".into(), 2))
        );
    }
}
