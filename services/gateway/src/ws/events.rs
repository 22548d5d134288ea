//! Live events routed to a connection (messages, edits, membership, receipts) and the
//! answers to its sends.

use parley_proto::{events::v1 as ev, messaging::v1 as pb};
use serde_json::Value;

use super::{Conn, End};
use crate::{
    ApiError,
    hub::{Delivery, Payload as HubPayload},
    ordering::Change,
    protocol::ServerFrame,
    view,
};

impl Conn {
    pub(super) async fn on_sent(
        &mut self,
        r: Option<Value>,
        result: Result<pb::SendMessageResponse, ApiError>,
    ) -> Result<(), End> {
        match result {
            Ok(resp) => {
                let message = resp.message.as_ref().map(view::Message::from);
                self.frame(ServerFrame::Sent { r, message }).await
            }
            Err(e) => self.error(r, &e).await,
        }
    }

    pub(super) fn seen_event(&mut self, id: &str) -> bool {
        if self.recent_events.iter().any(|e| e == id) {
            return true;
        }
        if self.recent_events.len() >= 128 {
            self.recent_events.pop_front();
        }
        self.recent_events.push_back(id.to_owned());
        false
    }

    pub(super) async fn on_event(&mut self, d: Delivery) -> Result<(), End> {
        let event = match &d.payload {
            HubPayload::Messaging(e) => e.clone(),
            HubPayload::Presence(e) => return self.on_presence(e).await,
            HubPayload::Receipt(r) => {
                if !self.engine.follows(&r.channel_id) {
                    return Ok(());
                }
                return self
                    .frame(ServerFrame::Receipt {
                        channel_id: r.channel_id.clone(),
                        user_id: r.user_id.clone(),
                        delivered_seq: r.delivered_seq,
                        read_seq: r.read_seq,
                    })
                    .await;
            }
        };
        use ev::event::Payload;
        match &event.payload {
            Some(Payload::MessageCreated(ev::MessageCreated {
                message: Some(m), ..
            })) => {
                let m = m.clone();
                self.order(|e, now, out| e.offer(m, true, now, out)).await
            }
            Some(Payload::MessageUpdated(ev::MessageUpdated { message: Some(m) })) => {
                let m = m.clone();
                self.order(|e, now, out| e.changed(Change::Updated, m, now, out))
                    .await
            }
            Some(Payload::MessageDeleted(ev::MessageDeleted {
                message: Some(m), ..
            })) => {
                let m = m.clone();
                self.order(|e, now, out| e.changed(Change::Deleted, m, now, out))
                    .await
            }
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
                self.frame(ServerFrame::MemberJoined {
                    channel_id: member.channel_id.clone(),
                    user_id: member.user_id.clone(),
                    role: view::Role::of(member.role),
                    added_by: j.added_by.clone(),
                })
                .await?;
                if me {
                    // A message committed after the join but before the subscription was
                    // active reached nobody here: probe history once.
                    let channel = member.channel_id.clone();
                    self.order(|e, now, out| e.probe(&channel, now, out))
                        .await?;
                }
                Ok(())
            }
            Some(Payload::MemberRoleChanged(c)) => {
                let Some(member) = &c.member else {
                    return Ok(());
                };
                let me = member.user_id == self.user.as_str();
                // About this user it comes on the user topic too: one copy.
                if me != d.via_user_topic
                    || self.seen_event(&event.event_id)
                    || !self.engine.follows(&member.channel_id)
                {
                    return Ok(());
                }
                self.frame(ServerFrame::MemberUpdated {
                    channel_id: member.channel_id.clone(),
                    user_id: member.user_id.clone(),
                    role: view::Role::of(member.role),
                    updated_by: c.changed_by.clone(),
                })
                .await
            }
            Some(Payload::ChannelUpdated(u)) => {
                let Some(c) = &u.channel else {
                    return Ok(());
                };
                if !self.engine.follows(&c.id) {
                    return Ok(());
                }
                self.frame(ServerFrame::ChannelUpdated {
                    channel: view::Channel::from(c),
                    updated_by: u.updated_by.clone(),
                })
                .await
            }
            Some(Payload::ChannelDeleted(c)) => {
                // It comes on the user topic of every member: one copy.
                if !d.via_user_topic || self.seen_event(&event.event_id) {
                    return Ok(());
                }
                self.frame(ServerFrame::ChannelDeleted {
                    channel_id: c.channel_id.clone(),
                    deleted_by: c.deleted_by.clone(),
                })
                .await?;
                self.leave_channel(&c.channel_id).await;
                self.recheck_watched().await
            }
            Some(Payload::MemberLeft(l)) => {
                let me = l.user_id == self.user.as_str();
                if me != d.via_user_topic || self.seen_event(&event.event_id) {
                    return Ok(());
                }
                self.frame(ServerFrame::MemberLeft {
                    channel_id: l.channel_id.clone(),
                    user_id: l.user_id.clone(),
                    removed_by: l.removed_by.clone(),
                })
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
}
