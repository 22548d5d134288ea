//! The ordering engine of one client connection: per channel, messages go to the client in
//! strictly increasing seq without gaps or repeats, whatever order (or how many times, or
//! whether at all) pub/sub brings them.
//!
//! A pure state machine — no I/O, no tokio, time passed in — so every path is unit-tested
//! and a property test drives it through arbitrary interleavings. Events go in (a message
//! arrived, an edit arrived, the gap timer fired, a history page arrived or failed, the
//! client resumed, the connection caught up after an overflow); actions come out (deliver a
//! message, forward an edit, fetch history after a seq). A transport runs the actions in
//! order; a `Fetch` is always the last action of its channel in a batch, and its page is
//! handed back with [`Engine::page`] before anything else happens on the connection.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

/// What the engine needs of a message.
pub trait Sequenced {
    fn channel(&self) -> &str;
    fn seq(&self) -> u64;
}

impl Sequenced for parley_proto::messaging::v1::Message {
    fn channel(&self) -> &str {
        &self.channel_id
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// An edit or a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Updated,
    Deleted,
}

/// What the transport does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<M> {
    /// Send the message. `live`: it came through pub/sub (its fan-out latency counts).
    Deliver { message: M, live: bool },
    /// Send the change of a message the client already has.
    Forward { change: Change, message: M },
    /// Read history of `channel` after `after` and hand the page to [`Engine::page`] (or
    /// the failure to [`Engine::fetch_failed`]).
    Fetch { channel: String, after: u64 },
}

/// How a `resume` of one channel starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeStart {
    /// The replay sends what comes after this seq.
    pub start: u64,
    /// Everything after the client's position is replayed (false: the client pages the
    /// older part over REST).
    pub recovered: bool,
}

/// Ordering state of one channel.
#[derive(Debug)]
struct Cursor<M> {
    /// Highest seq sent to the client.
    delivered: u64,
    /// Highest seq known to exist (from events or positions).
    target: u64,
    /// Messages received ahead of `delivered + 1`.
    held: BTreeMap<u64, M>,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
    /// First seq actually sent on this connection (a resume never replays below it).
    sent_from: Option<u64>,
}

impl<M> Cursor<M> {
    fn at(position: u64) -> Self {
        Self {
            delivered: position,
            target: position,
            held: BTreeMap::new(),
            gap_since: None,
            sent_from: None,
        }
    }

    fn behind(&self) -> bool {
        self.target > self.delivered
    }
}

/// The ordering engine of one connection.
#[derive(Debug)]
pub struct Engine<M> {
    channels: HashMap<String, Cursor<M>>,
    /// Right after `hello` messages are held (not sent) until the client's first frame or
    /// this deadline, so a reconnecting client's replay comes before anything live.
    hold_until: Option<Instant>,
    /// Early messages held per channel (`ws.max_held`); beyond it they are fetched later.
    max_held: usize,
    /// How long a gap may stay open before it is fetched (`ws.gap_wait_ms`).
    gap_wait: Duration,
    /// Some channel may be behind: only then does the gap timer need to run.
    maybe_gaps: bool,
}

/// Messages fetched per history page.
pub const PAGE: u32 = 200;

impl<M: Sequenced + Clone> Engine<M> {
    pub fn new(max_held: usize, gap_wait: Duration) -> Self {
        Self {
            channels: HashMap::new(),
            hold_until: None,
            max_held: max_held.max(1),
            gap_wait,
            maybe_gaps: false,
        }
    }

    /// Starts following `channel` at `position` (its last seq); false if already followed.
    pub fn join(&mut self, channel: &str, position: u64) -> bool {
        if self.channels.contains_key(channel) {
            return false;
        }
        self.channels
            .insert(channel.to_owned(), Cursor::at(position));
        true
    }

    /// Stops following `channel`; what was held for it is dropped.
    pub fn leave(&mut self, channel: &str) -> bool {
        self.channels.remove(channel).is_some()
    }

    pub fn follows(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// The channels followed.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.keys().map(String::as_str)
    }

    /// The highest seq sent to the client in `channel`.
    pub fn delivered(&self, channel: &str) -> Option<u64> {
        self.channels.get(channel).map(|c| c.delivered)
    }

    /// Messages held for `channel` (early ones waiting for their turn).
    pub fn held(&self, channel: &str) -> usize {
        self.channels.get(channel).map_or(0, |c| c.held.len())
    }

