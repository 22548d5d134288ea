//! Restarts of dependencies: nothing acknowledged is lost, and live delivery resumes in
//! order once the dependency is back.

use parley_testkit::{Client, PrivateRedis, Stack, Ws};

use crate::{LONG, T, message_seqs, wait_for};

#[tokio::test]
async fn redis_restart_loses_nothing() -> anyhow::Result<()> {
    let Some(mut redis) = PrivateRedis::start().await? else {
        eprintln!("redis-server is not installed: skipping the Redis restart test");
        return Ok(());
    };
    let mut stack = Stack::empty().await?;
    stack.redis_url = redis.url();
    stack.add_messaging(&[]).await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("restart", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    alice.send(&ch, "m1", "before").await?;
    assert_eq!(bob.messages(1, T).await?[0]["seq"], 1);

    // Redis dies (and comes back empty). A send meanwhile is still committed and answered.
    redis.stop();
    let (s, m2, _) = alice.post_message(&ch, "m2", "while redis is down").await?;
    assert_eq!(s, 201, "{m2}");
    assert_eq!(m2["seq"], 2);
    redis.restart().await?;

    // Bob gets it live once pub/sub is back (gateway catch-up or outbox sweeper), then
    // new messages as usual, each exactly once and in order.
    let mut frames = bob.until(LONG, |f| f["type"] == "message").await?;
    alice.send(&ch, "m3", "after").await?;
    frames.extend(
        bob.until(LONG, |f| f["type"] == "message" && f["message"]["seq"] == 3)
            .await?,
    );
    // The outbox row left by the failed publish is swept (published again).
    wait_for(
        LONG,
        "an empty outbox",
        || stack.query_i64("SELECT count(*) FROM messaging.outbox"),
        |n| *n == 0,
    )
    .await?;
    // And a new connection works normally. Its message (seq 4) is also bob's barrier:
    // whatever was published before it, the swept copy of m2 included, reached bob first.
    let mut alice_ws = Ws::connect(&stack.url(0), "alice").await?;
    alice.send(&ch, "m4", "fresh").await?;
    frames.extend(
        bob.before(LONG, |f| f["type"] == "message" && f["message"]["seq"] == 4)
            .await?,
    );
    assert_eq!(message_seqs(&frames, &ch), vec![2, 3], "{frames:?}");
    let got = frames
        .iter()
        .find(|f| f["type"] == "message")
        .expect("message");
    assert_eq!(got["message"], m2);
    assert_eq!(alice_ws.messages(1, T).await?[0]["seq"], 4);
    Ok(())
}
