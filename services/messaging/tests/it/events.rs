//! Every committed change is published once to the event stream, in commit order, and the
//! outbox is emptied.

use std::collections::HashSet;

use parley_proto::{events::v1 as ev, messaging::v1 as pb};
use parley_testkit::Stack;
use prost::Message as _;

use crate::{as_user, client, group, send};

/// The stream's events, first copy of each (delivery is at-least-once).
async fn stream_events(stack: &Stack) -> anyhow::Result<Vec<ev::Event>> {
    let client = redis::Client::open(stack.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = format!("{}{}", stack.prefix, parley_kit::stream::EVENTS);
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in reply.ids {
        let bytes: Vec<u8> = entry
            .get("event")
            .ok_or_else(|| anyhow::anyhow!("entry without event"))?;
        let e = ev::Event::decode(bytes.as_slice())?;
        if seen.insert(e.event_id.clone()) {
            out.push(e);
        }
    }
    Ok(out)
}

fn describe(e: &ev::Event) -> String {
    use ev::event::Payload;
    match &e.payload {
        Some(Payload::MessageCreated(p)) => {
            let seq = p.message.as_ref().map_or(0, |m| m.seq);
            match p.message.as_ref().and_then(|m| m.system.as_ref()) {
                Some(s) => format!("created {seq}: {} {}", s.action, s.target_user_id),
                None => format!("created {seq}"),
            }
        }
        Some(Payload::MessageUpdated(p)) => {
            format!("updated {}", p.message.as_ref().map_or(0, |m| m.seq))
        }
        Some(Payload::MessageDeleted(p)) => format!(
            "deleted {} by {}",
            p.message.as_ref().map_or(0, |m| m.seq),
            p.deleted_by
        ),
        Some(Payload::MemberJoined(p)) => {
            format!(
                "joined {} at {}",
                p.member.as_ref().map_or("", |m| m.user_id.as_str()),
                p.channel_last_seq
            )
        }
        Some(Payload::MemberLeft(p)) => format!("left {} by {}", p.user_id, p.removed_by),
        Some(Payload::MemberRoleChanged(p)) => format!(
            "role of {} by {}",
            p.member.as_ref().map_or("", |m| m.user_id.as_str()),
            p.changed_by
        ),
        Some(Payload::ChannelUpdated(p)) => format!(
            "updated channel {:?} by {}{}",
            p.channel.as_ref().map_or("", |c| c.name.as_str()),
            p.updated_by,
            if p.channel.as_ref().is_some_and(|c| c.archived_at.is_some()) {
                ", archived"
            } else {
                ""
            }
        ),
        Some(Payload::ChannelDeleted(p)) => format!(
            "deleted channel by {} with {}",
            p.deleted_by,
            p.members.join(",")
        ),
        Some(Payload::BlockChanged(p)) => {
            format!("block {} of {}: {}", p.blocker, p.blocked, p.active)
        }
        None => "empty".into(),
    }
}

#[tokio::test]
async fn changes_reach_the_stream_once_and_in_order() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "alice", &["bob"]).await?;
    for (cid, body) in [
        ("m1", "one"),
        ("m2", "two"),
        ("m3", "three"),
        ("m1", "retry"),
    ] {
        send(&mut svc, "alice", &ch, cid, body).await?;
    }
    let id = || ch.clone();
    svc.edit_message(as_user(
        "alice",
        pb::EditMessageRequest {
            channel_id: id(),
            seq: 1,
            body: "uno".into(),
        },
    ))
    .await?;
    svc.delete_message(as_user(
        "alice",
        pb::DeleteMessageRequest {
            channel_id: id(),
            seq: 2,
        },
    ))
    .await?;
    // Deleting again publishes nothing.
    svc.delete_message(as_user(
        "alice",
        pb::DeleteMessageRequest {
            channel_id: id(),
            seq: 2,
        },
    ))
    .await?;
    svc.add_member(as_user(
        "alice",
        pb::AddMemberRequest {
            channel_id: id(),
            user_id: "carol".into(),
        },
    ))
    .await?;
    svc.remove_member(as_user(
        "carol",
        pb::RemoveMemberRequest {
            channel_id: id(),
            user_id: "carol".into(),
        },
    ))
    .await?;

    let expected = [
        "joined alice at 0",
        "joined bob at 0",
        "created 1",
        "created 2",
        "created 3",
        "updated 1",
        "deleted 2 by alice",
        "joined carol at 3",
        "left carol by carol",
    ];
    // Publishing happens before each reply; poll only to be safe against a retried publish.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let events = loop {
        let events = stream_events(&stack).await?;
        if events.len() >= expected.len() || tokio::time::Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(events.iter().map(describe).collect::<Vec<_>>(), expected);
    assert!(
        events.iter().all(|e| e.channel_id == ch),
        "every event names its channel"
    );
    assert!(events.iter().all(|e| e.occurred_at.is_some()));
    if let Some(ev::event::Payload::MessageUpdated(u)) = &events[5].payload {
        assert_eq!(u.message.as_ref().map(|m| m.body.as_str()), Some("uno"));
    }
    if let Some(ev::event::Payload::MessageDeleted(d)) = &events[6].payload {
        let m = d.message.as_ref().expect("tombstone");
        assert!(m.deleted);
        assert_eq!(m.body, "");
    }

    // The outbox is empty once everything is published.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left = stack
            .query_i64("SELECT count(*) FROM messaging.outbox")
            .await?;
        if left == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} outbox rows never cleared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// ListMembers and MessageCreated carry the channel's membership version: equal versions
