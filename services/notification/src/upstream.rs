//! Clients of messaging (members, channel names, membership) and presence (who is
//! offline), with the current trace context (`Outbound`) and, for messaging, the user the
//! call is made for (`x-parley-user-id`).

use std::{collections::HashSet, time::Duration};

use parley_kit::propagation::Outbound;
use parley_proto::{
    messaging::v1::{
        self as mpb, GetChannelRequest, ListMembersRequest,
        messaging_service_client::MessagingServiceClient,
    },
    presence::v1::{self as ppb, presence_service_client::PresenceServiceClient},
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use uuid::Uuid;

use crate::{Error, PresenceConfig, UpstreamConfig};

fn endpoint(url: &str, timeout_ms: u64, connect_ms: u64) -> anyhow::Result<Channel> {
    Ok(parley_kit::connect::grpc_channel(
        url,
        Duration::from_millis(timeout_ms),
        Duration::from_millis(connect_ms),
    )?)
}

fn map_status(s: tonic::Status) -> Error {
    parley_kit::error::Upstream::from(s).into()
}

/// Messaging, asked as a given user.
#[derive(Clone)]
pub struct Messaging {
    client: MessagingServiceClient<InterceptedService<Channel, Outbound>>,
}

impl Messaging {
    /// Connects lazily: notification starts while messaging is down.
    pub fn new(cfg: &UpstreamConfig) -> anyhow::Result<Self> {
        let ch = endpoint(&cfg.url, cfg.timeout_ms, cfg.connect_timeout_ms)?;
        Ok(Self {
            client: MessagingServiceClient::with_interceptor(ch, Outbound),
        })
    }

    /// The channel as `user` sees it (proves membership). PERMISSION_DENIED and NOT_FOUND
    /// are passed on; anything else is "unavailable".
    #[tracing::instrument(skip(self), fields(channel = %channel, user = %user))]
    pub async fn channel(&self, channel: Uuid, user: &str) -> Result<mpb::Channel, Error> {
        let req = parley_kit::propagation::with_user(
            tonic::Request::new(GetChannelRequest {
                channel_id: channel.to_string(),
            }),
            user,
        )
        .map_err(|s| Error::BadArgument(s.message().to_owned()))?;
        let resp = self
            .client
            .clone()
            .get_channel(req)
            .await
            .map_err(map_status)?;
        resp.into_inner()
            .channel
            .ok_or_else(|| Error::Unavailable("GetChannel returned no channel".into()))
    }

    /// The channel's member ids and the membership version they were read at, asked as
    /// `user` (a member).
    #[tracing::instrument(skip(self), fields(channel = %channel, user = %user))]
    pub async fn members(&self, channel: Uuid, user: &str) -> Result<(Vec<String>, i64), Error> {
        let req = parley_kit::propagation::with_user(
            tonic::Request::new(ListMembersRequest {
                channel_id: channel.to_string(),
            }),
            user,
        )
        .map_err(|s| Error::BadArgument(s.message().to_owned()))?;
        let resp = self
            .client
            .clone()
            .list_members(req)
            .await
            .map_err(map_status)?;
        let mpb::ListMembersResponse {
            members,
            members_version,
        } = resp.into_inner();
        Ok((
            members.into_iter().map(|m| m.user_id).collect(),
            members_version,
        ))
    }
}

/// Presence, asked which users are offline.
#[derive(Clone)]
pub struct Presence {
    client: PresenceServiceClient<InterceptedService<Channel, Outbound>>,
    batch: usize,
}

impl Presence {
    pub fn new(cfg: &PresenceConfig) -> anyhow::Result<Self> {
        let ch = endpoint(&cfg.url, cfg.timeout_ms, cfg.connect_timeout_ms)?;
        Ok(Self {
            client: PresenceServiceClient::with_interceptor(ch, Outbound),
            batch: cfg.batch,
        })
    }

    /// The users of `users` that are not ONLINE, in batches of at most `presence.batch`
    /// (one call for up to 500 users).
    #[tracing::instrument(skip_all, fields(users = users.len()))]
    pub async fn offline(&self, users: &[String]) -> Result<HashSet<String>, Error> {
        let mut offline = HashSet::new();
        for chunk in users.chunks(self.batch) {
            let resp = self
                .client
                .clone()
                .get_presence(ppb::GetPresenceRequest {
                    user_ids: chunk.to_vec(),
                })
                .await
                .map_err(|s| {
                    Error::Unavailable(format!("presence {:?}: {}", s.code(), s.message()))
                })?;
            let online: HashSet<String> = resp
                .into_inner()
                .presences
                .into_iter()
                .filter(|p| p.status == ppb::Status::Online as i32)
                .map(|p| p.user_id)
                .collect();
            offline.extend(chunk.iter().filter(|u| !online.contains(*u)).cloned());
        }
        Ok(offline)
    }
}
