//! SQL of the messaging schema. Every change writes its events into the outbox in the
//! same transaction; callers publish the returned [`Pending`] events after commit.

use chrono::{DateTime, Utc};
use parley_kit::domain::{MessageBody, UserId};
use parley_proto::{events::v1 as ev, messaging::v1 as pb};
use prost::Message as _;
use sqlx::{PgConnection, Postgres, Transaction};
use uuid::Uuid;

use crate::Error;

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
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MemberRow {
    pub channel_id: Uuid,
    pub user_id: String,
    pub role: String,
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
}

/// An outbox row written in the current transaction, to publish after commit.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub topics: Vec<String>,
    pub payload: Vec<u8>,
}

const CHANNEL_COLS: &str =
    "id, kind, name, created_by, created_at, member_count, last_seq, last_activity_at";
const MESSAGE_COLS: &str =
    "id, channel_id, seq, sender_id, client_msg_id, body, created_at, edited_at, deleted";

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn role_to_pb(role: &str) -> pb::Role {
    match role {
        "owner" => pb::Role::Owner,
        "admin" => pb::Role::Admin,
        _ => pb::Role::Member,
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
        } = r;
        pb::Channel {
            id: id.to_string(),
            kind: if kind == "direct" {
                pb::ChannelKind::Direct
            } else {
                pb::ChannelKind::Group
            } as i32,
            name,
            created_by,
            created_at: Some(ts(created_at)),
            member_count: member_count.max(0) as u32,
            last_seq: last_seq.max(0) as u64,
            last_activity_at: Some(ts(last_activity_at)),
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
            role: role_to_pb(&role) as i32,
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
        } = r;
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
        }
    }
}

/// Topic of a channel's events (without the deployment prefix).
pub fn channel_topic(channel: Uuid) -> String {
    format!("messaging:channel:{channel}")
}

/// Topic of membership events about one user (without the deployment prefix).
pub fn user_topic(user: &str) -> String {
    format!("messaging:user:{user}")
}

/// An encoded event for `channel`, ready for the outbox.
pub struct NewEvent {
    pub id: Uuid,
    pub bytes: Vec<u8>,
}

/// Encodes `payload` as an event of `channel` carrying `trace` (W3C context).
pub fn new_event(
    channel: Uuid,
    payload: ev::event::Payload,
    trace: std::collections::HashMap<String, String>,
) -> NewEvent {
    let id = Uuid::now_v7();
    let event = ev::Event {
        event_id: id.to_string(),
        occurred_at: Some(ts(Utc::now())),
        channel_id: channel.to_string(),
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
) -> Result<String, Error> {
    let role: Option<String> =
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
    role: &str,
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

/// Creates a group channel with the caller as owner and `others` as members.
pub async fn create_group(
    mut tx: Tx,
    caller: &UserId,
    name: &str,
    others: &[UserId],
    max_members: u32,
) -> Result<(ChannelRow, Vec<Pending>), Error> {
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
    let id = Uuid::now_v7();
    let mut channel = sqlx::query_as::<_, ChannelRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO channels (id, kind, name, created_by, member_count) VALUES ($1, 'group', $2, $3, $4)
         RETURNING {CHANNEL_COLS}"
    )))
    .bind(id)
    .bind(name)
    .bind(caller.as_str())
    .bind((members.len() + 1) as i32)
    .fetch_one(&mut *tx)
    .await?;
    let mut pending = Vec::with_capacity(members.len() + 1);
    pending.push(
        insert_member(&mut tx, &channel, caller.as_str(), "owner", caller.as_str())
            .await?
            .1,
    );
    for m in members {
        pending.push(
            insert_member(&mut tx, &channel, m, "member", caller.as_str())
                .await?
                .1,
        );
    }
    tx.commit().await?;
    channel.member_count = pending.len() as i32;
    Ok((channel, pending))
}

/// Creates (or returns) the direct channel between the caller and `other`.
pub async fn create_direct(
    mut tx: Tx,
    caller: &UserId,
    other: &UserId,
) -> Result<(ChannelRow, bool, Vec<Pending>), Error> {
    let (a, b) = if caller < other {
        (caller, other)
    } else {
        (other, caller)
    };
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
        return Ok((existing, false, Vec::new()));
    };
    let p1 = insert_member(&mut tx, &channel, caller.as_str(), "owner", caller.as_str())
        .await?
        .1;
    let p2 = insert_member(&mut tx, &channel, other.as_str(), "member", caller.as_str())
        .await?
        .1;
    tx.commit().await?;
    Ok((channel, true, vec![p1, p2]))
}

