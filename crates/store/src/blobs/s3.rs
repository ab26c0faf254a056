//! A blob store on any S3-compatible object store, over plain HTTP requests signed with AWS
//! Signature Version 4 (written here over `hmac` + `sha2`, as the JWT check is, rather than
//! pulling an SDK). Objects are `<prefix>sha256/<64 hex>` in one bucket, path-style URLs.
//!
//! A put spools the content to a local part file while hashing it (the key is the hash, known
//! only at the end), then uploads the file in one `PUT` whose signed payload hash is that same
//! hash: the store refuses the upload if a byte changed on the way. Content already there is
//! copied onto itself, which renews its `Last-Modified` (its `created_at_ms`) for the grace
//! period. The object store's own durability is what an acknowledged put rests on.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::BLOB_LIST_MAX;
use super::{hash_copy, BlobError, BlobId, BlobInfo, BlobReader, BlobStore, BLOB_CHUNK_BYTES};

/// Longest one request to the object store may take before the operation fails as
/// unavailable (a 1 GiB upload over a slow link needs minutes).
pub const S3_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
/// The SHA-256 of no bytes: the payload hash of a request without a body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Where the objects are and how to sign for them.
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host[:port]`, no trailing slash.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Prepended to every key (e.g. `ficus/`); may be empty.
    pub prefix: String,
    /// Where puts spool their content before the upload.
    pub spool_dir: PathBuf,
    pub max_blob_bytes: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

pub struct S3BlobStore {
    config: S3Config,
    http: reqwest::Client,
    host: String,
}

fn unavailable(e: impl std::fmt::Display) -> BlobError {
    BlobError::Unavailable(format!("S3: {e}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// RFC 3986 unreserved characters stay, everything else is `%XX` (S3's query encoding).
fn uri_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `20130524T000000Z` of a Unix time in milliseconds.
fn amz_date(now_ms: i64) -> String {
    let t = ficus_core::time::format_rfc3339_ms(now_ms);
    // 2013-05-24T00:00:00.000Z
    format!(
        "{}{}{}T{}{}{}Z",
        &t[0..4],
        &t[5..7],
        &t[8..10],
        &t[11..13],
        &t[14..16],
        &t[17..19]
    )
}

/// The `Authorization` header of a request, per Signature Version 4. `headers` are the
/// lowercase names and values to sign besides `host` (they must be sent as given).
#[allow(clippy::too_many_arguments)]
fn authorization(
    secret: &str,
    access_key: &str,
    region: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    host: &str,
    headers: &[(String, String)],
    payload_sha256: &str,
    amz_date: &str,
) -> String {
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k), uri_encode(v)))
        .collect();
    q.sort();
    let canonical_query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut all: Vec<(String, String)> = headers.to_vec();
    all.push(("host".into(), host.to_owned()));
    all.sort();
    let canonical_headers: String = all
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed}\n{payload_sha256}",
        canonical_query.join("&")
    );
    let day = &amz_date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let key = hmac(format!("AWS4{secret}").as_bytes(), day);
    let key = hmac(&key, region);
    let key = hmac(&key, "s3");
    let key = hmac(&key, "aws4_request");
    let signature = hex(&hmac(&key, &to_sign));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed},Signature={signature}"
    )
}

/// A response body as an `AsyncRead`.
struct BodyReader {
    stream: Pin<Box<dyn Stream<Item = std::io::Result<Vec<u8>>> + Send>>,
    chunk: Vec<u8>,
    at: usize,
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.at == this.chunk.len() {
            match this.stream.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(c))) => {
                    this.chunk = c;
                    this.at = 0;
                }
            }
        }
        let n = buf.remaining().min(this.chunk.len() - this.at);
        buf.put_slice(&this.chunk[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl S3BlobStore {
    /// The store on `config`'s bucket, which must exist.
    pub fn new(config: S3Config) -> Result<Self, BlobError> {
        let url = reqwest::Url::parse(&config.endpoint)
            .map_err(|e| BlobError::Invalid(format!("S3 endpoint: {e}")))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(BlobError::Invalid("S3 endpoint has no host".into())),
        };
        std::fs::create_dir_all(&config.spool_dir).map_err(unavailable)?;
        let http = reqwest::Client::builder()
            .timeout(S3_REQUEST_TIMEOUT)
            .build()
            .map_err(unavailable)?;
        Ok(Self { config, http, host })
    }

    fn key(&self, id: &BlobId) -> String {
        format!("{}sha256/{}", self.config.prefix, id.hex())
    }

    /// A signed request: `headers` are lowercase and signed too.
    fn request(
        &self,
        method: reqwest::Method,
        key: Option<&str>,
        query: &[(String, String)],
        headers: &[(String, String)],
        payload_sha256: &str,
    ) -> reqwest::RequestBuilder {
        let path = match key {
            Some(k) => format!("/{}/{k}", self.config.bucket),
            None => format!("/{}", self.config.bucket),
        };
        let date = amz_date(crate::now_ms());
        let mut signed = headers.to_vec();
        signed.push(("x-amz-content-sha256".into(), payload_sha256.to_owned()));
        signed.push(("x-amz-date".into(), date.clone()));
        let auth = authorization(
            &self.config.secret_access_key,
            &self.config.access_key_id,
            &self.config.region,
            method.as_str(),
            &path,
            query,
            &self.host,
            &signed,
            payload_sha256,
            &date,
        );
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.config.endpoint))
            .query(query)
            .header("authorization", auth);
        for (k, v) in signed {
            rb = rb.header(k, v);
        }
        rb
    }

    /// Creates the bucket (an answer that it exists already counts as done).
    pub async fn create_bucket(&self) -> Result<(), BlobError> {
        let r = self
            .request(reqwest::Method::PUT, None, &[], &[], EMPTY_SHA256)
            .send()
            .await
            .map_err(unavailable)?;
        if r.status().is_success() || r.status().as_u16() == 409 {
            Ok(())
        } else {
            Err(unavailable(format!(
                "creating the bucket answered {}",
                r.status()
            )))
        }
    }

    /// Stores `bytes` under `id`'s key without checking that they hash to it: how the tests
    /// play a corrupted object.
    pub async fn overwrite_unchecked(&self, id: &BlobId, bytes: Vec<u8>) -> Result<(), BlobError> {
        let sha = hex(&Sha256::digest(&bytes));
        let r = self
            .request(reqwest::Method::PUT, Some(&self.key(id)), &[], &[], &sha)
            .body(bytes)
            .send()
            .await
            .map_err(unavailable)?;
        if !r.status().is_success() {
            return Err(unavailable(format!("PUT answered {}", r.status())));
        }
        Ok(())
    }

    async fn head(&self, id: &BlobId) -> Result<Option<BlobInfo>, BlobError> {
        let r = self
            .request(
                reqwest::Method::HEAD,
                Some(&self.key(id)),
                &[],
                &[],
                EMPTY_SHA256,
            )
            .send()
            .await
            .map_err(unavailable)?;
        match r.status().as_u16() {
            200 => Ok(Some(BlobInfo {
                id: id.clone(),
                size_bytes: content_length(&r),
                created_at_ms: last_modified_ms(&r),
            })),
            404 => Ok(None),
            s => Err(unavailable(format!("HEAD answered {s}"))),
        }
    }
}

/// The `Content-Length` header (read from the header: a `HEAD` answer has no body whose size
/// the client could report).
fn content_length(r: &reqwest::Response) -> u64 {
    r.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

/// `Last-Modified` (an HTTP date, `Sun, 06 Nov 1994 08:49:37 GMT`) in Unix milliseconds.
fn last_modified_ms(r: &reqwest::Response) -> i64 {
    let Some(v) = r
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
    else {
        return 0;
    };
    let parts: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, _] = parts.as_slice() else {
        return 0;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let Some(m) = MONTHS.iter().position(|x| x == month) else {
        return 0;
    };
    let text = format!("{year}-{:02}-{day:0>2}T{time}Z", m + 1);
    ficus_core::time::parse_rfc3339_ms(&text).unwrap_or(0)
}

/// The text of every `<tag>...</tag>` in `xml`, in order (enough for ListObjectsV2's flat
/// answer; the keys here are hex and slashes, never escaped).
fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, data: &mut (dyn AsyncRead + Unpin + Send)) -> Result<BlobInfo, BlobError> {
        let part = self
            .config
            .spool_dir
            .join(format!("{}.part", uuid::Uuid::now_v7().simple()));
        let result = async {
            let mut file = tokio::fs::File::create(&part).await.map_err(unavailable)?;
            let (id, size) = hash_copy(data, &mut file, self.config.max_blob_bytes).await?;
            drop(file);
            let key = self.key(&id);
            if self.head(&id).await?.is_some() {
                // Stored already: copy it onto itself, which renews its age.
                let source = format!("/{}/{key}", self.config.bucket);
                let headers = [
                    ("x-amz-copy-source".to_owned(), source),
                    ("x-amz-metadata-directive".to_owned(), "REPLACE".to_owned()),
                ];
                let r = self
                    .request(
                        reqwest::Method::PUT,
                        Some(&key),
                        &[],
                        &headers,
                        EMPTY_SHA256,
                    )
                    .send()
                    .await
                    .map_err(unavailable)?;
                if !r.status().is_success() {
                    return Err(unavailable(format!("copy answered {}", r.status())));
                }
            } else {
                let file = tokio::fs::File::open(&part).await.map_err(unavailable)?;
                let chunks = futures::stream::unfold(file, |mut f| async move {
                    let mut buf = vec![0u8; BLOB_CHUNK_BYTES];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok::<_, std::io::Error>(buf), f))
                        }
                        Err(e) => Some((Err(e), f)),
                    }
                });
                let r = self
                    .request(reqwest::Method::PUT, Some(&key), &[], &[], id.hex())
                    .header("content-length", size)
                    .body(reqwest::Body::wrap_stream(chunks))
                    .send()
                    .await
                    .map_err(unavailable)?;
                if !r.status().is_success() {
                    return Err(unavailable(format!("PUT answered {}", r.status())));
                }
            }
            self.head(&id)
                .await?
                .ok_or_else(|| unavailable(format!("{id} missing right after its put")))
        }
        .await;
        let _ = tokio::fs::remove_file(&part).await;
        result
    }

    async fn get(&self, id: &BlobId) -> Result<BlobReader, BlobError> {
        let r = self
            .request(
                reqwest::Method::GET,
                Some(&self.key(id)),
                &[],
                &[],
                EMPTY_SHA256,
            )
            .send()
            .await
            .map_err(unavailable)?;
        match r.status().as_u16() {
            200 => {}
            404 => return Err(BlobError::NotFound(id.clone())),
            s => return Err(unavailable(format!("GET answered {s}"))),
        }
        let info = BlobInfo {
            id: id.clone(),
            size_bytes: content_length(&r),
            created_at_ms: last_modified_ms(&r),
        };
        let stream = r.bytes_stream().map(|c| {
            c.map(|b| b.to_vec())
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let reader = BodyReader {
            stream: Box::pin(stream),
            chunk: Vec::new(),
            at: 0,
        };
        Ok(BlobReader::new(info, Box::pin(reader)))
    }

    async fn stat(&self, id: &BlobId) -> Result<Option<BlobInfo>, BlobError> {
        self.head(id).await
    }

    async fn delete(&self, id: &BlobId) -> Result<bool, BlobError> {
        // S3 answers a delete of nothing like any other: ask first.
        if self.head(id).await?.is_none() {
            return Ok(false);
        }
        let r = self
            .request(
                reqwest::Method::DELETE,
                Some(&self.key(id)),
                &[],
                &[],
                EMPTY_SHA256,
            )
            .send()
            .await
            .map_err(unavailable)?;
        if !r.status().is_success() {
            return Err(unavailable(format!("DELETE answered {}", r.status())));
        }
        Ok(true)
    }

    async fn list(&self, after: Option<&BlobId>, limit: usize) -> Result<Vec<BlobInfo>, BlobError> {
        let prefix = format!("{}sha256/", self.config.prefix);
        let mut query = vec![
            ("list-type".to_owned(), "2".to_owned()),
            ("max-keys".to_owned(), limit.min(BLOB_LIST_MAX).to_string()),
            ("prefix".to_owned(), prefix.clone()),
        ];
        if let Some(a) = after {
            query.push(("start-after".to_owned(), self.key(a)));
        }
        let r = self
            .request(reqwest::Method::GET, None, &query, &[], EMPTY_SHA256)
            .send()
            .await
            .map_err(unavailable)?;
        if !r.status().is_success() {
            return Err(unavailable(format!("list answered {}", r.status())));
        }
        let xml = r.text().await.map_err(unavailable)?;
        let mut out = Vec::new();
        for item in xml_values(&xml, "Contents") {
            let key = xml_values(item, "Key").first().copied().unwrap_or_default();
            let Ok(id) = BlobId::parse(key.strip_prefix(&prefix).unwrap_or(key)) else {
                continue;
            };
            let size = xml_values(item, "Size")
                .first()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let at = xml_values(item, "LastModified")
                .first()
                .and_then(|s| ficus_core::time::parse_rfc3339_ms(s))
                .unwrap_or(0);
            out.push(BlobInfo {
                id,
                size_bytes: size,
                created_at_ms: at,
            });
        }
        Ok(out)
    }

    fn max_blob_bytes(&self) -> u64 {
        self.config.max_blob_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of the Signature Version 4 documentation.
    #[test]
    fn signs_like_the_documented_example() {
        let auth = authorization(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "AKIAIOSFODNN7EXAMPLE",
            "us-east-1",
            "GET",
            "/test.txt",
            &[],
            "examplebucket.s3.amazonaws.com",
            &[
                ("range".into(), "bytes=0-9".into()),
                ("x-amz-content-sha256".into(), EMPTY_SHA256.into()),
                ("x-amz-date".into(), "20130524T000000Z".into()),
            ],
            EMPTY_SHA256,
            "20130524T000000Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(uri_encode("sha256/ab"), "sha256%2Fab");
        assert_eq!(xml_values("<a><K>1</K><K>2</K></a>", "K"), vec!["1", "2"]);
    }
}
