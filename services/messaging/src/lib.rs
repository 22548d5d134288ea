//! The messaging service: channels, members and messages in Postgres schema `messaging`,
//! with a transactional outbox that publishes events to Redis after commit.
//!
//! `serve(config, listener, shutdown)` is how the binary, the tests and `make up` start it.

mod batch;
mod cleanup;
mod error;
mod grpc;
pub mod outbox;
mod search;
pub mod storage;
mod store;

use std::sync::Arc;

pub use parley_kit::config::Settings;
use parley_kit::{db::Schema, server::Runtime};
use parley_proto::messaging::v1::messaging_service_server::MessagingServiceServer;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use batch::lane_of;
pub use error::Error;

/// Embedded defaults (see `src/config.toml`).
pub const DEFAULTS: &str = include_str!("config.toml");

/// Messaging configuration.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub grpc: GrpcConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub limits: Limits,
    pub outbox: OutboxConfig,
    pub send: SendConfig,
    pub storage: StorageConfig,
    pub attachments: AttachmentsConfig,
    pub search: SearchConfig,
}

/// S3-compatible object storage (`[storage]`); an empty endpoint turns attachments off.
#[derive(Debug, Clone, Deserialize)]
pub struct StorageConfig {
    pub endpoint: String,
    pub client_endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    pub secret_access_key: secrecy::SecretString,
    pub path_style: bool,
    pub key_prefix: String,
    pub timeout_ms: u64,
}

/// Attachments' limits and clean-up (`[attachments]`).
#[derive(Debug, Clone, Deserialize)]
pub struct AttachmentsConfig {
    pub max_bytes: u64,
    pub allowed_types: Vec<String>,
    pub max_per_message: usize,
    pub max_filename_chars: usize,
    pub upload_ttl_secs: u64,
    pub download_ttl_secs: u64,
    pub public_base_url: String,
    pub orphan_ttl_secs: u64,
    pub cleanup_interval_ms: u64,
    pub cleanup_batch: i64,
    pub uploads_per_minute: u32,
    pub user_quota_bytes: u64,
}

/// Message search (`[search]`).
#[derive(Debug, Clone, Deserialize)]
pub struct SearchConfig {
    pub text_search_config: String,
    pub build_indexes: bool,
    pub max_similar_words: i64,
    pub words_interval_ms: u64,
    pub words_batch: i64,
    pub words_settle_ms: u64,
    pub max_query_chars: usize,
    pub trigram_max_chars: usize,
    pub typo_similarity: f64,
    pub default_page: u32,
    pub max_page: u32,
}

/// Group commit of concurrent sends (see `batch`).
#[derive(Debug, Clone, Deserialize)]
pub struct SendConfig {
    /// Most sends written in one transaction.
    pub max_batch: usize,
    /// Lanes: send transactions in flight at once, each for its own share of the channels
    /// (by hash); while a lane's transaction runs, its sends queue up and its next
    /// transaction takes them together.
    pub concurrency: usize,
    /// Sends waiting for a transaction, over all lanes; beyond it sends are refused
    /// (UNAVAILABLE).
    pub queue: usize,
    /// A send that waited longer than this for its transaction is refused (UNAVAILABLE).
    pub queue_budget_ms: u64,
    /// Published outbox rows are deleted by the next send batch; rows no batch took
    /// within this interval are deleted on their own.
    pub clear_interval_ms: u64,
}

pub use parley_kit::server::GrpcConfig;

pub use parley_kit::db::DatabaseConfig;

#[derive(Debug, Clone, Deserialize)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Limits {
    pub max_members: u32,
    pub max_channels_per_user: u32,
    pub max_body_bytes: usize,
    pub default_page: u32,
    pub max_page: u32,
    pub max_name_chars: usize,
    pub max_topic_chars: usize,
    pub max_description_chars: usize,
    pub invite_default_ttl_secs: u64,
    pub invite_max_ttl_secs: u64,
    pub invite_max_uses: u32,
    pub max_reason_chars: usize,
    pub max_blocks: u32,
    pub max_send_items: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OutboxConfig {
    pub publish_inline: bool,
    pub sweep_enabled: bool,
    pub sweep_interval_ms: u64,
    pub sweep_min_age_ms: u64,
    pub sweep_batch: i64,
    pub stream_maxlen: usize,
}

impl Settings for Config {
    const DEFAULTS: &'static str = DEFAULTS;

