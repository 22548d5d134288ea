//! The notification service's client: device registration and per-channel levels. Push
//! fan-out itself happens in the notification service, from the event stream.

use parley_kit::propagation::Outbound;
use parley_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{ApiError, App};

pub type Client = NotificationServiceClient<InterceptedService<Channel, Outbound>>;

pub fn client(channel: Channel) -> Client {
    NotificationServiceClient::with_interceptor(channel, Outbound)
}

/// The client, or `unavailable` when this gateway has no notification service.
pub fn service(app: &App) -> Result<Client, ApiError> {
    app.notification
        .clone()
        .map(|(c, _)| c)
        .ok_or_else(|| ApiError::not_configured("notification"))
}

/// Counts a failed call (`gateway_notification_errors_total`), logs the server-side ones,
/// and maps it to the API error.
pub fn count_error(op: &'static str, e: tonic::Status) -> ApiError {
    metrics::counter!("gateway_notification_errors_total", "op" => op).increment(1);
    if matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::Internal | tonic::Code::Unknown
    ) {
        tracing::warn!(op, code = ?e.code(), error = %e.message(), "notification call failed");
    }
    e.into()
}
