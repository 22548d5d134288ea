//! The receipts service: per (channel, member) delivered/read watermarks and unread counts
//! in Postgres schema `receipts`, kept against a projection of messaging's channels that
//! is fed by the `messaging:events` stream (consumer group) and corrected on demand by
//! asking messaging. Watermark changes go out, coalesced, on Redis pub/sub
//! `receipts:channel:<id>`. See docs/receipts.md.
//!
//! `serve(config, listener, shutdown)` is how the binary, the tests and `make up` start it.

mod authority;
mod changes;
mod error;
mod grpc;
mod model;
mod projection;
mod store;

use std::{sync::Arc, time::Duration};

pub use parley_kit::config::Settings;
use parley_kit::{db::Schema, server::Runtime};
use parley_proto::receipts::v1::receipts_service_server::ReceiptsServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::Error;
pub use store::UNREAD_SQL;

/// Embedded defaults (see `src/config.toml`).
pub const DEFAULTS: &str = include_str!("config.toml");

/// Receipts configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub messaging: MessagingConfig,
    pub consumer: ConsumerConfig,
    pub publish: PublishConfig,
}

pub use parley_kit::server::GrpcConfig;

pub use parley_kit::db::DatabaseConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessagingConfig {
    pub url: String,
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

pub use parley_kit::stream::ConsumerConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct PublishConfig {
    pub coalesce_ms: u64,
    pub queue: usize,
}

impl Settings for Config {
    const DEFAULTS: &'static str = DEFAULTS;

    fn validate(&self) -> Result<(), String> {
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be positive".into());
        }
        if self.messaging.timeout_ms == 0 || self.messaging.connect_timeout_ms == 0 {
            return Err("messaging: timeouts must be positive".into());
        }
        self.consumer.validate()?;
        if self.publish.queue == 0 {
            return Err("publish.queue must be positive".into());
        }
        if self.publish.coalesce_ms > 60_000 {
            return Err("publish.coalesce_ms must be at most 60000".into());
        }
        Ok(())
    }
}

/// The `receipts` schema (migrations under advisory lock 7150003).
pub static SCHEMA: Schema = Schema {
    name: "receipts",
    application: "parley-receipts",
    lock_key: 7150003,
    migrator: &MIGRATOR,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the binary starts (`parley_kit::service::main`).
pub const BINARY: parley_kit::service::Binary<Config> = parley_kit::service::Binary {
    name: "receipts",
    serves: parley_kit::service::GRPC,
    addr: |c| &c.grpc.addr,
    schema: Some((&SCHEMA, |c| &c.database)),
};

/// Runs the service on `listener` until `shutdown` is cancelled: migrates, starts the event
/// consumer and the receipt publisher, and serves gRPC (+ health, + `/metrics`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(
        "receipts",
        Some((&SCHEMA, &config.database)),
        &config.redis.url,
        parley_kit::connect::REDIS_TIMEOUT,
        &shutdown,
    )
    .await?;
    let (pool, redis, publish_conn) = (rt.pool()?, rt.redis_client.clone(), rt.redis.clone());
    let config = Arc::new(config);
    let messaging = authority::Messaging::new(&config.messaging)?;

    // The publisher outlives the gRPC drain (marks made while draining still go out) and
    // flushes what is pending when the server is done.
    let done = CancellationToken::new();
    let (changes, publisher) = changes::start(
        publish_conn,
        &config.redis.prefix,
        Duration::from_millis(config.publish.coalesce_ms),
        config.publish.queue,
        done.clone(),
    );
    if config.consumer.enabled {
        let c = projection::Consumer::new(
            pool.clone(),
            redis.clone(),
            changes.clone(),
            config.consumer.clone(),
            &config.redis.prefix,
        );
        rt.background.spawn(c.run(rt.background.token()));
    }

    let svc = grpc::Receipts::new(pool.clone(), messaging, changes);
    let served = rt
        .serve(
            listener,
            ReceiptsServiceServer::new(svc),
            &config.grpc,
            shutdown,
        )
        .await;
    // However the server ended (shutdown or an I/O error): the consumer stops, then the
    // publisher flushes what is pending.
    rt.background.stop().await;
    done.cancel();
    let _ = publisher.await;
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
        assert_eq!(c.grpc.addr, "127.0.0.1:5053");
        assert_eq!(c.publish.coalesce_ms, 100);
        assert!(c.consumer.enabled);
    }

    #[test]
    fn environment_overrides_and_bad_values_are_refused() {
        let c = Config::load(&parley_kit::config::Sources::from_vars([(
            "PARLEY__PUBLISH__COALESCE_MS",
            "250",
        )]))
        .expect("loads");
        assert_eq!(c.publish.coalesce_ms, 250);
        assert!(
            Config::load(&parley_kit::config::Sources::from_vars([(
                "PARLEY__CONSUMER__BATCH",
                "0"
            )]))
            .is_err()
        );
    }
}
