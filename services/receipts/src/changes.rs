//! Live receipt events: `ReceiptChanged` on Redis pub/sub `<prefix>receipts:channel:<id>`,
//! coalesced per (channel, user).
//!
//! The first change of a member is published at once; further changes within
//! `coalesce_ms` of the last publish are merged (watermarks only grow, so merging is taking
//! the maximum) and published together when the window ends. A reader scrolling through
//! 100 messages therefore causes two or three broadcasts, the last carrying the final
//! watermarks. Delivery is at-most-once, like all pub/sub: a consumer keeps the maximum it
//! has seen and refetches (GetReceipts) after a reconnect.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    time::Duration,
};

use parley_proto::receipts::v1 as pb;
use prost::Message as _;
use redis::aio::ConnectionManager;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::ReceiptRow;

/// Topic of a channel's receipt events (without the deployment prefix).
pub use parley_kit::topics::receipts_channel as topic;

/// A member's watermarks after they moved, and the trace that moved them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub channel: Uuid,
    pub user: String,
    pub delivered_seq: i64,
    pub read_seq: i64,
    pub trace: HashMap<String, String>,
}

impl Change {
    pub fn from_row(row: &ReceiptRow, trace: HashMap<String, String>) -> Self {
        let ReceiptRow {
            channel_id,
            user_id,
            delivered_seq,
            read_seq,
            updated_at: _,
        } = row;
        Self {
            channel: *channel_id,
            user: user_id.clone(),
            delivered_seq: *delivered_seq,
            read_seq: *read_seq,
            trace,
        }
    }

    fn key(&self) -> Key {
        (self.channel, self.user.clone())
    }

    /// Whether `self` carries a watermark above `other`'s.
    fn raises(&self, other: &Self) -> bool {
        self.delivered_seq > other.delivered_seq || self.read_seq > other.read_seq
    }

    /// The maximum of both (the trace of the newer call).
    fn merge(mut self, newer: Self) -> Self {
        self.delivered_seq = self.delivered_seq.max(newer.delivered_seq);
        self.read_seq = self.read_seq.max(newer.read_seq);
        self.trace = newer.trace;
        self
    }
}

type Key = (Uuid, String);

struct Slot {
    /// What was published last for this member.
    published: Change,
    /// Merged changes waiting for the window to end.
    pending: Option<Change>,
}

/// The coalescing policy, without I/O or clocks of its own (the caller passes `now`).
pub struct Coalescer {
    window: Duration,
    slots: HashMap<Key, Slot>,
    /// When each slot's window ends (exactly one entry per slot).
    timers: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            slots: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }

    /// Offers a change; returns it when it is to be published now.
    pub fn offer(&mut self, change: Change, now: Instant) -> Option<Change> {
        if self.window.is_zero() {
            return Some(change);
        }
        let key = change.key();
        match self.slots.get_mut(&key) {
            None => {
                self.timers.push(Reverse((now + self.window, key.clone())));
                self.slots.insert(
                    key,
                    Slot {
                        published: change.clone(),
                        pending: None,
                    },
                );
                Some(change)
            }
            Some(slot) => {
                let merged = match slot.pending.take() {
                    Some(p) => p.merge(change),
                    None => change,
                };
                // Events can arrive out of order (concurrent calls): only what raises a
                // published watermark is worth a broadcast.
                if merged.raises(&slot.published) {
                    slot.pending = Some(merged);
                }
                None
            }
        }
    }

    /// When the earliest window ends.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Changes whose window ended by `now`; forgets members that stayed quiet for a window.
    pub fn due(&mut self, now: Instant) -> Vec<Change> {
        let mut out = Vec::new();
        while let Some(Reverse((t, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, key))) = self.timers.pop() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            match slot.pending.take() {
                Some(p) => {
                    slot.published = p.clone();
                    out.push(p);
                    self.timers.push(Reverse((now + self.window, key)));
                }
                None => {
                    self.slots.remove(&key);
                }
            }
        }
        out
    }

    /// Everything still waiting (on shutdown).
    pub fn drain(&mut self) -> Vec<Change> {
        self.timers.clear();
        self.slots.drain().filter_map(|(_, s)| s.pending).collect()
    }
}

/// Hands changes to the publishing task (cheap to clone). Never blocks the caller.
#[derive(Clone)]
pub struct Changes {
    tx: mpsc::Sender<Change>,
}

impl Changes {
    /// Queues a change; drops it (counted) when the queue is full or closed.
    pub fn offer(&self, change: Change) {
        if self.tx.try_send(change).is_err() {
            metrics::counter!("receipts_publish_dropped_total").increment(1);
        }
    }
}

/// Starts the publishing task; it runs until `stop`, then publishes what is pending.
pub fn start(
    redis: ConnectionManager,
    prefix: &str,
    window: Duration,
    queue: usize,
    stop: CancellationToken,
) -> (Changes, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let task = tokio::spawn(run(
        rx,
        Publisher {
            redis,
            prefix: prefix.to_owned(),
        },
        Coalescer::new(window),
        stop,
    ));
    (Changes { tx }, task)
}

