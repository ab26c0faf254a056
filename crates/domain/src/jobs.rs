//! The reference domain's bulk jobs, fanned out on the `shop` queue:
//!
//! - `reprice_category` (a seller): every product of the seller in a category gets its price
//!   changed by a percentage, each through the product aggregate and its rules (a cut over
//!   50 % or a price over 10 000.00 is refused and that item goes to the dead-letter queue);
//! - `export_orders` (an admin): one item per UTC day writes that day's placed orders as CSV,
//!   and the fan-in joins them into one file whose path is the job's result;
//! - `notify_buyers` (the product's seller, or an admin): one notification event per customer
//!   who ever ordered the product;
//! - `sample_report` (an admin): no items; the fan-in writes a report of `size_bytes` bytes
//!   (the caller's `preface`, then numbered lines) into the blob store. It is how a newcomer,
//!   and the tests, see a large parameter and a large result travel by reference.
//!
//! Large payloads travel by reference (the claim check, docs/adr/0013): parameters and item
//! payloads over the configured size are stored in the blob store at submission, and results
//! (the export's CSV, the sample report) are written there, so that workers on different
//! machines sharing the blob store see each other's parts.
//!
//! Every item is idempotent, because a re-delivered item (its worker crashed after the effect,
//! before the ack) runs again: a repeated reprice to the same target price decides no event;
//! an export day rewrites the same file; a notification goes to its own stream with
//! `expected_version = no_stream`, so a second attempt finds it there and stops.

use std::sync::Arc;

use async_trait::async_trait;
use ficus_core::{EventType, ExpectedVersion, Metadata, NewEvent, StreamId};
use ficus_runtime::claim_check::ClaimCheck;
use ficus_runtime::{JobError, JobHandler};
use ficus_store::blobs::{BlobError, REF_BATCH_PARAMS, REF_BATCH_PART, REF_BATCH_RESULT};
use ficus_store::{Batch, EventStore, Job, JobQueue, NewBatch, NewJob, StoreError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::money::Money;
use crate::product::ProductCommand;
use crate::read_models as rm;
use crate::read_side::ShopReadSide;
use crate::service::{Actor, Shop};

/// The queue the shop's bulk jobs run on.
pub const SHOP_QUEUE: &str = "shop";
/// Attempts before an item goes to the dead-letter queue.
pub const ITEM_MAX_ATTEMPTS: u32 = 8;
/// Longest date range an export may cover, in days.
pub const EXPORT_MAX_DAYS: i64 = 366;
/// Longest notification text, in characters.
pub const MESSAGE_MAX_CHARS: usize = 500;
/// Largest `sample_report`, in bytes.
pub const SAMPLE_REPORT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Bytes a result is streamed into the blob store in: what a fan-in holds at a time.
pub const RESULT_CHUNK_BYTES: usize = ficus_store::blobs::BLOB_CHUNK_BYTES;

/// Why a bulk job was not created.
#[derive(Debug, thiserror::Error)]
pub enum BulkJobError {
    /// Unknown kind or bad parameters. (400 `invalid_job`)
    #[error("{0}")]
    Invalid(String),
    /// The caller may not start this job. (403 `forbidden`)
    #[error("{0}")]
    Forbidden(String),
    /// A referenced resource does not exist. (404 `product_not_found`)
    #[error("{0}")]
    NotFound(String),
    /// The job would exceed the bulk job item limit. (422 `too_many_items`)
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Storing a claim-checked parameter failed. (per [`BlobError`])
    #[error(transparent)]
    Blob(#[from] BlobError),
}

/// Plans bulk jobs: reads what they cover from the read models and creates the batch.
#[derive(Clone)]
pub struct BulkJobs {
    jobs: Arc<dyn JobQueue>,
    read: ShopReadSide,
    /// Where parameters and payloads over the claim-check size go.
    claims: Option<ClaimCheck>,
}

fn text_param<'a>(params: &'a Value, key: &str) -> Result<&'a str, BulkJobError> {
    params[key]
        .as_str()
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| BulkJobError::Invalid(format!("params.{key} must be a non-empty string")))
}

fn item(kind: &str, payload: Value) -> NewJob {
    NewJob {
        max_attempts: ITEM_MAX_ATTEMPTS,
        ..NewJob::new(SHOP_QUEUE, kind, payload)
    }
}

