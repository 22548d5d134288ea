//! Presence through the gateway: real presence service, two gateway replicas.

use std::time::Duration;

use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{QUIET, T, metrics, sample, wait_for};

/// One messaging, one presence, two gateways.
async fn stack() -> anyhow::Result<Stack> {
    let mut s = Stack::empty().await?;
    s.add_messaging(&[]).await?;
    s.add_presence(&[("PARLEY__TYPING__THROTTLE_MS", "300")])
        .await?;
    s.add_gateway(&[]).await?;
    s.add_gateway(&[]).await?;
    Ok(s)
}

async fn status(c: &Client, users: &str) -> anyhow::Result<Vec<Value>> {
    let (s, b, _) = c
        .req("GET", &format!("/v1/presence?user_ids={users}"), None)
        .await?;
    anyhow::ensure!(s == 200, "presence: {s} {b}");
    Ok(b["presence"].as_array().cloned().unwrap_or_default())
}

/// Waits until the gateways of this test process hold `n` WebSocket connections. A closed
/// connection is counted out only after the gateway has unregistered it in presence (which
/// publishes what changed before it answers): a barrier for the presence of its user.
async fn connections_down_to(c: &Client, n: u32) -> anyhow::Result<()> {
    wait_for(
        T,
        format_args!("{n} WebSocket connections left"),
        || async { Ok(sample(&metrics(c).await?, "gateway_ws_connections")) },
        |got| *got == Some(f64::from(n)),
    )
    .await?;
    Ok(())
}

/// Polls until `user`'s status is `want` (bounded), returning the entry.
async fn wait_status(
    c: &Client,
    user: &str,
    want: &str,
    within: Duration,
) -> anyhow::Result<Value> {
    let seen = || async { Ok(status(c, user).await?[0].clone()) };
    wait_for(within, format_args!("{user} {want}"), seen, |p| {
        p["status"] == want
    })
    .await
}

#[tokio::test]
async fn online_while_any_connection_lives_then_offline_with_last_seen() -> anyhow::Result<()> {
    let stack = stack().await?;
    let carol = Client::new(&stack.url(0), "carol");
    carol.group("friends", &["bob"]).await?;
    let p = status(&carol, "bob").await?;
    assert_eq!(p[0]["status"], "offline");
    assert_eq!(p[0]["last_seen_at"], Value::Null, "never seen");

    let b1 = Ws::connect(&stack.url(0), "bob").await?;
    let b2 = Ws::connect(&stack.url(1), "bob").await?;
    wait_status(&carol, "bob", "online", T).await?;
    b1.close().await;
    // Still online once presence has been told about b1: the connection on the other
    // replica lives.
    connections_down_to(&carol, 1).await?;
    assert_eq!(status(&carol, "bob").await?[0]["status"], "online");
    b2.close().await;
    let p = wait_status(&carol, "bob", "offline", T).await?;
    assert!(p["last_seen_at"].is_string(), "last_seen_at kept: {p}");
    Ok(())
}

#[tokio::test]
async fn killed_replica_users_go_offline_and_watchers_are_told() -> anyhow::Result<()> {
    let mut stack = stack().await?;
    // Watcher on replica 1; bob only on replica 0, which dies without cleanup.
    let mut watcher = Ws::connect(&stack.url(1), "carol").await?;
    let _bob = Ws::connect(&stack.url(0), "bob").await?;
    let carol = Client::new(&stack.url(1), "carol");
    carol.group("friends", &["bob"]).await?;
    wait_status(&carol, "bob", "online", T).await?;
    watcher
        .send(json!({"type": "watch_presence", "user_ids": ["bob"]}))
        .await?;
    let first = watcher.expect("presence", T).await?;
    assert_eq!(first["user_id"], "bob");
    assert_eq!(first["status"], "online");

    stack.gateways.remove(0).kill();
    // The gateway heartbeats every second here, so connections live 5 s (the minimum TTL);
    // the sweeper must turn bob offline and tell the watcher on the other replica.
    let f = watcher.expect("presence", Duration::from_secs(20)).await?;
    assert_eq!(f["user_id"], "bob");
    assert_eq!(f["status"], "offline");
    assert!(f["last_seen_at"].is_string());
    assert_eq!(status(&carol, "bob").await?[0]["status"], "offline");
    Ok(())
}

