//! The claim check's configuration in `ficus serve`: where blobs live, the size over which
//! job payloads travel by reference, and the garbage collector's grace period and interval.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ficus_runtime::claim_check::{ClaimCheck, ClaimCheckConfig};
use ficus_store::blobs::{BlobRefs, BlobStore, GcConfig, LocalBlobStore, S3BlobStore, S3Config};

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
    /// An S3-compatible object store instead of the directory (which then only spools puts).
    pub s3: Option<S3Target>,
}

/// An S3-compatible bucket to keep blobs in.
#[derive(Clone)]
pub struct S3Target {
    /// `http://host:port` (this build speaks plain HTTP to the object store).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Prepended to every key.
    pub prefix: String,
}

impl std::fmt::Debug for S3Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("S3Target")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

impl Default for BlobsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_blob_bytes: ficus_store::blobs::DEFAULT_MAX_BLOB_BYTES,
            claim_check: ClaimCheckConfig::default(),
            s3: None,
        }
    }
}

impl BlobsConfig {
    /// Opens the blob directory; `refs` is the reference table of the process's backend.
    pub fn open(&self, data_dir: &Path, refs: Arc<dyn BlobRefs>) -> anyhow::Result<ClaimCheck> {
        let dir = self.dir.clone().unwrap_or_else(|| data_dir.join("blobs"));
        let blobs: Arc<dyn BlobStore> = match &self.s3 {
            None => Arc::new(
                LocalBlobStore::open(&dir, self.max_blob_bytes)
                    .with_context(|| format!("opening the blob directory {}", dir.display()))?,
            ),
            Some(t) => Arc::new(
                S3BlobStore::new(S3Config {
                    endpoint: t.endpoint.trim_end_matches('/').to_owned(),
                    bucket: t.bucket.clone(),
                    region: t.region.clone(),
                    access_key_id: t.access_key_id.clone(),
                    secret_access_key: t.secret_access_key.clone(),
                    prefix: t.prefix.clone(),
                    spool_dir: dir.join("spool"),
                    max_blob_bytes: self.max_blob_bytes,
                })
                .with_context(|| format!("configuring the S3 blob store {}", t.endpoint))?,
            ),
        };
        Ok(ClaimCheck::new(blobs, refs, self.claim_check.clone()))
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
    /// Keep blobs in this S3-compatible endpoint (`http://host:port`) instead of the blob
    /// directory, which then only spools uploads. Needs --blob-s3-bucket.
    #[arg(long, env = "FICUS_BLOB_S3_URL")]
    pub blob_s3_url: Option<String>,
    /// The bucket (it must exist).
    #[arg(long, env = "FICUS_BLOB_S3_BUCKET")]
    pub blob_s3_bucket: Option<String>,
    #[arg(long, env = "FICUS_BLOB_S3_REGION", default_value = "us-east-1")]
    pub blob_s3_region: String,
    /// Prepended to every object key.
    #[arg(long, env = "FICUS_BLOB_S3_PREFIX", default_value = "ficus/")]
    pub blob_s3_prefix: String,
    /// Credentials come from the environment only (never a flag, which `ps` would show).
    #[arg(skip = std::env::var("FICUS_BLOB_S3_ACCESS_KEY_ID").unwrap_or_default())]
    pub blob_s3_access_key_id: String,
    #[arg(skip = std::env::var("FICUS_BLOB_S3_SECRET_ACCESS_KEY").unwrap_or_default())]
    pub blob_s3_secret_access_key: String,
}

impl BlobArgs {
    pub fn config(&self) -> anyhow::Result<BlobsConfig> {
        let s3 = match (&self.blob_s3_url, &self.blob_s3_bucket) {
            (None, _) => None,
            (Some(_), None) => anyhow::bail!("--blob-s3-url needs --blob-s3-bucket"),
            (Some(url), Some(bucket)) => Some(S3Target {
                endpoint: url.clone(),
                bucket: bucket.clone(),
                region: self.blob_s3_region.clone(),
                access_key_id: self.blob_s3_access_key_id.clone(),
                secret_access_key: self.blob_s3_secret_access_key.clone(),
                prefix: self.blob_s3_prefix.clone(),
            }),
        };
        Ok(BlobsConfig {
            s3,
            dir: self.blob_dir.clone(),
            max_blob_bytes: self.max_blob_bytes.max(1),
            claim_check: ClaimCheckConfig {
                threshold_bytes: self.claim_check_bytes,
                gc: GcConfig {
                    grace_ms: (self.blob_gc_grace_secs.min(i64::MAX as u64 / 1000) * 1000) as i64,
                },
                gc_interval: Duration::from_secs(self.blob_gc_interval_secs.max(1)),
            },
        })
    }
}