pub async fn get_channel(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
) -> Result<ChannelRow, Error> {
    require_member(conn, channel, caller).await?;
    channel_row(conn, channel, false).await
}

/// One page of the caller's channels, most recently active first.
pub async fn list_channels(
    conn: &mut PgConnection,
    caller: &UserId,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u32,
) -> Result<(Vec<ChannelRow>, bool), Error> {
    let (at, id) = after.map_or((None, None), |(t, i)| (Some(t), Some(i)));
    let mut rows = sqlx::query_as::<_, ChannelRow>(
        "SELECT c.id, c.kind, c.name, c.created_by, c.created_at, c.member_count, c.last_seq, c.last_activity_at
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
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
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

/// The members of `channel` and its membership version, read in one snapshot (one
/// statement).
pub async fn list_members(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
) -> Result<(Vec<MemberRow>, i64), Error> {
    require_member(conn, channel, caller).await?;
    let rows: Vec<(Uuid, String, String, DateTime<Utc>, i64)> = sqlx::query_as(
        "SELECT m.channel_id, m.user_id, m.role, m.joined_at, c.members_version
         FROM members m JOIN channels c ON c.id = m.channel_id
         WHERE m.channel_id = $1 ORDER BY m.joined_at, m.user_id",
    )
    .bind(channel)
    .fetch_all(&mut *conn)
    .await?;
    let version = rows.first().map_or(0, |r| r.4);
    let members = rows
        .into_iter()
        .map(|(channel_id, user_id, role, joined_at, _)| MemberRow {
            channel_id,
            user_id,
            role,
            joined_at,
        })
        .collect();
    Ok((members, version))
}

/// Adds `user` to `channel`. Owners/admins only; idempotent for an existing member.
pub async fn add_member(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
    max_members: u32,
) -> Result<(MemberRow, bool, Vec<Pending>), Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    if role == "member" {
        return Err(Error::PermissionDenied(
            "only owners and admins add members".into(),
        ));
    }
    // Lock the channel row: serialises with sends (consistent channel_last_seq in the
    // event) and with other adds (member limit).
    let ch = channel_row(&mut tx, channel, true).await?;
    if ch.kind == "direct" {
        return Err(Error::Conflict(
            "a direct channel has exactly two members".into(),
        ));
    }
    let existing = sqlx::query_as::<_, MemberRow>(
        "SELECT channel_id, user_id, role, joined_at FROM members WHERE channel_id = $1 AND user_id = $2",
    )
    .bind(channel)
    .bind(user.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(m) = existing {
        tx.commit().await?;
        return Ok((m, false, Vec::new()));
    }
    if ch.member_count as u32 >= max_members {
        return Err(Error::Conflict(format!(
            "channel is full ({max_members} members)"
        )));
    }
    let (row, pending) =
        insert_member(&mut tx, &ch, user.as_str(), "member", caller.as_str()).await?;
    sqlx::query("UPDATE channels SET member_count = member_count + 1, members_version = members_version + 1 WHERE id = $1")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((row, true, vec![pending]))
}

/// Removes `user` from `channel`: themselves, or others by an owner/admin.
pub async fn remove_member(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    user: &UserId,
) -> Result<Vec<Pending>, Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    let ch = channel_row(&mut tx, channel, true).await?;
    let target_role: Option<String> =
        sqlx::query_scalar("SELECT role FROM members WHERE channel_id = $1 AND user_id = $2")
            .bind(channel)
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
    let Some(target_role) = target_role else {
        return Err(Error::NotFound(format!(
            "{user} is not a member of channel {channel}"
        )));
    };
    if caller != user {
        if role == "member" {
            return Err(Error::PermissionDenied(
                "only owners and admins remove others".into(),
            ));
        }
        if target_role == "owner" {
            return Err(Error::PermissionDenied(
                "the owner cannot be removed by others".into(),
            ));
        }
    }
    sqlx::query("DELETE FROM members WHERE channel_id = $1 AND user_id = $2")
        .bind(channel)
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE channels SET member_count = member_count - 1, members_version = members_version + 1 WHERE id = $1")
        .bind(channel)
        .execute(&mut *tx)
        .await?;
    let payload = ev::event::Payload::MemberLeft(ev::MemberLeft {
        channel_id: channel.to_string(),
        user_id: user.to_string(),
        removed_by: caller.to_string(),
    });
    let p = enqueue(
        &mut tx,
        ch.id,
        payload,
        vec![channel_topic(channel), user_topic(user.as_str())],
    )
    .await?;
    tx.commit().await?;
    Ok(vec![p])
}

/// What [`check_sends`] found for one request of a send batch.
pub struct SendCheck {
    /// The sender is a member of the channel.
    pub member: bool,
    /// The message the sender already sent with this client_msg_id (idempotent retry).
    pub existing: Option<MessageRow>,
}

/// Membership and earlier sends of each (channel, sender, client_msg_id), in input order,
/// in one statement.
pub async fn check_sends<'a>(
    conn: &mut PgConnection,
    requests: impl Iterator<Item = (Uuid, &'a str, &'a str)>,
) -> Result<Vec<SendCheck>, Error> {
    let (mut channels, mut senders, mut cids) = (Vec::new(), Vec::new(), Vec::new());
    for (c, s, m) in requests {
        channels.push(c);
        senders.push(s);
        cids.push(m);
    }
    type Found = (
        i64,
        bool,
        Option<Uuid>,
        Option<i64>,
        Option<String>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<bool>,
    );
    let rows: Vec<Found> = sqlx::query_as(
        "SELECT r.i, m.user_id IS NOT NULL, e.id, e.seq, e.body, e.created_at, e.edited_at, e.deleted
         FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS r(channel_id, sender_id, client_msg_id, i)
         LEFT JOIN members m ON m.channel_id = r.channel_id AND m.user_id = r.sender_id
         LEFT JOIN messages e ON e.channel_id = r.channel_id AND e.sender_id = r.sender_id
                             AND e.client_msg_id = r.client_msg_id
         ORDER BY r.i",
    )
    .bind(&channels)
    .bind(&senders)
    .bind(&cids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(i, member, id, seq, body, created_at, edited_at, deleted)| {
                let k = usize::try_from(i - 1).unwrap_or_default();
                let existing = match (id, seq, body, created_at, deleted) {
                    (Some(id), Some(seq), Some(body), Some(created_at), Some(deleted)) => {
                        Some(MessageRow {
                            id,
                            channel_id: channels[k],
                            seq,
                            sender_id: senders[k].to_owned(),
                            client_msg_id: cids[k].to_owned(),
                            body,
                            created_at,
                            edited_at,
                            deleted,
                        })
                    }
                    _ => None,
                };
                SendCheck { member, existing }
            },
        )
        .collect())
}

