//! SQL of the messaging schema. Every change writes its events into the outbox in the
//! same transaction; callers publish the returned [`Pending`] events after commit.

use chrono::{DateTime, Utc};
use parley_kit::domain::{MessageBody, UserId};
use parley_proto::{events::v1 as ev, messaging::v1 as pb};
use prost::Message as _;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::Error;

pub mod attachments;
mod members;
mod messages;
mod moderation;
mod role;
pub mod search;
mod send;
use members::check_channels_of;
pub use members::{
    accept_invite, add_member, contacts, create_invite, join, list_members, remove_member,
    set_role, transfer_ownership,
};
pub use messages::{Page, delete, edit, list_messages};
pub use moderation::{
    Sanction, ban, block, delete_channel, list_bans, list_blocks, mute, set_archived, unban,
    unblock, unmute, write_refusal,
};
pub use role::Role;
pub use send::{Assumed, SendKey, check_sends, write_sends, write_sends_checked};

type Tx = Transaction<'static, Postgres>;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChannelRow {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub member_count: i32,
    pub last_seq: i64,
    pub last_activity_at: DateTime<Utc>,
    pub topic: String,
    pub description: String,
    pub archived_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub channel_id: Uuid,
    pub user_id: String,
    pub role: Role,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted: bool,
    /// JSON of a [`SystemRow`] on a system message; `None` on what a user wrote.
    pub system: Option<String>,
    /// JSON array of [`attachments::Meta`]; `None` when the message has none.
    pub attachments: Option<String>,
}

/// A system message's event as `messages.system` stores it (JSON).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SystemRow {
    pub action: String,
    pub target_user_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<SystemRow> for pb::SystemEvent {
    fn from(r: SystemRow) -> Self {
        pb::SystemEvent {
            action: r.action,
            target_user_id: r.target_user_id,
            reason: r.reason,
            expires_at: r.expires_at.map(ts),
        }
    }
}

/// What a create-or-find call returns: the row, whether this call created it, and the
/// outbox events to publish after commit (none when it found the row).
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub row: T,
    pub created: bool,
    pub pending: Vec<Pending>,
}

/// An outbox row written in the current transaction, to publish after commit.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub topics: Vec<String>,
    pub payload: Vec<u8>,
}

const CHANNEL_COLS: &str = "id, kind, name, created_by, created_at, member_count, last_seq, \
     last_activity_at, topic, description, archived_at";
const MESSAGE_COLS: &str = "id, channel_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted, system, \
     attachments";

