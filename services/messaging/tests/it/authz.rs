//! Authorization and validation are enforced by messaging itself, not only by the gateway.

use parley_kit::ErrorCode;
use parley_proto::messaging::v1 as pb;
use parley_testkit::Stack;
use tonic::Request;

use crate::{as_user, assert_code, client, group, send};

#[tokio::test]
async fn non_members_are_denied_by_the_service() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "alice", &["bob"]).await?;
    send(&mut svc, "alice", &ch, "m1", "secret").await?;
    let id = || ch.clone();

    let m = "mallory";
    let denied = [
        svc.get_channel(as_user(m, pb::GetChannelRequest { channel_id: id() }))
            .await
            .err(),
        svc.list_members(as_user(m, pb::ListMembersRequest { channel_id: id() }))
            .await
            .err(),
        svc.list_messages(as_user(
            m,
            pb::ListMessagesRequest {
                channel_id: id(),
                before: None,
                after: None,
                limit: 10,
            },
        ))
        .await
        .err(),
        send(&mut svc, m, &ch, "x", "let me in").await.err(),
        svc.edit_message(as_user(
            m,
            pb::EditMessageRequest {
                channel_id: id(),
                seq: 1,
                body: "defaced".into(),
            },
        ))
        .await
        .err(),
        svc.delete_message(as_user(
            m,
            pb::DeleteMessageRequest {
                channel_id: id(),
                seq: 1,
            },
        ))
        .await
        .err(),
        svc.add_member(as_user(
            m,
            pb::AddMemberRequest {
                channel_id: id(),
                user_id: m.into(),
            },
        ))
        .await
        .err(),
        svc.remove_member(as_user(
            m,
            pb::RemoveMemberRequest {
                channel_id: id(),
                user_id: "bob".into(),
            },
        ))
        .await
        .err(),
    ];
    for s in denied {
        assert_code(&s.expect("denied"), ErrorCode::PermissionDenied);
    }
    // Roles: a plain member cannot manage others or edit someone else's message.
    let bob_add = svc
        .add_member(as_user(
            "bob",
            pb::AddMemberRequest {
                channel_id: id(),
                user_id: "carol".into(),
            },
        ))
        .await;
    assert_code(
        &bob_add.expect_err("member adds"),
        ErrorCode::PermissionDenied,
    );
    let bob_edit = svc
        .edit_message(as_user(
            "bob",
            pb::EditMessageRequest {
                channel_id: id(),
                seq: 1,
                body: "x".into(),
            },
        ))
        .await;
    assert_code(
        &bob_edit.expect_err("member edits"),
        ErrorCode::PermissionDenied,
    );
    let bob_delete = svc
        .delete_message(as_user(
            "bob",
            pb::DeleteMessageRequest {
                channel_id: id(),
                seq: 1,
            },
        ))
        .await;
    assert_code(
        &bob_delete.expect_err("member deletes"),
        ErrorCode::PermissionDenied,
    );

    // No identity at all, or an invalid one.
    let anon = svc
        .get_channel(Request::new(pb::GetChannelRequest { channel_id: id() }))
        .await;
    assert_code(&anon.expect_err("anonymous"), ErrorCode::Unauthenticated);
    let anon_send = svc
        .send_message(Request::new(pb::SendMessageRequest {
            attachment_ids: Vec::new(),
            channel_id: id(),
            client_msg_id: "a".into(),
            body: "b".into(),
        }))
        .await;
    assert_code(
        &anon_send.expect_err("anonymous send"),
        ErrorCode::Unauthenticated,
    );
    let bad = svc
        .get_channel(as_user(
            "not a user!",
            pb::GetChannelRequest { channel_id: id() },
        ))
        .await;
    assert!(bad.is_err());

    // Unknown channel.
    let ghost = uuid::Uuid::new_v4().to_string();
    let nf = svc
        .get_channel(as_user(
            "alice",
            pb::GetChannelRequest {
                channel_id: ghost.clone(),
            },
        ))
        .await;
    assert_code(&nf.expect_err("unknown channel"), ErrorCode::NotFound);
    assert_code(
        &send(&mut svc, "alice", &ghost, "k", "b")
            .await
            .expect_err("unknown channel"),
        ErrorCode::NotFound,
    );

    // Nothing changed.
    let page = svc
        .list_messages(as_user(
            "bob",
            pb::ListMessagesRequest {
                channel_id: id(),
                before: None,
                after: None,
                limit: 0,
            },
        ))
        .await?
        .into_inner();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].body, "secret");
    assert_eq!(page.messages[0].edited_at, None);
    assert!(!page.messages[0].deleted);
    Ok(())
}

