//! Gateway integration tests: real messaging + gateway over real gRPC, real Postgres and
//! Redis, driven through the public HTTP and WebSocket API.

mod chat;
mod errors;

use std::time::Duration;

pub const T: Duration = Duration::from_secs(10);
