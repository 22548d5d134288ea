//! The edge under hostile input from one ordinary account: bad values are that caller's
//! error alone, client-supplied numbers cannot overflow, and a connection's state and frame
//! rate are bounded.

use std::time::Duration;

use parley_testkit::{Client, Stack, Ws, token};
use serde_json::json;

use crate::{T, assert_error, assert_error_frame, metrics, ping, sample};

#[tokio::test]
async fn control_characters_are_invalid_and_change_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let first = alice.send(&ch, "ok-1", "first").await?;
    let msgs = format!("/v1/channels/{ch}/messages");

    for (i, body) in ["a\u{0}b", "bell\u{7}", "esc\u{1b}[31m", "\u{1f}"]
        .into_iter()
        .enumerate()
    {
        let reply = alice.post_message(&ch, &format!("bad-{i}"), body).await?;
        assert_error(&reply, 400, "invalid_argument");
        assert!(
            reply.1["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("control character")),
            "{}",
            reply.1
        );
        let edit = alice
            .req("PATCH", &format!("{msgs}/1"), Some(json!({"body": body})))
            .await?;
        assert_error(&edit, 400, "invalid_argument");
    }
    // A group name with NUL, and a device token with one.
    let group = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "group", "name": "nul\u{0}name", "members": []})),
        )
        .await?;
    assert_error(&group, 400, "invalid_argument");

    // Over WebSocket: an error frame for that send alone.
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    ws.send(json!({"type": "send", "ref": "n", "channel_id": ch, "client_msg_id": "w-bad", "body": "x\u{0}y"}))
        .await?;
    assert_error_frame(
        &ws.expect("error", T).await?,
        "invalid_argument",
        Some(&json!("n")),
    );

    // Nothing changed; tab, line feed and carriage return are fine.
    let c = alice.channel(&ch).await?;
    assert_eq!(c["last_seq"], 1, "{c}");
    let page = alice.history(&ch, "").await?;
    assert_eq!(page["messages"][0], first);
    let ok = alice.send(&ch, "ok-2", "tab\there\r\nnext line").await?;
    assert_eq!(ok["seq"], 2);
    assert_eq!(ok["body"], "tab\there\r\nnext line");
    Ok(())
}

