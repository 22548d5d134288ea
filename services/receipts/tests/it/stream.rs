//! The projection is idempotent under redelivery, replay and reordering, and takes over
//! what a dead consumer left pending.

use std::collections::BTreeMap;

use parley_proto::receipts::v1 as pb;
use redis::streams::StreamRangeReply;

use crate::{Env, messaging_only, spawn};

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

/// Everything receipts answers about these users and channels (updated_at included: a
/// replay must not even rewrite a row).
async fn snapshot(
    env: &Env,
    channels: &[String],
) -> anyhow::Result<(Vec<BTreeMap<String, u64>>, Vec<Vec<pb::Receipt>>)> {
    let mut unread = Vec::new();
    for u in USERS {
        unread.push(env.unread(u).await?);
    }
    let mut receipts = Vec::new();
    for ch in channels {
        receipts.push(env.receipts_of("alice", ch).await?);
    }
    Ok((unread, receipts))
}

#[tokio::test]
async fn redelivery_reordering_and_replay_change_nothing() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let a = env.group("alice", &["bob", "carol"]).await?;
    let b = env.group("alice", &["dave"]).await?;
    for i in 0..6 {
        env.send(if i % 2 == 0 { "alice" } else { "bob" }, &a)
            .await?;
        env.send("dave", &b).await?;
    }
    // carol leaves and comes back, dave joins a: membership order matters here.
    env.remove_member("carol", &a, "carol").await?;
    env.send("alice", &a).await?;
    env.add_member("alice", &a, "carol").await?;
    env.add_member("alice", &a, "dave").await?;
    env.send("bob", &a).await?;
    env.mark_read("bob", &a, 3).await?;
    env.mark_read("alice", &b, 4).await?;
    env.wait_consumed().await?;
    let channels = vec![a.clone(), b.clone()];
    let before = snapshot(&env, &channels).await?;
    assert_eq!(
        before.0[2],
        BTreeMap::from([(a.clone(), 1)]),
        "carol: only what came after her rejoin"
    );

    // 1. Redelivery, in reverse order: every event again, newest first.
    let mut r = env.redis().await?;
    let key = env.stream_key();
    let all: StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut r)
        .await?;
    assert!(
        all.ids.len() > 20,
        "expected the whole history on the stream"
    );
    for e in all.ids.iter().rev() {
        let payload: Vec<u8> = e.get("event").expect("event field");
        let _: String = redis::cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event")
            .arg(payload)
            .query_async(&mut r)
            .await?;
    }
    env.wait_consumed().await?;
    assert_eq!(
        snapshot(&env, &channels).await?,
        before,
        "after redelivering everything in reverse"
    );

    // 2. Replay: the group starts over from the beginning of the stream.
    let _: () = redis::cmd("XGROUP")
        .arg("SETID")
        .arg(&key)
        .arg("receipts")
        .arg("0")
        .query_async(&mut r)
        .await?;
    env.wait_consumed().await?;
    assert_eq!(
        snapshot(&env, &channels).await?,
        before,
        "after replaying the stream"
    );
    Ok(())
}

#[tokio::test]
async fn entries_left_pending_by_a_dead_consumer_are_claimed() -> anyhow::Result<()> {
    let mut env = messaging_only().await?;
    let mut r = env.redis().await?;
    let key = env.stream_key();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("receipts")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut r)
        .await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..3 {
        env.send("alice", &ch).await?;
    }
    // A consumer takes everything and dies without acknowledging.
    let taken: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("receipts")
        .arg("dead")
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query_async(&mut r)
        .await?;
    assert_eq!(
        taken.keys.iter().map(|k| k.ids.len()).sum::<usize>(),
        5,
        "2 joins + 3 messages"
    );

    env.start_receipts(&[
        ("PARLEY__CONSUMER__CLAIM_IDLE_MS", "300"),
        ("PARLEY__CONSUMER__CLAIM_INTERVAL_MS", "100"),
    ])
    .await?;
    env.wait_unread("bob", &BTreeMap::from([(ch.clone(), 3)]))
        .await?;
    env.wait_consumed().await?;
    Ok(())
}
