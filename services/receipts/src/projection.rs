//! The projection of messaging's channels that receipts keeps: each channel's last_seq, its
//! members (with the channel's last_seq when they joined) and the senders' own watermarks,
//! maintained by consuming the event stream `<prefix>messaging:events` with a consumer
//! group.
//!
//! Consumption: `XGROUP CREATE … 0 MKSTREAM` (a new group replays what the stream still
//! holds), then this replica's own pending entries (`XREADGROUP … 0`, left by a previous
//! run under the same name), then new entries (`XREADGROUP … >`). Every `claim_interval`
//! it takes over entries another consumer left pending for longer than `claim_idle`
//! (`XAUTOCLAIM`; that consumer died). A batch is folded into a [`Delta`], applied in one
//! transaction, and acknowledged (`XACK`) only after the commit: at-least-once.
//!
//! Idempotency: channels' last_seq and senders' watermarks only grow (GREATEST);
//! memberships are last-writer-wins by (event occurred_at, event_id). Applying any event
//! twice, or a batch of old events after newer ones, changes nothing.

use std::collections::BTreeMap;

use chrono::DateTime;
use parley_proto::events::v1 as ev;
use prost::Message as _;
use redis::streams::StreamId;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    ConsumerConfig,
    changes::{Change, Changes},
    store,
};

/// Name of messaging's event stream (without the deployment prefix).
pub use parley_kit::stream::EVENTS as STREAM;

pub use crate::model::{Delta, Membership, Sent};

/// Why an event was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Undecodable, or a required field is missing / malformed.
    Invalid,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.memberships.is_empty() && self.senders.is_empty()
    }

    fn channel(&mut self, id: Uuid, seq: i64) {
        let e = self.channels.entry(id).or_insert(seq);
        *e = (*e).max(seq);
    }

    /// Folds one event in; returns its kind (a metric label).
    pub fn add(&mut self, event: &ev::Event) -> Result<&'static str, Skip> {
        let ev::Event {
            event_id,
            occurred_at,
            channel_id,
            trace_context,
            payload,
        } = event;
        // Blocks are between users, not in a channel, and not receipts' concern.
        if let Some(ev::event::Payload::BlockChanged(_)) = payload {
            return Ok("block_changed");
        }
        let channel = Uuid::parse_str(channel_id).map_err(|_| Skip::Invalid)?;
        let seq_of =
            |m: &Option<parley_proto::messaging::v1::Message>| -> Result<(i64, String), Skip> {
                let m = m.as_ref().ok_or(Skip::Invalid)?;
                let seq = i64::try_from(m.seq)
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or(Skip::Invalid)?;
                Ok((seq, m.sender_id.clone()))
            };
        // Events without a usable order key sort before every real event: they can create
        // a membership but never override one.
        let at = occurred_at
            .as_ref()
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0)))
            .unwrap_or(DateTime::UNIX_EPOCH);
        let event_id = Uuid::parse_str(event_id).unwrap_or(Uuid::nil());
        match payload.as_ref().ok_or(Skip::Invalid)? {
            ev::event::Payload::MessageCreated(ev::MessageCreated { message, .. }) => {
                let (seq, sender) = seq_of(message)?;
                self.channel(channel, seq);
                if !sender.is_empty() {
                    let e = self
                        .senders
                        .entry((channel, sender))
                        .or_insert_with(|| Sent {
                            seq,
                            trace: trace_context.clone(),
                        });
                    if seq > e.seq {
                        *e = Sent {
                            seq,
                            trace: trace_context.clone(),
                        };
                    }
                }
                Ok("message_created")
            }
            ev::event::Payload::MessageUpdated(ev::MessageUpdated { message }) => {
                self.channel(channel, seq_of(message)?.0);
                Ok("message_updated")
            }
            // Deleted messages still count (as unread and in last_seq): a tombstone keeps
            // its seq, and counting around it would need per-message storage.
            ev::event::Payload::MessageDeleted(ev::MessageDeleted {
                message,
                deleted_by: _,
            }) => {
                self.channel(channel, seq_of(message)?.0);
                Ok("message_deleted")
            }
            // Names, topics, descriptions and roles are not receipts' concern.
            ev::event::Payload::ChannelUpdated(_) => Ok("channel_updated"),
            ev::event::Payload::MemberRoleChanged(_) => Ok("member_role_changed"),
            ev::event::Payload::BlockChanged(_) => Ok("block_changed"),
            // Every membership of a deleted channel ends with it.
            ev::event::Payload::ChannelDeleted(ev::ChannelDeleted { members, .. }) => {
                self.channel(channel, 0);
                for user in members.iter().filter(|u| !u.is_empty()) {
                    self.left(channel, user.clone(), at, event_id);
                }
                Ok("channel_deleted")
            }
            ev::event::Payload::MemberJoined(ev::MemberJoined {
                member,
                added_by: _,
                channel_last_seq,
            }) => {
                let user = member
                    .as_ref()
                    .map(|m| m.user_id.clone())
                    .filter(|u| !u.is_empty())
                    .ok_or(Skip::Invalid)?;
                let joined_seq = i64::try_from(*channel_last_seq).map_err(|_| Skip::Invalid)?;
                self.channel(channel, joined_seq);
                self.membership(
                    channel,
                    user,
                    Membership {
                        active: true,
                        joined_seq,
                        at,
                        event_id,
                    },
                );
                Ok("member_joined")
            }
            ev::event::Payload::MemberLeft(ev::MemberLeft {
                channel_id: _,
                user_id,
                removed_by: _,
            }) => {
                if user_id.is_empty() {
                    return Err(Skip::Invalid);
                }
                self.channel(channel, 0);
                self.left(channel, user_id.clone(), at, event_id);
                Ok("member_left")
            }
        }
    }

    /// `user`'s membership of `channel` ended (a tombstone at `at`).
    fn left(&mut self, channel: Uuid, user: String, at: DateTime<chrono::Utc>, event_id: Uuid) {
        let m = Membership {
            active: false,
            joined_seq: 0,
            at,
            event_id,
        };
        self.membership(channel, user, m);
    }

    fn membership(&mut self, channel: Uuid, user: String, m: Membership) {
        match self.memberships.entry((channel, user)) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(m);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                if (m.at, m.event_id) > (o.get().at, o.get().event_id) {
                    o.insert(m);
                }
            }
        }
    }
}

