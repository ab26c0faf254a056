//! WAL checkpoints on their own thread, so the writer never stops to copy pages into the
//! database file in the middle of a commit.
//!
//! The writer runs with `wal_autocheckpoint = 0`. This thread runs a PASSIVE checkpoint (never
//! blocks the writer or readers) every interval; once the WAL is fully copied and no reader
//! holds an old snapshot, the writer's next transaction starts the WAL over from the beginning,
//! so its size stays bounded. If the WAL nevertheless grows past `wal_max_frames` (readers
//! pinning snapshots), a RESTART checkpoint waits for them and forces the reset.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::open_connection_in;

pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    pub(crate) fn start(
        path: PathBuf,
        interval: Duration,
        wal_max_frames: i64,
        vfs: Option<String>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ficus-sqlite-checkpoint".into())
            .spawn(move || {
                let conn = match open_connection_in(&path, vfs.as_deref()) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "checkpointer could not open the database");
                        return;
                    }
                };
                while !flag.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    });
                    match passive {
                        Ok((log, _)) if log > wal_max_frames => {
                            if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(RESTART)") {
                                tracing::warn!(error = %e, "WAL restart checkpoint failed");
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
                    }
                }
                // Leave a short WAL behind for the next open.
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}
