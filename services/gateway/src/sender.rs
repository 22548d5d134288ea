//! Sends of every connection and REST request go to messaging in batches: one
//! `SendMessages` call carries the sends that are waiting (up to `send.max_batch`), with
//! at most `send.concurrency` calls in flight. An idle gateway sends each at once (a batch
//! of one); a busy one sends bigger batches, which saves a gRPC round trip per message on
//! both sides. Each item keeps its own caller, trace context and answer. A job is one send
//! or an ordered group of one connection's sends to one channel: a group is never split
//! across calls, and messaging writes a call's items in order.
//!
//! A messaging replica without `SendMessages` (an older version during a rolling deploy)
//! answers UNIMPLEMENTED: that batch is then sent item by item with `SendMessage` (the
//! items concurrently), and so is everything for the next `FALLBACK_FOR` (one
//! UNIMPLEMENTED per interval, not per batch), after which `SendMessages` is tried again.
//! A call refused as a whole for its size (INVALID_ARGUMENT or OUT_OF_RANGE:
//! `send.max_batch` above messaging's `limits.max_send_items`, or a batch over the gRPC
//! message size) says nothing about the items: that batch goes item by item too, so each
//! caller gets its own answer.
//!
//! Overload is answered, not queued. The queue holds at most `send.queue` sends: beyond it
//! a send is refused at once. A send that waited longer than `send.queue_budget_ms` before
//! a worker took it is refused instead of sent. Both answer `unavailable` with
//! `Retry-After` (safe to retry with the same `client_msg_id`) and count in
//! `gateway_send_refused_total{reason}`. As a last resort, a send waits at most
//! `messaging.timeout_ms` for a worker to take it; when none did, it is withdrawn (never
//! sent). Once taken, its caller waits for the call's answer, which the call's own
//! deadline (`messaging.timeout_ms`) bounds: a connection's next send to the channel never
//! overtakes one still in flight.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parley_kit::{ErrorCode, domain::UserId, propagation};
use parley_proto::messaging::v1 as pb;
use tokio::sync::{Mutex, mpsc, oneshot};
use tonic::{Code, Request, Status};
use tracing::Instrument as _;

use crate::{ApiError, Messaging};

type Answer = Result<pb::SendMessageResponse, ApiError>;
/// A job's answers, one per item, in item order.
type Reply = oneshot::Sender<Vec<Answer>>;

/// How long sends go one at a time after messaging answered UNIMPLEMENTED.
const FALLBACK_FOR: Duration = Duration::from_secs(30);
/// `SendMessage` calls in flight per worker when a batch goes item by item.
const FALLBACK_CONCURRENCY: usize = 8;

/// A job's state: waiting in the queue, taken by a worker, or withdrawn by its caller
/// (whichever of the last two comes first wins).
const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// One send, or an ordered group of sends to one channel (a connection's pipelined sends):
/// a group's items always travel together in one call, in order.
struct Job {
    items: Vec<pb::SendMessagesItem>,
    reply: Reply,
    state: Arc<AtomicU8>,
    queued_at: Instant,
}

impl Job {
    fn answer_all(self, a: impl Fn() -> ApiError) {
        let _ = self
            .reply
            .send(self.items.iter().map(|_| Err(a())).collect());
    }
}

/// Settings of the send batcher (`[send]`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SendConfig {
    pub max_batch: usize,
    pub concurrency: usize,
    pub queue: usize,
    pub queue_budget_ms: u64,
}

#[derive(Clone)]
pub(crate) struct Sender {
    queue: mpsc::Sender<Job>,
    deadline: Duration,
}

/// A send refused for overload (never sent): `unavailable`, counted by reason.
pub(crate) fn refused(reason: &'static str) -> ApiError {
    metrics::counter!("gateway_send_refused_total", "reason" => reason).increment(1);
    ApiError::new(
        ErrorCode::Unavailable,
        "too many sends waiting; not sent: retry with the same client_msg_id",
    )
}

