//! Presence on a connection: `watch_presence` (only users who share a channel with this
//! one: presence privacy), presence changes and typing events.

use parley_kit::domain::UserId;
use serde_json::Value;

use super::{Conn, End};
use crate::{ApiError, api::social, protocol::ServerFrame, ratelimit::Kind};

impl Conn {
    /// `watch_presence`: subscribe first, then read the current state, so no change is
    /// missed; later events older than what was sent (by `version`) are dropped.
    pub(super) async fn watch_presence(
        &mut self,
        r: Option<Value>,
        user_ids: Vec<UserId>,
    ) -> Result<(), End> {
        let Some(presence) = self.app.presence.clone() else {
            return self.error(r, &ApiError::not_configured("presence")).await;
        };
        if let Err(e) = self
            .app
            .limiter
            .check(Kind::PresenceQueries, self.user.as_str())
            .await
        {
            return self.error(r, &e).await;
        }
        let mut ids: Vec<String> = user_ids.into_iter().map(|u| u.to_string()).collect();
        ids.sort();
        ids.dedup();
        let max = self.app.config.ws.max_watch;
        let new: Vec<String> = ids
            .into_iter()
            .filter(|u| !self.watched.contains_key(u))
            .collect();
        if self.watched.len() + new.len() > max {
            let e = ApiError::invalid(format!("a connection watches at most {max} users"));
            return self.error(r, &e).await;
        }
        if new.is_empty() {
            return Ok(());
        }
        // Presence privacy: users who share no channel with this one read as never seen, once,
        // and are not watched (watch again once you share a channel).
        let (new, hidden) = match social::visible(&self.app, &self.user, new).await {
            Ok(split) => split,
            Err(e) => return self.error(r, &e).await,
        };
        for u in hidden {
            self.presence_frame(&social::hidden(u)).await?;
        }
        if new.is_empty() {
            return Ok(());
        }
        for u in &new {
            self.watched.insert(u.clone(), 0);
            let topic = self.app.hub.watch_topic(u);
            self.subscribe(topic).await;
        }
        match presence.get(new).await {
            Ok(list) => {
                for p in list {
                    self.presence_changed(&p).await?;
                }
                Ok(())
            }
            Err(e) => self.error(r, &e).await,
        }
    }

    /// Presence privacy after leaving a channel: watched users who no longer share a
    /// channel with this user are no longer watched, and read as never seen from now on.
    /// If messaging cannot answer, the watches are dropped (closed rather than open).
    pub(super) async fn recheck_watched(&mut self) -> Result<(), End> {
        if self.watched.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = self.watched.keys().cloned().collect();
        let hidden = match social::visible(&self.app, &self.user, ids.clone()).await {
            Ok((_, hidden)) => hidden,
            Err(e) => {
                tracing::warn!(user = %self.user, error = %e.message, "presence re-check failed; dropping the connection's watches");
                ids
            }
        };
        for u in hidden {
            self.watched.remove(&u);
            let topic = self.app.hub.watch_topic(&u);
            if self.topics.remove(&topic) {
                self.app.hub.unsubscribe(self.id, &topic).await;
            }
            self.presence_frame(&social::hidden(u)).await?;
        }
        Ok(())
    }

    /// Sends a `presence` frame when `p` is newer than what this connection last sent.
    pub(super) async fn presence_changed(
        &mut self,
        p: &parley_proto::presence::v1::UserPresence,
    ) -> Result<(), End> {
        match self.watched.get_mut(&p.user_id) {
            Some(v) if p.version > *v || (*v == 0 && p.version == 0) => {
                *v = p.version.max(1);
                self.presence_frame(p).await
            }
            _ => Ok(()),
        }
    }

    pub(super) async fn on_presence(
        &mut self,
        e: &parley_proto::presence::v1::PresenceEvent,
    ) -> Result<(), End> {
        use parley_proto::presence::v1::presence_event::Payload as P;
        match &e.payload {
            Some(P::PresenceChanged(c)) => match &c.presence {
                Some(p) => self.presence_changed(p).await,
                None => Ok(()),
            },
            // Never echoed to the typist; only for channels this user is in.
            Some(P::UserTyping(t))
                if t.user_id != self.user.as_str() && self.engine.follows(&t.channel_id) =>
            {
                self.frame(ServerFrame::Typing {
                    channel_id: t.channel_id.clone(),
                    user_id: t.user_id.clone(),
                })
                .await
            }
            _ => Ok(()),
        }
    }

    /// A `presence` frame of `p`.
    async fn presence_frame(
        &mut self,
        p: &parley_proto::presence::v1::UserPresence,
    ) -> Result<(), End> {
        self.frame(ServerFrame::Presence {
            user_id: p.user_id.clone(),
            status: crate::view::status(p),
            last_seen_at: crate::view::time_str(p.last_seen_at.as_ref()),
        })
        .await
    }
}
