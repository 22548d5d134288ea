//! The WebSocket protocol of docs/api.md as typed values: every frame a client may send
//! ([`ClientFrame`]) and every frame the server sends ([`ServerFrame`]). Both are JSON
//! objects tagged by `type`. Transports write `ServerFrame`s and read client frames with
//! [`parse`], which answers invalid input with the documented `error` frame's content.

use std::collections::BTreeMap;

use parley_kit::domain::{ChannelId, ClientMsgId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::{
    ApiError,
    view::{Channel, Message, Role, Status},
};

/// A frame from the client. Field values are validated as they are read; what depends on
/// configuration (the body's byte limit) or on state (membership) is checked by the handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Ping,
    Send {
        channel_id: ChannelId,
        client_msg_id: ClientMsgId,
        body: String,
        /// Uploads sent with the message (`POST /v1/channels/{id}/attachments`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachment_ids: Vec<String>,
    },
    Resume {
        positions: BTreeMap<ChannelId, u64>,
    },
    Typing {
        channel_id: ChannelId,
    },
    Ack {
        channel_id: ChannelId,
        seq: u64,
    },
    Read {
        channel_id: ChannelId,
        seq: u64,
    },
    WatchPresence {
        user_ids: Vec<UserId>,
    },
}

/// A client frame with its `ref` (any JSON value, echoed in the answer).
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub r: Option<Value>,
    pub frame: ClientFrame,
}

/// A client frame that could not be read: the `error` frame's `ref` (when the frame was an
/// object that had one), its `type` when it had a string one, and the error.
#[derive(Debug)]
pub struct Unreadable {
    pub r: Option<Value>,
    pub kind: Option<String>,
    /// The frame's `channel_id` when that field was valid: a frame about a channel the
    /// user is not in is answered `permission_denied` before its other fields are judged.
    pub channel_id: Option<ChannelId>,
    pub error: ApiError,
}

/// Reads one text frame. Unknown fields are ignored (clients may add their own); a
/// missing or mistyped field is named in the error.
pub fn parse(text: &str) -> Result<Inbound, Box<Unreadable>> {
    let fail = |r, kind, error| {
        Box::new(Unreadable {
            r,
            kind,
            channel_id: None,
            error,
        })
    };
    let mut v = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(v)) => v,
        Ok(_) => {
            let e = ApiError::invalid("a frame must be a JSON object");
            return Err(fail(None, None, e));
        }
        Err(e) => {
            let e = ApiError::invalid(format!("malformed JSON: {e}"));
            return Err(fail(None, None, e));
        }
    };
    let r = v.remove("ref");
    let Some(Value::String(kind)) = v.remove("type") else {
        let e = ApiError::invalid("a frame needs a string `type`");
        return Err(fail(r, None, e));
    };
    let channel_id = match v.get("channel_id") {
        Some(Value::String(c)) => ChannelId::parse("channel_id", c).ok(),
        _ => None,
    };
    match read(&kind, &mut v) {
        Ok(frame) => Ok(Inbound { r, frame }),
        Err(error) => {
            let mut e = fail(r, Some(kind), error);
            e.channel_id = channel_id;
            Err(e)
        }
    }
}

fn read(kind: &str, v: &mut Map<String, Value>) -> Result<ClientFrame, ApiError> {
    Ok(match kind {
        "ping" => ClientFrame::Ping,
        "send" => {
            // Every field is present before any is validated (the order of the errors).
            let (channel, cid) = (string(v, "channel_id")?, string(v, "client_msg_id")?);
            let attachment_ids = strings(v, "attachment_ids")?;
            // With attachments, the text may be left out.
            let body = if attachment_ids.is_empty() || v.contains_key("body") {
                string(v, "body")?
            } else {
                String::new()
            };
            ClientFrame::Send {
                channel_id: ChannelId::parse("channel_id", &channel)?,
                client_msg_id: ClientMsgId::parse(&cid)?,
                body,
                attachment_ids,
            }
        }
        "resume" => {
            let Some(Value::Object(p)) = v.get("positions") else {
                return Err(ApiError::invalid(
                    "`positions` must be an object of channel id → seq",
                ));
            };
            let mut positions = BTreeMap::new();
            for (k, seq) in p {
                let channel = ChannelId::parse("positions key", k)?;
                let seq = seq.as_u64().ok_or_else(|| {
                    ApiError::invalid("positions values must be non-negative integers")
                })?;
                positions.insert(channel, seq);
            }
            ClientFrame::Resume { positions }
        }
        "typing" => ClientFrame::Typing {
            channel_id: channel(v)?,
        },
        "ack" | "read" => {
            let (channel_id, seq) = (channel(v)?, seq(v)?);
            if kind == "ack" {
                ClientFrame::Ack { channel_id, seq }
            } else {
                ClientFrame::Read { channel_id, seq }
            }
        }
        "watch_presence" => {
            let Some(Value::Array(ids)) = v.get("user_ids") else {
                return Err(ApiError::invalid("`user_ids` must be an array of user ids"));
            };
            let user_ids = ids
                .iter()
                .map(|u| {
                    let s = u
                        .as_str()
                        .ok_or_else(|| ApiError::invalid("`user_ids` must be strings"))?;
                    Ok(UserId::parse(s)?)
                })
                .collect::<Result<_, ApiError>>()?;
            ClientFrame::WatchPresence { user_ids }
        }
        other => return Err(ApiError::invalid(format!("unknown frame type `{other}`"))),
    })
}

