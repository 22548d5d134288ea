//! The presence service: who is online, when users were last seen, and typing pulses, in
//! the Redis keyspace `<prefix>presence:` (see docs/presence.md for keys and topics).
//!
//! `serve(config, listener, shutdown)` is how the binary, the tests and the benchmark start it.

mod error;
mod events;
mod grpc;
mod store;
mod sweeper;

use std::{sync::Arc, time::Duration};

pub use parley_kit::config::Settings;
use parley_kit::server::Runtime;
use parley_proto::presence::v1::presence_service_server::PresenceServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use events::{EVENTS_TOPIC, channel_topic};

/// Embedded defaults (see `src/config.toml`).
pub const DEFAULTS: &str = include_str!("config.toml");

/// Presence configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub redis: RedisConfig,
    pub connections: ConnectionsConfig,
    pub query: QueryConfig,
    pub typing: TypingConfig,
    pub sweeper: SweeperConfig,
    pub retention: RetentionConfig,
}

pub use parley_kit::server::GrpcConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ConnectionsConfig {
    pub default_ttl_secs: u32,
    pub min_ttl_secs: u32,
    pub max_ttl_secs: u32,
    pub max_batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueryConfig {
    pub max_users: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TypingConfig {
    pub throttle_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SweeperConfig {
    pub enabled: bool,
    pub interval_ms: u64,
    pub min_interval_ms: u64,
    pub batch: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetentionConfig {
    pub last_seen_secs: u64,
}

impl Settings for Config {
    const DEFAULTS: &'static str = DEFAULTS;

    fn validate(&self) -> Result<(), String> {
        let c = &self.connections;
        if c.min_ttl_secs == 0
            || c.min_ttl_secs > c.default_ttl_secs
            || c.default_ttl_secs > c.max_ttl_secs
        {
            return Err(
                "connections: need 0 < min_ttl_secs <= default_ttl_secs <= max_ttl_secs".into(),
            );
        }
        if c.max_batch == 0 {
            return Err("connections.max_batch must be positive".into());
        }
        if self.query.max_users == 0 {
            return Err("query.max_users must be positive".into());
        }
        if self.typing.throttle_ms == 0 {
            return Err("typing.throttle_ms must be positive".into());
        }
        let s = &self.sweeper;
        if s.batch == 0 || s.min_interval_ms == 0 || s.min_interval_ms > s.interval_ms {
            return Err("sweeper: need batch > 0 and 0 < min_interval_ms <= interval_ms".into());
        }
        if self.retention.last_seen_secs == 0 {
            return Err("retention.last_seen_secs must be positive".into());
        }
        if self.redis.timeout_ms == 0 {
            return Err("redis.timeout_ms must be positive".into());
        }
        Ok(())
    }
}

/// Connects to Redis with the configured timeout (reconnects on its own afterwards).
pub async fn connect_redis(cfg: &RedisConfig) -> Result<redis::aio::ConnectionManager, Error> {
    let client = redis::Client::open(cfg.url.as_str())?;
    Ok(parley_kit::connect::redis(&client, Duration::from_millis(cfg.timeout_ms)).await?)
}

/// How the binary starts (`parley_kit::service::main`).
pub const BINARY: parley_kit::service::Binary<Config> = parley_kit::service::Binary {
    name: "presence",
    serves: parley_kit::service::GRPC,
    addr: |c| &c.grpc.addr,
    schema: None,
};

/// Runs the service on `listener` until `shutdown` is cancelled: starts the expiry sweeper
/// and serves gRPC (+ health, + `/metrics`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(
        "presence",
        None,
        &config.redis.url,
        Duration::from_millis(config.redis.timeout_ms),
        &shutdown,
    )
    .await?;
    let redis = rt.redis.clone();
    let store = store::Store::new(redis.clone(), &config.redis.prefix);
    let publisher = events::Publisher::new(redis, &config.redis.prefix);
    let config = Arc::new(config);
    if config.sweeper.enabled {
        rt.background.spawn(sweeper::run(
            store.clone(),
            publisher.clone(),
            config.clone(),
            rt.background.token(),
        ));
    }

    let svc = grpc::Presence::new(store, publisher, config.clone());
    let served = rt
        .serve(
            listener,
            PresenceServiceServer::new(svc),
            &config.grpc,
            shutdown,
        )
        .await;
    rt.stop().await;
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(&parley_kit::config::Sources::from_vars([(
            "PARLEY__UNUSED",
            "x",
        )]))
        .expect("embedded defaults load");
        assert_eq!(c.grpc.addr, "127.0.0.1:5052");
        assert_eq!(c.connections.default_ttl_secs, 60);
        assert_eq!(
            (c.connections.min_ttl_secs, c.connections.max_ttl_secs),
            (5, 3600)
        );
        assert_eq!(c.connections.max_batch, 5000);
        assert_eq!(c.query.max_users, 500);
        assert_eq!(c.typing.throttle_ms, 2000);
        assert!(c.sweeper.enabled);
        assert_eq!(c.retention.last_seen_secs, 30 * 24 * 3600);
        assert_eq!(c.redis.prefix, "");
    }

    #[test]
    fn environment_overrides_and_validation() {
        let c = Config::load(&parley_kit::config::Sources::from_vars([
            ("PARLEY__TYPING__THROTTLE_MS", "250"),
            ("PARLEY__REDIS__PREFIX", "t1:"),
        ]))
        .expect("overrides load");
        assert_eq!(c.typing.throttle_ms, 250);
        assert_eq!(c.redis.prefix, "t1:");
        let bad = Config::load(&parley_kit::config::Sources::from_vars([(
            "PARLEY__CONNECTIONS__MIN_TTL_SECS",
            "0",
        )]));
        assert!(bad.is_err(), "min_ttl_secs = 0 must be rejected");
        let bad = Config::load(&parley_kit::config::Sources::from_vars([(
            "PARLEY__CONNECTIONS__DEFAULT_TTL_SECS",
            "4000",
        )]));
        assert!(bad.is_err(), "default ttl above max must be rejected");
    }
}
