//! `ficus import legacy`: reads the example legacy shop's SQLite database and emits Ficus
//! domain events for its products, through the anti-corruption layer
//! (`ficus_domain::legacy_acl`) and the shop's commands (`Repository::execute`: the product
//! aggregate's decide rules, optimistic appends to the event store).
//!
//! - Idempotent: a product's stream is `product-{legacy id}`; creation is decided on the
//!   loaded state and appended at the version it was loaded at, so a repeat never creates
//!   twice. A product already there gets only the differences (`UpdatePrice`, `AdjustStock`
//!   on the `legacy` warehouse), so running the import again converges.
//! - Resumable: after each batch's commands are durable, a checkpoint event naming the last
//!   legacy id of the batch is appended to the stream [`CHECKPOINT_STREAM`]. A run starts
//!   after the last checkpoint of an unfinished pass, or from the first row once the last
//!   pass completed (so a later run picks up legacy changes).
//! - Exclusive on the embedded store: the event log's lock file refuses a second process, so
//!   the import runs while no `ficus serve` holds the data directory. On PostgreSQL it can run
//!   beside servers; two imports at once conflict on the checkpoint stream's version.
//! - A row the ACL refuses, or whose command the aggregate refuses, is counted and reported
//!   (the first [`REFUSALS_REPORTED_MAX`] reasons), not fatal.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ficus_core::{EventType, ExpectedVersion, NewEvent, StreamId};
use ficus_domain::legacy_acl::{self, LegacyProduct, Refusal};
use ficus_domain::product::Product;
use ficus_domain::service::Shop;
use ficus_runtime::Repository;
use ficus_store::postgres::PgEventStore;
use ficus_store::sqlite::SqliteEventStore;
use ficus_store::EventStore;
use rusqlite::types::Value as SqlValue;
use rusqlite::OpenFlags;
use serde_json::{json, Value};

use crate::app::StoreConfig;

/// The stream holding the import's checkpoints.
pub const CHECKPOINT_STREAM: &str = "import-legacy";
/// A batch's checkpoint: `{"last_legacy_id", "totals", "refusals"}`.
pub const BATCH_DONE_EVENT: &str = "LegacyImportBatchDone";
/// A completed pass: `{"totals"}`. The next run starts a new pass from the first row.
pub const PASS_DONE_EVENT: &str = "LegacyImportCompleted";
/// Rows per batch when `--batch` is not given.
pub const DEFAULT_BATCH_ROWS: usize = 100;
/// Most rows per batch: bounds what one batch holds in memory and redoes after a crash.
pub const MAX_BATCH_ROWS: usize = 1000;
/// Refusal reasons kept for the report (all are counted).
pub const REFUSALS_REPORTED_MAX: usize = 10;
/// Test hook: abort the process (no cleanup, like a crash) after this many rows, counted in
/// this run, whether or not their batch is checkpointed.
pub const ABORT_AFTER_ROWS_ENV: &str = "FICUS_TEST_ABORT_IMPORT_AFTER_ROWS";

/// What to import from.
#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// Import the example legacy shop's products (`ficus legacy-shop --db`). Run it while no
    /// `ficus serve` holds the data directory (the embedded store takes one process).
    Legacy {
        /// The legacy shop's SQLite file (read only).
        #[arg(long)]
        legacy_db: PathBuf,
        /// `sqlite` (the embedded store in --data-dir) or a postgres:// URL.
        #[arg(long, env = "FICUS_STORE", default_value = "sqlite")]
        store: String,
        /// The PostgreSQL schema (with a postgres:// --store).
        #[arg(long, env = "FICUS_PG_SCHEMA", default_value = "ficus")]
        pg_schema: String,
        /// The data directory of the embedded store.
        #[arg(long, env = "FICUS_DATA_DIR", default_value = "ficus-data")]
        data_dir: PathBuf,
        /// Legacy rows per batch (one checkpoint each), 1..=1000.
        #[arg(long, default_value_t = DEFAULT_BATCH_ROWS)]
        batch: usize,
        /// The seller who owns the imported products.
        #[arg(long, default_value = "legacy-shop")]
        seller: String,
    },
}

/// One import run's settings.
#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub legacy_db: PathBuf,
    pub store: StoreConfig,
    pub data_dir: PathBuf,
    pub batch_rows: usize,
    pub seller_id: String,
}

