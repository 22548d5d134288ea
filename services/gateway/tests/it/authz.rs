//! Authorization: a user reads and writes only channels they are a member of.

use parley_testkit::{Client, Stack, Ws};
use serde_json::json;

use crate::{T, assert_error, assert_error_frame, message_seqs, ping};

#[tokio::test]
async fn non_member_is_denied_everywhere() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let mallory = Client::new(&stack.url(0), "mallory");
    let ch = alice.group("private", &["bob"]).await?;
    alice.send(&ch, "secret", "the secret").await?;
    let before = alice.channel(&ch).await?;

    let denied = [
        mallory
            .req("GET", &format!("/v1/channels/{ch}"), None)
            .await?,
        mallory
            .req("GET", &format!("/v1/channels/{ch}/messages"), None)
            .await?,
        mallory
            .req("GET", &format!("/v1/channels/{ch}/messages?after=0"), None)
            .await?,
        mallory
            .req("GET", &format!("/v1/channels/{ch}/members"), None)
            .await?,
        mallory.post_message(&ch, "m-1", "let me in").await?,
        mallory
            .req(
                "POST",
                &format!("/v1/channels/{ch}/members"),
                Some(json!({"user_id": "mallory"})),
            )
            .await?,
        mallory
            .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
            .await?,
        mallory
            .req(
                "PATCH",
                &format!("/v1/channels/{ch}/messages/1"),
                Some(json!({"body": "defaced"})),
            )
            .await?,
        mallory
            .req("DELETE", &format!("/v1/channels/{ch}/messages/1"), None)
            .await?,
    ];
    for reply in &denied {
        assert_error(reply, 403, "permission_denied");
    }
    // None of the message bodies leaked into an error.
    for (_, b, _) in &denied {
        assert!(!b.to_string().contains("the secret"), "{b}");
    }

    // Over WebSocket: an error frame with the same ref, and the socket stays usable.
    let mut ws = Ws::connect(&stack.url(0), "mallory").await?;
    ws.send(json!({"type": "send", "ref": "r-1", "channel_id": ch, "client_msg_id": "w-1", "body": "let me in"})).await?;
    let err = ws.expect("error", T).await?;
    assert_error_frame(&err, "permission_denied", Some(&json!("r-1")));
    // Resuming a channel one does not belong to is denied too, and replays nothing.
    ws.send(json!({"type": "resume", "positions": { &ch: 0 }}))
        .await?;
    let mut frames = ws.until(T, |f| f["type"] == "resumed").await?;
    let resumed = frames.pop().expect("resumed");
    assert_eq!(resumed["channels"], json!({}));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_error_frame(&frames[0], "permission_denied", None);
    assert!(ping(&mut ws, "p").await?.is_empty());

    // Nothing changed, and mallory's list does not show the channel.
    let after = alice.channel(&ch).await?;
    assert_eq!(after["last_seq"], before["last_seq"]);
    assert_eq!(after["member_count"], before["member_count"]);
    let page = alice.history(&ch, "").await?;
    assert_eq!(page["messages"][0]["body"], "the secret");
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    let (s, list, _) = mallory.req("GET", "/v1/channels", None).await?;
    assert_eq!(s, 200);
    assert_eq!(list["channels"], json!([]));

    // Live traffic of the channel never reaches her socket.
    alice.send(&ch, "later", "still secret").await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    bob.send(json!({"type": "resume", "positions": { &ch: 1 }}))
        .await?;
    assert_eq!(
        message_seqs(&bob.until(T, |f| f["type"] == "resumed").await?, &ch),
        vec![2]
    );
    let frames = ws.joined_barrier(&mallory, T).await?;
    assert!(frames.iter().all(|f| f["type"] != "message"), "{frames:?}");
    Ok(())
}

#[tokio::test]
async fn unknown_channel_is_not_found() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    // A channel exists, but not this one.
    alice.group("real", &["bob"]).await?;
    let ghost = uuid::Uuid::new_v4().to_string();
    for reply in [
        alice
            .req("GET", &format!("/v1/channels/{ghost}"), None)
            .await?,
        alice
            .req("GET", &format!("/v1/channels/{ghost}/messages"), None)
            .await?,
        alice
            .req("GET", &format!("/v1/channels/{ghost}/members"), None)
            .await?,
        alice.post_message(&ghost, "m-1", "anyone?").await?,
        alice
            .req(
                "POST",
                &format!("/v1/channels/{ghost}/members"),
                Some(json!({"user_id": "bob"})),
            )
            .await?,
        alice
            .req(
                "PATCH",
                &format!("/v1/channels/{ghost}/messages/1"),
                Some(json!({"body": "x"})),
            )
            .await?,
        alice
            .req("DELETE", &format!("/v1/channels/{ghost}/messages/1"), None)
            .await?,
    ] {
        assert_error(&reply, 404, "not_found");
    }
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;
    ws.send(json!({"type": "send", "ref": 9, "channel_id": ghost, "client_msg_id": "w", "body": "anyone?"})).await?;
    assert_error_frame(&ws.expect("error", T).await?, "not_found", Some(&json!(9)));
    Ok(())
}
