//! Group commit: sends that queue up behind a busy transaction are written together, and
//! each still gets exactly the answer it would have got alone.

use std::time::Duration;

use parley_kit::ErrorCode;
use parley_proto::messaging::v1 as pb;
use parley_testkit::Stack;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::{Svc, all_messages, assert_code, client, group, send};

/// The value of an unlabelled metric in this process's `/metrics` text.
pub fn metric(name: &str) -> f64 {
    parley_kit::metrics::handle()
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Waits until `n` sends are queued (the dispatcher is blocked, so the count only grows).
pub async fn queued(n: f64) -> anyhow::Result<()> {
    for _ in 0..500 {
        if metric("messaging_send_queue_depth") == n {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!(
        "expected {n} queued sends, gauge says {}",
        metric("messaging_send_queue_depth")
    )
}

type Pending = JoinHandle<Result<pb::SendMessageResponse, Status>>;

pub fn spawn_send(svc: &Svc, user: &str, channel: &str, cid: &str, body: &str) -> Pending {
    let (mut svc, user, channel, cid, body) = (
        svc.clone(),
        user.to_owned(),
        channel.to_owned(),
        cid.to_owned(),
        body.to_owned(),
    );
    tokio::spawn(async move { send(&mut svc, &user, &channel, &cid, &body).await })
}

/// A stack whose messaging writes with one lane and never refuses a send for waiting (the
/// tests hold a channel lock for a while), and a client to it.
pub async fn one_patient_lane() -> anyhow::Result<(Stack, Svc)> {
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "60000"),
        ])
        .await?;
    let svc = client(addr).await?;
    Ok((stack, svc))
}

fn msg(r: &pb::SendMessageResponse) -> &pb::Message {
    r.message.as_ref().expect("a message")
}

#[tokio::test]
async fn queued_sends_share_one_transaction_and_keep_their_own_outcomes() -> anyhow::Result<()> {
    let (stack, mut svc) = one_patient_lane().await?;
    let a = group(&mut svc, "alice", &["bob"]).await?;
    let b = group(&mut svc, "alice", &["bob"]).await?;
    let c = group(&mut svc, "carol", &[]).await?;
    let old = send(&mut svc, "alice", &b, "old", "sent earlier").await?;
    let batches_before = metric("messaging_send_batch_size_count");
    assert_eq!(batches_before, 1.0);

    // Hold channel A's row lock: the only send slot blocks on it, the rest must queue.
    let lock = stack.lock_channel(&a).await?;
    let blocker = spawn_send(&svc, "alice", &a, "blocker", "first in A");
    // The blocker's transaction waits for the lock before the others arrive.
    crate::overload::wait_blocked(&stack).await?;
    let missing = uuid::Uuid::new_v4().to_string();
    let plan: [(&str, &str, &str, &str); 7] = [
        ("alice", &b, "old", "retry of an earlier send"),
        ("alice", &b, "n1", "alice's n1"),
        ("bob", &b, "n1", "bob's n1"),
        ("alice", &b, "n1", "retry inside the batch"),
        ("alice", &c, "x", "not a member"),
        ("alice", &missing, "y", "no such channel"),
        ("bob", &a, "after", "second in A"),
    ];
    let mut queued_sends = Vec::new();
    for (i, (user, ch, cid, body)) in plan.iter().enumerate() {
        queued_sends.push(spawn_send(&svc, user, ch, cid, body));
        queued((i + 1) as f64).await?;
    }
    lock.commit().await?;

    let first = blocker.await??;
    assert!(first.created);
    assert_eq!(msg(&first).seq, 1);
    let mut r = Vec::new();
    for h in queued_sends {
        r.push(h.await?);
    }
    // One transaction for the blocker, one for the seven queued behind it.
    assert_eq!(
        metric("messaging_send_batch_size_count") - batches_before,
        2.0
    );
    assert_eq!(metric("messaging_send_batch_size_sum"), 1.0 + 1.0 + 7.0);

    let retry = r[0].as_ref().map_err(Clone::clone)?;
    assert!(!retry.created);
    assert_eq!(msg(retry), msg(&old), "a retry returns the original");
    let alice_n1 = r[1].as_ref().map_err(Clone::clone)?;
    assert!(alice_n1.created);
    assert_eq!(msg(alice_n1).seq, 2);
    let bob_n1 = r[2].as_ref().map_err(Clone::clone)?;
    assert!(bob_n1.created);
    assert_eq!(msg(bob_n1).seq, 3, "client_msg_id is per sender");
    let again = r[3].as_ref().map_err(Clone::clone)?;
    assert!(!again.created);
    assert_eq!(
        msg(again),
        msg(alice_n1),
        "a retry in the same batch gets the first"
    );
    assert_code(
        r[4].as_ref().expect_err("not a member"),
        ErrorCode::PermissionDenied,
    );
    assert_code(r[5].as_ref().expect_err("missing"), ErrorCode::NotFound);
    let second_a = r[6].as_ref().map_err(Clone::clone)?;
    assert!(second_a.created);
    assert_eq!(msg(second_a).seq, 2);

    let history: Vec<(u64, String)> = all_messages(&mut svc, "bob", &b)
        .await?
        .into_iter()
        .map(|m| (m.seq, m.body))
        .collect();
    assert_eq!(
        history,
        vec![
            (1, "sent earlier".to_owned()),
            (2, "alice's n1".to_owned()),
            (3, "bob's n1".to_owned()),
        ]
    );
    assert_eq!(
        stack
            .query_i64("SELECT last_seq FROM messaging.channels ORDER BY last_seq DESC LIMIT 1")
            .await?,
        3
    );
    // Every event was published and its outbox row cleared.
    for _ in 0..100 {
        if stack
            .query_i64("SELECT count(*) FROM messaging.outbox")
            .await?
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        stack
            .query_i64("SELECT count(*) FROM messaging.outbox")
            .await?,
        0
    );
    Ok(())
}