impl ImportCommand {
    pub fn config(self) -> anyhow::Result<ImportConfig> {
        let ImportCommand::Legacy {
            legacy_db,
            store,
            pg_schema,
            data_dir,
            batch,
            seller,
        } = self;
        anyhow::ensure!(
            (1..=MAX_BATCH_ROWS).contains(&batch),
            "--batch must be 1..={MAX_BATCH_ROWS}"
        );
        let store = match StoreConfig::parse(&store)? {
            StoreConfig::Postgres(pg) => StoreConfig::Postgres(pg.with_schema(pg_schema)),
            embedded => embedded,
        };
        Ok(ImportConfig {
            legacy_db,
            store,
            data_dir,
            batch_rows: batch,
            seller_id: seller,
        })
    }
}

/// Counts of one pass (carried over from the checkpoint when a run resumes one).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub read: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub refused: u64,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct ImportSummary {
    /// The pass so far, including batches done by an earlier, interrupted run.
    pub totals: Totals,
    /// Rows read by this run.
    pub read_this_run: u64,
    /// Whether this run resumed an interrupted pass.
    pub resumed: bool,
    /// The first refusals: `legacy id: code: reason`.
    pub refusals: Vec<String>,
    /// Fields that changed in the legacy shop but have no Ficus command: `legacy id: field`.
    pub drift: Vec<String>,
    pub drift_count: u64,
}

impl ImportSummary {
    pub fn line(&self) -> String {
        let t = &self.totals;
        format!(
            "import legacy: read {}, created {}, updated {}, unchanged {}, refused {}",
            t.read, t.created, t.updated, t.unchanged, t.refused
        )
    }
}

/// Opens the event store as `ficus serve` does for commands (personal fields sealed,
/// upcasters applied), without projections: those catch up when a server starts.
async fn open_store(cfg: &ImportConfig) -> anyhow::Result<Arc<dyn EventStore>> {
    let (raw, keys, idem): (
        Arc<dyn EventStore>,
        Arc<dyn ficus_store::SubjectKeys>,
        Arc<dyn ficus_store::IdempotencyStore>,
    ) = match &cfg.store {
        StoreConfig::Embedded(sqlite) => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
            let store = Arc::new(
                SqliteEventStore::open(cfg.data_dir.join("events.db"), sqlite.clone())
                    .context("opening the event store (is a server running on this data dir?)")?,
            );
            let keys = Arc::new(
                ficus_store::shredding::SqliteSubjectKeys::open(
                    cfg.data_dir.join("subject-keys.db"),
                )
                .context("opening the subject key file")?,
            );
            (store.clone(), keys, store)
        }
        StoreConfig::Postgres(pg) => {
            let store = Arc::new(
                PgEventStore::open(pg.clone())
                    .await
                    .context("opening the PostgreSQL event store")?,
            );
            let keys = Arc::new(ficus_store::shredding::PgSubjectKeys::for_store(&store));
            (store.clone(), keys, store)
        }
    };
    let shredder = ficus_store::Shredder::new(ficus_domain::personal_fields(), keys);
    let shredding = ficus_store::ShreddingStore::wrap(raw, Some(idem), shredder);
    let store: Arc<dyn EventStore> = shredding;
    Ok(ficus_store::UpcastingStore::wrap(
        store,
        ficus_domain::upcasters(),
    ))
}

/// Where a run starts: after `last_legacy_id` of an unfinished pass, with its totals.
struct Resume {
    after_id: Option<String>,
    totals: Totals,
    /// The first refusals of the pass so far, so the final report covers the whole pass.
    refusals: Vec<String>,
    checkpoint_version: u64,
}

async fn read_checkpoint(store: &dyn EventStore) -> anyhow::Result<Resume> {
    let stream = StreamId::new(CHECKPOINT_STREAM)?;
    let version = store.stream_version(&stream).await?;
    let mut resume = Resume {
        after_id: None,
        totals: Totals::default(),
        refusals: Vec::new(),
        checkpoint_version: version,
    };
    if version == 0 {
        return Ok(resume);
    }
    let last = store.read_stream(&stream, version, 1).await?;
    let last = last
        .first()
        .context("the checkpoint stream's last event is missing")?;
    if last.event_type.as_str() == BATCH_DONE_EVENT {
        let id = last.payload["last_legacy_id"]
            .as_str()
            .context("a corrupt import checkpoint: no last_legacy_id")?;
        resume.after_id = Some(id.to_owned());
        resume.totals = serde_json::from_value(last.payload["totals"].clone())
            .context("a corrupt import checkpoint: bad totals")?;
        resume.refusals = serde_json::from_value(last.payload["refusals"].clone())
            .context("a corrupt import checkpoint: bad refusals")?;
        resume.refusals.truncate(REFUSALS_REPORTED_MAX);
    }
    Ok(resume)
}

