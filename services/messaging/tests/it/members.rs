//! Member limit and membership changes under concurrency.

use futures::future::join_all;
use parley_kit::ErrorCode;
use parley_proto::messaging::v1 as pb;
use parley_testkit::Stack;

use crate::{as_user, assert_code, client, group};

#[tokio::test]
async fn concurrent_adds_never_exceed_the_member_limit() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[("PARLEY__LIMITS__MAX_MEMBERS", "5")])
        .await?;
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, "owner", &["m0"]).await?;

    let results = join_all((1..=10).map(|i| {
        let (mut svc, ch) = (svc.clone(), ch.clone());
        async move {
            svc.add_member(as_user(
                "owner",
                pb::AddMemberRequest {
                    channel_id: ch,
                    user_id: format!("m{i}"),
                },
            ))
            .await
        }
    }))
    .await;
    let mut added = 0;
    for r in results {
        match r {
            Ok(resp) => {
                assert!(resp.get_ref().created);
                added += 1;
            }
            Err(s) => assert_code(&s, ErrorCode::Conflict),
        }
    }
    assert_eq!(added, 3, "2 members + 3 added = the limit of 5");
    let members = svc
        .list_members(as_user(
            "owner",
            pb::ListMembersRequest {
                channel_id: ch.clone(),
            },
        ))
        .await?
        .into_inner()
        .members;
    assert_eq!(members.len(), 5);
    let channel = svc
        .get_channel(as_user(
            "owner",
            pb::GetChannelRequest {
                channel_id: ch.clone(),
            },
        ))
        .await?
        .into_inner()
        .channel;
    assert_eq!(channel.map(|c| c.member_count), Some(5));
    Ok(())
}

#[tokio::test]
async fn a_user_is_in_at_most_max_channels_even_when_added_concurrently() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    let addr = stack
        .add_messaging(&[("PARLEY__LIMITS__MAX_CHANNELS_PER_USER", "4")])
        .await?;
    let mut svc = client(addr).await?;
    // Carol is in one channel; eight owners add her to theirs at the same time.
    group(&mut svc, "carol", &[]).await?;
    let mut channels = Vec::new();
    for i in 0..8 {
        channels.push((
            format!("o{i}"),
            group(&mut svc, &format!("o{i}"), &[]).await?,
        ));
    }
    let results = join_all(channels.iter().map(|(owner, ch)| {
        let (mut svc, owner, ch) = (svc.clone(), owner.clone(), ch.clone());
        async move {
            svc.add_member(as_user(
                &owner,
                pb::AddMemberRequest {
                    channel_id: ch,
                    user_id: "carol".into(),
                },
            ))
            .await
        }
    }))
    .await;
    let mut added = 0;
    for r in results {
        match r {
            Ok(_) => added += 1,
            Err(s) => {
                assert_code(&s, ErrorCode::Conflict);
                assert!(s.message().contains("carol"), "{s:?}");
            }
        }
    }
    assert_eq!(added, 3, "1 + 3 = the limit of 4");
    let positions = svc
        .list_channel_positions(as_user("carol", pb::ListChannelPositionsRequest {}))
        .await?
        .into_inner()
        .positions;
    assert_eq!(positions.len(), 4);

    // Creating a group with her in it, or a direct channel with her, is refused the same
    // way, and creates nothing.
    let err = svc
        .create_channel(as_user(
            "dave",
            pb::CreateChannelRequest {
                kind: pb::ChannelKind::Group as i32,
                name: "more".into(),
                members: vec!["carol".into()],
            },
        ))
        .await
        .expect_err("carol is full");
    assert_code(&err, ErrorCode::Conflict);
    let err = svc
        .create_channel(as_user(
            "dave",
            pb::CreateChannelRequest {
                kind: pb::ChannelKind::Direct as i32,
                name: String::new(),
                members: vec!["carol".into()],
            },
        ))
        .await
        .expect_err("carol is full");
    assert_code(&err, ErrorCode::Conflict);
    let dave = svc
        .list_channel_positions(as_user("dave", pb::ListChannelPositionsRequest {}))
        .await?
        .into_inner()
        .positions;
    assert!(dave.is_empty(), "nothing was created: {dave:?}");
    Ok(())
}