fn item(user: &str, channel: &str, cid: &str, body: &str) -> pb::SendMessagesItem {
    pb::SendMessagesItem {
        user_id: user.to_owned(),
        send: Some(pb::SendMessageRequest {
            attachment_ids: Vec::new(),
            channel_id: channel.to_owned(),
            client_msg_id: cid.to_owned(),
            body: body.to_owned(),
        }),
        trace_context: Default::default(),
    }
}

/// `SendMessages` answers every item as `SendMessage` would have, in the items' order,
/// for each item's own caller; a failing item leaves the others alone.
#[tokio::test]
async fn send_messages_answers_each_item_like_send_message() -> anyhow::Result<()> {
    use pb::send_messages_result::Outcome;
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[("PARLEY__LIMITS__MAX_SEND_ITEMS", "8")])
        .await?;
    let mut svc = client(addr).await?;
    let a = group(&mut svc, "alice", &["bob"]).await?;
    let earlier = send(&mut svc, "bob", &a, "b0", "sent alone").await?;

    let items = vec![
        item("alice", &a, "a1", "first"),
        item("bob", &a, "b0", "a retry: the original comes back"),
        item("carol", &a, "c1", "not a member"),
        item("alice", &a, "a2", ""),
        item("", &a, "x1", "no caller"),
        item("bob", &a, "b1", "second"),
    ];
    let results = svc
        .send_messages(pb::SendMessagesRequest { items })
        .await?
        .into_inner()
        .results;
    assert_eq!(results.len(), 6);
    let sent = |i: usize| match &results[i].outcome {
        Some(Outcome::Sent(s)) => s.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    let failed = |i: usize| match &results[i].outcome {
        Some(Outcome::Error(e)) => e.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    let (first, retry, second) = (sent(0), sent(1), sent(5));
    assert!(first.created && second.created && !retry.created);
    assert_eq!(msg(&first).sender_id, "alice");
    assert_eq!(msg(&second).sender_id, "bob");
    assert_eq!(msg(&retry), msg(&earlier));
    let mut seqs = [msg(&first).seq, msg(&second).seq];
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 3]);
    for (i, code) in [
        (2, ErrorCode::PermissionDenied),
        (3, ErrorCode::InvalidArgument),
        (4, ErrorCode::Unauthenticated),
    ] {
        let e = failed(i);
        assert_eq!(e.code, code.grpc_code() as i32, "item {i}: {e:?}");
        assert_eq!(e.error_code, code.as_str(), "item {i}: {e:?}");
        assert!(!e.message.is_empty());
    }
    // Item outcomes are counted by code (the SendMessages call itself succeeded).
    assert_eq!(metric("messaging_send_items_total{code=\"Ok\"}"), 3.0);
    for code in ["PermissionDenied", "InvalidArgument", "Unauthenticated"] {
        assert_eq!(
            metric(&format!("messaging_send_items_total{{code=\"{code}\"}}")),
            1.0,
            "{code}"
        );
    }
    let bodies: Vec<String> = all_messages(&mut svc, "alice", &a)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies.len(), 3, "{bodies:?}");

    // More items than limits.max_send_items: the whole call is refused, nothing written.
    let items = (0..9)
        .map(|i| item("alice", &a, &format!("many{i}"), "x"))
        .collect();
    let err = svc
        .send_messages(pb::SendMessagesRequest { items })
        .await
        .expect_err("too many items");
    assert_code(&err, ErrorCode::InvalidArgument);
    assert_eq!(all_messages(&mut svc, "alice", &a).await?.len(), 3);
    Ok(())
}

