//! Presence integration tests: real presence replicas over real gRPC on port 0, against a
//! real Redis, each test under its own key prefix.
//!
//! Redis comes from `PARLEY_TEST_REDIS_URL`, else `PARLEY_REDIS_URL` (what
//! `. .local/deps.env` exports), else `redis://127.0.0.1:6379`. The harness needs nothing
//! else (no Postgres), so it does not use `parley-testkit`'s `Stack`.

mod connections;
mod expiry;
mod ops;
mod query;
mod typing;

use std::{collections::HashMap, net::SocketAddr, sync::OnceLock, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use parley_proto::presence::v1::{self as pb, presence_service_client::PresenceServiceClient};
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Generous wait for anything that should happen (the suite shares 2 cores).
pub const T: Duration = Duration::from_secs(20);
/// How long a topic is watched for an event that must NOT arrive.
pub const QUIET: Duration = Duration::from_millis(1500);

pub type Client = PresenceServiceClient<Channel>;

fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL")
        .or_else(|_| std::env::var("PARLEY_REDIS_URL"))
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// One presence replica.
pub struct Replica {
    pub addr: SocketAddr,
    pub client: Client,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    /// SIGTERM-like stop: cancels and waits for the drain.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(T, self.task)
            .await
            .context("stop timed out")??
    }
}

/// A key prefix of its own and the presence replicas started on it. Dropping it stops the
/// replicas and deletes the prefix's keys.
pub struct Harness {
    pub redis_url: String,
    pub prefix: String,
    pub replicas: Vec<Replica>,
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
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            redis_url: redis_url(),
            prefix: format!("tp{}:", &id[..12]),
            replicas: Vec::new(),
        }
    }

    /// The client of replica 0.
    pub fn client(&self) -> Client {
        self.replicas[0].client.clone()
    }

    /// Starts a replica on this prefix. Test settings: TTLs down to 1 s, a sweeper that
    /// wakes at least every 200 ms; `extra` (`PARLEY__…` pairs) overrides them.
    pub async fn add(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<Client> {
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            ("PARLEY__CONNECTIONS__MIN_TTL_SECS".into(), "1".into()),
            ("PARLEY__SWEEPER__INTERVAL_MS".into(), "200".into()),
            ("PARLEY__SWEEPER__MIN_INTERVAL_MS".into(), "20".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_presence::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(parley_presence::serve(config, listener, shutdown.clone()));
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        let mut last = None;
        for _ in 0..200 {
            match endpoint.connect().await {
                Ok(channel) => {
                    let client = PresenceServiceClient::new(channel);
                    self.replicas.push(Replica {
                        addr,
                        client: client.clone(),
                        shutdown,
                        task,
                    });
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        anyhow::bail!("presence at {addr} never accepted connections: {last:?}")
    }

    /// Subscribes to `topic` (without the prefix) and returns its events.
    pub async fn subscribe(&self, topic: &str) -> anyhow::Result<Events> {
        let client = redis::Client::open(self.redis_url.as_str())?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(format!("{}{topic}", self.prefix)).await?;
        Ok(Events {
            stream: Box::pin(pubsub.into_on_message()),
        })
    }

    /// A raw Redis connection (for checks of the keyspace).
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for r in self.replicas.drain(..) {
            r.shutdown.cancel();
            r.task.abort();
        }
        let (url, prefix) = (self.redis_url.clone(), self.prefix.clone());
        // Cleanup needs a runtime of its own: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = redis::Client::open(url.as_str()) else {
                    return;
                };
                let Ok(mut c) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                for chunk in keys.chunks(500) {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// Decoded events of one subscription.
pub struct Events {
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>,
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

    /// Events until `n` have arrived (fails after [`T`] without a new one), then any that
    /// arrive within [`QUIET`] after those.
    pub async fn collect(&mut self, n: usize) -> anyhow::Result<Vec<pb::PresenceEvent>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            out.push(
                self.expect()
                    .await
                    .with_context(|| format!("{} of {n} events arrived", out.len()))?,
            );
        }
        while let Some(e) = self.next(QUIET).await? {
            out.push(e);
        }
        Ok(out)
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
