//! Garbage collection of blobs. A pass has two steps:
//!
//! 1. Release what bulk jobs no longer need: references recorded more than the grace period
//!    ago whose job is gone, or (for parameters and parts) whose job has its result or was
//!    cancelled. Checked against the job store, so a crash between a job finishing and its
//!    references going away only delays their release to the next pass.
//! 2. Sweep: every blob older than the grace period with no reference is deleted. A blob just
//!    put and not yet referenced is young, so it survives until its referrer records it; a put
//!    of content already stored renews its age for the same reason. Just before deleting, the
//!    blob's age and references are read again, which narrows (but, across processes sharing
//!    the store, cannot close) the window in which a new put of the same content is lost;
//!    the grace period, far longer than any put-to-reference gap, is what covers it.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    BlobError, BlobRef, BlobRefs, BlobStore, BLOB_LIST_MAX, BLOB_REFS_MAX_PAGE, REF_BATCH_PARAMS,
    REF_BATCH_PART, REF_BATCH_RESULT,
};
use crate::{BatchState, JobQueue};

/// Default grace period: a blob nothing references survives this long after it was stored.
pub const DEFAULT_GC_GRACE_MS: i64 = 24 * 3600 * 1000;
/// Most batches one pass looks up while releasing references (each lookup is a query); the
/// rest wait for the next pass.
pub const GC_MAX_BATCH_LOOKUPS: usize = 10_000;

/// How a pass decides.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Blobs stored (and references recorded) more recently than this are left alone.
    pub grace_ms: i64,
}

impl Default for GcConfig {
    fn default() -> Self {
        Self {
            grace_ms: DEFAULT_GC_GRACE_MS,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// References released because their bulk job no longer needs them.
    pub released_refs: u64,
    pub scanned_blobs: u64,
    pub deleted_blobs: u64,
    pub deleted_bytes: u64,
    pub kept_referenced: u64,
    pub kept_young: u64,
}

/// One pass at `now_ms`. `jobs`, when given, is the job store whose bulk jobs' references
/// are released once unneeded.
pub async fn collect_garbage(
    blobs: &dyn BlobStore,
    refs: &dyn BlobRefs,
    jobs: Option<&dyn JobQueue>,
    config: &GcConfig,
    now_ms: i64,
) -> Result<GcReport, BlobError> {
    let old_before_ms = now_ms - config.grace_ms;
    let mut report = GcReport::default();
    if let Some(jobs) = jobs {
        report.released_refs = release_unneeded(refs, jobs, old_before_ms).await?;
    }
    let mut after = None;
    loop {
        let page = blobs.list(after.as_ref(), BLOB_LIST_MAX).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        for blob in page {
            report.scanned_blobs += 1;
            if blob.created_at_ms > old_before_ms {
                report.kept_young += 1;
                continue;
            }
            if !refs.of_blob(&blob.id, 1).await?.is_empty() {
                report.kept_referenced += 1;
                continue;
            }
            // Looked at again right before deleting: put again, or referenced, meanwhile.
            match blobs.stat(&blob.id).await? {
                Some(now) if now.created_at_ms > old_before_ms => {
                    report.kept_young += 1;
                    continue;
                }
                None => continue,
                Some(_) => {}
            }
            if !refs.of_blob(&blob.id, 1).await?.is_empty() {
                report.kept_referenced += 1;
                continue;
            }
            if blobs.delete(&blob.id).await? {
                report.deleted_blobs += 1;
                report.deleted_bytes += blob.size_bytes;
                tracing::info!(blob = %blob.id, size_bytes = blob.size_bytes, "blob collected");
            }
        }
    }
    Ok(report)
}

/// The batch a bulk job's reference names: `{batch}` or `{batch}/{part}`.
fn batch_of(r: &BlobRef) -> &str {
    r.referrer_id
        .split_once('/')
        .map_or(r.referrer_id.as_str(), |(b, _)| b)
}

async fn release_unneeded(
    refs: &dyn BlobRefs,
    jobs: &dyn JobQueue,
    old_before_ms: i64,
) -> Result<u64, BlobError> {
    // What each batch allows: (gone, finished with a result or cancelled).
    let mut seen: HashMap<String, (bool, bool)> = HashMap::new();
    let mut released = 0;
    let mut after: Option<BlobRef> = None;
    loop {
        let page = refs.list(after.as_ref(), BLOB_REFS_MAX_PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.clone());
        for r in page {
            let kind = r.referrer_kind.as_str();
            if r.created_at_ms > old_before_ms
                || ![REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT].contains(&kind)
            {
                continue;
            }
            let batch = batch_of(&r).to_owned();
            let status = match seen.get(&batch) {
                Some(s) => *s,
                None if seen.len() >= GC_MAX_BATCH_LOOKUPS => continue,
                None => {
                    let s = match jobs.get_batch(&batch).await? {
                        None => (true, true),
                        Some(b) => (
                            false,
                            b.result.is_some() || b.state == BatchState::Cancelled,
                        ),
                    };
                    seen.insert(batch, s);
                    s
                }
            };
            let (gone, finished) = status;
            let release = gone || (kind != REF_BATCH_RESULT && finished);
            if release {
                released += refs.release(&r.referrer_kind, &r.referrer_id).await?;
            }
        }
    }
    Ok(released)
}
