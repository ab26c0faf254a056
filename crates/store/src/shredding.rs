//! Crypto-shredding: personal fields of events are stored encrypted with a key per data
//! subject (the customer or user the event names), kept apart from the log; destroying the key
//! erases those fields from every copy of the history at once, while the events themselves,
//! their versions and positions stay as they were (docs/adr/0011-crypto-shredding.md).
//!
//! - [`PersonalFields`] declares, per event type, where the subject's id is and which fields
//!   are personal (JSON pointers into the payload; each a string or null).
//! - [`SubjectKeys`] is the key table: [`SqliteSubjectKeys`] (its own file beside the log),
//!   [`PgSubjectKeys`] (`ficus_subject_keys`, migration 6) and [`MemSubjectKeys`].
//! - [`ShreddingStore`] wraps the event store (and the idempotency store, whose keyed appends
//!   bypass the event store): it encrypts declared fields before every append, so the log,
//!   the PostgreSQL outbox and the NATS copies only ever hold ciphertext, and decrypts them in
//!   every read and live batch, so aggregates, projections, SSE and the stream API see
//!   plaintext while the key exists and [`ERASED`] after.
//!
//! A stored personal field is the string `ficus-enc:v1:<key id>:<base64url(nonce ‖ ciphertext)>`
//! of the field's JSON, sealed with ChaCha20-Poly1305 under the subject's key, with the event
//! id and the field's pointer as associated data (a ciphertext moved to another event or field
//! does not open). A key id names one key for ever: a subject that comes back after being
//! forgotten gets a new key, and its old events stay erased.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ficus_core::{ExpectedVersion, NewEvent, Position, RecordedEvent, StreamId, Version};
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::idempotency::{
    Claim, ClaimRequest, IdempotencyRecord, IdempotencyStore, Responder, StoredResponse, Ticket,
};
use crate::{AppendResult, EventStore, LiveBatch, StoreError};

/// What a personal field reads as once its subject's key is destroyed.
pub const ERASED: &str = "[erased]";
/// The prefix of an encrypted field's stored value.
pub const ENCRYPTED_PREFIX: &str = "ficus-enc:v1:";
/// Longest subject id accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 255;
/// Keys (and known-destroyed key ids) a process keeps in memory.
pub const KEY_CACHE_ENTRIES: usize = 4096;
/// How long a cached live key is trusted. Another process (PostgreSQL) may destroy it; this
/// bounds how long this process goes on decrypting with it. Destroyed ids never come back, so
/// their cache entries do not expire.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(2);
/// Live batches the decorator keeps for slow subscribers (as the adapters' own buffers).
pub const SHRED_LIVE_BUFFER_BATCHES: usize = 1024;

const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// The personal fields of each event type at each schema version, and where the event names
/// its subject. Keyed by version because a shape's pointers are only valid for that shape: an
/// event written at an undeclared version (an import at an old version) is stored as it came,
/// and a sealed event keeps being opened by the rule of the version it was written at.
#[derive(Debug, Clone, Default)]
pub struct PersonalFields {
    by_type: HashMap<(String, u32), Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    subject: String,
    fields: Vec<String>,
}

impl PersonalFields {
    pub fn new() -> Self {
        Self::default()
    }

    /// Events of type `event_type` at `schema_version` name their subject at the JSON pointer
    /// `subject` (a string) and carry personal data at the pointers `fields` (each a string or
    /// null).
    pub fn declare(
        &mut self,
        event_type: &str,
        schema_version: u32,
        subject: &str,
        fields: &[&str],
    ) -> &mut Self {
        self.by_type.insert(
            (event_type.to_owned(), schema_version),
            Rule {
                subject: subject.to_owned(),
                fields: fields.iter().map(|f| (*f).to_owned()).collect(),
            },
        );
        self
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    fn rule(&self, event_type: &str, schema_version: u32) -> Option<&Rule> {
        self.by_type.get(&(event_type.to_owned(), schema_version))
    }
}

/// A subject's live key.
#[derive(Clone)]
pub struct SubjectKey {
    pub key_id: String,
    key: [u8; KEY_BYTES],
}

impl SubjectKey {
    fn generate() -> Self {
        Self {
            key_id: uuid::Uuid::now_v7().simple().to_string(),
            key: rand::random(),
        }
    }
}

/// The key table. Keys never enter the event log; a destroyed key is gone for good.
#[async_trait]
pub trait SubjectKeys: Send + Sync + 'static {
    /// The subject's live key; a new one is created, durably, when it has none.
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError>;
    /// The key with id `key_id`, or `None` once destroyed.
    async fn key_by_id(&self, key_id: &str) -> Result<Option<[u8; KEY_BYTES]>, StoreError>;
    /// Destroys the subject's keys durably; how many there were (0 when none: idempotent).
    async fn destroy(&self, subject: &str) -> Result<u64, StoreError>;
}