fn too_many(n: usize) -> BulkJobError {
    BulkJobError::TooLarge(format!(
        "the job would have more than {} items ({n}); narrow it down",
        rm::PLAN_MAX_ROWS
    ))
}

impl BulkJobs {
    pub fn new(jobs: Arc<dyn JobQueue>, read: ShopReadSide) -> Self {
        Self {
            jobs,
            read,
            claims: None,
        }
    }

    /// Parameters and item payloads over the claim-check size travel by reference.
    pub fn with_claim_check(mut self, claims: ClaimCheck) -> Self {
        self.claims = Some(claims);
        self
    }

    pub fn queue(&self) -> &Arc<dyn JobQueue> {
        &self.jobs
    }

    /// Creates a bulk job of `kind` with `params` for `actor`; its items are enqueued at once.
    pub async fn submit(
        &self,
        actor: &Actor,
        kind: &str,
        params: Value,
        now_ms: i64,
    ) -> Result<Batch, BulkJobError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.submit_with_id(actor, &id, kind, params, now_ms).await
    }

    /// [`Self::submit`] under a caller-chosen batch id (an idempotency key's effect id: the
    /// batch table refuses a second batch with that id).
    pub async fn submit_with_id(
        &self,
        actor: &Actor,
        id: &str,
        kind: &str,
        params: Value,
        now_ms: i64,
    ) -> Result<Batch, BulkJobError> {
        // Who may start the job is checked before what it asks for (a 403 over a 400).
        require_role(kind, actor)?;
        let (items, fan_in) = match check_params(kind, &params)? {
            JobParams::Reprice { category, percent } => {
                self.plan_reprice(actor, category, percent).await?
            }
            JobParams::Export { from_day, to_day } => plan_export(from_day, to_day),
            JobParams::Notify {
                product_id,
                message,
            } => self.plan_notify(actor, product_id, message).await?,
            JobParams::SampleReport {
                size_bytes,
                preface,
            } => (
                Vec::new(),
                json!({"size_bytes": size_bytes, "preface": preface}),
            ),
        };
        let (mut items, mut fan_in, mut params) = (items, fan_in, params);
        if let Some(claims) = &self.claims {
            // Referenced by the batch before the batch exists: a crash before it is created
            // leaves references the collector releases (their batch is missing).
            let check = |v: Value| claims.check_in(v, REF_BATCH_PARAMS, id);
            for it in &mut items {
                it.payload = check(std::mem::take(&mut it.payload)).await?;
            }
            fan_in = check(fan_in).await?;
            params = check(params).await?;
        }
        // Beside the parameters or their reference: who may see the job.
        if let Value::Object(m) = &mut params {
            m.insert("submitted_by".into(), Value::String(actor.user_id.clone()));
        }
        let batch = NewBatch {
            id: id.to_owned(),
            queue: SHOP_QUEUE.into(),
            kind: kind.into(),
            params,
            fan_in: Some(item(&format!("{kind}.finish"), fan_in)),
        };
        Ok(self.jobs.create_batch(batch, items, now_ms).await?)
    }

    async fn plan_reprice(
        &self,
        actor: &Actor,
        category: String,
        percent: i64,
    ) -> Result<(Vec<NewJob>, Value), BulkJobError> {
        let seller = actor.user_id.clone();
        let (products, _) = self
            .read
            .seller_products_in_category(seller, category)
            .await?;
        if products.len() > rm::PLAN_MAX_ROWS as usize {
            return Err(too_many(products.len()));
        }
        let items = products
            .into_iter()
            .map(|(id, price)| {
                item(
                    "reprice_category.item",
                    json!({
                        "product_id": id,
                        "actor_id": actor.user_id,
                        "new_price_minor": repriced(price, percent),
                    }),
                )
            })
            .collect();
        Ok((items, json!({})))
    }

    async fn plan_notify(
        &self,
        actor: &Actor,
        product_id: String,
        message: String,
    ) -> Result<(Vec<NewJob>, Value), BulkJobError> {
        let (product, _) = self.read.get_product(product_id.clone()).await?;
        let Some(product) = product.filter(|p| !p.deleted) else {
            return Err(BulkJobError::NotFound(format!("no product {product_id}")));
        };
        if product.seller_id != actor.user_id && !actor.has_role("admin") {
            return Err(BulkJobError::Forbidden(
                "only the product's seller or an admin notifies its buyers".into(),
            ));
        }
        let (buyers, _) = self.read.buyers_of_product(product_id.clone()).await?;
        if buyers.len() > rm::PLAN_MAX_ROWS as usize {
            return Err(too_many(buyers.len()));
        }
        let items = buyers
            .into_iter()
            .map(|customer| {
                item(
                    "notify_buyers.item",
                    json!({"customer_id": customer, "product_id": product_id, "message": message}),
                )
            })
            .collect();
        Ok((items, json!({})))
    }
}

