//! Edits and deletes: who may, what members see live, and the tombstone in history.

use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{T, assert_error, seqs};

#[tokio::test]
async fn edit_and_delete_rules_and_events() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("edits", &["bob", "carol"]).await?;
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;
    let mut carol_ws = Ws::connect(&stack.url(0), "carol").await?;

    let m1 = alice.send(&ch, "a1", "first draft").await?;
    let m2 = bob.send(&ch, "b1", "bob's words").await?;
    assert_eq!(seqs(&bob_ws.messages(2, T).await?), vec![1, 2]);
    assert_eq!(seqs(&carol_ws.messages(2, T).await?), vec![1, 2]);
    let path = |seq: u64| format!("/v1/channels/{ch}/messages/{seq}");

    // The sender edits: 200 with the new body, same id and seq; members see it live.
    let (s, edited, _) = alice
        .req("PATCH", &path(1), Some(json!({"body": "final text"})))
        .await?;
    assert_eq!(s, 200, "{edited}");
    assert_eq!(edited["id"], m1["id"]);
    assert_eq!(edited["seq"], 1);
    assert_eq!(edited["body"], "final text");
    assert_eq!(edited["deleted"], false);
    assert!(edited["edited_at"].is_string(), "{edited}");
    assert_eq!(edited["created_at"], m1["created_at"]);
    let upd = bob_ws.expect("message_updated", T).await?;
    assert_eq!(upd["message"], edited);
    assert_eq!(
        carol_ws.expect("message_updated", T).await?["message"],
        edited
    );

    // Nobody else edits, not even the owner on someone else's message.
    assert_error(
        &bob.req("PATCH", &path(1), Some(json!({"body": "hijack"})))
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req("PATCH", &path(2), Some(json!({"body": "hijack"})))
            .await?,
        403,
        "permission_denied",
    );
    // A plain member cannot delete someone else's message.
    assert_error(
        &carol.req("DELETE", &path(1), None).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &bob.req("DELETE", &path(1), None).await?,
        403,
        "permission_denied",
    );

    // The sender deletes: 204, members get message_deleted with the tombstone.
    let (s, b, _) = bob.req("DELETE", &path(2), None).await?;
    assert_eq!(s, 204);
    assert_eq!(b, Value::Null);
    let del = carol_ws.expect("message_deleted", T).await?;
    assert_eq!(del["message"]["id"], m2["id"]);
    assert_eq!(del["message"]["seq"], 2);
    assert_eq!(del["message"]["deleted"], true);
    assert_eq!(del["message"]["body"], "");
    assert_eq!(
        bob_ws.expect("message_deleted", T).await?["message"]["seq"],
        2
    );
    // Deleting again is a no-op; a deleted message cannot be edited.
    assert_eq!(bob.req("DELETE", &path(2), None).await?.0, 204);
    assert_error(
        &bob.req("PATCH", &path(2), Some(json!({"body": "resurrect"})))
            .await?,
        404,
        "not_found",
    );

    // The channel owner deletes someone else's message.
    let m3 = carol.send(&ch, "c1", "carol's words").await?;
    assert_eq!(m3["seq"], 3);
    let (s, _, _) = alice.req("DELETE", &path(3), None).await?;
    assert_eq!(s, 204);
    let mut frames = carol_ws
        .until(T, |f| f["type"] == "message_deleted")
        .await?;
    assert_eq!(frames.pop().expect("deleted")["message"]["seq"], 3);

    // History: tombstones keep their seq; edits keep theirs.
    let page = carol.history(&ch, "after=0").await?;
    let msgs = page["messages"].as_array().expect("messages");
    assert_eq!(seqs(msgs), vec![1, 2, 3]);
    assert_eq!(msgs[0], edited);
    for (m, sender) in [(&msgs[1], "bob"), (&msgs[2], "carol")] {
        assert_eq!(m["deleted"], true, "{m}");
        assert_eq!(m["body"], "", "{m}");
        assert_eq!(m["sender_id"], sender);
    }
    assert_eq!(msgs[1]["id"], m2["id"]);
    assert_eq!(alice.channel(&ch).await?["last_seq"], 3);

    // Exactly one event per change reached each member: nothing else before a later message.
    let rest = bob_ws.barrier(&alice, &ch, T).await?;
    let kinds: Vec<(&str, u64)> = rest
        .iter()
        .filter_map(|f| Some((f["type"].as_str()?, f["message"]["seq"].as_u64()?)))
        .collect();
    assert_eq!(
        kinds,
        vec![("message", 3), ("message_deleted", 3)],
        "{rest:?}"
    );
    Ok(())
}
