//! Direct channels: exactly one other member, one channel per pair.

use std::collections::HashSet;

use futures::future::join_all;
use parley_testkit::{Client, Stack};
use serde_json::json;

use crate::assert_error;

#[tokio::test]
async fn direct_channel_is_unique_per_pair() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let direct = |members: serde_json::Value| json!({"kind": "direct", "members": members});

    let (s, first, _) = alice
        .req("POST", "/v1/channels", Some(direct(json!(["bob"]))))
        .await?;
    assert_eq!(s, 201, "{first}");
    assert_eq!(first["kind"], "direct");
    assert_eq!(first["member_count"], 2);
    assert_eq!(first["created_by"], "alice");
    assert_eq!(first["last_seq"], 0);
    let id = first["id"].as_str().expect("id").to_owned();

    let (s, again, _) = alice
        .req("POST", "/v1/channels", Some(direct(json!(["bob"]))))
        .await?;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    // From the other side it is the same pair.
    let (s, reverse, _) = bob
        .req("POST", "/v1/channels", Some(direct(json!(["alice"]))))
        .await?;
    assert_eq!(s, 200, "{reverse}");
    assert_eq!(reverse["id"], id.as_str());

    // Both are members; a direct channel takes no third member.
    let (s, members, _) = bob
        .req("GET", &format!("/v1/channels/{id}/members"), None)
        .await?;
    assert_eq!(s, 200);
    let users: HashSet<&str> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    assert_eq!(users, HashSet::from(["alice", "bob"]));
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{id}/members"),
                Some(json!({"user_id": "carol"})),
            )
            .await?,
        409,
        "conflict",
    );
    bob.send(&id, "hi", "hi alice").await?;
    assert_eq!(
        alice.history(&id, "").await?["messages"][0]["body"],
        "hi alice"
    );

    // A different pair is a different channel.
    let (s, other, _) = alice
        .req("POST", "/v1/channels", Some(direct(json!(["carol"]))))
        .await?;
    assert_eq!(s, 201);
    assert_ne!(other["id"], id.as_str());

    // Exactly one other member.
    for members in [json!([]), json!(["bob", "carol"]), json!(["alice"])] {
        assert_error(
            &alice
                .req("POST", "/v1/channels", Some(direct(members)))
                .await?,
            400,
            "invalid_argument",
        );
    }
    assert_error(
        &alice
            .req("POST", "/v1/channels", Some(json!({"kind": "direct"})))
            .await?,
        400,
        "invalid_argument",
    );
    let (_, list, _) = alice.req("GET", "/v1/channels", None).await?;
    assert_eq!(list["channels"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn concurrent_direct_creation_makes_one_channel() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let replies = join_all((0..8).map(|i| {
        let (c, other) = if i % 2 == 0 {
            (alice.clone(), "bob")
        } else {
            (bob.clone(), "alice")
        };
        async move {
            c.req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "direct", "members": [other]})),
            )
            .await
        }
    }))
    .await;
    let mut created = 0;
    let mut ids = HashSet::new();
    for r in replies {
        let (s, b, _) = r?;
        assert!(s == 200 || s == 201, "{s} {b}");
        created += usize::from(s == 201);
        ids.insert(b["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
    let (_, list, _) = bob.req("GET", "/v1/channels", None).await?;
    assert_eq!(list["channels"].as_array().map(Vec::len), Some(1));
    Ok(())
}
