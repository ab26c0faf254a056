//! The blob store of the claim-check pattern (docs/adr/0013): payloads too large to travel
//! through queues and events (big job parameters, job results such as the order-report
//! export) are stored here once, content-addressed by SHA-256, and only a reference
//! (`{"$blob": "sha256:..", "size": N}`) travels.
//!
//! - [`BlobStore`] is the port: streaming put and get, stat, delete, list. [`MemBlobStore`] is
//!   its in-memory twin, [`LocalBlobStore`] the default adapter (a directory; shared between
//!   processes when the directory is), [`S3BlobStore`] any S3-compatible object store. All
//!   run [`conformance`].
//! - [`BlobRefs`] records who references a blob (the blob, the referrer's kind and id, when):
//!   [`MemBlobRefs`], [`SqliteBlobRefs`] (the event log's file, through its writer) and
//!   [`PgBlobRefs`] (migration 7).
//! - [`collect_garbage`] deletes blobs that nothing references once they are older than the
//!   grace period, after releasing the references of bulk jobs that no longer need them.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::StoreError;

pub mod conformance;
mod gc;
mod local;
mod refs;
mod s3;

pub use gc::{collect_garbage, GcConfig, GcReport, DEFAULT_GC_GRACE_MS};
pub use local::LocalBlobStore;
pub use refs::{
    BlobRef, BlobRefs, MemBlobRefs, PgBlobRefs, SqliteBlobRefs, BLOB_REFS_MAX_PAGE, PG_SCHEMA,
};
pub use s3::{S3BlobStore, S3Config, S3_REQUEST_TIMEOUT};

/// Bytes read from a source or a file per step of a put or a get: what one blob transfer holds
/// in memory at a time.
pub const BLOB_CHUNK_BYTES: usize = 256 * 1024;
/// Default largest blob a store accepts (a put of more fails with [`BlobError::TooLarge`]).
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 1024 * 1024 * 1024;
/// Most blobs one [`BlobStore::list`] call returns.
pub const BLOB_LIST_MAX: usize = 1000;
/// The prefix of every blob id's text form.
pub const BLOB_ID_PREFIX: &str = "sha256:";
/// The key of a claim-check reference in JSON: `{"$blob": "sha256:..", "size": N}`.
pub const BLOB_REF_KEY: &str = "$blob";

/// Referrer kinds of [`BlobRef`]s. A bulk job's parameters (and the payloads of its items)
/// stored as blobs: released once the job has its result, is cancelled, or is gone.
pub const REF_BATCH_PARAMS: &str = "batch-params";
/// A bulk job's result: referenced until the job record is gone or an admin deletes the blob.
pub const REF_BATCH_RESULT: &str = "batch-result";
/// A part of a bulk job's result written by one item (referrer id `{batch}/{part}`), read by
/// the fan-in: released by the fan-in once the result is recorded, like parameters otherwise.
pub const REF_BATCH_PART: &str = "batch-part";
/// Referrer kind of an event's attachment: the id is `{stream}/{event id}`. Events are never
/// rewritten, so the garbage collector never releases these.
pub const REF_EVENT: &str = "event";

/// A blob's id: the SHA-256 of its content, written `sha256:<64 lowercase hex digits>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(String);

impl BlobId {
    /// `sha256:<hex>` (or the bare 64 hex digits); anything else is `Invalid`.
    pub fn parse(s: &str) -> Result<BlobId, BlobError> {
        let hex = s.strip_prefix(BLOB_ID_PREFIX).unwrap_or(s);
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(BlobError::Invalid(format!(
                "a blob id is {BLOB_ID_PREFIX} followed by 64 lowercase hex digits, got {s:?}"
            )));
        }
        Ok(BlobId(hex.to_owned()))
    }

    fn from_digest(digest: &[u8]) -> BlobId {
        BlobId(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId::from_digest(&Sha256::digest(bytes))
    }

    /// The 64 hex digits, without the prefix.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BlobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{BLOB_ID_PREFIX}{}", self.0)
    }
}

/// What a store knows of one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    pub size_bytes: u64,
    /// When it was stored, or last stored again (a put of content already there renews it, so
    /// that a new referrer gets the whole grace period).
    pub created_at_ms: i64,
}

impl BlobInfo {
    /// The claim-check reference that travels instead of the content.
    pub fn reference(&self) -> Value {
        json!({ BLOB_REF_KEY: self.id.to_string(), "size": self.size_bytes })
    }
}