/// A send batch's messages and events as columns (one array bind each).
struct SendColumns<'a> {
    channel: Vec<Uuid>,
    seq: Vec<i64>,
    id: Vec<Uuid>,
    sender: Vec<&'a str>,
    cid: Vec<&'a str>,
    body: Vec<&'a str>,
    topics: Vec<String>,
    event_ids: Vec<Uuid>,
    payloads: Vec<Vec<u8>>,
}

impl<'a> SendColumns<'a> {
    /// `events[i]` belongs to `messages[i]`; its topic is the message's channel.
    fn new(messages: &'a [MessageRow], events: Vec<NewEvent>) -> Self {
        let mut c = SendColumns {
            channel: Vec::with_capacity(messages.len()),
            seq: Vec::with_capacity(messages.len()),
            id: Vec::with_capacity(messages.len()),
            sender: Vec::with_capacity(messages.len()),
            cid: Vec::with_capacity(messages.len()),
            body: Vec::with_capacity(messages.len()),
            topics: Vec::with_capacity(messages.len()),
            event_ids: Vec::new(),
            payloads: Vec::new(),
        };
        for m in messages {
            c.channel.push(m.channel_id);
            c.seq.push(m.seq);
            c.id.push(m.id);
            c.sender.push(m.sender_id.as_str());
            c.cid.push(m.client_msg_id.as_str());
            c.body.push(m.body.as_str());
            c.topics.push(channel_topic(m.channel_id));
        }
        (c.event_ids, c.payloads) = events.into_iter().map(|e| (e.id, e.bytes)).unzip();
        c
    }

