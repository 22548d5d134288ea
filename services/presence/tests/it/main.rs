//! Presence integration tests: real presence replicas over real gRPC on port 0, against a
//! real Redis, each test under its own key prefix.
//!
//! Redis comes from `PARLEY_TEST_REDIS_URL`, else `PARLEY_REDIS_URL` (what
//! `. .local/deps.env` exports), else `redis://127.0.0.1:6379`. The harness needs nothing
//! else (no Postgres), so it uses `parley-testkit`'s service harness, not its `Stack`.

mod connections;
mod expiry;
mod ops;
mod query;
mod typing;

use parley_kit::config::Settings as _;
use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use parley_proto::presence::v1::{self as pb, presence_service_client::PresenceServiceClient};
use prost::Message as _;
use tonic::transport::Channel;

use parley_testkit as harness;
pub use parley_testkit::{KeyPrefix, Running, eventually, wait_for};

/// Generous wait for anything that should happen (the suite shares 2 cores).
pub const T: Duration = harness::PATIENCE;
/// How long a topic is watched for an event that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(1500);

pub type Client = PresenceServiceClient<Channel>;

/// One presence replica and its client.
pub struct Replica {
    pub running: Running,
    pub client: Client,
}

impl Replica {
    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }
}

/// A key prefix of its own and the presence replicas started on it. Dropping it stops the
/// replicas, then deletes the prefix's keys.
pub struct Harness {
    /// Declared first: the replicas stop before the keys go.
    pub replicas: Vec<Replica>,
    pub keys: KeyPrefix,
}

impl Harness {
    /// A fresh prefix and one replica with the test settings and `extra`.
    pub async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut h = Self::empty();
        h.add(extra).await?;
        Ok(h)
    }

    /// A fresh prefix; starts nothing.
    pub fn empty() -> Self {
        Self {
            replicas: Vec::new(),
            keys: KeyPrefix::new("tp"),
        }
    }

    /// The client of replica 0.
    pub fn client(&self) -> Client {
        self.replicas[0].client.clone()
    }

    /// Starts a replica on this prefix and waits until it serves. Test settings: TTLs down
    /// to 1 s, a sweeper that wakes at least every 200 ms; `extra` (`PARLEY__…` pairs)
    /// overrides them.
    pub async fn add(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<Client> {
        let config = parley_presence::Config::load(&harness::settings(
            [
                ("PARLEY__REDIS__URL", self.keys.redis_url.as_str()),
                ("PARLEY__REDIS__PREFIX", self.keys.prefix.as_str()),
                ("PARLEY__CONNECTIONS__MIN_TTL_SECS", "1"),
                ("PARLEY__SWEEPER__INTERVAL_MS", "200"),
                ("PARLEY__SWEEPER__MIN_INTERVAL_MS", "20"),
            ],
            extra,
        ))?;
        let running = Running::grpc(move |l, t| parley_presence::serve(config, l, t)).await?;
        let client = PresenceServiceClient::connect(format!("http://{}", running.addr)).await?;
        self.replicas.push(Replica {
            running,
            client: client.clone(),
        });
        Ok(client)
    }

    /// Subscribes to `topic` (without the prefix) and returns its events.
    pub async fn subscribe(&self, topic: &str) -> anyhow::Result<Events> {
        let redis = redis::Client::open(self.keys.redis_url.as_str())?;
        let topic = format!("{}{topic}", self.keys.prefix);
        let mut pubsub = redis.get_async_pubsub().await?;
        pubsub.subscribe(&topic).await?;
        Ok(Events {
            stream: Box::pin(pubsub.into_on_message()),
            topic,
            redis,
        })
    }
}

/// Decoded events of one subscription.
pub struct Events {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>,
    /// The topic (with the prefix) and its server, for barriers.
    topic: String,
    redis: redis::Client,
}