/// The blob a claim-check reference names, and its size: `None` when `v` is no reference.
pub fn reference_of(v: &Value) -> Option<(BlobId, u64)> {
    let id = BlobId::parse(v.get(BLOB_REF_KEY)?.as_str()?).ok()?;
    Some((id, v.get("size")?.as_u64()?))
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// No blob with this id. (404 `blob_not_found`)
    #[error("no blob {0}")]
    NotFound(BlobId),
    /// The content is over the store's limit. (413 `blob_too_large`)
    #[error("a blob is at most {limit_bytes} bytes")]
    TooLarge { limit_bytes: u64 },
    /// A malformed id or reference. (400 `invalid_blob`)
    #[error("{0}")]
    Invalid(String),
    /// The stored bytes do not hash to the id: never served. (500 `internal`)
    #[error("blob corrupt: {0}")]
    Corrupt(String),
    /// The store (disk, database) failed; nothing was acknowledged. (503 `blob_store_unavailable`)
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for BlobError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(m) => BlobError::Corrupt(m),
            StoreError::Invalid(m) => BlobError::Invalid(m),
            other => BlobError::Unavailable(other.to_string()),
        }
    }
}

impl From<io::Error> for BlobError {
    fn from(e: io::Error) -> Self {
        // A read through a [`BlobReader`] reports corruption as `InvalidData`.
        if e.kind() == io::ErrorKind::InvalidData {
            BlobError::Corrupt(e.to_string())
        } else {
            BlobError::Unavailable(e.to_string())
        }
    }
}

/// A blob's content as it is read: hashed on the way, so that the read that reaches the end
/// fails with `InvalidData` when the bytes are not those the id names (a torn or altered
/// file is a loud error, never served as good). Reads only as many bytes as the blob has.
pub struct BlobReader {
    info: BlobInfo,
    inner: Pin<Box<dyn AsyncRead + Send>>,
    hasher: Sha256,
    read_bytes: u64,
    verified: bool,
}

impl BlobReader {
    pub fn new(info: BlobInfo, inner: Pin<Box<dyn AsyncRead + Send>>) -> Self {
        Self {
            info,
            inner,
            hasher: Sha256::new(),
            read_bytes: 0,
            verified: false,
        }
    }

    pub fn info(&self) -> &BlobInfo {
        &self.info
    }

    /// The whole content, verified. For blobs known to be small (at most `limit_bytes`).
    pub async fn read_to_vec(mut self, limit_bytes: u64) -> Result<Vec<u8>, BlobError> {
        if self.info.size_bytes > limit_bytes {
            return Err(BlobError::TooLarge { limit_bytes });
        }
        let mut out = Vec::with_capacity(self.info.size_bytes as usize);
        self.read_to_end(&mut out).await?;
        Ok(out)
    }

    fn corrupt(&self, why: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("blob {} is corrupt: {why}", self.info.id),
        )
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.verified || buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                this.read_bytes += fresh.len() as u64;
                if this.read_bytes > this.info.size_bytes {
                    return Poll::Ready(Err(this.corrupt("longer than its recorded size")));
                }
                this.hasher.update(fresh);
                if fresh.is_empty() {
                    // End of the stored bytes: they must be all of them, with the right hash.
                    if this.read_bytes != this.info.size_bytes {
                        return Poll::Ready(Err(this.corrupt("shorter than its recorded size")));
                    }
                    let digest = std::mem::take(&mut this.hasher).finalize();
                    if BlobId::from_digest(&digest) != this.info.id {
                        return Poll::Ready(Err(this.corrupt("content does not match its hash")));
                    }
                    this.verified = true;
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

/// A store of immutable blobs addressed by the SHA-256 of their content: the same content is
/// stored once, whoever puts it and however often.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores everything `data` yields and answers once it is durable (a crash after the
    /// answer loses nothing). Content already there is not stored twice; its `created_at_ms`
    /// is renewed. More than [`Self::max_blob_bytes`] is refused (`TooLarge`), storing
    /// nothing.
    async fn put(&self, data: &mut (dyn AsyncRead + Unpin + Send)) -> Result<BlobInfo, BlobError>;
    /// The content, streamed and verified against the id as it is read.
    async fn get(&self, id: &BlobId) -> Result<BlobReader, BlobError>;
    async fn stat(&self, id: &BlobId) -> Result<Option<BlobInfo>, BlobError>;
    /// Removes the blob; false when there was none.
    async fn delete(&self, id: &BlobId) -> Result<bool, BlobError>;
    /// Blobs in id order, after `after`, at most `limit` (capped at [`BLOB_LIST_MAX`]).
    async fn list(&self, after: Option<&BlobId>, limit: usize) -> Result<Vec<BlobInfo>, BlobError>;
    /// The largest blob [`Self::put`] accepts, in bytes.
    fn max_blob_bytes(&self) -> u64;
}

/// Stores `bytes` (a convenience over [`BlobStore::put`]).
pub async fn put_bytes(store: &dyn BlobStore, bytes: &[u8]) -> Result<BlobInfo, BlobError> {
    let mut reader = bytes;
    store.put(&mut reader).await
}

/// Copies `data` to `sink` in [`BLOB_CHUNK_BYTES`] steps, hashing it and refusing more than
/// `limit_bytes`: the one loop every adapter puts with. Answers the id and the size.
pub(crate) async fn hash_copy(
    data: &mut (dyn AsyncRead + Unpin + Send),
    sink: &mut (dyn AsyncWrite + Unpin + Send),
    limit_bytes: u64,
) -> Result<(BlobId, u64), BlobError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; BLOB_CHUNK_BYTES];
    loop {
        let n = data.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit_bytes {
            return Err(BlobError::TooLarge { limit_bytes });
        }
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n]).await?;
    }
    sink.flush().await?;
    Ok((BlobId::from_digest(&hasher.finalize()), size))
}