async fn write_checkpoint(
    store: &dyn EventStore,
    version: &mut u64,
    event_type: &str,
    payload: Value,
) -> anyhow::Result<()> {
    let stream = StreamId::new(CHECKPOINT_STREAM)?;
    let mut event = ficus_store::new_event(EventType::new(event_type)?, payload);
    event.metadata.correlation_id = Some(legacy_acl::IMPORT_CORRELATION_ID.to_owned());
    let events: Vec<NewEvent> = vec![event];
    // At the version read: a second import running at once makes one of them stop here.
    let done = store
        .append(&stream, ExpectedVersion::Exact(*version), events)
        .await
        .context("writing the import checkpoint (is another import running?)")?;
    *version = done.last_version;
    Ok(())
}

/// One row as read: translatable shape, or a refusal made while reading it.
type Row = Result<LegacyProduct, (String, Refusal)>;

/// Reads up to `limit` rows with id > `after` in id order.
fn read_batch(db: &Path, after: Option<&str>, limit: usize) -> anyhow::Result<Vec<Row>> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening the legacy database {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut stmt = conn.prepare(
        "SELECT id, name, description, category, price_cents, currency, stock, updated_at
         FROM products WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![after.unwrap_or(""), limit], |r| {
        let mut cols: Vec<SqlValue> = Vec::with_capacity(8);
        for i in 0..8 {
            cols.push(r.get(i)?);
        }
        Ok(cols)
    })?;
    let mut out = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
    for cols in rows {
        out.push(legacy_row(cols?));
    }
    Ok(out)
}

/// The columns of one row as the legacy record. SQLite stores any type in any column, so old
/// data may hold a number where text belongs: that row is refused, naming the column.
fn legacy_row(cols: Vec<SqlValue>) -> Row {
    let mut cols = cols.into_iter();
    let mut next = || cols.next().unwrap_or(SqlValue::Null);
    let id = match next() {
        SqlValue::Text(t) => t,
        SqlValue::Integer(i) => i.to_string(),
        _ => {
            return Err((
                "?".into(),
                Refusal::MalformedColumn {
                    column: "id",
                    expected: "text",
                },
            ))
        }
    };
    let fail = |column, expected| Err((id.clone(), Refusal::MalformedColumn { column, expected }));
    let text = |v: SqlValue| match v {
        SqlValue::Text(t) => Some(t),
        _ => None,
    };
    let int = |v: SqlValue| match v {
        SqlValue::Integer(i) => Some(i),
        _ => None,
    };
    let Some(name) = text(next()) else {
        return fail("name", "text");
    };
    let Some(description) = text(next()) else {
        return fail("description", "text");
    };
    let Some(category) = text(next()) else {
        return fail("category", "text");
    };
    let Some(price_cents) = int(next()) else {
        return fail("price_cents", "an integer");
    };
    let Some(currency) = text(next()) else {
        return fail("currency", "text");
    };
    let Some(stock) = int(next()) else {
        return fail("stock", "an integer");
    };
    let Some(updated_at) = text(next()) else {
        return fail("updated_at", "text");
    };
    Ok(LegacyProduct {
        id,
        name,
        description,
        category,
        price_cents,
        currency,
        stock,
        updated_at,
    })
}

/// What happened to one row.
enum Outcome {
    Created,
    Updated,
    Unchanged,
    Refused(String),
}

async fn import_row(
    shop: &Shop,
    seller_id: &str,
    row: &LegacyProduct,
    drift: &mut Vec<legacy_acl::Drift>,
) -> anyhow::Result<Outcome> {
    let t = match legacy_acl::translate(row) {
        Ok(t) => t,
        Err(r) => return Ok(Outcome::Refused(format!("{}: {r}", r.code()))),
    };
    let meta = legacy_acl::import_metadata(&row.id);
    let loaded = shop
        .repository()
        .load::<Product>(&t.product_id)
        .await
        .map_err(|e| anyhow::anyhow!("loading product {}: {e}", t.product_id))?;
    if !loaded.state.exists() {
        // Decided on the state just loaded and appended at its version (0: no stream), so a
        // concurrent or repeated creation is refused by the store, never doubled.
        return match shop
            .product_command(&t.product_id, t.create_command(seller_id), &meta, Some(0))
            .await
        {
            Ok(_) => Ok(Outcome::Created),
            Err(e) if e.status() >= 500 => Err(anyhow::anyhow!("creating {}: {e}", t.product_id)),
            Err(e) => Ok(Outcome::Refused(format!("{}: {e}", e.code()))),
        };
    }
    if loaded.state.seller_id() != Some(seller_id) {
        return Ok(Outcome::Refused(format!(
            "product_exists_elsewhere: product {} exists and belongs to another seller",
            t.product_id
        )));
    }
    if loaded.state.is_deleted() {
        return Ok(Outcome::Refused(format!(
            "product_deleted: product {} was deleted on the Ficus side",
            t.product_id
        )));
    }
    let diff = legacy_acl::differences(&loaded.state, &t, seller_id);
    *drift = diff.drift;
    if diff.commands.is_empty() {
        return Ok(Outcome::Unchanged);
    }
    let mut version = loaded.version;
    for cmd in diff.commands {
        match shop
            .product_command(&t.product_id, cmd, &meta, Some(version))
            .await
        {
            Ok(done) => version = done.version,
            Err(e) if e.status() >= 500 => {
                return Err(anyhow::anyhow!("updating {}: {e}", t.product_id))
            }
            Err(e) => return Ok(Outcome::Refused(format!("{}: {e}", e.code()))),
        }
    }
    Ok(Outcome::Updated)
}