impl Sender {
    /// Starts `cfg.concurrency` workers; they end when the last `Sender` is dropped. A send
    /// waits at most `deadline` for a worker to take it (see the module's comment).
    pub fn start(client: Messaging, cfg: &SendConfig, deadline: Duration) -> Self {
        let (queue, rx) = mpsc::channel(cfg.queue.max(1));
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            epoch: Instant::now(),
            single_until_ms: AtomicU64::new(0),
            budget: Duration::from_millis(cfg.queue_budget_ms.max(1)),
        });
        for _ in 0..cfg.concurrency.max(1) {
            tokio::spawn(worker(shared.clone(), client.clone(), cfg.max_batch.max(1)));
        }
        Self { queue, deadline }
    }

    /// Sends one message for `user` (the current span's trace context goes with it).
    pub async fn send(
        &self,
        user: &UserId,
        send: pb::SendMessageRequest,
    ) -> Result<pb::SendMessageResponse, ApiError> {
        self.send_group(user, vec![send])
            .await
            .pop()
            .unwrap_or_else(|| Err(ApiError::new(ErrorCode::Internal, "internal error")))
    }

    /// Sends `sends` of `user`, all to one channel, in one call and in this order: messaging
    /// writes them in that order (increasing seqs). One answer per send, in order.
    pub async fn send_group(
        &self,
        user: &UserId,
        sends: Vec<pb::SendMessageRequest>,
    ) -> Vec<Answer> {
        let n = sends.len();
        let all = |e: ApiError| (0..n).map(|_| Err(e.clone())).collect::<Vec<Answer>>();
        let (reply, answer) = oneshot::channel();
        let trace_context = propagation::inject_map();
        let items = sends
            .into_iter()
            .map(|send| pb::SendMessagesItem {
                user_id: user.as_str().to_owned(),
                send: Some(send),
                trace_context: trace_context.clone(),
            })
            .collect();
        let gone = || ApiError::new(ErrorCode::Unavailable, "the gateway is shutting down");
        let timed_out = || {
            metrics::counter!("gateway_send_timeouts_total").increment(n as u64);
            ApiError::new(
                ErrorCode::Unavailable,
                "messaging is too busy; retry with the same client_msg_id",
            )
        };
        let deadline = tokio::time::Instant::now() + self.deadline;
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job = Job {
            items,
            reply,
            state: state.clone(),
            queued_at: Instant::now(),
        };
        if let Err(e) = self.queue.try_send(job) {
            return match e {
                mpsc::error::TrySendError::Full(_) => {
                    (0..n).map(|_| Err(refused("queue_full"))).collect()
                }
                mpsc::error::TrySendError::Closed(_) => all(gone()),
            };
        }
        let mut answer = answer;
        match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(a) => a.unwrap_or_else(|_| all(gone())),
            Err(_) => {
                if state
                    .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return all(timed_out());
                }
                // Taken: its call is under way, bounded by the call's own deadline.
                answer.await.unwrap_or_else(|_| all(gone()))
            }
        }
    }
}