    /// Binds the columns in order: message channel, seq, id, sender, client_msg_id, body,
    /// then event id, topic, payload (nine consecutive parameters).
    fn bind<'q, O>(
        &'q self,
        q: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
        q.bind(&self.channel)
            .bind(&self.seq)
            .bind(&self.id)
            .bind(&self.sender)
            .bind(&self.cid)
            .bind(&self.body)
            .bind(&self.event_ids)
            .bind(&self.topics)
            .bind(&self.payloads)
    }

    /// The outbox entries, given the (outbox id, event id) pairs the insert returned.
    fn pending(self, ids: Vec<(i64, Uuid)>) -> Result<Vec<Pending>, Error> {
        let id_of: std::collections::HashMap<Uuid, i64> =
            ids.into_iter().map(|(i, e)| (e, i)).collect();
        self.event_ids
            .iter()
            .zip(self.topics)
            .zip(self.payloads)
            .map(|((e, topic), payload)| {
                let id = id_of.get(e).copied().ok_or_else(|| {
                    Error::Db(sqlx::Error::Protocol(
                        "outbox row missing from RETURNING".into(),
                    ))
                })?;
                Ok(Pending {
                    id,
                    topics: vec![topic],
                    payload,
                })
            })
            .collect()
    }
}

/// Writes a send batch in one statement: each touched channel's new `last_seq` (and
/// activity time), the messages, and one outbox event per message (`events[i]` belongs to
/// `messages[i]`, topic: the message's channel); it also deletes the outbox rows `done`
/// (events of earlier batches, already published). The caller holds the channel locks.
pub async fn write_sends(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    counters: &[(Uuid, i64)],
    messages: &[MessageRow],
    events: Vec<NewEvent>,
    done: &[i64],
) -> Result<Vec<Pending>, Error> {
    let (ch_ids, ch_seqs): (Vec<Uuid>, Vec<i64>) = counters.iter().copied().unzip();
    let c = SendColumns::new(messages, events);
    let ids = sqlx::query_as(
        "WITH counters AS (
             UPDATE channels c SET last_seq = v.last_seq, last_activity_at = $1
             FROM unnest($2::uuid[], $3::int8[]) AS v(id, last_seq)
             WHERE c.id = v.id
         ), published AS (
             DELETE FROM outbox WHERE id = ANY($13::int8[])
         ), inserted AS (
             INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at)
             SELECT channel_id, seq, id, sender_id, client_msg_id, body, $1
             FROM unnest($4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::text[], $9::text[])
                  AS m(channel_id, seq, id, sender_id, client_msg_id, body)
         )
         INSERT INTO outbox (event_id, topics, payload)
         SELECT e.event_id, ARRAY[e.topic], e.payload
         FROM unnest($10::uuid[], $11::text[], $12::bytea[]) WITH ORDINALITY
              AS e(event_id, topic, payload, i)
         ORDER BY e.i
         RETURNING id, event_id",
    )
    .bind(now)
    .bind(&ch_ids)
    .bind(&ch_seqs);
    let ids: Vec<(i64, Uuid)> = c.bind(ids).bind(done).fetch_all(&mut *conn).await?;
    c.pending(ids)
}

/// A channel's counters as a send batch assumes them: `seen` the `last_seq` and `version`
/// the `members_version` before the batch, `new` the `last_seq` after it.
#[derive(Debug, Clone, Copy)]
pub struct Assumed {
    pub channel: Uuid,
    pub seen: i64,
    pub version: i64,
    pub new: i64,
}

/// The one-statement send (migration 0005, `send_batch_checked`), in its own transaction:
/// writes as [`write_sends`] does if every assumption still holds under the channel locks
/// (counters, membership versions, every sender a member, no earlier send with the same
/// `client_msg_id`); `None`, with nothing written, if one does not. `channels` sorted by id.
pub async fn write_sends_checked(
    pool: &sqlx::PgPool,
    now: DateTime<Utc>,
    channels: &[Assumed],
    messages: &[MessageRow],
    events: Vec<NewEvent>,
    done: &[i64],
) -> Result<Option<Vec<Pending>>, Error> {
    let ids: Vec<Uuid> = channels.iter().map(|c| c.channel).collect();
    let seen: Vec<i64> = channels.iter().map(|c| c.seen).collect();
    let versions: Vec<i64> = channels.iter().map(|c| c.version).collect();
    let new: Vec<i64> = channels.iter().map(|c| c.new).collect();
    let c = SendColumns::new(messages, events);
    let rows = sqlx::query_as(
        "SELECT outbox_id, event_id FROM send_batch_checked(
             $1, $2::uuid[], $3::int8[], $4::int8[], $5::int8[], $6::uuid[], $7::int8[],
             $8::uuid[], $9::text[], $10::text[], $11::text[], $12::uuid[], $13::text[],
             $14::bytea[], $15::int8[])",
    )
    .bind(now)
    .bind(&ids)
    .bind(&seen)
    .bind(&versions)
    .bind(&new);
    let rows: Vec<(i64, Uuid)> = c.bind(rows).bind(done).fetch_all(pool).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    c.pending(rows).map(Some)
}

