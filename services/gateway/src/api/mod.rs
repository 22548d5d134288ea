//! The API core: every operation of the public API, written once for every transport.
//! Layers, top to bottom:
//!
//! 1. **Transport adapters** — `crate::http` (REST), `crate::ws` (WebSocket), and the
//!    transports to come (SSE, public gRPC): they authenticate the caller, read the
//!    request into validated input, call one function here, and render its result.
//! 2. **API core** (this module): takes the verified caller (`UserId`) and validated input
//!    (`ChannelId`, `ClientMsgId`, `Seq`, …), applies the per-user rate limits, calls the
//!    services, and returns domain results (the services' messages) or one error type,
//!    [`ApiError`](crate::ApiError). It knows nothing of HTTP, JSON or sockets.
//! 3. **Upstream clients** — `crate::upstream` and `crate::sender` (messaging's batched
//!    send path): requests on behalf of the caller, errors counted and mapped.
//!
//! Nothing here imports from a transport, and no transport imports from another.

pub mod channels;
pub mod devices;
pub mod messages;
pub mod social;

use crate::ApiError;

/// A message's seq as it appears in a path (`/messages/{seq}`): a positive integer.
pub fn parse_seq(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::invalid("seq must be a positive integer"))
}
