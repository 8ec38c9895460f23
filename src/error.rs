//! The crate's one error type.
//!
//! Every failure a client can see is an [`Error`] with a stable machine `code`, a message
//! for people and, where useful, `details`. Over REST it becomes
//! `{"success":false,"error":{"code","message","details"?}}` with the matching status;
//! Socket.io acks (later) reuse [`Error::body`]. Internal errors are logged (inside the
//! request's span, so with its request id) and answered with a generic message: their text
//! never reaches the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field failed validation: 422 `VALIDATION_ERROR`, `details.field` names it.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    /// The body is not JSON at all: 400 `MALFORMED_JSON`.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A request the server cannot make sense of (bad query string, bad path): 400.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("{message}")]
    Unauthorized { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Well-formed but not serviceable (outside the service area, coupon expired...): 422.
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("too many requests, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A dependency is down or saturated: 503, `details.unavailable` says which.
    #[error("{what} is unavailable")]
    Unavailable { what: &'static str },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The `error` object of the envelope.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl Error {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation { field: field.into(), message: message.into() }
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unauthorized { code, message: message.into() }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Error::Forbidden { code, message: message.into() }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::NotFound { code, message: message.into() }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict { code, message: message.into() }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::Validation { .. } | Error::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::MalformedJson(_) | Error::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound { .. } => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation { .. } => "VALIDATION_ERROR",
            Error::MalformedJson(_) => "MALFORMED_JSON",
            Error::BadRequest { code, .. }
            | Error::Unauthorized { code, .. }
            | Error::Forbidden { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unprocessable { code, .. } => code,
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL_ERROR",
        }
    }

    /// What the client is told. Internal errors say nothing about their cause.
    pub fn body(&self) -> ErrorBody {
        let details = match self {
            Error::Validation { field, .. } => Some(json!({ "field": field })),
            Error::PayloadTooLarge { limit } => Some(json!({ "limit_bytes": limit })),
            Error::RateLimited { retry_after_secs } => Some(json!({ "retry_after_secs": retry_after_secs })),
            Error::Unavailable { what } => Some(json!({ "unavailable": what })),
            _ => None,
        };
        let message = match self {
            Error::Internal(_) => "internal server error; the request id identifies it in the logs".to_owned(),
            other => other.to_string(),
        };
        ErrorBody { code: self.code(), message, details }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        let unavailable = match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => true,
            // The server ended the session (shutting down, restarting, an operator's
            // pg_terminate_backend: SQLSTATE 57P..) or lost the connection (08...): the
            // request may be retried, on a connection the pool opens anew.
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08"))
            }
            _ => false,
        };
        if unavailable {
            tracing::warn!(error = %err, "database unavailable");
            return Error::Unavailable { what: "database" };
        }
        Error::Internal(anyhow::Error::new(err).context("database query failed"))
    }
}

#[derive(Serialize)]
struct Failure {
    success: bool,
    error: ErrorBody,
}

/// The failure envelope for a status and body: the one place its shape is written.
pub fn envelope(status: StatusCode, error: ErrorBody) -> Response {
    (status, axum::Json(Failure { success: false, error })).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "internal error");
        }
        let mut response = envelope(self.status(), self.body());
        let headers = response.headers_mut();
        match &self {
            Error::RateLimited { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Error::Unauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = Error::Internal(anyhow::anyhow!("password=hunter2 connection refused"));
        let body = err.body();
        assert_eq!(body.code, "INTERNAL_ERROR");
        assert!(!body.message.contains("hunter2"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn validation_names_the_field() {
        let body = Error::validation("pickup.lat", "must be between -90 and 90").body();
        assert_eq!(body.details, Some(json!({ "field": "pickup.lat" })));
        assert_eq!(body.message, "pickup.lat: must be between -90 and 90");
    }
}