    /// Holds every message until `until` or [`Engine::release`].
    pub fn hold(&mut self, until: Instant) {
        self.hold_until = Some(until);
    }

    /// Ends the hold without sending anything (a `resume` replays first, then flushes).
    pub fn stop_holding(&mut self) {
        self.hold_until = None;
    }

    pub fn holding(&self) -> bool {
        self.hold_until.is_some()
    }

    /// The gap timer has something to do.
    pub fn needs_timer(&self) -> bool {
        self.hold_until.is_some() || self.maybe_gaps
    }

    /// A new message: delivered in order, held if early, dropped if already delivered.
    pub fn offer(&mut self, m: M, live: bool, now: Instant, out: &mut Vec<Action<M>>) {
        let (max_held, holding) = (self.max_held, self.hold_until.is_some());
        let Some(c) = self.channels.get_mut(m.channel()) else {
            return;
        };
        if m.seq() <= c.delivered {
            return;
        }
        c.target = c.target.max(m.seq());
        if holding {
            hold(c, m, max_held);
            return;
        }
        if m.seq() == c.delivered + 1 {
            let channel = m.channel().to_owned();
            deliver(c, m, live, out);
            self.flush_held(&channel, now, out);
        } else {
            hold(c, m, max_held);
            c.gap_since.get_or_insert(now);
            self.maybe_gaps = true;
        }
    }

    /// An edit or delete: forwarded when the client already has the message; otherwise the
    /// message is delivered in its current state when its turn comes.
    pub fn changed(&mut self, change: Change, m: M, now: Instant, out: &mut Vec<Action<M>>) {
        let Some(c) = self.channels.get_mut(m.channel()) else {
            return;
        };
        if m.seq() <= c.delivered {
            out.push(Action::Forward { change, message: m });
        } else if let Some(held) = c.held.get_mut(&m.seq()) {
            *held = m;
        } else {
            c.target = c.target.max(m.seq());
            c.gap_since.get_or_insert(now);
            self.maybe_gaps = true;
        }
    }

