//! The default blob store: a directory. A blob lives at `sha256/<first 2 hex>/<64 hex>`;
//! a put streams into `tmp/<uuid>.part`, fsyncs it, renames it into place and fsyncs the
//! directory, so a blob is either wholly there (and durable) or absent. Its modification time
//! is its `created_at_ms`. Several processes may share the directory (a network file system):
//! puts of the same content race only to rename identical bytes onto each other.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncRead;

use super::{hash_copy, BlobError, BlobId, BlobInfo, BlobReader, BlobStore, BLOB_LIST_MAX};

/// Age after which a part file in `tmp/` is a crashed put's leftover, removed at open.
pub const STALE_PART_MS: i64 = 3600 * 1000;

pub struct LocalBlobStore {
    root: PathBuf,
    max_blob_bytes: u64,
}

fn io_err(e: std::io::Error) -> BlobError {
    BlobError::Unavailable(e.to_string())
}

/// fsyncs a directory, so that a rename or removal inside it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn modified_ms(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Unavailable(e.to_string()))?
        .map_err(io_err)
}

impl LocalBlobStore {
    /// The store in `root` (created if missing), refusing blobs over `max_blob_bytes`. Part
    /// files a crash left behind are removed.
    pub fn open(root: impl Into<PathBuf>, max_blob_bytes: u64) -> Result<Self, BlobError> {
        let root = root.into();
        std::fs::create_dir_all(root.join("sha256")).map_err(io_err)?;
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(io_err)?;
        // Only old parts: another process sharing the directory may be writing a young one.
        let stale_before = crate::now_ms() - STALE_PART_MS;
        for entry in std::fs::read_dir(&tmp).map_err(io_err)?.flatten() {
            let old = entry
                .metadata()
                .is_ok_and(|m| modified_ms(&m) < stale_before);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            root,
            max_blob_bytes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `id` is (or would be) stored.
    pub fn path_of(&self, id: &BlobId) -> PathBuf {
        self.root.join("sha256").join(&id.hex()[..2]).join(id.hex())
    }
}

#[async_trait]
impl BlobStore for LocalBlobStore {
    async fn put(&self, data: &mut (dyn AsyncRead + Unpin + Send)) -> Result<BlobInfo, BlobError> {
        let part = self
            .root
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::now_v7().simple()));
        let mut file = tokio::fs::File::create(&part).await.map_err(io_err)?;
        let copied = hash_copy(data, &mut file, self.max_blob_bytes).await;
        let (id, size) = match copied {
            Ok(v) => v,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(e);
            }
        };
        // Durable before the reference can be acknowledged: the bytes, then the name.
        if let Err(e) = file.sync_all().await {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(io_err(e));
        }
        drop(file);
        let target = self.path_of(&id);
        let created_at_ms = blocking(move || {
            let shard = target.parent().expect("a blob path has a shard directory");
            if target.exists() {
                // Stored already: keep the first copy, renew its time for the grace period.
                std::fs::remove_file(&part)?;
                std::fs::File::options()
                    .write(true)
                    .open(&target)?
                    .set_modified(std::time::SystemTime::now())?;
            } else {
                if !shard.exists() {
                    std::fs::create_dir_all(shard)?;
                    sync_dir(shard.parent().expect("the sha256 directory"))?;
                }
                std::fs::rename(&part, &target)?;
                sync_dir(shard)?;
            }
            Ok(modified_ms(&std::fs::metadata(&target)?))
        })
        .await?;
        Ok(BlobInfo {
            id,
            size_bytes: size,
            created_at_ms,
        })
    }

    async fn get(&self, id: &BlobId) -> Result<BlobReader, BlobError> {
        let file = match tokio::fs::File::open(self.path_of(id)).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(id.clone()))
            }
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().await.map_err(io_err)?;
        let info = BlobInfo {
            id: id.clone(),
            size_bytes: meta.len(),
            created_at_ms: modified_ms(&meta),
        };
        Ok(BlobReader::new(info, Box::pin(file)))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobInfo>, BlobError> {
        match tokio::fs::metadata(self.path_of(id)).await {
            Ok(meta) => Ok(Some(BlobInfo {
                id: id.clone(),
                size_bytes: meta.len(),
                created_at_ms: modified_ms(&meta),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(e)),
        }
    }

    async fn delete(&self, id: &BlobId) -> Result<bool, BlobError> {
        let path = self.path_of(id);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => {
                sync_dir(path.parent().expect("a blob path has a shard directory"))?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await
    }

    async fn list(&self, after: Option<&BlobId>, limit: usize) -> Result<Vec<BlobInfo>, BlobError> {
        let limit = limit.min(BLOB_LIST_MAX);
        let root = self.root.join("sha256");
        let after = after.cloned();
        blocking(move || {
            let mut shards: Vec<String> = std::fs::read_dir(&root)?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.len() == 2)
                .collect();
            shards.sort();
            let mut out = Vec::new();
            for shard in shards {
                if after
                    .as_ref()
                    .is_some_and(|a| shard.as_str() < &a.hex()[..2])
                {
                    continue;
                }
                let mut ids: Vec<BlobId> = std::fs::read_dir(root.join(&shard))?
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter_map(|n| BlobId::parse(&n).ok())
                    .filter(|id| after.as_ref().is_none_or(|a| id > a))
                    .collect();
                ids.sort();
                for id in ids {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    // Deleted since the directory was read: not listed.
                    if let Ok(meta) = std::fs::metadata(root.join(&shard).join(id.hex())) {
                        out.push(BlobInfo {
                            size_bytes: meta.len(),
                            created_at_ms: modified_ms(&meta),
                            id,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    fn max_blob_bytes(&self) -> u64 {
        self.max_blob_bytes
    }
}
