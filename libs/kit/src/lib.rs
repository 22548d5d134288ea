//! What every Parley service shares: layered configuration, telemetry (JSON logs, OTLP
//! traces), W3C trace-context and caller-identity propagation over gRPC, Prometheus
//! metrics, gRPC health, graceful shutdown and the one error vocabulary of the API.

pub mod config;
pub mod connect;
pub mod db;
pub mod domain;
pub mod error;
pub mod health;
pub mod metrics;
pub mod propagation;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod topics;

pub use error::ErrorCode;
