//! Client frames: parsed, limited (frame rate), validated and dispatched — sends to their
//! channel's queue, typing, delivered/read marks, resume, presence watches.

use std::time::Instant;

use axum::extract::ws::Message as WsMessage;
use parley_kit::{
    ErrorCode,
    domain::{ChannelId, ClientMsgId},
};
use serde_json::Value;

use super::{
    Conn, End,
    limits::{CLOSE_POLICY, Flood, RefOnly},
};
use crate::{
    ApiError,
    api::{self, messages::Content, social::Mark},
    protocol::{self, ClientFrame, Inbound, ServerFrame, Unreadable},
};

impl Conn {
    pub(super) async fn on_inbound(&mut self, m: WsMessage) -> Result<(), End> {
        self.last_inbound = Instant::now();
        if !matches!(m, WsMessage::Close(_) | WsMessage::Pong(_)) {
            match self.frames.take(Instant::now()) {
                Ok(()) => {}
                Err(Flood::Refused(wait)) => {
                    metrics::counter!("gateway_ws_refused_total", "reason" => "frame_rate")
                        .increment(1);
                    let e = ApiError::rate_limited(
                        format!(
                            "more than {} frames a second on this connection",
                            self.app.config.ws.frames_per_sec
                        ),
                        wait,
                    );
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
                    // Recorded before the close goes out: a reconnect right after it is
                    // refused (the client cannot beat the ban to Redis).
                    self.app.admission.ban(self.user.as_str()).await;
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

    pub(super) async fn on_frame(&mut self, text: &str) -> Result<(), End> {
        let Inbound { r, frame } = match protocol::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let Unreadable {
                    r,
                    kind,
                    channel_id,
                    error,
                } = *e;
                if kind.as_deref() != Some("resume") {
                    self.release().await?;
                }
                // A frame about a channel the user is not in: that is the answer, whatever
                // else is wrong with it.
                let error = match (kind.as_deref(), channel_id) {
                    (Some("ack" | "read" | "typing"), Some(ch)) => {
                        self.member_channel(ch).err().unwrap_or(error)
                    }
                    _ => error,
                };
                return self.error(r, &error).await;
            }
        };
        if !matches!(frame, ClientFrame::Resume { .. }) {
            // The client's first frame is not a resume: stop holding live messages.
            self.release().await?;
        }
        if matches!(
            frame,
            ClientFrame::Ack { .. } | ClientFrame::Read { .. } | ClientFrame::WatchPresence { .. }
        ) {
            // These wait on another service: what is queued goes out first.
            self.flush().await?;
        }
        let result = match frame {
            ClientFrame::Ping => return self.frame(ServerFrame::Pong { r }).await,
            ClientFrame::Send {
                channel_id,
                client_msg_id,
                body,
                attachment_ids,
            } => {
                let content = Content {
                    body,
                    attachment_ids,
                };
                self.send(r.clone(), channel_id, client_msg_id, content)
                    .await
            }
            ClientFrame::Resume { positions } => return self.resume(positions).await,
            ClientFrame::Typing { channel_id } => self.typing(channel_id).await,
            ClientFrame::Ack { channel_id, seq } => {
                self.mark(channel_id, seq, Mark::Delivered).await
            }
            ClientFrame::Read { channel_id, seq } => self.mark(channel_id, seq, Mark::Read).await,
            ClientFrame::WatchPresence { user_ids } => {
                return self.watch_presence(r, user_ids).await;
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.error(r, &e).await,
        }
    }

    /// `send`: every field is validated, and the channel must be one of the user's, before
    /// anything is queued or allocated for it (a flood of made-up channel ids costs an error
    /// frame each, nothing more).
    pub(super) async fn send(
        &mut self,
        r: Option<Value>,
        channel: ChannelId,
        cid: ClientMsgId,
        content: Content,
    ) -> Result<(), ApiError> {
        content.check(self.app.config.limits.max_message_bytes)?;
        if !self.engine.follows(channel.as_str()) {
            // Not among the channels this connection knows: messaging says why (unknown
            // channel, not a member), or that the user was just added (the `member_joined`
            // event is on its way) and the send may go.
            api::channels::get(&self.app, &self.user, &channel).await?;
        }
        self.sends.push(&channel, r, cid, content)
    }

    /// `typing`: membership is checked here (the connection knows the user's channels).
    pub(super) async fn typing(&mut self, channel: ChannelId) -> Result<(), ApiError> {
        let channel = self.member_channel(channel)?;
        if self.app.presence.is_none() {
            return Err(ApiError::not_configured("presence"));
        }
        let user = self.user.clone();
        let Ok(permit) = self.typing.clone().try_acquire_owned() else {
            metrics::counter!("gateway_ws_refused_total", "reason" => "typing_in_flight")
                .increment(1);
            return Err(ApiError::rate_limited(
                format!(
                    "more than {} typing frames of this connection are on their way",
                    self.app.config.ws.max_typing_in_flight.max(1)
                ),
                1,
            ));
        };
        let app = self.app.clone();
        // Fire and forget: the event comes back through pub/sub to the other members. Over
        // the user's typing limit it is dropped (counted in gateway_rate_limited_total).
        tokio::spawn(async move {
            let _ = api::social::typing(&app, &user, channel.as_str()).await;
            drop(permit);
        });
        Ok(())
    }

    /// `ack` / `read`: the delivered / read watermark.
    pub(super) async fn mark(
        &mut self,
        channel: ChannelId,
        seq: u64,
        mark: Mark,
    ) -> Result<(), ApiError> {
        let channel = self.member_channel(channel)?;
        api::social::mark(&self.app, &self.user, &channel, seq, mark).await
    }

    /// A channel from a frame that must be one of the user's channels.
    pub(super) fn member_channel(&self, id: ChannelId) -> Result<ChannelId, ApiError> {
        if self.engine.follows(id.as_str()) {
            Ok(id)
        } else {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("not a member of channel {id}"),
            ))
        }
    }
}
