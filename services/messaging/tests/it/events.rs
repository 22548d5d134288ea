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
            format!("created {}", p.message.as_ref().map_or(0, |m| m.seq))
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
            "updated channel {:?} by {}",
            p.channel.as_ref().map_or("", |c| c.name.as_str()),
            p.updated_by
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
