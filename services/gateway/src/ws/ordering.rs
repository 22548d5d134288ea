//! The connection's side of the ordering engine (`crate::ordering`): the engine decides,
//! this runs its actions — message frames, edits, history fetches — and feeds it what the
//! connection learns (positions after missed events, `resume`).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::atomic::Ordering,
    time::Instant,
};

use parley_kit::{ErrorCode, domain::ChannelId};
use parley_proto::messaging::v1 as pb;

use super::{Conn, End};
use crate::{
    ApiError,
    ordering::{Action, Change, Engine, PAGE},
    protocol::{Resumed, ServerFrame},
    view,
};

type Actions = Vec<Action<pb::Message>>;

impl Conn {
    /// Gives the engine one event (`f`) and runs the actions it answers.
    pub(super) async fn order(
        &mut self,
        f: impl FnOnce(&mut Engine<pb::Message>, Instant, &mut Actions),
    ) -> Result<(), End> {
        let mut out = Vec::new();
        f(&mut self.engine, Instant::now(), &mut out);
        self.apply(out).await
    }

    /// Runs actions in order. A fetch's page goes back to the engine at once and what it
    /// answers runs before the rest (a fetch is the last action of its channel).
    async fn apply(&mut self, out: Actions) -> Result<(), End> {
        let mut queue: VecDeque<_> = out.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Deliver { message, live } => self.deliver(message, live).await?,
                Action::Forward { change, message } => {
                    let message = view::Message::from(&message);
                    self.frame(match change {
                        Change::Updated => ServerFrame::MessageUpdated { message },
                        Change::Deleted => ServerFrame::MessageDeleted { message },
                    })
                    .await?;
                }
                Action::Fetch { channel, after } => {
                    // What is queued goes out before waiting on messaging.
                    self.flush().await?;
                    let page = self.page_after(&channel, after, PAGE).await;
                    let mut next = Vec::new();
                    let now = Instant::now();
                    match page {
                        Ok((msgs, more)) => self.engine.page(&channel, msgs, more, now, &mut next),
                        Err(e) => {
                            tracing::warn!(channel, error = %e.message, "gap fill failed; retrying later");
                            self.engine.fetch_failed(&channel, now);
                        }
                    }
                    for a in next.into_iter().rev() {
                        queue.push_front(a);
                    }
                }
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, m: pb::Message, live: bool) -> Result<(), End> {
        metrics::counter!("gateway_ws_messages_delivered_total").increment(1);
        if live {
            // Commit (created_at, the database clock) to the write to this socket.
            if let Some(t) = m
                .created_at
                .as_ref()
                .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            {
                let secs = (chrono::Utc::now() - t)
                    .num_microseconds()
                    .unwrap_or(0)
                    .max(0) as f64
                    / 1e6;
                metrics::histogram!("gateway_fanout_latency_seconds").record(secs);
            }
        }
        self.frame(ServerFrame::Message {
            message: view::Message::from(&m),
        })
        .await
    }

    /// Ends the post-`hello` hold: what was held goes out in order, gaps are fetched.
    pub(super) async fn release(&mut self) -> Result<(), End> {
        if !self.engine.holding() {
            return Ok(());
        }
        self.order(|e, now, out| e.release(now, out)).await
    }

    /// Catches up every channel after missed events (pub/sub reconnect, overflowed queue,
    /// connection start): membership and last seqs are re-read from messaging.
    pub(super) async fn catch_up_if_lagged(&mut self) -> Result<(), End> {
        if !self.sink.lagged.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        // Drop queued events: history is about to supersede them.
        self.flush().await?;
        let positions = match self.positions().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e.message, "catch-up failed; retrying");
                self.sink.lagged.store(true, Ordering::Release);
                return Ok(());
            }
        };
        let current: HashSet<&str> = positions.iter().map(|(c, _)| c.as_str()).collect();
        let gone: Vec<String> = self
            .engine
            .channels()
            .filter(|c| !current.contains(c))
            .map(str::to_owned)
            .collect();
        let left_any = !gone.is_empty();
        for ch in gone {
            self.leave_channel(&ch).await;
        }
        if left_any {
            self.recheck_watched().await?;
        }
        for (ch, last) in positions {
            if !self.engine.follows(&ch) {
                // Joined while we were not listening: live from its current position.
                self.join_channel(&ch, last).await;
                continue;
            }
            self.order(|e, now, out| e.last_seq(&ch, last, now, out))
                .await?;
        }
        Ok(())
    }

    /// `resume`: replays each channel after the client's position (at most `resume_limit`
    /// messages; beyond that the newest are replayed and `recovered` is false).
    pub(super) async fn resume(&mut self, positions: BTreeMap<ChannelId, u64>) -> Result<(), End> {
        // The replays below run in order before anything held is sent.
        self.engine.stop_holding();
        let limit = self.app.config.ws.resume_limit;
        self.flush().await?;
        let last_seqs: HashMap<String, u64> = match self.positions().await {
            Ok(p) => p.into_iter().collect(),
            Err(e) => return self.error(None, &e).await,
        };
        let mut report = BTreeMap::new();
        for (ch, pos) in positions {
            let ch = ch.into_string();
            let Some(&last) = last_seqs.get(&ch) else {
                let e = ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("not a member of channel {ch}"),
                );
                self.error(None, &e).await?;
                continue;
            };
            self.join_channel(&ch, last).await;
            let mut out = Vec::new();
            let start = self
                .engine
                .resume(&ch, pos, last, limit, Instant::now(), &mut out);
            self.apply(out).await?;
            if let Some(s) = start {
                let to = self.engine.delivered(&ch).unwrap_or(s.start);
                let r = Resumed {
                    from: s.start.saturating_add(1),
                    to,
                    recovered: s.recovered,
                };
                report.insert(ch, r);
            }
        }
        // Channels not named in the resume: what was held goes out now.
        self.order(|e, now, out| e.flush_all(now, out)).await?;
        self.frame(ServerFrame::Resumed { channels: report }).await
    }
}
