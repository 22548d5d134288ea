//! Live ordering: a connection receives each channel's messages in strictly increasing seq
//! with no gaps and no duplicates, however concurrently they were sent.

use std::collections::HashSet;

use futures::{StreamExt as _, stream};
use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{LONG, T, message_seqs, seqs};

const SENDERS: [&str; 4] = ["bob", "carol", "dave", "erin"];
const PER_SENDER: usize = 50;
const TOTAL: u64 = (SENDERS.len() * PER_SENDER) as u64;

#[tokio::test]
async fn concurrent_sends_arrive_in_order_without_gaps() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__MESSAGES__N", "0")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("firehose", &SENDERS).await?;
    // A second channel interleaved with the first: ordering is per channel.
    let side = alice.group("side", &SENDERS).await?;
    let mut listener = Ws::connect(&stack.url(0), "alice").await?;

    let senders: Vec<_> = SENDERS
        .iter()
        .map(|u| {
            let client = Client::new(&stack.url(0), u);
            let (ch, side) = (ch.clone(), side.clone());
            tokio::spawn(async move {
                let results: Vec<anyhow::Result<()>> = stream::iter(0..PER_SENDER)
                    .map(|i| {
                        let (client, ch, side) = (client.clone(), ch.clone(), side.clone());
                        async move {
                            client
                                .send(&ch, &format!("m-{i}"), &format!("{} {i}", client.user))
                                .await?;
                            if i % 10 == 0 {
                                client.send(&side, &format!("s-{i}"), "side").await?;
                            }
                            Ok(())
                        }
                    })
                    .buffer_unordered(4)
                    .collect()
                    .await;
                results.into_iter().collect::<anyhow::Result<()>>()
            })
        })
        .collect();

    // Listen while they send.
    let side_total = (SENDERS.len() * PER_SENDER.div_ceil(10)) as u64;
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + LONG;
    while (message_seqs(&frames, &ch).len() as u64) < TOTAL
        || (message_seqs(&frames, &side).len() as u64) < side_total
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match listener.next_frame(left).await? {
            Some(f) => frames.push(f),
            None => panic!(
                "listener stalled after {} + {} messages",
                message_seqs(&frames, &ch).len(),
                message_seqs(&frames, &side).len()
            ),
        }
    }
    for s in senders {
        s.await??;
    }
    // Every send has been answered, so published: nothing more may come before a marker on
    // alice's own topic (not one in `ch`, which would also be in the history compared below).
    frames.extend(listener.joined_barrier(&alice, T).await?);

    assert_eq!(
        message_seqs(&frames, &ch),
        (1..=TOTAL).collect::<Vec<_>>(),
        "strictly increasing, gapless, no duplicate"
    );
    assert_eq!(
        message_seqs(&frames, &side),
        (1..=side_total).collect::<Vec<_>>()
    );
    let bodies: HashSet<&str> = frames
        .iter()
        .filter(|f| f["type"] == "message" && f["message"]["channel_id"] == ch)
        .filter_map(|f| f["message"]["body"].as_str())
        .collect();
    assert_eq!(
        bodies.len() as u64,
        TOTAL,
        "every message is a different one"
    );
    // What the listener saw is exactly history.
    let mut history = Vec::new();
    let mut after = 0;
    loop {
        let page = alice
            .history(&ch, &format!("after={after}&limit=200"))
            .await?;
        let msgs: Vec<Value> = page["messages"].as_array().expect("messages").clone();
        after = seqs(&msgs).last().copied().unwrap_or(after);
        history.extend(msgs);
        if page["has_more"] == false {
            break;
        }
    }
    let live: Vec<Value> = frames
        .iter()
        .filter(|f| f["type"] == "message" && f["message"]["channel_id"] == ch)
        .map(|f| f["message"].clone())
        .collect();
    assert_eq!(live, history);
    Ok(())
}

#[tokio::test]
async fn websocket_sends_from_many_connections_arrive_in_order() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__MESSAGES__N", "0")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("ws-firehose", &["bob", "carol"]).await?;
    let mut listener = Ws::connect(&stack.url(0), "alice").await?;
    let mut socks = vec![
        Ws::connect(&stack.url(0), "bob").await?,
        Ws::connect(&stack.url(0), "carol").await?,
    ];
    // Fire 30 sends from each socket without waiting for replies.
    for (n, s) in socks.iter_mut().enumerate() {
        for i in 0..30 {
            s.send(json!({"type": "send", "ref": i, "channel_id": ch, "client_msg_id": format!("{n}-{i}"), "body": format!("{n}/{i}")}))
                .await?;
        }
    }
    let got = listener.messages(60, LONG).await?;
    assert_eq!(seqs(&got), (1..=60).collect::<Vec<_>>());
    // Each sender's connection gets 30 `sent` replies, one per ref, and all 60 messages in order.
    for s in &mut socks {
        let mut frames = s
            .until(LONG, |f| {
                f["type"] == "message" && f["message"]["seq"] == 60
            })
            .await?;
        while frames.iter().filter(|f| f["type"] == "sent").count() < 30 {
            frames.push(s.next_frame(T).await?.expect("a sent reply"));
        }
        let refs: HashSet<u64> = frames
            .iter()
            .filter(|f| f["type"] == "sent")
            .filter_map(|f| f["ref"].as_u64())
            .collect();
        assert_eq!(refs, (0..30).collect::<HashSet<_>>());
        assert_eq!(message_seqs(&frames, &ch), (1..=60).collect::<Vec<_>>());
    }
    Ok(())
}

