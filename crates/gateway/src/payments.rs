//! The payment service over HTTP, both sides:
//!
//! - [`HttpPayments`], the fulfilment saga's client of an external payment service: every
//!   call goes through a circuit breaker (an open breaker fails fast, no call is made), is
//!   bounded by a per-call timeout, and transient failures (5xx, transport errors, timeouts)
//!   are retried with exponential backoff and full jitter inside a retry budget, so a payment
//!   outage neither hangs the saga nor multiplies the load on the service;
//! - [`service`], a small payment service (`ficus debug payments --listen ADDR
//!   [--fail-rate X]`): charges and refunds idempotent by key on a [`PaymentLedger`], with an
//!   injected failure rate of charges, and a `GET /v1/charges` view that tests count effects with.
//!
//! The protocol: `POST /v1/charges {key, customer_id, amount, currency}` → `200
//! {charge_id}` (the same for a repeated key), `402` declined; `POST /v1/refunds
//! {charge_key}` → `200`; `GET /v1/charges` → `{effects, charge_calls, charges: {key:
//! charge|null}}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use ficus_domain::fulfilment::{PaymentError, PaymentLedger, Payments};
use ficus_domain::money::{Currency, Money};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::proxy::resilience::{Breaker, BreakerConfig, RetryBudget};

/// Largest answer read from the payment service, in bytes.
pub const PAYMENT_ANSWER_MAX_BYTES: usize = 64 * 1024;

/// How the payment client calls the service.
#[derive(Debug, Clone)]
pub struct PaymentClientConfig {
    /// `http://host:port` of the payment service.
    pub base_url: String,
    /// Longest one HTTP call may take.
    pub call_timeout: Duration,
    /// Extra attempts after the first, per saga step attempt.
    pub retries: u32,
    /// Ceiling of the first retry's pause; doubles per retry, full jitter.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Retries allowed per call sent, over time.
    pub retry_budget_ratio: f64,
    pub breaker: BreakerConfig,
}

impl PaymentClientConfig {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            call_timeout: Duration::from_secs(2),
            retries: 2,
            retry_base: Duration::from_millis(20),
            retry_cap: Duration::from_millis(500),
            retry_budget_ratio: 0.2,
            breaker: BreakerConfig {
                window: 20,
                min_calls: 5,
                failure_rate: 0.5,
                slow_call_ms: 2_000,
                slow_rate: 1.0,
                open_ms: 2_000,
                half_open_probes: 1,
            },
        }
    }
}

/// The payment client of the fulfilment saga.
pub struct HttpPayments {
    config: PaymentClientConfig,
    client: Client<HttpConnector, Body>,
    breaker: Breaker,
    budget: RetryBudget,
    /// Calls refused by the open breaker without reaching the service.
    pub short_circuited: AtomicU64,
}

/// One call's failure: whether it is worth retrying.
enum CallError {
    Declined(String),
    Transient(String),
}

impl HttpPayments {
    pub fn new(config: PaymentClientConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(8)
            .build(connector);
        Self {
            breaker: Breaker::new(config.breaker.clone()),
            budget: RetryBudget::new(config.retry_budget_ratio),
            config,
            client,
            short_circuited: AtomicU64::new(0),
        }
    }

    /// `closed`, `open` or `half_open`.
    pub fn breaker_state(&self) -> &'static str {
        self.breaker.mode().name()
    }

    pub fn breaker_opened(&self) -> u64 {
        self.breaker.times_opened()
    }

    /// One HTTP call through the breaker, within the call timeout.
    async fn call_once(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let admission = match self.breaker.admit(Instant::now()) {
            Ok(a) => a,
            Err(wait) => {
                self.short_circuited.fetch_add(1, Ordering::Relaxed);
                return Err(CallError::Transient(format!(
                    "circuit open for {} ms more",
                    wait.as_millis()
                )));
            }
        };
        let started = Instant::now();
        let request = Request::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.config.base_url))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .map_err(|e| CallError::Transient(e.to_string()));
        let outcome = match request {
            Err(e) => Err(e),
            Ok(request) => {
                match tokio::time::timeout(self.config.call_timeout, async {
                    let resp = self
                        .client
                        .request(request)
                        .await
                        .map_err(|e| CallError::Transient(format!("transport: {e}")))?;
                    let status = resp.status();
                    let bytes =
                        http_body_util::Limited::new(resp.into_body(), PAYMENT_ANSWER_MAX_BYTES)
                            .collect()
                            .await
                            .map_err(|e| CallError::Transient(format!("reading the answer: {e}")))?
                            .to_bytes();
                    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    match status.as_u16() {
                        200..=299 => Ok(value),
                        402 | 409 | 422 => Err(CallError::Declined(
                            value["message"].as_str().unwrap_or("declined").to_owned(),
                        )),
                        s => Err(CallError::Transient(format!(
                            "payment service answered {s}"
                        ))),
                    }
                })
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(CallError::Transient(format!(
                        "no answer in {} ms",
                        self.config.call_timeout.as_millis()
                    ))),
                }
            }
        };
        // A decline is the service working: not a failure for the breaker.
        let failed = matches!(outcome, Err(CallError::Transient(_)));
        self.breaker
            .record(admission, failed, started.elapsed(), Instant::now());
        outcome
    }

    /// The call, retried on transient failures within the retry count and budget.
    async fn call(&self, path: &str, body: Value) -> Result<Value, PaymentError> {
        self.budget.deposit();
        let mut failures = 0u32;
        loop {
            match self.call_once(path, &body).await {
                Ok(v) => return Ok(v),
                Err(CallError::Declined(m)) => return Err(PaymentError::Declined(m)),
                Err(CallError::Transient(m)) => {
                    if failures >= self.config.retries || !self.budget.withdraw() {
                        return Err(PaymentError::Unavailable(m));
                    }
                    tokio::time::sleep(ficus_runtime::backoff::retry_pause(
                        failures,
                        self.config.retry_base,
                        self.config.retry_cap,
                    ))
                    .await;
                    failures += 1;
                }
            }
        }
    }
}

