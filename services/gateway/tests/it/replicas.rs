//! Two gateway replicas on one messaging: live fan-out, membership and the rate limit work
//! across replicas.

use parley_testkit::{Client, Stack, Ws};
use serde_json::json;

use crate::{T, assert_error, message_seqs};

async fn two_gateways(extra: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack.add_gateway(extra).await?;
    stack.add_gateway(extra).await?;
    Ok(stack)
}

#[tokio::test]
async fn messages_cross_replicas_both_ways() -> anyhow::Result<()> {
    let stack = two_gateways(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("across", &["bob"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    let mut b = Ws::connect(&stack.url(1), "bob").await?;

    // alice on gateway 0 → bob on gateway 1 (WebSocket send).
    a.send(json!({"type": "send", "ref": 1, "channel_id": ch, "client_msg_id": "a1", "body": "from gw0"})).await?;
    let got = b.messages(1, T).await?;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["body"], "from gw0");
    assert_eq!(got[0]["sender_id"], "alice");

    // bob on gateway 1 → alice on gateway 0 (REST send through gateway 1).
    let bob = Client::new(&stack.url(1), "bob");
    bob.send(&ch, "b1", "from gw1").await?;
    let mut frames = a
        .until(T, |f| f["type"] == "message" && f["message"]["seq"] == 2)
        .await?;
    // Markers on each user's own topic (one in `ch` would change the seqs asserted below).
    frames.extend(a.joined_barrier(&alice, T).await?);
    assert_eq!(message_seqs(&frames, &ch), vec![1, 2]);
    let last = frames
        .iter()
        .rev()
        .find(|f| f["type"] == "message")
        .expect("message");
    assert_eq!(last["message"]["body"], "from gw1");
    let bobs = b.joined_barrier(&bob, T).await?;
    assert_eq!(
        message_seqs(&bobs, &ch),
        vec![2],
        "bob gets his own message once: {bobs:?}"
    );

    // The same user on both replicas gets each message on both connections.
    let mut a1 = Ws::connect(&stack.url(1), "alice").await?;
    bob.send(&ch, "b2", "to both").await?;
    assert_eq!(a.messages(1, T).await?[0]["seq"], 3);
    assert_eq!(a1.messages(1, T).await?[0]["seq"], 3);

    // Membership changes made through one replica reach connections on the other.
    let mut carol = Ws::connect(&stack.url(1), "carol").await?;
    let (s, _, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "carol"})),
        )
        .await?;
    assert_eq!(s, 201);
    let joined = carol.expect("member_joined", T).await?;
    assert_eq!(joined["channel_id"], ch.as_str());
    alice.send(&ch, "a2", "hi carol").await?;
    let got = carol.messages(1, T).await?;
    assert_eq!(got[0]["seq"], 4);
    assert_eq!(got[0]["body"], "hi carol");
    Ok(())
}

#[tokio::test]
async fn rate_limit_is_shared_by_replicas() -> anyhow::Result<()> {
    let stack = two_gateways(&[
        ("PARLEY__RATE__MESSAGES__N", "3"),
        ("PARLEY__RATE__MESSAGES__WINDOW_SECS", "3600"),
    ])
    .await?;
    let on0 = Client::new(&stack.url(0), "alice");
    let on1 = on0.on(&stack.url(1));
    let ch = on0.group("limited", &["bob"]).await?;
    assert_eq!(on0.post_message(&ch, "1", "one").await?.0, 201);
    assert_eq!(on1.post_message(&ch, "2", "two").await?.0, 201);
    assert_eq!(on0.post_message(&ch, "3", "three").await?.0, 201);
    assert_error(
        &on1.post_message(&ch, "4", "four").await?,
        429,
        "rate_limited",
    );
    assert_error(
        &on0.post_message(&ch, "5", "five").await?,
        429,
        "rate_limited",
    );
    assert_eq!(on1.channel(&ch).await?["last_seq"], 3);
    Ok(())
}
