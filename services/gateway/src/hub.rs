//! Live fan-out on one gateway node: one Redis pub/sub connection, one subscription per
//! topic however many local connections want it (reference-counted), events decoded once
//! and handed to each interested connection's queue.
//!
//! Nothing here assumes pub/sub is lossless: when the Redis connection is re-established,
//! or a connection's queue overflows, the connection is flagged as *lagged* and catches
//! up from messaging history itself.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use parley_kit::topics::{self, Source};
use parley_proto::{events::v1 as ev, presence::v1 as presence, receipts::v1 as receipts};
use prost::Message as _;
use tokio::sync::{Mutex, Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// What arrived, decoded once per node.
#[derive(Debug, Clone)]
pub enum Payload {
    /// From messaging (`messaging:channel:*`, `messaging:user:*`).
    Messaging(Arc<ev::Event>),
    /// From presence (`presence:events` routed per watched user, `presence:channel:*`).
    Presence(Arc<presence::PresenceEvent>),
    /// From receipts (`receipts:channel:*`).
    Receipt(Arc<receipts::ReceiptChanged>),
}

/// An event routed to a connection, with whether it came on the user's own topic.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Payload,
    pub via_user_topic: bool,
}

/// Routes under this prefix are local only (no Redis subscription): the hub fills them
/// from the node-wide `presence:events` subscription, per watched user.
const WATCH: &str = "watch:";

/// How the hub reaches one connection.
#[derive(Clone)]
pub struct ConnSink {
    pub tx: mpsc::Sender<Delivery>,
    /// Set when the connection may have missed events; it then catches up from history.
    pub lagged: Arc<AtomicBool>,
    pub wake: Arc<Notify>,
}

