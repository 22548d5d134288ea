//! What the integration tests of every service need, whatever else they start: run a
//! service's `serve` future on an ephemeral port until it answers gRPC health, poll for a
//! condition with a deadline, and a Redis key prefix of the test's own.
//!
//! Only tokio, tonic (+ health), redis, uuid, anyhow and parley-kit are used here, and
//! every path is relative, so the presence tests (which do not depend on this crate)
//! compile this directory in with `#[path]`.

mod keys;
mod poll;
mod service;

pub use keys::{KeyPrefix, delete_keys, on_own_runtime, redis_url};
pub use poll::{PATIENCE, eventually, wait_for};
pub use service::{Running, settings};
