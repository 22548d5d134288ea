//! Running a channel (issue 16): archive and unarchive, delete, bans, mutes and blocks,
//! through the public API against the real services.

use parley_testkit::{Client, Stack, Ws, eventually};
use serde_json::{Value, json};

use crate::{T, assert_error, assert_error_frame};

/// One messaging and one gateway whose per-user rate limits are off (these tests act
/// more often than a person would in a minute).
async fn stack() -> anyhow::Result<Stack> {
    let mut s = Stack::empty().await?;
    s.add_messaging(&[]).await?;
    s.add_gateway(&[
        ("PARLEY__RATE__EDITS__N", "0"),
        ("PARLEY__RATE__JOINS__N", "0"),
        ("PARLEY__RATE__CHANNEL_CREATIONS__N", "0"),
        ("PARLEY__RATE__MESSAGES__N", "0"),
    ])
    .await?;
    Ok(s)
}

/// The system messages of `ch`'s latest history page, oldest first: their `system` objects.
async fn system_events(c: &Client, ch: &str) -> anyhow::Result<Vec<Value>> {
    let page = c.history(ch, "limit=200").await?;
    let mut events: Vec<(u64, Value)> = page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m.get("system").is_some())
        .map(|m| (m["seq"].as_u64().unwrap_or(0), m["system"].clone()))
        .collect();
    events.sort_by_key(|(s, _)| *s);
    Ok(events.into_iter().map(|(_, e)| e).collect())
}

/// A public channel of `owner` with `members`; its id.
async fn public(owner: &Client, members: &[&str]) -> anyhow::Result<String> {
    let (s, c, _) = owner
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "public", "name": "lobby", "members": members})),
        )
        .await?;
    anyhow::ensure!(s == 201, "{c}");
    Ok(c["id"].as_str().unwrap_or_default().to_owned())
}

fn in_secs(s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(s))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[tokio::test]
async fn archived_channels_are_read_only_until_unarchived() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("ops", &["bob"]).await?;
    let earlier = bob.send(&ch, "b1", "before the archive").await?;
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;

    assert_error(
        &bob.req("POST", &format!("/v1/channels/{ch}/archive"), None)
            .await?,
        403,
        "permission_denied",
    );
    let (s, c, _) = alice
        .req("POST", &format!("/v1/channels/{ch}/archive"), None)
        .await?;
    assert_eq!(s, 200, "{c}");
    assert!(c["archived_at"].is_string(), "{c}");
    let live = bob_ws.expect("channel_updated", T).await?;
    assert_eq!(live["channel"], c, "members see the archive live");

    // Read-only: sends (REST and WebSocket) and edits refused, history readable.
    assert_error(
        &bob.post_message(&ch, "b2", "after").await?,
        409,
        "archived",
    );
    bob_ws
        .send(
            json!({"type": "send", "ref": 7, "channel_id": ch, "client_msg_id": "b3", "body": "x"}),
        )
        .await?;
    let refused = bob_ws.expect("error", T).await?;
    assert_error_frame(&refused, "archived", Some(&json!(7)));
    let seq = earlier["seq"].as_u64().unwrap_or_default();
    assert_error(
        &bob.req(
            "PATCH",
            &format!("/v1/channels/{ch}/messages/{seq}"),
            Some(json!({"body": "edited"})),
        )
        .await?,
        409,
        "archived",
    );
    // A retry of a send acknowledged before the archive still answers the original.
    let (s, again, _) = bob.post_message(&ch, "b1", "before the archive").await?;
    assert_eq!((s, again["seq"].as_u64()), (200, Some(seq)));
    let history = bob.history(&ch, "").await?;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));

    // Archiving again changes nothing; unarchiving restores sends.
    let (s, same, _) = alice
        .req("POST", &format!("/v1/channels/{ch}/archive"), None)
        .await?;
    assert_eq!(
        (s, same["archived_at"].clone()),
        (200, c["archived_at"].clone())
    );
    let (s, open, _) = alice
        .req("POST", &format!("/v1/channels/{ch}/unarchive"), None)
        .await?;
    assert_eq!(
        (s, open["archived_at"].clone()),
        (200, Value::Null),
        "{open}"
    );
    let sent = bob.send(&ch, "b4", "back").await?;
    assert_eq!(
        sent["seq"].as_u64(),
        Some(seq + 1),
        "no seq was used by refusals"
    );
    Ok(())
}

