//! The gateway: the public HTTP/JSON and WebSocket API of Parley (docs/api.md). It owns
//! nothing durable: it verifies tokens, rate-limits, validates, calls the services over
//! gRPC and fans live events out to its WebSocket connections from Redis pub/sub (one
//! subscription per channel per node, reference-counted over local connections).

mod admission;
mod api;
mod auth;
mod error;
mod extract;
mod http;
mod hub;
pub mod ordering;
pub mod protocol;
pub mod ratelimit;
mod sender;
mod upstream;
pub mod view;
mod ws;

use std::{sync::Arc, time::Duration};

pub use parley_kit::config::Settings;
use parley_kit::propagation::Outbound;
use parley_kit::server::Background;
use parley_proto::messaging::v1::messaging_service_client::MessagingServiceClient;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
use upstream::{notification, presence, receipts};

pub use error::ApiError;
pub use sender::SendConfig;

/// Embedded defaults (see `src/config.toml`).
pub const DEFAULTS: &str = include_str!("config.toml");

/// Gateway configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub http: HttpConfig,
    pub messaging: ServiceConfig,
    pub presence: PresenceConfig,
    pub receipts: ServiceConfig,
    pub notification: ServiceConfig,
    pub node: NodeConfig,
    pub redis: RedisConfig,
    pub auth: AuthConfig,
    pub limits: Limits,
    pub rate: ratelimit::RateConfig,
    pub ws: WsConfig,
    pub send: SendConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    pub addr: String,
    pub max_body_bytes: usize,
    pub drain_delay_ms: u64,
    pub drain_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceConfig {
    pub url: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PresenceConfig {
    pub url: String,
    pub timeout_ms: u64,
    pub heartbeat_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeConfig {
    pub id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}

#[derive(Clone, Deserialize)]
pub struct AuthConfig {
    pub hs256_secret: secrecy::SecretString,
    pub rs256_public_key_pem: String,
    pub dev_tokens: bool,
    pub dev_token_ttl_secs: u64,
    pub leeway_secs: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hs256_secret", &"[redacted]")
            .field(
                "rs256_public_key_pem",
                &(!self.rs256_public_key_pem.is_empty()),
            )
            .field("dev_tokens", &self.dev_tokens)
            .field("dev_token_ttl_secs", &self.dev_token_ttl_secs)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub default_page: u32,
    pub max_page: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WsConfig {
    pub heartbeat_ms: u64,
    pub resume_limit: u64,
    pub resume_window_ms: u64,
    pub gap_wait_ms: u64,
    pub queue_len: usize,
    pub max_frame_bytes: usize,
    pub max_watch: usize,
    pub read_buffer_bytes: usize,
    pub max_pending_sends: usize,
    pub pending_send_budget_ms: u64,
    pub write_batch_frames: usize,
    pub max_send_channels: usize,
    pub max_typing_in_flight: usize,
    pub frames_per_sec: u32,
    pub frames_burst: u32,
    pub flood_close_after: u32,
    pub write_timeout_ms: u64,
    pub max_connections_per_user: usize,
    pub max_connections: usize,
    pub max_held: usize,
    pub flood_ban_secs: u64,
}

impl Settings for Config {
    const DEFAULTS: &'static str = DEFAULTS;

    fn validate(&self) -> Result<(), String> {
        let l = &self.limits;
        self.rate.validate()?;
        if l.default_page == 0 || l.default_page > l.max_page {
            return Err("limits: need 0 < default_page <= max_page".into());
        }
        if self.presence.heartbeat_ms < 1000 {
            return Err("presence.heartbeat_ms must be at least 1000".into());
        }
        if self.ws.heartbeat_ms < 100 || self.ws.queue_len == 0 || self.ws.resume_limit == 0 {
            return Err("ws: heartbeat_ms >= 100, queue_len and resume_limit > 0".into());
        }
        if self.send.max_batch == 0
            || self.send.concurrency == 0
            || self.send.queue == 0
            || self.send.queue_budget_ms == 0
        {
            return Err(
                "send: max_batch, concurrency, queue and queue_budget_ms must be positive".into(),
            );
        }
        if self.ws.max_pending_sends == 0
            || self.ws.write_batch_frames == 0
            || self.ws.pending_send_budget_ms == 0
            || self.ws.max_send_channels == 0
            || self.ws.max_typing_in_flight == 0
            || self.ws.frames_per_sec == 0
            || self.ws.frames_burst == 0
            || self.ws.flood_close_after == 0
            || self.ws.write_timeout_ms == 0
            || self.ws.max_connections_per_user == 0
            || self.ws.max_connections == 0
            || self.ws.max_held == 0
        {
            return Err(
                "ws: max_pending_sends, pending_send_budget_ms, write_batch_frames, max_send_channels, max_typing_in_flight, frames_per_sec, frames_burst, flood_close_after, write_timeout_ms, max_connections_per_user, max_connections and max_held must be positive"
                    .into(),
            );
        }
        if self.ws.read_buffer_bytes < 256 || self.ws.max_frame_bytes < 256 {
            return Err("ws: read_buffer_bytes and max_frame_bytes must be at least 256".into());
        }
        Ok(())
    }
}

type Messaging = MessagingServiceClient<InterceptedService<Channel, Outbound>>;

/// Shared state of one gateway node.
pub(crate) struct App {
    config: Config,
    auth: auth::Verifier,
    messaging: Messaging,
    /// Sends, batched into `SendMessages` calls.
    sender: sender::Sender,
    messaging_channel: Channel,
    presence: Option<Arc<presence::Presence>>,
    receipts: Option<receipts::Receipts>,
    /// The notification client and its channel (for health).
    notification: Option<(notification::Client, Channel)>,
    redis: redis::aio::ConnectionManager,
    limiter: ratelimit::Limiter,
    admission: admission::Admission,
    hub: hub::Hub,
    /// Cancelled as soon as shutdown begins: /readyz answers 503 from then on.
    stopping: CancellationToken,
    /// Cancelled when the node starts draining (after `drain_delay_ms`): connections get
    /// `reconnect`.
    draining: CancellationToken,
    /// Every WebSocket connection task, awaited on shutdown.
    connections: TaskTracker,
}

/// Runs the gateway on `listener` until `shutdown` is cancelled, then drains: /readyz turns
/// 503, WebSocket clients get a `reconnect` frame and are closed, in-flight requests finish.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Install the metrics recorder before anything is recorded (it is process-wide and lazy).
    parley_kit::metrics::handle();
    if config.auth.dev_tokens {
        tracing::warn!("dev tokens are enabled (POST /v1/auth/dev-token): development only");
    }
    // One URL, or several separated by commas: calls are balanced over the replicas and
    // keep flowing while one of them restarts.
    let connect_timeout = Duration::from_secs(2);
    let messaging_channel = parley_kit::connect::grpc_balanced(
        &config.messaging.url,
        Duration::from_millis(config.messaging.timeout_ms),
        connect_timeout,
    )
    .map_err(|e| anyhow::anyhow!("messaging.url: {e}"))?;
    let optional = |cfg: &ServiceConfig| -> anyhow::Result<Option<Channel>> {
        if cfg.url.trim().is_empty() {
            return Ok(None);
        }
        let timeout = Duration::from_millis(cfg.timeout_ms);
        Ok(Some(parley_kit::connect::grpc_channel(
            &cfg.url,
            timeout,
            connect_timeout,
        )?))
    };
    let node_id = if config.node.id.is_empty() {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "gateway".into());
        format!("{host}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    } else {
        config.node.id.clone()
    };
    let presence_heartbeat = Duration::from_millis(config.presence.heartbeat_ms);
    let presence = optional(&ServiceConfig {
        url: config.presence.url.clone(),
        timeout_ms: config.presence.timeout_ms,
    })?
    .map(|ch| presence::Presence::new(ch, node_id.clone(), presence_heartbeat));
    let receipts = optional(&config.receipts)?.map(receipts::Receipts::new);
    let notification =
        optional(&config.notification)?.map(|ch| (notification::client(ch.clone()), ch));
    let messaging = MessagingServiceClient::with_interceptor(messaging_channel.clone(), Outbound);
    let redis_client = redis::Client::open(config.redis.url.as_str())?;
    let redis =
        parley_kit::connect::redis(&redis_client, parley_kit::connect::REDIS_TIMEOUT).await?;
    let background = Background::new(&shutdown);
    background.spawn(parley_kit::health::sample(
        "gateway",
        None,
        Some(redis.clone()),
        background.token(),
    ));
    let limiter = ratelimit::Limiter::new(redis.clone(), &config.redis.prefix, config.rate.clone());
    let admission = admission::Admission::new(redis.clone(), &config.redis.prefix, &config.ws);
    // Live fan-out runs until the server is done (not merely stopping): connections keep
    // receiving events during the drain delay, until they are told to reconnect.
    let fanout = Background::new(&CancellationToken::new());
    let _hub_guard = fanout.token().drop_guard();
    let hub = hub::Hub::start(
        redis_client,
        config.redis.prefix.clone(),
        presence.is_some(),
        fanout.token(),
    );
    if let Some(p) = presence.clone() {
        fanout.spawn(p.heartbeat_loop(presence_heartbeat, fanout.token()));
    }
    let sender = sender::Sender::start(
        messaging.clone(),
        &config.send,
        Duration::from_millis(config.messaging.timeout_ms),
    );
    let app = Arc::new(App {
        auth: auth::Verifier::new(&config.auth)?,
        config,
        messaging,
        sender,
        messaging_channel,
        presence,
        receipts,
        notification,
        redis,
        limiter,
        admission,
        hub,
        stopping: shutdown.clone(),
        draining: CancellationToken::new(),
        connections: TaskTracker::new(),
    });
    let router = http::router(app.clone());
    tracing::info!(addr = %listener.local_addr()?, "gateway serving");

    let drain_app = app.clone();
    let graceful = async move {
        shutdown.cancelled().await;
        let cfg = &drain_app.config.http;
        tracing::info!("draining: /readyz now 503");
        // Readiness fails first so load balancers stop sending new clients here.
        tokio::time::sleep(Duration::from_millis(cfg.drain_delay_ms)).await;
        drain_app.draining.cancel();
        drain_app.connections.close();
        if tokio::time::timeout(
            Duration::from_millis(cfg.drain_timeout_ms),
            drain_app.connections.wait(),
        )
        .await
        .is_err()
        {
            tracing::warn!("drain timeout: some WebSocket connections did not close in time");
        }
    };
    // WebSocket frames and small JSON replies: do not let Nagle hold them back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(graceful)
    .await;
    // However the server ended: stop fan-out and heartbeats; the heartbeat loop unregisters
    // whatever connections are left, so their users do not wait for a TTL to turn offline.
    background.stop().await;
    if tokio::time::timeout(Duration::from_secs(5), fanout.stop())
        .await
        .is_err()
    {
        tracing::warn!("presence did not answer the final unregister within 5 s");
    }
    tracing::info!("gateway stopped");
    Ok(served?)
}

/// How the binary starts (`parley_kit::service::main`).
pub const BINARY: parley_kit::service::Binary<Config> = parley_kit::service::Binary {
    name: "gateway",
    serves: "HTTP, WebSocket, /metrics",
    addr: |c| &c.http.addr,
    schema: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use parley_kit::config::Sources;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(&Sources::from_vars(Vec::<(String, String)>::new()))
            .expect("defaults load");
        assert_eq!(c.limits.max_message_bytes, 2048);
        assert_eq!((c.rate.messages.n, c.rate.messages.window_secs), (60, 60));
        assert_eq!(
            (
                c.rate.channel_creations.n,
                c.rate.channel_creations.window_secs
            ),
            (5, 3600)
        );
        assert_eq!((c.rate.joins.n, c.rate.joins.window_secs), (20, 3600));
        assert!(!c.auth.dev_tokens, "dev tokens are off unless asked for");
        assert!(!c.presence.url.is_empty() && !c.receipts.url.is_empty());
    }

    #[test]
    fn environment_overrides_and_empty_urls_disable() {
        let c = Config::load(&Sources::from_vars([
            ("PARLEY__PRESENCE__URL", ""),
            ("PARLEY__RATE__MESSAGES__N", "5"),
            ("PARLEY__AUTH__DEV_TOKENS", "true"),
        ]))
        .expect("loads");
        assert!(c.presence.url.is_empty());
        assert_eq!(c.rate.messages.n, 5);
        assert!(c.auth.dev_tokens);
    }

    #[test]
    fn invalid_limits_are_refused() {
        assert!(
            Config::load(&Sources::from_vars([(
                "PARLEY__RATE__JOINS__WINDOW_SECS",
                "0"
            )]))
            .is_err()
        );
        assert!(
            Config::load(&Sources::from_vars([(
                "PARLEY__LIMITS__DEFAULT_PAGE",
                "500"
            )]))
            .is_err()
        );
        assert!(
            Config::load(&Sources::from_vars([(
                "PARLEY__WS__READ_BUFFER_BYTES",
                "0"
            )]))
            .is_err()
        );
    }
}