#[tokio::test]
async fn resume_from_the_largest_position_is_answered_and_cleans_up() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack.add_presence(&[]).await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    alice.send(&ch, "m-1", "one").await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    // Live first, so the connection has sent something (the position check that overflowed).
    alice.send(&ch, "m-2", "two").await?;
    bob.send(json!({"type": "resume", "positions": { &ch: 1 }}))
        .await?;
    bob.until(T, |f| f["type"] == "resumed").await?;
    bob.send(json!({"type": "resume", "positions": { &ch: u64::MAX }}))
        .await?;
    let resumed = bob.expect("resumed", T).await?;
    assert_eq!(resumed["channels"][&ch]["to"], 2, "{resumed}");
    assert!(ping(&mut bob, "still-here").await?.is_empty());

    let online = || async {
        let (_, b, _) = alice.req("GET", "/v1/presence?user_ids=bob", None).await?;
        anyhow::Ok(b["presence"][0]["status"] == "online")
    };
    assert!(online().await?);
    bob.close().await;
    crate::eventually(T, "bob offline", || async {
        Ok((!online().await?).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn sends_to_made_up_channels_allocate_nothing() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__WS__FRAMES_PER_SEC", "100000"),
            ("PARLEY__WS__FRAMES_BURST", "100000"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let stranger = Client::new(&stack.url(0), "mallory")
        .group("theirs", &[])
        .await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    const N: usize = 300;
    for i in 0..N {
        let bogus = uuid::Uuid::new_v4();
        ws.send(json!({"type": "send", "ref": i, "channel_id": bogus, "client_msg_id": "k", "body": "x"}))
            .await?;
    }
    ws.send(json!({"type": "send", "ref": "s", "channel_id": stranger, "client_msg_id": "k", "body": "x"}))
        .await?;
    let frames = ws
        .until(Duration::from_secs(60), |f| f["ref"] == "s")
        .await?;
    assert_eq!(frames.len(), N + 1);
    for f in &frames[..N] {
        assert_eq!(f["code"], "not_found", "{f}");
    }
    assert_eq!(frames[N]["code"], "permission_denied");
    let queues = |text: &str| sample(text, "gateway_ws_send_queues").unwrap_or(0.0);
    assert_eq!(queues(&metrics(&alice).await?), 0.0, "no queue was made");

    // A real send still goes, through one queue.
    ws.send(
        json!({"type": "send", "ref": "ok", "channel_id": ch, "client_msg_id": "k", "body": "x"}),
    )
    .await?;
    assert_eq!(ws.expect("sent", T).await?["message"]["seq"], 1);
    assert_eq!(queues(&metrics(&alice).await?), 1.0);
    ws.close().await;
    crate::wait_for(
        T,
        "no send queue left",
        || async { Ok(queues(&metrics(&alice).await?)) },
        |n| *n == 0.0,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_flooding_connection_is_refused_then_closed() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__WS__FRAMES_PER_SEC", "2"),
            ("PARLEY__WS__FRAMES_BURST", "5"),
            ("PARLEY__WS__FLOOD_CLOSE_AFTER", "20"),
        ])
        .await?;
    let mut ws = Ws::connect(&stack.url(0), "mallory").await?;
    let mut calm = Ws::connect(&stack.url(0), "alice").await?;
    for i in 0..10 {
        ws.send(json!({"type": "ping", "ref": i})).await?;
    }
    // Every frame is answered: a pong within the burst (plus what refilled meanwhile, at
    // 2/s: a slow machine may take a while to send ten), a refusal beyond it.
    let mut frames = Vec::new();
    while frames.len() < 10 {
        let f = ws.next_frame(T).await?.expect("an answer to every ping");
        frames.push(f);
    }
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let refused: Vec<_> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert!(pongs >= 5 && !refused.is_empty(), "{frames:?}");
    assert_eq!(pongs + refused.len(), 10, "{frames:?}");
    for e in &refused {
        // Each refusal names the refused frame by its `ref`.
        let r = e["ref"].clone();
        assert!(r.as_u64().is_some_and(|r| r < 10), "{e}");
        assert_error_frame(e, "rate_limited", Some(&r));
        assert!(e["retry_after"].as_u64().is_some_and(|s| s >= 1), "{e}");
    }
    // Another connection is not affected.
    assert!(ping(&mut calm, "calm").await?.is_empty());

    // Keeps flooding: closed with 1008 (policy violation).
    for i in 0..40 {
        if ws
            .send(json!({"type": "ping", "ref": 100 + i}))
            .await
            .is_err()
        {
            break;
        }
    }
    let (_, code) = ws.until_closed(T).await?;
    assert_eq!(code, Some(1008));
    // Reconnecting at once is refused (on this replica and every other) for a while.
    match Ws::try_connect(&stack.url(0), &token("mallory", 3600)).await? {
        Ok(_) => panic!("a flooder reconnected at once"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    let text = metrics(&Client::new(&stack.url(0), "alice")).await?;
    assert!(
        sample(&text, "gateway_ws_closed_total{reason=\"flood\"}").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(ping(&mut calm, "calm-2").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn connections_are_capped_per_user_across_replicas_and_per_node() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    let per_user = ("PARLEY__WS__MAX_CONNECTIONS_PER_USER", "2");
    stack
        .add_gateway(&[per_user, ("PARLEY__WS__MAX_CONNECTIONS", "3")])
        .await?;
    stack.add_gateway(&[per_user]).await?;
    let refused = |r: Result<Ws, (u16, serde_json::Value)>| match r {
        Ok(_) => panic!("connected over the cap"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        }
    };

    // Per user, counted across both replicas.
    let _a1 = Ws::connect(&stack.url(0), "alice").await?;
    let a2 = Ws::connect(&stack.url(1), "alice").await?;
    refused(Ws::try_connect(&stack.url(0), &token("alice", 3600)).await?);
    refused(Ws::try_connect(&stack.url(1), &token("alice", 3600)).await?);
    // Another user is not affected; a closed connection gives its place back.
    let _b1 = Ws::connect(&stack.url(0), "bob").await?;
    a2.close().await;
    let a3 = crate::eventually(T, "a connection of alice accepted again", || async {
        Ok(Ws::try_connect(&stack.url(1), &token("alice", 3600))
            .await?
            .ok())
    })
    .await?;

    // Per node: replica 0 holds 3 (alice, bob, carol); dave goes to replica 1.
    let _c1 = Ws::connect(&stack.url(0), "carol").await?;
    refused(Ws::try_connect(&stack.url(0), &token("dave", 3600)).await?);
    let _d1 = Ws::connect(&stack.url(1), "dave").await?;
    drop(a3);
    Ok(())
}

#[tokio::test]
async fn held_messages_are_capped_and_the_rest_comes_from_history() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__WS__MAX_HELD", "3"),
            // A long post-hello hold: everything sent meanwhile is held, then released.
            ("PARLEY__WS__RESUME_WINDOW_MS", "60000"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let before = sample(&metrics(&alice).await?, "gateway_ws_held_dropped_total").unwrap_or(0.0);
    for i in 1..=10 {
        alice.send(&ch, &format!("m{i}"), "hi").await?;
    }
    // Wait until the live events reached the connection (held: 3, let go: 7).
    crate::wait_for(
        T,
        "7 more held messages let go",
        || async {
            let n = sample(&metrics(&alice).await?, "gateway_ws_held_dropped_total").unwrap_or(0.0);
            Ok(n - before)
        },
        |n| *n >= 7.0,
    )
    .await?;
    // The client's first frame ends the hold: all ten, in order, none twice.
    bob.send(json!({"type": "ping", "ref": "go"})).await?;
    let got = bob.messages(10, T).await?;
    let seqs: Vec<u64> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let before_marker = bob.barrier(&alice, &ch, T).await?;
    assert!(
        before_marker.iter().all(|f| f["type"] != "message"),
        "nothing twice: {before_marker:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[
            ("PARLEY__WS__WRITE_TIMEOUT_MS", "1000"),
            ("PARLEY__RATE__MESSAGES__N", "0"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("g", &["bob", "carol"]).await?;
    // Bob connects with a tiny receive buffer and then never reads.
    let addr = stack.url(0).trim_start_matches("http://").to_owned();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(addr.parse()?).await?;
    let url = format!("ws://{addr}/v1/ws?token={}", token("bob", 3600));
    let (stalled, _) = tokio_tungstenite::client_async(url, tcp).await?;
    let mut carol = Ws::connect(&stack.url(0), "carol").await?;
    // Carol reads all along.
    let carol = tokio::spawn(async move { carol.messages(2000, crate::LONG).await });

    // Enough traffic to fill both socket buffers several times over.
    let body = "x".repeat(2000);
    let mut senders = Vec::new();
    for t in 0..8 {
        let (alice, ch, body) = (alice.clone(), ch.clone(), body.clone());
        senders.push(tokio::spawn(async move {
            for i in 0..250 {
                let (s, b, _) = alice.post_message(&ch, &format!("t{t}-{i}"), &body).await?;
                anyhow::ensure!(s == 201, "{s} {b}");
            }
            anyhow::Ok(())
        }));
    }
    let dropped = |text: &str| {
        sample(text, "gateway_ws_closed_total{reason=\"slow_consumer\"}").unwrap_or(0.0)
    };
    crate::wait_for(
        crate::LONG,
        "a connection dropped for not reading",
        || async { Ok(dropped(&metrics(&alice).await?)) },
        |n| *n >= 1.0,
    )
    .await?;
    for s in senders {
        s.await??;
    }
    // A client that reads got everything, in order.
    let got = carol.await??;
    assert_eq!(got.len(), 2000);
    assert!(
        got.windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );
    drop(stalled);
    Ok(())
}

#[tokio::test]
async fn sends_in_flight_to_too_many_channels_are_refused() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack
        .add_messaging(&[
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "60000"),
        ])
        .await?;
    stack
        .add_gateway(&[
            ("PARLEY__WS__MAX_SEND_CHANNELS", "2"),
            ("PARLEY__MESSAGING__TIMEOUT_MS", "30000"),
        ])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let (a, b, c) = (
        alice.group("a", &[]).await?,
        alice.group("b", &[]).await?,
        alice.group("c", &[]).await?,
    );
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    // Hold channel a's row: its send (and b's, behind it in messaging's one lane) wait.
    let lock = stack.lock_channel(&a).await?;
    for (r, ch) in [("a", &a), ("b", &b)] {
        ws.send(
            json!({"type": "send", "ref": r, "channel_id": ch, "client_msg_id": r, "body": "x"}),
        )
        .await?;
    }
    // Let both reach messaging (their queues now have a send in flight).
    tokio::time::sleep(Duration::from_millis(300)).await;
    ws.send(
        json!({"type": "send", "ref": "c", "channel_id": c, "client_msg_id": "c", "body": "x"}),
    )
    .await?;
    let err = ws.expect("error", T).await?;
    assert_error_frame(&err, "rate_limited", Some(&json!("c")));
    assert!(err["retry_after"].as_u64().is_some_and(|s| s >= 1), "{err}");
    // Once they are answered, the places are free again.
    lock.commit().await?;
    let mut sent = Vec::new();
    for _ in 0..2 {
        sent.push(ws.expect("sent", T).await?["ref"].clone());
    }
    sent.sort_by_key(|v| v.to_string());
    assert_eq!(sent, [json!("a"), json!("b")]);
    ws.send(
        json!({"type": "send", "ref": "c2", "channel_id": c, "client_msg_id": "c", "body": "x"}),
    )
    .await?;
    assert_eq!(ws.expect("sent", T).await?["ref"], "c2");
    Ok(())
}
