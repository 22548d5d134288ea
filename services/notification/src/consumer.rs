//! Consumes messaging's event stream `<prefix>messaging:events` with a consumer group
//! and turns every MessageCreated into delivery rows: one per device of each offline
//! recipient whose preference admits the message.
//!
//! The work is done per batch of entries, not per message (see [`Consumer::record`]):
//! member lists come from a cache keyed by the channel's membership version
//! ([`MemberCache`]) or from messaging, and the devices, preferences and presence of all
//! the batch's recipients are each looked up once, devices first, so members without a
//! device cost no further lookup.
//!
//! Consumption (as in receipts): `XGROUP CREATE … 0 MKSTREAM`, this replica's own pending
//! entries first (`XREADGROUP … 0`), then new ones (`>`); every `claim_interval` it takes
//! over entries another consumer left pending for longer than `claim_idle` (XAUTOCLAIM).
//! A batch's delivery rows are inserted in ONE transaction (ON CONFLICT DO NOTHING on
//! (message, device)), and only then are its entries acknowledged. A crash before the
//! commit leaves the entries pending (reclaimed later: no loss); a crash after it but
//! before XACK redelivers them, and the existing rows make the replay a no-op (no
//! duplicate push).

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
};

use opentelemetry::trace::TraceContextExt as _;
use parley_proto::{events::v1 as ev, messaging::v1::Message};
use prost::Message as _;
use redis::streams::StreamId;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use uuid::Uuid;

use crate::{
    Config, Error,
    members::{MemberCache, Members},
    store::{self, Device, NewDelivery},
    upstream::{Messaging, Presence},
};

/// Name of messaging's event stream (without the deployment prefix).
pub use parley_kit::stream::EVENTS as STREAM;

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

/// What a push shows of a message: the start of its text, or, for a message with files
/// and no text, `📎 <first file's name>` (and how many more).
pub fn message_preview(m: &Message, chars: usize) -> String {
    match m.attachments.as_slice() {
        [first, rest @ ..] if m.body.is_empty() => {
            let text = if rest.is_empty() {
                format!("📎 {}", first.filename)
            } else {
                format!("📎 {} (+{} more)", first.filename, rest.len())
            };
            preview(&text, chars)
        }
        _ => preview(&m.body, chars),
    }
}

/// The first `chars` characters of `body`.
pub fn preview(body: &str, chars: usize) -> String {
    match body.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &body[..i]),
        None => body.to_owned(),
    }
}

/// A MessageCreated of a batch, decoded once per batch (`prepare`) whatever the number of
/// attempts.
pub struct Created {
    /// Its place in the batch (entry index): blocks before it in the stream judge it.
    pos: usize,
    event_id: String,
    channel_id: String,
    trace_context: HashMap<String, String>,
    message: Message,
    members_version: i64,
}

/// A batch's events that notification acts on, decoded once.
pub struct Decoded {
    /// MessageCreated events, in stream order.
    created: Vec<Created>,
    /// BlockChanged events, in stream order, with their place in the batch.
    blocks: Vec<(usize, store::BlockChange)>,
}

/// Decodes a batch's entries, keeping the MessageCreated and BlockChanged events.
fn decode(entries: &[StreamId]) -> Decoded {
    let mut created = Vec::new();
    let mut blocks = Vec::new();
    for (pos, entry) in entries.iter().enumerate() {
        let event = entry
            .get::<Vec<u8>>("event")
            .and_then(|b| ev::Event::decode(b.as_slice()).ok());
        let Some(event) = event else {
            metrics::counter!("notification_events_total", "kind" => "invalid").increment(1);
            tracing::warn!(entry = %entry.id, "skipping an undecodable stream entry");
            continue;
        };
        let ev::Event {
            event_id,
            channel_id,
            trace_context,
            payload,
            occurred_at,
        } = event;
        if let Some(ev::event::Payload::BlockChanged(b)) = &payload {
            let at = occurred_at.and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            });
            match at {
                Some(at) if !b.blocker.is_empty() && !b.blocked.is_empty() => {
                    metrics::counter!("notification_events_total", "kind" => "block_changed")
                        .increment(1);
                    blocks.push((
                        pos,
                        store::BlockChange {
                            blocker: b.blocker.clone(),
                            blocked: b.blocked.clone(),
                            active: b.active,
                            at,
                        },
                    ));
                }
                _ => {
                    metrics::counter!("notification_events_total", "kind" => "invalid")
                        .increment(1);
                }
            }
            continue;
        }
        let Some(ev::event::Payload::MessageCreated(ev::MessageCreated {
            message: Some(message),
            members_version,
        })) = payload
        else {
            metrics::counter!("notification_events_total", "kind" => "ignored").increment(1);
            continue;
        };
        created.push(Created {
            pos,
            event_id,
            channel_id,
            trace_context,
            message,
            members_version,
        });
    }
    Decoded { created, blocks }
}