    /// The gap timer fired: ends an expired hold, or fetches gaps open for `gap_wait`.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action<M>>) {
        if self.hold_until.is_some_and(|t| now >= t) {
            self.release(now, out);
        } else {
            let wait = self.gap_wait;
            let mut due: Vec<String> = self
                .channels
                .iter()
                .filter(|(_, c)| {
                    c.behind()
                        && c.gap_since
                            .is_some_and(|t| now.saturating_duration_since(t) >= wait)
                })
                .map(|(k, _)| k.clone())
                .collect();
            due.sort();
            for ch in due {
                metrics::counter!("gateway_gap_fills_total").increment(1);
                self.fill(&ch, false, now, out);
            }
        }
        self.maybe_gaps = self.channels.values().any(Cursor::behind);
    }

    /// Ends the post-`hello` hold: what was held goes out in order, gaps are fetched.
    pub fn release(&mut self, now: Instant, out: &mut Vec<Action<M>>) {
        if self.hold_until.take().is_some() {
            self.flush_all(now, out);
        }
    }

    /// Every channel: held messages that are due go out, and a channel still behind is
    /// fetched.
    pub fn flush_all(&mut self, now: Instant, out: &mut Vec<Action<M>>) {
        let mut channels: Vec<String> = self.channels.keys().cloned().collect();
        channels.sort();
        for ch in channels {
            self.flush_held(&ch, now, out);
            if self.channels.get(&ch).is_some_and(Cursor::behind) {
                self.fill(&ch, false, now, out);
            }
        }
    }

    /// The last seq of `channel` as messaging reports it (after missed events): a channel
    /// behind it is fetched.
    pub fn last_seq(&mut self, channel: &str, last: u64, now: Instant, out: &mut Vec<Action<M>>) {
        let behind = self.channels.get_mut(channel).is_some_and(|c| {
            c.target = c.target.max(last);
            c.behind()
        });
        if behind {
            self.maybe_gaps = true;
            self.fill(channel, false, now, out);
        }
    }

    /// Reads history once even if nothing is known to be missing (a message may have been
    /// committed before the channel's events reached this connection).
    pub fn probe(&mut self, channel: &str, now: Instant, out: &mut Vec<Action<M>>) {
        self.fill(channel, true, now, out);
    }

    /// Fetches history after `delivered` until the target is reached (at least one page
    /// when `probe`); during the hold, the fetch waits for the release.
    fn fill(&mut self, channel: &str, probe: bool, now: Instant, out: &mut Vec<Action<M>>) {
        if self.hold_until.is_some() {
            return;
        }
        let Some(c) = self.channels.get(channel) else {
            return;
        };
        if !probe && !c.behind() {
            return self.flush_held(channel, now, out);
        }
        out.push(Action::Fetch {
            channel: channel.to_owned(),
            after: c.delivered,
        });
    }

    /// A history page of `channel` after `after`, in seq order; `more`: history has more
    /// after it.
    pub fn page(
        &mut self,
        channel: &str,
        msgs: Vec<M>,
        more: bool,
        now: Instant,
        out: &mut Vec<Action<M>>,
    ) {
        let got_any = !msgs.is_empty();
        for m in msgs {
            if m.channel() == channel {
                self.offer(m, false, now, out);
            }
        }
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        if !more || !got_any {
            // History is authoritative: nothing above what it returned exists yet.
            if !more && c.held.is_empty() {
                c.target = c.delivered;
            }
            return self.flush_held(channel, now, out);
        }
        self.fill(channel, false, now, out);
    }

    /// A history fetch failed: the gap is retried on a later tick.
    pub fn fetch_failed(&mut self, channel: &str, now: Instant) {
        if let Some(c) = self.channels.get_mut(channel) {
            c.gap_since = Some(now);
            self.maybe_gaps = true;
        }
    }

    /// `resume` of a followed channel whose last seq is `last`, from the client's position
    /// `pos`: replays at most `limit` messages (the newest), never one this connection sent
    /// already. Ends any hold (the replay comes first). The replay's fetch is in `out`; after
    /// it ran, [`Engine::delivered`] is the `to` of the `resumed` frame.
    pub fn resume(
        &mut self,
        channel: &str,
        pos: u64,
        last: u64,
        limit: u64,
        now: Instant,
        out: &mut Vec<Action<M>>,
    ) -> Option<ResumeStart> {
        self.hold_until = None;
        let c = self.channels.get_mut(channel)?;
        let r = match c.sent_from {
            // This connection already sent first..=delivered: never send those twice. A gap
            // before `first` can no longer be replayed in order: paged over REST.
            Some(first) => ResumeStart {
                start: c.delivered.max(pos.min(last)),
                recovered: pos.saturating_add(1) >= first,
            },
            None if last.saturating_sub(pos) > limit => ResumeStart {
                start: last - limit,
                recovered: false,
            },
            None => ResumeStart {
                start: pos.min(last),
                recovered: true,
            },
        };
        // Rewind (or fast-forward) to what the client has; live messages above it stay
        // held until the replay reaches them, so nothing is sent twice.
        c.delivered = r.start;
        c.target = c.target.max(last);
        c.held.retain(|s, _| *s > r.start);
        self.maybe_gaps = true;
        self.fill(channel, true, now, out);
        Some(r)
    }

    fn flush_held(&mut self, channel: &str, now: Instant, out: &mut Vec<Action<M>>) {
        let Some(c) = self.channels.get_mut(channel) else {
            return;
        };
        loop {
            let next = c.delivered + 1;
            c.held.retain(|s, _| *s >= next);
            match c.held.remove(&next) {
                // Held messages arrived live, early; their wait is part of the fan-out.
                Some(m) => deliver(c, m, true, out),
                None => {
                    c.gap_since = if c.behind() {
                        self.maybe_gaps = true;
                        c.gap_since.or(Some(now))
                    } else {
                        None
                    };
                    return;
                }
            }
        }
    }
}

fn deliver<M: Sequenced>(c: &mut Cursor<M>, m: M, live: bool, out: &mut Vec<Action<M>>) {
    c.delivered = m.seq();
    c.target = c.target.max(m.seq());
    c.sent_from.get_or_insert(m.seq());
    out.push(Action::Deliver { message: m, live });
}

/// Holds a message that came ahead of its turn, unless `cap` are held already: then it is
/// let go (its seq stays the target) and fetched from history when its turn comes.
fn hold<M: Sequenced>(c: &mut Cursor<M>, m: M, cap: usize) {
    if c.held.len() < cap || c.held.contains_key(&m.seq()) {
        c.held.insert(m.seq(), m);
    } else {
        metrics::counter!("gateway_ws_held_dropped_total").increment(1);
    }
}

#[cfg(test)]
mod tests;
