//! One WebSocket connection: frames in and out, and per-channel ordering.
//!
//! For every channel of the user the connection keeps `delivered` (the highest seq sent to
//! this client) and holds back messages that arrive ahead of it. A gap that is not closed
//! by pub/sub within `gap_wait_ms` is fetched from messaging history, so the client sees
//! each channel's messages in strictly increasing seq with no gaps, live or replayed.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{
        State,
        ws::{
            Message as WsMessage, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use futures::{FutureExt as _, SinkExt as _};
use parley_kit::{
    ErrorCode,
    domain::{ClientMsgId, MessageBody, UserId},
};
use parley_proto::{events::v1 as ev, messaging::v1 as pb};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};

use crate::{
    ApiError, App,
    http::grpc,
    hub::{ConnSink, Delivery, Payload as HubPayload},
    ratelimit::Kind,
    view,
    ws_sends::{SendQueues, SendResult, rate_limited},
};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /v1/ws`: authenticates, then upgrades.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    crate::http::Q(q): crate::http::Q<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let user =
        match crate::auth::bearer(&headers, q.token.as_deref()).and_then(|t| app.auth.verify(&t)) {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::invalid(format!("not a WebSocket upgrade: {}", e.body_text()))
                .into_response();
        }
    };
    if app.draining.is_cancelled() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this node is draining; connect to another",
        )
        .into_response();
    }
    let session = uuid::Uuid::now_v7().to_string();
    let ticket = match app.admission.admit(user.as_str(), &session).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let tracker = app.connections.clone();
    ws.max_message_size(app.config.ws.max_frame_bytes)
        .max_frame_size(app.config.ws.max_frame_bytes)
        .read_buffer_size(app.config.ws.read_buffer_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move { Conn::run(app, user, socket, session, ticket).await })
        })
}

impl Cursor {
    /// Holds a message that came ahead of its turn, unless `cap` are held already: then it
    /// is let go (its seq stays the target) and fetched from history when its turn comes,
    /// so a connection never holds more than `ws.max_held` messages per channel.
    fn hold(&mut self, m: pb::Message, cap: usize) {
        if self.held.len() < cap || self.held.contains_key(&m.seq) {
            self.held.insert(m.seq, m);
        } else {
            metrics::counter!("gateway_ws_held_dropped_total").increment(1);
        }
    }
}

/// Ordering state of one channel on one connection.
#[derive(Debug, Default)]
struct Cursor {
    /// Highest seq sent to the client.
    delivered: u64,
    /// Highest seq known to exist (from events or positions).
    target: u64,
    /// Messages received ahead of `delivered + 1`.
    held: BTreeMap<u64, pb::Message>,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
    /// First seq actually sent on this connection (a resume never replays below it).
    sent_from: Option<u64>,
}

struct Conn {
    app: Arc<App>,
    user: UserId,
    id: u64,
    socket: WebSocket,
    sink: ConnSink,
    topics: HashSet<String>,
    cursors: HashMap<String, Cursor>,
    recent_events: VecDeque<String>,
    /// One queue per channel this connection sends to (bounded; see `ws_sends`).
    sends: SendQueues,
    /// Client frames allowed now (`ws.frames_per_sec`, `ws.frames_burst`).
    frames: FrameBucket,
    /// Typing calls on their way to presence (at most `ws.max_typing_in_flight`).
    typing: Arc<tokio::sync::Semaphore>,
    last_inbound: Instant,
    /// The WebSocket `session_id`, also the connection id towards presence.
    session_id: String,
    /// This connection's place under the connection caps (given back when it drops).
    ticket: crate::admission::Ticket,
    /// Users this connection watches, with the newest presence version sent for each.
    watched: HashMap<String, u64>,
    /// Right after `hello`, messages are held (not sent) until the client's first frame or
    /// this deadline: a client that reconnects sends `resume` first, and its replay must
    /// come before anything sent live.
    hold_until: Option<Instant>,
    /// Some channel may be behind its target (a gap to wait for or fill): only then does
    /// the gap timer run, so idle connections cost no periodic wake-ups.
    maybe_gaps: bool,
    /// Frames fed to the socket since the last flush: frames produced by work that is
    /// already queued leave in one write (one syscall) instead of one each.
    unflushed: usize,
    /// A write failed: the connection ends at the next flush.
    write_failed: bool,
    /// `clean_up` ran (or is running).
    cleaned_up: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        tracing::error!(user = %self.user, conn = self.id, "websocket task ended abnormally; cleaning up");
        let clean_up = self.clean_up();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(clean_up);
        }
    }
}

/// WebSocket close code for a connection closed for breaking a documented limit
/// (RFC 6455 1008, policy violation).
const CLOSE_POLICY: u16 = 1008;

/// How many refused frames within `FLOOD_WINDOW` close the connection is `ws.flood_close_after`.
const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// Just the `ref` of a client frame.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref", default)]
    r: Option<Value>,
}

/// Why a client frame was not taken.
enum Flood {
    /// Over the frame rate: answered `rate_limited` (retry after this many seconds).
    Refused(u64),
    /// Over the rate again and again: the connection is closed.
    Close,
}

/// A connection's frame rate: a token bucket of `ws.frames_burst` refilled at
/// `ws.frames_per_sec`; more than `ws.flood_close_after` refusals within ten seconds close
/// the connection.
struct FrameBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    refused: u32,
    refused_since: Instant,
    close_after: u32,
}

impl FrameBucket {
    fn new(cfg: &crate::WsConfig) -> Self {
        let now = Instant::now();
        let burst = f64::from(cfg.frames_burst.max(1));
        Self {
            rate: f64::from(cfg.frames_per_sec.max(1)),
            burst,
            tokens: burst,
            at: now,
            refused: 0,
            refused_since: now,
            close_after: cfg.flood_close_after.max(1),
        }
    }

    fn take(&mut self, now: Instant) -> Result<(), Flood> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if now.saturating_duration_since(self.refused_since) > FLOOD_WINDOW {
            self.refused = 0;
            self.refused_since = now;
        }
        self.refused += 1;
        if self.refused > self.close_after {
            return Err(Flood::Close);
        }
        let wait = ((1.0 - self.tokens) / self.rate).ceil().max(1.0);
        Err(Flood::Refused(wait as u64))
    }
}

/// Why a connection ended.
enum End {
    Closed,
    Draining,
    Error,
}

impl Conn {
    async fn run(
        app: Arc<App>,
        user: UserId,
        socket: WebSocket,
        session_id: String,
        ticket: crate::admission::Ticket,
    ) {
        let (tx, mut rx) = mpsc::channel(app.config.ws.queue_len);
        let (sends_tx, mut sends_rx) = mpsc::channel(64);
        let sends = SendQueues::new(app.clone(), user.clone(), sends_tx);
        let frames = FrameBucket::new(&app.config.ws);
        let typing = Arc::new(tokio::sync::Semaphore::new(
            app.config.ws.max_typing_in_flight.max(1),
        ));
        let sink = ConnSink {
            tx,
            lagged: Arc::new(AtomicBool::new(false)),
            wake: Arc::new(Notify::new()),
        };
        let mut conn = Self {
            id: NEXT_CONN.fetch_add(1, Ordering::Relaxed),
            app,
            user,
            socket,
            sink,
            topics: HashSet::new(),
            cursors: HashMap::new(),
            recent_events: VecDeque::new(),
            sends,
            frames,
            typing,
            last_inbound: Instant::now(),
            session_id,
            ticket,
            watched: HashMap::new(),
            hold_until: None,
            maybe_gaps: false,
            unflushed: 0,
            write_failed: false,
            cleaned_up: false,
        };
        metrics::gauge!("gateway_ws_connections").increment(1.0);
        if let Some(p) = &conn.app.presence {
            p.connected(conn.user.as_str(), &conn.session_id).await;
        }
        let end = conn.serve(&mut rx, &mut sends_rx).await;
        conn.clean_up().await;
        let reason = match end {
            End::Closed => "closed",
            End::Draining => "draining",
            End::Error => "error",
        };
        tracing::debug!(user = %conn.user, conn = conn.id, reason, "websocket ended");
    }

    /// Leaves no trace of the connection on this node or in presence. Runs once: at the
    /// end of `run`, or from `Drop` when the connection's task ended without reaching it
    /// (a panic), so no presence entry or hub route outlives the socket.
    fn clean_up(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let first = !std::mem::replace(&mut self.cleaned_up, true);
        let (app, user, session, id) = (
            self.app.clone(),
            self.user.clone(),
            self.session_id.clone(),
            self.id,
        );
        let topics = std::mem::take(&mut self.topics);
        async move {
            if !first {
                return;
            }
            if let Some(p) = &app.presence {
                p.disconnected(user.as_str(), &session).await;
            }
            for t in topics {
                app.hub.unsubscribe(id, &t).await;
            }
            metrics::gauge!("gateway_ws_connections").decrement(1.0);
        }
    }

    async fn serve(
        &mut self,
        rx: &mut mpsc::Receiver<Delivery>,
        sends_rx: &mut mpsc::Receiver<SendResult>,
    ) -> End {
        if let Err(end) = self.start().await {
            return end;
        }
        let cfg = self.app.config.ws.clone();
        let heartbeat = Duration::from_millis(cfg.heartbeat_ms);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let gap_wait = Duration::from_millis(cfg.gap_wait_ms);
        let mut gap_tick = tokio::time::interval((gap_wait / 2).max(Duration::from_millis(10)));
        gap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let draining = self.app.draining.clone();
        let wake = self.sink.wake.clone();
        let write_batch = cfg.write_batch_frames.max(1);
        loop {
            if let Err(end) = self.flush().await {
                return end;
            }
            let step = tokio::select! {
                _ = draining.cancelled() => {
                    let _ = self.frame(json!({"type": "reconnect", "reason": "server draining"})).await;
                    let _ = self.close_with(None).await;
                    return End::Draining;
                }
                inbound = self.socket.recv() => match inbound {
                    None | Some(Err(_)) => return End::Closed,
                    Some(Ok(m)) => self.on_inbound(m).await,
                },
                Some(d) = rx.recv() => self.on_event(d).await,
                Some((r, result)) = sends_rx.recv() => self.on_sent(r, result).await,
                _ = wake.notified() => self.catch_up_if_lagged().await,
                _ = gap_tick.tick(), if self.hold_until.is_some() || self.maybe_gaps => {
                    let r = if self.hold_until.is_some_and(|t| Instant::now() >= t) {
                        self.release().await
                    } else {
                        self.fill_due_gaps(gap_wait).await
                    };
                    self.maybe_gaps = self.cursors.values().any(|c| c.target > c.delivered);
                    r
                }
                _ = ping.tick() => {
                    if self.last_inbound.elapsed() > heartbeat * 2 {
                        tracing::info!(user = %self.user, "websocket heartbeat timeout");
                        let _ = self.close_with(None).await;
                        return End::Closed;
                    }
                    self.ticket.renew();
                    self.feed(WsMessage::Ping(Vec::new().into())).await
                }
            };
            if let Err(end) = step {
                return self.finish(end).await;
            }
            // Work that is already waiting is done now, so its frames share the write
            // above (bounded, so a busy connection still flushes and reads regularly).
            for _ in 1..write_batch {
                let step = if let Ok(d) = rx.try_recv() {
                    self.on_event(d).await
                } else if let Ok((r, result)) = sends_rx.try_recv() {
                    self.on_sent(r, result).await
                } else if let Some(inbound) = self.socket.recv().now_or_never() {
                    match inbound {
                        None | Some(Err(_)) => return End::Closed,
                        Some(Ok(m)) => self.on_inbound(m).await,
                    }
                } else {
                    break;
                };
                if let Err(end) = step {
                    return self.finish(end).await;
                }
            }
        }
    }

    /// On a client's close, the frames already queued are still written, best effort and
    /// for at most a second (a client that stops reading does not hold the connection).
    async fn finish(&mut self, end: End) -> End {
        if matches!(end, End::Closed) {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
        end
    }

    /// `hello`, subscriptions, and starting positions for every channel of the user.
    async fn start(&mut self) -> Result<(), End> {
        let session_id = self.session_id.clone();
        let topic = self.app.hub.user_topic(self.user.as_str());
        self.subscribe(topic).await;
        let positions = match self.positions().await {
            Ok(p) => p,
            Err(e) => {
                let _ = self.error(None, &e).await;
                let _ = self.close_with(None).await;
                return Err(End::Error);
            }
        };
        for (channel, last) in positions {
            self.join_channel(&channel, last).await;
        }
        self.frame(json!({
            "type": "hello", "user_id": self.user.as_str(), "session_id": session_id,
            "heartbeat_ms": self.app.config.ws.heartbeat_ms,
        }))
        .await?;
        self.hold_until =
            Some(Instant::now() + Duration::from_millis(self.app.config.ws.resume_window_ms));
        // Messages committed between reading positions and the subscriptions becoming
        // active were published to nobody here: compare positions once more.
        self.sink.lagged.store(true, Ordering::Release);
        self.catch_up_if_lagged().await
    }

    // These return futures that do not borrow `self`: the socket inside is not Sync, so a
    // borrow of `Conn` held across an await would make the connection task !Send.
    fn positions(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, u64)>, ApiError>> + Send + 'static {
        positions(self.app.clone(), self.user.clone())
    }

    fn page_after(
        &self,
        channel: &str,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<pb::Message>, bool), ApiError>> + Send + 'static {
        page_after(
            self.app.clone(),
            self.user.clone(),
            channel.to_owned(),
            after,
            limit,
        )
    }

    async fn subscribe(&mut self, topic: String) {
        if self.topics.insert(topic.clone()) {
            // A new topic waits on Redis (and on the hub's other subscribers): what is
            // queued leaves first. A failed write ends the connection at the next flush.
            let _ = self.flush().await;
            self.app.hub.subscribe(self.id, &topic, &self.sink).await;
        }
    }

    async fn join_channel(&mut self, channel: &str, position: u64) {
        if !self.cursors.contains_key(channel) {
            self.cursors.insert(
                channel.to_owned(),
                Cursor {
                    delivered: position,
                    target: position,
                    ..Cursor::default()
                },
            );
            for topic in self.channel_topics(channel) {
                self.subscribe(topic).await;
            }
        }
    }

    /// Topics a member's connection listens to for one channel: messages and membership,
    /// plus typing and receipts when those services are configured.
    fn channel_topics(&self, channel: &str) -> Vec<String> {
        let hub = &self.app.hub;
        let mut t = vec![hub.channel_topic(channel)];
        if self.app.presence.is_some() {
            t.push(hub.typing_topic(channel));
        }
        if self.app.receipts.is_some() {
            t.push(hub.receipts_topic(channel));
        }
        t
    }

    async fn leave_channel(&mut self, channel: &str) {
        self.cursors.remove(channel);
        let _ = self.flush().await;
        for topic in self.channel_topics(channel) {
            if self.topics.remove(&topic) {
                self.app.hub.unsubscribe(self.id, &topic).await;
            }
        }
    }

    /// A channel id from a frame that must be one of the user's channels.
    fn member_channel(&self, v: &Value) -> Result<String, ApiError> {
        let raw = v
            .get("channel_id")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid("`channel_id` must be a string"))?;
        let id = parley_kit::domain::parse_uuid("channel_id", raw)?.to_string();
        if self.cursors.contains_key(&id) {
            Ok(id)
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("not a member of channel {id}"),
            ))
        }
    }

    fn seq_field(v: &Value) -> Result<u64, ApiError> {
        v.get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| ApiError::invalid("`seq` must be a non-negative integer"))
    }

    /// `send`: every field is validated, and the channel must be one of the user's, before
    /// anything is queued or allocated for it (a flood of made-up channel ids costs an error
    /// frame each, nothing more).
    async fn send(&mut self, r: Option<Value>, v: &Value) -> Result<(), ApiError> {
        let field = |name: &str| -> Result<String, ApiError> {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid(format!("`{name}` must be a string")))
        };
        let (raw, cid, body) = (
            field("channel_id")?,
            field("client_msg_id")?,
            field("body")?,
        );
        let channel = parley_kit::domain::parse_uuid("channel_id", &raw)?.to_string();
        ClientMsgId::parse(&cid)?;
        MessageBody::parse(&body, self.app.config.limits.max_message_bytes)?;
        if !self.cursors.contains_key(&channel) {
            // Not among the channels this connection knows: messaging says why (unknown
            // channel, not a member), or that the user was just added (the `member_joined`
            // event is on its way) and the send may go.
            let req = grpc(
                &self.user,
                pb::GetChannelRequest {
                    channel_id: channel.clone(),
                },
            )?;
            self.app.messaging.clone().get_channel(req).await?;
        }
        self.sends.push(&channel, r, cid, body)
    }

    /// `typing`: membership is checked here (the connection knows the user's channels).
    async fn typing(&mut self, v: &Value) -> Result<(), ApiError> {
        let channel = self.member_channel(v)?;
        let presence = self.app.presence.clone().ok_or_else(presence_off)?;
        let user = self.user.clone();
        let Ok(permit) = self.typing.clone().try_acquire_owned() else {
            metrics::counter!("gateway_ws_refused_total", "reason" => "typing_in_flight")
                .increment(1);
            return Err(rate_limited(format!(
                "more than {} typing frames of this connection are on their way",
                self.app.config.ws.max_typing_in_flight.max(1)
            )));
        };
        let app = self.app.clone();
        // Fire and forget: the event comes back through pub/sub to the other members. Over
        // the user's typing limit it is dropped (counted in gateway_rate_limited_total).
        tokio::spawn(async move {
            if app.limiter.check(Kind::Typing, user.as_str()).await.is_ok() {
                let _ = presence.typing(user.as_str(), &channel).await;
            }
            drop(permit);
        });
        Ok(())
    }

    /// `ack` / `read`: the delivered / read watermark.
    async fn mark(&mut self, v: &Value, read: bool) -> Result<(), ApiError> {
        let channel = self.member_channel(v)?;
        let seq = Self::seq_field(v)?;
        let app = self.app.clone();
        app.limiter
            .check(Kind::ReadMarks, self.user.as_str())
            .await?;
        let user = self.user.clone();
        let receipts = app.receipts.as_ref().ok_or_else(receipts_off)?;
        if read {
            receipts.read(&user, channel, seq).await
        } else {
            receipts.delivered(&user, channel, seq).await
        }
    }

    /// `watch_presence`: subscribe first, then read the current state, so no change is
    /// missed; later events older than what was sent (by `version`) are dropped.
    async fn watch_presence(&mut self, v: &Value) -> Result<(), End> {
        let r = v.get("ref").cloned();
        let Some(presence) = self.app.presence.clone() else {
            return self.error(r, &presence_off()).await;
        };
        if let Err(e) = self
            .app
            .limiter
            .check(Kind::PresenceQueries, self.user.as_str())
            .await
        {
            return self.error(r, &e).await;
        }
        let ids = match v.get("user_ids").and_then(Value::as_array) {
            Some(a) => a
                .iter()
                .map(|u| {
                    u.as_str()
                        .ok_or_else(|| ApiError::invalid("`user_ids` must be strings"))
                        .and_then(|s| Ok(UserId::parse(s)?.to_string()))
                })
                .collect::<Result<Vec<String>, ApiError>>(),
            None => Err(ApiError::invalid("`user_ids` must be an array of user ids")),
        };
        let mut ids = match ids {
            Ok(ids) => ids,
            Err(e) => return self.error(r, &e).await,
        };
        ids.sort();
        ids.dedup();
        let max = self.app.config.ws.max_watch;
        let new: Vec<String> = ids
            .into_iter()
            .filter(|u| !self.watched.contains_key(u))
            .collect();
        if self.watched.len() + new.len() > max {
            let e = ApiError::invalid(format!("a connection watches at most {max} users"));
            return self.error(r, &e).await;
        }
        if new.is_empty() {
            return Ok(());
        }
        // Presence privacy: users who share no channel with this one read as never seen, once,
        // and are not watched (watch again once you share a channel).
        let (new, hidden) = match crate::presence::visible(&self.app, &self.user, new).await {
            Ok(split) => split,
            Err(e) => return self.error(r, &e).await,
        };
        for u in hidden {
            let mut f = crate::presence::view(&crate::presence::hidden(u));
            f["type"] = json!("presence");
            self.frame(f).await?;
        }
        if new.is_empty() {
            return Ok(());
        }
        for u in &new {
            self.watched.insert(u.clone(), 0);
            let topic = self.app.hub.watch_topic(u);
            self.subscribe(topic).await;
        }
        match presence.get(new).await {
            Ok(list) => {
                for p in list {
                    self.presence_changed(&p).await?;
                }
                Ok(())
            }
            Err(e) => self.error(r, &e).await,
        }
    }

    /// Presence privacy after leaving a channel: watched users who no longer share a
    /// channel with this user are no longer watched, and read as never seen from now on.
    /// If messaging cannot answer, the watches are dropped (closed rather than open).
    async fn recheck_watched(&mut self) -> Result<(), End> {
        if self.watched.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = self.watched.keys().cloned().collect();
        let hidden = match crate::presence::visible(&self.app, &self.user, ids.clone()).await {
            Ok((_, hidden)) => hidden,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e.message, "presence re-check failed; dropping the connection's watches");
                ids
            }
        };
        for u in hidden {
            self.watched.remove(&u);
            let topic = self.app.hub.watch_topic(&u);
            if self.topics.remove(&topic) {
                self.app.hub.unsubscribe(self.id, &topic).await;
            }
            let mut f = crate::presence::view(&crate::presence::hidden(u));
            f["type"] = json!("presence");
            self.frame(f).await?;
        }
        Ok(())
    }

    /// Sends a `presence` frame when `p` is newer than what this connection last sent.
    async fn presence_changed(
        &mut self,
        p: &parley_proto::presence::v1::UserPresence,
    ) -> Result<(), End> {
        match self.watched.get_mut(&p.user_id) {
            Some(v) if p.version > *v || (*v == 0 && p.version == 0) => {
                *v = p.version.max(1);
                let mut f = crate::presence::view(p);
                f["type"] = json!("presence");
                self.frame(f).await
            }
            _ => Ok(()),
        }
    }

    /// Writes out the queued frames (before anything that waits on another service, so
    /// they are not held back by it).
    async fn flush(&mut self) -> Result<(), End> {
        if self.write_failed {
            return Err(End::Error);
        }
        let frames = std::mem::take(&mut self.unflushed);
        if frames == 0 {
            return Ok(());
        }
        metrics::histogram!("gateway_ws_write_batch_size").record(frames as f64);
        let timeout = Duration::from_millis(self.app.config.ws.write_timeout_ms.max(1));
        match tokio::time::timeout(timeout, self.socket.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                self.write_failed = true;
                Err(End::Error)
            }
            Err(_) => Err(self.slow()),
        }
    }

    /// The client took nothing for `ws.write_timeout_ms`: the connection is dropped (a close
    /// frame could not reach it either); the client reconnects and resumes.
    fn slow(&mut self) -> End {
        self.write_failed = true;
        metrics::counter!("gateway_ws_closed_total", "reason" => "slow_consumer").increment(1);
        tracing::info!(user = %self.user, conn = self.id, "websocket dropped: the client stopped reading");
        End::Error
    }

    /// Sends a close frame with `code` and `reason` (best effort, bounded by the write
    /// timeout) and ends the connection.
    async fn close(&mut self, code: u16, reason: &'static str) -> End {
        self.close_with(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        }))
        .await
    }

    async fn close_with(&mut self, frame: Option<axum::extract::ws::CloseFrame>) -> End {
        let frame = WsMessage::Close(frame);
        let timeout = Duration::from_millis(self.app.config.ws.write_timeout_ms.max(1));
        let _ = tokio::time::timeout(timeout, self.socket.send(frame)).await;
        End::Closed
    }

    /// Queues a frame; the serve loop writes queued frames out before it waits again.
    async fn frame(&mut self, v: Value) -> Result<(), End> {
        self.feed(WsMessage::Text(v.to_string().into())).await
    }

    /// Queues a message for the next write, bounded by `ws.write_timeout_ms`.
    async fn feed(&mut self, m: WsMessage) -> Result<(), End> {
        self.unflushed += 1;
        let timeout = Duration::from_millis(self.app.config.ws.write_timeout_ms.max(1));
        match tokio::time::timeout(timeout, self.socket.feed(m)).await {
            Ok(r) => r.map_err(|_| End::Error),
            Err(_) => Err(self.slow()),
        }
    }

    async fn error(&mut self, r: Option<Value>, e: &ApiError) -> Result<(), End> {
        let mut f = json!({"type": "error", "code": e.code.as_str(), "message": e.message});
        if let Some(r) = r {
            f["ref"] = r;
        }
        if let Some(s) = e.retry_after {
            f["retry_after"] = json!(s);
        }
        self.frame(f).await
    }

    async fn on_inbound(&mut self, m: WsMessage) -> Result<(), End> {
        self.last_inbound = Instant::now();
        if !matches!(m, WsMessage::Close(_) | WsMessage::Pong(_)) {
            match self.frames.take(Instant::now()) {
                Ok(()) => {}
                Err(Flood::Refused(wait)) => {
                    metrics::counter!("gateway_ws_refused_total", "reason" => "frame_rate")
                        .increment(1);
                    let mut e = rate_limited(format!(
                        "more than {} frames a second on this connection",
                        self.app.config.ws.frames_per_sec
                    ));
                    e.retry_after = Some(wait);
                    // The refused frame's `ref` (only that field is read), so a client
                    // that pipelines sends knows which one to retry.
                    let r = match &m {
                        WsMessage::Text(t) => serde_json::from_str::<RefOnly>(t.as_str())
                            .ok()
                            .and_then(|f| f.r),
                        _ => None,
                    };
                    return self.error(r, &e).await;
                }
                Err(Flood::Close) => {
                    metrics::counter!("gateway_ws_closed_total", "reason" => "flood").increment(1);
                    tracing::info!(user = %self.user, conn = self.id, "websocket closed: frame flood");
                    self.app.admission.ban(self.user.as_str());
                    return Err(self.close(CLOSE_POLICY, "frame rate exceeded").await);
                }
            }
        }
        match m {
            WsMessage::Text(t) => self.on_frame(t.as_str()).await,
            WsMessage::Binary(_) => {
                self.error(
                    None,
                    &ApiError::invalid("binary frames are not supported; send JSON text"),
                )
                .await
            }
            WsMessage::Close(_) => Err(End::Closed),
            WsMessage::Ping(_) | WsMessage::Pong(_) => Ok(()),
        }
    }

    async fn on_frame(&mut self, text: &str) -> Result<(), End> {
        let v: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return self
                    .error(None, &ApiError::invalid("a frame must be a JSON object"))
                    .await;
            }
            Err(e) => {
                return self
                    .error(None, &ApiError::invalid(format!("malformed JSON: {e}")))
                    .await;
            }
        };
        let r = v.get("ref").cloned();
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        if kind != "resume" {
            // The client's first frame is not a resume: stop holding live messages.
            self.release().await?;
        }
        if matches!(kind, "ack" | "read" | "watch_presence") {
            // These wait on another service: what is queued goes out first.
            self.flush().await?;
        }
        let result: Result<(), ApiError> = match kind {
            "ping" => {
                let mut f = json!({"type": "pong"});
                if let Some(r) = r.clone() {
                    f["ref"] = r;
                }
                return self.frame(f).await;
            }
            "send" => self.send(r.clone(), &v).await,
            "resume" => match v.get("positions").and_then(Value::as_object) {
                Some(p) => {
                    let parsed: Result<Vec<(String, u64)>, ApiError> = p
                        .iter()
                        .map(|(k, v)| {
                            let ch =
                                parley_kit::domain::parse_uuid("positions key", k)?.to_string();
                            let seq = v.as_u64().ok_or_else(|| {
                                ApiError::invalid("positions values must be non-negative integers")
                            })?;
                            Ok((ch, seq))
                        })
                        .collect();
                    match parsed {
                        Ok(p) => return self.resume(p).await,
                        Err(e) => Err(e),
                    }
                }
                None => Err(ApiError::invalid(
                    "`positions` must be an object of channel id → seq",
                )),
            },
            "typing" => self.typing(&v).await,
            "ack" => self.mark(&v, false).await,
            "read" => self.mark(&v, true).await,
            "watch_presence" => return self.watch_presence(&v).await,
            "" => Err(ApiError::invalid("a frame needs a string `type`")),
            other => Err(ApiError::invalid(format!("unknown frame type `{other}`"))),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.error(r, &e).await,
        }
    }

    async fn on_sent(
        &mut self,
        r: Option<Value>,
        result: Result<pb::SendMessageResponse, ApiError>,
    ) -> Result<(), End> {
        match result {
            Ok(resp) => {
                let mut f =
                    json!({"type": "sent", "message": resp.message.as_ref().map(view::message)});
                if let Some(r) = r {
                    f["ref"] = r;
                }
                self.frame(f).await
            }
            Err(e) => self.error(r, &e).await,
        }
    }

    async fn on_presence(
        &mut self,
        e: &parley_proto::presence::v1::PresenceEvent,
    ) -> Result<(), End> {
        use parley_proto::presence::v1::presence_event::Payload as P;
        match &e.payload {
            Some(P::PresenceChanged(c)) => match &c.presence {
                Some(p) => self.presence_changed(p).await,
                None => Ok(()),
            },
            // Never echoed to the typist; only for channels this user is in.
            Some(P::UserTyping(t))
                if t.user_id != self.user.as_str() && self.cursors.contains_key(&t.channel_id) =>
            {
                self.frame(
                    json!({"type": "typing", "channel_id": t.channel_id, "user_id": t.user_id}),
                )
                .await
            }
            _ => Ok(()),
        }
    }

    fn seen_event(&mut self, id: &str) -> bool {
        if self.recent_events.iter().any(|e| e == id) {
            return true;
        }
        if self.recent_events.len() >= 128 {
            self.recent_events.pop_front();
        }
        self.recent_events.push_back(id.to_owned());
        false
    }

    async fn on_event(&mut self, d: Delivery) -> Result<(), End> {
        let event = match &d.payload {
            HubPayload::Messaging(e) => e.clone(),
            HubPayload::Presence(e) => return self.on_presence(e).await,
            HubPayload::Receipt(r) => {
                if !self.cursors.contains_key(&r.channel_id) {
                    return Ok(());
                }
                return self.frame(crate::receipts::frame(r)).await;
            }
        };
        use ev::event::Payload;
        match &event.payload {
            Some(Payload::MessageCreated(ev::MessageCreated {
                message: Some(m), ..
            })) => self.offer(m.clone(), true).await,
            Some(Payload::MessageUpdated(ev::MessageUpdated { message: Some(m) })) => {
                self.changed("message_updated", m).await
            }
            Some(Payload::MessageDeleted(ev::MessageDeleted {
                message: Some(m), ..
            })) => self.changed("message_deleted", m).await,
            Some(Payload::MemberJoined(j)) => {
                let Some(member) = &j.member else {
                    return Ok(());
                };
                let me = member.user_id == self.user.as_str();
                // Events about this user come on the user topic; skip their copy on the channel topic.
                if me != d.via_user_topic || self.seen_event(&event.event_id) {
                    return Ok(());
                }
                if me {
                    self.join_channel(&member.channel_id, j.channel_last_seq)
                        .await;
                }
                self.frame(json!({
                    "type": "member_joined", "channel_id": member.channel_id, "user_id": member.user_id,
                    "role": view::role(member.role), "added_by": j.added_by,
                }))
                .await?;
                if me {
                    // A message committed after the join but before the subscription was
                    // active reached nobody here: probe history once.
                    self.fill(&member.channel_id.clone(), true).await?;
                }
                Ok(())
            }
            Some(Payload::MemberLeft(l)) => {
                let me = l.user_id == self.user.as_str();
                if me != d.via_user_topic || self.seen_event(&event.event_id) {
                    return Ok(());
                }
                self.frame(json!({
                    "type": "member_left", "channel_id": l.channel_id, "user_id": l.user_id, "removed_by": l.removed_by,
                }))
                .await?;
                if me {
                    self.leave_channel(&l.channel_id).await;
                    self.recheck_watched().await?;
                } else if self.watched.contains_key(&l.user_id) {
                    // A watched user left a channel: maybe the last one shared with them.
                    self.recheck_watched().await?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A new message: deliver in order, hold if early, drop if already delivered. `live`:
    /// it came from pub/sub (not from a history fetch), so its fan-out latency counts.
    async fn offer(&mut self, m: pb::Message, live: bool) -> Result<(), End> {
        let Some(c) = self.cursors.get_mut(&m.channel_id) else {
            return Ok(());
        };
        if m.seq <= c.delivered {
            return Ok(());
        }
        c.target = c.target.max(m.seq);
        let cap = self.app.config.ws.max_held.max(1);
        if self.hold_until.is_some() {
            c.hold(m, cap);
            return Ok(());
        }
        if m.seq == c.delivered + 1 {
            let channel = m.channel_id.clone();
            self.deliver(m, live).await?;
            self.flush_held(&channel).await
        } else {
            c.hold(m, cap);
            c.gap_since.get_or_insert_with(Instant::now);
            self.maybe_gaps = true;
            Ok(())
        }
    }

    async fn deliver(&mut self, m: pb::Message, live: bool) -> Result<(), End> {
        if let Some(c) = self.cursors.get_mut(&m.channel_id) {
            c.delivered = m.seq;
            c.target = c.target.max(m.seq);
            c.sent_from.get_or_insert(m.seq);
        }
        metrics::counter!("gateway_ws_messages_delivered_total").increment(1);
        if live {
            // Commit (created_at, the database clock) to the write to this socket.
            if let Some(t) = m
                .created_at
                .as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            {
                let secs = (chrono::Utc::now() - t)
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(0) as f64
                    / 1e6;
                metrics::histogram!("gateway_fanout_latency_seconds").record(secs);
            }
        }
        self.frame(json!({"type": "message", "message": view::message(&m)}))
            .await
    }

    async fn flush_held(&mut self, channel: &str) -> Result<(), End> {
        loop {
            let Some(c) = self.cursors.get_mut(channel) else {
                return Ok(());
            };
            let next = c.delivered + 1;
            c.held.retain(|s, _| *s >= next);
            match c.held.remove(&next) {
                // Held messages arrived live, early; their wait is part of the fan-out.
                Some(m) => self.deliver(m, true).await?,
                None => {
                    c.gap_since = if c.target > c.delivered {
                        self.maybe_gaps = true;
                        c.gap_since.or(Some(Instant::now()))
                    } else {
                        None
                    };
                    return Ok(());
                }
            }
        }
    }

    /// An edit or delete: forwarded when the client already has the message; otherwise the
    /// message is fetched in its current state when its turn comes.
    async fn changed(&mut self, kind: &str, m: &pb::Message) -> Result<(), End> {
        let Some(c) = self.cursors.get_mut(&m.channel_id) else {
            return Ok(());
        };
        if m.seq <= c.delivered {
            return self
                .frame(json!({"type": kind, "message": view::message(m)}))
                .await;
        }
        if let Some(held) = c.held.get_mut(&m.seq) {
            *held = m.clone();
        } else {
            c.target = c.target.max(m.seq);
            c.gap_since.get_or_insert_with(Instant::now);
            self.maybe_gaps = true;
        }
        Ok(())
    }

    async fn fill_due_gaps(&mut self, wait: Duration) -> Result<(), End> {
        let due: Vec<String> = self
            .cursors
            .iter()
            .filter(|(_, c)| {
                c.target > c.delivered && c.gap_since.is_some_and(|t| t.elapsed() >= wait)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for ch in due {
            metrics::counter!("gateway_gap_fills_total").increment(1);
            self.fill(&ch, false).await?;
        }
        Ok(())
    }

    /// Fetches history after `delivered` until the known target is reached (at least one
    /// page when `probe`). A failed fetch leaves the gap to be retried on the next tick.
    async fn fill(&mut self, channel: &str, probe: bool) -> Result<(), End> {
        if self.hold_until.is_some() {
            // Filled (in order) when the hold is released.
            return Ok(());
        }
        let mut first = probe;
        loop {
            let Some(c) = self.cursors.get(channel) else {
                return Ok(());
            };
            if !first && c.target <= c.delivered {
                return self.flush_held(channel).await;
            }
            first = false;
            let after = c.delivered;
            self.flush().await?;
            let (msgs, more) = match self.page_after(channel, after, 200).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(channel, error = %e.message, "gap fill failed; retrying later");
                    if let Some(c) = self.cursors.get_mut(channel) {
                        c.gap_since = Some(Instant::now());
                        self.maybe_gaps = true;
                    }
                    return Ok(());
                }
            };
            let got_any = !msgs.is_empty();
            for m in msgs {
                self.offer(m, false).await?;
            }
            if !more || !got_any {
                let Some(c) = self.cursors.get_mut(channel) else {
                    return Ok(());
                };
                // History is authoritative: nothing above what it returned exists yet.
                if !more && c.held.is_empty() {
                    c.target = c.delivered;
                }
                return self.flush_held(channel).await;
            }
        }
    }

    /// Catches up every channel after missed events (pub/sub reconnect, overflowed queue,
    /// connection start): membership and last seqs are re-read from messaging.
    async fn catch_up_if_lagged(&mut self) -> Result<(), End> {
        if !self.sink.lagged.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // Drop queued events: history is about to supersede them.
        self.flush().await?;
        let positions = match self.positions().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e.message, "catch-up failed; retrying");
                self.sink.lagged.store(true, Ordering::Release);
                return Ok(());
            }
        };
        let current: HashSet<String> = positions.iter().map(|(c, _)| c.clone()).collect();
        let gone: Vec<String> = self
            .cursors
            .keys()
            .filter(|c| !current.contains(*c))
            .cloned()
            .collect();
        let left_any = !gone.is_empty();
        for ch in gone {
            self.leave_channel(&ch).await;
        }
        if left_any {
            self.recheck_watched().await?;
        }
        for (ch, last) in positions {
            if !self.cursors.contains_key(&ch) {
                // Joined while we were not listening: live from its current position.
                self.join_channel(&ch, last).await;
                continue;
            }
            let behind = self.cursors.get_mut(&ch).is_some_and(|c| {
                c.target = c.target.max(last);
                c.target > c.delivered
            });
            if behind {
                self.maybe_gaps = true;
                self.fill(&ch, false).await?;
            }
        }
        Ok(())
    }

    /// Ends the post-`hello` hold: what was held goes out in order, gaps are filled.
    async fn release(&mut self) -> Result<(), End> {
        if self.hold_until.take().is_none() {
            return Ok(());
        }
        self.flush_all().await
    }

    async fn flush_all(&mut self) -> Result<(), End> {
        let channels: Vec<String> = self.cursors.keys().cloned().collect();
        for ch in channels {
            self.flush_held(&ch).await?;
            if self
                .cursors
                .get(&ch)
                .is_some_and(|c| c.target > c.delivered)
            {
                self.fill(&ch, false).await?;
            }
        }
        Ok(())
    }

    /// `resume`: replays each channel after the client's position (at most `resume_limit`
    /// messages; beyond that the newest are replayed and `recovered` is false).
    async fn resume(&mut self, positions: Vec<(String, u64)>) -> Result<(), End> {
        // Replays below run in order before anything held is sent.
        self.hold_until = None;
        let limit = self.app.config.ws.resume_limit;
        self.flush().await?;
        let last_seqs: HashMap<String, u64> = match self.positions().await {
            Ok(p) => p.into_iter().collect(),
            Err(e) => return self.error(None, &e).await,
        };
        let mut report = serde_json::Map::new();
        for (ch, pos) in positions {
            let Some(&last) = last_seqs.get(&ch) else {
                let e = ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("not a member of channel {ch}"),
                );
                self.error(None, &e).await?;
                continue;
            };
            self.join_channel(&ch, last).await;
            let sent = self
                .cursors
                .get(&ch)
                .and_then(|c| c.sent_from.map(|first| (first, c.delivered)));
            let (start, recovered) = match sent {
                // This connection already sent first..=delivered: never send those twice.
                // A gap before `first` can no longer be replayed in order: page it over REST.
                Some((first, delivered)) => {
                    (delivered.max(pos.min(last)), pos.saturating_add(1) >= first)
                }
                None if last.saturating_sub(pos) > limit => (last - limit, false),
                None => (pos.min(last), true),
            };
            if let Some(c) = self.cursors.get_mut(&ch) {
                // Rewind (or fast-forward) to what the client has; live messages above it
                // stay held until the replay reaches them, so nothing is sent twice.
                c.delivered = start;
                c.target = c.target.max(last);
                c.held.retain(|s, _| *s > start);
                self.maybe_gaps = true;
            }
            self.fill(&ch, true).await?;
            let to = self.cursors.get(&ch).map_or(start, |c| c.delivered);
            report.insert(
                ch,
                json!({"from": start.saturating_add(1), "to": to, "recovered": recovered}),
            );
        }
        // Channels not named in the resume: what was held goes out now.
        self.flush_all().await?;
        self.frame(json!({"type": "resumed", "channels": report}))
            .await
    }
}

async fn positions(app: Arc<App>, user: UserId) -> Result<Vec<(String, u64)>, ApiError> {
    let req = grpc(&user, pb::ListChannelPositionsRequest {})?;
    let resp = app
        .messaging
        .clone()
        .list_channel_positions(req)
        .await?
        .into_inner();
    Ok(resp
        .positions
        .into_iter()
        .map(|p| (p.channel_id, p.last_seq))
        .collect())
}

async fn page_after(
    app: Arc<App>,
    user: UserId,
    channel: String,
    after: u64,
    limit: u32,
) -> Result<(Vec<pb::Message>, bool), ApiError> {
    let req = pb::ListMessagesRequest {
        channel_id: channel,
        before: None,
        after: Some(after),
        limit,
    };
    let resp = app
        .messaging
        .clone()
        .list_messages(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok((resp.messages, resp.has_more))
}

fn presence_off() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "presence is not configured on this gateway",
    )
}

fn receipts_off() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "receipts is not configured on this gateway",
    )
}
