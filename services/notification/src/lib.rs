//! The notification service: devices, per-channel notification preferences and the push
//! delivery log (Postgres schema `notification`). It consumes messaging's event stream
//! `<prefix>messaging:events` with a consumer group, asks presence which recipients are
//! offline, records one delivery row per (message, device) and lets delivery workers
//! push them (webhook, FCM, APNs, Web Push) with retries, coalescing and dead letters.
//! See docs/notification.md.
//!
//! `serve(config, listener, shutdown)` is how the binary and the tests start it.

pub mod allowlist;
mod consumer;
pub mod delivery;
mod error;
mod grpc;
mod members;
pub mod provider;
mod store;
mod upstream;

use std::{sync::Arc, time::Duration};

pub use parley_kit::config::Settings;
use parley_kit::{db::Schema, server::Runtime};
use parley_proto::notification::v1::notification_service_server::NotificationServiceServer;
use secrecy::SecretString as Secret;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;

/// Embedded defaults (see `src/config.toml`).
pub const DEFAULTS: &str = include_str!("config.toml");

/// Notification configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub messaging: UpstreamConfig,
    pub presence: PresenceConfig,
    pub consumer: ConsumerConfig,
    pub fanout: FanoutConfig,
    pub delivery: DeliveryConfig,
    pub webhook: WebhookConfig,
    pub fcm: FcmConfig,
    pub apns: ApnsConfig,
    pub webpush: WebPushConfig,
}

pub use parley_kit::server::GrpcConfig;

pub use parley_kit::db::DatabaseConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    pub url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PresenceConfig {
    pub url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub batch: usize,
}