/// The span of one event's fan-out; it continues the trace of the request that sent the
/// message, and the delivery rows carry its context (so pushes join that trace too).
fn fanout_span(c: &Created) -> tracing::Span {
    let span = tracing::info_span!(
        "notification.fanout",
        otel.kind = "consumer",
        messaging.system = "redis",
        messaging.operation.type = "process",
        messaging.destination.name = STREAM,
        messaging.consumer.group.name = "notification",
        messaging.message.id = %c.event_id,
        event_id = %c.event_id,
        channel = %c.channel_id,
        seq = c.message.seq,
        member_cache = tracing::field::Empty,
        recipients = tracing::field::Empty,
        devices = tracing::field::Empty,
    );
    parley_kit::propagation::set_parent_from_map(&span, &c.trace_context);
    span
}

/// One event's fan-out while the batch's lookups narrow its candidates down.
struct Fanout<'a> {
    created: &'a Created,
    span: tracing::Span,
    channel: Uuid,
    message_id: Uuid,
    /// Who may still be pushed: the members other than the sender, then only those with a
    /// device, then only those whose level admits the message, then only the offline ones.
    users: Vec<String>,
    /// Delivery rows decided.
    rows: usize,
    /// Skipped (channel gone, sender no longer a member, malformed ids): nothing to push.
    skipped: bool,
}

impl Fanout<'_> {
    /// Marks the event skipped when `e` says it can never be fanned out; passes on any
    /// other error (the whole batch is retried).
    fn skip_or_fail(&mut self, e: Error) -> Result<(), Error> {
        match e {
            Error::NotFound(m) | Error::PermissionDenied(m) | Error::BadArgument(m) => {
                // The channel is gone or the sender left before we got here: nobody to
                // ask as, nothing to push.
                tracing::info!(parent: &self.span, reason = %m, "skipping a message");
                self.skipped = true;
                self.users.clear();
                Ok(())
            }
            e => Err(e),
        }
    }
}

/// Whether `blocker` had blocked `sender` at place `at` of a batch: the last of the batch's
/// `changes` of that pair before `at`, else the projection `before` the batch.
fn blocked_when_sent(
    before: &HashSet<(String, String)>,
    changes: &[(usize, store::BlockChange)],
    at: usize,
    blocker: &str,
    sender: &str,
) -> bool {
    changes
        .iter()
        .rev()
        .find(|(pos, c)| *pos < at && c.blocker == blocker && c.blocked == sender)
        .map_or_else(
            || before.contains(&(blocker.to_owned(), sender.to_owned())),
            |(_, c)| c.active,
        )
}

