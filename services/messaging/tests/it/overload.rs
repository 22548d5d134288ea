//! Admission control of sends: channels are sharded over lanes (a send to one channel never
//! waits for another lane's transaction), and a send that cannot be written soon is refused
//! at once with UNAVAILABLE instead of waiting.

use std::time::Duration;

use parley_kit::ErrorCode;
use parley_testkit::Stack;

use crate::{all_messages, assert_code, batch::metric, batch::spawn_send, client, group, send};

/// Waits until exactly one send transaction waits on a lock (the channel held above).
pub async fn wait_blocked(stack: &Stack) -> anyhow::Result<()> {
    for _ in 0..500 {
        let waiting = stack
            .query_i64(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .await?;
        if waiting == 1 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("no send transaction waits on the channel lock")
}

#[tokio::test]
async fn a_blocked_channel_holds_up_only_its_own_lane() -> anyhow::Result<()> {
    const LANES: usize = 4;
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[
            ("PARLEY__SEND__CONCURRENCY", "4"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "60000"),
        ])
        .await?;
    let mut svc = client(addr).await?;
    let a = group(&mut svc, "alice", &[]).await?;
    let lane_a = parley_messaging::lane_of(a.parse()?, LANES);
    // Channels in every other lane (and one more in A's own lane).
    let mut others = Vec::new();
    let mut same_lane = None;
    while others.len() < LANES - 1 || same_lane.is_none() {
        let c = group(&mut svc, "alice", &[]).await?;
        let lane = parley_messaging::lane_of(c.parse()?, LANES);
        if lane == lane_a {
            same_lane.get_or_insert(c);
        } else if !others.iter().any(|(l, _)| *l == lane) {
            others.push((lane, c));
        }
    }
    let same_lane = same_lane.expect("found above");

    let lock = stack.lock_channel(&a).await?;
    let blocked = spawn_send(&svc, "alice", &a, "a1", "waits for the lock");
    wait_blocked(&stack).await?;
    let behind = spawn_send(
        &svc,
        "alice",
        &same_lane,
        "s1",
        "queued behind A in its lane",
    );
    // Every other lane writes while A's lane waits.
    for (_, c) in &others {
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            send(&mut svc, "alice", c, "o1", "another lane"),
        )
        .await??;
        assert!(sent.created);
    }
    assert!(!blocked.is_finished() && !behind.is_finished());
    lock.commit().await?;
    assert_eq!(blocked.await??.message.expect("message").seq, 1);
    assert_eq!(behind.await??.message.expect("message").seq, 1);
    Ok(())
}

#[tokio::test]
async fn sends_beyond_the_queue_or_the_budget_are_refused_unwritten() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__QUEUE", "2"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "300"),
        ])
        .await?;
    let mut svc = client(addr).await?;
    let a = group(&mut svc, "alice", &["bob"]).await?;
    let b = group(&mut svc, "alice", &["bob"]).await?;
    let full_before = metric("messaging_send_refused_total{reason=\"queue_full\"}");
    let budget_before = metric("messaging_send_refused_total{reason=\"budget\"}");

    let lock = stack.lock_channel(&a).await?;
    let blocker = spawn_send(&svc, "alice", &a, "first", "taken, waits for the lock");
    wait_blocked(&stack).await?;
    // The lane's queue holds two...
    let queued = [
        spawn_send(&svc, "alice", &b, "q1", "queued 1"),
        spawn_send(&svc, "bob", &b, "q2", "queued 2"),
    ];
    crate::batch::queued(2.0).await?;
    // ...the third is refused at once, not queued.
    let err = tokio::time::timeout(
        Duration::from_secs(2),
        send(&mut svc, "alice", &b, "q3", "one too many"),
    )
    .await?
    .expect_err("the queue is full");
    assert_code(&err, ErrorCode::Unavailable);
    assert_eq!(
        metric("messaging_send_refused_total{reason=\"queue_full\"}") - full_before,
        1.0
    );

    // Hold the lane past the budget: the queued sends are refused, not written late.
    tokio::time::sleep(Duration::from_millis(500)).await;
    lock.commit().await?;
    assert_eq!(blocker.await??.message.expect("message").seq, 1);
    for q in queued {
        assert_code(
            &q.await?.expect_err("waited past the budget"),
            ErrorCode::Unavailable,
        );
    }
    assert_eq!(
        metric("messaging_send_refused_total{reason=\"budget\"}") - budget_before,
        2.0
    );
    assert!(all_messages(&mut svc, "bob", &b).await?.is_empty());

    // Nothing was written, so the retries (same client_msg_id) are new sends, in order.
    for (i, (user, cid)) in [("alice", "q1"), ("bob", "q2"), ("alice", "q3")]
        .into_iter()
        .enumerate()
    {
        let sent = send(&mut svc, user, &b, cid, "retried").await?;
        assert!(sent.created);
        assert_eq!(sent.message.expect("message").seq, i as u64 + 1);
    }
    Ok(())
}

