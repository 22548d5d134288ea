use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    channel: &'static str,
    seq: u64,
    /// Edits bump this; the client must see the newest version of what it gets late.
    version: u32,
}

impl Sequenced for M {
    fn channel(&self) -> &str {
        self.channel
    }
    fn seq(&self) -> u64 {
        self.seq
    }
}

const A: &str = "a";
const B: &str = "b";
const WAIT: Duration = Duration::from_millis(200);

fn m(channel: &'static str, seq: u64) -> M {
    M {
        channel,
        seq,
        version: 0,
    }
}

fn engine() -> Engine<M> {
    let mut e = Engine::new(256, WAIT);
    e.join(A, 0);
    e
}

fn delivered(out: &[Action<M>]) -> Vec<u64> {
    out.iter()
        .filter_map(|a| match a {
            Action::Deliver { message, .. } => Some(message.seq),
            _ => None,
        })
        .collect()
}

fn fetches(out: &[Action<M>]) -> Vec<(String, u64)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Fetch { channel, after } => Some((channel.clone(), *after)),
            _ => None,
        })
        .collect()
}

/// History of channel `A` holding 1..=last.
fn page(after: u64, last: u64, limit: u64) -> (Vec<M>, bool) {
    let msgs: Vec<M> = (after + 1..=last.min(after + limit))
        .map(|s| m(A, s))
        .collect();
    let more = msgs.last().is_some_and(|l| l.seq < last);
    (msgs, more)
}

#[test]
fn in_order_messages_go_out_at_once() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 1), true, now, &mut out);
    e.offer(m(A, 2), true, now, &mut out);
    assert_eq!(delivered(&out), [1, 2]);
    assert!(matches!(out[0], Action::Deliver { live: true, .. }));
    assert!(!e.needs_timer());
}

#[test]
fn an_early_message_is_held_until_its_predecessor_arrives() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 2), true, now, &mut out);
    e.offer(m(A, 3), true, now, &mut out);
    assert!(out.is_empty());
    assert_eq!(e.held(A), 2);
    assert!(e.needs_timer());
    e.offer(m(A, 1), true, now, &mut out);
    assert_eq!(delivered(&out), [1, 2, 3]);
    assert_eq!(e.held(A), 0);
}

#[test]
fn a_gap_is_fetched_after_the_wait_and_filled_from_history() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 3), true, now, &mut out);
    e.tick(now + WAIT / 2, &mut out);
    assert!(out.is_empty(), "not before gap_wait");
    e.tick(now + WAIT, &mut out);
    assert_eq!(fetches(&out), [(A.to_owned(), 0)]);
    out.clear();
    let (msgs, more) = page(0, 3, 200);
    e.page(A, msgs, more, now + WAIT, &mut out);
    assert_eq!(delivered(&out), [1, 2, 3], "3 once, from history or held");
    e.tick(now + WAIT * 3, &mut out);
    assert!(!e.needs_timer());
}

#[test]
fn a_long_gap_is_fetched_page_by_page() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.last_seq(A, 5, now, &mut out);
    let (mut all, mut pages) = (Vec::new(), 0);
    while let Some(Action::Fetch { after, .. }) = out.last().cloned() {
        all.extend(delivered(&out));
        out.clear();
        let (msgs, more) = page(after, 5, 2);
        e.page(A, msgs, more, now, &mut out);
        pages += 1;
    }
    all.extend(delivered(&out));
    assert_eq!(all, [1, 2, 3, 4, 5]);
    assert_eq!(pages, 3);
}

#[test]
fn duplicates_and_old_messages_are_dropped() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    for s in [1, 1, 2, 1, 3, 2] {
        e.offer(m(A, s), true, now, &mut out);
    }
    assert_eq!(delivered(&out), [1, 2, 3]);
    e.offer(m(B, 1), true, now, &mut out);
    assert_eq!(
        delivered(&out),
        [1, 2, 3],
        "a channel not followed is ignored"
    );
}

#[test]
fn held_messages_are_capped_and_the_rest_comes_from_history() {
    let (mut e, now, mut out) = (Engine::new(2, WAIT), Instant::now(), Vec::new());
    e.join(A, 0);
    for s in 2..=5 {
        e.offer(m(A, s), true, now, &mut out);
    }
    assert_eq!(e.held(A), 2);
    e.offer(m(A, 1), true, now, &mut out);
    assert_eq!(delivered(&out), [1, 2, 3]);
    assert_eq!(fetches(&out), [], "4 and 5 wait for the gap timer");
    out.clear();
    e.tick(now + WAIT, &mut out);
    assert_eq!(fetches(&out), [(A.to_owned(), 3)]);
}

#[test]
fn an_edit_is_forwarded_once_delivered_and_applied_to_a_held_message_before() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 1), true, now, &mut out);
    e.offer(m(A, 3), true, now, &mut out);
    let edited = |s| M {
        version: 1,
        ..m(A, s)
    };
    e.changed(Change::Updated, edited(1), now, &mut out);
    e.changed(Change::Deleted, edited(3), now, &mut out);
    assert_eq!(
        out.last(),
        Some(&Action::Forward {
            change: Change::Updated,
            message: edited(1)
        })
    );
    e.offer(m(A, 2), true, now, &mut out);
    let Some(Action::Deliver { message, .. }) = out.last() else {
        panic!("{out:?}");
    };
    assert_eq!(
        message,
        &edited(3),
        "the held message went out in its current state"
    );
}

