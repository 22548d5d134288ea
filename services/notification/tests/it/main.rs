//! Integration tests of the notification service: real Postgres, Redis, messaging and
//! presence (from the testkit), notification started on port 0 with `serve()`, and a
//! local HTTP receiver standing in for the push providers / webhook endpoints.

mod api;
mod blocks;
mod fanout;
mod members;
mod providers;
mod recovery;

use parley_kit::config::Settings as _;
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use parley_proto::{
    notification::v1::{self as pb, notification_service_client::NotificationServiceClient},
    presence::v1::{self as ppb, presence_service_client::PresenceServiceClient},
};
pub use parley_testkit::as_user;
use parley_testkit::{Messaging, Running, Stack, settings, wait_for};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Bound of every wait.
pub const PATIENCE: Duration = parley_testkit::PATIENCE;

/// The webhook secret the tests configure.
pub const SECRET: &str = "test-webhook-secret";

/// A VAPID private key (P-256 scalar, base64url) for the tests only.
pub const VAPID_KEY: &str = "z1g3kjAI8wW8CvffCHhcA7shCkr727WnXXr06XE8sS8";
/// A browser's subscription keys (P-256 public point and auth secret) for the tests only.
pub const UA_P256DH: &str =
    "BBNbm1g3vEkBIfAhe9ZqOp9VHsclQDtSFJj-kMKpvaRqgi5LKFQl1V2MMhqrdDZTlFU3U74LrDCjD5Flr54rCvU";
pub const UA_AUTH: &str = "8jwLbXsLLPhD6tA1BAzQzA";

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Default)]
struct ReceiverState {
    seen: Mutex<Vec<Recorded>>,
    /// Per path: statuses to answer next (then 200).
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    /// Per path: how long to wait before answering.
    stall: Mutex<HashMap<String, Duration>>,
}

