//! gRPC calls as the services behind the gateway get them: on behalf of a user, and
//! messaging's API as their tests drive it.

use std::net::SocketAddr;

use anyhow::Context as _;
use parley_proto::messaging::v1::{self as pb, messaging_service_client::MessagingServiceClient};
use tonic::transport::Channel;

/// `msg` as a request made on behalf of `user` (the metadata the gateway sets).
pub fn as_user<T>(msg: T, user: &str) -> tonic::Request<T> {
    parley_kit::propagation::with_user(tonic::Request::new(msg), user)
        .expect("test user ids are valid metadata values")
}

/// A client of messaging's gRPC API.
#[derive(Clone)]
pub struct Messaging {
    pub client: MessagingServiceClient<Channel>,
}

impl Messaging {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        Ok(Self {
            client: MessagingServiceClient::connect(format!("http://{addr}")).await?,
        })
    }

    /// A group channel named "test" of `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &str, members: &[&str]) -> anyhow::Result<String> {
        let req = pb::CreateChannelRequest {
            kind: pb::ChannelKind::Group as i32,
            name: "test".into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        };
        let c = self
            .client
            .clone()
            .create_channel(as_user(req, owner))
            .await?
            .into_inner();
        Ok(c.channel.context("channel")?.id)
    }

    /// Sends `body` as `user`; returns the message.
    pub async fn send(&self, user: &str, channel: &str, body: &str) -> anyhow::Result<pb::Message> {
        let req = pb::SendMessageRequest {
            attachment_ids: Vec::new(),
            channel_id: channel.into(),
            client_msg_id: uuid::Uuid::new_v4().to_string(),
            body: body.into(),
        };
        let m = self
            .client
            .clone()
            .send_message(as_user(req, user))
            .await?
            .into_inner();
        m.message.context("message")
    }

    /// Adds `user` to `channel`, as `by` (its owner).
    pub async fn add_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        let req = pb::AddMemberRequest {
            channel_id: channel.into(),
            user_id: user.into(),
        };
        self.client.clone().add_member(as_user(req, by)).await?;
        Ok(())
    }

    /// Removes `user` from `channel`, as `by` (its owner, or `user` leaving).
    pub async fn remove_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        let req = pb::RemoveMemberRequest {
            channel_id: channel.into(),
            user_id: user.into(),
        };
        self.client.clone().remove_member(as_user(req, by)).await?;
        Ok(())
    }
}