#[test]
fn an_edit_of_an_unseen_message_makes_a_gap() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.changed(Change::Updated, m(A, 2), now, &mut out);
    assert!(out.is_empty());
    e.tick(now + WAIT, &mut out);
    assert_eq!(fetches(&out), [(A.to_owned(), 0)]);
}

#[test]
fn an_overflow_catches_up_from_history() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 1), true, now, &mut out);
    out.clear();
    // Events 2..4 were lost in an overflow; messaging says the channel is at 4.
    e.last_seq(A, 4, now, &mut out);
    assert_eq!(fetches(&out), [(A.to_owned(), 1)]);
    out.clear();
    let (msgs, more) = page(1, 4, 200);
    e.page(A, msgs, more, now, &mut out);
    assert_eq!(delivered(&out), [2, 3, 4]);
    out.clear();
    e.last_seq(A, 4, now, &mut out);
    assert!(out.is_empty(), "nothing missing: nothing fetched");
}

#[test]
fn a_failed_fetch_is_retried_after_the_wait() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.last_seq(A, 2, now, &mut out);
    out.clear();
    e.fetch_failed(A, now);
    e.tick(now + WAIT / 2, &mut out);
    assert!(out.is_empty());
    e.tick(now + WAIT, &mut out);
    assert_eq!(fetches(&out), [(A.to_owned(), 0)]);
}

#[test]
fn history_ending_below_the_target_settles_the_channel() {
    // A seq that was announced but never committed (the position was ahead): the page
    // says nothing exists past 1, so the channel is no longer behind.
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.last_seq(A, 3, now, &mut out);
    out.clear();
    e.page(A, vec![m(A, 1)], false, now, &mut out);
    assert_eq!(delivered(&out), [1]);
    e.tick(now + WAIT * 2, &mut out);
    assert!(!e.needs_timer());
}

#[test]
fn the_hold_keeps_everything_until_released() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.hold(now + WAIT);
    e.offer(m(A, 1), true, now, &mut out);
    e.last_seq(A, 3, now, &mut out);
    assert!(out.is_empty(), "nothing sent or fetched during the hold");
    e.tick(now + WAIT, &mut out);
    assert!(!e.holding());
    assert_eq!(delivered(&out), [1]);
    assert_eq!(fetches(&out), [(A.to_owned(), 1)]);
}

#[test]
fn resume_replays_after_the_clients_position_before_held_live_messages() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.join(A, 5);
    e.leave(A);
    e.join(A, 5);
    e.hold(now + WAIT);
    e.offer(m(A, 6), true, now, &mut out);
    let r = e.resume(A, 2, 5, 1000, now, &mut out).unwrap();
    assert_eq!(
        r,
        ResumeStart {
            start: 2,
            recovered: true
        }
    );
    assert_eq!(fetches(&out), [(A.to_owned(), 2)]);
    out.clear();
    let (msgs, more) = page(2, 5, 200);
    e.page(A, msgs, more, now, &mut out);
    assert_eq!(delivered(&out), [3, 4, 5, 6]);
    assert_eq!(e.delivered(A), Some(6));
}

#[test]
fn resume_beyond_the_limit_replays_the_newest() {
    let (mut e, now, mut out) = (Engine::new(256, WAIT), Instant::now(), Vec::new());
    e.join(A, 50);
    let r = e.resume(A, 10, 50, 20, now, &mut out).unwrap();
    assert_eq!(
        r,
        ResumeStart {
            start: 30,
            recovered: false
        }
    );
    assert_eq!(fetches(&out), [(A.to_owned(), 30)]);
}

#[test]
fn a_resume_never_rewinds_below_what_was_sent() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    for s in 1..=4 {
        e.offer(m(A, s), true, now, &mut out);
    }
    out.clear();
    // The client says it has 2: 3 and 4 were sent on this connection already.
    let r = e.resume(A, 2, 4, 1000, now, &mut out).unwrap();
    assert_eq!(
        r,
        ResumeStart {
            start: 4,
            recovered: true
        }
    );
    let (msgs, more) = page(4, 4, 200);
    out.clear();
    e.page(A, msgs, more, now, &mut out);
    assert!(delivered(&out).is_empty());
    // A position older than the first message sent here cannot be replayed in order.
    let mut e = Engine::new(256, WAIT);
    e.join(A, 2);
    e.offer(m(A, 3), true, now, &mut out);
    e.offer(m(A, 4), true, now, &mut out);
    let r = e.resume(A, 1, 4, 1000, now, &mut out).unwrap();
    assert_eq!(
        r,
        ResumeStart {
            start: 4,
            recovered: false
        }
    );
    assert_eq!(e.resume(B, 0, 4, 1000, now, &mut out), None);
}

