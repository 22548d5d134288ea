//! Integration-test harness: real services on ephemeral ports against real Postgres and
//! Redis. Each [`Stack`] gets its own database and Redis key prefix, so tests run in
//! parallel, and removes both when dropped.
//!
//! Servers come from `PARLEY_TEST_PG_URL` (an admin URL, database `postgres`) and
//! `PARLEY_TEST_REDIS_URL`, which `make test` sets to the private instances it starts.
//!
//! Also for the tests of single services: [`Running`] (a `serve` future on an ephemeral
//! port, ready once it answers gRPC health), [`eventually`] / [`wait_for`] (polls with a
//! deadline), [`KeyPrefix`], [`Messaging`] and [`as_user`] (gRPC calls on behalf of a user).

mod client;
mod grpc;
mod harness;
mod private_redis;

pub use client::{Client, Reply, Ws, token, token_with};
pub use grpc::{Messaging, as_user};
pub use harness::{
    KeyPrefix, PATIENCE, Running, delete_keys, eventually, on_own_runtime, redis_url, settings,
    wait_for,
};
pub use private_redis::PrivateRedis;

use parley_kit::config::Settings as _;
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The HS256 secret test gateways use.
pub const SECRET: &str = "parley-test-secret-0123456789";

fn pg_admin_url() -> String {
    std::env::var("PARLEY_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `PARLEY_TEST_UNSAFE_ASYNC_COMMIT=1` (set by `make test` unless given): test databases
/// run with `synchronous_commit = off`. Unsafe for any data that matters; tests only.
fn unsafe_async_commit() -> bool {
    std::env::var("PARLEY_TEST_UNSAFE_ASYNC_COMMIT").is_ok_and(|v| v == "1")
}

/// A fresh database + key prefix, and the services started on them.
pub struct Stack {
    pub db_name: String,
    pub db_url: String,
    pub redis_url: String,
    pub prefix: String,
    pub messaging: Vec<Running>,
    pub gateways: Vec<Running>,
    pub presence: Vec<Running>,
    pub receipts: Vec<Running>,
    pub notification: Vec<Running>,
    /// The object storage messaging was started with, if any: what the stack's objects are
    /// deleted through when it is dropped.
    pub storage: Option<parley_messaging::storage::Storage>,
}

impl Stack {
    /// Creates the database and prefix; starts nothing.
    pub async fn empty() -> anyhow::Result<Self> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("parley_test_{}", &id[..16]);
        let admin = pg_admin_url();
        let mut conn = sqlx::postgres::PgConnection::connect_url(&admin).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
            .execute(&mut conn)
            .await?;
        if unsafe_async_commit() {
            // The test suite's named opt-out from durability, for this test database only:
            // commits do not wait for the WAL flush (a crash may lose the last ones; the
            // cluster stays consistent, as fsync stays on). Never set on `parley` itself.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE {db_name} SET synchronous_commit = off"
            )))
            .execute(&mut conn)
            .await?;
        }
        let db_url = replace_db(&admin, &db_name);
        Ok(Self {
            db_name,
            db_url,
            redis_url: redis_url(),
            prefix: format!("t{}:", &id[..12]),
            messaging: Vec::new(),
            presence: Vec::new(),
            receipts: Vec::new(),
            notification: Vec::new(),
            gateways: Vec::new(),
            storage: None,
        })
    }

    /// One messaging and one gateway, default settings.
    pub async fn start() -> anyhow::Result<Self> {
        let mut s = Self::empty().await?;
        s.add_messaging(&[]).await?;
        s.add_gateway(&[]).await?;
        Ok(s)
    }

    /// The settings that connect a service to this stack: its database, Redis and prefix.
    pub fn wiring(&self) -> [(&'static str, String); 3] {
        [
            ("PARLEY__DATABASE__URL", self.db_url.clone()),
            ("PARLEY__REDIS__URL", self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX", self.prefix.clone()),
        ]
    }

    /// The address of messaging instance `0`.
    fn messaging_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self
            .messaging
            .first()
            .context("start messaging first")?
            .addr)
    }

    /// `http://{addr}` of the first instance in `running`, or "" (not configured).
    fn url_of(running: &[Running]) -> String {
        running
            .first()
            .map(|r| format!("http://{}", r.addr))
            .unwrap_or_default()
    }

    /// The object storage settings of this stack's messaging: the S3-compatible server of
    /// `PARLEY_TEST_S3_ENDPOINT` (which `make test` starts), objects under this stack's key
    /// prefix; none (attachments off) when that is unset.
    pub fn storage_settings(&self) -> Vec<(&'static str, String)> {
        let Ok(endpoint) = std::env::var("PARLEY_TEST_S3_ENDPOINT") else {
            return Vec::new();
        };
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        vec![
            ("PARLEY__STORAGE__ENDPOINT", endpoint),
            (
                "PARLEY__STORAGE__REGION",
                var("PARLEY_TEST_S3_REGION", "us-east-1"),
            ),
            (
                "PARLEY__STORAGE__BUCKET",
                var("PARLEY_TEST_S3_BUCKET", "parley"),
            ),
            (
                "PARLEY__STORAGE__ACCESS_KEY_ID",
                var("PARLEY_TEST_S3_ACCESS_KEY_ID", "parley-dev"),
            ),
            (
                "PARLEY__STORAGE__SECRET_ACCESS_KEY",
                var("PARLEY_TEST_S3_SECRET_ACCESS_KEY", "parley-dev-secret"),
            ),
            (
                "PARLEY__STORAGE__KEY_PREFIX",
                format!("{}/", self.prefix.trim_end_matches(':')),
            ),
        ]
    }

    /// Starts a messaging instance with extra `PARLEY__…` settings.
    pub async fn add_messaging(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let config = parley_messaging::Config::load(&settings(
            self.wiring()
                .into_iter()
                .chain([
                    ("PARLEY__OUTBOX__SWEEP_INTERVAL_MS", "200".into()),
                    ("PARLEY__OUTBOX__SWEEP_MIN_AGE_MS", "500".into()),
                ])
                .chain(self.storage_settings()),
            extra,
        ))?;
        if self.storage.is_none() && !config.storage.endpoint.is_empty() {
            self.storage = parley_messaging::storage::Storage::new(&config.storage).ok();
        }
        let running = Running::grpc(move |l, t| parley_messaging::serve(config, l, t)).await?;
        let addr = running.addr;
        self.messaging.push(running);
        Ok(addr)
    }

    /// Starts a gateway talking to messaging instance `0` (or `PARLEY__MESSAGING__URL` in
    /// `extra`), with dev tokens on.
    pub async fn add_gateway(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self.messaging_addr()?;
        let config = parley_gateway::Config::load(&settings(
            [
                ("PARLEY__MESSAGING__URL", format!("http://{messaging}")),
                ("PARLEY__REDIS__URL", self.redis_url.clone()),
                ("PARLEY__REDIS__PREFIX", self.prefix.clone()),
                ("PARLEY__AUTH__HS256_SECRET", SECRET.into()),
                ("PARLEY__AUTH__DEV_TOKENS", "true".into()),
                ("PARLEY__WS__GAP_WAIT_MS", "100".into()),
                // Presence, receipts and notification run only where a test starts them.
                ("PARLEY__PRESENCE__URL", Self::url_of(&self.presence)),
                ("PARLEY__RECEIPTS__URL", Self::url_of(&self.receipts)),
                ("PARLEY__PRESENCE__HEARTBEAT_MS", "1000".into()),
                (
                    "PARLEY__NOTIFICATION__URL",
                    Self::url_of(&self.notification),
                ),
            ],
            extra,
        ))?;
        // Its own runtime, so `kill()` is a faithful kill -9 (see Running::kill).
        let running = Running::isolated(move |l, t| parley_gateway::serve(config, l, t))?;
        let addr = running.addr;
        let ready = format!("http://{addr}/readyz");
        let http = reqwest::Client::new();
        eventually(
            PATIENCE,
            format_args!("the gateway at {addr} ready"),
            || async {
                let answer = http.get(&ready).send().await;
                Ok(answer.is_ok_and(|r| r.status().is_success()).then_some(()))
            },
        )
        .await?;
        self.gateways.push(running);
        Ok(addr)
    }

    /// Starts an instance on its own runtime (see [`Running::kill`]) and waits until it
    /// answers gRPC health.
    async fn add_isolated<F, Fut>(to: &mut Vec<Running>, serve: F) -> anyhow::Result<SocketAddr>
    where
        F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut running = Running::isolated(serve)?;
        running.ready().await?;
        let addr = running.addr;
        to.push(running);
        Ok(addr)
    }

    /// Starts a presence instance (gateways started afterwards use the first one).
    pub async fn add_presence(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let config = parley_presence::Config::load(&settings(
            [
                ("PARLEY__REDIS__URL", self.redis_url.clone()),
                ("PARLEY__REDIS__PREFIX", self.prefix.clone()),
                ("PARLEY__SWEEPER__INTERVAL_MS", "200".into()),
            ],
            extra,
        ))?;
        Self::add_isolated(&mut self.presence, move |l, t| {
            parley_presence::serve(config, l, t)
        })
        .await
    }

    /// Starts a receipts instance consuming this stack's event stream (gateways started
    /// afterwards use the first one).
    pub async fn add_receipts(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self.messaging_addr()?;
        let config = parley_receipts::Config::load(&settings(
            self.wiring().into_iter().chain([
                ("PARLEY__MESSAGING__URL", format!("http://{messaging}")),
                ("PARLEY__CONSUMER__BLOCK_MS", "200".into()),
            ]),
            extra,
        ))?;
        Self::add_isolated(&mut self.receipts, move |l, t| {
            parley_receipts::serve(config, l, t)
        })
        .await
    }

    /// Starts a notification instance on this stack's stream, messaging and presence (start
    /// those first; gateways started afterwards use the first instance). Pushes go out at
    /// once (no coalescing window) unless `extra` says otherwise.
    pub async fn add_notification(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self.messaging_addr()?;
        let presence = self.presence.first().context("start presence first")?.addr;
        let config = parley_notification::Config::load(&settings(
            self.wiring().into_iter().chain([
                // Webhook receivers in tests listen on loopback (development opt-in).
                ("PARLEY__WEBHOOK__ALLOW_INTERNAL", "true".into()),
                ("PARLEY__MESSAGING__URL", format!("http://{messaging}")),
                ("PARLEY__PRESENCE__URL", format!("http://{presence}")),
                ("PARLEY__CONSUMER__BLOCK_MS", "200".into()),
                ("PARLEY__DELIVERY__COALESCE_WINDOW_MS", "0".into()),
                ("PARLEY__DELIVERY__POLL_INTERVAL_MS", "50".into()),
                ("PARLEY__DELIVERY__BACKOFF_BASE_MS", "100".into()),
            ]),
            extra,
        ))?;
        Self::add_isolated(&mut self.notification, move |l, t| {
            parley_notification::serve(config, l, t)
        })
        .await
    }

    /// Base URL of gateway `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.gateways[i].addr)
    }

    /// A client of messaging instance `0`'s gRPC API.
    pub async fn messaging_client(&self) -> anyhow::Result<Messaging> {
        Messaging::connect(self.messaging_addr()?).await
    }

    /// A direct connection to the test database (qualify tables: `messaging.outbox`).
    pub async fn db(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.db_url).await?)
    }

    /// A connection to the stack's Redis.
    pub async fn redis(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        Ok(redis::Client::open(self.redis_url.as_str())?
            .get_multiplexed_async_connection()
            .await?)
    }

    /// The key of the event stream messaging appends to (under this stack's prefix).
    pub fn stream_key(&self) -> String {
        format!("{}{}", self.prefix, parley_kit::stream::EVENTS)
    }

    /// Waits (at most [`PATIENCE`]) until the consumer group `group` has been handed every
    /// entry of the event stream and has acknowledged all of them, i.e. the service behind
    /// it applied everything published so far (messaging appends before it answers).
    pub async fn wait_consumed(&self, group: &str) -> anyhow::Result<()> {
        let r = self.redis().await?;
        let key = self.stream_key();
        wait_for(
            PATIENCE,
            format_args!("the {group} group caught up with {key}"),
            || async {
                let mut c = r.clone();
                let stream: redis::streams::StreamInfoStreamReply = redis::cmd("XINFO")
                    .arg("STREAM")
                    .arg(&key)
                    .query_async(&mut c)
                    .await?;
                let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&key)
                    .query_async(&mut c)
                    .await?;
                let caught_up = groups.groups.iter().any(|g| {
                    g.name == group
                        && g.last_delivered_id == stream.last_generated_id
                        && g.pending == 0
                });
                anyhow::Ok((caught_up, groups))
            },
            |(caught_up, _)| *caught_up,
        )
        .await?;
        Ok(())
    }

    /// Waits until notification has settled everything published so far: its group caught
    /// up with the stream (so every push it will make for those events is recorded) and no
    /// delivery is pending (so each was made, or given up). A barrier for "no push came".
    pub async fn wait_pushes_settled(&self) -> anyhow::Result<()> {
        self.wait_consumed("notification").await?;
        wait_for(
            PATIENCE,
            "no pending notification delivery",
            || {
                self.query_i64(
                    "SELECT count(*) FROM notification.deliveries WHERE status = 'pending'",
                )
            },
            |n| *n == 0,
        )
        .await?;
        Ok(())
    }

    /// Locks a channel's row (`FOR UPDATE`) in a transaction of its own and keeps it until
    /// the transaction is committed or dropped: that channel's sends wait meanwhile.
    pub async fn lock_channel(
        &self,
        channel: &str,
    ) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let db = self.db().await?;
        let mut lock = db.begin().await?;
        sqlx::query("SELECT 1 FROM messaging.channels WHERE id = $1::uuid FOR UPDATE")
            .bind(channel)
            .execute(&mut *lock)
            .await?;
        Ok(lock)
    }

    /// Runs `sql` (one row, one integer column, e.g. `SELECT count(*) FROM messaging.outbox`)
    /// on the test database.
    pub async fn query_i64(&self, sql: &str) -> anyhow::Result<i64> {
        use sqlx::Connection as _;
        let mut conn = sqlx::postgres::PgConnection::connect(&self.db_url).await?;
        let v: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(v)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Gateways first: they hold connections to the others.
        drop(std::mem::take(&mut self.gateways));
        drop(std::mem::take(&mut self.receipts));
        drop(std::mem::take(&mut self.notification));
        drop(std::mem::take(&mut self.presence));
        drop(std::mem::take(&mut self.messaging));
        let (db, admin, redis, prefix, db_url, storage) = (
            self.db_name.clone(),
            pg_admin_url(),
            self.redis_url.clone(),
            self.prefix.clone(),
            self.db_url.clone(),
            self.storage.take(),
        );
        on_own_runtime(async move {
            // The objects of every upload the test announced (uploaded or not).
            if let Some(storage) = storage
                && let Ok(mut c) = sqlx::postgres::PgConnection::connect_url(&db_url).await
            {
                let objects: Vec<(uuid::Uuid, uuid::Uuid)> =
                    sqlx::query_as("SELECT channel_id, id FROM messaging.attachments")
                        .fetch_all(&mut c)
                        .await
                        .unwrap_or_default();
                for (channel, id) in objects {
                    let _ = storage.delete(&storage.key(channel, id)).await;
                }
            }
            if let Ok(mut c) = sqlx::postgres::PgConnection::connect_url(&admin).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await;
            }
            delete_keys(&redis, &prefix).await;
        });
    }
}

trait ConnectUrl: Sized {
    async fn connect_url(url: &str) -> anyhow::Result<Self>;
}

impl ConnectUrl for sqlx::postgres::PgConnection {
    async fn connect_url(url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection as _;
        Ok(sqlx::postgres::PgConnection::connect(url).await?)
    }
}

/// The value of `series` (name and labels, exactly as exported) in a Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn replace_db(url: &str, db: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, last)) if !last.contains('@') && !last.contains(':') => {
            let query = last
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{base}/{db}{query}")
        }
        _ => format!("{url}/{db}"),
    }
}
