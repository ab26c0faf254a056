//! The claim-check pattern (docs/adr/0013): a payload over a configured size is stored once
//! in the blob store and a reference `{"$blob": "sha256:..", "size": N}` travels through the
//! queue instead; the worker side resolves it before the handler sees the job.
//!
//! Order of durability, so a crash at any instant loses nothing acknowledged: the blob is
//! fsynced before its reference is recorded, and the reference is recorded before the
//! payload naming it is enqueued (or the result naming it is set). A crash in between leaves
//! at worst an unreferenced blob (collected after the grace period) or a reference whose bulk
//! job never came to be (released by the collector).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ficus_store::blobs::{
    collect_garbage, reference_of, BlobError, BlobInfo, BlobRef, BlobRefs, BlobStore, GcConfig,
    GcReport,
};
use ficus_store::{Job, JobQueue};
use serde_json::Value;
use tokio::io::AsyncRead;
use tokio::task::JoinHandle;

use crate::{JobError, JobHandler, Shutdown};

/// Default size over which a job payload travels by reference, in bytes of its JSON text.
pub const DEFAULT_CLAIM_CHECK_BYTES: usize = 256 * 1024;
/// Largest claim-checked payload a worker resolves into memory (it becomes a JSON value the
/// handler holds whole anyway); a larger reference is a permanent failure of its job.
pub const MAX_RESOLVED_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// Default time between two garbage-collection passes of `ficus serve`.
pub const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(3600);

/// How payloads are claim-checked and blobs collected.
#[derive(Debug, Clone)]
pub struct ClaimCheckConfig {
    /// A payload whose JSON text is longer than this travels by reference.
    pub threshold_bytes: usize,
    /// The collector's grace period.
    pub gc: GcConfig,
    /// Time between two collector passes.
    pub gc_interval: Duration,
}

impl Default for ClaimCheckConfig {
    fn default() -> Self {
        Self {
            threshold_bytes: DEFAULT_CLAIM_CHECK_BYTES,
            gc: GcConfig::default(),
            gc_interval: DEFAULT_GC_INTERVAL,
        }
    }
}

/// The blob store with its reference table: what checks payloads in and resolves them.
#[derive(Clone)]
pub struct ClaimCheck {
    blobs: Arc<dyn BlobStore>,
    refs: Arc<dyn BlobRefs>,
    config: ClaimCheckConfig,
}

impl ClaimCheck {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        refs: Arc<dyn BlobRefs>,
        config: ClaimCheckConfig,
    ) -> Self {
        Self {
            blobs,
            refs,
            config,
        }
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    pub fn refs(&self) -> &Arc<dyn BlobRefs> {
        &self.refs
    }

    pub fn config(&self) -> &ClaimCheckConfig {
        &self.config
    }

    /// Stores what `data` yields and records that `referrer_kind`/`referrer_id` references
    /// it: both durable when this answers.
    pub async fn put_referenced(
        &self,
        data: &mut (dyn AsyncRead + Unpin + Send),
        referrer_kind: &str,
        referrer_id: &str,
    ) -> Result<BlobInfo, BlobError> {
        let info = self.blobs.put(data).await?;
        self.refs
            .add(&BlobRef::new(
                info.id.clone(),
                referrer_kind,
                referrer_id,
                ficus_store::now_ms(),
            ))
            .await?;
        Ok(info)
    }

    /// `value` itself when its JSON text is at most the threshold; otherwise the reference
    /// to it, stored and referenced by `referrer_kind`/`referrer_id`.
    pub async fn check_in(
        &self,
        value: Value,
        referrer_kind: &str,
        referrer_id: &str,
    ) -> Result<Value, BlobError> {
        let text = serde_json::to_vec(&value).expect("a JSON value serializes");
        if text.len() <= self.config.threshold_bytes {
            return Ok(value);
        }
        let mut reader = text.as_slice();
        let info = self
            .put_referenced(&mut reader, referrer_kind, referrer_id)
            .await?;
        Ok(info.reference())
    }

    /// The JSON value a reference names (read and verified), or `value` itself when it is no
    /// reference.
    pub async fn resolve(&self, value: Value) -> Result<Value, BlobError> {
        let Some((id, size)) = reference_of(&value) else {
            return Ok(value);
        };
        if size > MAX_RESOLVED_PAYLOAD_BYTES {
            return Err(BlobError::TooLarge {
                limit_bytes: MAX_RESOLVED_PAYLOAD_BYTES,
            });
        }
        let bytes = self
            .blobs
            .get(&id)
            .await?
            .read_to_vec(MAX_RESOLVED_PAYLOAD_BYTES)
            .await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| BlobError::Corrupt(format!("payload blob {id} is not JSON: {e}")))
    }

    /// One garbage-collection pass now, with `grace_ms` instead of the configured grace
    /// period when given (an admin's explicit pass).
    pub async fn collect(
        &self,
        jobs: Option<&dyn JobQueue>,
        grace_ms: Option<i64>,
    ) -> Result<GcReport, BlobError> {
        let config = GcConfig {
            grace_ms: grace_ms.unwrap_or(self.config.gc.grace_ms),
        };
        collect_garbage(
            self.blobs.as_ref(),
            self.refs.as_ref(),
            jobs,
            &config,
            ficus_store::now_ms(),
        )
        .await
    }
}

/// Runs the collector every `gc_interval` until `shutdown`. A failed pass is logged and the
/// next one tries again.
pub fn spawn_blob_gc(
    claims: ClaimCheck,
    jobs: Arc<dyn JobQueue>,
    shutdown: Shutdown,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(claims.config.gc_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tick.tick() => {}
            }
            match claims.collect(Some(jobs.as_ref()), None).await {
                Ok(r) => tracing::info!(?r, "blob garbage collection pass"),
                Err(e) => {
                    tracing::warn!(error = %e, "blob garbage collection failed; next pass retries")
                }
            }
        }
    })
}

/// A [`JobHandler`] that hands `inner` every job with its claim-checked payload resolved.
pub struct ClaimCheckHandler {
    pub inner: Arc<dyn JobHandler>,
    pub claims: ClaimCheck,
}

#[async_trait]
impl JobHandler for ClaimCheckHandler {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        if reference_of(&job.payload).is_none() {
            return self.inner.handle(job).await;
        }
        let payload = match self.claims.resolve(job.payload.clone()).await {
            Ok(p) => p,
            // The disk or the database is down: the blob may be readable later.
            Err(BlobError::Unavailable(e)) => return Err(JobError::Retry(e)),
            // Missing, corrupt or too large: it will not get better.
            Err(e) => return Err(JobError::Permanent(format!("claim-checked payload: {e}"))),
        };
        let mut resolved = job.clone();
        resolved.payload = merge_added(payload, &job.payload);
        self.inner.handle(&resolved).await
    }
}

/// `resolved` with the fields the queue added beside the reference (a fan-in's `batch_id`,
/// `total`, `done`, `dead`), which the stored payload does not have.
fn merge_added(resolved: Value, reference: &Value) -> Value {
    let (Value::Object(mut out), Value::Object(refd)) = (resolved.clone(), reference) else {
        return resolved;
    };
    for (k, v) in refd {
        if k != ficus_store::blobs::BLOB_REF_KEY && k != "size" && !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}