#[tokio::test]
async fn deleting_a_channel_removes_it_and_its_history_for_everyone() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("temp", &["bob"]).await?;
    bob.send(&ch, "b1", "hello").await?;
    let mut bob_ws = Ws::connect(&stack.url(0), "bob").await?;
    let path = format!("/v1/channels/{ch}");

    // Only the owner deletes; an admin may not.
    alice
        .req(
            "PUT",
            &format!("{path}/members/bob"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_error(
        &bob.req("DELETE", &path, None).await?,
        403,
        "permission_denied",
    );
    let (s, _, _) = alice.req("DELETE", &path, None).await?;
    assert_eq!(s, 204);
    let gone = bob_ws.expect("channel_deleted", T).await?;
    assert_eq!(
        (gone["channel_id"].clone(), gone["deleted_by"].clone()),
        (json!(ch), json!("alice"))
    );
    // Nothing more arrives for it: a send into it is not_found.
    assert_error(&bob.req("GET", &path, None).await?, 404, "not_found");
    assert_error(
        &bob.req("GET", &format!("{path}/messages"), None).await?,
        404,
        "not_found",
    );
    assert_error(&bob.post_message(&ch, "b2", "hi").await?, 404, "not_found");
    let (s, list, _) = bob.req("GET", "/v1/channels", None).await?;
    assert_eq!(s, 200);
    assert!(
        !list["channels"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["id"] == json!(ch))),
        "{list}"
    );
    assert_error(&alice.req("DELETE", &path, None).await?, 404, "not_found");

    // A direct channel has no owner to delete it.
    let (s, d, _) = alice
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "direct", "members": ["bob"]})),
        )
        .await?;
    assert_eq!(s, 201, "{d}");
    let direct = format!("/v1/channels/{}", d["id"].as_str().unwrap_or_default());
    assert_error(&alice.req("DELETE", &direct, None).await?, 409, "conflict");
    Ok(())
}