    fn validate(&self) -> Result<(), String> {
        if self.limits.max_members < 2 {
            return Err("limits.max_members must be at least 2".into());
        }
        if self.limits.max_channels_per_user == 0 {
            return Err("limits.max_channels_per_user must be positive".into());
        }
        if self.limits.max_page == 0
            || self.limits.default_page == 0
            || self.limits.default_page > self.limits.max_page
        {
            return Err("limits: need 0 < default_page <= max_page".into());
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_send_items == 0 {
            return Err("limits: max_body_bytes and max_send_items must be positive".into());
        }
        if self.send.max_batch == 0
            || self.send.concurrency == 0
            || self.send.queue < self.send.concurrency
            || self.send.queue_budget_ms == 0
        {
            return Err(
                "send: max_batch, concurrency and queue_budget_ms must be positive, queue at least concurrency"
                    .into(),
            );
        }
        if self.send.concurrency as u32 >= self.database.max_connections {
            return Err(
                "send.concurrency must be below database.max_connections (other calls need connections too)"
                    .into(),
            );
        }
        if self.database.max_connections == 0 {
            return Err("database.max_connections must be positive".into());
        }
        let a = &self.attachments;
        if a.max_bytes == 0 || a.max_per_message == 0 || a.max_filename_chars == 0 {
            return Err(
                "attachments: max_bytes, max_per_message and max_filename_chars must be positive"
                    .into(),
            );
        }
        if a.upload_ttl_secs == 0 || a.download_ttl_secs == 0 || a.cleanup_batch <= 0 {
            return Err(
                "attachments: upload_ttl_secs, download_ttl_secs and cleanup_batch must be positive"
                    .into(),
            );
        }
        // S3 presigned URLs last at most 7 days.
        if a.upload_ttl_secs > 604_800 || a.download_ttl_secs > 604_800 {
            return Err("attachments: presigned URLs last at most 604800 s (7 days)".into());
        }
        if a.orphan_ttl_secs < a.upload_ttl_secs {
            return Err(
                "attachments.orphan_ttl_secs must be at least upload_ttl_secs (an upload may still be in flight)"
                    .into(),
            );
        }
        if !self.storage.endpoint.is_empty() {
            storage::Storage::new(&self.storage).map_err(|e| format!("storage: {e}"))?;
        }
        let s = &self.search;
        if !s
            .text_search_config
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || s.text_search_config.is_empty()
        {
            return Err(
                "search.text_search_config must be a plain identifier (e.g. simple, english)"
                    .into(),
            );
        }
        if s.max_similar_words < 0 || s.words_batch <= 0 || s.words_interval_ms == 0 {
            return Err(
                "search: max_similar_words must not be negative, words_batch and words_interval_ms positive"
                    .into(),
            );
        }
        if s.max_query_chars == 0
            || s.default_page == 0
            || s.default_page > s.max_page
            || !(0.0..=1.0).contains(&s.typo_similarity)
        {
            return Err(
                "search: need max_query_chars > 0, 0 < default_page <= max_page, 0 <= typo_similarity <= 1"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The `messaging` schema (migrations under advisory lock 7150001).
pub static SCHEMA: Schema = Schema {
    name: "messaging",
    application: "parley-messaging",
    lock_key: 7150001,
    migrator: &MIGRATOR,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How the binary starts (`parley_kit::service::main`).
pub const BINARY: parley_kit::service::Binary<Config> = parley_kit::service::Binary {
    name: "messaging",
    serves: parley_kit::service::GRPC,
    addr: |c| &c.grpc.addr,
    schema: Some((&SCHEMA, |c| &c.database)),
};

/// Runs the service on `listener` until `shutdown` is cancelled: migrates, starts the outbox
/// sweeper and serves gRPC (+ health, + `/metrics`).
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let rt = Runtime::start(
        "messaging",
        Some((&SCHEMA, &config.database)),
        &config.redis.url,
        parley_kit::connect::REDIS_TIMEOUT,
        &shutdown,
    )
    .await?;
    let (pool, redis) = (rt.pool()?, rt.redis.clone());
    let publisher =
        outbox::Publisher::new(redis, &config.redis.prefix, config.outbox.stream_maxlen);
    let config = Arc::new(config);
    if config.outbox.sweep_enabled {
        rt.background.spawn(outbox::sweep(
            pool.clone(),
            publisher.clone(),
            config.outbox.clone(),
            rt.background.token(),
        ));
    }

    let batcher = batch::Batcher::start(
        pool.clone(),
        publisher.clone(),
        config.send.clone(),
        config.outbox.publish_inline,
    );
    let storage = if config.storage.endpoint.is_empty() {
        tracing::info!("no object storage configured (storage.endpoint): attachments are off");
        None
    } else {
        let s =
            storage::Storage::new(&config.storage).map_err(|e| anyhow::anyhow!("storage: {e}"))?;
        rt.background.spawn(cleanup::run(
            pool.clone(),
            s.clone(),
            config.attachments.clone(),
            rt.background.token(),
        ));
        Some(s)
    };
    let ts_config = &config.search.text_search_config;
    if !search::config_exists(&pool, ts_config).await? {
        anyhow::bail!(
            "search.text_search_config: no text search configuration {ts_config:?} in the database"
        );
    }
    rt.background.spawn(search::collect_words(
        pool.clone(),
        config.search.clone(),
        rt.background.token(),
    ));
    if config.search.build_indexes {
        rt.background.spawn(search::ensure_index(
            pool.clone(),
            config.search.text_search_config.clone(),
            rt.background.token(),
        ));
    }
    let svc = grpc::Messaging::new(pool.clone(), publisher, batcher, config.clone(), storage);
    let served = rt
        .serve(
            listener,
            MessagingServiceServer::new(svc),
            &config.grpc,
            shutdown,
        )
        .await;
    // However the server ended (shutdown or an I/O error), the sweeper stops with it.
    rt.stop().await;
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_kit::config::Sources;

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(&Sources::from_vars(Vec::<(String, String)>::new()))
            .expect("defaults load");
        assert_eq!(c.limits.max_members, 100);
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert!(c.outbox.publish_inline && c.outbox.sweep_enabled);
    }

    #[test]
    fn invalid_limits_are_refused() {
        assert!(Config::load(&Sources::from_vars([("PARLEY__LIMITS__MAX_MEMBERS", "1")])).is_err());
        assert!(Config::load(&Sources::from_vars([("PARLEY__LIMITS__MAX_PAGE", "0")])).is_err());
        assert!(Config::load(&Sources::from_vars([("PARLEY__SEND__MAX_BATCH", "0")])).is_err());
        assert!(Config::load(&Sources::from_vars([("PARLEY__SEND__CONCURRENCY", "20")])).is_err());
    }
}