#[tokio::test]
async fn a_message_never_published_is_fetched_from_history() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    // Messaging A publishes; messaging B commits without publishing; neither sweeps, so
    // only the gateway's gap fill can deliver B's messages live.
    let a = stack
        .add_messaging(&[("PARLEY__OUTBOX__SWEEP_ENABLED", "false")])
        .await?;
    let b = stack
        .add_messaging(&[
            ("PARLEY__OUTBOX__PUBLISH_INLINE", "false"),
            ("PARLEY__OUTBOX__SWEEP_ENABLED", "false"),
        ])
        .await?;
    stack
        .add_gateway(&[("PARLEY__MESSAGING__URL", &format!("http://{a}"))])
        .await?;
    stack
        .add_gateway(&[("PARLEY__MESSAGING__URL", &format!("http://{b}"))])
        .await?;
    let via_a = Client::new(&stack.url(0), "alice");
    let via_b = via_a.on(&stack.url(1));
    let ch = via_a.group("lossy", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;

    assert_eq!(via_b.send(&ch, "b1", "unpublished 1").await?["seq"], 1);
    // The marker is on bob's own topic: a later message in `ch` would have seq 1 fetched
    // before it whether or not B published.
    let quiet = bob
        .joined_barrier(&Client::new(&stack.url(0), "bob"), T)
        .await?;
    assert!(
        quiet.iter().all(|f| f["type"] != "message"),
        "B must not publish: {quiet:?}"
    );
    assert_eq!(via_a.send(&ch, "a1", "published 2").await?["seq"], 2);
    let got = bob.messages(2, T).await?;
    assert_eq!(seqs(&got), vec![1, 2]);
    assert_eq!(got[0]["body"], "unpublished 1");
    assert_eq!(got[1]["body"], "published 2");

    // Several lost in a row, interleaved with published ones.
    for i in 3..=6 {
        via_b
            .send(&ch, &format!("b{i}"), &format!("unpublished {i}"))
            .await?;
    }
    via_a.send(&ch, "a7", "published 7").await?;
    via_b.send(&ch, "b8", "unpublished 8").await?;
    via_a.send(&ch, "a9", "published 9").await?;
    let mut frames = bob
        .until(T, |f| f["type"] == "message" && f["message"]["seq"] == 9)
        .await?;
    frames.extend(bob.barrier(&via_a, &ch, T).await?);
    assert_eq!(
        message_seqs(&frames, &ch),
        (3..=9).collect::<Vec<_>>(),
        "{frames:?}"
    );
    Ok(())
}

#[tokio::test]
async fn an_overflowing_connection_catches_up_in_order() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__RATE__MESSAGES__N", "0"),
            ("PARLEY__WS__QUEUE_LEN", "1"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("overflow", &SENDERS).await?;
    let mut listener = Ws::connect(&stack.url(0), "alice").await?;
    let tasks: Vec<_> = SENDERS
        .iter()
        .map(|u| {
            let (client, ch) = (Client::new(&stack.url(0), u), ch.clone());
            tokio::spawn(async move {
                let results: Vec<anyhow::Result<Value>> = stream::iter(0..25)
                    .map(|i| {
                        let (client, ch) = (client.clone(), ch.clone());
                        async move { client.send(&ch, &format!("o-{i}"), "x").await }
                    })
                    .buffer_unordered(8)
                    .collect()
                    .await;
                results.into_iter().collect::<anyhow::Result<Vec<Value>>>()
            })
        })
        .collect();
    let got = listener.messages(100, LONG).await?;
    for t in tasks {
        t.await??;
    }
    let mut frames: Vec<Value> = got
        .into_iter()
        .map(|m| json!({"type": "message", "message": m}))
        .collect();
    frames.extend(listener.barrier(&alice, &ch, LONG).await?);
    assert_eq!(message_seqs(&frames, &ch), (1..=100).collect::<Vec<_>>());
    Ok(())
}

/// A client that pipelines sends (no waiting for `sent`) gets seqs in the order it sent
/// them: a connection's sends to one channel are committed one at a time, in frame order.
#[tokio::test]
async fn pipelined_sends_of_one_connection_keep_their_order() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("pipelined", &["bob"]).await?;
    let other = alice.group("other", &["bob"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    a.send(json!({"type": "ping"})).await?;
    const N: usize = 25; // 2N sends stay within the default send burst (60)
    for i in 0..N {
        // Interleave a second channel: its sends must not hold this one up or reorder it.
        a.send(json!({"type": "send", "ref": i, "channel_id": ch, "client_msg_id": format!("p{i}"), "body": format!("{i}")}))
            .await?;
        a.send(json!({"type": "send", "ref": format!("o{i}"), "channel_id": other, "client_msg_id": format!("o{i}"), "body": "x"}))
            .await?;
    }
    let mut seq_of: Vec<Option<u64>> = vec![None; N];
    let mut acked = 0;
    while acked < 2 * N {
        let f = a.next_frame(LONG).await?.expect("a frame");
        match f["type"].as_str() {
            Some("sent") => {
                acked += 1;
                if let Some(i) = f["ref"].as_u64() {
                    seq_of[i as usize] = f["message"]["seq"].as_u64();
                }
            }
            Some("error") => anyhow::bail!("send failed: {f}"),
            _ => {}
        }
    }
    let seqs: Vec<u64> = seq_of.into_iter().map(Option::unwrap_or_default).collect();
    assert_eq!(
        seqs,
        (1..=N as u64).collect::<Vec<_>>(),
        "the i-th send gets seq i"
    );
    let history = alice.history(&ch, "limit=100").await?;
    let bodies: Vec<String> = history["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .rev()
                .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(bodies, (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
    Ok(())
}
