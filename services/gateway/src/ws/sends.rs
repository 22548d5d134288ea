//! A WebSocket connection's send queues: one per channel it sends to, so its sends to one
//! channel reach messaging in frame order (pipelined sends get seqs in that order) while
//! channels proceed independently. Bounded three ways: sends waiting per channel
//! (`ws.max_pending_sends`), time waited (`ws.pending_send_budget_ms`), and channels with a
//! queue per connection (`ws.max_send_channels`; a queue with nothing in flight is dropped
//! to make room, its worker ending with it).

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use parley_kit::{
    ErrorCode,
    domain::{ChannelId, ClientMsgId, UserId},
};
use parley_proto::messaging::v1 as pb;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::{
    ApiError, App,
    api::messages::{Content, prepare_send},
};

/// A send's answer, with the frame's `ref`.
pub type SendResult = (Option<Value>, Result<pb::SendMessageResponse, ApiError>);

/// A queued `send` frame.
struct SendJob {
    /// The frame's `ref`, for the answer.
    r: Option<Value>,
    client_msg_id: ClientMsgId,
    content: Content,
    queued_at: Instant,
}

struct Queue {
    jobs: mpsc::Sender<SendJob>,
    /// Sends queued and not answered yet. Only a queue at zero is dropped, so a new worker
    /// for the channel never overtakes an old one still writing.
    unanswered: Arc<AtomicUsize>,
}

/// The send queues of one connection.
pub struct SendQueues {
    app: Arc<App>,
    user: UserId,
    answers: mpsc::Sender<SendResult>,
    queues: HashMap<ChannelId, Queue>,
}

impl SendQueues {
    pub fn new(app: Arc<App>, user: UserId, answers: mpsc::Sender<SendResult>) -> Self {
        Self {
            app,
            user,
            answers,
            queues: HashMap::new(),
        }
    }

    /// Queues a send to `channel` (already validated as one of the user's channels). Its
    /// answer comes on the connection's answer channel. Refused `rate_limited` when the
    /// channel has `ws.max_pending_sends` waiting, or when `ws.max_send_channels` channels
    /// have sends in flight.
    pub fn push(
        &mut self,
        channel: &ChannelId,
        r: Option<Value>,
        client_msg_id: ClientMsgId,
        content: Content,
    ) -> Result<(), ApiError> {
        let job = SendJob {
            r,
            client_msg_id,
            content,
            queued_at: Instant::now(),
        };
        let cfg = &self.app.config.ws;
        let pending = cfg.max_pending_sends.max(1);
        if !self.queues.contains_key(channel) {
            let max = cfg.max_send_channels.max(1);
            if self.queues.len() >= max {
                self.queues
                    .retain(|_, q| q.unanswered.load(Ordering::Acquire) > 0);
            }
            if self.queues.len() >= max {
                metrics::counter!("gateway_ws_refused_total", "reason" => "send_channels")
                    .increment(1);
                return Err(ApiError::rate_limited(
                    format!("sends to more than {max} channels are waiting on this connection"),
                    1,
                ));
            }
            let q = self.spawn(channel.clone(), pending);
            self.queues.insert(channel.clone(), q);
        }
        let q = self.queues.get(channel).expect("inserted above");
        q.unanswered.fetch_add(1, Ordering::AcqRel);
        q.jobs.try_send(job).map_err(|_| {
            q.unanswered.fetch_sub(1, Ordering::AcqRel);
            ApiError::rate_limited(
                format!("more than {pending} sends to this channel waiting on this connection"),
                1,
            )
        })
    }

    fn spawn(&self, channel: ChannelId, pending: usize) -> Queue {
        let (queue, mut jobs) = mpsc::channel::<SendJob>(pending);
        let unanswered = Arc::new(AtomicUsize::new(0));
        let (app, user, tx, left) = (
            self.app.clone(),
            self.user.clone(),
            self.answers.clone(),
            unanswered.clone(),
        );
        let budget = Duration::from_millis(app.config.ws.pending_send_budget_ms.max(1));
        let group_max = app.config.send.max_batch.max(1);
        metrics::gauge!("gateway_ws_send_queues").increment(1.0);
        tokio::spawn(async move {
            let _gauge = QueueGauge;
            let mut waiting = Vec::new();
            // Everything waiting goes together, as one ordered group in one call
            // (messaging writes a call's items in order), then the next group.
            while jobs.recv_many(&mut waiting, group_max).await > 0 {
                let mut results = Vec::with_capacity(waiting.len());
                let mut group = Vec::new();
                for SendJob {
                    r,
                    client_msg_id,
                    content,
                    queued_at,
                } in waiting.drain(..)
                {
                    // Waited too long behind this connection's earlier sends to the
                    // channel (`ws.pending_send_budget_ms`): refused unsent.
                    let prepared = if queued_at.elapsed() > budget {
                        Err(crate::sender::refused("pending"))
                    } else {
                        prepare_send(&app, &user, &channel, &client_msg_id, &content).await
                    };
                    match prepared {
                        Ok(req) => {
                            group.push(req);
                            results.push((r, None));
                        }
                        Err(e) => results.push((r, Some(Err(e)))),
                    }
                }
                let mut answers = if group.is_empty() {
                    Vec::new()
                } else {
                    app.sender.send_group(&user, group).await
                }
                .into_iter();
                for (r, result) in results {
                    let result = result.unwrap_or_else(|| {
                        answers.next().unwrap_or_else(|| {
                            Err(ApiError::new(ErrorCode::Internal, "internal error"))
                        })
                    });
                    let closed = tx.send((r, result)).await.is_err();
                    left.fetch_sub(1, Ordering::AcqRel);
                    if closed {
                        return;
                    }
                }
            }
        });
        Queue {
            jobs: queue,
            unanswered,
        }
    }
}

/// Counts a worker out of `gateway_ws_send_queues` however it ends.
struct QueueGauge;

impl Drop for QueueGauge {
    fn drop(&mut self) {
        metrics::gauge!("gateway_ws_send_queues").decrement(1.0);
    }
}
