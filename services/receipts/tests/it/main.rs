//! Integration tests of the receipts service: real Postgres, Redis and messaging (from the
//! testkit), receipts started on port 0 with `serve()`, driven over gRPC.

mod authz;
mod events;
mod stream;
mod unread;
mod watermarks;

use std::{collections::BTreeMap, collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use parley_kit::propagation::with_user;
use parley_proto::{
    messaging::v1::{self as mpb, messaging_service_client::MessagingServiceClient},
    receipts::v1::{self as pb, receipts_service_client::ReceiptsServiceClient},
};
use parley_testkit::Stack;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// How long any wait for the projection may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A receipts instance started by a test.
pub struct Receipts {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A stack (fresh database + Redis prefix + one messaging) and, once started, receipts.
pub struct Env {
    pub receipts: Option<Receipts>,
    pub stack: Stack,
    messaging: MessagingServiceClient<Channel>,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Stop receipts before the stack drops the database under it.
        if let Some(r) = self.receipts.take() {
            r.shutdown.cancel();
            r.task.abort();
        }
    }
}

/// Messaging only; receipts is started with [`Env::start_receipts`].
pub async fn messaging_only() -> anyhow::Result<Env> {
    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let messaging = MessagingServiceClient::connect(format!("http://{addr}")).await?;
    Ok(Env {
        receipts: None,
        stack,
        messaging,
    })
}

/// Messaging and receipts (with extra `PARLEY__…` settings for receipts).
pub async fn spawn(extra: &[(&str, &str)]) -> anyhow::Result<Env> {
    let mut env = messaging_only().await?;
    env.start_receipts(extra).await?;
    Ok(env)
}

/// `msg` as a request made on behalf of `user`.
pub fn as_user<T>(msg: T, user: &str) -> tonic::Request<T> {
    with_user(tonic::Request::new(msg), user).expect("test user ids are valid metadata values")
}

impl Env {
    pub async fn start_receipts(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self.stack.messaging.first().context("messaging")?.addr;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__DATABASE__URL".into(), self.stack.db_url.clone()),
            ("PARLEY__DATABASE__MAX_CONNECTIONS".into(), "8".into()),
            ("PARLEY__REDIS__URL".into(), self.stack.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.stack.prefix.clone()),
            (
                "PARLEY__MESSAGING__URL".into(),
                format!("http://{messaging}"),
            ),
            ("PARLEY__CONSUMER__BLOCK_MS".into(), "500".into()),
            ("PARLEY__CONSUMER__LAG_INTERVAL_MS".into(), "500".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_receipts::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(parley_receipts::serve(config, listener, shutdown.clone()));
        self.receipts = Some(Receipts {
            addr,
            shutdown,
            task,
        });
        // Ready once it answers (migrations run before it serves).
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Ok(mut c) = ReceiptsServiceClient::connect(format!("http://{addr}")).await
                && c.get_unread(as_user(pb::GetUnreadRequest {}, "probe"))
                    .await
                    .is_ok()
            {
                return Ok(addr);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "receipts never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn receipts(&self) -> anyhow::Result<ReceiptsServiceClient<Channel>> {
        let addr = self.receipts.as_ref().context("receipts not started")?.addr;
        Ok(ReceiptsServiceClient::connect(format!("http://{addr}")).await?)
    }

    pub fn messaging(&self) -> MessagingServiceClient<Channel> {
        self.messaging.clone()
    }

    /// A group channel of `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &str, members: &[&str]) -> anyhow::Result<String> {
        let req = mpb::CreateChannelRequest {
            kind: mpb::ChannelKind::Group as i32,
            name: "test".into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        };
        let c = self
            .messaging()
            .create_channel(as_user(req, owner))
            .await?
            .into_inner();
        Ok(c.channel.context("channel")?.id)
    }

    /// Sends a message as `user`; returns its seq.
    pub async fn send(&self, user: &str, channel: &str) -> anyhow::Result<u64> {
        let req = mpb::SendMessageRequest {
            channel_id: channel.into(),
            client_msg_id: uuid::Uuid::new_v4().to_string(),
            body: "hello".into(),
        };
        let m = self
            .messaging()
            .send_message(as_user(req, user))
            .await?
            .into_inner();
        Ok(m.message.context("message")?.seq)
    }

    pub async fn add_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        let req = mpb::AddMemberRequest {
            channel_id: channel.into(),
            user_id: user.into(),
        };
        self.messaging().add_member(as_user(req, by)).await?;
        Ok(())
    }

    pub async fn remove_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        let req = mpb::RemoveMemberRequest {
            channel_id: channel.into(),
            user_id: user.into(),
        };
        self.messaging().remove_member(as_user(req, by)).await?;
        Ok(())
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
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let got = self.unread(user).await?;
            if &got == want {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "unread of {user}: got {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn stream_key(&self) -> String {
        format!("{}{}", self.stack.prefix, parley_kit::stream::EVENTS)
    }

    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.stack.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// Waits until the receipts group has been handed every entry of the stream and has
    /// acknowledged all of them (i.e. the projection applied everything published so far;
    /// messaging publishes before it answers).
    pub async fn wait_consumed(&self) -> anyhow::Result<()> {
        let mut r = self.redis().await?;
        let key = self.stream_key();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let stream: redis::streams::StreamInfoStreamReply = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&key)
                .query_async(&mut r)
                .await?;
            let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&key)
                .query_async(&mut r)
                .await?;
            let done = groups
                .groups
                .iter()
                .find(|g| g.name == "receipts")
                .is_some_and(|g| g.last_delivered_id == stream.last_generated_id && g.pending == 0);
            if done {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the receipts group never caught up: {groups:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The code of an error response.
pub fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> tonic::Code {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s.code(),
    }
}