/// mean equal member lists (what notification's member cache relies on).
#[tokio::test]
async fn members_version_changes_with_every_join_and_leave() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "alice", &["bob"]).await?;
    let version = |svc: &mut crate::Svc| {
        let mut svc = svc.clone();
        let ch = ch.clone();
        async move {
            let r = svc
                .list_members(as_user("alice", pb::ListMembersRequest { channel_id: ch }))
                .await?
                .into_inner();
            anyhow::Ok((r.members.len(), r.members_version))
        }
    };
    let (n0, v0) = version(&mut svc).await?;
    assert_eq!(n0, 2);
    assert!(v0 > 0, "a version is always reported");
    send(&mut svc, "alice", &ch, "a1", "before").await?;
    assert_eq!(
        version(&mut svc).await?.1,
        v0,
        "a send changes no membership"
    );

    svc.add_member(as_user(
        "alice",
        pb::AddMemberRequest {
            channel_id: ch.clone(),
            user_id: "carol".into(),
        },
    ))
    .await?;
    let (n1, v1) = version(&mut svc).await?;
    assert_eq!(n1, 3);
    assert!(v1 > v0, "join bumps the version: {v0} → {v1}");
    send(&mut svc, "alice", &ch, "a2", "after join").await?;

    svc.remove_member(as_user(
        "alice",
        pb::RemoveMemberRequest {
            channel_id: ch.clone(),
            user_id: "carol".into(),
        },
    ))
    .await?;
    let (n2, v2) = version(&mut svc).await?;
    assert_eq!(n2, 2);
    assert!(v2 > v1, "leave bumps the version: {v1} → {v2}");
    send(&mut svc, "alice", &ch, "a3", "after leave").await?;

    let mut seen = Vec::new();
    for _ in 0..50 {
        seen = stream_events(&stack)
            .await?
            .into_iter()
            .filter_map(|e| match e.payload {
                Some(ev::event::Payload::MessageCreated(c)) => Some((
                    c.message.map(|m| m.body).unwrap_or_default(),
                    c.members_version,
                )),
                _ => None,
            })
            .collect();
        if seen.len() == 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        vec![
            ("before".to_owned(), v0),
            ("after join".to_owned(), v1),
            ("after leave".to_owned(), v2),
        ]
    );
    Ok(())
}