/// A LIKE pattern matching text that contains `s`: `%`, `_` and `\` in `s` match
/// themselves.
pub(crate) fn contains_pattern(s: &str) -> String {
    format!(
        "%{}%",
        s.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl From<ChannelRow> for pb::Channel {
    fn from(r: ChannelRow) -> Self {
        let ChannelRow {
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
        } = r;
        pb::Channel {
            id: id.to_string(),
            kind: match kind.as_str() {
                "direct" => pb::ChannelKind::Direct,
                "public" => pb::ChannelKind::Public,
                _ => pb::ChannelKind::Group,
            } as i32,
            name,
            created_by,
            created_at: Some(ts(created_at)),
            member_count: member_count.max(0) as u32,
            last_seq: last_seq.max(0) as u64,
            last_activity_at: Some(ts(last_activity_at)),
            topic,
            description,
            archived_at: archived_at.map(ts),
        }
    }
}

impl From<MemberRow> for pb::Member {
    fn from(r: MemberRow) -> Self {
        let MemberRow {
            channel_id,
            user_id,
            role,
            joined_at,
        } = r;
        pb::Member {
            channel_id: channel_id.to_string(),
            user_id,
            role: pb::Role::from(role) as i32,
            joined_at: Some(ts(joined_at)),
        }
    }
}

impl From<MessageRow> for pb::Message {
    fn from(r: MessageRow) -> Self {
        let MessageRow {
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
        } = r;
        // Values this service wrote: unreadable only if a column was edited by hand.
        let system = system
            .and_then(|j| serde_json::from_str::<SystemRow>(&j).ok())
            .map(pb::SystemEvent::from);
        let attachments = attachments
            .and_then(|j| serde_json::from_str::<Vec<attachments::Meta>>(&j).ok())
            .unwrap_or_default()
            .into_iter()
            .map(pb::Attachment::from)
            .collect();
        pb::Message {
            id: id.to_string(),
            channel_id: channel_id.to_string(),
            seq: seq.max(0) as u64,
            sender_id,
            client_msg_id,
            body,
            created_at: Some(ts(created_at)),
            edited_at: edited_at.map(ts),
            deleted,
            system,
            attachments,
        }
    }
}

/// Topic of a channel's events (without the deployment prefix).
pub use parley_kit::topics::messaging_channel as channel_topic;
/// Topic of membership events about one user (without the deployment prefix).
pub use parley_kit::topics::messaging_user as user_topic;

/// An encoded event, ready for the outbox.
pub struct NewEvent {
    pub id: Uuid,
    pub bytes: Vec<u8>,
}

/// Encodes `payload` as an event of `channel` (`None`: an event about users, not in a
/// channel; its `channel_id` is empty) carrying `trace` (W3C context).
pub fn new_event(
    channel: Option<Uuid>,
    payload: ev::event::Payload,
    trace: std::collections::HashMap<String, String>,
) -> NewEvent {
    let id = Uuid::now_v7();
    let event = ev::Event {
        event_id: id.to_string(),
        occurred_at: Some(ts(Utc::now())),
        channel_id: channel.map(|c| c.to_string()).unwrap_or_default(),
        trace_context: trace,
        payload: Some(payload),
    };
    NewEvent {
        id,
        bytes: event.encode_to_vec(),
    }
}

/// Writes `payload` for `channel` into the outbox.
async fn enqueue(
    tx: &mut Tx,
    channel: Uuid,
    payload: ev::event::Payload,
    topics: Vec<String>,
) -> Result<Pending, Error> {
    enqueue_event(tx, Some(channel), payload, topics).await
}

/// Writes `payload` into the outbox, for `channel` or (`None`) about users only.
async fn enqueue_event(
    tx: &mut Tx,
    channel: Option<Uuid>,
    payload: ev::event::Payload,
    topics: Vec<String>,
) -> Result<Pending, Error> {
    let e = new_event(channel, payload, parley_kit::propagation::inject_map());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (event_id, topics, payload) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(e.id)
    .bind(&topics)
    .bind(&e.bytes)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Pending {
        id,
        topics,
        payload: e.bytes,
    })
}

/// The caller's role in `channel`; NOT_FOUND for an unknown channel, PERMISSION_DENIED
/// for a non-member.
async fn require_member(
    conn: &mut PgConnection,
    channel: Uuid,
    user: &UserId,
) -> Result<Role, Error> {
    let role: Option<Role> =
        sqlx::query_scalar("SELECT role FROM members WHERE channel_id = $1 AND user_id = $2")
            .bind(channel)
            .bind(user.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    if let Some(role) = role {
        return Ok(role);
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM channels WHERE id = $1)")
        .bind(channel)
        .fetch_one(&mut *conn)
        .await?;
    Err(if exists {
        Error::PermissionDenied(format!("not a member of channel {channel}"))
    } else {
        Error::NotFound(format!("channel {channel} not found"))
    })
}

async fn channel_row(
    conn: &mut PgConnection,
    channel: Uuid,
    lock: bool,
) -> Result<ChannelRow, Error> {
    let sql = if lock {
        format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1 FOR UPDATE")
    } else {
        format!("SELECT {CHANNEL_COLS} FROM channels WHERE id = $1")
    };
    sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(sql))
        .bind(channel)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or_else(|| Error::NotFound(format!("channel {channel} not found")))
}

async fn insert_member(
    tx: &mut Tx,
    channel: &ChannelRow,
    user: &str,
    role: Role,
    added_by: &str,
) -> Result<(MemberRow, Pending), Error> {
    let row = sqlx::query_as::<_, MemberRow>(
        "INSERT INTO members (channel_id, user_id, role) VALUES ($1, $2, $3)
         RETURNING channel_id, user_id, role, joined_at",
    )
    .bind(channel.id)
    .bind(user)
    .bind(role)
    .fetch_one(&mut **tx)
    .await?;
    let payload = ev::event::Payload::MemberJoined(ev::MemberJoined {
        member: Some(row.clone().into()),
        added_by: added_by.to_owned(),
        channel_last_seq: channel.last_seq.max(0) as u64,
    });
    let pending = enqueue(
        tx,
        channel.id,
        payload,
        vec![channel_topic(channel.id), user_topic(user)],
    )
    .await?;
    Ok((row, pending))
}

/// Creates a group channel (`public`: anyone may find and join it) with the caller as
/// owner and `others` as members.
pub async fn create_group(
    mut tx: Tx,
    caller: &UserId,
    public: bool,
    name: &str,
    others: &[UserId],
    max_members: u32,
    max_channels: u32,
) -> Result<Created<ChannelRow>, Error> {
    let mut members: Vec<&str> = others
        .iter()
        .map(UserId::as_str)
        .filter(|u| *u != caller.as_str())
        .collect();
    members.sort_unstable();
    members.dedup();
    if members.len() + 1 > max_members as usize {
        return Err(Error::Conflict(format!(
            "a channel holds at most {max_members} members"
        )));
    }
    let mut everyone = members.clone();
    everyone.push(caller.as_str());
    check_channels_of(&mut tx, &everyone, max_channels).await?;
    let id = Uuid::now_v7();
    let mut channel = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO channels (id, kind, name, created_by, member_count) VALUES ($1, $5, $2, $3, $4)
         RETURNING {CHANNEL_COLS}"
    )))
    .bind(id)
    .bind(name)
    .bind(caller.as_str())
    .bind((members.len() + 1) as i32)
    .bind(if public { "public" } else { "group" })
    .fetch_one(&mut *tx)
    .await?;
    let me = caller.as_str();
    let mut pending = Vec::with_capacity(members.len() + 1);
    pending.push(
        insert_member(&mut tx, &channel, me, Role::Owner, me)
            .await?
            .1,
    );
    for m in members {
        pending.push(
            insert_member(&mut tx, &channel, m, Role::Member, me)
                .await?
                .1,
        );
    }
    tx.commit().await?;
    channel.member_count = pending.len() as i32;
    Ok(Created {
        row: channel,
        created: true,
        pending,
    })
}

