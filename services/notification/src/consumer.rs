//! Consumes messaging's event stream `<prefix>messaging:events` with a consumer group
//! and turns every MessageCreated into delivery rows: one per device of each offline
//! recipient whose preference admits the message.
//!
//! Consumption (as in receipts): `XGROUP CREATE … 0 MKSTREAM`, this replica's own pending
//! entries first (`XREADGROUP … 0`), then new ones (`>`); every `claim_interval` it takes
//! over entries another consumer left pending for longer than `claim_idle` (XAUTOCLAIM).
//! A batch's delivery rows are inserted in ONE transaction (ON CONFLICT DO NOTHING on
//! (message, device)), and only then are its entries acknowledged. A crash before the
//! commit leaves the entries pending (reclaimed later: no loss); a crash after it but
//! before XACK redelivers them, and the existing rows make the replay a no-op (no
//! duplicate push).

use std::{collections::HashSet, sync::Arc};

use parley_proto::events::v1 as ev;
use prost::Message as _;
use redis::streams::StreamId;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    Config, Error,
    store::{self, NewDelivery},
    upstream::{Messaging, Presence},
};

/// Name of messaging's event stream (without the deployment prefix).
pub const STREAM: &str = "messaging:events";

/// True when `body` mentions `user` as `@<user>` (not as the start of a longer id).
pub fn mentions(body: &str, user: &str) -> bool {
    let is_id = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-');
    let needle = format!("@{user}");
    body.match_indices(&needle).any(|(i, _)| {
        let mut rest = body[i + needle.len()..].chars();
        match rest.next() {
            None => true,
            // A trailing full stop ends a sentence, not the id.
            Some('.') => !rest.next().is_some_and(is_id),
            Some(c) => !is_id(c),
        }
    })
}

/// Whether a member with `level` (1 all, 2 mentions, 3 none) gets a push for `body`.
pub fn admits(level: i16, body: &str, user: &str) -> bool {
    match level {
        3 => false,
        2 => mentions(body, user),
        _ => true,
    }
}

/// The first `chars` characters of `body`.
pub fn preview(body: &str, chars: usize) -> String {
    match body.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_owned(),
    }
}

pub struct Consumer {
    pool: PgPool,
    client: redis::Client,
    messaging: Messaging,
    presence: Presence,
    config: Arc<Config>,
    stream: String,
    name: String,
}

impl Consumer {
    pub fn new(
        pool: PgPool,
        client: redis::Client,
        messaging: Messaging,
        presence: Presence,
        config: Arc<Config>,
    ) -> Self {
        let name = if config.consumer.name.is_empty() {
            parley_kit::stream::default_name()
        } else {
            config.consumer.name.clone()
        };
        Self {
            pool,
            client,
            messaging,
            presence,
            stream: format!("{}{STREAM}", config.redis.prefix),
            name,
            config,
        }
    }

    /// Consumes until `shutdown` (see `parley_kit::stream`).
    pub async fn run(self, shutdown: CancellationToken) {
        let c = &self.config.consumer;
        let settings = parley_kit::stream::Settings {
            stream: self.stream.clone(),
            group: c.group.clone(),
            name: self.name.clone(),
            batch: c.batch,
            block_ms: c.block_ms,
            claim_idle_ms: c.claim_idle_ms,
            claim_interval_ms: c.claim_interval_ms,
            retry_backoff_ms: c.retry_backoff_ms,
            lag_interval_ms: c.lag_interval_ms,
            metric_prefix: "notification",
            apply_step: "fanout",
        };
        let client = self.client.clone();
        parley_kit::stream::consume(client, settings, self, shutdown).await;
    }