#[async_trait]
impl Payments for HttpPayments {
    async fn charge(
        &self,
        key: &str,
        customer_id: &str,
        amount: Money,
        currency: &Currency,
    ) -> Result<String, PaymentError> {
        let body = json!({"key": key, "customer_id": customer_id,
                          "amount": amount.to_decimal_string(), "currency": currency.as_str()});
        let answer = self.call("/v1/charges", body).await?;
        answer["charge_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| PaymentError::Unavailable("answer without charge_id".into()))
    }

    async fn refund(&self, charge_key: &str) -> Result<(), PaymentError> {
        self.call("/v1/refunds", json!({ "charge_key": charge_key }))
            .await
            .map(|_| ())
    }
}

/// The debug payment service's state.
#[derive(Clone)]
pub struct PaymentService {
    pub ledger: PaymentLedger,
    /// Share (0..=1) of charge calls answered 503 before any effect, as `f64` bits. Refunds
    /// do not fail on purpose: a failing service still lets compensations through once its
    /// caller's breaker lets them.
    fail_rate: Arc<AtomicU64>,
    charge_calls: Arc<AtomicU64>,
}

impl PaymentService {
    pub fn new(fail_rate: f64) -> Self {
        let s = Self {
            ledger: PaymentLedger::default(),
            fail_rate: Arc::new(AtomicU64::new(0)),
            charge_calls: Arc::new(AtomicU64::new(0)),
        };
        s.set_fail_rate(fail_rate);
        s
    }

    /// Changes the share of charges failed on purpose (a live service recovering).
    pub fn set_fail_rate(&self, rate: f64) {
        self.fail_rate
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    fn fail_rate(&self) -> f64 {
        f64::from_bits(self.fail_rate.load(Ordering::Relaxed))
    }
}

/// The payment service's routes.
pub fn service(state: PaymentService) -> Router {
    Router::new()
        .route("/v1/charges", post(charge).get(list))
        .route("/v1/refunds", post(refund))
        .layer(axum::extract::DefaultBodyLimit::max(
            PAYMENT_ANSWER_MAX_BYTES,
        ))
        .with_state(state)
}

#[derive(Deserialize)]
struct ChargeDto {
    key: String,
    customer_id: String,
    amount: String,
    currency: String,
}

#[derive(Deserialize)]
struct RefundDto {
    charge_key: String,
}

fn failing(st: &PaymentService) -> Option<Response> {
    (rand::random::<f64>() < st.fail_rate()).then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"code": "injected_failure", "message": "the payment service is failing on purpose"})),
        )
            .into_response()
    })
}

fn refused(e: PaymentError) -> Response {
    let status = match e {
        PaymentError::Declined(_) => StatusCode::PAYMENT_REQUIRED,
        PaymentError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (
        status,
        Json(json!({"code": "payment_refused", "message": e.to_string()})),
    )
        .into_response()
}

async fn charge(State(st): State<PaymentService>, Json(dto): Json<ChargeDto>) -> Response {
    st.charge_calls.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = failing(&st) {
        return r;
    }
    let Ok(amount) = Money::parse_decimal(&dto.amount) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": "invalid_field", "message": "amount must be a decimal"})),
        )
            .into_response();
    };
    match st
        .ledger
        .charge(&dto.key, &dto.customer_id, amount, &dto.currency)
    {
        Ok(c) => Json(json!({"charge_id": c.charge_id})).into_response(),
        Err(e) => refused(e),
    }
}

async fn refund(State(st): State<PaymentService>, Json(dto): Json<RefundDto>) -> Response {
    match st.ledger.refund(&dto.charge_key) {
        Ok(()) => Json(json!({"refunded": dto.charge_key})).into_response(),
        Err(e) => refused(e),
    }
}

async fn list(State(st): State<PaymentService>) -> Response {
    Json(json!({
        "effects": st.ledger.effects(),
        "charge_calls": st.charge_calls.load(Ordering::Relaxed),
        "charges": st.ledger.all(),
    }))
    .into_response()
}
