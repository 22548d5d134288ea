//! Integration tests of the receipts service: real Postgres, Redis and messaging (from the
//! testkit), receipts started on port 0 with `serve()`, driven over gRPC.

mod authz;
mod events;
mod stream;
mod unread;
mod watermarks;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use parley_proto::{
    messaging::v1::messaging_service_client::MessagingServiceClient,
    receipts::v1::{self as pb, receipts_service_client::ReceiptsServiceClient},
};
pub use parley_testkit::as_user;
use parley_testkit::{Messaging, Stack, wait_for};
use tonic::transport::Channel;

/// How long any wait for the projection may take before a test fails.
pub const PATIENCE: Duration = parley_testkit::PATIENCE;

/// A stack (fresh database + Redis prefix + one messaging) and, once started, receipts.
pub struct Env {
    pub stack: Stack,
    messaging: Messaging,
}

/// Messaging only; receipts is started with [`Env::start_receipts`].
pub async fn messaging_only() -> anyhow::Result<Env> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    let messaging = stack.messaging_client().await?;
    Ok(Env { stack, messaging })
}

/// Messaging and receipts (with extra `PARLEY__…` settings for receipts).
pub async fn spawn(extra: &[(&str, &str)]) -> anyhow::Result<Env> {
    let mut env = messaging_only().await?;
    env.start_receipts(extra).await?;
    Ok(env)
}

impl Env {
    /// Starts receipts (with the tests' settings, then `extra`) and waits until it serves
    /// (migrations run before it does).
    pub async fn start_receipts(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let mut settings = vec![
            ("PARLEY__DATABASE__MAX_CONNECTIONS", "8"),
            ("PARLEY__CONSUMER__BLOCK_MS", "500"),
            ("PARLEY__CONSUMER__LAG_INTERVAL_MS", "500"),
        ];
        settings.extend_from_slice(extra);
        self.stack.add_receipts(&settings).await
    }

    pub async fn receipts(&self) -> anyhow::Result<ReceiptsServiceClient<Channel>> {
        let addr = self
            .stack
            .receipts
            .first()
            .context("receipts not started")?
            .addr;
        Ok(ReceiptsServiceClient::connect(format!("http://{addr}")).await?)
    }

    pub fn messaging(&self) -> MessagingServiceClient<Channel> {
        self.messaging.client.clone()
    }

    /// A group channel of `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &str, members: &[&str]) -> anyhow::Result<String> {
        self.messaging.group(owner, members).await
    }

    /// Sends a message as `user`; returns its seq.
    pub async fn send(&self, user: &str, channel: &str) -> anyhow::Result<u64> {
        Ok(self.messaging.send(user, channel, "hello").await?.seq)
    }

    pub async fn add_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        self.messaging.add_member(by, channel, user).await
    }

    pub async fn remove_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        self.messaging.remove_member(by, channel, user).await
    }

    pub async fn mark_read(
        &self,
        user: &str,
        channel: &str,
        seq: u64,
    ) -> Result<pb::MarkReadResponse, tonic::Status> {
        let mut c = self
            .receipts()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(c.mark_read(as_user(
            pb::MarkReadRequest {
                channel_id: channel.into(),
                seq,
            },
            user,
        ))
        .await?
        .into_inner())
    }

    pub async fn mark_delivered(
        &self,
        user: &str,
        channel: &str,
        seq: u64,
    ) -> Result<pb::MarkDeliveredResponse, tonic::Status> {
        let mut c = self
            .receipts()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(c.mark_delivered(as_user(
            pb::MarkDeliveredRequest {
                channel_id: channel.into(),
                seq,
            },
            user,
        ))
        .await?
        .into_inner())
    }

    /// The user's unread counts as a map channel → count.
    pub async fn unread(&self, user: &str) -> anyhow::Result<BTreeMap<String, u64>> {
        let r = self
            .receipts()
            .await?
            .get_unread(as_user(pb::GetUnreadRequest {}, user))
            .await?
            .into_inner();
        let map: BTreeMap<String, u64> = r
            .channels
            .iter()
            .map(|c| (c.channel_id.clone(), c.unread))
            .collect();
        anyhow::ensure!(
            r.total == map.values().sum::<u64>(),
            "total {} does not add up: {map:?}",
            r.total
        );
        anyhow::ensure!(
            map.values().all(|n| *n > 0),
            "zero entries must be omitted: {map:?}"
        );
        Ok(map)
    }

    pub async fn receipts_of(
        &self,
        user: &str,
        channel: &str,
    ) -> Result<Vec<pb::Receipt>, tonic::Status> {
        let mut c = self
            .receipts()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(c.get_receipts(as_user(
            pb::GetReceiptsRequest {
                channel_id: channel.into(),
            },
            user,
        ))
        .await?
        .into_inner()
        .receipts)
    }

    /// Polls until `user`'s unread counts equal `want` (bounded by [`PATIENCE`]).
    pub async fn wait_unread(
        &self,
        user: &str,
        want: &BTreeMap<String, u64>,
    ) -> anyhow::Result<()> {
        wait_for(
            PATIENCE,
            format_args!("unread of {user} = {want:?}"),
            || self.unread(user),
            |got| got == want,
        )
        .await?;
        Ok(())
    }

    pub fn stream_key(&self) -> String {
        self.stack.stream_key()
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        self.stack.redis().await
    }

    /// Waits until the receipts group has been handed every entry of the stream and has
    /// acknowledged all of them (i.e. the projection applied everything published so far).
    pub async fn wait_consumed(&self) -> anyhow::Result<()> {
        self.stack.wait_consumed("receipts").await
    }
}

/// The code of an error response.
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}