/// Makes the database refuse (SQLSTATE 22021, as it does a NUL in text) any message whose
/// body is `poison`: a value that passes the service's validation and fails in the
/// statement, the way one caller's bad input would inside a group-commit batch.
async fn poison_bodies(stack: &Stack) -> anyhow::Result<()> {
    let db = stack.db().await?;
    sqlx::raw_sql(
        "CREATE FUNCTION messaging.test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.body = 'poison' THEN
             RAISE EXCEPTION 'poisoned body' USING ERRCODE = '22021';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER test_poison BEFORE INSERT ON messaging.messages
           FOR EACH ROW EXECUTE FUNCTION messaging.test_poison();",
    )
    .execute(&db)
    .await?;
    Ok(())
}

#[tokio::test]
async fn one_callers_bad_value_fails_only_that_send_of_a_batch() -> anyhow::Result<()> {
    let (stack, mut svc) = crate::batch::one_patient_lane().await?;
    let a = group(&mut svc, "alice", &["bob", "carol"]).await?;
    let b = group(&mut svc, "alice", &["bob"]).await?;
    poison_bodies(&stack).await?;
    let splits_before = metric("messaging_send_batches_split_total");

    // Hold the lane on channel b, so the sends below queue up and go as one batch.
    let lock = stack.lock_channel(&b).await?;
    let blocker = spawn_send(&svc, "alice", &b, "first", "taken, waits for the lock");
    wait_blocked(&stack).await?;
    let good_1 = spawn_send(&svc, "alice", &a, "g1", "good from alice");
    let bad = spawn_send(&svc, "carol", &a, "p1", "poison");
    let good_2 = spawn_send(&svc, "bob", &a, "g2", "good from bob");
    crate::batch::queued(3.0).await?;
    lock.commit().await?;
    assert_eq!(blocker.await??.message.expect("message").seq, 1);

    let err = bad.await?.expect_err("the database refuses the value");
    assert_code(&err, ErrorCode::InvalidArgument);
    assert!(err.message().contains("22021"), "{err:?}");
    let mut seqs = Vec::new();
    for good in [good_1, good_2] {
        let sent = good.await??;
        assert!(sent.created);
        seqs.push(sent.message.expect("message").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2], "the good sends commit with gapless seqs");
    assert_eq!(
        metric("messaging_send_batches_split_total") - splits_before,
        1.0,
        "the batch was written again send by send"
    );
    let history = all_messages(&mut svc, "alice", &a).await?;
    let bodies: Vec<&str> = history.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(history.len(), 2, "{bodies:?}");
    assert!(!bodies.contains(&"poison"));

    // The refused caller's retry is refused the same way; nothing was written for it.
    let again = send(&mut svc, "carol", &a, "p1", "poison").await;
    assert_code(
        &again.expect_err("still refused"),
        ErrorCode::InvalidArgument,
    );
    Ok(())
}