fn check_subject(subject: &str) -> Result<(), StoreError> {
    if subject.is_empty() || subject.len() > MAX_SUBJECT_BYTES {
        return Err(StoreError::Invalid(format!(
            "a subject id has 1..={MAX_SUBJECT_BYTES} bytes"
        )));
    }
    Ok(())
}

fn key_from_bytes(bytes: &[u8], key_id: &str) -> Result<[u8; KEY_BYTES], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("subject key {key_id} is not {KEY_BYTES} bytes")))
}

// --- in memory ---------------------------------------------------------------------------------

/// The in-memory twin, for tests.
#[derive(Default)]
pub struct MemSubjectKeys {
    keys: Mutex<HashMap<String, SubjectKey>>,
}

#[async_trait]
impl SubjectKeys for MemSubjectKeys {
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError> {
        check_subject(subject)?;
        let mut keys = self.keys.lock().expect("key table lock");
        Ok(keys
            .entry(subject.to_owned())
            .or_insert_with(SubjectKey::generate)
            .clone())
    }

    async fn key_by_id(&self, key_id: &str) -> Result<Option<[u8; KEY_BYTES]>, StoreError> {
        let keys = self.keys.lock().expect("key table lock");
        Ok(keys.values().find(|k| k.key_id == key_id).map(|k| k.key))
    }

    async fn destroy(&self, subject: &str) -> Result<u64, StoreError> {
        check_subject(subject)?;
        let mut keys = self.keys.lock().expect("key table lock");
        Ok(u64::from(keys.remove(subject).is_some()))
    }
}

// --- SQLite ------------------------------------------------------------------------------------

const SQLITE_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subject_keys (
    subject       TEXT    PRIMARY KEY,
    key_id        TEXT    NOT NULL UNIQUE,
    key           BLOB    NOT NULL,
    created_at_ms INTEGER NOT NULL
);";

/// The key table on the embedded backend: a file of its own (`subject-keys.db`), not a table
/// of the event log's file, so that log backups and copies never carry keys, and so that a
/// destroyed key can be scrubbed from the file (`secure_delete`, then a WAL checkpoint that
/// truncates the WAL) without touching the log's writer.
pub struct SqliteSubjectKeys {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteSubjectKeys {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        use crate::sqlite::{open_connection, unavailable};
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = open_connection(&path)?;
        // Freed pages are zeroed, so a deleted key's bytes do not linger in the file.
        conn.execute_batch("PRAGMA secure_delete = ON;")
            .map_err(unavailable)?;
        conn.execute_batch(SQLITE_SCHEMA).map_err(unavailable)?;
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_conn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().expect("key file lock");
            f(&mut c).map_err(crate::sqlite::unavailable)
        })
        .await
        .map_err(crate::sqlite::unavailable)?
    }
}

#[async_trait]
impl SubjectKeys for SqliteSubjectKeys {
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError> {
        check_subject(subject)?;
        let subject = subject.to_owned();
        let fresh = SubjectKey::generate();
        let (key_id, bytes) = self
            .with_conn(move |c| {
                // synchronous=FULL: the key is durable before the append that uses it starts.
                c.execute(
                    "INSERT INTO subject_keys (subject, key_id, key, created_at_ms)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT (subject) DO NOTHING",
                    params![subject, fresh.key_id, &fresh.key[..], crate::now_ms()],
                )?;
                c.query_row(
                    "SELECT key_id, key FROM subject_keys WHERE subject = ?1",
                    params![subject],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
                )
            })
            .await?;
        let key = key_from_bytes(&bytes, &key_id)?;
        Ok(SubjectKey { key_id, key })
    }