/// Creates (or returns) the direct channel between the caller and `other`.
pub async fn create_direct(
    mut tx: Tx,
    caller: &UserId,
    other: &UserId,
    max_channels: u32,
) -> Result<Created<ChannelRow>, Error> {
    let (a, b) = if caller < other {
        (caller, other)
    } else {
        (other, caller)
    };
    if moderation::blocks(&mut tx, other.as_str(), caller.as_str()).await? {
        return Err(Error::Blocked(format!(
            "{other} blocked you: no direct channel with them"
        )));
    }
    let key = format!("{a}\n{b}");
    let inserted = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO channels (id, kind, name, created_by, member_count, direct_key)
         VALUES ($1, 'direct', '', $2, 2, $3) ON CONFLICT (direct_key) DO NOTHING
         RETURNING {CHANNEL_COLS}"
    )))
    .bind(Uuid::now_v7())
    .bind(caller.as_str())
    .bind(&key)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(channel) = inserted else {
        let existing = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CHANNEL_COLS} FROM channels WHERE direct_key = $1"
        )))
        .bind(&key)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        return Ok(Created {
            row: existing,
            created: false,
            pending: Vec::new(),
        });
    };
    check_channels_of(&mut tx, &[caller.as_str(), other.as_str()], max_channels).await?;
    let me = caller.as_str();
    let p1 = insert_member(&mut tx, &channel, me, Role::Member, me)
        .await?
        .1;
    let p2 = insert_member(&mut tx, &channel, other.as_str(), Role::Member, me)
        .await?
        .1;
    tx.commit().await?;
    Ok(Created {
        row: channel,
        created: true,
        pending: vec![p1, p2],
    })
}

pub async fn get_channel(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
) -> Result<ChannelRow, Error> {
    require_member(conn, channel, caller).await?;
    channel_row(conn, channel, false).await
}

/// What an update sets (`None`: unchanged). Validated by the caller.
#[derive(Debug, Default)]
pub struct ChannelChanges {
    pub name: Option<String>,
    pub topic: Option<String>,
    pub description: Option<String>,
}