fn string(v: &mut Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match v.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ApiError::invalid(format!("`{name}` must be a string"))),
    }
}

/// An optional array of strings (missing or null: empty).
fn strings(v: &mut Map<String, Value>, name: &str) -> Result<Vec<String>, ApiError> {
    match v.remove(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|x| match x {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::invalid(format!(
                    "`{name}` must be an array of strings"
                ))),
            })
            .collect(),
        Some(_) => Err(ApiError::invalid(format!(
            "`{name}` must be an array of strings"
        ))),
    }
}

fn channel(v: &mut Map<String, Value>) -> Result<ChannelId, ApiError> {
    Ok(ChannelId::parse("channel_id", &string(v, "channel_id")?)?)
}

fn seq(v: &Map<String, Value>) -> Result<u64, ApiError> {
    v.get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| ApiError::invalid("`seq` must be a non-negative integer"))
}

/// A frame from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame of every connection.
    Hello {
        user_id: String,
        session_id: String,
        heartbeat_ms: u64,
    },
    Message {
        message: Message,
    },
    MessageUpdated {
        message: Message,
    },
    MessageDeleted {
        message: Message,
    },
    MemberJoined {
        channel_id: String,
        user_id: String,
        role: Role,
        added_by: String,
    },
    MemberLeft {
        channel_id: String,
        user_id: String,
        removed_by: String,
    },
    /// A member's role changed.
    MemberUpdated {
        channel_id: String,
        user_id: String,
        role: Role,
        updated_by: String,
    },
    /// A channel's name, topic, description or archived state changed.
    ChannelUpdated {
        channel: Channel,
        updated_by: String,
    },
    /// A channel the user was in was deleted with its history.
    ChannelDeleted {
        channel_id: String,
        deleted_by: String,
    },
    /// The answer to a `send`.
    Sent {
        #[serde(
            rename = "ref",
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        r: Option<Value>,
        message: Option<Message>,
    },
    Error {
        #[serde(
            rename = "ref",
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        r: Option<Value>,
        code: String,
        message: String,
        /// Seconds, for `rate_limited` and `unavailable`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
    },
    Pong {
        #[serde(
            rename = "ref",
            default,
            deserialize_with = "present",
            skip_serializing_if = "Option::is_none"
        )]
        r: Option<Value>,
    },
    /// Reconnect (to any replica) and `resume`.
    Reconnect {
        reason: String,
    },
    /// The end of a `resume`'s replay.
    Resumed {
        channels: BTreeMap<String, Resumed>,
    },
    Typing {
        channel_id: String,
        user_id: String,
    },
    Presence {
        user_id: String,
        status: Status,
        last_seen_at: Option<String>,
    },
    Receipt {
        channel_id: String,
        user_id: String,
        delivered_seq: u64,
        read_seq: u64,
    },
}

/// What a `resume` replayed of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    /// The first seq replayed (the client's position + 1).
    pub from: u64,
    /// The last seq delivered.
    pub to: u64,
    /// Everything after the client's position was replayed.
    pub recovered: bool,
}

impl ServerFrame {
    /// The `error` frame of `e`, answering the frame with `ref` `r`.
    pub fn error(r: Option<Value>, e: &ApiError) -> Self {
        Self::Error {
            r,
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            retry_after: e.retry_after,
        }
    }

    /// The frame as JSON text.
    pub fn to_text(&self) -> String {
        // Serializing these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A `ref` that is present is kept, `null` included (it is echoed as it came).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[cfg(test)]
mod tests;