    async fn key_by_id(&self, key_id: &str) -> Result<Option<[u8; KEY_BYTES]>, StoreError> {
        let id = key_id.to_owned();
        let bytes = self
            .with_conn(move |c| {
                c.query_row(
                    "SELECT key FROM subject_keys WHERE key_id = ?1",
                    params![id],
                    |r| r.get::<_, Vec<u8>>(0),
                )
                .optional()
            })
            .await?;
        bytes.map(|b| key_from_bytes(&b, key_id)).transpose()
    }

    async fn destroy(&self, subject: &str) -> Result<u64, StoreError> {
        check_subject(subject)?;
        let subject = subject.to_owned();
        self.with_conn(move |c| {
            let n = c.execute(
                "DELETE FROM subject_keys WHERE subject = ?1",
                params![subject],
            )?;
            if n > 0 {
                // The WAL still holds the page image with the key until it is checkpointed
                // into the (secure-deleted) file and truncated.
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
            Ok(n as u64)
        })
        .await
    }
}

// --- PostgreSQL --------------------------------------------------------------------------------

/// Migration 6 of the PostgreSQL schema: the key table, beside (never inside) the event log.
pub(crate) const PG_SCHEMA: &str = "
CREATE TABLE ficus_subject_keys (
    subject       text   PRIMARY KEY,
    key_id        text   NOT NULL UNIQUE,
    key           bytea  NOT NULL,
    created_at_ms bigint NOT NULL
);";

/// The key table on PostgreSQL: `ficus_subject_keys` in the event log's schema, shared by
/// every process (a key made by one is found by all).
pub struct PgSubjectKeys {
    pool: crate::postgres::TimedPool,
}

impl PgSubjectKeys {
    /// The key table of `store`'s schema (migrated when the store opened), on its pool.
    pub fn for_store(store: &crate::postgres::PgEventStore) -> Self {
        Self {
            pool: store.timed_pool().clone(),
        }
    }
}

#[async_trait]
impl SubjectKeys for PgSubjectKeys {
    async fn key_for(&self, subject: &str) -> Result<SubjectKey, StoreError> {
        use crate::postgres::{execute, query};
        check_subject(subject)?;
        let fresh = SubjectKey::generate();
        // Two processes racing for a new subject agree on the first key committed.
        execute(
            &self.pool,
            "INSERT INTO ficus_subject_keys (subject, key_id, key, created_at_ms)
             VALUES ($1, $2, $3, $4) ON CONFLICT (subject) DO NOTHING",
            &[&subject, &fresh.key_id, &&fresh.key[..], &crate::now_ms()],
        )
        .await?;
        let rows = query(
            &self.pool,
            "SELECT key_id, key FROM ficus_subject_keys WHERE subject = $1",
            &[&subject],
        )
        .await?;
        let row = rows.first().ok_or_else(|| {
            StoreError::Unavailable(format!("the key of subject {subject} vanished"))
        })?;
        let key_id: String = row.get(0);
        let key = key_from_bytes(row.get::<_, &[u8]>(1), &key_id)?;
        Ok(SubjectKey { key_id, key })
    }

    async fn key_by_id(&self, key_id: &str) -> Result<Option<[u8; KEY_BYTES]>, StoreError> {
        let rows = crate::postgres::query(
            &self.pool,
            "SELECT key FROM ficus_subject_keys WHERE key_id = $1",
            &[&key_id],
        )
        .await?;
        rows.first()
            .map(|r| key_from_bytes(r.get::<_, &[u8]>(0), key_id))
            .transpose()
    }