/// A bulk job's parameters once checked: every bound below holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobParams {
    /// `reprice_category`: a non-empty category, `percent` non-zero in -100..=1000.
    Reprice { category: String, percent: i64 },
    /// `export_orders`: day numbers, `from_day <= to_day < from_day + EXPORT_MAX_DAYS`.
    Export { from_day: i64, to_day: i64 },
    /// `notify_buyers`: a non-empty product id and message of at most MESSAGE_MAX_CHARS.
    Notify { product_id: String, message: String },
    /// `sample_report`: `size_bytes` in 1..=SAMPLE_REPORT_MAX_BYTES, the preface no longer.
    SampleReport { size_bytes: u64, preface: String },
}

/// The role `kind` asks of its submitter, checked before its parameters.
fn require_role(kind: &str, actor: &Actor) -> Result<(), BulkJobError> {
    let (role, why) = match kind {
        "reprice_category" => ("seller", "only sellers reprice their products"),
        "export_orders" => ("admin", "only admins export orders"),
        "sample_report" => ("admin", "only admins write sample reports"),
        // notify_buyers: the product's seller or an admin, known once the product is read.
        _ => return Ok(()),
    };
    if actor.has_role(role) {
        Ok(())
    } else {
        Err(BulkJobError::Forbidden(why.into()))
    }
}

/// Checks a bulk job's kind and parameters without reading anything: the part of a
/// submission that depends on the request alone (and what the `bulk_params` fuzz target
/// drives). Refusals are [`BulkJobError::Invalid`].
pub fn check_params(kind: &str, params: &Value) -> Result<JobParams, BulkJobError> {
    match kind {
        "reprice_category" => {
            let category = text_param(params, "category")?.to_owned();
            let percent = params["percent"]
                .as_i64()
                .filter(|p| (-100..=1000).contains(p) && *p != 0)
                .ok_or_else(|| {
                    BulkJobError::Invalid(
                        "params.percent must be a non-zero integer in -100..=1000".into(),
                    )
                })?;
            Ok(JobParams::Reprice { category, percent })
        }
        "export_orders" => {
            let day = |k: &str| {
                text_param(params, k).and_then(|s| {
                    ficus_core::time::parse_date(s).ok_or_else(|| {
                        BulkJobError::Invalid(format!("params.{k} must be a date YYYY-MM-DD"))
                    })
                })
            };
            let (from_day, to_day) = (day("from")?, day("to")?);
            if to_day < from_day || to_day - from_day >= EXPORT_MAX_DAYS {
                return Err(BulkJobError::Invalid(format!(
                    "from must not be after to, and the range at most {EXPORT_MAX_DAYS} days"
                )));
            }
            Ok(JobParams::Export { from_day, to_day })
        }
        "notify_buyers" => {
            let product_id = text_param(params, "product_id")?.to_owned();
            let message = text_param(params, "message")?.to_owned();
            if message.chars().nth(MESSAGE_MAX_CHARS).is_some() {
                return Err(BulkJobError::Invalid(format!(
                    "params.message must be at most {MESSAGE_MAX_CHARS} characters"
                )));
            }
            Ok(JobParams::Notify {
                product_id,
                message,
            })
        }
        "sample_report" => {
            let size_bytes = params["size_bytes"]
                .as_u64()
                .filter(|n| (1..=SAMPLE_REPORT_MAX_BYTES).contains(n))
                .ok_or_else(|| {
                    BulkJobError::Invalid(format!(
                        "params.size_bytes must be an integer in 1..={SAMPLE_REPORT_MAX_BYTES}"
                    ))
                })?;
            let preface = match &params["preface"] {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                _ => {
                    return Err(BulkJobError::Invalid(
                        "params.preface must be a string".into(),
                    ))
                }
            };
            if preface.len() as u64 > size_bytes {
                return Err(BulkJobError::Invalid(
                    "params.preface must not be longer than size_bytes".into(),
                ));
            }
            Ok(JobParams::SampleReport {
                size_bytes,
                preface,
            })
        }
        other => Err(BulkJobError::Invalid(format!(
            "unknown job kind {other:?}; one of reprice_category, export_orders, notify_buyers, \
             sample_report"
        ))),
    }
}