/// Runs one import: resumes or starts a pass and goes to the end of the legacy table.
pub async fn run(cfg: ImportConfig) -> anyhow::Result<ImportSummary> {
    anyhow::ensure!(
        (1..=MAX_BATCH_ROWS).contains(&cfg.batch_rows),
        "batch size must be 1..={MAX_BATCH_ROWS}"
    );
    anyhow::ensure!(
        cfg.legacy_db.is_file(),
        "no legacy database at {}",
        cfg.legacy_db.display()
    );
    let abort_after_rows: Option<u64> = std::env::var(ABORT_AFTER_ROWS_ENV)
        .ok()
        .and_then(|v| v.parse().ok());
    let store = open_store(&cfg).await?;
    let shop = Shop::new(Repository::new(store.clone()));
    let resume = read_checkpoint(store.as_ref()).await?;
    let mut version = resume.checkpoint_version;
    let mut summary = ImportSummary {
        totals: resume.totals,
        resumed: resume.after_id.is_some(),
        refusals: resume.refusals,
        ..ImportSummary::default()
    };
    let mut after = resume.after_id;
    loop {
        let db = cfg.legacy_db.clone();
        let from = after.clone();
        let limit = cfg.batch_rows;
        let batch = tokio::task::spawn_blocking(move || read_batch(&db, from.as_deref(), limit))
            .await
            .context("the legacy reader failed")??;
        let Some(last) = batch.last() else { break };
        let last_id = match last {
            Ok(p) => p.id.clone(),
            Err((id, _)) => id.clone(),
        };
        for row in &batch {
            summary.totals.read += 1;
            summary.read_this_run += 1;
            let mut drift = Vec::new();
            let (id, outcome) = match row {
                Ok(p) => (
                    p.id.as_str(),
                    import_row(&shop, &cfg.seller_id, p, &mut drift).await?,
                ),
                Err((id, r)) => (id.as_str(), Outcome::Refused(format!("{}: {r}", r.code()))),
            };
            match outcome {
                Outcome::Created => summary.totals.created += 1,
                Outcome::Updated => summary.totals.updated += 1,
                Outcome::Unchanged => summary.totals.unchanged += 1,
                Outcome::Refused(reason) => {
                    summary.totals.refused += 1;
                    if summary.refusals.len() < REFUSALS_REPORTED_MAX {
                        summary.refusals.push(format!("{id}: {reason}"));
                    }
                }
            }
            for d in drift {
                summary.drift_count += 1;
                if summary.drift.len() < REFUSALS_REPORTED_MAX {
                    summary.drift.push(format!("{id}: {}", d.field()));
                }
            }
            if abort_after_rows == Some(summary.read_this_run) {
                // The crash drill: no checkpoint for this batch's rows done so far.
                std::process::abort();
            }
        }
        // Every command of the batch returned, so its events are durable: now the checkpoint.
        write_checkpoint(
            store.as_ref(),
            &mut version,
            BATCH_DONE_EVENT,
            json!({
                "last_legacy_id": last_id,
                "totals": summary.totals,
                "refusals": summary.refusals,
            }),
        )
        .await?;
        after = Some(last_id);
        if batch.len() < cfg.batch_rows {
            break;
        }
    }
    write_checkpoint(
        store.as_ref(),
        &mut version,
        PASS_DONE_EVENT,
        json!({"totals": summary.totals, "refusals": summary.refusals}),
    )
    .await?;
    Ok(summary)
}