/// Changes a group channel's name, topic and/or description (owners and admins). A change
/// that changes nothing publishes no event (`Created::created` false, no pending).
pub async fn update_channel(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    changes: ChannelChanges,
) -> Result<Created<ChannelRow>, Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    let before = channel_row(&mut tx, channel, true).await?;
    if before.kind == "direct" {
        return Err(Error::Conflict(
            "a direct channel has no name, topic or description".into(),
        ));
    }
    if !role.manages() {
        return Err(Error::PermissionDenied(
            "only an owner or admin changes a channel's name, topic or description".into(),
        ));
    }
    let ChannelChanges {
        name,
        topic,
        description,
    } = changes;
    let unchanged = name.as_ref().is_none_or(|n| *n == before.name)
        && topic.as_ref().is_none_or(|t| *t == before.topic)
        && description
            .as_ref()
            .is_none_or(|d| *d == before.description);
    if unchanged {
        tx.commit().await?;
        return Ok(Created {
            row: before,
            created: false,
            pending: Vec::new(),
        });
    }
    let row = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE channels SET name = COALESCE($2, name), topic = COALESCE($3, topic), \
         description = COALESCE($4, description) WHERE id = $1 RETURNING {CHANNEL_COLS}"
    )))
    .bind(channel)
    .bind(name)
    .bind(topic)
    .bind(description)
    .fetch_one(&mut *tx)
    .await?;
    let p = channel_updated(&mut tx, &row, caller).await?;
    tx.commit().await?;
    Ok(Created {
        row,
        created: true,
        pending: vec![p],
    })
}

/// Publishes `ChannelUpdated` with the channel as it is now (`row`) on its topic.
async fn channel_updated(tx: &mut Tx, row: &ChannelRow, by: &UserId) -> Result<Pending, Error> {
    let payload = ev::event::Payload::ChannelUpdated(ev::ChannelUpdated {
        channel: Some(row.clone().into()),
        updated_by: by.to_string(),
    });
    enqueue(tx, row.id, payload, vec![channel_topic(row.id)]).await
}

/// A page of at most `limit` rows out of `limit + 1` read, and whether there are more.
fn one_page<T>(mut rows: Vec<T>, limit: u32) -> (Vec<T>, bool) {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    (rows, more)
}

/// Public channels whose name contains `query` (case-insensitive), by lower-case name then
/// id, after `after` (the name and id of the previous page's last channel); and whether
/// there are more.
pub async fn public_channels(
    conn: &mut PgConnection,
    query: &str,
    after: Option<(String, Uuid)>,
    limit: u32,
) -> Result<(Vec<ChannelRow>, bool), Error> {
    let pattern = contains_pattern(query);
    let (at, id) = after.map_or((None, None), |(n, i)| (Some(n), Some(i)));
    let rows = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {CHANNEL_COLS} FROM channels
         WHERE kind = 'public' AND lower(name) LIKE lower($1)
           AND ($2::text IS NULL OR (lower(name), id) > (lower($2::text), $3::uuid))
         ORDER BY lower(name), id
         LIMIT $4"
    )))
    .bind(pattern)
    .bind(at)
    .bind(id)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await?;
    Ok(one_page(rows, limit))
}

/// One page of the caller's channels, most recently active first.
pub async fn list_channels(
    conn: &mut PgConnection,
    caller: &UserId,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u32,
) -> Result<(Vec<ChannelRow>, bool), Error> {
    let (at, id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
    let rows = sqlx::query_as::<_, ChannelRow>(
        "SELECT c.id, c.kind, c.name, c.created_by, c.created_at, c.member_count, c.last_seq, c.last_activity_at,
                c.topic, c.description, c.archived_at
         FROM members m JOIN channels c ON c.id = m.channel_id
         WHERE m.user_id = $1
           AND ($2::timestamptz IS NULL OR (c.last_activity_at, c.id) < ($2::timestamptz, $3::uuid))
         ORDER BY c.last_activity_at DESC, c.id DESC
         LIMIT $4",
    )
    .bind(caller.as_str())
    .bind(at)
    .bind(id)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *conn)
    .await?;
    Ok(one_page(rows, limit))
}

pub async fn channel_positions(
    conn: &mut PgConnection,
    caller: &UserId,
) -> Result<Vec<(Uuid, i64)>, Error> {
    Ok(sqlx::query_as::<_, (Uuid, i64)>(
        "SELECT c.id, c.last_seq FROM members m JOIN channels c ON c.id = m.channel_id WHERE m.user_id = $1",
    )
    .bind(caller.as_str())
    .fetch_all(&mut *conn)
    .await?)
}
