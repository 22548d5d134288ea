//! Membership: joins and leaves take effect live on open connections; roles decide who
//! may add and remove; the member limit holds.

use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{T, assert_error, message_seqs};

fn members_of(v: &Value) -> Vec<(String, String)> {
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().expect("user_id").to_owned(),
                m["role"].as_str().expect("role").to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn added_member_gets_member_joined_then_live_messages() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("club", &["bob"]).await?;
    alice.send(&ch, "before", "before carol").await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let mut carol = Ws::connect(&stack.url(0), "carol").await?;

    let (s, member, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "carol"})),
        )
        .await?;
    assert_eq!(s, 201, "{member}");
    assert_eq!(member["user_id"], "carol");
    assert_eq!(member["role"], "member");
    assert_eq!(member["channel_id"], ch.as_str());

    let joined = carol.expect("member_joined", T).await?;
    assert_eq!(joined["channel_id"], ch.as_str());
    assert_eq!(joined["user_id"], "carol");
    let seen_by_bob = bob.expect("member_joined", T).await?;
    assert_eq!(seen_by_bob["channel_id"], ch.as_str());
    assert_eq!(seen_by_bob["user_id"], "carol");

    // From now on carol receives the channel live (not what came before her join).
    alice.send(&ch, "after", "welcome carol").await?;
    let mut frames = carol.until(T, |f| f["type"] == "message").await?;
    // A marker on carol's own topic (a message in `ch` would change its history below).
    frames.extend(
        carol
            .joined_barrier(&Client::new(&stack.url(0), "carol"), T)
            .await?,
    );
    assert_eq!(message_seqs(&frames, &ch), vec![2], "frames: {frames:?}");
    let m = frames
        .iter()
        .find(|f| f["type"] == "message")
        .expect("message");
    assert_eq!(m["message"]["body"], "welcome carol");

    // She can read history and send; adding her again changes nothing.
    assert_eq!(
        Client::new(&stack.url(0), "carol").history(&ch, "").await?["messages"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    let (s, again, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "carol"})),
        )
        .await?;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["joined_at"], member["joined_at"]);
    assert_eq!(alice.channel(&ch).await?["member_count"], 3);
    Ok(())
}

#[tokio::test]
async fn removed_member_gets_member_left_and_nothing_more() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob_rest = Client::new(&stack.url(0), "bob");
    let ch = alice.group("club", &["bob", "carol"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let mut carol = Ws::connect(&stack.url(0), "carol").await?;

    alice.send(&ch, "m1", "everyone").await?;
    assert_eq!(bob.messages(1, T).await?[0]["seq"], 1);
    assert_eq!(carol.messages(1, T).await?[0]["seq"], 1);

    let (s, b, _) = alice
        .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
        .await?;
    assert_eq!(s, 204, "{b}");
    assert_eq!(b, Value::Null);
    let left = bob.expect("member_left", T).await?;
    assert_eq!(left["channel_id"], ch.as_str());
    assert_eq!(left["user_id"], "bob");
    let seen_by_carol = carol.expect("member_left", T).await?;
    assert_eq!(seen_by_carol["user_id"], "bob");

    alice.send(&ch, "m2", "without bob").await?;
    let got = carol.messages(1, T).await?;
    assert_eq!(got[0]["seq"], 2);
    assert_eq!(got[0]["body"], "without bob");
    // carol has it, so it was published; bob must not get it before a later marker.
    let bobs = bob.joined_barrier(&bob_rest, T).await?;
    assert!(
        message_seqs(&bobs, &ch).is_empty(),
        "bob got messages after leaving: {bobs:?}"
    );
    assert!(bobs.iter().all(|f| f["type"] != "message"), "{bobs:?}");

    // And REST agrees.
    assert_error(
        &bob_rest
            .req("GET", &format!("/v1/channels/{ch}/messages"), None)
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &bob_rest.post_message(&ch, "m3", "let me in").await?,
        403,
        "permission_denied",
    );
    assert_eq!(
        members_of(
            &alice
                .req("GET", &format!("/v1/channels/{ch}/members"), None)
                .await?
                .1
        ),
        vec![
            ("alice".to_owned(), "owner".to_owned()),
            ("carol".to_owned(), "member".to_owned()),
        ]
    );
    assert_eq!(alice.channel(&ch).await?["member_count"], 2);
    // Removing someone who is not a member is not found.
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
            .await?,
        404,
        "not_found",
    );
    Ok(())
}

