//! Receipts and unread through the gateway: real receipts service consuming the real
//! event stream, two gateway replicas.

use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{T, wait_for};

async fn stack() -> anyhow::Result<Stack> {
    let mut s = Stack::empty().await?;
    s.add_messaging(&[]).await?;
    s.add_receipts(&[]).await?;
    s.add_gateway(&[]).await?;
    s.add_gateway(&[]).await?;
    Ok(s)
}

/// Polls `GET /v1/unread` until `pred` holds (the projection follows the stream).
async fn unread_until(c: &Client, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let unread = || async {
        let (s, b, _) = c.req("GET", "/v1/unread", None).await?;
        anyhow::ensure!(s == 200, "unread: {s} {b}");
        Ok(b)
    };
    wait_for(T, format_args!("unread of {}", c.user), unread, pred).await
}

#[tokio::test]
async fn read_marks_unread_and_receipt_frames_across_replicas() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(1), "bob");
    let ch = alice.group("team", &["bob"]).await?;
    for i in 1..=5 {
        alice.send(&ch, &format!("a{i}"), "hello").await?;
    }
    // Bob has 5 unread; alice none (her own messages).
    let u = unread_until(&bob, |b| b["total"] == 5).await?;
    assert_eq!(u["channels"], json!([{"channel_id": ch, "unread": 5}]));
    let u = unread_until(&alice, |b| b["total"] == 0).await?;
    assert_eq!(u["channels"], json!([]));
    let (_, list, _) = bob.req("GET", "/v1/channels", None).await?;
    assert_eq!(list["channels"][0]["unread"], 5);

    // Alice watches on replica 0 with two connections; bob reads on replica 1.
    let mut a1 = Ws::connect(&stack.url(0), "alice").await?;
    let mut b_other = Ws::connect(&stack.url(0), "bob").await?;
    let mut b = Ws::connect(&stack.url(1), "bob").await?;
    b.send(json!({"type": "read", "channel_id": ch, "seq": 3}))
        .await?;
    // (Alice's own sends moved her watermark too: skip her receipts.)
    let is_bobs = |f: &Value| f["type"] == "receipt" && f["user_id"] == "bob";
    let r = a1.until(T, is_bobs).await?.pop().expect("frame");
    assert_eq!(r["channel_id"], ch.as_str());
    assert_eq!(r["user_id"], "bob");
    assert_eq!(r["read_seq"], 3);
    assert_eq!(r["delivered_seq"], 3, "read implies delivered");
    // The reader's own other connection is told too.
    assert_eq!(
        b_other.until(T, is_bobs).await?.pop().expect("frame")["read_seq"],
        3
    );
    unread_until(&bob, |b| b["total"] == 2).await?;

    // REST read, beyond last_seq: clamped to 5; a lower one later changes nothing.
    let (s, _, _) = bob
        .req(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(json!({"seq": 99})),
        )
        .await?;
    assert_eq!(s, 204);
    let (s, _, _) = bob
        .req(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(json!({"seq": 1})),
        )
        .await?;
    assert_eq!(s, 204);
    let (s, r, _) = alice
        .req("GET", &format!("/v1/channels/{ch}/receipts"), None)
        .await?;
    assert_eq!(s, 200);
    let bob_r = r["receipts"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["user_id"] == "bob"))
        .cloned();
    assert_eq!(
        bob_r,
        Some(json!({"user_id": "bob", "delivered_seq": 5, "read_seq": 5}))
    );
    let u = unread_until(&bob, |b| b["total"] == 0).await?;
    assert_eq!(u["channels"], json!([]), "zero-unread channels are omitted");

    // ack moves only the delivered watermark.
    alice.send(&ch, "a6", "more").await?;
    b.send(json!({"type": "ack", "channel_id": ch, "seq": 6}))
        .await?;
    let bobs_receipt = || async {
        let (_, r, _) = alice
            .req("GET", &format!("/v1/channels/{ch}/receipts"), None)
            .await?;
        Ok(r["receipts"]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["user_id"] == "bob"))
            .cloned())
    };
    let applied = Some(json!({"user_id": "bob", "delivered_seq": 6, "read_seq": 5}));
    wait_for(T, "the ack applied", bobs_receipt, |e| *e == applied).await?;
    unread_until(&bob, |b| b["total"] == 1).await?;
    Ok(())
}

#[tokio::test]
async fn non_member_and_bad_input_are_rejected() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("private", &[]).await?;
    alice.send(&ch, "x", "secret").await?;
    let mallory = Client::new(&stack.url(0), "mallory");
    let (s, b, _) = mallory
        .req(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(json!({"seq": 1})),
        )
        .await?;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (403, json!("permission_denied"))
    );
    let (s, b, _) = mallory
        .req("GET", &format!("/v1/channels/{ch}/receipts"), None)
        .await?;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (403, json!("permission_denied"))
    );
    let (s, _, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/read"),
            Some(json!({"seq": -1})),
        )
        .await?;
    assert_eq!(s, 400);
    let (s, _, _) = alice
        .req(
            "POST",
            "/v1/channels/not-a-uuid/read",
            Some(json!({"seq": 1})),
        )
        .await?;
    assert_eq!(s, 400);
    let mut m = Ws::connect(&stack.url(0), "mallory").await?;
    m.send(json!({"type": "read", "channel_id": ch, "seq": 1, "ref": 4}))
        .await?;
    let e = m.expect("error", T).await?;
    assert_eq!(
        (e["code"].clone(), e["ref"].clone()),
        (json!("permission_denied"), json!(4))
    );
    m.send(json!({"type": "ack", "channel_id": ch})).await?;
    assert_eq!(m.expect("error", T).await?["code"], "permission_denied");
    Ok(())
}

#[tokio::test]
async fn receipts_down_sending_and_history_still_work() -> anyhow::Result<()> {
    let mut stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("ops", &["bob"]).await?;
    stack.receipts.remove(0).kill();
    let mut b = Ws::connect(&stack.url(1), "bob").await?;
    alice.send(&ch, "m1", "still here").await?;
    assert_eq!(b.messages(1, T).await?[0]["body"], "still here");
    let (s, h, _) = alice
        .req("GET", &format!("/v1/channels/{ch}/messages"), None)
        .await?;
    assert_eq!((s, h["messages"].as_array().map(Vec::len)), (200, Some(1)));
    // Channel lists still answer, without guessing `unread`.
    let (s, l, _) = alice.req("GET", "/v1/channels", None).await?;
    assert_eq!(s, 200);
    assert!(l["channels"][0].get("unread").is_none(), "{l}");
    let (s, u, _) = alice.req("GET", "/v1/unread", None).await?;
    assert_eq!((s, u["error"]["code"].clone()), (503, json!("unavailable")));
    b.send(json!({"type": "read", "channel_id": ch, "seq": 1}))
        .await?;
    assert_eq!(b.expect("error", T).await?["code"], "unavailable");
    Ok(())
}
