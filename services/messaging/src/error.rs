//! Errors of the messaging service and their one mapping to gRPC statuses.

use parley_kit::{ErrorCode, domain::Invalid};

/// What can go wrong in messaging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Conflict(String),
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
            Error::Conflict(m) => ErrorCode::Conflict.status(m),
            Error::Db(e) => parley_kit::db::status(&e),
            Error::Migrate(e) => parley_kit::db::migrate_status(&e),
        }
    }
}
