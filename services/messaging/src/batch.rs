//! Group commit of sends: concurrent `SendMessage` calls are written in one transaction.
//!
//! Sends are sharded by channel over `send.concurrency` lanes (a hash of the channel id):
//! each lane runs one transaction at a time and takes everything queued for it (up to
//! `send.max_batch`) whenever its previous transaction ends. So an idle service writes every
//! send on its own at once, a busy one writes bigger batches instead of more transactions,
//! and two transactions of one replica never lock the same channel: no lane waits for
//! another's commit (with durable commits a commit is a WAL flush, and the lanes' flushes
//! are shared by Postgres's group commit).
//!
//! **The fast path: one statement.** A lane remembers the counters (`last_seq`,
//! `members_version`) of the channels it wrote. When it knows every channel of a batch, it
//! assigns the seqs and encodes the events itself and sends everything in one call of
//! `send_batch_checked` (migration 0005) in autocommit: the function locks the channels in
//! id order, checks that nothing moved (counters, every sender a member, no earlier send with
//! the same `client_msg_id`) and writes. One round trip, and the locks are held only for that
//! statement and its commit. If anything moved (another replica sent, a membership change,
//! a retry of an earlier send, a non-member), nothing is written and the batch goes through
//! the transaction below, which then refreshes what the lane knows
//! (`messaging_send_batches_total{path}` counts both).
//!
//! **The transaction: five statements** whatever the batch's size:
//!
//! 1. `SELECT … FROM channels WHERE id = ANY(…) ORDER BY id FOR NO KEY UPDATE` — locks the
//!    batch's channels in id order (replicas, whose lanes may overlap, cannot deadlock)
//!    and reads `last_seq`, `members_version` and the transaction's `now()`;
//! 2. one `SELECT` over `unnest(…)`: each request's membership and, for idempotency, the
//!    message it already sent with that `client_msg_id`. Under the channel lock nobody
//!    else can insert into these channels, so the answer cannot go stale before commit;
//! 3. one statement that moves `channels.last_seq`, inserts the messages and their outbox
//!    events (seqs are assigned here in request order: gapless, as before);
//! 4. `COMMIT`; then the events are published in one Redis pipeline and every caller gets
//!    its answer (the lane's publisher does this, in commit order, while the lane runs its
//!    next transaction). The published events' outbox rows are deleted by the next batch's
//!    statement 3 (no statement of their own under load), or by a `DELETE` every
//!    `send.clear_interval_ms` when no batch came to take them.
//!
//! Overload is answered, not queued: a lane's queue holds at most `send.queue /
//! send.concurrency` sends (beyond it a send is refused at once), and a send that waited
//! longer than `send.queue_budget_ms` for its transaction is refused instead of written.
//! Both answer UNAVAILABLE (`unavailable`, safe to retry with the same `client_msg_id`) and
//! count in `messaging_send_refused_total{reason}`.
//!
//! Every request keeps its own trace: its `INSERT messaging.messages` and
//! `publish messaging:events` spans are children of its own `SendMessage` span (with the
//! batch size as an attribute), and its event carries its own trace context.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use parley_kit::domain::{ClientMsgId, MessageBody, UserId};
use parley_proto::events::v1 as ev;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use uuid::Uuid;

use crate::{
    Error, SendConfig,
    outbox::{self, Publisher},
    store::{self, MessageRow, Pending},
};

/// What a send returns: the message and whether this call created it.
pub type Sent = (MessageRow, bool);

struct Request {
    caller: UserId,
    channel: Uuid,
    cid: ClientMsgId,
    body: MessageBody,
    span: tracing::Span,
    reply: oneshot::Sender<Result<Sent, Status>>,
    queued_at: Instant,
}

impl Request {
    /// The send's idempotency key: a retry of an earlier send has the same one.
    fn key(&self) -> store::SendKey<'_> {
        store::SendKey {
            channel: self.channel,
            sender: self.caller.as_str(),
            client_msg_id: self.cid.as_str(),
        }
    }
}