async fn run(
    mut rx: mpsc::Receiver<Change>,
    publisher: Publisher,
    mut co: Coalescer,
    stop: CancellationToken,
) {
    loop {
        let next = co.next_due();
        tokio::select! {
            _ = stop.cancelled() => break,
            change = rx.recv() => match change {
                Some(c) => {
                    match co.offer(c, Instant::now()) {
                        Some(now) => publisher.publish(vec![now]).await,
                        None => metrics::counter!("receipts_coalesced_total").increment(1),
                    }
                }
                None => break,
            },
            _ = sleep_until(next), if next.is_some() => {
                let due = co.due(Instant::now());
                publisher.publish(due).await;
            }
        }
    }
    while let Ok(c) = rx.try_recv() {
        if let Some(now) = co.offer(c, Instant::now()) {
            publisher.publish(vec![now]).await;
        }
    }
    publisher.publish(co.drain()).await;
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct Publisher {
    redis: ConnectionManager,
    prefix: String,
}

impl Publisher {
    /// PUBLISHes every change in one round trip; failures are counted and logged (pub/sub
    /// is at-most-once: the watermarks themselves are safe in Postgres).
    async fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        let now = chrono::Utc::now();
        for c in &changes {
            let Change {
                channel,
                user,
                delivered_seq,
                read_seq,
                trace,
            } = c;
            let event = pb::ReceiptChanged {
                channel_id: channel.to_string(),
                user_id: user.clone(),
                delivered_seq: (*delivered_seq).max(0) as u64,
                read_seq: (*read_seq).max(0) as u64,
                event_id: Uuid::now_v7().to_string(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: now.timestamp(),
                    nanos: now.timestamp_subsec_nanos() as i32,
                }),
                trace_context: trace.clone(),
            };
            pipe.cmd("PUBLISH")
                .arg(format!("{}{}", self.prefix, topic(*channel)))
                .arg(event.encode_to_vec())
                .ignore();
        }
        let mut conn = self.redis.clone();
        match pipe.query_async::<()>(&mut conn).await {
            Ok(()) => metrics::counter!("receipts_published_total").increment(changes.len() as u64),
            Err(e) => {
                metrics::counter!("receipts_publish_failures_total")
                    .increment(changes.len() as u64);
                tracing::warn!(error = %e, count = changes.len(), "publishing receipt events failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(user: &str, delivered: i64, read: i64) -> Change {
        Change {
            channel: Uuid::nil(),
            user: user.into(),
            delivered_seq: delivered,
            read_seq: read,
            trace: HashMap::new(),
        }
    }

    #[test]
    fn a_burst_becomes_two_publishes_the_last_with_the_maximum() {
        let w = Duration::from_millis(100);
        let mut co = Coalescer::new(w);
        let t0 = Instant::now();
        assert_eq!(
            co.offer(change("bob", 1, 1), t0),
            Some(change("bob", 1, 1)),
            "first change goes out at once"
        );
        for s in 2..=100 {
            assert_eq!(
                co.offer(
                    change("bob", s, s),
                    t0 + Duration::from_millis(s as u64 / 2)
                ),
                None
            );
        }
        // Out of order: lower values arriving late change nothing.
        assert_eq!(
            co.offer(change("bob", 7, 7), t0 + Duration::from_millis(60)),
            None
        );
        assert_eq!(co.due(t0 + Duration::from_millis(99)), vec![]);
        assert_eq!(co.due(t0 + w), vec![change("bob", 100, 100)]);
        // Quiet for a window: forgotten, and the next change goes out at once again.
        assert_eq!(co.due(t0 + w * 2), vec![]);
        assert_eq!(co.next_due(), None);
        assert!(co.offer(change("bob", 101, 101), t0 + w * 3).is_some());
    }

    #[test]
    fn members_are_independent_and_no_rise_means_no_publish() {
        let w = Duration::from_millis(100);
        let mut co = Coalescer::new(w);
        let t0 = Instant::now();
        assert!(co.offer(change("bob", 5, 3), t0).is_some());
        assert!(co.offer(change("carol", 5, 3), t0).is_some());
        assert_eq!(co.offer(change("bob", 5, 3), t0), None);
        assert_eq!(co.offer(change("bob", 4, 2), t0), None);
        assert_eq!(co.due(t0 + w), vec![], "nothing above what was published");
        // Both slots were forgotten after a quiet window: the next change goes out at once.
        assert_eq!(
            co.offer(change("bob", 5, 5), t0 + w),
            Some(change("bob", 5, 5))
        );
        assert_eq!(co.offer(change("bob", 6, 6), t0 + w), None);
        assert_eq!(
            co.drain(),
            vec![change("bob", 6, 6)],
            "shutdown flushes what is pending"
        );
    }

    #[test]
    fn window_zero_publishes_everything() {
        let mut co = Coalescer::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(co.offer(change("bob", 1, 1), t0).is_some());
        assert!(co.offer(change("bob", 2, 2), t0).is_some());
        assert_eq!(co.next_due(), None);
    }
}