    async fn destroy(&self, subject: &str) -> Result<u64, StoreError> {
        check_subject(subject)?;
        crate::postgres::execute(
            &self.pool,
            "DELETE FROM ficus_subject_keys WHERE subject = $1",
            &[&subject],
        )
        .await
    }
}

// --- the decorator -----------------------------------------------------------------------------

/// A key by id as last fetched (`None`: destroyed), and when.
type CachedKey = (Option<[u8; KEY_BYTES]>, Instant);

/// Keys by id, bounded; cleared whole when full (keys are cheap to fetch again).
struct KeyCache {
    entries: Mutex<HashMap<String, CachedKey>>,
}

impl KeyCache {
    fn get(&self, key_id: &str) -> Option<Option<[u8; KEY_BYTES]>> {
        let entries = self.entries.lock().expect("key cache lock");
        match entries.get(key_id) {
            Some((None, _)) => Some(None),
            Some((Some(k), at)) if at.elapsed() < KEY_CACHE_TTL => Some(Some(*k)),
            _ => None,
        }
    }

    fn put(&self, key_id: &str, key: Option<[u8; KEY_BYTES]>) {
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= KEY_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(key_id.to_owned(), (key, Instant::now()));
    }

    fn forget_live(&self) {
        self.entries
            .lock()
            .expect("key cache lock")
            .retain(|_, (k, _)| k.is_none());
    }
}

/// Encrypts and decrypts the declared personal fields of the events passing through.
pub struct Shredder {
    fields: PersonalFields,
    keys: Arc<dyn SubjectKeys>,
    cache: KeyCache,
}

impl Shredder {
    pub fn new(fields: PersonalFields, keys: Arc<dyn SubjectKeys>) -> Arc<Self> {
        Arc::new(Self {
            fields,
            keys,
            cache: KeyCache {
                entries: Mutex::new(HashMap::new()),
            },
        })
    }

    /// Destroys `subject`'s keys: its personal fields read as [`ERASED`] from now on in this
    /// process (within [`KEY_CACHE_TTL`] in the others). How many keys there were.
    pub async fn forget(&self, subject: &str) -> Result<u64, StoreError> {
        let n = self.keys.destroy(subject).await?;
        self.cache.forget_live();
        Ok(n)
    }

    /// `events` with their personal fields sealed under their subjects' keys.
    pub async fn seal(&self, mut events: Vec<NewEvent>) -> Result<Vec<NewEvent>, StoreError> {
        for e in &mut events {
            let Some(rule) = self.fields.rule(e.event_type.as_str(), e.schema_version) else {
                continue;
            };
            let subject = e
                .payload
                .pointer(&rule.subject)
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "a {} event names its data subject at {}",
                        e.event_type.as_str(),
                        rule.subject
                    ))
                })?
                .to_owned();
            let mut key = None;
            for field in &rule.fields {
                let Some(slot) = e.payload.pointer_mut(field) else {
                    continue;
                };
                let text = match slot {
                    Value::Null => continue,
                    // Already sealed (an append retried with the same events).
                    Value::String(s) if s.starts_with(ENCRYPTED_PREFIX) => continue,
                    Value::String(s) => s.clone(),
                    _ => {
                        return Err(StoreError::Invalid(format!(
                            "personal field {field} of {} must be a string or null",
                            e.event_type.as_str()
                        )))
                    }
                };
                if key.is_none() {
                    key = Some(self.keys.key_for(&subject).await?);
                }
                let key = key.as_ref().expect("set above");
                *slot = Value::String(seal_field(key, e.id.as_bytes(), field, &text)?);
            }
        }
        Ok(events)
    }

    /// `e` with its personal fields opened, or [`ERASED`] where the key is gone.
    pub async fn open(&self, mut e: RecordedEvent) -> Result<RecordedEvent, StoreError> {
        let Some(rule) = self.fields.rule(e.event_type.as_str(), e.schema_version) else {
            return Ok(e);
        };
        for field in &rule.fields {
            let Some(Value::String(stored)) = e.payload.pointer(field) else {
                continue;
            };
            let Some(sealed) = stored.strip_prefix(ENCRYPTED_PREFIX) else {
                // Written before the type was declared personal: stored as it came.
                continue;
            };
            let corrupt = |why: &str| {
                StoreError::Corrupt(format!(
                    "personal field {field} of the event at position {} of {}: {why}",
                    e.position, e.stream_id
                ))
            };
            let (key_id, blob) = sealed.split_once(':').ok_or_else(|| corrupt("no key id"))?;
            let opened = match self.key(key_id).await? {
                None => ERASED.to_owned(),
                Some(key) => open_field(&key, e.id.as_bytes(), field, blob).map_err(corrupt)?,
            };
            if let Some(slot) = e.payload.pointer_mut(field) {
                *slot = Value::String(opened);
            }
        }
        Ok(e)
    }

    async fn key(&self, key_id: &str) -> Result<Option<[u8; KEY_BYTES]>, StoreError> {
        if let Some(k) = self.cache.get(key_id) {
            return Ok(k);
        }
        let k = self.keys.key_by_id(key_id).await?;
        self.cache.put(key_id, k);
        Ok(k)
    }

    async fn open_all(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            out.push(self.open(e).await?);
        }
        Ok(out)
    }

    fn touches(&self, e: &RecordedEvent) -> bool {
        self.fields
            .rule(e.event_type.as_str(), e.schema_version)
            .is_some()
    }
}