/// Handle to the batcher; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    /// One queue per lane; a channel's sends always go to the same lane.
    lanes: Arc<[mpsc::Sender<Request>]>,
}

/// Why a send was refused without being written.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Its lane's queue was full.
    QueueFull,
    /// It waited longer than `send.queue_budget_ms` for its transaction.
    Budget,
}

impl Refusal {
    fn status(self) -> Status {
        let reason = match self {
            Self::QueueFull => "queue_full",
            Self::Budget => "budget",
        };
        metrics::counter!("messaging_send_refused_total", "reason" => reason).increment(1);
        parley_kit::ErrorCode::Unavailable.status(
            "messaging is overloaded: the send was not written; retry with the same client_msg_id",
        )
    }
}

impl Batcher {
    /// Starts one writer task per lane. They stop when every `Batcher` clone is dropped,
    /// after the batches in flight finish.
    pub fn start(
        pool: PgPool,
        publisher: Publisher,
        cfg: SendConfig,
        publish_inline: bool,
    ) -> Self {
        let writer = Arc::new(Writer {
            pool,
            publisher,
            publish_inline,
            published: Mutex::new(Vec::new()),
            known: Mutex::new(HashMap::new()),
        });
        tokio::spawn(clear_idle(
            Arc::downgrade(&writer),
            Duration::from_millis(cfg.clear_interval_ms.max(1)),
        ));
        let n = cfg.concurrency.max(1);
        let per_lane = (cfg.queue / n).max(1);
        let budget = Duration::from_millis(cfg.queue_budget_ms.max(1));
        let lanes: Vec<_> = (0..n)
            .map(|_| {
                let (queue, rx) = mpsc::channel(per_lane);
                tokio::spawn(lane(rx, writer.clone(), cfg.max_batch.max(1), budget));
                queue
            })
            .collect();
        Self {
            lanes: lanes.into(),
        }
    }

    /// Queues one send (membership, idempotency, gapless seq, outbox) on its lane now,
    /// without waiting: sends submitted one after another to one channel are written in that
    /// order (seqs increasing). Refused at once (UNAVAILABLE) when the lane's queue is full.
    /// The future is the answer, once its batch has committed and been published.
    pub fn submit(
        &self,
        caller: UserId,
        channel: Uuid,
        cid: ClientMsgId,
        body: MessageBody,
    ) -> Result<impl std::future::Future<Output = Result<Sent, Status>> + use<>, Status> {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            caller,
            channel,
            cid,
            body,
            span: tracing::Span::current(),
            reply,
            queued_at: Instant::now(),
        };
        let lane = &self.lanes[lane_of(channel, self.lanes.len())];
        lane.try_send(req).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Refusal::QueueFull.status(),
            mpsc::error::TrySendError::Closed(_) => {
                parley_kit::ErrorCode::Unavailable.status("messaging is shutting down")
            }
        })?;
        metrics::gauge!("messaging_send_queue_depth").increment(1.0);
        Ok(async move {
            answer.await.map_err(|_| {
                parley_kit::ErrorCode::Unavailable.status("the send was abandoned; retry")
            })?
        })
    }
}

/// The lane (of `lanes`) that writes a channel's sends: a fixed hash, the same in every
/// process of one build, so a replica never writes two batches of one channel at once.
pub fn lane_of(channel: Uuid, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    channel.hash(&mut h);
    (h.finish() % lanes.max(1) as u64) as usize
}