#[test]
fn leaving_drops_what_was_held() {
    let (mut e, now, mut out) = (engine(), Instant::now(), Vec::new());
    e.offer(m(A, 2), true, now, &mut out);
    assert!(e.leave(A));
    assert!(!e.follows(A));
    e.offer(m(A, 1), true, now, &mut out);
    e.tick(now + WAIT, &mut out);
    assert!(out.is_empty());
    assert!(e.join(A, 7));
    assert!(!e.join(A, 9));
    assert_eq!(e.delivered(A), Some(7));
}

/// One step of a channel's life as a connection sees it.
#[derive(Debug, Clone)]
enum Step {
    /// Message `n` (1-based, taken modulo what is committed) arrives through pub/sub.
    Arrive(u64),
    /// An edit of message `n` arrives.
    Edit(u64),
    /// Time passes and the gap timer fires.
    Tick(u64),
    /// The connection missed events: messaging's last seq is read again.
    Overflow,
    /// The next history fetch fails.
    FailNextFetch,
    /// One more message is committed (its event may or may not arrive later).
    Commit,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1..64u64).prop_map(Step::Arrive),
        1 => (1..64u64).prop_map(Step::Edit),
        3 => (0..400u64).prop_map(Step::Tick),
        1 => Just(Step::Overflow),
        1 => Just(Step::FailNextFetch),
        4 => Just(Step::Commit),
    ]
}

/// Runs the engine's actions against a history of 1..=committed (pages of `limit`).
fn run(
    e: &mut Engine<M>,
    mut out: Vec<Action<M>>,
    committed: u64,
    limit: u64,
    fail: &mut bool,
    now: Instant,
    seen: &mut Vec<u64>,
) {
    let mut queue: std::collections::VecDeque<Action<M>> = out.drain(..).collect();
    while let Some(a) = queue.pop_front() {
        match a {
            Action::Deliver { message, .. } => seen.push(message.seq),
            Action::Forward { message, .. } => {
                assert!(seen.contains(&message.seq), "a change of an unseen message");
            }
            Action::Fetch { channel, after } => {
                let mut next = Vec::new();
                if std::mem::take(fail) {
                    e.fetch_failed(&channel, now);
                } else {
                    let (msgs, more) = page(after, committed, limit);
                    e.page(&channel, msgs, more, now, &mut next);
                }
                for a in next.into_iter().rev() {
                    queue.push_front(a);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Whatever pub/sub does (reorder, repeat, lose), and whatever history fetches do
    /// (fail, come in small pages), a channel's messages 1..=N reach the client exactly once
    /// each, in order.
    #[test]
    fn delivers_every_message_once_in_order(
        steps in prop::collection::vec(step(), 0..120),
        limit in 1..6u64,
        max_held in 1..8usize,
        hold in any::<bool>(),
    ) {
        let start = Instant::now();
        let mut now = start;
        let mut e: Engine<M> = Engine::new(max_held, WAIT);
        e.join(A, 0);
        if hold {
            e.hold(now + WAIT);
        }
        let (mut committed, mut fail, mut seen) = (0u64, false, Vec::new());
        // The highest seq whose event (or catch-up) reached the engine.
        let mut known = 0;
        for s in steps {
            let mut out = Vec::new();
            match s {
                Step::Commit => committed += 1,
                Step::Arrive(n) if committed > 0 => {
                    let seq = (n - 1) % committed + 1;
                    known = known.max(seq);
                    e.offer(m(A, seq), true, now, &mut out);
                }
                Step::Edit(n) if committed > 0 => {
                    let msg = M { version: 1, ..m(A, (n - 1) % committed + 1) };
                    e.changed(Change::Updated, msg, now, &mut out);
                }
                Step::Arrive(_) | Step::Edit(_) => {}
                Step::Tick(ms) => {
                    now += Duration::from_millis(ms);
                    e.tick(now, &mut out);
                }
                Step::Overflow => {
                    known = committed;
                    e.last_seq(A, committed, now, &mut out);
                }
                Step::FailNextFetch => fail = true,
            }
            run(&mut e, out, committed, limit, &mut fail, now, &mut seen);
        }
        // When the last message's event never came, the connection learns of it from a
        // catch-up; then the gap timer alone must get everything out.
        if known < committed {
            let mut out = Vec::new();
            e.last_seq(A, committed, now, &mut out);
            run(&mut e, out, committed, limit, &mut fail, now, &mut seen);
        }
        let mut rounds = 0;
        while e.needs_timer() {
            now += WAIT;
            let mut out = Vec::new();
            e.tick(now, &mut out);
            run(&mut e, out, committed, limit, &mut fail, now, &mut seen);
            rounds += 1;
            prop_assert!(rounds < 1000, "the engine never settles");
        }
        let want: Vec<u64> = (1..=committed).collect();
        prop_assert_eq!(&seen, &want);
        prop_assert_eq!(e.delivered(A), Some(committed));
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        prop_assert_eq!(unique.len(), seen.len());
    }
}