/// Moderation reaches the stream in commit order like any change: a ban is the banned
/// member's MemberLeft then a system message, a mute a system message, archiving a
/// ChannelUpdated with `archived_at`, deleting a ChannelDeleted that lists the members,
/// blocking a BlockChanged without a channel. Repeats that change nothing publish nothing,
/// and every channel action (not the block) is one row of `messaging.audit_log`.
#[tokio::test]
async fn moderation_reaches_the_stream_in_order_and_the_audit_log() -> anyhow::Result<()> {
    use parley_kit::ErrorCode;

    use crate::assert_code;

    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "alice", &["bob", "carol", "dave"]).await?;
    send(&mut svc, "carol", &ch, "c1", "hello").await?;

    // Whole seconds: the database keeps microseconds, so this compares exactly.
    let until = chrono::Utc::now().timestamp() + 3600;
    let ban_req = || pb::BanMemberRequest {
        channel_id: ch.clone(),
        user_id: "carol".into(),
        expires_at: Some(prost_types::Timestamp {
            seconds: until,
            nanos: 0,
        }),
        reason: "spam".into(),
    };
    let ban = svc
        .ban_member(as_user("alice", ban_req()))
        .await?
        .into_inner();
    assert!(ban.removed, "carol was a member");
    let b = ban.ban.expect("ban");
    assert_eq!(
        (b.user_id.as_str(), b.banned_by.as_str(), b.reason.as_str()),
        ("carol", "alice", "spam")
    );
    assert_eq!(b.expires_at.map(|t| t.seconds), Some(until));
    // The same ban again changes nothing: no MemberLeft, no second system message.
    let again = svc
        .ban_member(as_user("alice", ban_req()))
        .await?
        .into_inner();
    assert!(!again.removed, "carol is gone already");
    let refused = send(&mut svc, "carol", &ch, "c2", "still here?")
        .await
        .expect_err("a banned user is no member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let mute_req = || pb::MuteMemberRequest {
        channel_id: ch.clone(),
        user_id: "dave".into(),
        expires_at: None,
    };
    let mute = svc
        .mute_member(as_user("alice", mute_req()))
        .await?
        .into_inner()
        .mute
        .expect("mute");
    assert_eq!(
        (mute.user_id.as_str(), mute.muted_by.as_str()),
        ("dave", "alice")
    );
    assert!(mute.expires_at.is_none(), "until lifted");
    svc.mute_member(as_user("alice", mute_req())).await?;
    let refused = send(&mut svc, "dave", &ch, "d1", "let me talk")
        .await
        .expect_err("dave is muted");
    assert_code(&refused, ErrorCode::Muted);
    // A member may not mute.
    let refused = svc
        .mute_member(as_user(
            "bob",
            pb::MuteMemberRequest {
                channel_id: ch.clone(),
                user_id: "dave".into(),
                expires_at: None,
            },
        ))
        .await
        .expect_err("bob is no admin");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    let archive = || pb::SetArchivedRequest {
        channel_id: ch.clone(),
        archived: true,
    };
    let archived = svc
        .set_archived(as_user("alice", archive()))
        .await?
        .into_inner();
    assert!(archived.changed);
    assert!(archived.channel.expect("channel").archived_at.is_some());
    let again = svc
        .set_archived(as_user("alice", archive()))
        .await?
        .into_inner();
    assert!(!again.changed, "archived already");
    let refused = send(&mut svc, "bob", &ch, "b1", "anyone?")
        .await
        .expect_err("archived");
    assert_code(&refused, ErrorCode::Archived);

    let delete = || pb::DeleteChannelRequest {
        channel_id: ch.clone(),
    };
    let refused = svc
        .delete_channel(as_user("bob", delete()))
        .await
        .expect_err("only the owner deletes");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    svc.delete_channel(as_user("alice", delete())).await?;
    let gone = svc
        .delete_channel(as_user("alice", delete()))
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");

    let block = || pb::BlockUserRequest {
        user_id: "carol".into(),
    };
    assert!(
        svc.block_user(as_user("bob", block()))
            .await?
            .into_inner()
            .created
    );
    assert!(
        !svc.block_user(as_user("bob", block()))
            .await?
            .into_inner()
            .created,
        "blocked already"
    );

    let expected = [
        "joined alice at 0",
        "joined bob at 0",
        "joined carol at 0",
        "joined dave at 0",
        "created 1",
        "left carol by alice",
        "created 2: banned carol",
        "created 3: muted dave",
        "updated channel \"test\" by alice, archived",
        "deleted channel by alice with alice,bob,dave",
        "block bob of carol: true",
    ];
    // Publishing happens before each reply; poll only to be safe against a retried publish.
    let events = parley_testkit::wait_for(
        parley_testkit::PATIENCE,
        format_args!("{} events", expected.len()),
        || stream_events(&stack),
        |e| e.len() >= expected.len(),
    )
    .await?;
    assert_eq!(events.iter().map(describe).collect::<Vec<_>>(), expected);
    let (block_event, channel_events) = events.split_last().expect("events");
    assert!(
        channel_events.iter().all(|e| e.channel_id == ch),
        "every channel event names its channel"
    );
    assert_eq!(block_event.channel_id, "", "a block belongs to no channel");

    use ev::event::Payload;
    let system = |i: usize| match &events[i].payload {
        Some(Payload::MessageCreated(c)) => c.message.clone().expect("message"),
        other => panic!("event {i}: {other:?}"),
    };
    let banned = system(6);
    assert_eq!(banned.sender_id, "alice", "the moderator sends it");
    let s = banned.system.clone().expect("system");
    assert_eq!(
        (s.reason.as_str(), s.expires_at.map(|t| t.seconds)),
        ("spam", Some(until))
    );
    assert!(banned.body.contains("carol"), "{}", banned.body);
    let muted = system(7);
    let s = muted.system.clone().expect("system");
    assert_eq!((s.reason.as_str(), s.expires_at), ("", None));
    assert!(
        system(4).system.is_none(),
        "a message a user wrote is no system message"
    );
    match &events[9].payload {
        Some(Payload::ChannelDeleted(d)) => assert_eq!(d.channel_id, ch),
        other => panic!("{other:?}"),
    }

    // The audit log: one row per change, none for the repeats, refusals or blocks.
    let pool = stack.db().await?;
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT actor_id, action, target_id, details FROM messaging.audit_log
         WHERE channel_id = $1::uuid ORDER BY id",
    )
    .bind(&ch)
    .fetch_all(&pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messaging.audit_log")
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    let summary: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c, _)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "banned", "carol"),
            ("alice", "muted", "dave"),
            ("alice", "archived", ""),
            ("alice", "deleted", ""),
        ]
    );
    assert_eq!(total, 4, "the block is not a channel action");
    let details: serde_json::Value = serde_json::from_str(&rows[0].3)?;
    assert_eq!(details["action"], "banned");
    assert_eq!(details["target_user_id"], "carol");
    assert_eq!(details["reason"], "spam");
    let at = details["expires_at"].as_str().expect("expires_at");
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(at)?.timestamp(),
        until,
        "{at}"
    );
    let details: serde_json::Value = serde_json::from_str(&rows[1].3)?;
    assert_eq!(details["action"], "muted");
    assert_eq!(details["target_user_id"], "dave");
    assert!(details.get("expires_at").is_none(), "{details}");
    assert_eq!(rows[3].3, "alice,bob,dave", "the members it had");
    Ok(())
}