#[tokio::test]
async fn a_member_may_leave_but_not_manage_others() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("club", &["bob", "carol"]).await?;

    // A plain member cannot add or remove others.
    assert_error(
        &bob.req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "dave"})),
        )
        .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &bob.req("DELETE", &format!("/v1/channels/{ch}/members/carol"), None)
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &bob.req("DELETE", &format!("/v1/channels/{ch}/members/alice"), None)
            .await?,
        403,
        "permission_denied",
    );
    let members = alice
        .req("GET", &format!("/v1/channels/{ch}/members"), None)
        .await?;
    assert_eq!(members.0, 200);
    assert_eq!(
        members_of(&members.1).len(),
        3,
        "nothing changed: {}",
        members.1
    );

    // Anyone may remove themselves.
    let mut carol_ws = Ws::connect(&stack.url(0), "carol").await?;
    let (s, _, _) = carol
        .req("DELETE", &format!("/v1/channels/{ch}/members/carol"), None)
        .await?;
    assert_eq!(s, 204);
    let left = carol_ws.expect("member_left", T).await?;
    assert_eq!(left["user_id"], "carol");
    assert_error(
        &carol
            .req("GET", &format!("/v1/channels/{ch}"), None)
            .await?,
        403,
        "permission_denied",
    );
    let (s, list, _) = carol.req("GET", "/v1/channels", None).await?;
    assert_eq!(s, 200);
    assert_eq!(list["channels"], json!([]));
    let members = members_of(
        &alice
            .req("GET", &format!("/v1/channels/{ch}/members"), None)
            .await?
            .1,
    );
    assert_eq!(
        members,
        vec![
            ("alice".to_owned(), "owner".to_owned()),
            ("bob".to_owned(), "member".to_owned())
        ]
    );
    assert_eq!(alice.channel(&ch).await?["member_count"], 2);

    // The owner may remove others; a removed member may be added back.
    let (s, _, _) = alice
        .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, back, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "bob"})),
        )
        .await?;
    assert_eq!(s, 201, "{back}");
    assert_eq!(bob.channel(&ch).await?["member_count"], 2);
    Ok(())
}

#[tokio::test]
async fn member_limit_is_a_conflict() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack
        .add_messaging(&[("PARLEY__LIMITS__MAX_MEMBERS", "3")])
        .await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(0), "alice");

    // Creating over the limit fails and creates nothing.
    let reply = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "group", "name": "big", "members": ["bob", "carol", "dave"]})),
        )
        .await?;
    assert_error(&reply, 409, "conflict");
    assert_eq!(
        alice.req("GET", "/v1/channels", None).await?.1["channels"],
        json!([])
    );

    let ch = alice.group("full", &["bob", "carol"]).await?;
    assert_eq!(alice.channel(&ch).await?["member_count"], 3);
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/members"),
                Some(json!({"user_id": "dave"})),
            )
            .await?,
        409,
        "conflict",
    );
    assert_eq!(alice.channel(&ch).await?["member_count"], 3);
    assert_error(
        &Client::new(&stack.url(0), "dave")
            .req("GET", &format!("/v1/channels/{ch}"), None)
            .await?,
        403,
        "permission_denied",
    );

    // Room again after someone leaves.
    let (s, _, _) = Client::new(&stack.url(0), "carol")
        .req("DELETE", &format!("/v1/channels/{ch}/members/carol"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, b, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "dave"})),
        )
        .await?;
    assert_eq!(s, 201, "{b}");
    assert_eq!(alice.channel(&ch).await?["member_count"], 3);
    Ok(())
}