impl ConnSink {
    fn mark_lagged(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

type Routes = HashMap<String, HashMap<u64, ConnSink>>;

struct Inner {
    prefix: String,
    /// topic (with prefix) → connection id → sink. Read on every event.
    routes: RwLock<Routes>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE with the route changes that cause them.
    ops: Mutex<()>,
    sink: Mutex<Option<redis::aio::PubSubSink>>,
    connected: AtomicBool,
    /// Topics subscribed for the whole life of the node (`presence:events`).
    pinned: Vec<String>,
}

/// The node's pub/sub hub (cheap to clone).
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the reader task, which (re)connects until `shutdown`.
    pub fn start(
        client: redis::Client,
        prefix: String,
        presence: bool,
        shutdown: CancellationToken,
    ) -> Self {
        let pinned = if presence {
            vec![format!("{prefix}{}", topics::PRESENCE_EVENTS)]
        } else {
            Vec::new()
        };
        let hub = Self {
            inner: Arc::new(Inner {
                pinned,
                prefix,
                routes: RwLock::new(HashMap::new()),
                ops: Mutex::new(()),
                sink: Mutex::new(None),
                connected: AtomicBool::new(false),
            }),
        };
        tokio::spawn(hub.clone().run(client, shutdown));
        hub
    }

    /// Whether the pub/sub connection is up (readiness).
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Topic of a channel's events.
    pub fn channel_topic(&self, channel: &str) -> String {
        format!(
            "{}{}",
            self.inner.prefix,
            topics::messaging_channel(channel)
        )
    }

    /// Topic of typing events of a channel (presence).
    pub fn typing_topic(&self, channel: &str) -> String {
        format!("{}{}", self.inner.prefix, topics::presence_channel(channel))
    }

    /// Topic of watermark changes of a channel (receipts).
    pub fn receipts_topic(&self, channel: &str) -> String {
        format!("{}{}", self.inner.prefix, topics::receipts_channel(channel))
    }

    /// Local route of a watched user's online/offline events.
    pub fn watch_topic(&self, user: &str) -> String {
        format!("{WATCH}{user}")
    }

    /// Topic of membership events about a user.
    pub fn user_topic(&self, user: &str) -> String {
        format!("{}{}", self.inner.prefix, topics::messaging_user(user))
    }

    /// Routes `topic` to connection `id`, subscribing the node when it is the first.
    pub async fn subscribe(&self, id: u64, topic: &str, sink: &ConnSink) {
        let _op = self.inner.ops.lock().await;
        let first = {
            let mut routes = self
                .inner
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let subs = routes.entry(topic.to_owned()).or_default();
            let first = subs.is_empty();
            subs.insert(id, sink.clone());
            first
        };
        if first && !topic.starts_with(WATCH) {
            if let Some(s) = self.inner.sink.lock().await.as_mut()
                && let Err(e) = s.subscribe(topic).await
            {
                // The reader reconnects and resubscribes every routed topic.
                tracing::warn!(error = %e, topic, "SUBSCRIBE failed");
                sink.mark_lagged();
            }
            metrics::gauge!("gateway_pubsub_topics").increment(1.0);
        }
    }

    /// Stops routing `topic` to connection `id`, unsubscribing the node when it was the last.
    pub async fn unsubscribe(&self, id: u64, topic: &str) {
        let _op = self.inner.ops.lock().await;
        let last = {
            let mut routes = self
                .inner
                .routes
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match routes.get_mut(topic) {
                Some(subs) => {
                    let removed = subs.remove(&id).is_some();
                    let empty = subs.is_empty();
                    if empty {
                        routes.remove(topic);
                    }
                    removed && empty
                }
                None => false,
            }
        };
        if last && !topic.starts_with(WATCH) {
            if let Some(s) = self.inner.sink.lock().await.as_mut()
                && let Err(e) = s.unsubscribe(topic).await
            {
                tracing::warn!(error = %e, topic, "UNSUBSCRIBE failed");
            }
            metrics::gauge!("gateway_pubsub_topics").decrement(1.0);
        }
    }

    async fn run(self, client: redis::Client, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                c = client.get_async_pubsub() => c,
            };
            let (mut sink, mut stream) = match connected {
                Ok(p) => p.split(),
                Err(e) => {
                    tracing::warn!(error = %e, "pub/sub connect failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            {
                let _op = self.inner.ops.lock().await;
                let mut topics: Vec<String> = self
                    .inner
                    .routes
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .keys()
                    .filter(|t| !t.starts_with(WATCH))
                    .cloned()
                    .collect();
                topics.extend(self.inner.pinned.iter().cloned());
                let mut ok = true;
                for chunk in topics.chunks(500) {
                    if let Err(e) = sink.subscribe(chunk).await {
                        tracing::warn!(error = %e, "resubscribe failed");
                        ok = false;
                        break;
                    }
                }
                if !ok {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                *self.inner.sink.lock().await = Some(sink);
                self.inner.connected.store(true, Ordering::Release);
            }
            tracing::info!("pub/sub connected");
            // Anything published while we were away was missed: every connection catches up.
            self.mark_all_lagged();
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else { break };
                self.dispatch(msg.get_channel_name(), msg.get_payload_bytes());
            }
            self.inner.connected.store(false, Ordering::Release);
            *self.inner.sink.lock().await = None;
            metrics::counter!("gateway_pubsub_disconnects_total").increment(1);
            tracing::warn!("pub/sub connection lost; reconnecting");
        }
    }

    fn mark_all_lagged(&self) {
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for subs in routes.values() {
            for s in subs.values() {
                s.mark_lagged();
            }
        }
    }

    fn dispatch(&self, topic: &str, bytes: &[u8]) {
        let p = &self.inner.prefix;
        let rest = topic.strip_prefix(p.as_str()).unwrap_or(topic);
        let source = topics::Source::of(rest);
        let (payload, route) = if let Some(Source::Messaging { .. }) = source {
            match ev::Event::decode(bytes) {
                Ok(e) => (Payload::Messaging(Arc::new(e)), None),
                Err(e) => return tracing::warn!(error = %e, topic, "undecodable event"),
            }
        } else if source == Some(Source::Presence) {
            match presence::PresenceEvent::decode(bytes) {
                Ok(e) => {
                    // Online/offline events come on one node-wide topic: route them to the
                    // connections watching that user.
                    let route = match &e.payload {
                        Some(presence::presence_event::Payload::PresenceChanged(c)) => {
                            c.presence.as_ref().map(|p| self.watch_topic(&p.user_id))
                        }
                        _ => None,
                    };
                    (Payload::Presence(Arc::new(e)), route)
                }
                Err(e) => return tracing::warn!(error = %e, topic, "undecodable presence event"),
            }
        } else if source == Some(Source::Receipts) {
            match receipts::ReceiptChanged::decode(bytes) {
                Ok(e) => (Payload::Receipt(Arc::new(e)), None),
                Err(e) => return tracing::warn!(error = %e, topic, "undecodable receipt event"),
            }
        } else {
            return;
        };
        let via_user_topic = source == Some(Source::Messaging { user: true });
        let routes = self
            .inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(subs) = routes.get(route.as_deref().unwrap_or(topic)) else {
            return;
        };
        for s in subs.values() {
            match s.tx.try_send(Delivery {
                payload: payload.clone(),
                via_user_topic,
            }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("gateway_ws_queue_overflows_total").increment(1);
                    s.mark_lagged();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}
