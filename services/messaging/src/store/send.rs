//! The SQL of a send batch: membership and idempotency checks, and the two ways to write
//! a batch (inside the caller's transaction, or as the one-statement `send_batch_checked`).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{MessageRow, NewEvent, Pending, channel_topic};
use crate::Error;

/// What makes a send unique: a sender's `client_msg_id` in a channel (a second send with
/// the same key is a retry of the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SendKey<'a> {
    pub channel: Uuid,
    pub sender: &'a str,
    pub client_msg_id: &'a str,
}

/// What [`check_sends`] found for one request of a send batch.
pub struct SendCheck {
    /// The sender is a member of the channel.
    pub member: bool,
    /// The sender is muted in the channel (a mute in force).
    pub muted: bool,
    /// The channel is direct and its other member blocked the sender.
    pub blocked: bool,
    /// The message the sender already sent with this client_msg_id (idempotent retry).
    pub existing: Option<MessageRow>,
}

/// One row of [`check_sends`]'s statement: request `i` (from 1), its sender's membership,
/// and the columns of the message it sent before, if any (all `None` when none).
#[derive(sqlx::FromRow)]
struct Found {
    i: i64,
    member: bool,
    muted: bool,
    blocked: bool,
    id: Option<Uuid>,
    seq: Option<i64>,
    body: Option<String>,
    created_at: Option<DateTime<Utc>>,
    edited_at: Option<DateTime<Utc>>,
    deleted: Option<bool>,
    system: Option<String>,
    attachments: Option<String>,
}

/// Membership and earlier sends of each request, in input order, in one statement.
pub async fn check_sends<'a>(
    conn: &mut PgConnection,
    requests: impl Iterator<Item = SendKey<'a>>,
) -> Result<Vec<SendCheck>, Error> {
    let (mut channels, mut senders, mut cids) = (Vec::new(), Vec::new(), Vec::new());
    for k in requests {
        channels.push(k.channel);
        senders.push(k.sender);
        cids.push(k.client_msg_id);
    }
    let rows: Vec<Found> = sqlx::query_as(
        "SELECT r.i, m.user_id IS NOT NULL AS member,
                EXISTS (SELECT 1 FROM mutes u
                        WHERE u.channel_id = r.channel_id AND u.user_id = r.sender_id
                          AND (u.expires_at IS NULL OR u.expires_at > now())) AS muted,
                EXISTS (SELECT 1 FROM blocks b
                        JOIN members o ON o.channel_id = r.channel_id AND o.user_id = b.blocker
                        JOIN channels d ON d.id = r.channel_id AND d.kind = 'direct'
                        WHERE b.blocked = r.sender_id) AS blocked,
                e.id, e.seq, e.body, e.created_at, e.edited_at, e.deleted, e.system,
                e.attachments
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
        .map(|f| {
            let k = usize::try_from(f.i - 1).unwrap_or_default();
            let existing = match (f.id, f.seq, f.body, f.created_at, f.deleted) {
                (Some(id), Some(seq), Some(body), Some(created_at), Some(deleted)) => {
                    Some(MessageRow {
                        id,
                        channel_id: channels[k],
                        seq,
                        sender_id: senders[k].to_owned(),
                        client_msg_id: cids[k].to_owned(),
                        body,
                        created_at,
                        edited_at: f.edited_at,
                        deleted,
                        system: f.system,
                        attachments: f.attachments,
                    })
                }
                _ => None,
            };
            SendCheck {
                member: f.member,
                muted: f.muted,
                blocked: f.blocked,
                existing,
            }
        })
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
    /// Each message's attachments (JSON), and the uploads to link: (attachment, message).
    attachments: Vec<Option<&'a str>>,
    link_ids: Vec<Uuid>,
    link_messages: Vec<Uuid>,
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
            attachments: Vec::with_capacity(messages.len()),
            link_ids: Vec::new(),
            link_messages: Vec::new(),
        };
        for m in messages {
            c.channel.push(m.channel_id);
            c.seq.push(m.seq);
            c.id.push(m.id);
            c.sender.push(m.sender_id.as_str());
            c.cid.push(m.client_msg_id.as_str());
            c.body.push(m.body.as_str());
            c.topics.push(channel_topic(m.channel_id));
            c.attachments.push(m.attachments.as_deref());
            for a in m
                .attachments
                .as_deref()
                .map(attached_ids)
                .unwrap_or_default()
            {
                c.link_ids.push(a);
                c.link_messages.push(m.id);
            }
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

/// The attachment ids in a message's `attachments` JSON.
fn attached_ids(json: &str) -> Vec<Uuid> {
    serde_json::from_str::<Vec<super::attachments::Meta>>(json)
        .map(|v| v.into_iter().map(|m| m.id).collect())
        .unwrap_or_default()
}

/// Writes a send batch in one statement: each touched channel's new `last_seq` (and
/// activity time), the messages, and one outbox event per message (`events[i]` belongs to
/// `messages[i]`, topic: the message's channel); it also deletes the outbox rows `done`
/// (events of earlier batches, already published), and links the messages' attachments to
/// them. The caller holds the channel locks and the attachments' row locks.
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
             INSERT INTO messages (channel_id, seq, id, sender_id, client_msg_id, body, created_at,
                                   attachments)
             SELECT channel_id, seq, id, sender_id, client_msg_id, body, $1, attachments
             FROM unnest($4::uuid[], $5::int8[], $6::uuid[], $7::text[], $8::text[], $9::text[],
                         $14::text[])
                  AS m(channel_id, seq, id, sender_id, client_msg_id, body, attachments)
         ), linked AS (
             UPDATE attachments a SET message_id = l.message_id
             FROM unnest($15::uuid[], $16::uuid[]) AS l(id, message_id)
             WHERE a.id = l.id
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
    let ids: Vec<(i64, Uuid)> = c
        .bind(ids)
        .bind(done)
        .bind(&c.attachments)
        .bind(&c.link_ids)
        .bind(&c.link_messages)
        .fetch_all(&mut *conn)
        .await?;
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
