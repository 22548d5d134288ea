//! Idempotency: a send retried with the same `client_msg_id` by the same sender in the
//! same channel yields the same message (same id, same seq), never two.

use std::collections::HashSet;

use futures::future::join_all;
use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{T, message_seqs, seqs};

#[tokio::test]
async fn rest_retry_returns_the_original() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("retry", &["bob"]).await?;

    let (s1, first, _) = alice.post_message(&ch, "c-1", "hello").await?;
    assert_eq!(s1, 201, "{first}");
    assert_eq!(first["seq"], 1);
    assert_eq!(first["body"], "hello");
    assert_eq!(first["client_msg_id"], "c-1");

    let (s2, retry, _) = alice.post_message(&ch, "c-1", "hello").await?;
    assert_eq!(s2, 200, "{retry}");
    assert_eq!(
        retry, first,
        "a retry returns the original message unchanged"
    );

    // Even with another body, the retry is the original message.
    let (s3, other_body, _) = alice.post_message(&ch, "c-1", "a different body").await?;
    assert_eq!(s3, 200);
    assert_eq!(other_body, first);

    // The key is per sender: bob's "c-1" is a new message.
    let (s4, bobs, _) = bob.post_message(&ch, "c-1", "bob's").await?;
    assert_eq!(s4, 201, "{bobs}");
    assert_eq!(bobs["seq"], 2);
    assert_ne!(bobs["id"], first["id"]);

    let page = alice.history(&ch, "").await?;
    let msgs = page["messages"].as_array().expect("messages");
    assert_eq!(seqs(msgs), vec![2, 1]);
    assert_eq!(msgs[1]["body"], "hello");
    assert_eq!(alice.channel(&ch).await?["last_seq"], 2);
    Ok(())
}

#[tokio::test]
async fn websocket_retry_is_sent_twice_but_delivered_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("ws-retry", &["bob", "carol"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    let mut carol = Ws::connect(&stack.url(0), "carol").await?;

    let send = |r: u64| json!({"type": "send", "ref": r, "channel_id": ch, "client_msg_id": "w-1", "body": "once"});
    a.send(send(1)).await?;
    // Wait for the first reply so that the second send is a retry, not a race.
    let mut own = a.until(T, |f| f["type"] == "sent").await?;
    let first = own.last().cloned().expect("sent");
    a.send(send(2)).await?;
    let more = a.until(T, |f| f["type"] == "sent").await?;
    let second = more.last().cloned().expect("sent");
    own.extend(more);
    assert_eq!(first["ref"], 1);
    assert_eq!(second["ref"], 2);
    assert_eq!(first["message"]["seq"], 1);
    assert_eq!(second["message"]["id"], first["message"]["id"]);
    assert_eq!(second["message"]["seq"], first["message"]["seq"]);
    assert_eq!(second["message"]["body"], "once");

    // A marker after the retried message: carol must see seq 1 once, then the marker.
    alice.send(&ch, "marker", "marker").await?;
    let frames = carol
        .until(T, |f| f["type"] == "message" && f["message"]["seq"] == 2)
        .await?;
    assert_eq!(message_seqs(&frames, &ch), vec![1, 2], "frames: {frames:?}");
    let one: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "message" && f["message"]["seq"] == 1)
        .collect();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["message"]["id"], first["message"]["id"]);
    assert_eq!(one[0]["message"]["body"], "once");

    // The sender's own connection also gets the message exactly once.
    own.extend(
        a.until(T, |f| f["type"] == "message" && f["message"]["seq"] == 2)
            .await?,
    );
    assert_eq!(message_seqs(&own, &ch), vec![1, 2], "frames: {own:?}");
    Ok(())
}

#[tokio::test]
async fn concurrent_retries_make_one_message() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("race", &["bob"]).await?;

    let replies = join_all((0..10).map(|i| {
        let alice = alice.clone();
        let ch = ch.clone();
        async move {
            alice
                .post_message(&ch, "same-key", &format!("attempt {i}"))
                .await
        }
    }))
    .await;
    let mut created = 0;
    let mut ids = HashSet::new();
    let mut bodies = HashSet::new();
    for r in replies {
        let (s, b, _) = r?;
        match s {
            201 => created += 1,
            200 => {}
            other => panic!("unexpected status {other}: {b}"),
        }
        assert_eq!(b["seq"], 1, "{b}");
        ids.insert(b["id"].as_str().expect("id").to_owned());
        bodies.insert(b["body"].as_str().expect("body").to_owned());
    }
    assert_eq!(created, 1, "exactly one send creates the message");
    assert_eq!(ids.len(), 1, "every retry returns the same message");
    assert_eq!(bodies.len(), 1);

    let page = alice.history(&ch, "").await?;
    assert_eq!(
        seqs(page["messages"].as_array().expect("messages")),
        vec![1]
    );
    assert_eq!(page["has_more"], false);
    // No seq was burnt by the losers: the next message is 2.
    assert_eq!(alice.channel(&ch).await?["last_seq"], 1);
    assert_eq!(alice.send(&ch, "next", "next").await?["seq"], 2);
    Ok(())
}
