//! Client frames: parsed, limited (frame rate), validated and dispatched — sends to their
//! channel's queue, typing, delivered/read marks, resume, presence watches.

use std::time::Instant;

use axum::extract::ws::Message as WsMessage;
use parley_kit::{
    ErrorCode,
    domain::{ClientMsgId, MessageBody},
};
use parley_proto::messaging::v1 as pb;
use serde_json::{Value, json};

use super::{
    Conn, End,
    limits::{CLOSE_POLICY, Flood, RefOnly},
};
use crate::{ApiError, http::grpc, ratelimit::Kind};

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

    pub(super) async fn on_frame(&mut self, text: &str) -> Result<(), End> {
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

    /// `send`: every field is validated, and the channel must be one of the user's, before
    /// anything is queued or allocated for it (a flood of made-up channel ids costs an error
    /// frame each, nothing more).
    pub(super) async fn send(&mut self, r: Option<Value>, v: &Value) -> Result<(), ApiError> {
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
    pub(super) async fn typing(&mut self, v: &Value) -> Result<(), ApiError> {
        let channel = self.member_channel(v)?;
        let presence = self
            .app
            .presence
            .clone()
            .ok_or_else(|| ApiError::not_configured("presence"))?;
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
            if app.limiter.check(Kind::Typing, user.as_str()).await.is_ok() {
                let _ = presence.typing(user.as_str(), &channel).await;
            }
            drop(permit);
        });
        Ok(())
    }

    /// `ack` / `read`: the delivered / read watermark.
    pub(super) async fn mark(&mut self, v: &Value, read: bool) -> Result<(), ApiError> {
        let channel = self.member_channel(v)?;
        let seq = Self::seq_field(v)?;
        let app = self.app.clone();
        app.limiter
            .check(Kind::ReadMarks, self.user.as_str())
            .await?;
        let user = self.user.clone();
        let receipts = app
            .receipts
            .as_ref()
            .ok_or_else(|| ApiError::not_configured("receipts"))?;
        if read {
            receipts.read(&user, channel, seq).await
        } else {
            receipts.delivered(&user, channel, seq).await
        }
    }

    /// A channel id from a frame that must be one of the user's channels.
    pub(super) fn member_channel(&self, v: &Value) -> Result<String, ApiError> {
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

    pub(super) fn seq_field(v: &Value) -> Result<u64, ApiError> {
        v.get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| ApiError::invalid("`seq` must be a non-negative integer"))
    }
}