/// This replica's consumer of the event stream.
pub struct Consumer {
    pool: PgPool,
    client: redis::Client,
    changes: Changes,
    cfg: ConsumerConfig,
    stream: String,
    name: String,
}

impl Consumer {
    pub fn new(
        pool: PgPool,
        client: redis::Client,
        changes: Changes,
        cfg: ConsumerConfig,
        prefix: &str,
    ) -> Self {
        let name = if cfg.name.is_empty() {
            parley_kit::stream::default_name()
        } else {
            cfg.name.clone()
        };
        Self {
            pool,
            client,
            changes,
            stream: format!("{prefix}{STREAM}"),
            name,
            cfg,
        }
    }

    /// Consumes until `shutdown` (see `parley_kit::stream`).
    pub async fn run(self, shutdown: CancellationToken) {
        let c = &self.cfg;
        let settings = c.settings(self.stream.clone(), self.name.clone(), "receipts", "apply");
        let client = self.client.clone();
        parley_kit::stream::consume(client, settings, self, shutdown).await;
    }
}

impl parley_kit::stream::Handler for Consumer {
    /// Folded once per batch, however many times applying it is retried.
    type Batch = (Delta, BTreeMap<&'static str, u64>);
    type Error = crate::Error;

    fn prepare(&self, entries: &[StreamId]) -> Self::Batch {
        fold(entries)
    }

    /// Applies the delta in one transaction, then offers the watermark changes it made.
    async fn apply(
        &self,
        _entries: &[StreamId],
        (delta, kinds): &Self::Batch,
    ) -> Result<(), crate::Error> {
        let changed = store::apply(&self.pool, delta).await?;
        for (kind, n) in kinds {
            metrics::counter!("receipts_events_applied_total", "kind" => *kind).increment(*n);
        }
        for row in changed {
            let trace = delta
                .senders
                .get(&(row.channel_id, row.user_id.clone()))
                .map(|s| s.trace.clone())
                .unwrap_or_default();
            self.changes.offer(Change::from_row(&row, trace));
        }
        Ok(())
    }
}

/// Decodes entries (field `event`) into a delta; undecodable ones are counted and dropped
/// (they are acknowledged with the batch: retrying cannot make them valid).
fn fold(entries: &[StreamId]) -> (Delta, BTreeMap<&'static str, u64>) {
    let mut delta = Delta::default();
    let mut kinds = BTreeMap::new();
    for entry in entries {
        let event = entry
            .get::<Vec<u8>>("event")
            .and_then(|b| ev::Event::decode(b.as_slice()).ok());
        let Some(event) = event else {
            metrics::counter!("receipts_events_invalid_total").increment(1);
            tracing::warn!(entry = %entry.id, "skipping an undecodable stream entry");
            continue;
        };
        // Continue the trace of the request that caused the event.
        let span = tracing::info_span!(
            "receipts.consume",
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.operation.type = "process",
            messaging.destination.name = STREAM,
            messaging.consumer.group.name = "receipts",
            messaging.message.id = %event.event_id,
            event_id = %event.event_id,
            channel = %event.channel_id,
            kind = tracing::field::Empty
        );
        parley_kit::propagation::set_parent_from_map(&span, &event.trace_context);
        let _entered = span.enter();
        match delta.add(&event) {
            Ok(kind) => {
                span.record("kind", kind);
                *kinds.entry(kind).or_insert(0) += 1;
            }
            Err(Skip::Invalid) => {
                metrics::counter!("receipts_events_invalid_total").increment(1);
                tracing::warn!(entry = %entry.id, "skipping an invalid event");
            }
        }
    }
    (delta, kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_proto::messaging::v1 as pb;
    use std::collections::HashMap;

    fn event(channel: Uuid, at_secs: i64, payload: ev::event::Payload) -> ev::Event {
        ev::Event {
            event_id: Uuid::now_v7().to_string(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: at_secs,
                nanos: 0,
            }),
            channel_id: channel.to_string(),
            trace_context: HashMap::new(),
            payload: Some(payload),
        }
    }

    fn created(channel: Uuid, seq: u64, sender: &str) -> ev::event::Payload {
        ev::event::Payload::MessageCreated(ev::MessageCreated {
            message: Some(pb::Message {
                channel_id: channel.to_string(),
                seq,
                sender_id: sender.into(),
                ..Default::default()
            }),
            members_version: 0,
        })
    }

    fn joined(channel: Uuid, user: &str, last: u64) -> ev::event::Payload {
        ev::event::Payload::MemberJoined(ev::MemberJoined {
            member: Some(pb::Member {
                channel_id: channel.to_string(),
                user_id: user.into(),
                ..Default::default()
            }),
            added_by: user.into(),
            channel_last_seq: last,
        })
    }

    fn left(channel: Uuid, user: &str) -> ev::event::Payload {
        ev::event::Payload::MemberLeft(ev::MemberLeft {
            channel_id: channel.to_string(),
            user_id: user.into(),
            removed_by: user.into(),
        })
    }

    #[test]
    fn folds_to_maxima_and_newest_membership() {
        let c = Uuid::now_v7();
        let mut d = Delta::default();
        // Out of order on purpose: the fold must not care.
        d.add(&event(c, 30, created(c, 3, "bob"))).expect("valid");
        d.add(&event(c, 10, created(c, 1, "bob"))).expect("valid");
        d.add(&event(c, 20, created(c, 2, "alice"))).expect("valid");
        d.add(&event(c, 50, joined(c, "carol", 3))).expect("valid");
        d.add(&event(c, 40, left(c, "carol"))).expect("valid");
        d.add(&event(c, 5, joined(c, "dave", 0))).expect("valid");
        d.add(&event(c, 60, left(c, "dave"))).expect("valid");
        assert_eq!(d.channels.get(&c), Some(&3));
        assert_eq!(d.senders.get(&(c, "bob".into())).map(|s| s.seq), Some(3));
        assert_eq!(d.senders.get(&(c, "alice".into())).map(|s| s.seq), Some(2));
        let carol = &d.memberships[&(c, "carol".into())];
        assert!(
            carol.active,
            "the join at t=50 is newer than the leave at t=40"
        );
        assert_eq!(carol.joined_seq, 3);
        assert!(!d.memberships[&(c, "dave".into())].active);
    }

    #[test]
    fn rejects_malformed_events() {
        let c = Uuid::now_v7();
        let mut d = Delta::default();
        let mut bad = event(c, 1, created(c, 1, "bob"));
        bad.channel_id = "nope".into();
        assert_eq!(d.add(&bad), Err(Skip::Invalid));
        assert_eq!(
            d.add(&event(c, 1, created(c, 0, "bob"))),
            Err(Skip::Invalid)
        );
        let mut empty = event(c, 1, created(c, 1, "bob"));
        empty.payload = None;
        assert_eq!(d.add(&empty), Err(Skip::Invalid));
        assert!(d.is_empty());
    }
}