impl Events {
    /// The next event, or None if none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> anyhow::Result<Option<pb::PresenceEvent>> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Err(_) => Ok(None),
            Ok(None) => anyhow::bail!("subscription closed"),
            Ok(Some(msg)) => Ok(Some(pb::PresenceEvent::decode(msg.get_payload_bytes())?)),
        }
    }

    /// The next event; fails if none arrives within [`T`].
    pub async fn expect(&mut self) -> anyhow::Result<pb::PresenceEvent> {
        self.next(T).await?.context("no event arrived in time")
    }

    /// Events until `n` have arrived (fails after [`T`] without a new one).
    async fn first(&mut self, n: usize) -> anyhow::Result<Vec<pb::PresenceEvent>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.expect()
                    .await
                    .with_context(|| format!("{} of {n} events arrived", out.len()))?,
            );
        }
        Ok(out)
    }

    /// Events until `n` have arrived, then any others before a [`Events::barrier`]: for
    /// events of calls that have returned.
    pub async fn collect(&mut self, n: usize) -> anyhow::Result<Vec<pb::PresenceEvent>> {
        let mut out = self.first(n).await?;
        out.extend(self.barrier().await?);
        Ok(out)
    }

    /// Events until `n` have arrived, then any that arrive within [`QUIET`] after those:
    /// for events the sweeper publishes on its own schedule, which no marker the test can
    /// publish is certain to follow.
    pub async fn collect_quiet(&mut self, n: usize) -> anyhow::Result<Vec<pb::PresenceEvent>> {
        let mut out = self.first(n).await?;
        while let Some(e) = self.next(QUIET).await? {
            out.push(e);
        }
        Ok(out)
    }

    /// The events that arrive before a marker the test publishes on the topic now. Redis
    /// delivers a topic's messages in publish order, and presence publishes before it
    /// answers: every event of a call that has returned comes before the marker.
    pub async fn barrier(&mut self) -> anyhow::Result<Vec<pb::PresenceEvent>> {
        let id = format!("barrier-{}", uuid::Uuid::new_v4().simple());
        let marker = pb::PresenceEvent {
            event_id: id.clone(),
            ..Default::default()
        };
        let mut c = self.redis.get_multiplexed_async_connection().await?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&self.topic)
            .arg(marker.encode_to_vec())
            .query_async(&mut c)
            .await?;
        let mut before = Vec::new();
        loop {
            let e = self.expect().await.context("the barrier did not arrive")?;
            if e.event_id == id {
                return Ok(before);
            }
            before.push(e);
        }
    }
}

/// The PresenceChanged payload of an event.
#[track_caller]
pub fn changed(e: &pb::PresenceEvent) -> pb::UserPresence {
    match &e.payload {
        Some(pb::presence_event::Payload::PresenceChanged(pb::PresenceChanged {
            presence: Some(p),
        })) => p.clone(),
        other => panic!("not a PresenceChanged event: {other:?}"),
    }
}

/// A new connection id.
pub fn conn_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A connection reference.
pub fn cref(user: &str, conn: &str) -> pb::ConnectionRef {
    pb::ConnectionRef {
        user_id: user.into(),
        connection_id: conn.into(),
    }
}

/// Registers a new connection of `user` on `node`; returns its id and the response.
pub async fn register(
    client: &mut Client,
    user: &str,
    node: &str,
    ttl_seconds: u32,
) -> anyhow::Result<(String, pb::RegisterConnectionResponse)> {
    let id = conn_id();
    let r = client
        .register_connection(pb::RegisterConnectionRequest {
            user_id: user.into(),
            connection_id: id.clone(),
            node_id: node.into(),
            ttl_seconds,
        })
        .await?
        .into_inner();
    Ok((id, r))
}

/// Presence of the given users, in order.
pub async fn get(client: &mut Client, users: &[&str]) -> anyhow::Result<Vec<pb::UserPresence>> {
    let user_ids = users.iter().map(|u| (*u).to_owned()).collect();
    Ok(client
        .get_presence(pb::GetPresenceRequest { user_ids })
        .await?
        .into_inner()
        .presences)
}

/// Presence of one user.
pub async fn one(client: &mut Client, user: &str) -> anyhow::Result<pb::UserPresence> {
    get(client, &[user])
        .await?
        .pop()
        .context("no presence returned")
}

pub fn is_online(p: &pb::UserPresence) -> bool {
    p.status == pb::Status::Online as i32
}

pub fn is_offline(p: &pb::UserPresence) -> bool {
    p.status == pb::Status::Offline as i32
}

/// Installs the process-wide telemetry once (W3C propagator + tracer), so that trace
/// context flows from gRPC metadata into events as in production.
pub fn telemetry() {
    static GUARD: OnceLock<Option<parley_kit::telemetry::Guard>> = OnceLock::new();
    GUARD.get_or_init(|| parley_kit::telemetry::init("presence-test").ok());
}
