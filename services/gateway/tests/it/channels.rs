//! Channel metadata: `PATCH /v1/channels/{id}` (name, topic, description), who may change
//! it, what members see live, and bad input that changes nothing.

use parley_testkit::{Client, Stack, Ws};
use serde_json::json;

use crate::{T, assert_error};

#[tokio::test]
async fn owners_change_name_topic_and_description_and_members_see_it_live() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("ops", &["bob"]).await?;
    let path = format!("/v1/channels/{ch}");
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;

    // A new channel has an empty topic and description.
    let before = alice.channel(&ch).await?;
    assert_eq!(
        (before["topic"].clone(), before["description"].clone()),
        (json!(""), json!(""))
    );

    let (s, c, _) = alice
        .req(
            "PATCH",
            &path,
            Some(json!({"topic": "  incidents only  ", "description": "Pager rota\nand runbooks"})),
        )
        .await?;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["name"], "ops", "unset fields keep their value");
    assert_eq!(c["topic"], "incidents only", "trimmed");
    assert_eq!(c["description"], "Pager rota\nand runbooks");
    assert_eq!(c["id"], before["id"]);
    assert_eq!(c["last_seq"], before["last_seq"]);

    let live = bob_ws.expect("channel_updated", T).await?;
    assert_eq!(
        live["channel"], c,
        "the event carries the channel as it is now"
    );
    assert_eq!(live["updated_by"], "alice");
    assert_eq!(bob.channel(&ch).await?, c, "bob reads it too");

    // Changing nothing answers the channel and publishes nothing: the next event bob gets
    // is the rename after it.
    let (s, same, _) = alice
        .req("PATCH", &path, Some(json!({"topic": "incidents only"})))
        .await?;
    assert_eq!((s, same), (200, c.clone()));
    let (s, renamed, _) = alice
        .req(
            "PATCH",
            &path,
            Some(json!({"name": "ops-team", "topic": ""})),
        )
        .await?;
    assert_eq!(s, 200, "{renamed}");
    assert_eq!(
        (renamed["name"].clone(), renamed["topic"].clone()),
        (json!("ops-team"), json!(""))
    );
    let live = bob_ws.expect("channel_updated", T).await?;
    assert_eq!(live["channel"], renamed);

    // The channel list shows the metadata.
    let (s, list, _) = bob.req("GET", "/v1/channels", None).await?;
    assert_eq!(s, 200);
    let entry = list["channels"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["id"] == json!(ch)))
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["name"], "ops-team");
    assert_eq!(entry["description"], "Pager rota\nand runbooks");
    Ok(())
}

#[tokio::test]
async fn members_strangers_and_direct_channels_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let dave = Client::new(&stack.url(0), "dave");
    let ch = alice.group("ops", &["bob"]).await?;
    let path = format!("/v1/channels/{ch}");
    let body = Some(json!({"name": "mine now"}));

    assert_error(
        &bob.req("PATCH", &path, body.clone()).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &dave.req("PATCH", &path, body.clone()).await?,
        403,
        "permission_denied",
    );
    let unknown = format!("/v1/channels/{}", uuid::Uuid::now_v7());
    assert_error(
        &alice.req("PATCH", &unknown, body.clone()).await?,
        404,
        "not_found",
    );

    let (s, d, _) = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "direct", "members": ["bob"]})),
        )
        .await?;
    assert_eq!(s, 201, "{d}");
    let direct = format!("/v1/channels/{}", d["id"].as_str().unwrap_or_default());
    assert_error(
        &alice
            .req("PATCH", &direct, Some(json!({"topic": "us"})))
            .await?,
        409,
        "conflict",
    );
    assert_eq!(alice.channel(&ch).await?["name"], "ops", "nothing changed");
    Ok(())
}