/// A local HTTP server (HTTP/1.1 and HTTP/2 prior knowledge) that records requests.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
    _task: JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> anyhow::Result<Self> {
        let state = Arc::new(ReceiverState::default());
        let s = state.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let s = s.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let path = parts.uri.path().to_owned();
                s.seen.lock().expect("lock").push(Recorded {
                    path: path.clone(),
                    version: parts.version,
                    headers: parts.headers,
                    body,
                });
                let stall = s.stall.lock().expect("lock").get(&path).copied();
                if let Some(d) = stall {
                    tokio::time::sleep(d).await;
                }
                let code = s
                    .script
                    .lock()
                    .expect("lock")
                    .get_mut(&path)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or(200);
                http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            addr,
            state,
            _task: task,
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answers the next requests to `path` with these statuses.
    pub fn script(&self, path: &str, statuses: &[u16]) {
        self.state
            .script
            .lock()
            .expect("lock")
            .entry(path.to_owned())
            .or_default()
            .extend(statuses);
    }

    /// Answers requests to `path` only after `d` (a slow endpoint).
    pub fn stall(&self, path: &str, d: Duration) {
        self.state
            .stall
            .lock()
            .expect("lock")
            .insert(path.to_owned(), d);
    }

    /// Every request to `path` so far.
    pub fn seen(&self, path: &str) -> Vec<Recorded> {
        self.state
            .seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them.
    pub async fn wait(&self, path: &str, n: usize) -> anyhow::Result<Vec<Recorded>> {
        wait_for(
            PATIENCE,
            format_args!("{n} requests to {path}"),
            || async { Ok(self.seen(path).len()) },
            |got| *got >= n,
        )
        .await?;
        Ok(self.seen(path))
    }
}

/// The message ids carried by `pushes` (a coalesced push carries several), in order.
pub fn pushed_messages(pushes: &[Recorded]) -> Vec<String> {
    pushes
        .iter()
        .flat_map(|p| {
            p.json()["message_ids"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Stack (messaging + presence), receiver and, once started, notification.
pub struct Env {
    /// Declared first: notification stops before the stack drops the database under it.
    pub notification: Option<Running>,
    pub stack: Stack,
    pub receiver: Receiver,
    messaging: Messaging,
    presence: PresenceServiceClient<Channel>,
}

/// Messaging, presence and the receiver; notification not started.
pub async fn env() -> anyhow::Result<Env> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    let p = stack.add_presence(&[]).await?;
    let messaging = stack.messaging_client().await?;
    let presence = PresenceServiceClient::connect(format!("http://{p}")).await?;
    Ok(Env {
        stack,
        receiver: Receiver::start().await?,
        notification: None,
        messaging,
        presence,
    })
}

/// Everything, notification started with `extra` settings.
pub async fn spawn(extra: &[(&str, &str)]) -> anyhow::Result<Env> {
    let mut env = env().await?;
    env.notification = Some(env.start(extra).await?);
    Ok(env)
}

impl Env {
    /// Starts a notification instance (it is returned, not stored) and waits until it
    /// serves.
    pub async fn start(&self, extra: &[(&str, &str)]) -> anyhow::Result<Running> {
        let messaging = self.stack.messaging.first().context("messaging")?.addr;
        let presence = self.stack.presence.first().context("presence")?.addr;
        let recv = self.receiver.url("");
        let mut sources = settings(
            self.stack.wiring().into_iter().chain([
                ("PARLEY__DATABASE__MAX_CONNECTIONS", "8".into()),
                ("PARLEY__MESSAGING__URL", format!("http://{messaging}")),
                ("PARLEY__PRESENCE__URL", format!("http://{presence}")),
                ("PARLEY__CONSUMER__BLOCK_MS", "200".into()),
                ("PARLEY__CONSUMER__LAG_INTERVAL_MS", "200".into()),
                ("PARLEY__CONSUMER__RETRY_BACKOFF_MS", "100".into()),
                ("PARLEY__DELIVERY__POLL_INTERVAL_MS", "50".into()),
                ("PARLEY__DELIVERY__COALESCE_WINDOW_MS", "0".into()),
                ("PARLEY__DELIVERY__BACKOFF_BASE_MS", "50".into()),
                ("PARLEY__DELIVERY__BACKOFF_MAX_MS", "200".into()),
                ("PARLEY__DELIVERY__REQUEST_TIMEOUT_MS", "5000".into()),
                ("PARLEY__WEBHOOK__SECRET", SECRET.into()),
                ("PARLEY__WEBHOOK__ALLOW_INTERNAL", "true".into()),
                ("PARLEY__FCM__ENDPOINT", format!("{recv}/fcm")),
                ("PARLEY__FCM__PROJECT_ID", "parley-test".into()),
                ("PARLEY__FCM__ACCESS_TOKEN", "fcm-access-token".into()),
                ("PARLEY__APNS__ENDPOINT", format!("{recv}/apns")),
                ("PARLEY__APNS__TOPIC", "app.parley.test".into()),
                ("PARLEY__APNS__PROVIDER_TOKEN", "apns-provider-token".into()),
                ("PARLEY__APNS__HTTP2_PRIOR_KNOWLEDGE", "true".into()),
                ("PARLEY__WEBPUSH__VAPID_PRIVATE_KEY", VAPID_KEY.into()),
                ("PARLEY__WEBPUSH__TTL_SECONDS", "60".into()),
            ]),
            extra,
        );
        // A list cannot be set through a flat variable map: use the file layer for it.
        let file = std::env::temp_dir().join(format!("parley-notif-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(
            &file,
            "[webpush]\nallowed_host_suffixes = [\"127.0.0.1\"]\n",
        )?;
        sources.file = Some(file);
        let config = parley_notification::Config::load(&sources)?;
        Running::grpc(move |l, t| parley_notification::serve(config, l, t)).await
    }

    pub async fn client(&self) -> anyhow::Result<NotificationServiceClient<Channel>> {
        let addr = self.notification.as_ref().context("not started")?.addr;
        Ok(NotificationServiceClient::connect(format!("http://{addr}")).await?)
    }

    /// A group channel named "test" of `owner` with `members`; returns its id.
    pub async fn group(&self, owner: &str, members: &[&str]) -> anyhow::Result<String> {
        self.messaging.group(owner, members).await
    }

    /// Sends `body` as `user`; returns the message id.
    pub async fn send(&self, user: &str, channel: &str, body: &str) -> anyhow::Result<String> {
        Ok(self.messaging.send(user, channel, body).await?.id)
    }

    /// Adds `user` to `channel`, as `by` (its owner).
    pub async fn add_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        self.messaging.add_member(by, channel, user).await
    }

    /// Removes `user` from `channel`, as `by` (its owner, or `user` leaving).
    pub async fn remove_member(&self, by: &str, channel: &str, user: &str) -> anyhow::Result<()> {
        self.messaging.remove_member(by, channel, user).await
    }

    /// The value of the sample `series` (name and labels, as rendered) on notification's
    /// `/metrics`; 0 when absent.
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let addr = self.notification.as_ref().context("not started")?.addr;
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
        Ok(parley_testkit::sample(&text, series).unwrap_or(0.0))
    }

    /// Makes `user` ONLINE (a live connection in presence).
    pub async fn online(&self, user: &str) -> anyhow::Result<()> {
        self.presence
            .clone()
            .register_connection(ppb::RegisterConnectionRequest {
                user_id: user.into(),
                connection_id: uuid::Uuid::new_v4().to_string(),
                node_id: "test-node".into(),
                ttl_seconds: 600,
            })
            .await?;
        Ok(())
    }

    /// Registers a device of `user`; returns its id.
    pub async fn register(
        &self,
        user: &str,
        platform: pb::Platform,
        token: &str,
    ) -> Result<pb::RegisterDeviceResponse, tonic::Status> {
        let mut c = self
            .client()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(c.register_device(as_user(
            pb::RegisterDeviceRequest {
                platform: platform as i32,
                token: token.into(),
            },
            user,
        ))
        .await?
        .into_inner())
    }

    /// Registers a webhook device of `user` at the receiver's `path`.
    pub async fn webhook(&self, user: &str, path: &str) -> anyhow::Result<String> {
        let r = self
            .register(user, pb::Platform::Webhook, &self.receiver.url(path))
            .await?;
        Ok(r.device.context("device")?.id)
    }

    pub async fn unregister(&self, user: &str, id: &str) -> anyhow::Result<()> {
        self.client()
            .await?
            .unregister_device(as_user(
                pb::UnregisterDeviceRequest {
                    device_id: id.into(),
                },
                user,
            ))
            .await?;
        Ok(())
    }

    pub async fn devices(&self, user: &str) -> anyhow::Result<Vec<pb::Device>> {
        Ok(self
            .client()
            .await?
            .list_devices(as_user(pb::ListDevicesRequest {}, user))
            .await?
            .into_inner()
            .devices)
    }

    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        self.stack.query_i64(sql).await
    }

    /// Waits until `sql` (one integer) returns `want`.
    pub async fn wait_count(&self, sql: &str, want: i64) -> anyhow::Result<()> {
        wait_for(
            PATIENCE,
            format_args!("{sql} = {want}"),
            || self.count(sql),
            |got| *got == want,
        )
        .await?;
        Ok(())
    }

    /// Waits until the notification group has read and acknowledged every stream entry.
    pub async fn wait_consumed(&self) -> anyhow::Result<()> {
        self.stack.wait_consumed("notification").await
    }

    pub fn stream_key(&self) -> String {
        self.stack.stream_key()
    }

    /// Waits until no delivery row is pending.
    pub async fn wait_settled(&self) -> anyhow::Result<()> {
        self.stack.wait_pushes_settled().await
    }
}
