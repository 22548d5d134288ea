//! Integration-test harness: real services on ephemeral ports against real Postgres and
//! Redis. Each [`Stack`] gets its own database and Redis key prefix, so tests run in
//! parallel, and removes both when dropped.
//!
//! Servers come from `PARLEY_TEST_PG_URL` (an admin URL, database `postgres`) and
//! `PARLEY_TEST_REDIS_URL`, which `make test` sets to the private instances it starts.

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

/// A private `redis-server` process that a test may stop and restart (the shared test Redis
/// must not be disturbed). Killed on drop.
pub struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`) on a free loopback port; `Ok(None)` when the
    /// binary is not installed.
    pub async fn start() -> anyhow::Result<Option<Self>> {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|d| d.join("redis-server").is_file())
        });
        if !found {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir =
            std::env::temp_dir().join(format!("parley-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut r = Self {
            port,
            dir,
            child: None,
        };
        r.restart().await?;
        Ok(Some(r))
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9 (no persistence: a restart comes back empty, like a lost cache node).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and waits until it answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawn redis-server")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url().as_str())?;
        for _ in 0..200 {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("redis-server on port {} never answered", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Signs a token the test gateways accept.
pub fn token(user: &str, exp_in_secs: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let exp = chrono::Utc::now().timestamp() + exp_in_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// Signs a token with arbitrary `claims` and `secret` (HS256): forged, expired or
/// incomplete tokens for tests of authentication.
pub fn token_with(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// A REST client acting as one user against one gateway.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub user: String,
    pub token: String,
    http: reqwest::Client,
}

/// Status and JSON body of a response (`Value::Null` for an empty body).
pub type Reply = (u16, Value, reqwest::header::HeaderMap);

impl Client {
    pub fn new(base: &str, user: &str) -> Self {
        Self {
            base: base.to_owned(),
            user: user.to_owned(),
            token: token(user, 3600),
            http: reqwest::Client::new(),
        }
    }

    /// The same user with another token (e.g. an expired or forged one).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// The same user against another gateway.
    pub fn on(&self, base: &str) -> Self {
        Self {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    /// Any request with this user's token and a raw body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, body, headers))
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        self.raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            Some(&self.token),
        )
        .await
    }

    /// Creates a group channel with `members`; returns its id.
    pub async fn group(&self, name: &str, members: &[&str]) -> anyhow::Result<String> {
        let (s, b, _) = self
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": name, "members": members})),
            )
            .await?;
        anyhow::ensure!(s == 201, "create channel: {s} {b}");
        Ok(b["id"].as_str().context("channel id")?.to_owned())
    }

    /// `POST …/messages` returning the raw reply (any status).
    pub async fn post_message(
        &self,
        channel: &str,
        cid: &str,
        body: &str,
    ) -> anyhow::Result<Reply> {
        self.req(
            "POST",
            &format!("/v1/channels/{channel}/messages"),
            Some(json!({"client_msg_id": cid, "body": body})),
        )
        .await
    }

    /// `GET …/messages?{query}`; errors unless `200`. Returns the page body.
    pub async fn history(&self, channel: &str, query: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req(
                "GET",
                &format!("/v1/channels/{channel}/messages?{query}"),
                None,
            )
            .await?;
        anyhow::ensure!(s == 200, "history: {s} {b}");
        Ok(b)
    }

    /// `GET /v1/channels/{id}`; errors unless `200`.
    pub async fn channel(&self, channel: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req("GET", &format!("/v1/channels/{channel}"), None)
            .await?;
        anyhow::ensure!(s == 200, "get channel: {s} {b}");
        Ok(b)
    }

    /// Sends a message over REST; returns the message object.
    pub async fn send(&self, channel: &str, cid: &str, body: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req(
                "POST",
                &format!("/v1/channels/{channel}/messages"),
                Some(json!({"client_msg_id": cid, "body": body})),
            )
            .await?;
        anyhow::ensure!(s == 201 || s == 200, "send: {s} {b}");
        Ok(b)
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client acting as one user.
pub struct Ws {
    stream: WsStream,
    pub hello: Value,
}

impl Ws {
    /// Connects with `?token=` and waits for `hello`.
    pub async fn connect(base: &str, user: &str) -> anyhow::Result<Self> {
        match Self::try_connect(base, &token(user, 3600)).await? {
            Ok(ws) => Ok(ws),
            Err((status, body)) => anyhow::bail!("websocket rejected: {status} {body}"),
        }
    }

    /// Connects with `?token={token}`: the socket after its `hello`, or the status and
    /// JSON body of the HTTP answer that refused the upgrade.
    pub async fn try_connect(
        base: &str,
        token: &str,
    ) -> anyhow::Result<Result<Self, (u16, Value)>> {
        let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
        let stream = match tokio_tungstenite::connect_async(url).await {
            Ok((stream, _)) => stream,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let body = serde_json::from_slice(body)
                    .unwrap_or(Value::String(String::from_utf8_lossy(body).into()));
                return Ok(Err((resp.status().as_u16(), body)));
            }
            Err(e) => return Err(e.into()),
        };
        let mut ws = Self {
            stream,
            hello: Value::Null,
        };
        let hello = ws
            .next_frame(Duration::from_secs(10))
            .await?
            .context("no hello")?;
        anyhow::ensure!(hello["type"] == "hello", "first frame: {hello}");
        ws.hello = hello;
        Ok(Ok(ws))
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await?;
        Ok(())
    }

    pub async fn send_text(&mut self, t: &str) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                t.to_owned().into(),
            ))
            .await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
            .await?;
        Ok(())
    }

    /// Every frame that arrives within `within` (stops early when the socket closes).
    pub async fn frames_for(&mut self, within: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.next_frame(left).await? {
                Some(f) => out.push(f),
                None => return Ok(out),
            }
        }
    }

    /// Frames up to and including the first one for which `done` holds; errors when none
    /// does within `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) => {
                    let stop = done(&f);
                    out.push(f);
                    if stop {
                        return Ok(out);
                    }
                }
                None => anyhow::bail!("no matching frame within {within:?}; got {out:?}"),
            }
        }
    }

    /// The next JSON frame, or `None` on timeout / close.
    pub async fn next_frame(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match next {
                Err(_) => return Ok(None),
                Ok(None) => return Ok(None),
                Ok(Some(m)) => match m? {
                    tokio_tungstenite::tungstenite::Message::Text(t) => {
                        return Ok(Some(serde_json::from_str(t.as_str())?));
                    }
                    tokio_tungstenite::tungstenite::Message::Close(_) => return Ok(None),
                    _ => continue,
                },
            }
        }
    }

    /// Waits for the next frame of type `kind`, skipping others; errors on timeout.
    pub async fn expect(&mut self, kind: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) if f["type"] == kind => return Ok(f),
                Some(_) => continue,
                None => anyhow::bail!("no `{kind}` frame within {within:?}"),
            }
        }
    }

    /// Collects `message` frames until `n` arrived or `within` passed.
    pub async fn messages(&mut self, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) if f["type"] == "message" => out.push(f["message"].clone()),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    /// Whether the server ends the connection (close frame, end of stream or a transport
    /// error) within `within`; text frames before the end are skipped. `false` on timeout.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(
                    None
                    | Some(Err(_))
                    | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))),
                ) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The text frames that arrive until the server closes the connection, and the close
    /// code of its close frame (`None` when it ended without one); errors when the
    /// connection is still open after `within`.
    pub async fn until_closed(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(Vec<Value>, Option<u16>)> {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => anyhow::bail!("still open after {within:?}"),
                Ok(None | Some(Err(_))) => return Ok((frames, None)),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Ok((frames, f.map(|f| u16::from(f.code))));
                }
                Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(t.as_str())?),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