/// Direction of a history page.
#[derive(Debug, Clone, Copy)]
pub enum Page {
    Latest,
    Before(i64),
    After(i64),
}

#[tracing::instrument(
    name = "SELECT messaging.messages",
    skip_all,
    fields(
        otel.kind = "client",
        db.system.name = "postgresql",
        db.namespace = "messaging",
        db.operation.name = "SELECT",
        db.collection.name = "messages",
        channel = %channel,
    )
)]
pub async fn list_messages(
    conn: &mut PgConnection,
    caller: &UserId,
    channel: Uuid,
    page: Page,
    limit: u32,
) -> Result<(Vec<MessageRow>, bool), Error> {
    require_member(conn, channel, caller).await?;
    let n = i64::from(limit) + 1;
    let q = match page {
        Page::Latest => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(channel)
        .bind(n),
        Page::Before(s) => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq < $3 ORDER BY seq DESC LIMIT $2"
        )))
        .bind(channel)
        .bind(n)
        .bind(s),
        Page::After(s) => sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq > $3 ORDER BY seq ASC LIMIT $2"
        )))
        .bind(channel)
        .bind(n)
        .bind(s),
    };
    let mut rows = q.fetch_all(&mut *conn).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

async fn message_for_update(tx: &mut Tx, channel: Uuid, seq: i64) -> Result<MessageRow, Error> {
    sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLS} FROM messages WHERE channel_id = $1 AND seq = $2 FOR UPDATE"
    )))
    .bind(channel)
    .bind(seq)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| Error::NotFound(format!("message {seq} not found in channel {channel}")))
}

/// Edits a message (sender only; not a deleted one).
pub async fn edit(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    seq: i64,
    body: &MessageBody,
) -> Result<(MessageRow, Pending), Error> {
    require_member(&mut tx, channel, caller).await?;
    let m = message_for_update(&mut tx, channel, seq).await?;
    if m.sender_id != caller.as_str() {
        return Err(Error::PermissionDenied(
            "only the sender edits a message".into(),
        ));
    }
    if m.deleted {
        return Err(Error::NotFound(format!("message {seq} was deleted")));
    }
    let row = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET body = $3, edited_at = now() WHERE channel_id = $1 AND seq = $2 RETURNING {MESSAGE_COLS}"
    )))
    .bind(channel)
    .bind(seq)
    .bind(body.as_str())
    .fetch_one(&mut *tx)
    .await?;
    let payload = ev::event::Payload::MessageUpdated(ev::MessageUpdated {
        message: Some(row.clone().into()),
    });
    let p = enqueue(&mut tx, channel, payload, vec![channel_topic(channel)]).await?;
    tx.commit().await?;
    Ok((row, p))
}

/// Deletes a message, leaving a tombstone (sender, or owner/admin). Idempotent.
pub async fn delete(
    mut tx: Tx,
    caller: &UserId,
    channel: Uuid,
    seq: i64,
) -> Result<(MessageRow, Option<Pending>), Error> {
    let role = require_member(&mut tx, channel, caller).await?;
    let m = message_for_update(&mut tx, channel, seq).await?;
    if m.sender_id != caller.as_str() && role == "member" {
        return Err(Error::PermissionDenied(
            "only the sender or an owner/admin deletes a message".into(),
        ));
    }
    if m.deleted {
        tx.commit().await?;
        return Ok((m, None));
    }
    let row = sqlx::query_as::<_, MessageRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE messages SET body = '', deleted = true WHERE channel_id = $1 AND seq = $2 RETURNING {MESSAGE_COLS}"
    )))
    .bind(channel)
    .bind(seq)
    .fetch_one(&mut *tx)
    .await?;
    let payload = ev::event::Payload::MessageDeleted(ev::MessageDeleted {
        message: Some(row.clone().into()),
        deleted_by: caller.to_string(),
    });
    let p = enqueue(&mut tx, channel, payload, vec![channel_topic(channel)]).await?;
    tx.commit().await?;
    Ok((row, Some(p)))
}