#[tokio::test]
async fn bad_metadata_is_invalid_and_changes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("ops", &[]).await?;
    let path = format!("/v1/channels/{ch}");
    let before = alice.channel(&ch).await?;
    for bad in [
        json!({}),
        json!({"name": null, "topic": null}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "nul\u{0}"}),
        json!({"topic": "two\nlines"}),
        json!({"topic": "t".repeat(251)}),
        json!({"topic": "bell\u{7}"}),
        json!({"description": "d".repeat(1001)}),
        json!({"description": "esc\u{9b}[2J"}),
        json!({"name": 5}),
    ] {
        let reply = alice.req("PATCH", &path, Some(bad.clone())).await?;
        assert_eq!(reply.0, 400, "{bad} → {}", reply.1);
        assert_eq!(reply.1["error"]["code"], "invalid_argument", "{bad}");
    }
    assert_error(
        &alice
            .req(
                "PATCH",
                "/v1/channels/not-a-uuid",
                Some(json!({"name": "x"})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    // At the limits exactly: accepted.
    let (s, c, _) = alice
        .req(
            "PATCH",
            &path,
            Some(json!({"name": "n".repeat(100), "topic": "t".repeat(250), "description": "d".repeat(1000)})),
        )
        .await?;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["topic"].as_str().map(str::len), Some(250));
    assert_eq!(c["id"], before["id"]);
    Ok(())
}

/// The role of each of `users` in `ch` as `c` reads the member list ("none": not a member).
async fn roles<const N: usize>(
    c: &Client,
    ch: &str,
    users: [&str; N],
) -> anyhow::Result<[String; N]> {
    let (s, members, _) = c
        .req("GET", &format!("/v1/channels/{ch}/members"), None)
        .await?;
    anyhow::ensure!(s == 200, "members of {ch}: {s} {members}");
    Ok(users.map(|u| {
        members["members"]
            .as_array()
            .and_then(|a| a.iter().find(|m| m["user_id"] == u))
            .and_then(|m| m["role"].as_str())
            .unwrap_or("none")
            .to_owned()
    }))
}

#[tokio::test]
async fn owners_name_admins_admins_manage_members_and_nobody_outranks_themselves()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("ops", &["bob", "carol"]).await?;
    let member = |u: &str| format!("/v1/channels/{ch}/members/{u}");
    let mut carol_ws = Ws::connect(&stack.url(0), "carol").await?;
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;

    // A plain member changes no one's role.
    assert_error(
        &carol
            .req("PUT", &member("bob"), Some(json!({"role": "admin"})))
            .await?,
        403,
        "permission_denied",
    );
    // The owner makes bob an admin: everyone sees it live, bob once.
    let (s, m, _) = alice
        .req("PUT", &member("bob"), Some(json!({"role": "admin"})))
        .await?;
    assert_eq!(s, 200, "{m}");
    assert_eq!(
        (m["user_id"].clone(), m["role"].clone()),
        (json!("bob"), json!("admin"))
    );
    for ws in [&mut carol_ws, &mut bob_ws] {
        let f = ws.expect("member_updated", T).await?;
        assert_eq!(
            (
                f["channel_id"].clone(),
                f["user_id"].clone(),
                f["role"].clone(),
                f["updated_by"].clone()
            ),
            (json!(ch), json!("bob"), json!("admin"), json!("alice"))
        );
    }
    let frames = bob_ws
        .joined_barrier(&Client::new(&stack.url(0), "bob"), T)
        .await?;
    assert!(
        !frames.iter().any(|f| f["type"] == "member_updated"),
        "bob got his change twice: {frames:?}"
    );

    // Admins manage members (add, change metadata) but name no admins and touch no one at
    // or above their rank.
    let (s, _, _) = bob
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "dave"})),
        )
        .await?;
    assert_eq!(s, 201);
    let (s, _, _) = bob
        .req(
            "PATCH",
            &format!("/v1/channels/{ch}"),
            Some(json!({"topic": "by bob"})),
        )
        .await?;
    assert_eq!(s, 200);
    for (target, role) in [("carol", "admin"), ("alice", "member"), ("bob", "member")] {
        assert_error(
            &bob.req("PUT", &member(target), Some(json!({"role": role})))
                .await?,
            403,
            "permission_denied",
        );
    }
    // Setting the role someone has changes nothing, and answers the member.
    let (s, m, _) = alice
        .req("PUT", &member("carol"), Some(json!({"role": "member"})))
        .await?;
    assert_eq!((s, m["role"].clone()), (200, json!("member")));

    // Bad input and unknown members change nothing.
    for (target, role, status, code) in [
        ("carol", "owner", 400, "invalid_argument"),
        ("carol", "king", 400, "invalid_argument"),
        ("zed", "admin", 404, "not_found"),
        ("bad id", "admin", 400, "invalid_argument"),
    ] {
        let reply = alice
            .req("PUT", &member(target), Some(json!({"role": role})))
            .await?;
        assert_error(&reply, status, code);
    }

    // The owner demotes the admin.
    let (s, m, _) = alice
        .req("PUT", &member("bob"), Some(json!({"role": "member"})))
        .await?;
    assert_eq!((s, m["role"].clone()), (200, json!("member")));
    assert_eq!(
        roles(&alice, &ch, ["alice", "bob", "carol", "dave"]).await?,
        ["owner", "member", "member", "member"]
    );
    Ok(())
}

