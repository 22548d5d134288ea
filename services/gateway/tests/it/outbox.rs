//! The transactional outbox: a message committed but never published (a crash between
//! commit and publish) is published by the sweeper of any messaging replica.

use parley_testkit::{Client, Stack, Ws};

use crate::{LONG, QUIET, T, message_seqs, wait_for};

async fn outbox_rows(stack: &Stack) -> anyhow::Result<i64> {
    stack
        .query_i64("SELECT count(*) FROM messaging.outbox")
        .await
}

#[tokio::test]
async fn sweeper_publishes_what_a_crash_left_behind() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    // Replica A commits but never publishes, and does not sweep.
    stack
        .add_messaging(&[
            ("PARLEY__OUTBOX__PUBLISH_INLINE", "false"),
            ("PARLEY__OUTBOX__SWEEP_ENABLED", "false"),
        ])
        .await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("outbox", &["bob"]).await?;
    // Two member_joined events wait in the outbox.
    assert_eq!(outbox_rows(&stack).await?, 2);
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;

    let (s, m, _) = alice.post_message(&ch, "m1", "durable").await?;
    assert_eq!(s, 201, "{m}");
    assert_eq!(m["seq"], 1);

    // Committed (history has it) but not published: no live frame. No marker can tell
    // (nothing publishes while A is the only replica), so this one waits.
    let quiet = bob.frames_for(QUIET).await?;
    assert!(
        quiet.iter().all(|f| f["type"] != "message"),
        "published although inline publishing is off: {quiet:?}"
    );
    assert_eq!(outbox_rows(&stack).await?, 3);
    assert_eq!(
        alice.history(&ch, "").await?["messages"][0]["body"],
        "durable"
    );

    // Replica B sweeps: bob gets the message live, and the outbox empties.
    stack.add_messaging(&[]).await?;
    let mut frames = bob.until(LONG, |f| f["type"] == "message").await?;
    let got = frames.last().expect("message")["message"].clone();
    assert_eq!(got, m, "the swept event is the committed message");
    wait_for(LONG, "an empty outbox", || outbox_rows(&stack), |n| *n == 0).await?;

    // A still never publishes; B keeps sweeping new rows.
    alice.send(&ch, "m2", "also durable").await?;
    frames.extend(
        bob.until(LONG, |f| f["type"] == "message" && f["message"]["seq"] == 2)
            .await?,
    );
    frames.extend(bob.barrier(&alice, &ch, LONG).await?);
    assert_eq!(
        message_seqs(&frames, &ch),
        vec![1, 2],
        "each message once: {frames:?}"
    );
    wait_for(T, "an empty outbox", || outbox_rows(&stack), |n| *n == 0).await?;
    Ok(())
}

#[tokio::test]
async fn inline_publishing_clears_the_outbox() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    // No sweeper at all: only the inline publisher can empty the outbox.
    stack
        .add_messaging(&[("PARLEY__OUTBOX__SWEEP_ENABLED", "false")])
        .await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("inline", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    alice.send(&ch, "m1", "fast path").await?;
    assert_eq!(bob.messages(1, T).await?[0]["body"], "fast path");
    wait_for(T, "an empty outbox", || outbox_rows(&stack), |n| *n == 0).await?;
    Ok(())
}
