//! Messaging as the authority on channels and membership, asked when the projection lags.

use std::time::Duration;

use parley_kit::{domain::UserId, propagation::Outbound};
use parley_proto::messaging::v1::{
    GetChannelRequest, messaging_service_client::MessagingServiceClient,
};
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};
use uuid::Uuid;

use crate::{Error, MessagingConfig};

/// A client of messaging that asks as the caller (`x-parley-user-id`), with the current
/// trace context.
#[derive(Clone)]
pub struct Messaging {
    client: MessagingServiceClient<InterceptedService<Channel, Outbound>>,
}

impl Messaging {
    /// Connects lazily: receipts starts (and serves what needs no confirmation) while
    /// messaging is down.
    pub fn new(cfg: &MessagingConfig) -> anyhow::Result<Self> {
        let channel = parley_kit::connect::grpc_channel(
            &cfg.url,
            Duration::from_millis(cfg.timeout_ms),
            Duration::from_millis(cfg.connect_timeout_ms),
        )?;
        Ok(Self {
            client: MessagingServiceClient::with_interceptor(channel, Outbound),
        })
    }

    /// The channel's authoritative last_seq, proving that `user` is a member of it.
    /// PERMISSION_DENIED and NOT_FOUND are passed on; anything else is "messaging
    /// unavailable" (the caller may retry).
    #[tracing::instrument(skip(self), fields(channel = %channel, user = %user))]
    pub async fn last_seq(&self, channel: Uuid, user: &UserId) -> Result<i64, Error> {
        let req = parley_kit::propagation::with_user(
            tonic::Request::new(GetChannelRequest {
                channel_id: channel.to_string(),
            }),
            user.as_str(),
        )
        .map_err(|s| Error::Unavailable(s.message().to_owned()))?;
        let mut client = self.client.clone();
        let outcome = client.get_channel(req).await;
        let label = match &outcome {
            Ok(_) => "member",
            Err(s) if s.code() == Code::PermissionDenied => "not_member",
            Err(s) if s.code() == Code::NotFound => "not_found",
            Err(_) => "error",
        };
        metrics::counter!("receipts_messaging_lookups_total", "outcome" => label).increment(1);
        match outcome {
            Ok(resp) => {
                let channel = resp
                    .into_inner()
                    .channel
                    .ok_or_else(|| Error::Unavailable("GetChannel returned no channel".into()))?;
                Ok(i64::try_from(channel.last_seq).unwrap_or(i64::MAX))
            }
            Err(s) => Err(parley_kit::error::Upstream::from(s).into()),
        }
    }
}
