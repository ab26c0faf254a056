//! The one mapping from failures to HTTP answers: a status, a machine-readable `code` and a
//! human `message`, as JSON.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ficus_domain::service::ShopError;
use ficus_runtime::WaitError;
use ficus_store::StoreError;
use serde_json::{json, Map, Value};

/// Seconds a client is told to wait after a 503.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra machine-readable fields merged into the body (e.g. `actual_version`).
    pub extra: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message);
        e.retry_after_secs = Some(RETRY_AFTER_SECS);
        e
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, message = %self.message, "request failed");
        }
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.extra);
        let mut resp = (self.status, axum::Json(Value::Object(body))).into_response();
        if let Some(s) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::WrongExpectedVersion { actual, .. } => ApiError::new(
                StatusCode::CONFLICT,
                "wrong_expected_version",
                e.to_string(),
            )
            .with("actual_version", actual),
            StoreError::Invalid(m) => ApiError::bad_request("invalid_request", m),
            StoreError::Unavailable(m) => ApiError::unavailable("store_unavailable", m),
            StoreError::StorageFault(m) => ApiError::unavailable("storage_unavailable", m),
            StoreError::OutcomeUnknown(m) => ApiError::unavailable("storage_outcome_unknown", m),
            StoreError::Corrupt(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)
            }
            StoreError::ClaimLost => {
                let mut e =
                    ApiError::new(StatusCode::CONFLICT, "request_in_progress", e.to_string());
                e.retry_after_secs = Some(RETRY_AFTER_SECS);
                e
            }
        }
    }
}

impl From<ShopError> for ApiError {
    fn from(e: ShopError) -> Self {
        if let ShopError::Store(s) = e {
            return s.into();
        }
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut err = ApiError::new(status, e.code(), e.to_string());
        if let ShopError::Conflict { actual, .. } = e {
            err = err.with("actual_version", actual);
        }
        err
    }
}

impl From<WaitError> for ApiError {
    fn from(e: WaitError) -> Self {
        match e {
            WaitError::Lagging { checkpoint, wanted } => {
                ApiError::unavailable("read_model_lagging", e.to_string())
                    .with("position", checkpoint)
                    .with("min_position", wanted)
            }
            WaitError::Stopped => ApiError::unavailable("read_model_stopped", e.to_string()),
        }
    }
}
