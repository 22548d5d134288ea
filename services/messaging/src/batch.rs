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
//! the same `client_msg_id`) and that nothing refuses a send (the channel archived, a sender
//! muted or blocked by the other member of a direct channel; migration 0010) and writes. One round trip, and the locks are held only for that
//! statement and its commit. If anything moved (another replica sent, a membership change,
//! a retry of an earlier send, a non-member, an archive, mute or block), nothing is written and the batch goes through
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

mod write;

use write::{Committed, Writer, clear_idle};

/// What a send returns: the message and whether this call created it.
pub type Sent = (MessageRow, bool);

struct Request {
    caller: UserId,
    channel: Uuid,
    cid: ClientMsgId,
    body: MessageBody,
    /// The uploads it carries, as checked before it was queued (the transaction checks
    /// again, under their row locks, that they are still free).
    attachments: Vec<store::attachments::Meta>,
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
        let writer = Arc::new(Writer::new(pool, publisher, publish_inline));
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
        attachments: Vec<store::attachments::Meta>,
    ) -> Result<impl std::future::Future<Output = Result<Sent, Status>> + use<>, Status> {
        let (reply, answer) = oneshot::channel();
        let req = Request {
            caller,
            channel,
            cid,
            body,
            attachments,
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