/// The distinct users still wanted by any of `fanouts`, sorted.
fn wanted(fanouts: &[Fanout<'_>]) -> Vec<String> {
    let users: BTreeSet<&String> = fanouts.iter().flat_map(|f| &f.users).collect();
    users.into_iter().cloned().collect()
}

pub struct Consumer {
    pool: PgPool,
    client: redis::Client,
    messaging: Messaging,
    presence: Presence,
    /// Member lists by (channel, membership version). Locked only between awaits.
    members: Mutex<MemberCache>,
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
            members: Mutex::new(MemberCache::new(config.fanout.member_cache_channels)),
            stream: format!("{}{STREAM}", config.redis.prefix),
            name,
            config,
        }
    }

    /// Consumes until `shutdown` (see `parley_kit::stream`).
    pub async fn run(self, shutdown: CancellationToken) {
        let c = &self.config.consumer;
        let settings = c.settings(
            self.stream.clone(),
            self.name.clone(),
            "notification",
            "fanout",
        );
        let client = self.client.clone();
        parley_kit::stream::consume(client, settings, self, shutdown).await;
    }

    /// Decides the deliveries of a batch's messages and inserts them in one transaction.
    ///
    /// 1. per event, in its `notification.fanout` span: the members (cached or
    ///    ListMembers) other than the sender;
    /// 2. once for the whole batch, in one `notification.fanout.lookups` span
    ///    ([`Self::narrow`]): the devices of all those users (users without one are
    ///    dropped first: no device, no push), then the levels of the (channel, user) pairs
    ///    left, then one presence query for the users left;
    /// 3. per event with someone left, in its span: the channel name and the rows.
    ///
    /// A skipped event (NOT_FOUND / PERMISSION_DENIED / malformed) only drops that event;
    /// any other failure fails the batch, which is retried whole.
    async fn record(&self, decoded: &Decoded) -> Result<(), Error> {
        let batch = &decoded.created;
        let mut fanouts = Vec::with_capacity(batch.len());
        for created in batch {
            let mut f = Fanout {
                created,
                span: fanout_span(created),
                channel: Uuid::nil(),
                message_id: Uuid::nil(),
                users: Vec::new(),
                rows: 0,
                skipped: false,
            };
            match self.recipients(created).instrument(f.span.clone()).await {
                Ok((channel, message_id, users)) => {
                    f.channel = channel;
                    f.message_id = message_id;
                    f.users = users;
                }
                Err(e) => f.skip_or_fail(e)?,
            }
            fanouts.push(f);
        }
        self.drop_blocked(&mut fanouts, &decoded.blocks).await?;

        let devices = self.narrow(&mut fanouts).await?;

        let mut names = HashMap::new();
        let mut rows = Vec::new();
        for f in &mut fanouts {
            if f.users.is_empty() {
                continue;
            }
            let span = f.span.clone();
            let decided = self.rows(f, &devices, &mut names).instrument(span).await;
            match decided {
                Ok(mut r) => {
                    f.rows = r.len();
                    rows.append(&mut r);
                }
                Err(e) => f.skip_or_fail(e)?,
            }
        }
        if !rows.is_empty() || !decoded.blocks.is_empty() {
            // The batch's block changes commit with its rows: a retried batch is judged
            // again from the same projection.
            let blocks: Vec<store::BlockChange> =
                decoded.blocks.iter().map(|(_, b)| b.clone()).collect();
            let n = store::insert_deliveries(
                &self.pool,
                &rows,
                &blocks,
                self.config.delivery.coalesce_window_ms,
            )
            .await?;
            metrics::counter!("notification_deliveries_recorded_total").increment(n);
        }
        for f in &fanouts {
            if f.skipped {
                metrics::counter!("notification_events_total", "kind" => "skipped").increment(1);
            } else {
                metrics::counter!("notification_events_total", "kind" => "message_created")
                    .increment(1);
                f.span.record("devices", f.rows);
            }
        }
        Ok(())
    }

    /// Drops from each event's recipients those who blocked its sender when it was sent:
    /// the projection as it stood before the batch (one query), overridden by the batch's
    /// own block changes that come before the event in the stream.
    async fn drop_blocked(
        &self,
        fanouts: &mut [Fanout<'_>],
        changes: &[(usize, store::BlockChange)],
    ) -> Result<(), Error> {
        let mut senders: Vec<String> = fanouts
            .iter()
            .filter(|f| !f.users.is_empty())
            .map(|f| f.created.message.sender_id.clone())
            .collect();
        senders.sort_unstable();
        senders.dedup();
        let users = wanted(fanouts);
        let before = store::blocked_pairs(&self.pool, &senders, &users).await?;
        if before.is_empty() && changes.iter().all(|(_, c)| !c.active) {
            return Ok(());
        }
        for f in fanouts.iter_mut() {
            let sender = f.created.message.sender_id.as_str();
            let at = f.created.pos;
            let n = f.users.len();
            f.users
                .retain(|u| !blocked_when_sent(&before, changes, at, u, sender));
            let dropped = n - f.users.len();
            if dropped > 0 {
                metrics::counter!("notification_blocked_recipients_total")
                    .increment(dropped as u64);
            }
        }
        Ok(())
    }

    /// Step 1 of one event: its channel, message id and the members other than the sender
    /// (none for a deleted message or one without a sender).
    async fn recipients(&self, c: &Created) -> Result<(Uuid, Uuid, Vec<String>), Error> {
        let m = &c.message;
        let channel = Uuid::parse_str(&m.channel_id)
            .map_err(|_| Error::BadArgument("event with a bad channel id".into()))?;
        let message_id = Uuid::parse_str(&m.id)
            .map_err(|_| Error::BadArgument("event with a bad message id".into()))?;
        // System messages (moderation records) push nobody.
        if m.sender_id.is_empty() || m.deleted || m.system.is_some() {
            return Ok((channel, message_id, Vec::new()));
        }
        let members = self
            .members(channel, c.members_version, &m.sender_id)
            .await?;
        let mut users: Vec<String> = members
            .iter()
            .filter(|u| **u != m.sender_id)
            .cloned()
            .collect();
        users.sort_unstable();
        users.dedup();
        tracing::Span::current().record("recipients", users.len());
        Ok((channel, message_id, users))
    }

    /// The members of `channel` at membership `version` (the event's): from the cache when
    /// it holds exactly that version, else from messaging `ListMembers`, asked as the
    /// sender (who was a member when the message was committed), and then cached under the
    /// version messaging read them at.
    async fn members(&self, channel: Uuid, version: i64, sender: &str) -> Result<Members, Error> {
        let cached = self.cache().get(channel, version);
        if let Some(members) = cached {
            metrics::counter!("notification_member_cache_total", "result" => "hit").increment(1);
            tracing::Span::current().record("member_cache", "hit");
            return Ok(members);
        }
        metrics::counter!("notification_member_cache_total", "result" => "miss").increment(1);
        tracing::Span::current().record("member_cache", "miss");
        let (members, current) = self.messaging.members(channel, sender).await?;
        let members: Members = members.into();
        let mut cache = self.cache();
        cache.put(channel, current, members.clone());
        metrics::gauge!("notification_member_cache_channels").set(cache.len() as f64);
        Ok(members)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, MemberCache> {
        // The lock is never held across an await and the cache's methods do not panic on
        // any input; should one ever panic (a bug), taking the guard over keeps consumption
        // going rather than failing every batch from then on.
        self.members.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Step 2 for the whole batch, in a span `notification.fanout.lookups` that is a
    /// child of the first event still wanting someone (so a batch of one event traces
    /// exactly like a lone message) and links to the other events' fan-out spans.
    /// Returns the devices of the users left, by user.
    async fn narrow(
        &self,
        fanouts: &mut [Fanout<'_>],
    ) -> Result<HashMap<String, Vec<Device>>, Error> {
        let Some(first) = fanouts.iter().position(|f| !f.users.is_empty()) else {
            return Ok(HashMap::new());
        };
        let span = tracing::info_span!(
            parent: &fanouts[first].span,
            "notification.fanout.lookups",
            events = tracing::field::Empty,
            users = tracing::field::Empty,
            with_device = tracing::field::Empty,
            offline = tracing::field::Empty,
        );
        let mut events = 0;
        for (i, f) in fanouts.iter().enumerate() {
            if f.users.is_empty() {
                continue;
            }
            events += 1;
            if i != first {
                span.add_link(f.span.context().span().span_context().clone());
            }
        }
        span.record("events", events);
        self.lookups(fanouts).instrument(span).await
    }

    /// Narrows every event's users with three batch-wide lookups (see [`Self::narrow`]).
    async fn lookups(
        &self,
        fanouts: &mut [Fanout<'_>],
    ) -> Result<HashMap<String, Vec<Device>>, Error> {
        let span = tracing::Span::current();
        // Devices first: a user without one can get no push, and in most channels most
        // members have none, so they leave before any preference or presence lookup.
        let users = wanted(fanouts);
        span.record("users", users.len());
        let mut devices: HashMap<String, Vec<Device>> = HashMap::new();
        for d in store::devices_of(&self.pool, &users).await? {
            devices.entry(d.user_id.clone()).or_default().push(d);
        }
        for f in fanouts.iter_mut() {
            f.users.retain(|u| devices.contains_key(u));
        }
        span.record("with_device", devices.len());
        if devices.is_empty() {
            return Ok(devices);
        }

        // Levels of the (channel, user) pairs still wanted, in one query.
        let pairs: HashSet<(Uuid, String)> = fanouts
            .iter()
            .flat_map(|f| f.users.iter().map(|u| (f.channel, u.clone())))
            .collect();
        let pairs: Vec<(Uuid, String)> = pairs.into_iter().collect();
        let levels = store::preferences(&self.pool, &pairs).await?;
        for f in fanouts.iter_mut() {
            let (channel, body) = (f.channel, &f.created.message.body);
            f.users.retain(|u| {
                let level = levels.get(&(channel, u.clone())).copied().unwrap_or(1);
                admits(level, body, u)
            });
        }

        // Presence of the users left, in as few calls as `presence.batch` allows (one for
        // up to 500 users): everyone not ONLINE is offline.
        let users = wanted(fanouts);
        let offline = if users.is_empty() {
            HashSet::new()
        } else {
            self.presence.offline(&users).await?
        };
        for f in fanouts.iter_mut() {
            f.users.retain(|u| offline.contains(u));
        }
        span.record("offline", offline.len());
        Ok(devices)
    }

    /// Step 3 of one event: one row per device of each user left. The channel name comes
    /// from messaging `GetChannel` as the sender, once per (channel, sender) and batch.
    async fn rows(
        &self,
        f: &Fanout<'_>,
        devices: &HashMap<String, Vec<Device>>,
        names: &mut HashMap<(Uuid, String), String>,
    ) -> Result<Vec<NewDelivery>, Error> {
        let m = &f.created.message;
        let key = (f.channel, m.sender_id.clone());
        let channel_name = match names.get(&key) {
            Some(name) => name.clone(),
            None => {
                let name = self.messaging.channel(f.channel, &m.sender_id).await?.name;
                names.insert(key, name.clone());
                name
            }
        };
        // This event's fan-out span (current here): the push continues its trace.
        let trace = serde_json::to_value(parley_kit::propagation::inject_map())
            .unwrap_or(serde_json::Value::Null);
        let preview = message_preview(m, self.config.delivery.preview_chars);
        let seq = i64::try_from(m.seq).unwrap_or(i64::MAX);
        Ok(f.users
            .iter()
            .flat_map(|u| devices.get(u).into_iter().flatten())
            .map(|d| NewDelivery {
                message_id: f.message_id,
                device_id: d.id,
                user_id: d.user_id.clone(),
                channel_id: f.channel,
                channel_name: channel_name.clone(),
                seq,
                sender_id: m.sender_id.clone(),
                preview: preview.clone(),
                trace_context: trace.clone(),
            })
            .collect())
    }
}

impl parley_kit::stream::Handler for Consumer {
    type Batch = Decoded;
    type Error = Error;

    /// Decodes the entries once, however often the batch is applied.
    fn prepare(&self, entries: &[StreamId]) -> Decoded {
        decode(entries)
    }

    /// Decides the deliveries of the batch and records them (idempotent: keyed rows).
    fn apply<'a>(
        &'a self,
        _entries: &'a [StreamId],
        batch: &'a Decoded,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'a {
        self.record(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(pos: usize, active: bool) -> (usize, store::BlockChange) {
        (
            pos,
            store::BlockChange {
                blocker: "bob".into(),
                blocked: "carol".into(),
                active,
                at: chrono::DateTime::UNIX_EPOCH,
            },
        )
    }

    #[test]
    fn a_message_is_judged_by_the_blocks_before_it_in_the_batch() {
        let none = HashSet::new();
        let blocked: HashSet<(String, String)> = [("bob".into(), "carol".into())].into();
        // block at 1, unblock at 3: messages at 0, 2, 4.
        let changes = [change(1, true), change(3, false)];
        assert!(!blocked_when_sent(&none, &changes, 0, "bob", "carol"));
        assert!(blocked_when_sent(&none, &changes, 2, "bob", "carol"));
        assert!(!blocked_when_sent(&none, &changes, 4, "bob", "carol"));
        // Before any change of the batch the projection decides.
        assert!(blocked_when_sent(&blocked, &changes, 0, "bob", "carol"));
        // Other pairs are untouched by the changes.
        assert!(!blocked_when_sent(&none, &changes, 2, "alice", "carol"));
        assert!(!blocked_when_sent(&none, &changes, 2, "bob", "dave"));
    }

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
        let file = |name: &str| parley_proto::messaging::v1::Attachment {
            filename: name.into(),
            ..Default::default()
        };
        let mut m = Message {
            body: "look".into(),
            attachments: vec![file("a.png")],
            ..Default::default()
        };
        assert_eq!(message_preview(&m, 20), "look");
        m.body.clear();
        assert_eq!(message_preview(&m, 20), "📎 a.png");
        m.attachments.push(file("b.png"));
        assert_eq!(message_preview(&m, 20), "📎 a.png (+1 more)");
        assert_eq!(message_preview(&m, 4), "📎 a.…");
    }
}
