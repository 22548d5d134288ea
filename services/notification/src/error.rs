//! Errors of the notification service and their one mapping to gRPC statuses.

use parley_kit::{ErrorCode, domain::Invalid};

/// What can go wrong in notification.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// A bad argument specific to this service (e.g. webhook URL not allowed).
    #[error("{0}")]
    BadArgument(String),
    /// Unknown channel, or a device that does not exist or is not the caller's.
    #[error("{0}")]
    NotFound(String),
    /// The caller is not a member of the channel.
    #[error("{0}")]
    PermissionDenied(String),
    /// Messaging or presence could not be asked: safe to retry.
    #[error("upstream unavailable: {0}")]
    Upstream(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(i) => i.into(),
            Error::BadArgument(m) => ErrorCode::InvalidArgument.status(m),
            Error::NotFound(m) => ErrorCode::NotFound.status(m),
            Error::PermissionDenied(m) => ErrorCode::PermissionDenied.status(m),
            Error::Upstream(m) => {
                tracing::warn!(error = %m, "upstream unavailable");
                ErrorCode::Unavailable.status("messaging unavailable")
            }
            Error::Db(e) => parley_kit::db::status(&e),
            Error::Migrate(e) => parley_kit::db::migrate_status(&e),
        }
    }
}

impl From<parley_kit::error::Upstream> for Error {
    fn from(u: parley_kit::error::Upstream) -> Self {
        use parley_kit::error::Upstream as U;
        match u {
            U::NotFound(m) => Self::NotFound(m),
            U::PermissionDenied(m) => Self::PermissionDenied(m),
            U::Unavailable(m) => Self::Upstream(m),
        }
    }
}