/// One lane: a transaction at a time, each taking what waits (up to `max`). Sends that
/// waited past `budget` are refused, not written: under overload the queue stays at most
/// one budget long, and the accepted sends' latency stays bounded.
async fn lane(mut rx: mpsc::Receiver<Request>, writer: Arc<Writer>, max: usize, budget: Duration) {
    // Publishing a committed batch (Redis) overlaps the lane's next transaction: the
    // lane's publisher takes committed batches in commit order, so the events of one
    // channel still reach Redis in seq order. A bound of two keeps the lane from running
    // ahead of a slow Redis.
    let (committed, mut to_publish) = mpsc::channel::<Committed>(2);
    let publisher = {
        let writer = writer.clone();
        tokio::spawn(async move {
            while let Some(c) = to_publish.recv().await {
                writer.publish(c).await;
            }
        })
    };
    let mut batch = Vec::with_capacity(max.min(64));
    while rx.recv_many(&mut batch, max).await > 0 {
        metrics::gauge!("messaging_send_queue_depth").decrement(batch.len() as f64);
        let now = Instant::now();
        let (late, fresh): (Vec<Request>, Vec<Request>) = batch.drain(..).partition(|r| {
            let waited = now.duration_since(r.queued_at);
            metrics::histogram!("messaging_send_queue_wait_seconds").record(waited.as_secs_f64());
            waited > budget
        });
        for r in late {
            let _ = r.reply.send(Err(Refusal::Budget.status()));
        }
        // Callers that gave up (deadline, cancelled call) are not written either.
        let fresh: Vec<Request> = fresh.into_iter().filter(|r| !r.reply.is_closed()).collect();
        if fresh.is_empty() {
            continue;
        }
        for c in writer.commit(fresh).await {
            if committed.send(c).await.is_err() {
                return;
            }
        }
    }
    drop(committed);
    let _ = publisher.await;
}

struct Writer {
    pool: PgPool,
    publisher: Publisher,
    publish_inline: bool,
    /// Outbox rows published and not yet deleted (the next batch deletes them).
    published: Mutex<Vec<i64>>,
    /// Channels' counters as this replica last committed or read them under their lock:
    /// what the one-statement fast path assumes (and checks).
    known: Mutex<HashMap<Uuid, Counters>>,
}

/// A channel's counters: its last seq and its membership version.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Counters {
    last_seq: i64,
    members_version: i64,
}

/// A channel locked by a batch's transaction: its counters, and the transaction's time.
#[derive(sqlx::FromRow)]
struct Locked {
    id: Uuid,
    #[sqlx(flatten)]
    counters: Counters,
    now: DateTime<Utc>,
}

/// Channels whose counters a replica remembers for the fast path; beyond it the memory
/// starts again empty (each channel's next batch takes the five-statement path once).
const KNOWN_MAX: usize = 100_000;

/// Deletes published outbox rows that no batch took within `every` (an idle service).
/// Ends when the writer is gone.
async fn clear_idle(writer: std::sync::Weak<Writer>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Vec<i64> = Vec::new();
    loop {
        tick.tick().await;
        let Some(w) = writer.upgrade() else {
            return;
        };
        // Only rows that waited a whole tick: under load the batches take them first.
        let stale: Vec<i64> = {
            let mut p = w.published.lock().unwrap_or_else(|e| e.into_inner());
            let (stale, fresh): (Vec<i64>, Vec<i64>) =
                p.drain(..).partition(|id| seen.binary_search(id).is_ok());
            *p = fresh;
            seen = p.clone();
            seen.sort_unstable();
            stale
        };
        if !stale.is_empty() {
            outbox::clear_ids(&w.pool, &stale).await;
        }
    }
}

/// The decision for one request of a batch.
enum Outcome {
    Failed(Error),
    /// Sent before (idempotent retry): the original.
    Existing(MessageRow),
    /// A retry of a new message of this same batch: index into the new messages.
    Retry(usize),
    /// New: index into the batch's new messages.
    New(usize),
}