#[tokio::test]
async fn bad_input_is_rejected_by_the_service() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack.add_messaging(&[]).await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "alice", &["bob"]).await?;
    let id = || ch.clone();
    let invalid = ErrorCode::InvalidArgument;

    assert_code(
        &send(&mut svc, "alice", "not-a-uuid", "k", "b")
            .await
            .expect_err("bad id"),
        invalid,
    );
    assert_code(
        &send(&mut svc, "alice", &ch, "", "b")
            .await
            .expect_err("empty key"),
        invalid,
    );
    assert_code(
        &send(&mut svc, "alice", &ch, &"k".repeat(65), "b")
            .await
            .expect_err("long key"),
        invalid,
    );
    assert_code(
        &send(&mut svc, "alice", &ch, "k", "")
            .await
            .expect_err("empty body"),
        invalid,
    );
    // The service enforces its own body limit, whatever the gateway lets through.
    assert_code(
        &send(&mut svc, "alice", &ch, "k", &"x".repeat(2049))
            .await
            .expect_err("big body"),
        ErrorCode::TooLarge,
    );
    let list = |before: Option<u64>, after: Option<u64>, limit: u32| pb::ListMessagesRequest {
        channel_id: id(),
        before,
        after,
        limit,
    };
    for req in [
        list(None, None, 201),
        list(Some(1), Some(1), 10),
        list(Some(u64::MAX), None, 10),
    ] {
        assert_code(
            &svc.list_messages(as_user("alice", req))
                .await
                .expect_err("bad page"),
            invalid,
        );
    }
    let edit0 = svc
        .edit_message(as_user(
            "alice",
            pb::EditMessageRequest {
                channel_id: id(),
                seq: 0,
                body: "x".into(),
            },
        ))
        .await;
    assert_code(&edit0.expect_err("seq 0"), invalid);
    let cursor = svc
        .list_channels(as_user(
            "alice",
            pb::ListChannelsRequest {
                limit: 10,
                cursor: "garbage".into(),
            },
        ))
        .await;
    assert_code(&cursor.expect_err("bad cursor"), invalid);
    let kind = svc
        .create_channel(as_user(
            "alice",
            pb::CreateChannelRequest {
                kind: 0,
                name: "x".into(),
                members: vec![],
            },
        ))
        .await;
    assert_code(&kind.expect_err("no kind"), invalid);
    let bad_member = svc
        .create_channel(as_user(
            "alice",
            pb::CreateChannelRequest {
                kind: pb::ChannelKind::Group as i32,
                name: "x".into(),
                members: vec!["a b".into()],
            },
        ))
        .await;
    assert_code(&bad_member.expect_err("bad member"), invalid);
    let direct_pair = svc
        .create_channel(as_user(
            "alice",
            pb::CreateChannelRequest {
                kind: pb::ChannelKind::Direct as i32,
                name: String::new(),
                members: vec!["bob".into(), "carol".into()],
            },
        ))
        .await;
    assert_code(&direct_pair.expect_err("direct with two others"), invalid);

    let channel = svc
        .get_channel(as_user("alice", pb::GetChannelRequest { channel_id: id() }))
        .await?
        .into_inner()
        .channel;
    assert_eq!(
        channel.map(|c| c.last_seq),
        Some(0),
        "bad input changed nothing"
    );
    Ok(())
}
