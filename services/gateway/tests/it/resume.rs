//! Resume: a reconnecting client gets exactly what it missed, in order, then `resumed`,
//! then live messages without duplicates; gaps over the resume limit are cut short.

use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{LONG, T, message_seqs, seqs};

async fn send_n(c: &Client, ch: &str, from: u64, to: u64) -> anyhow::Result<()> {
    for i in from..=to {
        let m = c.send(ch, &format!("m{i}"), &format!("body {i}")).await?;
        assert_eq!(m["seq"], i, "{m}");
    }
    Ok(())
}

/// Sends `resume` and returns the frames up to and including `resumed`.
async fn resume(ws: &mut Ws, positions: Value) -> anyhow::Result<(Vec<Value>, Value)> {
    ws.send(json!({"type": "resume", "positions": positions}))
        .await?;
    let mut frames = ws.until(LONG, |f| f["type"] == "resumed").await?;
    let resumed = frames.pop().expect("resumed");
    Ok((frames, resumed))
}

#[tokio::test]
async fn reconnect_replays_exactly_the_missed_range() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("resume", &["bob"]).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    send_n(&alice, &ch, 1, 5).await?;
    let seen = bob.messages(5, T).await?;
    assert_eq!(seqs(&seen), vec![1, 2, 3, 4, 5]);
    let last_seen = seen.last().and_then(|m| m["seq"].as_u64()).expect("seq");
    bob.close().await;

    send_n(&alice, &ch, 6, 12).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let (replayed, resumed) = resume(&mut bob, json!({ &ch: last_seen })).await?;
    assert_eq!(
        message_seqs(&replayed, &ch),
        (6..=12).collect::<Vec<_>>(),
        "frames: {replayed:?}"
    );
    for f in replayed.iter().filter(|f| f["type"] == "message") {
        let seq = f["message"]["seq"].as_u64().expect("seq");
        assert_eq!(f["message"]["body"], format!("body {seq}"));
        assert_eq!(f["message"]["sender_id"], "alice");
    }
    assert_eq!(
        resumed["channels"],
        json!({ &ch: {"from": 6, "to": 12, "recovered": true} })
    );

    // Live continues after the replay, with nothing sent twice.
    send_n(&alice, &ch, 13, 14).await?;
    let mut live = bob
        .until(T, |f| f["type"] == "message" && f["message"]["seq"] == 14)
        .await?;
    live.extend(bob.barrier(&alice, &ch, T).await?);
    assert_eq!(message_seqs(&live, &ch), vec![13, 14], "frames: {live:?}");
    Ok(())
}

#[tokio::test]
async fn resume_while_messages_keep_coming_has_no_gap_or_duplicate() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__RATE__MESSAGES__N", "0")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("resume-live", &["bob"]).await?;
    send_n(&alice, &ch, 1, 60).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    bob.send(json!({"type": "resume", "positions": { &ch: 10 }}))
        .await?;
    // Once the first replayed message is here the server is replaying: alice now sends
    // more while (or after) the replay runs.
    let mut frames = bob.until(T, |f| f["type"] == "message").await?;
    let sender = {
        let (alice, ch) = (alice.clone(), ch.clone());
        tokio::spawn(async move { send_n(&alice, &ch, 61, 100).await })
    };
    frames.extend(bob.until(LONG, |f| f["type"] == "resumed").await?);
    let resumed = frames.pop().expect("resumed");
    let report = &resumed["channels"][&ch];
    assert_eq!(report["from"], 11, "{resumed}");
    assert_eq!(report["recovered"], true, "{resumed}");
    let to = report["to"].as_u64().expect("to");
    assert!((60..=100).contains(&to), "{resumed}");
    assert_eq!(
        message_seqs(&frames, &ch),
        (11..=to).collect::<Vec<_>>(),
        "the replay ends where `to` says"
    );
    sender.await??;
    if to < 100 {
        frames.extend(
            bob.until(LONG, |f| {
                f["type"] == "message" && f["message"]["seq"] == 100
            })
            .await?,
        );
    }
    frames.extend(bob.barrier(&alice, &ch, LONG).await?);
    assert_eq!(
        message_seqs(&frames, &ch),
        (11..=100).collect::<Vec<_>>(),
        "replay then live, in order, once"
    );
    Ok(())
}

#[tokio::test]
async fn resume_beyond_the_limit_replays_the_newest_only() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__WS__RESUME_LIMIT", "5")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("resume-limit", &["bob"]).await?;
    let other = alice.group("resume-small", &["bob"]).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    send_n(&alice, &ch, 1, 3).await?;
    assert_eq!(seqs(&bob.messages(3, T).await?), vec![1, 2, 3]);
    bob.close().await;

    // 12 missed in one channel (over the limit of 5), 2 in the other (within it).
    send_n(&alice, &ch, 4, 15).await?;
    send_n(&alice, &other, 1, 2).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let (replayed, resumed) = resume(&mut bob, json!({ &ch: 3, &other: 0 })).await?;
    assert_eq!(
        message_seqs(&replayed, &ch),
        vec![11, 12, 13, 14, 15],
        "frames: {replayed:?}"
    );
    assert_eq!(message_seqs(&replayed, &other), vec![1, 2]);
    assert_eq!(
        resumed["channels"],
        json!({
            &ch: {"from": 11, "to": 15, "recovered": false},
            &other: {"from": 1, "to": 2, "recovered": true},
        })
    );
    // The rest is in history for the client to page.
    let rest = alice.history(&ch, "after=3&limit=7").await?;
    assert_eq!(
        seqs(rest["messages"].as_array().expect("messages")),
        (4..=10).collect::<Vec<_>>()
    );

    send_n(&alice, &ch, 16, 16).await?;
    let mut live = bob.until(T, |f| f["type"] == "message").await?;
    live.extend(bob.barrier(&alice, &ch, T).await?);
    assert_eq!(message_seqs(&live, &ch), vec![16]);
    assert!(message_seqs(&live, &other).is_empty());
    Ok(())
}

/// Frames that are ready together leave together: a replay and its `resumed` frame are one
/// socket write (`gateway_ws_write_batch_size`), not one write per frame.
#[tokio::test]
async fn a_replay_is_written_to_the_socket_at_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("batched", &["bob"]).await?;
    send_n(&alice, &ch, 1, 12).await?;

    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let (replayed, _) = resume(&mut bob, json!({ &ch: 0 })).await?;
    assert_eq!(message_seqs(&replayed, &ch), (1..=12).collect::<Vec<_>>());

    let text = crate::metrics(&alice).await?;
    let sample = |series: &str| -> f64 {
        crate::sample(&text, series).unwrap_or_else(|| panic!("no {series} in {text}"))
    };
    let writes = sample("gateway_ws_write_batch_size_count");
    let small = sample("gateway_ws_write_batch_size_bucket{le=\"8\"}");
    assert!(
        writes > small,
        "every write carried at most 8 frames ({writes} writes): {text}"
    );
    Ok(())
}
