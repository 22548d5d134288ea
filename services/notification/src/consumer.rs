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

use std::{collections::HashSet, sync::Arc, time::Duration};

use parley_proto::events::v1 as ev;
use prost::Message as _;
use redis::{
    aio::ConnectionManager,
    streams::{StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamReadReply},
};
use sqlx::PgPool;
use tokio::time::Instant;
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
            default_name()
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

    /// Consumes until `shutdown`; outages are retried with a pause (entries stay pending).
    pub async fn run(self, shutdown: CancellationToken) {
        let cfg = &self.config.consumer;
        tracing::info!(stream = %self.stream, group = %cfg.group, consumer = %self.name, "consuming events");
        let backoff = Duration::from_millis(cfg.retry_backoff_ms.max(10));
        // A dedicated connection: XREADGROUP BLOCK holds it for up to block_ms.
        let mut conn = loop {
            let c = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(
                    Duration::from_millis(cfg.block_ms) + Duration::from_secs(5),
                ))
                .set_number_of_retries(1);
            match ConnectionManager::new_with_config(self.client.clone(), c).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(error = %e, "event stream: cannot connect to Redis; retrying");
                    if pause(&shutdown, backoff).await {
                        return;
                    }
                }
            }
        };
        let mut group_ready = false;
        let mut own_pending = true;
        let mut next_claim = Instant::now();
        let mut next_lag = Instant::now();
        while !shutdown.is_cancelled() {
            if !group_ready {
                match self.create_group(&mut conn).await {
                    Ok(()) => group_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot create the group; retrying");
                        if pause(&shutdown, backoff).await {
                            return;
                        }
                        continue;
                    }
                }
            }
            if Instant::now() >= next_lag {
                self.record_lag(&mut conn).await;
                next_lag = Instant::now() + Duration::from_millis(cfg.lag_interval_ms.max(100));
            }
            if Instant::now() >= next_claim {
                if let Err(e) = self.claim(&mut conn, &shutdown).await {
                    tracing::warn!(error = %e, "event stream: XAUTOCLAIM failed");
                    group_ready = !is_nogroup(&e);
                }
                next_claim = Instant::now() + Duration::from_millis(cfg.claim_interval_ms.max(10));
            }
            let id = if own_pending { "0" } else { ">" };
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&cfg.group)
                .arg(&self.name)
                .arg("COUNT")
                .arg(cfg.batch);
            if !own_pending {
                let until = next_claim
                    .min(next_lag)
                    .saturating_duration_since(Instant::now());
                let block = Duration::from_millis(cfg.block_ms)
                    .min(until)
                    .max(Duration::from_millis(1));
                cmd.arg("BLOCK").arg(block.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&self.stream).arg(id);
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = cmd.query_async::<Option<StreamReadReply>>(&mut conn) => r,
            };
            let entries: Vec<StreamId> = match read {
                Ok(reply) => reply
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
                Err(e) => {
                    metrics::counter!("notification_consumer_errors_total", "step" => "read")
                        .increment(1);
                    tracing::warn!(error = %e, "event stream: XREADGROUP failed");
                    group_ready = !is_nogroup(&e);
                    if pause(&shutdown, backoff).await {
                        return;
                    }
                    continue;
                }
            };
            if own_pending && entries.is_empty() {
                own_pending = false;
                continue;
            }
            if entries.is_empty() {
                continue;
            }
            if !self.process_until_done(&mut conn, entries, &shutdown).await {
                return;
            }
        }
    }

    async fn create_group(&self, conn: &mut ConnectionManager) -> redis::RedisResult<()> {
        let r: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.config.consumer.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other,
        }
    }

    /// Takes over entries idle for longer than `claim_idle_ms` and processes them.
    async fn claim(
        &self,
        conn: &mut ConnectionManager,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let mut start = "0-0".to_owned();
        loop {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.config.consumer.group)
                .arg(&self.name)
                .arg(self.config.consumer.claim_idle_ms)
                .arg(&start)
                .arg("COUNT")
                .arg(self.config.consumer.batch)
                .query_async(conn)
                .await?;
            if !reply.claimed.is_empty() {
                metrics::counter!("notification_events_claimed_total")
                    .increment(reply.claimed.len() as u64);
                tracing::info!(
                    count = reply.claimed.len(),
                    "claimed events left pending by another consumer"
                );
                if !self.process_until_done(conn, reply.claimed, shutdown).await {
                    return Ok(());
                }
            }
            if reply.next_stream_id == "0-0" || shutdown.is_cancelled() {
                return Ok(());
            }
            start = reply.next_stream_id;
        }
    }

    /// Fans out, records and acknowledges `entries`, retrying on failure; false when
    /// stopped first (the entries then stay pending for this consumer name, or for
    /// whoever claims them).
    async fn process_until_done(
        &self,
        conn: &mut ConnectionManager,
        entries: Vec<StreamId>,
        shutdown: &CancellationToken,
    ) -> bool {
        let backoff = Duration::from_millis(self.config.consumer.retry_backoff_ms.max(10));
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let mut recorded = false;
        loop {
            if !recorded {
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => return false,
                    r = self.record(&entries) => r,
                };
                match outcome {
                    Ok(()) => recorded = true,
                    Err(e) => {
                        metrics::counter!("notification_consumer_errors_total", "step" => "fanout")
                            .increment(1);
                        tracing::warn!(error = %e, count = ids.len(), "fan-out failed; retrying");
                    }
                }
            }
            if recorded {
                let acked: redis::RedisResult<i64> = redis::cmd("XACK")
                    .arg(&self.stream)
                    .arg(&self.config.consumer.group)
                    .arg(&ids)
                    .query_async(conn)
                    .await;
                match acked {
                    Ok(_) => return true,
                    Err(e) => {
                        metrics::counter!("notification_consumer_errors_total", "step" => "ack")
                            .increment(1);
                        tracing::warn!(error = %e, "XACK failed; retrying");
                    }
                }
            }
            if pause(shutdown, backoff).await {
                return false;
            }
        }
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

    async fn record_lag(&self, conn: &mut ConnectionManager) {
        let info: redis::RedisResult<StreamInfoGroupsReply> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(conn)
            .await;
        match info {
            Ok(info) => {
                if let Some(g) = info
                    .groups
                    .iter()
                    .find(|g| g.name == self.config.consumer.group)
                {
                    if let Some(lag) = g.lag {
                        metrics::gauge!("notification_stream_lag").set(lag as f64);
                    }
                    metrics::gauge!("notification_stream_pending").set(g.pending as f64);
                }
            }
            Err(e) => tracing::debug!(error = %e, "XINFO GROUPS failed"),
        }
    }
}

fn is_nogroup(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// Sleeps `d` unless `shutdown` comes first; true when stopped.
pub(crate) async fn pause(shutdown: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// `<hostname>-<pid>`, or a UUID when the host name is unknown.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{h}-{}", std::process::id()),
        None => Uuid::new_v4().to_string(),
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
