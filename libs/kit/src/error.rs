//! The one error vocabulary of the public API (see docs/api.md, "Errors") and its mapping
//! to and from gRPC status codes. A service returns `ErrorCode::X.status(msg)`; the gateway
//! turns any `tonic::Status` back into the API code with `ErrorCode::from_status`.

use tonic::{Code, Status};

/// gRPC metadata key carrying the API error code when the gRPC code alone is ambiguous
/// (e.g. `too_large` and `invalid_argument` are both INVALID_ARGUMENT).
pub const ERROR_CODE_KEY: &str = "x-parley-error-code";

/// Machine-readable error code of the public API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Conflict,
    TooLarge,
    RateLimited,
    Unavailable,
    Internal,
    /// The channel is archived (read-only): 409.
    Archived,
    /// The caller is banned from the channel: 403.
    Banned,
    /// The caller is muted in the channel: 403.
    Muted,
    /// The other member of the direct channel blocked the caller: 403.
    Blocked,
    /// A content type the deployment does not accept (attachments): 415.
    UnsupportedMediaType,
    /// The caller's storage quota would be exceeded (attachments): 403.
    QuotaExceeded,
}

/// Every code, for exhaustive tests and documentation checks.
pub const ALL_CODES: [ErrorCode; 15] = [
    ErrorCode::InvalidArgument,
    ErrorCode::Unauthenticated,
    ErrorCode::PermissionDenied,
    ErrorCode::NotFound,
    ErrorCode::Conflict,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
    ErrorCode::Archived,
    ErrorCode::Banned,
    ErrorCode::Muted,
    ErrorCode::Blocked,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::QuotaExceeded,
];

impl ErrorCode {
    /// The `code` string of the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::Archived => "archived",
            Self::Banned => "banned",
            Self::Muted => "muted",
            Self::Blocked => "blocked",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::QuotaExceeded => "quota_exceeded",
        }
    }

    /// HTTP status of the API.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidArgument => 400,
            Self::Unauthenticated => 401,
            Self::PermissionDenied
            | Self::Banned
            | Self::Muted
            | Self::Blocked
            | Self::QuotaExceeded => 403,
            Self::NotFound => 404,
            Self::Conflict | Self::Archived => 409,
            Self::TooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::Unavailable => 503,
            Self::Internal => 500,
        }
    }

    /// The gRPC code used on internal APIs.
    pub fn grpc_code(self) -> Code {
        match self {
            Self::InvalidArgument | Self::TooLarge | Self::UnsupportedMediaType => {
                Code::InvalidArgument
            }
            Self::Unauthenticated => Code::Unauthenticated,
            Self::PermissionDenied | Self::Banned | Self::Muted | Self::Blocked => {
                Code::PermissionDenied
            }
            Self::NotFound => Code::NotFound,
            Self::Conflict | Self::Archived => Code::FailedPrecondition,
            Self::RateLimited | Self::QuotaExceeded => Code::ResourceExhausted,
            Self::Unavailable => Code::Unavailable,
            Self::Internal => Code::Internal,
        }
    }

    /// A status with this code, tagged so the gateway recovers the exact API code.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut s = Status::new(self.grpc_code(), message);
        s.metadata_mut().insert(
            ERROR_CODE_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        s
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "invalid_argument" => Self::InvalidArgument,
            "unauthenticated" => Self::Unauthenticated,
            "permission_denied" => Self::PermissionDenied,
            "not_found" => Self::NotFound,
            "conflict" => Self::Conflict,
            "too_large" => Self::TooLarge,
            "rate_limited" => Self::RateLimited,
            "unavailable" => Self::Unavailable,
            "internal" => Self::Internal,
            "archived" => Self::Archived,
            "banned" => Self::Banned,
            "muted" => Self::Muted,
            "blocked" => Self::Blocked,
            "unsupported_media_type" => Self::UnsupportedMediaType,
            "quota_exceeded" => Self::QuotaExceeded,
            _ => return None,
        })
    }

    /// The API code for a status returned by any internal service.
    pub fn from_status(status: &Status) -> Self {
        if let Some(code) = status
            .metadata()
            .get(ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::parse)
        {
            return code;
        }
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument,
            Code::Unauthenticated => Self::Unauthenticated,
            Code::PermissionDenied => Self::PermissionDenied,
            Code::NotFound => Self::NotFound,
            Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => Self::Conflict,
            Code::ResourceExhausted => Self::RateLimited,
            // A dependency that is down, slow or restarting: safe to retry.
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Self::Unavailable,
            Code::Ok | Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss => {
                Self::Internal
            }
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What another service's error status means to a service that called it on a user's
/// behalf: the user's own problem (not found, not allowed, passed on as such), or the
/// upstream being unavailable (retryable). The one mapping every service uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    NotFound(String),
    PermissionDenied(String),
    /// Anything else: the code and message, for the log.
    Unavailable(String),
}