/// A replica that knows a channel's counter writes its sends in one statement; when
/// another replica (or a membership change) moved the channel meanwhile, that statement
/// writes nothing and the transaction decides: seqs stay gapless and every answer right.
#[tokio::test]
async fn the_one_statement_send_falls_back_when_the_channel_moved() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let one = stack.add_messaging(&[]).await?;
    let two = stack.add_messaging(&[]).await?;
    let (mut a, mut b) = (client(one).await?, client(two).await?);
    let ch = group(&mut a, "alice", &["bob"]).await?;
    let fast = || metric("messaging_send_batches_total{path=\"fast\"}");
    let slow = || metric("messaging_send_batches_total{path=\"transaction\"}");

    // Replica one learns the counter (transaction), then sends on it in one statement.
    send(&mut a, "alice", &ch, "a1", "1").await?;
    let (fast0, slow0) = (fast(), slow());
    let a2 = send(&mut a, "alice", &ch, "a2", "2").await?;
    assert_eq!((fast() - fast0, slow() - slow0), (1.0, 0.0));
    // The answer is exactly what was stored (the time too: the database keeps µs).
    let stored = all_messages(&mut b, "bob", &ch).await?;
    assert_eq!(Some(msg(&a2)), stored.iter().find(|m| m.seq == 2));
    // Replica two sends: one's knowledge is stale; its next send falls back, and is right.
    send(&mut b, "bob", &ch, "b1", "3").await?;
    let (fast0, slow0) = (fast(), slow());
    let r = send(&mut a, "alice", &ch, "a3", "4").await?;
    assert_eq!(msg(&r).seq, 4);
    // Both replicas run in this process: replica two's send counted once (transaction),
    // replica one's stale attempt falls back: no fast batch succeeded.
    assert_eq!(fast() - fast0, 0.0);
    assert_eq!(slow() - slow0, 1.0);
    // A retry of an earlier send, a non-member and a membership change: all fall back.
    let again = send(&mut a, "alice", &ch, "a1", "retried").await?;
    assert!(!again.created);
    assert_eq!(msg(&again).seq, 1);
    let err = send(&mut a, "carol", &ch, "c1", "not a member")
        .await
        .expect_err("not a member");
    assert_code(&err, ErrorCode::PermissionDenied);
    let r = send(&mut a, "alice", &ch, "a4", "5").await?;
    assert_eq!(msg(&r).seq, 5);

    let seqs: Vec<u64> = all_messages(&mut b, "bob", &ch)
        .await?
        .into_iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    Ok(())
}