#[tokio::test]
async fn bans_remove_and_keep_out_until_lifted_or_expired() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let ch = public(&alice, &["bob", "carol"]).await?;
    let path = format!("/v1/channels/{ch}");
    let mut carol_ws = Ws::connect(&stack.url(0), "carol").await?;

    // A member bans nobody; nobody bans the owner or themselves.
    assert_error(
        &bob.req("PUT", &format!("{path}/bans/carol"), None).await?,
        403,
        "permission_denied",
    );
    alice
        .req(
            "PUT",
            &format!("{path}/members/bob"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_error(
        &bob.req("PUT", &format!("{path}/bans/alice"), None).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req("PUT", &format!("{path}/bans/alice"), None)
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "PUT",
                &format!("{path}/bans/carol"),
                Some(json!({"expires_at": in_secs(-60)})),
            )
            .await?,
        400,
        "invalid_argument",
    );
    assert_error(
        &alice
            .req(
                "PUT",
                &format!("{path}/bans/carol"),
                Some(json!({"reason": "x".repeat(501)})),
            )
            .await?,
        400,
        "invalid_argument",
    );

    // The admin bans carol: she is removed, sees it, and the history records it.
    let (s, ban, _) = bob
        .req(
            "PUT",
            &format!("{path}/bans/carol"),
            Some(json!({"reason": "spam"})),
        )
        .await?;
    assert_eq!(s, 200, "{ban}");
    assert_eq!(
        (
            ban["user_id"].clone(),
            ban["banned_by"].clone(),
            ban["reason"].clone()
        ),
        (json!("carol"), json!("bob"), json!("spam"))
    );
    assert_eq!(
        (ban["removed"].clone(), ban["expires_at"].clone()),
        (json!(true), Value::Null)
    );
    let left = carol_ws.expect("member_left", T).await?;
    assert_eq!(left["removed_by"], "bob");
    let events = system_events(&alice, &ch).await?;
    assert_eq!(
        events,
        vec![json!({"action": "banned", "target_user_id": "carol", "reason": "spam"})]
    );
    // Banning again the same way changes nothing (a retry): no second record.
    let (s, again, _) = bob
        .req(
            "PUT",
            &format!("{path}/bans/carol"),
            Some(json!({"reason": "spam"})),
        )
        .await?;
    assert_eq!((s, again["removed"].clone()), (200, json!(false)));
    assert_eq!(system_events(&alice, &ch).await?.len(), 1);

    // She cannot come back by any door.
    assert_error(
        &carol.req("POST", &format!("{path}/join"), None).await?,
        403,
        "banned",
    );
    assert_error(
        &alice
            .req(
                "POST",
                &format!("{path}/members"),
                Some(json!({"user_id": "carol"})),
            )
            .await?,
        403,
        "banned",
    );
    let (s, invite, _) = alice
        .req("POST", &format!("{path}/invites"), Some(json!({})))
        .await?;
    assert_eq!(s, 201, "{invite}");
    let code = invite["code"].as_str().unwrap_or_default();
    assert_error(
        &carol
            .req("POST", &format!("/v1/invites/{code}/accept"), None)
            .await?,
        403,
        "banned",
    );
    assert_error(
        &carol.post_message(&ch, "c1", "hi").await?,
        403,
        "permission_denied",
    );

    let (s, bans, _) = bob.req("GET", &format!("{path}/bans"), None).await?;
    assert_eq!(s, 200);
    assert_eq!(bans["bans"].as_array().map(Vec::len), Some(1), "{bans}");
    assert_eq!(bans["bans"][0]["user_id"], "carol");
    assert_error(
        &carol.req("GET", &format!("{path}/bans"), None).await?,
        403,
        "permission_denied",
    );

    // Lifted: she may join again, and the invite's use was not taken by the refusal.
    let (s, _, _) = alice
        .req("DELETE", &format!("{path}/bans/carol"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, _, _) = alice
        .req("DELETE", &format!("{path}/bans/carol"), None)
        .await?;
    assert_eq!(s, 204, "lifting again is harmless");
    assert_eq!(
        system_events(&alice, &ch).await?[1],
        json!({"action": "unbanned", "target_user_id": "carol"})
    );
    let (s, _, _) = carol
        .req("POST", &format!("/v1/invites/{code}/accept"), None)
        .await?;
    assert_eq!(s, 201);

    // A ban with an end keeps out only until then.
    let until = in_secs(3);
    let (s, timed, _) = alice
        .req(
            "PUT",
            &format!("{path}/bans/carol"),
            Some(json!({"expires_at": until})),
        )
        .await?;
    assert_eq!((s, timed["removed"].clone()), (200, json!(true)), "{timed}");
    assert!(timed["expires_at"].is_string());
    assert_error(
        &carol.req("POST", &format!("{path}/join"), None).await?,
        403,
        "banned",
    );
    eventually(
        std::time::Duration::from_secs(15),
        "the timed ban ends",
        || async {
            let (s, _, _) = carol.req("POST", &format!("{path}/join"), None).await?;
            Ok((s == 201).then_some(()))
        },
    )
    .await?;
    let (s, bans, _) = alice.req("GET", &format!("{path}/bans"), None).await?;
    assert_eq!(
        (s, bans["bans"].clone()),
        (200, json!([])),
        "expired bans are not listed"
    );
    Ok(())
}

#[tokio::test]
async fn muted_members_read_but_cannot_write_until_unmuted() -> anyhow::Result<()> {
    let stack = stack().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = public(&alice, &["bob"]).await?;
    let path = format!("/v1/channels/{ch}");
    let mine = bob.send(&ch, "b1", "first").await?;
    let seq = mine["seq"].as_u64().unwrap_or_default();

    assert_error(
        &bob.req("PUT", &format!("{path}/mutes/alice"), None).await?,
        403,
        "permission_denied",
    );
    assert_error(
        &alice
            .req("PUT", &format!("{path}/mutes/dave"), None)
            .await?,
        404,
        "not_found",
    );
    let (s, mute, _) = alice
        .req("PUT", &format!("{path}/mutes/bob"), Some(json!({})))
        .await?;
    assert_eq!(s, 200, "{mute}");
    assert_eq!(
        (
            mute["user_id"].clone(),
            mute["muted_by"].clone(),
            mute["expires_at"].clone()
        ),
        (json!("bob"), json!("alice"), Value::Null)
    );

    assert_error(&bob.post_message(&ch, "b2", "let me").await?, 403, "muted");
    let mut ws = Ws::connect(&stack.url(0), "bob").await?;
    ws.send(
        json!({"type": "send", "ref": "m", "channel_id": ch, "client_msg_id": "b3", "body": "x"}),
    )
    .await?;
    assert_error_frame(&ws.expect("error", T).await?, "muted", Some(&json!("m")));
    assert_error(
        &bob.req(
            "PATCH",
            &format!("{path}/messages/{seq}"),
            Some(json!({"body": "edited"})),
        )
        .await?,
        403,
        "muted",
    );
    let history = bob.history(&ch, "").await?;
    assert!(
        history["messages"].as_array().is_some_and(|a| a.len() == 2),
        "{history}"
    );

    // Leaving and joining again does not lift it.
    let (s, _, _) = bob
        .req("DELETE", &format!("{path}/members/bob"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, _, _) = bob.req("POST", &format!("{path}/join"), None).await?;
    assert_eq!(s, 201);
    assert_error(&bob.post_message(&ch, "b4", "now?").await?, 403, "muted");

    let (s, _, _) = alice
        .req("DELETE", &format!("{path}/mutes/bob"), None)
        .await?;
    assert_eq!(s, 204);
    bob.send(&ch, "b5", "thanks").await?;
    let actions: Vec<Value> = system_events(&alice, &ch)
        .await?
        .iter()
        .map(|e| e["action"].clone())
        .collect();
    assert_eq!(actions, vec![json!("muted"), json!("unmuted")]);

    // A mute with an end lasts until then.
    let (s, timed, _) = alice
        .req(
            "PUT",
            &format!("{path}/mutes/bob"),
            Some(json!({"expires_at": in_secs(3)})),
        )
        .await?;
    assert_eq!(s, 200, "{timed}");
    assert_error(&bob.post_message(&ch, "b6", "hm").await?, 403, "muted");
    eventually(
        std::time::Duration::from_secs(15),
        "the timed mute ends",
        || async {
            let (s, _, _) = bob.post_message(&ch, "b7", "free").await?;
            Ok((s == 201).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn blocked_users_cannot_open_or_write_in_a_direct_channel() -> anyhow::Result<()> {
    let stack = stack().await?;
    let bob = Client::new(&stack.url(0), "bob");
    let carol = Client::new(&stack.url(0), "carol");
    let dave = Client::new(&stack.url(0), "dave");
    let direct = |with: &str| json!({"kind": "direct", "members": [with]});
    let (s, d, _) = carol
        .req("POST", "/v1/channels", Some(direct("bob")))
        .await?;
    assert_eq!(s, 201, "{d}");
    let dm = d["id"].as_str().unwrap_or_default().to_owned();
    let group = bob.group("team", &["carol"]).await?;

    assert_error(
        &bob.req("PUT", "/v1/blocks/bob", None).await?,
        400,
        "invalid_argument",
    );
    let (s, _, _) = bob.req("PUT", "/v1/blocks/carol", None).await?;
    assert_eq!(s, 201);
    let (s, _, _) = bob.req("PUT", "/v1/blocks/carol", None).await?;
    assert_eq!(s, 200, "blocking again changes nothing");
    let (s, list, _) = bob.req("GET", "/v1/blocks", None).await?;
    assert_eq!(s, 200);
    assert_eq!(list["blocks"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list["blocks"][0]["user_id"], "carol");
    let (s, theirs, _) = carol.req("GET", "/v1/blocks", None).await?;
    assert_eq!((s, theirs["blocks"].clone()), (200, json!([])));

    // Carol can neither open nor write in a direct channel with bob; bob still can.
    assert_error(
        &carol
            .req("POST", "/v1/channels", Some(direct("bob")))
            .await?,
        403,
        "blocked",
    );
    assert_error(&carol.post_message(&dm, "c1", "hey").await?, 403, "blocked");
    bob.send(&dm, "b1", "I can").await?;
    // Others are not affected, nor is the group they share.
    let (s, _, _) = dave
        .req("POST", "/v1/channels", Some(direct("bob")))
        .await?;
    assert_eq!(s, 201);
    carol.send(&group, "c2", "in the group").await?;

    let (s, _, _) = bob.req("DELETE", "/v1/blocks/carol", None).await?;
    assert_eq!(s, 204);
    carol.send(&dm, "c3", "thanks").await?;
    let (s, _, _) = carol
        .req("POST", "/v1/channels", Some(direct("bob")))
        .await?;
    assert_eq!(s, 200, "the existing direct channel");
    Ok(())
}

/// Who acts in the authorization matrix: the channel's owner, an admin, a plain member, a
/// muted member, a banned user, a member the owner blocked, and a stranger.
const ACTORS: [&str; 7] = [
    "owner", "admin", "member", "muted", "banned", "blocked", "stranger",
];
/// Everyone the matrix needs a client for: the actors and the member acted on.
const USERS: [&str; 8] = [
    "owner", "admin", "member", "muted", "banned", "blocked", "stranger", "target",
];

/// A public channel of `owner` with every actor in their place and `target` (a plain
/// member the operations act on); each member actor has sent one message. Returns the
/// channel and each actor's own message seq (0 for the owner-less rest).
async fn fixture(
    clients: &std::collections::HashMap<&str, Client>,
) -> anyhow::Result<(String, std::collections::HashMap<&'static str, u64>)> {
    let owner = &clients["owner"];
    let (s, c, _) = owner
        .req(
            "POST",
            "/v1/channels",
            Some(json!({"kind": "public", "name": "matrix",
                "members": ["admin", "member", "muted", "banned", "blocked", "target"]})),
        )
        .await?;
    anyhow::ensure!(s == 201, "{c}");
    let ch = c["id"].as_str().unwrap_or_default().to_owned();
    let path = format!("/v1/channels/{ch}");
    let (s, _, _) = owner
        .req(
            "PUT",
            &format!("{path}/members/admin"),
            Some(json!({"role": "admin"})),
        )
        .await?;
    anyhow::ensure!(s == 200);
    let mut seqs = std::collections::HashMap::new();
    for a in ["owner", "admin", "member", "muted", "banned", "blocked"] {
        let m = clients[a].send(&ch, "own", "mine").await?;
        seqs.insert(a, m["seq"].as_u64().unwrap_or_default());
    }
    seqs.insert("stranger", 1);
    let theirs = clients["target"].send(&ch, "own", "the target's").await?;
    seqs.insert("target", theirs["seq"].as_u64().unwrap_or_default());
    let (s, _, _) = owner
        .req("PUT", &format!("{path}/mutes/muted"), None)
        .await?;
    anyhow::ensure!(s == 200);
    let (s, _, _) = owner
        .req("PUT", &format!("{path}/bans/banned"), None)
        .await?;
    anyhow::ensure!(s == 200);
    Ok((ch, seqs))
}

/// What the channel looks like to its owner: the channel, its members and its history.
async fn snapshot(owner: &Client, ch: &str) -> anyhow::Result<Value> {
    let path = format!("/v1/channels/{ch}");
    let channel = owner.req("GET", &path, None).await?;
    let members = owner.req("GET", &format!("{path}/members"), None).await?;
    let history = owner.req("GET", &format!("{path}/messages"), None).await?;
    let bans = owner.req("GET", &format!("{path}/bans"), None).await?;
    Ok(json!([channel.1, members.1, history.1, bans.1]))
}

/// An expected answer: a status, and the error code (empty for a success).
type Answer = (u16, &'static str);
/// One operation of the matrix: its name, method, path under the channel (`{own}`: the
/// actor's own message seq, `{theirs}`: the target's, `{me}`: the actor), body, and the
/// answer to each actor.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    Option<Value>,
    [Answer; 7],
);

#[tokio::test]
async fn authorization_matrix_every_role_times_every_operation() -> anyhow::Result<()> {
    let stack = stack().await?;
    let mut clients = std::collections::HashMap::new();
    for a in USERS {
        clients.insert(a, Client::new(&stack.url(0), a));
    }
    let (s, _, _) = clients["owner"]
        .req("PUT", "/v1/blocks/blocked", None)
        .await?;
    assert_eq!(s, 201);

    // Expected answer per actor, in ACTORS order: a success status, or (status, code).
    const OK: (u16, &str) = (200, "");
    const CREATED: (u16, &str) = (201, "");
    const GONE: (u16, &str) = (204, "");
    const DENIED: (u16, &str) = (403, "permission_denied");
    const MUTED: (u16, &str) = (403, "muted");
    const BANNED: (u16, &str) = (403, "banned");
    let managers = |ok| [ok, ok, DENIED, DENIED, DENIED, DENIED, DENIED];
    let owner_only = |ok| [ok, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED];
    let matrix: Vec<Case> = vec![
        (
            "read the channel",
            "GET",
            "",
            None,
            [OK, OK, OK, OK, DENIED, OK, DENIED],
        ),
        (
            "list members",
            "GET",
            "/members",
            None,
            [OK, OK, OK, OK, DENIED, OK, DENIED],
        ),
        (
            "read history",
            "GET",
            "/messages",
            None,
            [OK, OK, OK, OK, DENIED, OK, DENIED],
        ),
        (
            "send",
            "POST",
            "/messages",
            Some(json!({"client_msg_id": "new", "body": "hi"})),
            [CREATED, CREATED, CREATED, MUTED, DENIED, CREATED, DENIED],
        ),
        (
            "edit own message",
            "PATCH",
            "/messages/{own}",
            Some(json!({"body": "edited"})),
            [OK, OK, OK, MUTED, DENIED, OK, DENIED],
        ),
        (
            "delete own message",
            "DELETE",
            "/messages/{own}",
            None,
            [GONE, GONE, GONE, GONE, DENIED, GONE, DENIED],
        ),
        (
            "delete another's message",
            "DELETE",
            "/messages/{theirs}",
            None,
            managers(GONE),
        ),
        (
            "leave",
            "DELETE",
            "/members/{me}",
            None,
            [GONE, GONE, GONE, GONE, DENIED, GONE, DENIED],
        ),
        (
            "change metadata",
            "PATCH",
            "",
            Some(json!({"topic": "new topic"})),
            managers(OK),
        ),
        (
            "add a member",
            "POST",
            "/members",
            Some(json!({"user_id": "newcomer"})),
            managers(CREATED),
        ),
        (
            "remove a member",
            "DELETE",
            "/members/target",
            None,
            managers(GONE),
        ),
        (
            "name an admin",
            "PUT",
            "/members/target",
            Some(json!({"role": "admin"})),
            owner_only(OK),
        ),
        (
            "transfer ownership",
            "POST",
            "/owner",
            Some(json!({"user_id": "target"})),
            owner_only(OK),
        ),
        ("ban", "PUT", "/bans/target", None, managers(OK)),
        ("mute", "PUT", "/mutes/target", None, managers(OK)),
        ("lift a ban", "DELETE", "/bans/banned", None, managers(GONE)),
        (
            "lift a mute",
            "DELETE",
            "/mutes/muted",
            None,
            managers(GONE),
        ),
        ("list bans", "GET", "/bans", None, managers(OK)),
        (
            "invite",
            "POST",
            "/invites",
            Some(json!({})),
            managers(CREATED),
        ),
        ("archive", "POST", "/archive", None, managers(OK)),
        ("unarchive", "POST", "/unarchive", None, managers(OK)),
        ("delete the channel", "DELETE", "", None, owner_only(GONE)),
        (
            "join",
            "POST",
            "/join",
            None,
            [OK, OK, OK, OK, BANNED, OK, CREATED],
        ),
    ];
    let mut failures = Vec::new();
    for (what, method, suffix, body, expected) in &matrix {
        for (actor, (status, code)) in ACTORS.iter().zip(expected) {
            let (ch, seqs) = fixture(&clients).await?;
            let before = snapshot(&clients["owner"], &ch).await?;
            let path = format!("/v1/channels/{ch}{suffix}")
                .replace("{own}", &seqs[actor].to_string())
                .replace("{theirs}", &seqs["target"].to_string())
                .replace("{me}", actor);
            let reply = clients[actor].req(method, &path, body.clone()).await?;
            let (s, b, _) = &reply;
            let got_code = b["error"]["code"].as_str().unwrap_or_default();
            if s != status || got_code != *code {
                failures.push(format!(
                    "{what} by {actor}: expected {status} {code:?}, got {s} {b}"
                ));
                continue;
            }
            // A refusal changes nothing.
            if *status >= 400 {
                let after = snapshot(&clients["owner"], &ch).await?;
                if after != before {
                    failures.push(format!(
                        "{what} by {actor}: refused, yet the channel changed"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}