impl Writer {
    fn lock_published(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Counters>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers channels' counters as committed (or read under their lock).
    fn remember(&self, channels: impl Iterator<Item = (Uuid, Counters)>) {
        let mut known = self.lock_known();
        if known.len() > KNOWN_MAX {
            known.clear();
        }
        known.extend(channels);
    }

    /// The fast path: when this replica knows the counters of every channel of the batch,
    /// it assigns seqs and encodes the events first, and writes them in one statement that
    /// checks, under the channel locks, that nothing moved (`store::write_sends_checked`):
    /// one round trip, and the locks are held only for that statement and its commit.
    /// `None` when a channel is not known or something moved (another replica sent, the
    /// membership changed, a sender is not a member, a retry of an earlier send): nothing
    /// was written, and the five-statement transaction decides.
    async fn try_fast(&self, batch: &[Request]) -> Option<Written> {
        let mut channels: HashMap<Uuid, store::Assumed> = HashMap::new();
        {
            let known = self.lock_known();
            for r in batch {
                let c = known.get(&r.channel)?;
                channels.insert(
                    r.channel,
                    store::Assumed {
                        channel: r.channel,
                        seen: c.last_seq,
                        version: c.members_version,
                        new: c.last_seq,
                    },
                );
            }
        }
        // The database stores microseconds: the answer must equal what history returns.
        let now = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows: Vec<MessageRow> = Vec::with_capacity(batch.len());
        let mut first_of: HashMap<store::SendKey<'_>, usize> = HashMap::new();
        for r in batch {
            let key = r.key();
            if let Some(&k) = first_of.get(&key) {
                outcomes.push(Outcome::Retry(k));
                continue;
            }
            let seq = channels.get_mut(&r.channel).map_or(0, |c| {
                c.new += 1;
                c.new
            });
            first_of.insert(key, rows.len());
            rows.push(new_row(r, seq, now));
            outcomes.push(Outcome::New(rows.len() - 1));
        }
        let mut assumed: Vec<store::Assumed> = channels.values().copied().collect();
        assumed.sort_unstable_by_key(|a| a.channel);
        let events = encode_events(batch, &outcomes, &rows, |c| {
            channels.get(&c).map_or(0, |a| a.version)
        });
        let done = std::mem::take(&mut *self.lock_published());
        match store::write_sends_checked(&self.pool, now, &assumed, &rows, events, &done).await {
            Ok(Some(pending)) => {
                metrics::counter!("messaging_send_batches_total", "path" => "fast").increment(1);
                self.remember(assumed.iter().map(|a| {
                    (
                        a.channel,
                        Counters {
                            last_seq: a.new,
                            members_version: a.version,
                        },
                    )
                }));
                Some(Written {
                    outcomes,
                    rows,
                    pending,
                })
            }
            result => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "one-statement send failed; the transaction decides");
                }
                self.lock_published().extend(done);
                let mut known = self.lock_known();
                for c in channels.keys() {
                    known.remove(c);
                }
                None
            }
        }
    }

    /// Writes the batch; what committed is returned for publishing (in commit order),
    /// having answered nobody yet. A failed batch is answered here. A batch the database
    /// refused for a value in it (`is_data_error`: one caller's bad input) is written again
    /// send by send, so only that caller's send fails.
    async fn commit(&self, batch: Vec<Request>) -> Vec<Committed> {
        match self.commit_together(batch).await {
            Ok(c) => c.into_iter().collect(),
            Err(batch) => {
                metrics::counter!("messaging_send_batches_split_total").increment(1);
                let mut committed = Vec::with_capacity(batch.len());
                for r in batch {
                    // A caller that gave up meanwhile is not written.
                    if r.reply.is_closed() {
                        continue;
                    }
                    // One send alone is never split again: it is answered with its error.
                    if let Ok(Some(c)) = self.commit_together(vec![r]).await {
                        committed.push(c);
                    }
                }
                committed
            }
        }
    }

    /// Writes the batch in one transaction. `Err` gives back a batch of more than one send
    /// that failed on a data error, unanswered, for `commit` to split.
    async fn commit_together(
        &self,
        batch: Vec<Request>,
    ) -> Result<Option<Committed>, Vec<Request>> {
        let n = batch.len();
        metrics::histogram!("messaging_send_batch_size").record(n as f64);
        let db_spans: Vec<tracing::Span> = batch
            .iter()
            .map(|r| {
                tracing::info_span!(
                    parent: &r.span,
                    "INSERT messaging.messages",
                    otel.kind = "client",
                    db.system.name = "postgresql",
                    db.namespace = "messaging",
                    db.operation.name = "INSERT",
                    db.collection.name = "messages",
                    db.operation.batch.size = n,
                    channel = %r.channel,
                )
            })
            .collect();
        let started = Instant::now();
        let result = self.transact(&batch).await;
        metrics::histogram!("messaging_send_transaction_seconds")
            .record(started.elapsed().as_secs_f64());
        drop(db_spans);
        match result {
            Ok(written) => {
                metrics::counter!("messaging_messages_sent_total")
                    .increment(written.rows.len() as u64);
                Ok(Some(Committed { batch, written }))
            }
            Err(Error::Db(e)) if n > 1 && parley_kit::db::is_data_error(&e) => {
                tracing::info!(error = %e, size = n, "send batch refused a value; writing its sends one by one");
                Err(batch)
            }
            Err(e) => {
                let status = Status::from(e);
                tracing::warn!(error = %status.message(), size = n, "send batch failed");
                for r in batch {
                    let _ = r.reply.send(Err(status.clone()));
                }
                Ok(None)
            }
        }
    }

    /// Publishes a committed batch's events, then answers its callers (an acknowledged
    /// send has reached Redis unless publishing failed, when the sweeper repairs it).
    async fn publish(&self, c: Committed) {
        let Committed {
            batch,
            written:
                Written {
                    outcomes,
                    rows,
                    pending,
                },
        } = c;
        let started = Instant::now();
        if self.publish_inline && !pending.is_empty() {
            let spans: Vec<tracing::Span> = batch
                .iter()
                .zip(&outcomes)
                .filter(|(_, o)| matches!(o, Outcome::New(_)))
                .map(|(r, _)| {
                    tracing::info_span!(
                        parent: &r.span,
                        "publish messaging:events",
                        otel.kind = "producer",
                        messaging.system = "redis",
                        messaging.operation.type = "send",
                        messaging.destination.name = outbox::STREAM,
                        messaging.batch.message_count = pending.len(),
                    )
                })
                .collect();
            let published = outbox::publish(&self.publisher, &pending).await;
            drop(spans);
            reply_all(batch, outcomes, &rows);
            if published {
                self.lock_published().extend(pending.iter().map(|p| p.id));
            }
        } else {
            reply_all(batch, outcomes, &rows);
        }
        metrics::histogram!("messaging_send_publish_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// Runs the batch's transaction; returns each request's outcome, the new rows and
    /// their outbox entries.
    async fn transact(&self, batch: &[Request]) -> Result<Written, Error> {
        if let Some(written) = self.try_fast(batch).await {
            return Ok(written);
        }
        metrics::counter!("messaging_send_batches_total", "path" => "transaction").increment(1);
        let mut tx = self.pool.begin().await?;

        // 1. Lock the channels in id order; their counters and the transaction's time.
        let mut ids: Vec<Uuid> = batch.iter().map(|r| r.channel).collect();
        ids.sort_unstable();
        ids.dedup();
        let locked: Vec<Locked> = sqlx::query_as(
            "SELECT id, last_seq, members_version, now() AS now FROM channels
             WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let Some(now) = locked.first().map(|r| r.now) else {
            // No channel exists: every request is NOT_FOUND, nothing to write.
            tx.rollback().await?;
            let outcomes = batch
                .iter()
                .map(|r| Outcome::Failed(not_found(r.channel)))
                .collect();
            return Ok(Written {
                outcomes,
                rows: Vec::new(),
                pending: Vec::new(),
            });
        };
        let mut channels: HashMap<Uuid, Counters> =
            locked.iter().map(|r| (r.id, r.counters)).collect();

        // 2. Membership and earlier sends with the same client_msg_id.
        let found = store::check_sends(&mut tx, batch.iter().map(Request::key)).await?;

        // Decide, and assign seqs in request order.
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut rows: Vec<MessageRow> = Vec::new();
        let mut first_of: HashMap<store::SendKey<'_>, usize> = HashMap::new();
        for (r, f) in batch.iter().zip(found) {
            let key = r.key();
            let outcome = if !channels.contains_key(&r.channel) {
                Outcome::Failed(not_found(r.channel))
            } else if !f.member {
                Outcome::Failed(Error::PermissionDenied(format!(
                    "not a member of channel {}",
                    r.channel
                )))
            } else if let Some(m) = f.existing {
                Outcome::Existing(m)
            } else if let Some(&k) = first_of.get(&key) {
                Outcome::Retry(k)
            } else {
                first_of.insert(key, rows.len());
                let counter = channels.get_mut(&r.channel).map(|c| {
                    c.last_seq += 1;
                    c.last_seq
                });
                rows.push(new_row(r, counter.unwrap_or_default(), now));
                Outcome::New(rows.len() - 1)
            };
            outcomes.push(outcome);
        }
        if rows.is_empty() {
            tx.commit().await?;
            self.remember(channels.into_iter());
            return Ok(Written {
                outcomes,
                rows,
                pending: Vec::new(),
            });
        }

        // 3. Counters, messages and outbox events in one statement.
        let touched: HashSet<Uuid> = rows.iter().map(|m| m.channel_id).collect();
        let counters: Vec<(Uuid, i64)> = touched
            .into_iter()
            .filter_map(|id| channels.get(&id).map(|c| (id, c.last_seq)))
            .collect();
        let events = encode_events(batch, &outcomes, &rows, |c| {
            channels.get(&c).map_or(0, |v| v.members_version)
        });
        let done = std::mem::take(&mut *self.lock_published());
        let written = async {
            let pending = store::write_sends(&mut tx, now, &counters, &rows, events, &done).await?;
            tx.commit().await?;
            Ok::<_, Error>(pending)
        }
        .await;
        match written {
            Ok(pending) => {
                self.remember(channels.into_iter());
                Ok(Written {
                    outcomes,
                    rows,
                    pending,
                })
            }
            Err(e) => {
                // Not deleted: the next batch (or the idle clearer) tries again.
                self.lock_published().extend(done);
                Err(e)
            }
        }
    }
}

/// What a batch wrote: each request's outcome, the new messages (which `Outcome::New` and
/// `Outcome::Retry` index) and their outbox entries.
struct Written {
    outcomes: Vec<Outcome>,
    rows: Vec<MessageRow>,
    pending: Vec<Pending>,
}

/// A committed batch waiting to be published and answered.
struct Committed {
    batch: Vec<Request>,
    written: Written,
}

fn new_row(r: &Request, seq: i64, now: DateTime<Utc>) -> MessageRow {
    MessageRow {
        id: Uuid::now_v7(),
        channel_id: r.channel,
        seq,
        sender_id: r.caller.as_str().to_owned(),
        client_msg_id: r.cid.as_str().to_owned(),
        body: r.body.as_str().to_owned(),
        created_at: now,
        edited_at: None,
        deleted: false,
    }
}

/// The outbox events of the batch's new messages, in order, each with its request's trace
/// context and its channel's membership version.
fn encode_events(
    batch: &[Request],
    outcomes: &[Outcome],
    rows: &[MessageRow],
    members_version: impl Fn(Uuid) -> i64,
) -> Vec<store::NewEvent> {
    batch
        .iter()
        .zip(outcomes)
        .filter_map(|(r, o)| {
            let Outcome::New(k) = o else { return None };
            let m = &rows[*k];
            let payload = ev::event::Payload::MessageCreated(ev::MessageCreated {
                message: Some(m.clone().into()),
                members_version: members_version(m.channel_id),
            });
            let trace = r.span.in_scope(parley_kit::propagation::inject_map);
            Some(store::new_event(m.channel_id, payload, trace))
        })
        .collect()
}

fn not_found(channel: Uuid) -> Error {
    Error::NotFound(format!("channel {channel} not found"))
}

fn reply_all(batch: Vec<Request>, outcomes: Vec<Outcome>, rows: &[MessageRow]) {
    for (r, o) in batch.into_iter().zip(outcomes) {
        let answer = match o {
            Outcome::Failed(e) => Err(Status::from(e)),
            Outcome::Existing(m) => Ok((m, false)),
            Outcome::New(k) => Ok((rows[k].clone(), true)),
            Outcome::Retry(k) => Ok((rows[k].clone(), false)),
        };
        if let Ok((m, _)) = &answer {
            r.span.record("seq", m.seq);
        }
        let _ = r.reply.send(answer);
    }
}
