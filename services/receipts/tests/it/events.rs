//! Receipt changes go out on Redis pub/sub, coalesced per member.

use std::time::Instant;

use futures::StreamExt as _;
use parley_proto::receipts::v1 as pb;
use prost::Message as _;

use crate::{PATIENCE, spawn};

#[tokio::test]
async fn receipt_changes_are_published_and_coalesced() -> anyhow::Result<()> {
    const WINDOW_MS: u64 = 1000;
    let window = WINDOW_MS.to_string();
    let env = spawn(&[("PARLEY__PUBLISH__COALESCE_MS", window.as_str())]).await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for _ in 0..50 {
        env.send("alice", &ch).await?;
    }
    env.wait_consumed().await?;

    let client = redis::Client::open(env.stack.redis_url.as_str())?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub
        .subscribe(format!("{}receipts:channel:{ch}", env.stack.prefix))
        .await?;
    let mut events = pubsub.into_on_message();
    let mut next = async || -> anyhow::Result<pb::ReceiptChanged> {
        let msg = tokio::time::timeout(PATIENCE, events.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("pub/sub closed"))?;
        Ok(pb::ReceiptChanged::decode(msg.get_payload_bytes())?)
    };

    // A reader scrolling through 50 messages, one mark per message.
    let started = Instant::now();
    for seq in 1..=50 {
        assert!(env.mark_read("bob", &ch, seq).await?.changed);
    }
    let elapsed = started.elapsed();
    let mut bob = Vec::new();
    loop {
        let e = next().await?;
        // Alice's own-message receipts were published before we subscribed, but a late one
        // would be harmless: only bob's are counted.
        if e.user_id == "bob" {
            assert_eq!(e.channel_id, ch);
            let done = e.read_seq == 50;
            bob.push(e);
            if done {
                break;
            }
        }
    }
    // At most one publish per window, plus the first one at once (and one for a window
    // boundary): with the marks done within a window or two, that is 2-3 instead of 50.
    let bound = 2 + (elapsed.as_millis() as u64) / WINDOW_MS;
    assert!(
        bob.len() as u64 <= bound,
        "{} publishes for 50 marks in {elapsed:?}",
        bob.len()
    );
    assert!(
        bob.windows(2).all(|w| w[0].read_seq <= w[1].read_seq),
        "watermarks only grow"
    );
    let last = bob.last().expect("at least one");
    assert_eq!((last.delivered_seq, last.read_seq), (50, 50));
    assert!(uuid::Uuid::parse_str(&last.event_id).is_ok());
    assert!(last.occurred_at.is_some());

    // A call that changes nothing publishes nothing: after bob's no-op, the next event on
    // the topic is carol's.
    assert!(!env.mark_read("bob", &ch, 10).await?.changed);
    assert!(env.mark_delivered("carol", &ch, 5).await?.changed);
    let e = loop {
        let e = next().await?;
        if e.user_id != "alice" {
            break e;
        }
    };
    assert_eq!(
        (e.user_id.as_str(), e.delivered_seq, e.read_seq),
        ("carol", 5, 0)
    );
    Ok(())
}
