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