#[tokio::test]
async fn typing_reaches_members_on_other_replica_not_the_typist() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("team", &["bob"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    let mut b = Ws::connect(&stack.url(1), "bob").await?;
    let mut outsider = Ws::connect(&stack.url(1), "mallory").await?;

    a.send(json!({"type": "typing", "channel_id": ch})).await?;
    let t = b.expect("typing", T).await?;
    assert_eq!(t["channel_id"], ch.as_str());
    assert_eq!(t["user_id"], "alice");
    // Not echoed to the typist (before bob's typing, published after alice's on the same
    // topic), not seen by a non-member (before a marker on her own topic).
    b.send(json!({"type": "typing", "channel_id": ch})).await?;
    let before_bobs = a
        .before(T, |f| f["type"] == "typing" && f["user_id"] == "bob")
        .await?;
    for f in before_bobs {
        assert_ne!(f["type"], "typing", "typist got its own typing: {f}");
    }
    let mallory = Client::new(&stack.url(1), "mallory");
    for f in outsider.joined_barrier(&mallory, T).await? {
        assert_ne!(f["type"], "typing", "non-member got typing: {f}");
    }

    // A non-member typing is rejected and nothing is broadcast.
    outsider
        .send(json!({"type": "typing", "channel_id": ch, "ref": 9}))
        .await?;
    let e = outsider.expect("error", T).await?;
    assert_eq!(e["code"], "permission_denied");
    assert_eq!(e["ref"], 9);
    // No marker is certain to follow: typing goes to presence fire-and-forget, so nothing
    // the test sends is sure to be published after a typing the gateway let through.
    for f in b.frames_for(QUIET).await? {
        assert_ne!(
            f["type"], "typing",
            "typing from a non-member was broadcast: {f}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn batch_query_of_500_users() -> anyhow::Result<()> {
    let stack = stack().await?;
    let mut live = Vec::new();
    for i in 0..5 {
        live.push(Ws::connect(&stack.url(i % 2), &format!("u{i}")).await?);
    }
    let c = Client::new(&stack.url(0), "asker");
    // Presence is visible between users who share a channel: the asker shares one with
    // u0-u9 (u5-u9 never connect); u10-u499 read as never seen either way.
    let shared: Vec<String> = (0..10).map(|i| format!("u{i}")).collect();
    c.group(
        "all",
        &shared.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await?;
    wait_status(&c, "u4", "online", T).await?;
    let ids: Vec<String> = (0..500).map(|i| format!("u{i}")).collect();
    let p = status(&c, &ids.join(",")).await?;
    assert_eq!(p.len(), 500);
    for (i, e) in p.iter().enumerate() {
        assert_eq!(e["user_id"], format!("u{i}"));
        assert_eq!(e["status"], if i < 5 { "online" } else { "offline" }, "{e}");
    }
    let too_many: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    let (s, b, _) = c
        .req(
            "GET",
            &format!("/v1/presence?user_ids={}", too_many.join(",")),
            None,
        )
        .await?;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["code"], "invalid_argument");
    let (s, _, _) = c.req("GET", "/v1/presence?user_ids=bad%20id", None).await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test]
async fn presence_down_chat_still_works() -> anyhow::Result<()> {
    let mut stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("ops", &["bob"]).await?;
    stack.presence.remove(0).kill();

    // New connections, live delivery, REST send and history all keep working.
    let mut b = Ws::connect(&stack.url(1), "bob").await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    alice.send(&ch, "m1", "still here").await?;
    assert_eq!(b.messages(1, T).await?[0]["body"], "still here");
    a.send(json!({"type": "send", "ref": 1, "channel_id": ch, "client_msg_id": "m2", "body": "ws too"})).await?;
    assert_eq!(b.messages(1, T).await?[0]["seq"], 2);
    let (s, h, _) = alice
        .req("GET", &format!("/v1/channels/{ch}/messages"), None)
        .await?;
    assert_eq!(s, 200);
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(2));

    // Presence features degrade with a clear error; readiness stays up.
    let (s, b2, _) = alice.req("GET", "/v1/presence?user_ids=bob", None).await?;
    assert_eq!(s, 503, "{b2}");
    assert_eq!(b2["error"]["code"], "unavailable");
    a.send(json!({"type": "typing", "channel_id": ch})).await?;
    a.send(json!({"type": "watch_presence", "user_ids": ["bob"], "ref": "w"}))
        .await?;
    let e = a.expect("error", T).await?;
    assert_eq!(e["code"], "unavailable");
    let (s, r, _) = alice.raw("GET", "/readyz", None, None).await?;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["presence"], false);
    Ok(())
}

#[tokio::test]
async fn presence_is_visible_only_to_users_who_share_a_channel() -> anyhow::Result<()> {
    let stack = stack().await?;
    let carol = Client::new(&stack.url(0), "carol");
    carol.group("friends", &["bob"]).await?;
    let mallory = Client::new(&stack.url(1), "mallory");
    let bob = Ws::connect(&stack.url(0), "bob").await?;
    let _m = Ws::connect(&stack.url(1), "mallory").await?;
    wait_status(&carol, "bob", "online", T).await?;

    // A stranger reads bob as never seen; her own presence she sees.
    let p = status(&mallory, "bob,mallory").await?;
    assert_eq!(
        p[0],
        json!({"user_id": "bob", "status": "offline", "last_seen_at": null})
    );
    assert_eq!(p[1]["status"], "online", "{}", p[1]);

    // Watching: carol gets bob's state and changes, mallory one never-seen frame, nothing more.
    let mut cw = Ws::connect(&stack.url(1), "carol").await?;
    let mut mw = Ws::connect(&stack.url(0), "mallory").await?;
    for w in [&mut cw, &mut mw] {
        w.send(json!({"type": "watch_presence", "user_ids": ["bob"]}))
            .await?;
    }
    assert_eq!(cw.expect("presence", T).await?["status"], "online");
    let f = mw.expect("presence", T).await?;
    assert_eq!(f["status"], "offline");
    assert_eq!(f["last_seen_at"], Value::Null);
    bob.close().await;
    let f = cw.expect("presence", T).await?;
    assert_eq!(f["status"], "offline");
    assert!(f["last_seen_at"].is_string());
    // The change was published (carol got it): nothing of it before a later marker.
    for f in mw.joined_barrier(&mallory, T).await? {
        assert_ne!(f["type"], "presence", "a stranger saw a change: {f}");
    }
    let p = status(&mallory, "bob").await?;
    assert_eq!(p[0]["last_seen_at"], Value::Null, "{}", p[0]);
    Ok(())
}

#[tokio::test]
async fn a_watch_ends_when_the_last_shared_channel_goes() -> anyhow::Result<()> {
    let stack = stack().await?;
    let carol = Client::new(&stack.url(0), "carol");
    let ch = carol.group("friends", &["bob"]).await?;
    let bob = Ws::connect(&stack.url(0), "bob").await?;
    wait_status(&carol, "bob", "online", T).await?;
    let mut cw = Ws::connect(&stack.url(1), "carol").await?;
    cw.send(json!({"type": "watch_presence", "user_ids": ["bob"]}))
        .await?;
    assert_eq!(cw.expect("presence", T).await?["status"], "online");

    // Bob leaves the only channel they share: carol's watch ends with a never-seen frame.
    let (s, b, _) = Client::new(&stack.url(0), "bob")
        .req("DELETE", &format!("/v1/channels/{ch}/members/bob"), None)
        .await?;
    assert_eq!(s, 204, "{b}");
    let f = cw.expect("presence", T).await?;
    assert_eq!(
        f,
        json!({"type": "presence", "user_id": "bob", "status": "offline", "last_seen_at": null})
    );
    // His later changes are not told to her: once his going offline is published, nothing
    // of it before a later marker on her own topic.
    bob.close().await;
    connections_down_to(&carol, 1).await?;
    for f in cw.joined_barrier(&carol, T).await? {
        assert_ne!(
            f["type"], "presence",
            "a former contact's change was sent: {f}"
        );
    }
    Ok(())
}