impl From<Status> for Upstream {
    fn from(s: Status) -> Self {
        match ErrorCode::from_status(&s) {
            ErrorCode::PermissionDenied
            | ErrorCode::Banned
            | ErrorCode::Muted
            | ErrorCode::Blocked => Self::PermissionDenied(s.message().to_owned()),
            ErrorCode::NotFound => Self::NotFound(s.message().to_owned()),
            _ => Self::Unavailable(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// The errors of a service that owns a schema (messaging, receipts, notification), with
/// their one mapping to gRPC statuses. Presence (Redis only) has its own.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Invalid(#[from] crate::domain::Invalid),
    /// A bad argument in a service's own terms (a webhook URL not allowed, a bad id in an
    /// event).
    #[error("{0}")]
    BadArgument(String),
    /// Unknown channel, message, device… (or not visible to the caller).
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this (not a member, not an owner…).
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Conflict(String),
    /// The channel is archived (read-only).
    #[error("{0}")]
    Archived(String),
    /// The caller is banned from the channel.
    #[error("{0}")]
    Banned(String),
    /// The caller is muted in the channel.
    #[error("{0}")]
    Muted(String),
    /// The other member of a direct channel blocked the caller.
    #[error("{0}")]
    Blocked(String),
    /// A value over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// A content type not allowed.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a per-user rate.
    #[error("{0}")]
    RateLimited(String),
    /// Over a per-user quota.
    #[error("{0}")]
    QuotaExceeded(String),
    /// A service this one calls could not be asked (down, slow, restarting): retryable.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(i) => i.into(),
            ServiceError::BadArgument(m) => ErrorCode::InvalidArgument.status(m),
            ServiceError::NotFound(m) => ErrorCode::NotFound.status(m),
            ServiceError::PermissionDenied(m) => ErrorCode::PermissionDenied.status(m),
            ServiceError::Conflict(m) => ErrorCode::Conflict.status(m),
            ServiceError::Archived(m) => ErrorCode::Archived.status(m),
            ServiceError::Banned(m) => ErrorCode::Banned.status(m),
            ServiceError::Muted(m) => ErrorCode::Muted.status(m),
            ServiceError::Blocked(m) => ErrorCode::Blocked.status(m),
            ServiceError::TooLarge(m) => ErrorCode::TooLarge.status(m),
            ServiceError::UnsupportedMediaType(m) => ErrorCode::UnsupportedMediaType.status(m),
            ServiceError::RateLimited(m) => ErrorCode::RateLimited.status(m),
            ServiceError::QuotaExceeded(m) => ErrorCode::QuotaExceeded.status(m),
            ServiceError::Unavailable(m) => {
                tracing::warn!(error = %m, "upstream unavailable");
                ErrorCode::Unavailable.status("messaging unavailable")
            }
            ServiceError::Db(e) => crate::db::status(&e),
            ServiceError::Migrate(e) => crate::db::migrate_status(&e),
        }
    }
}

impl From<Upstream> for ServiceError {
    fn from(u: Upstream) -> Self {
        match u {
            Upstream::NotFound(m) => Self::NotFound(m),
            Upstream::PermissionDenied(m) => Self::PermissionDenied(m),
            Upstream::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_status() {
        for code in ALL_CODES {
            assert_eq!(ErrorCode::from_status(&code.status("x")), code);
        }
    }

    #[test]
    fn untagged_statuses_map_by_grpc_code() {
        assert_eq!(
            ErrorCode::from_status(&Status::unavailable("down")),
            ErrorCode::Unavailable
        );
        assert_eq!(
            ErrorCode::from_status(&Status::unknown("?")),
            ErrorCode::Internal
        );
        assert_eq!(
            ErrorCode::from_status(&Status::permission_denied("no")),
            ErrorCode::PermissionDenied
        );
    }

    #[test]
    fn upstream_statuses_map_to_what_the_caller_can_do() {
        assert_eq!(
            Upstream::from(ErrorCode::NotFound.status("no channel")),
            Upstream::NotFound("no channel".into())
        );
        assert_eq!(
            Upstream::from(ErrorCode::PermissionDenied.status("not a member")),
            Upstream::PermissionDenied("not a member".into())
        );
        assert!(matches!(
            Upstream::from(Status::unavailable("down")),
            Upstream::Unavailable(m) if m.contains("down")
        ));
        assert!(matches!(
            Upstream::from(ErrorCode::Internal.status("bug")),
            Upstream::Unavailable(_)
        ));
    }
}
