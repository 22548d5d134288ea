//! JSON shapes of the public API (docs/api.md), converted from the services' protobuf.

use parley_proto::messaging::v1 as pb;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub fn time(t: Option<&prost_types::Timestamp>) -> Value {
    time_str(t).map_or(Value::Null, Value::String)
}

/// A protobuf time as RFC 3339 UTC with microseconds, or `None` when unset or out of range.
pub fn time_str(t: Option<&prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

/// A channel as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    /// `group` or `direct`.
    pub kind: String,
    pub name: String,
    pub created_by: String,
    pub created_at: Option<String>,
    pub member_count: u32,
    pub last_seq: u64,
    pub last_activity_at: Option<String>,
    /// One line shown with the channel (empty when none).
    pub topic: String,
    /// What the channel is for (empty when none).
    pub description: String,
    /// When the channel was archived (read-only), or `null`.
    #[serde(default)]
    pub archived_at: Option<String>,
}

impl From<&pb::Channel> for Channel {
    fn from(c: &pb::Channel) -> Self {
        let pb::Channel {
            id,
            kind,
            name,
            created_by,
            created_at,
            member_count,
            last_seq,
            last_activity_at,
            topic,
            description,
            archived_at,
        } = c;
        let kind = match pb::ChannelKind::try_from(*kind) {
            Ok(pb::ChannelKind::Direct) => "direct",
            Ok(pb::ChannelKind::Public) => "public",
            _ => "group",
        };
        Self {
            id: id.clone(),
            kind: kind.to_owned(),
            name: name.clone(),
            created_by: created_by.clone(),
            created_at: time_str(created_at.as_ref()),
            member_count: *member_count,
            last_seq: *last_seq,
            last_activity_at: time_str(last_activity_at.as_ref()),
            topic: topic.clone(),
            description: description.clone(),
            archived_at: time_str(archived_at.as_ref()),
        }
    }
}

pub fn channel(c: &pb::Channel) -> Value {
    serde_json::to_value(Channel::from(c)).unwrap_or(Value::Null)
}

/// A member's role in a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// The role of a protobuf `Role` value (anything unknown reads as `member`).
    pub fn of(r: i32) -> Self {
        match pb::Role::try_from(r) {
            Ok(pb::Role::Owner) => Self::Owner,
            Ok(pb::Role::Admin) => Self::Admin,
            _ => Self::Member,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
        }
    }
}

pub fn role(r: i32) -> &'static str {
    Role::of(r).as_str()
}

pub fn member(m: &pb::Member) -> Value {
    let pb::Member {
        channel_id,
        user_id,
        role: r,
        joined_at,
    } = m;
    json!({"channel_id": channel_id, "user_id": user_id, "role": role(*r), "joined_at": time(joined_at.as_ref())})
}

/// A message as the API shows it (REST bodies and WebSocket frames).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub channel_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    /// RFC 3339 UTC with microseconds.
    pub created_at: Option<String>,
    /// When the body was last edited, or `null`.
    pub edited_at: Option<String>,
    /// A tombstone: the body is empty.
    pub deleted: bool,
    /// Present only on a system message (a moderation action recorded in history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemEvent>,
    /// Files sent with the message, in the order given; omitted when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file sent with a message: its metadata, and where to download it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub filename: String,
    pub content_type: String,
    /// Bytes.
    pub size: u64,
    /// As the uploader gave them; omitted when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u32>,
    /// `/v1/attachments/{id}`: redirects (302) to the bytes.
    pub url: String,
}

impl From<&pb::Attachment> for Attachment {
    fn from(a: &pb::Attachment) -> Self {
        Self {
            id: a.id.clone(),
            filename: a.filename.clone(),
            content_type: a.content_type.clone(),
            size: a.size,
            width: a.width,
            height: a.height,
            duration_ms: a.duration_ms,
            url: format!("/v1/attachments/{}", a.id),
        }
    }
}

/// `POST /v1/channels/{id}/attachments`: the upload's metadata and how to upload it.
pub fn upload(r: &pb::CreateAttachmentResponse) -> Value {
    let attachment = r.attachment.as_ref().map(Attachment::from);
    json!({
        "attachment_id": attachment.as_ref().map(|a| a.id.clone()),
        "attachment": attachment,
        "upload_url": r.upload_url,
        "method": r.method,
        "headers": r.headers,
        "expires_at": time(r.expires_at.as_ref()),
    })
}

