//! What every [`BlobStore`] and [`BlobRefs`] adapter must do; each adapter's test calls these
//! on a fresh instance.

use tokio::io::AsyncReadExt;

use super::{put_bytes, BlobError, BlobId, BlobRef, BlobRefs, BlobStore, BLOB_CHUNK_BYTES};

/// Bytes that span several chunks and are not a repeating pattern.
pub fn sample_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9u32 ^ seed as u32;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn read_all(store: &dyn BlobStore, id: &BlobId) -> Result<Vec<u8>, BlobError> {
    let mut r = store.get(id).await?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// Put, get, stat, dedupe, list, delete, and the size limit (the store must accept at least
/// three chunks and refuse `max_blob_bytes() + 1`).
pub async fn put_get_dedupe_list_delete(store: &dyn BlobStore) {
    let big = sample_bytes(3 * BLOB_CHUNK_BYTES + 17, 1);
    let info = put_bytes(store, &big).await.unwrap();
    assert_eq!(info.id, BlobId::of(&big), "content-addressed by SHA-256");
    assert_eq!(info.size_bytes, big.len() as u64);
    assert_eq!(read_all(store, &info.id).await.unwrap(), big);
    let stat = store.stat(&info.id).await.unwrap().expect("stat");
    assert_eq!(stat.size_bytes, big.len() as u64);

    // The same content again: one blob, same id.
    let again = put_bytes(store, &big).await.unwrap();
    assert_eq!(again.id, info.id);
    let small = put_bytes(store, b"hello").await.unwrap();
    let empty = put_bytes(store, b"").await.unwrap();
    assert_eq!(empty.size_bytes, 0);
    assert_eq!(read_all(store, &empty.id).await.unwrap(), b"");
    let listed: Vec<BlobId> = store
        .list(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    let mut expected = vec![info.id.clone(), small.id.clone(), empty.id.clone()];
    expected.sort();
    assert_eq!(listed, expected, "each content once, in id order");
    // Paging: after the first id, the other two.
    let rest = store.list(Some(&expected[0]), 100).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(store.list(None, 1).await.unwrap().len(), 1);

    assert!(store.delete(&small.id).await.unwrap());
    assert!(!store.delete(&small.id).await.unwrap(), "deleted once");
    assert!(store.stat(&small.id).await.unwrap().is_none());
    assert!(matches!(
        store.get(&small.id).await,
        Err(BlobError::NotFound(_))
    ));

    // Over the limit: refused, nothing stored.
    let limit = store.max_blob_bytes();
    if limit < 64 * 1024 * 1024 {
        let over = sample_bytes(limit as usize + 1, 2);
        let before = store.list(None, 100).await.unwrap().len();
        assert!(matches!(
            put_bytes(store, &over).await,
            Err(BlobError::TooLarge { .. })
        ));
        assert_eq!(store.list(None, 100).await.unwrap().len(), before);
        assert!(store.stat(&BlobId::of(&over)).await.unwrap().is_none());
    }
}

/// A stored blob altered behind the store's back (`corrupt` does that) is never read as good:
/// reading it to the end fails with `Corrupt`.
pub async fn corruption_is_detected(store: &dyn BlobStore, corrupt: impl Fn(&BlobId)) {
    let bytes = sample_bytes(BLOB_CHUNK_BYTES + 5, 3);
    let info = put_bytes(store, &bytes).await.unwrap();
    corrupt(&info.id);
    let got = read_all(store, &info.id).await;
    assert!(
        matches!(got, Err(BlobError::Corrupt(_))),
        "a corrupt blob is a loud error: {got:?}"
    );
}

/// Add is idempotent; lookups by blob and by referrer; release by referrer and by blob;
/// listing pages in (kind, id, blob) order.
pub async fn refs_conformance(refs: &dyn BlobRefs) {
    let (a, b) = (BlobId::of(b"a"), BlobId::of(b"b"));
    let r1 = BlobRef::new(a.clone(), "batch-params", "job-1", 10);
    refs.add(&r1).await.unwrap();
    refs.add(&r1).await.unwrap();
    refs.add(&BlobRef::new(b.clone(), "batch-params", "job-1", 11))
        .await
        .unwrap();
    refs.add(&BlobRef::new(a.clone(), "batch-result", "job-2", 12))
        .await
        .unwrap();
    assert_eq!(refs.of_blob(&a, 10).await.unwrap().len(), 2);
    assert_eq!(refs.of_blob(&a, 1).await.unwrap().len(), 1);
    let of_job1 = refs.of_referrer("batch-params", "job-1").await.unwrap();
    assert_eq!(
        of_job1.iter().map(|r| &r.blob).collect::<Vec<_>>(),
        vec![&a, &b],
        "oldest first"
    );
    assert_eq!(of_job1[0], r1);

    let all = refs.list(None, 100).await.unwrap();
    assert_eq!(all.len(), 3);
    let page1 = refs.list(None, 2).await.unwrap();
    let page2 = refs.list(page1.last(), 2).await.unwrap();
    assert_eq!([page1, page2].concat(), all, "pages join to the whole list");

    assert_eq!(refs.release("batch-params", "job-1").await.unwrap(), 2);
    assert!(refs.of_blob(&b, 10).await.unwrap().is_empty());
    assert_eq!(refs.of_blob(&a, 10).await.unwrap().len(), 1);
    assert_eq!(refs.release_blob(&a).await.unwrap(), 1);
    assert!(refs.list(None, 100).await.unwrap().is_empty());
    assert!(
        refs.add(&BlobRef::new(a, "", "x", 1)).await.is_err(),
        "an empty referrer kind is refused"
    );
}
