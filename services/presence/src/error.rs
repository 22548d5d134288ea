//! Errors of the presence service and their one mapping to gRPC statuses.

use parley_kit::{ErrorCode, domain::Invalid};
use redis::{ErrorKind, ServerErrorKind};

/// What can go wrong in presence.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A script answered something this code does not expect (a bug or a foreign writer).
    #[error("unexpected reply from redis: {0}")]
    Reply(String),
}

impl Error {
    /// A bad request (INVALID_ARGUMENT).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid(Invalid {
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        })
    }
}

/// True when the error means Redis is unreachable, slow or not ready: safe to retry.
fn unavailable(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(i) => i.into(),
            Error::PermissionDenied(m) => ErrorCode::PermissionDenied.status(m),
            Error::Redis(e) if unavailable(&e) => {
                tracing::warn!(error = %e, "redis unavailable");
                ErrorCode::Unavailable.status("presence store unavailable")
            }
            Error::Redis(e) => {
                tracing::error!(error = %e, "redis error");
                ErrorCode::Internal.status("internal error")
            }
            Error::Reply(m) => {
                tracing::error!(reply = %m, "unexpected redis reply");
                ErrorCode::Internal.status("internal error")
            }
        }
    }
}