/// One item per UTC day of an export, and the fan-in's range.
pub fn plan_export(from_day: i64, to_day: i64) -> (Vec<NewJob>, Value) {
    let items = (from_day..=to_day)
        .map(|d| item("export_orders.item", json!({ "day": d })))
        .collect();
    (items, json!({ "from_day": from_day, "to_day": to_day }))
}

/// A price in minor units changed by `percent`, rounded to the nearest cent, half away from
/// zero, in integers.
pub fn repriced(price_minor: i64, percent: i64) -> i64 {
    let scaled = price_minor as i128 * (100 + percent) as i128;
    let rounded = (scaled + 50 * scaled.signum()) / 100;
    // Saturates rather than wraps; the product's own rules refuse a price that large.
    rounded.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Runs the shop's job items and fan-ins.
pub struct ShopJobHandler {
    pub shop: Shop,
    pub store: Arc<dyn EventStore>,
    pub jobs: Arc<dyn JobQueue>,
    /// The read models export items read (the orders of a day).
    pub read: ShopReadSide,
    /// Where exports (their day parts and the joined file) and other results are written.
    pub claims: ClaimCheck,
}

fn permanent(e: impl std::fmt::Display) -> JobError {
    JobError::Permanent(e.to_string())
}

fn batch_of(job: &Job) -> Result<&str, JobError> {
    job.batch_id
        .as_deref()
        .or_else(|| job.payload["batch_id"].as_str())
        .ok_or_else(|| permanent("job carries no batch id"))
}

fn job_metadata(job: &Job, user: Option<&str>) -> Metadata {
    Metadata {
        correlation_id: job.batch_id.as_ref().map(|b| format!("job:{b}")),
        causation_id: Some(format!("job-item:{}", job.id)),
        user_id: user.map(str::to_owned),
        extra: Default::default(),
    }
}

/// A blob failure as a job failure: an outage is retried, anything else will not improve.
fn blob_failure(e: BlobError) -> JobError {
    match e {
        BlobError::Unavailable(m) => JobError::Retry(m),
        other => permanent(other),
    }
}

/// The content of a `sample_report` of `size` bytes: `preface`, then the lines
/// `000000000000000\n`, `000000000000001\n`, ... (16 bytes each), cut at `size`.
fn sample_report_chunk(preface: &[u8], size: u64, offset: u64, out: &mut Vec<u8>) {
    out.clear();
    let mut at = offset;
    while out.len() < RESULT_CHUNK_BYTES && at < size {
        if (at as usize) < preface.len() {
            let end = preface
                .len()
                .min(at as usize + RESULT_CHUNK_BYTES - out.len());
            out.extend_from_slice(&preface[at as usize..end]);
            at = end as u64;
            continue;
        }
        let rel = at - preface.len() as u64;
        let line = format!("{:015}\n", rel / 16);
        let from = (rel % 16) as usize;
        let take = (16 - from)
            .min(RESULT_CHUNK_BYTES - out.len())
            .min((size - at) as usize);
        out.extend_from_slice(&line.as_bytes()[from..from + take]);
        at += take as u64;
    }
}

impl ShopJobHandler {
    async fn reprice(&self, job: &Job) -> Result<(), JobError> {
        let p = &job.payload;
        let (Some(product), Some(actor), Some(price)) = (
            p["product_id"].as_str(),
            p["actor_id"].as_str(),
            p["new_price_minor"].as_i64(),
        ) else {
            return Err(permanent("malformed reprice item"));
        };
        let cmd = ProductCommand::UpdatePrice {
            actor_id: actor.to_owned(),
            new_price: Money::from_minor(price),
            at_ms: ficus_store::now_ms(),
        };
        match self
            .shop
            .product_command(product, cmd, &job_metadata(job, Some(actor)), None)
            .await
        {
            Ok(_) => Ok(()),
            // A refusal by the rules will not change on retry; a conflict or an outage may.
            Err(e) if (400..500).contains(&e.status()) && e.status() != 409 => Err(permanent(e)),
            Err(e) => Err(JobError::Retry(e.to_string())),
        }
    }

    /// The referrer id of one day's part of an export.
    fn day_part(batch: &str, day: i64) -> String {
        format!("{batch}/{}", ficus_core::time::format_date(day))
    }

    async fn export_day(&self, job: &Job) -> Result<(), JobError> {
        let batch = batch_of(job)?.to_owned();
        let day = job.payload["day"]
            .as_i64()
            .ok_or_else(|| permanent("malformed export item"))?;
        let (rows, _) = self
            .read
            .placed_orders_on_day(day)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        let mut csv = String::new();
        for o in rows {
            csv.push_str(&format!(
                "{},{},{},{},{}\n",
                o.id,
                o.customer_id,
                Money::from_minor(o.total_minor).to_decimal_string(),
                o.currency.unwrap_or_default(),
                ficus_core::time::format_rfc3339_ms(o.placed_at_ms)
            ));
        }
        // In the blob store, not this worker's disk: the fan-in may run on another machine.
        // A re-delivered item stores the day again; the fan-in takes the newest.
        let mut bytes = csv.as_bytes();
        self.claims
            .put_referenced(&mut bytes, REF_BATCH_PART, &Self::day_part(&batch, day))
            .await
            .map(|_| ())
            .map_err(blob_failure)
    }

    /// Whether the batch's result is recorded already (a re-delivered fan-in whose first run
    /// set it, then lost its ack): its parts may be released, so it must not run again.
    async fn has_result(&self, batch: &str) -> Result<bool, JobError> {
        let b = self
            .jobs
            .get_batch(batch)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        Ok(b.and_then(|b| b.result)
            .is_some_and(|r| r.get("blob").is_some()))
    }

    /// Stores what `write` writes as the batch's result blob, streamed through a bounded pipe
    /// (never the whole result in memory), and references it from the batch. Answers the
    /// blob's reference and what `write` answered.
    async fn store_result<T: Send + 'static>(
        &self,
        batch: &str,
        write: impl std::future::Future<Output = Result<T, JobError>> + Send + 'static,
        mut pipe: tokio::io::DuplexStream,
    ) -> Result<(Value, T), JobError> {
        let writer = tokio::spawn(write);
        let put = self.claims.blobs().put(&mut pipe).await;
        // Ends a writer still blocked on the pipe after a failed put.
        drop(pipe);
        let written = writer.await.map_err(|e| JobError::Retry(e.to_string()))?;
        // A failed put first (the writer then failed only for the closed pipe); then a failed
        // writer: the put stored a cut-short stream, unreferenced (so collected later), that
        // must not become the result.
        let info = put.map_err(blob_failure)?;
        let written = written?;
        self.claims
            .refs()
            .add(&ficus_store::blobs::BlobRef::new(
                info.id.clone(),
                REF_BATCH_RESULT,
                batch,
                ficus_store::now_ms(),
            ))
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        Ok((info.reference(), written))
    }

    async fn export_finish(&self, job: &Job) -> Result<(), JobError> {
        let batch = batch_of(job)?.to_owned();
        let (Some(from), Some(to)) = (
            job.payload["from_day"].as_i64(),
            job.payload["to_day"].as_i64(),
        ) else {
            return Err(permanent("malformed export fan-in"));
        };
        if self.has_result(&batch).await? {
            return Ok(());
        }
        // The newest part of each day. A day whose item died has none: the export says so by
        // its missing rows, and the job's counts show the dead item.
        let mut parts = Vec::new();
        for day in from..=to {
            let refs = self
                .claims
                .refs()
                .of_referrer(REF_BATCH_PART, &Self::day_part(&batch, day))
                .await
                .map_err(|e| JobError::Retry(e.to_string()))?;
            if let Some(newest) = refs.into_iter().next_back() {
                parts.push(newest.blob);
            }
        }
        let (pipe, mut sink) = tokio::io::duplex(RESULT_CHUNK_BYTES);
        let blobs = self.claims.blobs().clone();
        let write = async move {
            let header = b"order_id,customer_id,total,currency,placed_at\n";
            let io = |e: std::io::Error| JobError::Retry(e.to_string());
            sink.write_all(header).await.map_err(io)?;
            let mut rows = 0u64;
            let mut buf = vec![0u8; RESULT_CHUNK_BYTES];
            for id in parts {
                let mut part = blobs.get(&id).await.map_err(blob_failure)?;
                loop {
                    let n = part
                        .read(&mut buf)
                        .await
                        .map_err(|e| blob_failure(e.into()))?;
                    if n == 0 {
                        break;
                    }
                    rows += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                    sink.write_all(&buf[..n]).await.map_err(io)?;
                }
            }
            sink.shutdown().await.map_err(io)?;
            Ok(rows)
        };
        let (blob, rows) = self.store_result(&batch, write, pipe).await?;
        let result = json!({"blob": blob, "rows": rows, "days_missing": job.payload["dead"]});
        self.jobs
            .set_batch_result(&batch, result)
            .await
            .map_err(|e| JobError::Retry(e.to_string()))?;
        // The days are in the result now. A crash before this leaves them to the collector.
        for day in from..=to {
            let _ = self
                .claims
                .refs()
                .release(REF_BATCH_PART, &Self::day_part(&batch, day))
                .await;
        }
        Ok(())
    }

    async fn sample_report(&self, job: &Job) -> Result<(), JobError> {
        let batch = batch_of(job)?.to_owned();
        let (Some(size), Some(preface)) = (
            job.payload["size_bytes"].as_u64(),
            job.payload["preface"].as_str(),
        ) else {
            return Err(permanent("malformed sample report fan-in"));
        };
        if size > SAMPLE_REPORT_MAX_BYTES || preface.len() as u64 > size {
            return Err(permanent("sample report out of bounds"));
        }
        if self.has_result(&batch).await? {
            return Ok(());
        }
        let preface = preface.as_bytes().to_vec();
        let (pipe, mut sink) = tokio::io::duplex(RESULT_CHUNK_BYTES);
        let write = async move {
            let io = |e: std::io::Error| JobError::Retry(e.to_string());
            let mut chunk = Vec::with_capacity(RESULT_CHUNK_BYTES);
            let mut offset = 0u64;
            while offset < size {
                sample_report_chunk(&preface, size, offset, &mut chunk);
                sink.write_all(&chunk).await.map_err(io)?;
                offset += chunk.len() as u64;
            }
            sink.shutdown().await.map_err(io)?;
            Ok(())
        };
        let (blob, ()) = self.store_result(&batch, write, pipe).await?;
        let result = json!({"blob": blob, "size_bytes": size});
        self.jobs
            .set_batch_result(&batch, result)
            .await
            .map(|_| ())
            .map_err(|e| JobError::Retry(e.to_string()))
    }

    async fn notify(&self, job: &Job) -> Result<(), JobError> {
        let batch = batch_of(job)?;
        let p = &job.payload;
        let (Some(customer), Some(product), Some(message)) = (
            p["customer_id"].as_str(),
            p["product_id"].as_str(),
            p["message"].as_str(),
        ) else {
            return Err(permanent("malformed notify item"));
        };
        let stream =
            StreamId::new(format!("notification-{batch}-{customer}")).map_err(permanent)?;
        let event = NewEvent {
            id: uuid::Uuid::now_v7(),
            event_type: EventType::new("CustomerNotified").expect("valid event type"),
            schema_version: 1,
            metadata: job_metadata(job, None),
            payload: json!({"customer_id": customer, "product_id": product, "message": message}),
        };
        match self
            .store
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
        {
            // Already there: an earlier attempt sent it before its ack was lost.
            Ok(_) | Err(StoreError::WrongExpectedVersion { .. }) => Ok(()),
            Err(e) => Err(JobError::Retry(e.to_string())),
        }
    }

    async fn record_counts(&self, job: &Job) -> Result<(), JobError> {
        let batch = batch_of(job)?;
        let result = json!({"done": job.payload["done"], "dead": job.payload["dead"]});
        self.jobs
            .set_batch_result(batch, result)
            .await
            .map(|_| ())
            .map_err(|e| JobError::Retry(e.to_string()))
    }
}

#[async_trait]
impl JobHandler for ShopJobHandler {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        match job.kind.as_str() {
            "reprice_category.item" => self.reprice(job).await,
            "export_orders.item" => self.export_day(job).await,
            "export_orders.finish" => self.export_finish(job).await,
            "sample_report.finish" => self.sample_report(job).await,
            "notify_buyers.item" => self.notify(job).await,
            "reprice_category.finish" | "notify_buyers.finish" => self.record_counts(job).await,
            other => Err(permanent(format!("unknown job kind {other:?}"))),
        }
    }
}
