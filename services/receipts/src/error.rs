//! Errors of the receipts service and their one mapping to gRPC statuses.

use parley_kit::{ErrorCode, domain::Invalid};

/// What can go wrong in receipts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Unknown channel (as messaging says).
    #[error("{0}")]
    NotFound(String),
    /// The caller is not a member of the channel.
    #[error("{0}")]
    PermissionDenied(String),
    /// Messaging could not be asked (down, slow, restarting): safe to retry.
    #[error("messaging unavailable: {0}")]
    Messaging(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(i) => i.into(),
            Error::NotFound(m) => ErrorCode::NotFound.status(m),
            Error::PermissionDenied(m) => ErrorCode::PermissionDenied.status(m),
            Error::Messaging(m) => {
                tracing::warn!(error = %m, "messaging unavailable");
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
            U::Unavailable(m) => Self::Messaging(m),
        }
    }
}
