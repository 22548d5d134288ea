//! Errors of the receipts service: the errors every service that owns a schema shares, with
//! their one mapping to gRPC statuses (`parley_kit::error::ServiceError`).

pub use parley_kit::error::ServiceError as Error;
