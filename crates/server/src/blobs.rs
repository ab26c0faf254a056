//! The claim check's configuration in `ficus serve`: where blobs live, the size over which
//! job payloads travel by reference, and the garbage collector's grace period and interval.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ficus_runtime::claim_check::{ClaimCheck, ClaimCheckConfig};
use ficus_store::blobs::{BlobRefs, GcConfig, LocalBlobStore};

/// Where blobs are stored and how they are checked in and collected.
#[derive(Debug, Clone)]
pub struct BlobsConfig {
    /// The blob directory; `<data_dir>/blobs` when `None`. Processes on several machines
    /// (PostgreSQL) see each other's blobs only when they share it.
    pub dir: Option<PathBuf>,
    /// Largest blob stored, in bytes.
    pub max_blob_bytes: u64,
    /// Payloads, grace period, collector interval.
    pub claim_check: ClaimCheckConfig,
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_blob_bytes: ficus_store::blobs::DEFAULT_MAX_BLOB_BYTES,
            claim_check: ClaimCheckConfig::default(),
        }
    }
}

impl BlobsConfig {
    /// Opens the blob directory; `refs` is the reference table of the process's backend.
    pub fn open(&self, data_dir: &Path, refs: Arc<dyn BlobRefs>) -> anyhow::Result<ClaimCheck> {
        let dir = self.dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
        let blobs = LocalBlobStore::open(&dir, self.max_blob_bytes)
            .with_context(|| format!("opening the blob directory {}", dir.display()))?;
        Ok(ClaimCheck::new(
            Arc::new(blobs),
            refs,
            self.claim_check.clone(),
        ))
    }
}

/// The `ficus serve` flags of the claim check.
#[derive(Debug, Clone, clap::Args)]
pub struct BlobArgs {
    /// The blob store's directory (default `<data-dir>/blobs`); share it between processes
    /// on several machines so that a result written by one worker is readable by all.
    #[arg(long, env = "FICUS_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,
    /// Job parameters and payloads whose JSON text is longer than this travel by reference
    /// through the blob store, in bytes.
    #[arg(long, env = "FICUS_CLAIM_CHECK_BYTES",
          default_value_t = ficus_runtime::claim_check::DEFAULT_CLAIM_CHECK_BYTES)]
    pub claim_check_bytes: usize,
    /// Largest blob stored, in bytes.
    #[arg(long, env = "FICUS_MAX_BLOB_BYTES",
          default_value_t = ficus_store::blobs::DEFAULT_MAX_BLOB_BYTES)]
    pub max_blob_bytes: u64,
    /// A blob that nothing references is deleted once older than this, in seconds.
    #[arg(long, env = "FICUS_BLOB_GC_GRACE_SECS", default_value_t = 24 * 3600)]
    pub blob_gc_grace_secs: u64,
    /// Time between two garbage-collection passes, in seconds.
    #[arg(long, env = "FICUS_BLOB_GC_INTERVAL_SECS", default_value_t = 3600)]
    pub blob_gc_interval_secs: u64,
}

impl BlobArgs {
    pub fn config(&self) -> BlobsConfig {
        BlobsConfig {
            dir: self.blob_dir.clone(),
            max_blob_bytes: self.max_blob_bytes.max(1),
            claim_check: ClaimCheckConfig {
                threshold_bytes: self.claim_check_bytes,
                gc: GcConfig {
                    grace_ms: (self.blob_gc_grace_secs.min(i64::MAX as u64 / 1000) * 1000) as i64,
                },
                gc_interval: Duration::from_secs(self.blob_gc_interval_secs.max(1)),
            },
        }
    }
}