    /// Decides the deliveries of every entry and inserts them in one transaction.
    async fn record(&self, entries: &[StreamId]) -> Result<(), Error> {
        let mut rows = Vec::new();
        for entry in entries {
            let event = entry
                .get::<Vec<u8>>("event")
                .and_then(|b| ev::Event::decode(b.as_slice()).ok());
            let Some(event) = event else {
                metrics::counter!("notification_events_total", "kind" => "invalid").increment(1);
                tracing::warn!(entry = %entry.id, "skipping an undecodable stream entry");
                continue;
            };
            let Some(ev::event::Payload::MessageCreated(ev::MessageCreated {
                message: Some(message),
                ..
            })) = &event.payload
            else {
                metrics::counter!("notification_events_total", "kind" => "ignored").increment(1);
                continue;
            };
            // Continue the trace of the request that sent the message.
            let span = tracing::info_span!(
                "notification.fanout",
                otel.kind = "consumer",
                messaging.system = "redis",
                messaging.operation.type = "process",
                messaging.destination.name = "messaging:events",
                messaging.consumer.group.name = "notification",
                messaging.message.id = %event.event_id,
                event_id = %event.event_id,
                channel = %event.channel_id,
                seq = message.seq,
                recipients = tracing::field::Empty,
                devices = tracing::field::Empty,
            );
            parley_kit::propagation::set_parent_from_map(&span, &event.trace_context);
            match self.fanout(message).instrument(span.clone()).await {
                Ok(mut r) => {
                    metrics::counter!("notification_events_total", "kind" => "message_created")
                        .increment(1);
                    span.record("devices", r.len());
                    rows.append(&mut r);
                }
                Err(Error::NotFound(m) | Error::PermissionDenied(m) | Error::BadArgument(m)) => {
                    // The channel is gone or the sender left before we got here: nobody
                    // to ask as, nothing to push.
                    metrics::counter!("notification_events_total", "kind" => "skipped")
                        .increment(1);
                    tracing::info!(parent: &span, reason = %m, "skipping a message");
                }
                Err(e) => return Err(e),
            }
        }
        if !rows.is_empty() {
            let n = store::insert_deliveries(
                &self.pool,
                &rows,
                self.config.delivery.coalesce_window_ms,
            )
            .await?;
            metrics::counter!("notification_deliveries_recorded_total").increment(n);
        }
        Ok(())
    }

    /// The delivery rows of one message.
    async fn fanout(
        &self,
        m: &parley_proto::messaging::v1::Message,
    ) -> Result<Vec<NewDelivery>, Error> {
        let channel = Uuid::parse_str(&m.channel_id)
            .map_err(|_| Error::BadArgument("event with a bad channel id".into()))?;
        let message_id = Uuid::parse_str(&m.id)
            .map_err(|_| Error::BadArgument("event with a bad message id".into()))?;
        if m.sender_id.is_empty() || m.deleted {
            return Ok(Vec::new());
        }
        // Asked as the sender, who was a member when the message was committed.
        let members = self.messaging.members(channel, &m.sender_id).await?;
        let recipients: Vec<String> = members
            .into_iter()
            .filter(|u| *u != m.sender_id)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if recipients.is_empty() {
            return Ok(Vec::new());
        }
        let levels = store::preferences(&self.pool, channel, &recipients).await?;
        let wanted: Vec<String> = recipients
            .into_iter()
            .filter(|u| admits(levels.get(u).copied().unwrap_or(1), &m.body, u))
            .collect();
        tracing::Span::current().record("recipients", wanted.len());
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let offline = self.presence.offline(&wanted).await?;
        if offline.is_empty() {
            return Ok(Vec::new());
        }
        let offline: Vec<String> = offline.into_iter().collect();
        let devices = store::devices_of(&self.pool, &offline).await?;
        if devices.is_empty() {
            return Ok(Vec::new());
        }
        let channel_name = self.messaging.channel(channel, &m.sender_id).await?.name;
        let trace = serde_json::to_value(parley_kit::propagation::inject_map())
            .unwrap_or(serde_json::Value::Null);
        let preview = preview(&m.body, self.config.delivery.preview_chars);
        Ok(devices
            .into_iter()
            .map(|d| NewDelivery {
                message_id,
                device_id: d.id,
                user_id: d.user_id,
                channel_id: channel,
                channel_name: channel_name.clone(),
                seq: i64::try_from(m.seq).unwrap_or(i64::MAX),
                sender_id: m.sender_id.clone(),
                preview: preview.clone(),
                trace_context: trace.clone(),
            })
            .collect())
    }
}

impl parley_kit::stream::Handler for Consumer {
    type Batch = ();
    type Error = Error;

    fn prepare(&self, _entries: &[StreamId]) {}

    /// Decides the deliveries of the batch and records them (idempotent: keyed rows).
    fn apply<'a>(
        &'a self,
        entries: &'a [StreamId],
        _batch: &'a (),
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'a {
        self.record(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_need_a_word_boundary() {
        assert!(mentions("hi @bob", "bob"));
        assert!(mentions("@bob, look", "bob"));
        assert!(mentions("ping @bob.", "bob"));
        assert!(!mentions("hi @bobby", "bob"));
        assert!(!mentions("hi bob", "bob"));
        assert!(mentions("@bobby and @bob", "bob"));
    }

    #[test]
    fn levels_filter() {
        assert!(admits(1, "anything", "bob"));
        assert!(!admits(3, "@bob", "bob"));
        assert!(admits(2, "@bob hi", "bob"));
        assert!(!admits(2, "hi", "bob"));
    }

    #[test]
    fn previews_cut_on_characters() {
        assert_eq!(preview("héllo", 2), "hé…");
        assert_eq!(preview("hi", 5), "hi");
    }
}
