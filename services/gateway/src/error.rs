//! API errors: `{"error": {"code", "message"}}` with the status of docs/api.md, mapped from
//! validation failures and from any gRPC status of the services.

use axum::{
    Json,
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use parley_kit::{ErrorCode, domain::Invalid};

/// An error answered to a client (HTTP body or WebSocket `error` frame).
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds, for `rate_limited` and `unavailable` (the `Retry-After` header).
    pub retry_after: Option<u64>,
}

/// `Retry-After` of an `unavailable` answer: a dependency down or overloaded, retry soon.
const UNAVAILABLE_RETRY_AFTER_SECS: u64 = 1;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: (code == ErrorCode::Unavailable).then_some(UNAVAILABLE_RETRY_AFTER_SECS),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `rate_limited`, to be retried after `retry_after` seconds.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }
    /// `unavailable`: this gateway has no `service` (presence, receipts, notification)
    /// configured, so the features that need it are off.
    pub fn not_configured(service: &str) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{service} is not configured on this gateway"),
        )
    }

    /// The JSON body of the error.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        Self::new(e.code, e.message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        let code = ErrorCode::from_status(&s);
        let message = match code {
            // Never leak internals (or a transport error's details) to clients.
            ErrorCode::Internal => {
                tracing::error!(status = ?s, "internal error from a service");
                "internal error".to_owned()
            }
            ErrorCode::Unavailable => {
                tracing::warn!(status = ?s, "service unavailable");
                "a dependency is unavailable; retry".to_owned()
            }
            _ => s.message().to_owned(),
        };
        Self::new(code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
        resp
    }
}
