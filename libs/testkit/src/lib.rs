//! Integration-test harness: real services on ephemeral ports against real Postgres and
//! Redis. Each [`Stack`] gets its own database and Redis key prefix, so tests run in
//! parallel, and removes both when dropped.
//!
//! Servers come from `PARLEY_TEST_PG_URL` (an admin URL, database `postgres`) and
//! `PARLEY_TEST_REDIS_URL`, which `make test` sets to the private instances it starts.

mod client;
mod private_redis;

pub use client::{Client, Reply, Ws, token, token_with};
pub use private_redis::PrivateRedis;

use std::{collections::HashMap, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
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

fn redis_url() -> String {
    std::env::var("PARLEY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A running service task and the token that stops it.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The service's own runtime, when it has one: dropping it drops every task the service
    /// spawned, which is what a killed process looks like from outside.
    rt: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// SIGTERM-like stop: cancels and waits for the drain to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("stop timed out")??
    }

    /// kill -9-like stop: nothing drains. A service on its own runtime loses every task
    /// at once (connections, heartbeats, background loops); otherwise only its main task
    /// is aborted.
    pub fn kill(mut self) {
        match self.rt.take() {
            Some(rt) => rt.shutdown_background(),
            None => self.task.abort(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Runs `serve` on a runtime of its own, on a listener bound to an ephemeral port.
fn spawn_isolated<F, Fut>(serve: F) -> anyhow::Result<Running>
where
    F: FnOnce(tokio::net::TcpListener, CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = rt.spawn(async move {
        // Registered with this runtime's reactor, not the test's.
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        serve(listener, token).await
    });
    Ok(Running {
        addr,
        shutdown,
        task,
        rt: Some(rt),
    })
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
        })
    }

    /// One messaging and one gateway, default settings.
    pub async fn start() -> anyhow::Result<Self> {
        let mut s = Self::empty().await?;
        s.add_messaging(&[]).await?;
        s.add_gateway(&[]).await?;
        Ok(s)
    }

    /// Starts a messaging instance with extra `PARLEY__…` settings.
    pub async fn add_messaging(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__DATABASE__URL".into(), self.db_url.clone()),
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            ("PARLEY__OUTBOX__SWEEP_INTERVAL_MS".into(), "200".into()),
            ("PARLEY__OUTBOX__SWEEP_MIN_AGE_MS".into(), "500".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_messaging::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(parley_messaging::serve(config, listener, shutdown.clone()));
        wait_port(addr).await?;
        self.messaging.push(Running {
            addr,
            shutdown,
            task,
            rt: None,
        });
        Ok(addr)
    }

    /// Starts a gateway talking to messaging instance `0` (or `PARLEY__MESSAGING__URL` in
    /// `extra`), with dev tokens on.
    pub async fn add_gateway(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self
            .messaging
            .first()
            .context("start messaging first")?
            .addr;
        let mut vars: HashMap<String, String> = HashMap::from([
            (
                "PARLEY__MESSAGING__URL".into(),
                format!("http://{messaging}"),
            ),
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            ("PARLEY__AUTH__HS256_SECRET".into(), SECRET.into()),
            ("PARLEY__AUTH__DEV_TOKENS".into(), "true".into()),
            ("PARLEY__WS__GAP_WAIT_MS".into(), "100".into()),
            // Presence and receipts run only where a test starts them.
            (
                "PARLEY__PRESENCE__URL".into(),
                self.presence
                    .first()
                    .map(|r| format!("http://{}", r.addr))
                    .unwrap_or_default(),
            ),
            (
                "PARLEY__RECEIPTS__URL".into(),
                self.receipts
                    .first()
                    .map(|r| format!("http://{}", r.addr))
                    .unwrap_or_default(),
            ),
            ("PARLEY__PRESENCE__HEARTBEAT_MS".into(), "1000".into()),
            (
                "PARLEY__NOTIFICATION__URL".into(),
                self.notification
                    .first()
                    .map(|r| format!("http://{}", r.addr))
                    .unwrap_or_default(),
            ),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_gateway::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        // Its own runtime, so `kill()` is a faithful kill -9 (see Running::kill).
        let running = spawn_isolated(move |l, t| parley_gateway::serve(config, l, t))?;
        let addr = running.addr;
        let ready = format!("http://{addr}/readyz");
        let http = reqwest::Client::new();
        for _ in 0..100 {
            if http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                self.gateways.push(running);
                return Ok(addr);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("gateway at {addr} never became ready")
    }

    /// Starts a presence instance (gateways started afterwards use the first one).
    pub async fn add_presence(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            ("PARLEY__SWEEPER__INTERVAL_MS".into(), "200".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_presence::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let running = spawn_isolated(move |l, t| parley_presence::serve(config, l, t))?;
        let addr = running.addr;
        wait_port(addr).await?;
        self.presence.push(running);
        Ok(addr)
    }

    /// Starts a receipts instance consuming this stack's event stream (gateways started
    /// afterwards use the first one).
    pub async fn add_receipts(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self
            .messaging
            .first()
            .context("start messaging first")?
            .addr;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__DATABASE__URL".into(), self.db_url.clone()),
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            (
                "PARLEY__MESSAGING__URL".into(),
                format!("http://{messaging}"),
            ),
            ("PARLEY__CONSUMER__BLOCK_MS".into(), "200".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = parley_receipts::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let running = spawn_isolated(move |l, t| parley_receipts::serve(config, l, t))?;
        let addr = running.addr;
        wait_port(addr).await?;
        self.receipts.push(running);
        Ok(addr)
    }

    /// Starts a notification instance on this stack's stream, messaging and presence (start
    /// those first; gateways started afterwards use the first instance). Pushes go out at
    /// once (no coalescing window) unless `extra` says otherwise.
    pub async fn add_notification(&mut self, extra: &[(&str, &str)]) -> anyhow::Result<SocketAddr> {
        let messaging = self
            .messaging
            .first()
            .context("start messaging first")?
            .addr;
        let presence = self.presence.first().context("start presence first")?.addr;
        let mut vars: HashMap<String, String> = HashMap::from([
            ("PARLEY__DATABASE__URL".into(), self.db_url.clone()),
            ("PARLEY__REDIS__URL".into(), self.redis_url.clone()),
            ("PARLEY__REDIS__PREFIX".into(), self.prefix.clone()),
            // Webhook receivers in tests listen on loopback (development opt-in).
            ("PARLEY__WEBHOOK__ALLOW_INTERNAL".into(), "true".into()),
            (
                "PARLEY__MESSAGING__URL".into(),
                format!("http://{messaging}"),
            ),
            ("PARLEY__PRESENCE__URL".into(), format!("http://{presence}")),
            ("PARLEY__CONSUMER__BLOCK_MS".into(), "200".into()),
            ("PARLEY__DELIVERY__COALESCE_WINDOW_MS".into(), "0".into()),
            ("PARLEY__DELIVERY__POLL_INTERVAL_MS".into(), "50".into()),
            ("PARLEY__DELIVERY__BACKOFF_BASE_MS".into(), "100".into()),
        ]);
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config =
            parley_notification::Config::load(&parley_kit::config::Sources::from_vars(vars))?;
        let running = spawn_isolated(move |l, t| parley_notification::serve(config, l, t))?;
        let addr = running.addr;
        wait_port(addr).await?;
        self.notification.push(running);
        Ok(addr)
    }

    /// Base URL of gateway `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.gateways[i].addr)
    }

    /// A direct connection to the test database (qualify tables: `messaging.outbox`).
    pub async fn db(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::PgPool::connect(&self.db_url).await?)
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
        let (db, admin, redis, prefix) = (
            self.db_name.clone(),
            pg_admin_url(),
            self.redis_url.clone(),
            self.prefix.clone(),
        );
        // Cleanup needs a runtime of its own: Drop may run inside or outside one.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::postgres::PgConnection::connect_url(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
                if let Ok(client) = redis::Client::open(redis.as_str())
                    && let Ok(mut c) = client.get_multiplexed_async_connection().await
                {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query_async(&mut c)
                        .await
                        .unwrap_or_default();
                    for chunk in keys.chunks(500) {
                        let _: redis::RedisResult<()> =
                            redis::cmd("DEL").arg(chunk).query_async(&mut c).await;
                    }
                }
            });
        })
        .join();
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

async fn wait_port(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("{addr} never accepted connections")
}
