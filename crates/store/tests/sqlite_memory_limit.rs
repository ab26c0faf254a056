//! The process-wide SQLite memory bound holds: reading a store much larger than the bound
//! through connections whose own page caches could hold all of it leaves SQLite's memory near
//! the bound, while without the bound the same reads grow it past several times that.
//! (Its own test binary: the limit is process-wide.)

use ficus_store::sqlite::{memory_highwater, memory_used, set_memory_limit};
use rusqlite::Connection;

const ROWS: i64 = 40_000;
/// Each row's payload: 40,000 rows of 512 bytes is about 20 MiB of pages.
const PAYLOAD_BYTES: usize = 512;
const LIMIT_BYTES: u64 = 4 << 20;

fn fill(path: &std::path::Path) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB);")
        .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut ins = tx.prepare("INSERT INTO t (id, v) VALUES (?1, ?2)").unwrap();
        for i in 0..ROWS {
            ins.execute(rusqlite::params![i, vec![(i % 251) as u8; PAYLOAD_BYTES]])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Scans the whole table on `n` connections, each allowed a 64 MiB page cache, and keeps them
/// open; SQLite's memory in use afterwards.
fn scan_all(path: &std::path::Path, n: usize) -> (Vec<Connection>, u64) {
    let mut conns = Vec::new();
    for _ in 0..n {
        let c = Connection::open(path).unwrap();
        c.execute_batch("PRAGMA cache_size = -65536;").unwrap();
        let sum: i64 = c
            .query_row("SELECT SUM(length(v)) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sum, ROWS * PAYLOAD_BYTES as i64);
        conns.push(c);
    }
    let used = memory_used();
    (conns, used)
}

#[test]
fn the_soft_limit_bounds_the_page_caches_of_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.db");
    fill(&path);

    // Unbounded: three connections each cache the whole ~20 MiB table.
    set_memory_limit(0);
    let (conns, unbounded) = scan_all(&path, 3);
    drop(conns);
    assert!(
        unbounded > 12 * LIMIT_BYTES,
        "without a limit the caches should hold most of the table: {unbounded} bytes"
    );

    // Bounded: the same reads stay near the limit (SQLite recycles clean pages past it).
    let before = set_memory_limit(LIMIT_BYTES);
    assert_eq!(before, 0, "the limit was off");
    let (conns, bounded) = scan_all(&path, 3);
    assert!(
        bounded <= LIMIT_BYTES + (LIMIT_BYTES / 2),
        "SQLite holds {bounded} bytes with a {LIMIT_BYTES}-byte limit"
    );
    eprintln!("SQLite memory after the same reads: {unbounded} bytes unbounded, {bounded} bounded");
    drop(conns);
    assert!(
        memory_highwater() >= unbounded,
        "the high-water mark saw the unbounded run"
    );
    assert_eq!(set_memory_limit(0), LIMIT_BYTES, "the limit reads back");
}