/// The in-memory twin's content: bytes and `created_at_ms` by id.
type MemBlobs = BTreeMap<BlobId, (Arc<[u8]>, i64)>;

/// The in-memory twin of [`LocalBlobStore`], for tests.
pub struct MemBlobStore {
    blobs: Mutex<MemBlobs>,
    max_blob_bytes: u64,
}

impl MemBlobStore {
    pub fn new(max_blob_bytes: u64) -> Self {
        Self {
            blobs: Mutex::new(BTreeMap::new()),
            max_blob_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemBlobs> {
        self.blobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Flips one byte of a stored blob, as a failing disk would (for corruption tests).
    pub fn corrupt(&self, id: &BlobId) {
        if let Some((bytes, at)) = self.lock().get_mut(id) {
            let mut v = bytes.to_vec();
            if let Some(b) = v.first_mut() {
                *b ^= 0xff;
            }
            *bytes = v.into();
            *at = crate::now_ms();
        }
    }
}

impl Default for MemBlobStore {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BLOB_BYTES)
    }
}

fn info_of(id: &BlobId, entry: &(Arc<[u8]>, i64)) -> BlobInfo {
    BlobInfo {
        id: id.clone(),
        size_bytes: entry.0.len() as u64,
        created_at_ms: entry.1,
    }
}

#[async_trait]
impl BlobStore for MemBlobStore {
    async fn put(&self, data: &mut (dyn AsyncRead + Unpin + Send)) -> Result<BlobInfo, BlobError> {
        let mut content = Vec::new();
        let (id, _) = hash_copy(data, &mut content, self.max_blob_bytes).await?;
        let mut blobs = self.lock();
        let entry = blobs
            .entry(id.clone())
            .or_insert_with(|| (content.into(), 0));
        entry.1 = crate::now_ms();
        Ok(info_of(&id, entry))
    }

    async fn get(&self, id: &BlobId) -> Result<BlobReader, BlobError> {
        let entry = self
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| BlobError::NotFound(id.clone()))?;
        let mut info = info_of(id, &entry);
        // The size recorded at put time: a corrupted entry keeps its length, so the hash
        // check is what catches it.
        info.size_bytes = entry.0.len() as u64;
        Ok(BlobReader::new(info, Box::pin(io::Cursor::new(entry.0))))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobInfo>, BlobError> {
        Ok(self.lock().get(id).map(|e| info_of(id, e)))
    }

    async fn delete(&self, id: &BlobId) -> Result<bool, BlobError> {
        Ok(self.lock().remove(id).is_some())
    }

    async fn list(&self, after: Option<&BlobId>, limit: usize) -> Result<Vec<BlobInfo>, BlobError> {
        let blobs = self.lock();
        let range = match after {
            Some(a) => {
                blobs.range::<BlobId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => blobs.range::<BlobId, _>(..),
        };
        Ok(range
            .take(limit.min(BLOB_LIST_MAX))
            .map(|(id, e)| info_of(id, e))
            .collect())
    }

    fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }
}