/// What the workers share.
struct Shared {
    rx: Mutex<mpsc::Receiver<Job>>,
    epoch: Instant,
    /// Until then (ms since `epoch`) sends go one at a time: messaging lacked SendMessages.
    single_until_ms: AtomicU64,
    /// Sends that waited longer than this for a worker are refused, not sent.
    budget: Duration,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

async fn worker(shared: Arc<Shared>, client: Messaging, max: usize) {
    loop {
        let mut jobs = Vec::new();
        {
            // One worker at a time takes what is waiting; the others are calling messaging.
            let mut rx = shared.rx.lock().await;
            match rx.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            // Up to `max` items; a group is never split, so a call may carry up to
            // `max` - 1 more (groups are at most `send.max_batch` long).
            let mut n = jobs.iter().map(|j| j.items.len()).sum::<usize>();
            while n < max {
                match rx.try_recv() {
                    Ok(job) => {
                        n += job.items.len();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        // Sends withdrawn by their callers (no worker took them in time) are not sent;
        // the others are taken, and their callers now wait for the answer. Taken sends
        // that waited past the budget are answered at once, unsent.
        let now = Instant::now();
        jobs.retain(|j| {
            j.state
                .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                && !j.reply.is_closed()
        });
        let (late, fresh): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| now.duration_since(j.queued_at) > shared.budget);
        for j in late {
            j.answer_all(|| refused("budget"));
        }
        let jobs = fresh;
        if jobs.is_empty() {
            continue;
        }
        let items: Vec<pb::SendMessagesItem> =
            jobs.iter().flat_map(|j| j.items.iter().cloned()).collect();
        let sent = items.len();
        metrics::histogram!("gateway_send_batch_size").record(sent as f64);
        if shared.now_ms() < shared.single_until_ms.load(Ordering::Relaxed) {
            one_by_one(&client, jobs).await;
            continue;
        }
        match client
            .clone()
            .send_messages(Request::new(pb::SendMessagesRequest { items }))
            .await
        {
            Ok(resp) => {
                let results = resp.into_inner().results;
                if results.len() != sent {
                    tracing::error!(
                        sent,
                        answered = results.len(),
                        "SendMessages answered a different number of items"
                    );
                    for j in jobs {
                        j.answer_all(|| ApiError::new(ErrorCode::Internal, "internal error"));
                    }
                    continue;
                }
                let mut results = results.into_iter();
                for j in jobs {
                    let answers = results.by_ref().take(j.items.len()).map(outcome).collect();
                    let _ = j.reply.send(answers);
                }
            }
            Err(s) if s.code() == Code::Unimplemented => {
                tracing::warn!(
                    "messaging has no SendMessages (older version?): sending one at a time for {} s",
                    FALLBACK_FOR.as_secs()
                );
                shared.single_until_ms.store(
                    shared.now_ms() + FALLBACK_FOR.as_millis() as u64,
                    Ordering::Relaxed,
                );
                one_by_one(&client, jobs).await;
            }
            Err(s) if refused_for_size(s.code()) => {
                tracing::error!(
                    items = sent,
                    error = %s,
                    "SendMessages refused the whole batch (send.max_batch above messaging's \
                     limits.max_send_items, or too big a call?): sending it item by item"
                );
                metrics::counter!("gateway_send_batches_refused_total").increment(1);
                one_by_one(&client, jobs).await;
            }
            Err(s) => {
                for j in jobs {
                    j.answer_all(|| ApiError::from(s.clone()));
                }
            }
        }
    }
}

/// Codes with which a whole `SendMessages` call is refused for its size (not
/// RESOURCE_EXHAUSTED: that is messaging being overloaded, and more calls would not help).
fn refused_for_size(code: Code) -> bool {
    matches!(code, Code::InvalidArgument | Code::OutOfRange)
}

/// Sends each item with `SendMessage`: up to `FALLBACK_CONCURRENCY` jobs at a time, a
/// group's items one after another (in order: their seqs must follow it). Distinct jobs
/// never hold sends that must keep an order between them (a connection sends its next
/// group to a channel only after the previous one's answers), so they go concurrently.
/// Jobs whose caller has gone are skipped.
async fn one_by_one(client: &Messaging, jobs: Vec<Job>) {
    use futures::StreamExt as _;
    futures::stream::iter(jobs)
        .for_each_concurrent(FALLBACK_CONCURRENCY, |j| async move {
            if j.reply.is_closed() {
                return;
            }
            let mut answers = Vec::with_capacity(j.items.len());
            for item in j.items {
                answers.push(send_one(client, item).await);
            }
            let _ = j.reply.send(answers);
        })
        .await;
}

/// One item's answer, as the gateway would have got it from `SendMessage`.
fn outcome(result: pb::SendMessagesResult) -> Result<pb::SendMessageResponse, ApiError> {
    match result.outcome {
        Some(pb::send_messages_result::Outcome::Sent(sent)) => Ok(sent),
        Some(pb::send_messages_result::Outcome::Error(e)) => {
            let mut status = Status::new(Code::from(e.code), e.message);
            if let Ok(v) = tonic::metadata::MetadataValue::try_from(e.error_code.as_str())
                && !e.error_code.is_empty()
            {
                status
                    .metadata_mut()
                    .insert(parley_kit::error::ERROR_CODE_KEY, v);
            }
            Err(ApiError::from(status))
        }
        None => Err(ApiError::new(ErrorCode::Internal, "internal error")),
    }
}

/// The fallback for a messaging without `SendMessages`: the item alone, under a span in
/// its own trace.
async fn send_one(
    client: &Messaging,
    item: pb::SendMessagesItem,
) -> Result<pb::SendMessageResponse, ApiError> {
    let span = tracing::info_span!("send fallback");
    propagation::set_parent_from_map(&span, &item.trace_context);
    async {
        let req =
            propagation::with_user(Request::new(item.send.unwrap_or_default()), &item.user_id)?;
        Ok(client.clone().send_message(req).await?.into_inner())
    }
    .instrument(span)
    .await
}
