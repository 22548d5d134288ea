//! Clients of the services behind the gateway (the bottom layer: transport adapters →
//! API core → upstream clients). Messaging is called through `App::messaging` and, for
//! sends, through the batching `crate::sender`; presence, receipts and notification are
//! optional and each has a client here that counts and logs its failures.

pub mod notification;
pub mod presence;
pub mod receipts;

use parley_kit::{domain::UserId, propagation::with_user};
use tonic::Request;

use crate::ApiError;

/// A request to a service on behalf of `user` (the caller's id travels in metadata; the
/// trace context is added by each client's interceptor).
pub fn request<T>(user: &UserId, msg: T) -> Result<Request<T>, ApiError> {
    Ok(with_user(Request::new(msg), user.as_str())?)
}
