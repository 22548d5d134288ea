//! One WebSocket connection: the connection loop and its writes. By concern: `upgrade`
//! (`GET /v1/ws`), `client` (client frames), `events` (live events and send answers),
//! `ordering` (runs the ordering engine: per-channel order, gaps, catch-up, resume),
//! `watch` (presence), `sends` (per-channel send queues), `limits` (frame rate).
//!
//! Per channel the client sees messages in strictly increasing seq with no gaps, live or
//! replayed: `crate::ordering::Engine` decides what to send, hold or fetch from history.

mod client;
mod events;
mod limits;
mod ordering;
mod sends;
mod upgrade;
mod watch;

pub use upgrade::upgrade;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::{FutureExt as _, SinkExt as _};
use parley_kit::domain::UserId;
use parley_proto::messaging::v1 as pb;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};

use self::{
    limits::FrameBucket,
    sends::{SendQueues, SendResult},
};
use crate::{
    ApiError, App,
    api::{
        self,
        messages::{Page, history},
    },
    hub::{ConnSink, Delivery},
    ordering::Engine,
    protocol::ServerFrame,
};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

struct Conn {
    app: Arc<App>,
    user: UserId,
    id: u64,
    socket: WebSocket,
    sink: ConnSink,
    topics: HashSet<String>,
    /// Per-channel order: what was delivered, what is held, which gaps to fetch.
    engine: Engine<pb::Message>,
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
        let engine = Engine::new(
            app.config.ws.max_held,
            Duration::from_millis(app.config.ws.gap_wait_ms),
        );
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
            engine,
            recent_events: VecDeque::new(),
            sends,
            frames,
            typing,
            last_inbound: Instant::now(),
            session_id,
            ticket,
            watched: HashMap::new(),
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
                    let _ = self.frame(ServerFrame::Reconnect { reason: "server draining".into() }).await;
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
                // Only while something is held or a channel is behind: an idle connection
                // costs no periodic wake-ups.
                _ = gap_tick.tick(), if self.engine.needs_timer() => {
                    self.order(|e, now, out| e.tick(now, out)).await
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
        self.frame(ServerFrame::Hello {
            user_id: self.user.to_string(),
            session_id,
            heartbeat_ms: self.app.config.ws.heartbeat_ms,
        })
        .await?;
        // Until the client's first frame (or this deadline) messages are held: a client
        // that reconnects sends `resume` first, and its replay comes before anything live.
        self.engine
            .hold(Instant::now() + Duration::from_millis(self.app.config.ws.resume_window_ms));
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
        if self.engine.join(channel, position) {
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
        self.engine.leave(channel);
        let _ = self.flush().await;
        for topic in self.channel_topics(channel) {
            if self.topics.remove(&topic) {
                self.app.hub.unsubscribe(self.id, &topic).await;
            }
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
    async fn frame(&mut self, f: ServerFrame) -> Result<(), End> {
        self.feed(WsMessage::Text(f.to_text().into())).await
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
        self.frame(ServerFrame::error(r, e)).await
    }
}

async fn positions(app: Arc<App>, user: UserId) -> Result<Vec<(String, u64)>, ApiError> {
    api::channels::positions(&app, &user).await
}

async fn page_after(
    app: Arc<App>,
    user: UserId,
    channel: String,
    after: u64,
    limit: u32,
) -> Result<(Vec<pb::Message>, bool), ApiError> {
    let channel = parley_kit::domain::ChannelId::parse("channel_id", &channel)?;
    history(&app, &user, &channel, Page::After(after), limit).await
}