/// `GET /v1/search`: the hits, each a message with a snippet in parts.
pub fn search(r: &pb::SearchMessagesResponse) -> Value {
    let hits: Vec<Value> = r
        .hits
        .iter()
        .map(|h| {
            let snippet: Vec<Value> = h
                .snippet
                .iter()
                .map(|p| json!({"text": p.text, "highlight": p.highlight}))
                .collect();
            json!({
                "message": h.message.as_ref().map(message).unwrap_or(Value::Null),
                "snippet": snippet,
            })
        })
        .collect();
    let next = (!r.next_cursor.is_empty()).then(|| r.next_cursor.clone());
    json!({"hits": hits, "next_cursor": next})
}

/// What a system message records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemEvent {
    /// `banned`, `unbanned`, `muted` or `unmuted`.
    pub action: String,
    pub target_user_id: String,
    /// A ban's reason; omitted when none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// When the ban or mute ends; omitted when it lasts until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

impl From<&pb::SystemEvent> for SystemEvent {
    fn from(e: &pb::SystemEvent) -> Self {
        Self {
            action: e.action.clone(),
            target_user_id: e.target_user_id.clone(),
            reason: e.reason.clone(),
            expires_at: time_str(e.expires_at.as_ref()),
        }
    }
}

impl From<&pb::Message> for Message {
    fn from(m: &pb::Message) -> Self {
        let pb::Message {
            id,
            channel_id,
            seq,
            sender_id,
            client_msg_id,
            body,
            created_at,
            edited_at,
            deleted,
            system,
            attachments,
        } = m;
        Self {
            id: id.clone(),
            channel_id: channel_id.clone(),
            seq: *seq,
            sender_id: sender_id.clone(),
            client_msg_id: client_msg_id.clone(),
            body: body.clone(),
            created_at: time_str(created_at.as_ref()),
            edited_at: time_str(edited_at.as_ref()),
            deleted: *deleted,
            system: system.as_ref().map(SystemEvent::from),
            attachments: attachments.iter().map(Attachment::from).collect(),
        }
    }
}

pub fn message(m: &pb::Message) -> Value {
    serde_json::to_value(Message::from(m)).unwrap_or(Value::Null)
}

/// A user's presence (`GET /v1/presence` entries).
pub fn presence(p: &parley_proto::presence::v1::UserPresence) -> Value {
    json!({"user_id": p.user_id, "status": status(p), "last_seen_at": time(p.last_seen_at.as_ref())})
}

/// A user's presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
}

/// The status a client sees (anything but online reads as offline).
pub fn status(p: &parley_proto::presence::v1::UserPresence) -> Status {
    use parley_proto::presence::v1::Status as Pb;
    match Pb::try_from(p.status) {
        Ok(Pb::Online) => Status::Online,
        _ => Status::Offline,
    }
}

/// `GET /v1/channels/{id}/receipts`.
pub fn receipts(list: &[parley_proto::receipts::v1::Receipt]) -> Value {
    let list: Vec<Value> = list
        .iter()
        .map(|r| json!({"user_id": r.user_id, "delivered_seq": r.delivered_seq, "read_seq": r.read_seq}))
        .collect();
    json!({"receipts": list})
}

/// `GET /v1/unread`.
pub fn unread(u: &parley_proto::receipts::v1::GetUnreadResponse) -> Value {
    let channels: Vec<Value> = u
        .channels
        .iter()
        .map(|c| json!({"channel_id": c.channel_id, "unread": c.unread}))
        .collect();
    json!({"total": u.total, "channels": channels})
}

/// An invite (`POST /v1/channels/{id}/invites`).
pub fn invite(i: &pb::Invite) -> Value {
    let pb::Invite {
        code,
        channel_id,
        created_by,
        expires_at,
        max_uses,
        uses,
    } = i;
    json!({
        "code": code, "channel_id": channel_id, "created_by": created_by,
        "expires_at": time(expires_at.as_ref()), "max_uses": max_uses, "uses": uses,
    })
}

pub fn ban(b: &pb::Ban) -> Value {
    let pb::Ban {
        channel_id,
        user_id,
        banned_by,
        reason,
        created_at,
        expires_at,
    } = b;
    json!({
        "channel_id": channel_id,
        "user_id": user_id,
        "banned_by": banned_by,
        "reason": reason,
        "created_at": time(created_at.as_ref()),
        "expires_at": time(expires_at.as_ref()),
    })
}

pub fn mute(m: &pb::Mute) -> Value {
    let pb::Mute {
        channel_id,
        user_id,
        muted_by,
        created_at,
        expires_at,
    } = m;
    json!({
        "channel_id": channel_id,
        "user_id": user_id,
        "muted_by": muted_by,
        "created_at": time(created_at.as_ref()),
        "expires_at": time(expires_at.as_ref()),
    })
}

pub fn block(b: &pb::Block) -> Value {
    json!({"user_id": b.user_id, "created_at": time(b.created_at.as_ref())})
}