fn cipher(key: &[u8; KEY_BYTES]) -> ChaCha20Poly1305 {
    ChaCha20Poly1305::new(Key::from_slice(key))
}

fn aad(event_id: &[u8], field: &str) -> Vec<u8> {
    [event_id, field.as_bytes()].concat()
}

fn seal_field(
    key: &SubjectKey,
    event_id: &[u8],
    field: &str,
    text: &str,
) -> Result<String, StoreError> {
    let nonce: [u8; NONCE_BYTES] = rand::random();
    let sealed = cipher(&key.key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: text.as_bytes(),
                aad: &aad(event_id, field),
            },
        )
        .map_err(|_| StoreError::Invalid("a personal field could not be encrypted".into()))?;
    let blob = [&nonce[..], &sealed].concat();
    Ok(format!(
        "{ENCRYPTED_PREFIX}{}:{}",
        key.key_id,
        URL_SAFE_NO_PAD.encode(blob)
    ))
}

fn open_field(
    key: &[u8; KEY_BYTES],
    event_id: &[u8],
    field: &str,
    blob: &str,
) -> Result<String, &'static str> {
    let blob = URL_SAFE_NO_PAD.decode(blob).map_err(|_| "not base64")?;
    if blob.len() < NONCE_BYTES {
        return Err("too short");
    }
    let (nonce, sealed) = blob.split_at(NONCE_BYTES);
    let text = cipher(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: &aad(event_id, field),
            },
        )
        .map_err(|_| "does not authenticate under its key")?;
    String::from_utf8(text).map_err(|_| "not UTF-8")
}

/// The event store (and idempotency store) with personal fields sealed on the way in and
/// opened on the way out. Wrap it inside [`crate::UpcastingStore`]: events are opened as
/// stored, then upcast.
pub struct ShreddingStore {
    inner: Arc<dyn EventStore>,
    keyed: Option<Arc<dyn IdempotencyStore>>,
    shredder: Arc<Shredder>,
    live: broadcast::Sender<LiveBatch>,
    forwarder: JoinHandle<()>,
}

impl Drop for ShreddingStore {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

impl ShreddingStore {
    /// `inner` (and `keyed`, the idempotency store whose `append_completing` writes to the same
    /// log) seen through `shredder`. Must be called inside a Tokio runtime.
    pub fn wrap(
        inner: Arc<dyn EventStore>,
        keyed: Option<Arc<dyn IdempotencyStore>>,
        shredder: Arc<Shredder>,
    ) -> Arc<Self> {
        let (live, _) = broadcast::channel(SHRED_LIVE_BUFFER_BATCHES);
        let forwarder = tokio::spawn(forward(inner.live(), live.clone(), shredder.clone()));
        Arc::new(Self {
            inner,
            keyed,
            shredder,
            live,
            forwarder,
        })
    }

    pub fn shredder(&self) -> &Arc<Shredder> {
        &self.shredder
    }