#[tokio::test]
async fn ownership_moves_by_a_transfer_and_the_old_owner_becomes_admin() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("ops", &["carol"]).await?;
    let owner = format!("/v1/channels/{ch}/owner");

    assert_error(
        &carol
            .req("POST", &owner, Some(json!({"user_id": "carol"})))
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req("POST", &owner, Some(json!({"user_id": "alice"})))
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req("POST", &owner, Some(json!({"user_id": "zed"})))
            .await?,
        404,
        "not_found",
    );
    let (s, t, _) = alice
        .req("POST", &owner, Some(json!({"user_id": "carol"})))
        .await?;
    assert_eq!(s, 200, "{t}");
    assert_eq!(
        (t["owner"]["user_id"].clone(), t["owner"]["role"].clone()),
        (json!("carol"), json!("owner"))
    );
    assert_eq!(
        (
            t["previous"]["user_id"].clone(),
            t["previous"]["role"].clone()
        ),
        (json!("alice"), json!("admin"))
    );
    // The new owner rules: the old one (an admin now) may no longer transfer, and may be
    // removed by the owner.
    assert_error(
        &alice
            .req("POST", &owner, Some(json!({"user_id": "alice"})))
            .await?,
        403,
        "permission_denied",
    );
    let (s, _, _) = carol
        .req("DELETE", &format!("/v1/channels/{ch}/members/alice"), None)
        .await?;
    assert_eq!(s, 204);
    Ok(())
}

#[tokio::test]
async fn direct_channels_have_two_equal_members_and_no_roles() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let (s, d, _) = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "direct", "members": ["bob"]})),
        )
        .await?;
    assert_eq!(s, 201, "{d}");
    let ch = d["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        roles(&alice, &ch, ["alice", "bob"]).await?,
        ["member", "member"],
        "the creator is no owner"
    );
    // The creator may neither delete bob's message nor remove bob.
    bob.send(&ch, "b1", "mine").await?;
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/messages/1"), None)
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
            .await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req(
                "PUT",
                &format!("/v1/channels/{ch}/members/bob"),
                Some(json!({"role": "admin"})),
            )
            .await?,
        409,
        "conflict",
    );
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{ch}/owner"),
                Some(json!({"user_id": "bob"})),
            )
            .await?,
        409,
        "conflict",
    );
    // Each still deletes their own.
    let (s, _, _) = bob
        .req("DELETE", &format!("/v1/channels/{ch}/messages/1"), None)
        .await?;
    assert_eq!(s, 204);
    Ok(())
}

