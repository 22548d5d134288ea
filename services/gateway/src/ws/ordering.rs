//! A connection's per-channel ordering: messages delivered in strictly increasing seq
//! without gaps (early ones held, gaps filled from history), catch-up after missed events,
//! the post-`hello` hold and `resume`.

use std::{
    collections::{HashMap, HashSet},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use parley_kit::ErrorCode;
use parley_proto::messaging::v1 as pb;
use serde_json::json;

use super::{Conn, End};
use crate::{ApiError, view};

impl Conn {
    /// A new message: deliver in order, hold if early, drop if already delivered. `live`:
    /// it came from pub/sub (not from a history fetch), so its fan-out latency counts.
    pub(super) async fn offer(&mut self, m: pb::Message, live: bool) -> Result<(), End> {
        let Some(c) = self.cursors.get_mut(&m.channel_id) else {
            return Ok(());
        };
        if m.seq <= c.delivered {
            return Ok(());
        }
        c.target = c.target.max(m.seq);
        let cap = self.app.config.ws.max_held.max(1);
        if self.hold_until.is_some() {
            c.hold(m, cap);
            return Ok(());
        }
        if m.seq == c.delivered + 1 {
            let channel = m.channel_id.clone();
            self.deliver(m, live).await?;
            self.flush_held(&channel).await
        } else {
            c.hold(m, cap);
            c.gap_since.get_or_insert_with(Instant::now);
            self.maybe_gaps = true;
            Ok(())
        }
    }

    pub(super) async fn deliver(&mut self, m: pb::Message, live: bool) -> Result<(), End> {
        if let Some(c) = self.cursors.get_mut(&m.channel_id) {
            c.delivered = m.seq;
            c.target = c.target.max(m.seq);
            c.sent_from.get_or_insert(m.seq);
        }
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
        self.frame(json!({"type": "message", "message": view::message(&m)}))
            .await
    }

    pub(super) async fn flush_held(&mut self, channel: &str) -> Result<(), End> {
        loop {
            let Some(c) = self.cursors.get_mut(channel) else {
                return Ok(());
            };
            let next = c.delivered + 1;
            c.held.retain(|s, _| *s >= next);
            match c.held.remove(&next) {
                // Held messages arrived live, early; their wait is part of the fan-out.
                Some(m) => self.deliver(m, true).await?,
                None => {
                    c.gap_since = if c.target > c.delivered {
                        self.maybe_gaps = true;
                        c.gap_since.or(Some(Instant::now()))
                    } else {
                        None
                    };
                    return Ok(());
                }
            }
        }
    }

    /// An edit or delete: forwarded when the client already has the message; otherwise the
    /// message is fetched in its current state when its turn comes.
    pub(super) async fn changed(&mut self, kind: &str, m: &pb::Message) -> Result<(), End> {
        let Some(c) = self.cursors.get_mut(&m.channel_id) else {
            return Ok(());
        };
        if m.seq <= c.delivered {
            return self
                .frame(json!({"type": kind, "message": view::message(m)}))
                .await;
        }
        if let Some(held) = c.held.get_mut(&m.seq) {
            *held = m.clone();
        } else {
            c.target = c.target.max(m.seq);
            c.gap_since.get_or_insert_with(Instant::now);
            self.maybe_gaps = true;
        }
        Ok(())
    }

    pub(super) async fn fill_due_gaps(&mut self, wait: Duration) -> Result<(), End> {
        let due: Vec<String> = self
            .cursors
            .iter()
            .filter(|(_, c)| {
                c.target > c.delivered && c.gap_since.is_some_and(|t| t.elapsed() >= wait)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for ch in due {
            metrics::counter!("gateway_gap_fills_total").increment(1);
            self.fill(&ch, false).await?;
        }
        Ok(())
    }

    /// Fetches history after `delivered` until the known target is reached (at least one
    /// page when `probe`). A failed fetch leaves the gap to be retried on the next tick.
    pub(super) async fn fill(&mut self, channel: &str, probe: bool) -> Result<(), End> {
        if self.hold_until.is_some() {
            // Filled (in order) when the hold is released.
            return Ok(());
        }
        let mut first = probe;
        loop {
            let Some(c) = self.cursors.get(channel) else {
                return Ok(());
            };
            if !first && c.target <= c.delivered {
                return self.flush_held(channel).await;
            }
            first = false;
            let after = c.delivered;
            self.flush().await?;
            let (msgs, more) = match self.page_after(channel, after, 200).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(channel, error = %e.message, "gap fill failed; retrying later");
                    if let Some(c) = self.cursors.get_mut(channel) {
                        c.gap_since = Some(Instant::now());
                        self.maybe_gaps = true;
                    }
                    return Ok(());
                }
            };
            let got_any = !msgs.is_empty();
            for m in msgs {
                self.offer(m, false).await?;
            }
            if !more || !got_any {
                let Some(c) = self.cursors.get_mut(channel) else {
                    return Ok(());
                };
                // History is authoritative: nothing above what it returned exists yet.
                if !more && c.held.is_empty() {
                    c.target = c.delivered;
                }
                return self.flush_held(channel).await;
            }
        }
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
        let current: HashSet<String> = positions.iter().map(|(c, _)| c.clone()).collect();
        let gone: Vec<String> = self
            .cursors
            .keys()
            .filter(|c| !current.contains(*c))
            .cloned()
            .collect();
        let left_any = !gone.is_empty();
        for ch in gone {
            self.leave_channel(&ch).await;
        }
        if left_any {
            self.recheck_watched().await?;
        }
        for (ch, last) in positions {
            if !self.cursors.contains_key(&ch) {
                // Joined while we were not listening: live from its current position.
                self.join_channel(&ch, last).await;
                continue;
            }
            let behind = self.cursors.get_mut(&ch).is_some_and(|c| {
                c.target = c.target.max(last);
                c.target > c.delivered
            });
            if behind {
                self.maybe_gaps = true;
                self.fill(&ch, false).await?;
            }
        }
        Ok(())
    }

    /// Ends the post-`hello` hold: what was held goes out in order, gaps are filled.
    pub(super) async fn release(&mut self) -> Result<(), End> {
        if self.hold_until.take().is_none() {
            return Ok(());
        }
        self.flush_all().await
    }

    pub(super) async fn flush_all(&mut self) -> Result<(), End> {
        let channels: Vec<String> = self.cursors.keys().cloned().collect();
        for ch in channels {
            self.flush_held(&ch).await?;
            if self
                .cursors
                .get(&ch)
                .is_some_and(|c| c.target > c.delivered)
            {
                self.fill(&ch, false).await?;
            }
        }
        Ok(())
    }

    /// `resume`: replays each channel after the client's position (at most `resume_limit`
    /// messages; beyond that the newest are replayed and `recovered` is false).
    pub(super) async fn resume(&mut self, positions: Vec<(String, u64)>) -> Result<(), End> {
        // Replays below run in order before anything held is sent.
        self.hold_until = None;
        let limit = self.app.config.ws.resume_limit;
        self.flush().await?;
        let last_seqs: HashMap<String, u64> = match self.positions().await {
            Ok(p) => p.into_iter().collect(),
            Err(e) => return self.error(None, &e).await,
        };
        let mut report = serde_json::Map::new();
        for (ch, pos) in positions {
            let Some(&last) = last_seqs.get(&ch) else {
                let e = ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!("not a member of channel {ch}"),
                );
                self.error(None, &e).await?;
                continue;
            };
            self.join_channel(&ch, last).await;
            let sent = self
                .cursors
                .get(&ch)
                .and_then(|c| c.sent_from.map(|first| (first, c.delivered)));
            let (start, recovered) = match sent {
                // This connection already sent first..=delivered: never send those twice.
                // A gap before `first` can no longer be replayed in order: page it over REST.
                Some((first, delivered)) => {
                    (delivered.max(pos.min(last)), pos.saturating_add(1) >= first)
                }
                None if last.saturating_sub(pos) > limit => (last - limit, false),
                None => (pos.min(last), true),
            };
            if let Some(c) = self.cursors.get_mut(&ch) {
                // Rewind (or fast-forward) to what the client has; live messages above it
                // stay held until the replay reaches them, so nothing is sent twice.
                c.delivered = start;
                c.target = c.target.max(last);
                c.held.retain(|s, _| *s > start);
                self.maybe_gaps = true;
            }
            self.fill(&ch, true).await?;
            let to = self.cursors.get(&ch).map_or(start, |c| c.delivered);
            report.insert(
                ch,
                json!({"from": start.saturating_add(1), "to": to, "recovered": recovered}),
            );
        }
        // Channels not named in the resume: what was held goes out now.
        self.flush_all().await?;
        self.frame(json!({"type": "resumed", "channels": report}))
            .await
    }
}