pub use parley_kit::stream::ConsumerConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct FanoutConfig {
    /// Channels whose member list is cached (by membership version); 0 disables the cache.
    pub member_cache_channels: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeliveryConfig {
    pub enabled: bool,
    pub workers: usize,
    pub max_in_flight: usize,
    pub batch: i64,
    pub poll_interval_ms: u64,
    pub coalesce_window_ms: u64,
    pub max_attempts: i32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub request_timeout_ms: u64,
    pub preview_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookConfig {
    pub secret: Secret,
    pub allowed_hosts: Vec<String>,
    pub allowed_networks: Vec<String>,
    pub allow_internal: bool,
    pub dns_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FcmConfig {
    pub endpoint: String,
    pub project_id: String,
    pub access_token: Secret,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApnsConfig {
    pub endpoint: String,
    pub topic: String,
    pub provider_token: Secret,
    pub http2_prior_knowledge: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebPushConfig {
    pub vapid_private_key: Secret,
    pub vapid_subject: String,
    pub ttl_seconds: u32,
    pub allowed_host_suffixes: Vec<String>,
}

impl Settings for Config {
    const DEFAULTS: &'static str = DEFAULTS;

    fn validate(&self) -> Result<(), String> {
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be positive".into());
        }
        for (name, t, c) in [
            (
                "messaging",
                self.messaging.timeout_ms,
                self.messaging.connect_timeout_ms,
            ),
            (
                "presence",
                self.presence.timeout_ms,
                self.presence.connect_timeout_ms,
            ),
        ] {
            if t == 0 || c == 0 {
                return Err(format!("{name}: timeouts must be positive"));
            }
        }
        if !(1..=500).contains(&self.presence.batch) {
            return Err("presence.batch must be 1-500".into());
        }
        self.consumer.validate()?;
        if self.fanout.member_cache_channels > 1_000_000 {
            return Err("fanout.member_cache_channels must be at most 1000000".into());
        }
        let d = &self.delivery;
        if d.max_in_flight == 0 {
            return Err("delivery.max_in_flight must be positive".into());
        }
        if d.workers == 0 || d.workers > 64 {
            return Err("delivery.workers must be 1-64".into());
        }
        if d.batch <= 0 || d.batch > 10_000 {
            return Err("delivery.batch must be 1-10000".into());
        }
        if d.max_attempts <= 0 {
            return Err("delivery.max_attempts must be positive".into());
        }
        if d.backoff_base_ms == 0 || d.backoff_max_ms < d.backoff_base_ms {
            return Err("delivery: 0 < backoff_base_ms <= backoff_max_ms".into());
        }
        if d.coalesce_window_ms > 3_600_000 {
            return Err("delivery.coalesce_window_ms must be at most 3600000".into());
        }
        if d.request_timeout_ms == 0 || d.poll_interval_ms == 0 {
            return Err(
                "delivery: request_timeout_ms and poll_interval_ms must be positive".into(),
            );
        }
        allowlist::Allowlist::new(&self.webhook)?;
        Ok(())
    }
}

/// The `notification` schema (migrations under advisory lock 7150004).
pub static SCHEMA: Schema = Schema {
    name: "notification",
    application: "parley-notification",
    lock_key: 7150004,
    migrator: &MIGRATOR,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the binary starts (`parley_kit::service::main`).
pub const BINARY: parley_kit::service::Binary<Config> = parley_kit::service::Binary {
    name: "notification",
    serves: parley_kit::service::GRPC,
    addr: |c| &c.grpc.addr,
    schema: Some((&SCHEMA, |c| &c.database)),
};

/// Runs the service on `listener` until `shutdown` is cancelled: migrates, starts the
/// event consumer and the delivery workers, and serves gRPC (+ health, + `/metrics`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(
        "notification",
        Some((&SCHEMA, &config.database)),
        &config.redis.url,
        parley_kit::connect::REDIS_TIMEOUT,
        &shutdown,
    )
    .await?;
    let (pool, redis, background) = (rt.pool()?, rt.redis_client.clone(), &rt.background);
    let config = Arc::new(config);
    let allow = Arc::new(allowlist::Allowlist::new(&config.webhook).map_err(anyhow::Error::msg)?);
    let messaging = upstream::Messaging::new(&config.messaging)?;
    let presence = upstream::Presence::new(&config.presence)?;

    if config.consumer.enabled {
        let c = consumer::Consumer::new(
            pool.clone(),
            redis.clone(),
            messaging.clone(),
            presence,
            config.clone(),
        );
        background.spawn(c.run(background.token()));
    }
    if config.delivery.enabled {
        let providers = Arc::new(provider::Providers::new(&config, allow.clone())?);
        for i in 0..config.delivery.workers {
            let w = delivery::Worker::new(i, pool.clone(), providers.clone(), config.clone());
            background.spawn(w.run(background.token()));
        }
    }
    background.spawn(delivery::gauges(
        pool.clone(),
        Duration::from_millis(config.consumer.lag_interval_ms.max(100)),
        background.token(),
    ));

    let svc = grpc::Notification::new(pool.clone(), messaging, allow, config.clone());
    let served = rt
        .serve(
            listener,
            NotificationServiceServer::new(svc),
            &config.grpc,
            shutdown,
        )
        .await;
    // However the server ended (shutdown or an I/O error), the loops stop with it; the
    // caller's token is left alone.
    rt.stop().await;
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(&parley_kit::config::Sources::from_vars(Vec::<(
            String,
            String,
        )>::new()))
        .expect("defaults load");
        assert_eq!(c.grpc.addr, "127.0.0.1:5054");
        assert_eq!(c.consumer.group, "notification");
        assert_eq!(c.delivery.coalesce_window_ms, 2000);
        assert_eq!(c.fanout.member_cache_channels, 10_000);
        assert!(!format!("{c:?}").contains("parley-dev-webhook-secret"));
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v) in [
            ("PARLEY__PRESENCE__BATCH", "501"),
            ("PARLEY__DELIVERY__MAX_ATTEMPTS", "0"),
            ("PARLEY__DELIVERY__WORKERS", "0"),
            ("PARLEY__FANOUT__MEMBER_CACHE_CHANNELS", "1000001"),
        ] {
            assert!(
                Config::load(&parley_kit::config::Sources::from_vars([(k, v)])).is_err(),
                "{k}={v} must be refused"
            );
        }
    }
}