#[tokio::test]
async fn public_channels_are_found_by_name_and_joined_by_anyone() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let erin = Client::new(&stack.url(0), "erin");
    let create = |kind: &'static str, name: &'static str| {
        let alice = alice.clone();
        async move {
            let (s, c, _) = alice
                .req(
                    "POST",
                    "/v1/channels",
                    Some(json!({"kind": kind, "name": name})),
                )
                .await?;
            anyhow::ensure!(s == 201, "{c}");
            Ok::<_, anyhow::Error>(c)
        }
    };
    let rust = create("public", "Rust lovers").await?;
    assert_eq!(rust["kind"], "public");
    create("public", "rustaceans_50%").await?;
    create("public", "Gardening").await?;
    create("group", "rust secret").await?;

    // Case-insensitive substring; private groups never appear; `%`/`_` match themselves.
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["channels"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (s, found, _) = erin
        .req("GET", "/v1/channels/public?query=RUST", None)
        .await?;
    assert_eq!(s, 200, "{found}");
    assert_eq!(names(&found), ["Rust lovers", "rustaceans_50%"]);
    assert_eq!(found["next_cursor"], serde_json::Value::Null);
    let (_, found, _) = erin
        .req("GET", "/v1/channels/public?query=50%25", None)
        .await?;
    assert_eq!(names(&found), ["rustaceans_50%"]);
    let (_, found, _) = erin
        .req("GET", "/v1/channels/public?query=s_5", None)
        .await?;
    assert_eq!(names(&found), ["rustaceans_50%"], "`_` is not a wildcard");
    // Pages of one, in name order, through the cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, page, _) = erin
            .req(
                "GET",
                &format!("/v1/channels/public?limit=1&cursor={cursor}"),
                None,
            )
            .await?;
        assert_eq!(s, 200, "{page}");
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["Gardening", "Rust lovers", "rustaceans_50%"]);
    assert_error(
        &erin
            .req("GET", "/v1/channels/public?cursor=nope", None)
            .await?,
        400,
        "invalid_argument",
    );

    // Anyone joins a public channel: 201 once, 200 after; then it is theirs, live.
    let id = rust["id"].as_str().unwrap_or_default().to_owned();
    let mut erin_ws = Ws::connect(&stack.url(0), "erin").await?;
    let (s, m, _) = erin
        .req("POST", &format!("/v1/channels/{id}/join"), None)
        .await?;
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["user_id"].clone(), m["role"].clone()),
        (json!("erin"), json!("member"))
    );
    let joined = erin_ws.expect("member_joined", T).await?;
    assert_eq!(
        (joined["channel_id"].clone(), joined["added_by"].clone()),
        (json!(id), json!("erin"))
    );
    let (s, _, _) = erin
        .req("POST", &format!("/v1/channels/{id}/join"), None)
        .await?;
    assert_eq!(s, 200, "joining again changes nothing");
    alice.send(&id, "a1", "welcome").await?;
    let got = erin_ws.messages(1, T).await?;
    assert_eq!(got[0]["body"], "welcome");
    assert_eq!(erin.channel(&id).await?["member_count"], 2);

    // Private groups and direct channels are not joined; unknown ones are not found.
    let secret = create("group", "hidden").await?;
    let secret = secret["id"].as_str().unwrap_or_default().to_owned();
    assert_error(
        &erin
            .req("POST", &format!("/v1/channels/{secret}/join"), None)
            .await?,
        403,
        "permission_denied",
    );
    let unknown = uuid::Uuid::now_v7();
    assert_error(
        &erin
            .req("POST", &format!("/v1/channels/{unknown}/join"), None)
            .await?,
        404,
        "not_found",
    );
    Ok(())
}

