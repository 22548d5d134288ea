//! Crashes: a consumer that read events but never acknowledged them, rows recorded but not
//! sent, and events replayed after they were pushed.

use redis::streams::StreamRangeReply;

use parley_testkit::wait_for;

use crate::{PATIENCE, env, pushed_messages};

/// Pending entries of the notification group (read, never acknowledged).
async fn pending(env: &crate::Env) -> anyhow::Result<usize> {
    let mut r = env.stack.redis().await?;
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(env.stream_key())
        .query_async(&mut r)
        .await?;
    Ok(groups
        .groups
        .iter()
        .find(|g| g.name == "notification")
        .map_or(0, |g| g.pending))
}

#[tokio::test]
async fn a_consumer_stopped_before_acknowledging_loses_nothing() -> anyhow::Result<()> {
    let mut env = env().await?;
    // Instance A reads the events but cannot finish them (presence is unreachable), so it
    // never acknowledges them; then it stops.
    let a = env
        .start(&[
            ("PARLEY__CONSUMER__NAME", "a"),
            ("PARLEY__PRESENCE__URL", "http://127.0.0.1:1"),
            ("PARLEY__PRESENCE__CONNECT_TIMEOUT_MS", "200"),
        ])
        .await?;
    env.notification = Some(a);
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(env.send("alice", &ch, &format!("m{i}")).await?);
    }
    // The consumer retries its first failing batch, so at least that batch is pending.
    wait_for(
        PATIENCE,
        "A read the events (pending entries)",
        || pending(&env),
        |n| *n >= 1,
    )
    .await?;
    env.notification.take().expect("A").stop().await?;
    assert!(env.receiver.seen("/hook/bob").is_empty());
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries")
            .await?,
        0
    );

    // Instance B (another consumer name) claims what A left and pushes each message once.
    let b = env
        .start(&[
            ("PARLEY__CONSUMER__NAME", "b"),
            ("PARLEY__CONSUMER__CLAIM_IDLE_MS", "300"),
            ("PARLEY__CONSUMER__CLAIM_INTERVAL_MS", "200"),
        ])
        .await?;
    env.notification = Some(b);
    env.wait_settled().await?;
    // What B claimed went out together (coalesced) or one by one; either way each message
    // exactly once.
    let mut pushed = pushed_messages(&env.receiver.wait("/hook/bob", 1).await?);
    pushed.sort();
    let mut want = sent;
    want.sort();
    assert_eq!(pushed, want, "no loss, no duplicate");
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries WHERE status = 'sent'")
            .await?,
        3
    );
    Ok(())
}

#[tokio::test]
async fn recorded_rows_survive_a_stop_and_replays_never_push_twice() -> anyhow::Result<()> {
    let mut env = env().await?;
    // A records the deliveries and acknowledges the events, but sends nothing.
    let a = env.start(&[("PARLEY__DELIVERY__ENABLED", "false")]).await?;
    env.notification = Some(a);
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    env.send("alice", &ch, "keep me").await?;
    env.wait_consumed().await?;
    env.wait_count(
        "SELECT count(*) FROM notification.deliveries WHERE status = 'pending'",
        1,
    )
    .await?;
    env.notification.take().expect("A").stop().await?;

    // B's workers pick the pending row up.
    let b = env.start(&[]).await?;
    env.notification = Some(b);
    env.wait_settled().await?;
    assert_eq!(env.receiver.wait("/hook/bob", 1).await?.len(), 1);

    // The events come again (as after a crash between sending and XACK, or an outbox
    // republish): the delivery log already has the row, nothing is pushed again.
    let mut r = env.stack.redis().await?;
    let all: StreamRangeReply = redis::cmd("XRANGE")
        .arg(env.stream_key())
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await?;
    for e in &all.ids {
        let payload: Vec<u8> = e.get("event").expect("event field");
        let _: String = redis::cmd("XADD")
            .arg(env.stream_key())
            .arg("*")
            .arg("event")
            .arg(payload)
            .query_async(&mut r)
            .await?;
    }
    env.wait_settled().await?;
    assert_eq!(
        env.receiver.seen("/hook/bob").len(),
        1,
        "pushed exactly once"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries")
            .await?,
        1
    );
    Ok(())
}