    fn keyed(&self) -> Result<&Arc<dyn IdempotencyStore>, StoreError> {
        self.keyed
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("no idempotency store behind this one".into()))
    }
}

async fn forward(
    from: broadcast::Receiver<LiveBatch>,
    to: broadcast::Sender<LiveBatch>,
    shredder: Arc<Shredder>,
) {
    let touches = |e: &RecordedEvent| shredder.touches(e);
    // Never delivered sealed: a batch that cannot be opened is dropped and subscribers read
    // it from the store.
    let transform = |events| async {
        shredder
            .open_all(events)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "a live batch could not be opened; subscribers will read it from the store");
            })
            .ok()
    };
    crate::port::relay_live(from, to, touches, transform).await
}

#[async_trait]
impl EventStore for ShreddingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let events = self.shredder.seal(events).await?;
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: Version,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream, from_version, limit).await?;
        self.shredder.open_all(events).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Version, StoreError> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        from_position: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(from_position, limit).await?;
        self.shredder.open_all(events).await
    }

    fn head_position(&self) -> Position {
        self.inner.head_position()
    }

    fn live(&self) -> broadcast::Receiver<LiveBatch> {
        self.live.subscribe()
    }
}

#[async_trait]
impl IdempotencyStore for ShreddingStore {
    async fn claim(&self, req: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        self.keyed()?.claim(req).await
    }

    async fn append_completing(
        &self,
        ticket: &Ticket,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        respond: Responder,
    ) -> Result<AppendResult, StoreError> {
        let events = self.shredder.seal(events).await?;
        self.keyed()?
            .append_completing(ticket, stream, expected, events, respond)
            .await
    }

    async fn complete(
        &self,
        ticket: &Ticket,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        self.keyed()?.complete(ticket, response).await
    }

    async fn release(&self, ticket: &Ticket) -> Result<(), StoreError> {
        self.keyed()?.release(ticket).await
    }

    async fn purge(&self, created_before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        self.keyed()?.purge(created_before_ms, limit).await
    }

    async fn get(&self, scope: &str, key: &str) -> Result<Option<IdempotencyRecord>, StoreError> {
        self.keyed()?.get(scope, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ficus_core::EventType;

    fn recorded(e: NewEvent) -> RecordedEvent {
        RecordedEvent {
            id: e.id,
            stream_id: StreamId::new("account-1").unwrap(),
            version: 1,
            position: 1,
            event_type: e.event_type,
            schema_version: e.schema_version,
            metadata: e.metadata,
            payload: e.payload,
            recorded_at_ms: 0,
        }
    }

    fn shredder() -> Arc<Shredder> {
        let mut fields = PersonalFields::new();
        fields.declare("Opened", 1, "/owner", &["/name"]);
        Shredder::new(fields, Arc::new(MemSubjectKeys::default()))
    }

    fn opened(name: &str) -> NewEvent {
        crate::new_event(
            EventType::new("Opened").unwrap(),
            serde_json::json!({"owner": "ann", "name": name}),
        )
    }

    #[tokio::test]
    async fn a_tampered_or_moved_ciphertext_is_corrupt_not_erased() {
        let s = shredder();
        let sealed = s.seal(vec![opened("Ann")]).await.unwrap().remove(0);
        let stored = sealed.payload["name"].as_str().unwrap().to_owned();
        assert!(stored.starts_with(ENCRYPTED_PREFIX));
        assert_eq!(
            s.open(recorded(sealed.clone())).await.unwrap().payload["name"],
            "Ann"
        );

        // One changed character inside the ciphertext (not the last, whose low bits may be
        // padding): the tag no longer authenticates.
        let mut tampered = sealed.clone();
        let mut chars: Vec<char> = stored.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        tampered.payload["name"] = Value::String(chars.into_iter().collect());
        let err = s.open(recorded(tampered)).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");

        // The same ciphertext under another event's id (associated data differs).
        let mut moved = opened("Bob");
        moved.payload["name"] = Value::String(stored);
        let err = s.open(recorded(moved)).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    }
}
