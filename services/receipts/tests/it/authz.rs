//! Only members mark and read receipts; bad input is refused.

use std::collections::BTreeMap;

use parley_proto::receipts::v1 as pb;
use tonic::Code;

use crate::{code, spawn};

#[tokio::test]
async fn non_members_and_bad_requests_are_rejected() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.send("alice", &ch).await?;
    env.wait_consumed().await?;

    assert_eq!(
        code(env.mark_read("carol", &ch, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(env.mark_delivered("carol", &ch, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(env.receipts_of("carol", &ch).await),
        Code::PermissionDenied
    );
    assert_eq!(env.unread("carol").await?, BTreeMap::new());

    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        code(env.mark_read("bob", &unknown, 1).await),
        Code::NotFound
    );
    assert_eq!(code(env.receipts_of("bob", &unknown).await), Code::NotFound);
    assert_eq!(
        code(env.mark_read("bob", "not-a-uuid", 1).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(env.mark_read("bob", &ch, u64::MAX).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(env.mark_read("bad id!", &ch, 1).await),
        Code::InvalidArgument
    );

    let mut client = env.receipts().await?;
    let anonymous = client
        .get_unread(tonic::Request::new(pb::GetUnreadRequest {}))
        .await;
    assert_eq!(code(anonymous), Code::Unauthenticated);

    // Nothing of the above left a trace.
    let all = env.receipts_of("bob", &ch).await?;
    assert_eq!(
        all.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    Ok(())
}

#[tokio::test]
async fn a_member_who_left_is_rejected_and_counts_nothing() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.send("alice", &ch).await?;
    env.wait_unread("bob", &BTreeMap::from([(ch.clone(), 1)]))
        .await?;
    env.remove_member("bob", &ch, "bob").await?;
    env.send("alice", &ch).await?;
    env.wait_unread("bob", &BTreeMap::new()).await?;
    assert_eq!(
        code(env.mark_read("bob", &ch, 1).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(env.receipts_of("bob", &ch).await),
        Code::PermissionDenied
    );
    let all = env.receipts_of("alice", &ch).await?;
    assert_eq!(
        all.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(),
        ["alice"]
    );
    Ok(())
}