#[tokio::test]
async fn invites_admit_until_used_up_and_a_retry_takes_no_use() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let [erin, fay, gus] = ["erin", "fay", "gus"].map(|u| Client::new(&stack.url(0), u));
    let ch = alice.group("private", &["bob"]).await?;
    let invites = format!("/v1/channels/{ch}/invites");

    // Plain members, strangers and bad options are refused.
    assert_error(
        &bob.req("POST", &invites, Some(json!({}))).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &erin.req("POST", &invites, Some(json!({}))).await?,
        403,
        "permission_denied",
    );
    for bad in [
        json!({"max_uses": 1001}),
        json!({"expires_in_secs": 2_592_001}),
        json!({"max_uses": -1}),
    ] {
        let r = alice.req("POST", &invites, Some(bad.clone())).await?;
        assert_eq!(
            (r.0, r.1["error"]["code"].clone()),
            (400, json!("invalid_argument")),
            "{bad}"
        );
    }

    let (s, inv, _) = alice
        .req(
            "POST",
            &invites,
            Some(json!({"max_uses": 2, "expires_in_secs": 3600})),
        )
        .await?;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(
        (
            inv["channel_id"].clone(),
            inv["max_uses"].clone(),
            inv["uses"].clone()
        ),
        (json!(ch), json!(2), json!(0))
    );
    assert!(inv["expires_at"].is_string(), "{inv}");
    let code = inv["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code.len(), 32);
    let accept = format!("/v1/invites/{code}/accept");

    let mut erin_ws = Ws::connect(&stack.url(0), "erin").await?;
    let (s, m, _) = erin.req("POST", &accept, None).await?;
    assert_eq!(s, 201, "{m}");
    assert_eq!(
        (m["user_id"].clone(), m["role"].clone()),
        (json!("erin"), json!("member"))
    );
    let joined = erin_ws.expect("member_joined", T).await?;
    assert_eq!(joined["added_by"], "alice", "the inviter added her");
    // A retry answers the membership and takes no use: fay still gets in, gus does not.
    let (s, _, _) = erin.req("POST", &accept, None).await?;
    assert_eq!(s, 200);
    let (s, _, _) = fay.req("POST", &accept, None).await?;
    assert_eq!(s, 201);
    assert_error(&gus.req("POST", &accept, None).await?, 404, "not_found");
    for code in ["0123456789abcdef0123456789abcdef", "not-hex!", "x"] {
        assert_error(
            &gus.req("POST", &format!("/v1/invites/{code}/accept"), None)
                .await?,
            404,
            "not_found",
        );
    }
    assert_eq!(
        roles(&alice, &ch, ["fay", "gus"]).await?,
        ["member", "none"]
    );

    // Direct channels take no invites.
    let (_, d, _) = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "direct", "members": ["bob"]})),
        )
        .await?;
    let direct = d["id"].as_str().unwrap_or_default();
    assert_error(
        &alice
            .req(
                "POST",
                &format!("/v1/channels/{direct}/invites"),
                Some(json!({})),
            )
            .await?,
        409,
        "conflict",
    );
    Ok(())
}

#[tokio::test]
async fn when_the_owner_leaves_the_first_admin_then_the_first_member_takes_over()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = alice.group("ops", &["bob", "dave"]).await?;
    let (s, _, _) = alice
        .req(
            "POST",
            &format!("/v1/channels/{ch}/members"),
            Some(json!({"user_id": "carol"})),
        )
        .await?;
    assert_eq!(s, 201);
    let (s, _, _) = alice
        .req(
            "PUT",
            &format!("/v1/channels/{ch}/members/carol"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_eq!(s, 200);
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;
    // The owner leaves: carol, the only admin, becomes owner though bob joined first.
    let (s, _, _) = alice
        .req("DELETE", &format!("/v1/channels/{ch}/members/alice"), None)
        .await?;
    assert_eq!(s, 204);
    assert_eq!(
        roles(&carol, &ch, ["carol", "bob", "dave", "alice"]).await?,
        ["owner", "member", "member", "none"]
    );
    let f = bob_ws
        .until(T, |f| f["type"] == "member_updated")
        .await?
        .pop()
        .unwrap_or_default();
    assert_eq!(
        (
            f["user_id"].clone(),
            f["role"].clone(),
            f["updated_by"].clone()
        ),
        (json!("carol"), json!("owner"), json!("alice"))
    );

    // No admin left: the member who joined first (bob, with dave) takes over.
    let (s, _, _) = carol
        .req("DELETE", &format!("/v1/channels/{ch}/members/carol"), None)
        .await?;
    assert_eq!(s, 204);
    let bob = Client::new(&stack.url(0), "bob");
    assert_eq!(
        roles(&bob, &ch, ["bob", "dave"]).await?,
        ["owner", "member"]
    );
    Ok(())
}
