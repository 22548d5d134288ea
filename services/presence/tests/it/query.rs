//! GetPresence: batches of up to 500 users, mixed states, limits.

use parley_proto::presence::v1 as pb;
use tonic::Code;

use crate::{Harness, conn_id, cref, get, is_offline, is_online};

#[tokio::test]
async fn a_batch_of_500_mixed_users_is_answered_in_order_and_501_is_rejected() -> anyhow::Result<()>
{
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let users: Vec<String> = (0..501).map(|i| format!("user{i:03}")).collect();
    // user000-user149 connect; user100-user149 disconnect again; the rest are never seen.
    let conns: Vec<pb::ConnectionRef> = users[..150].iter().map(|u| cref(u, &conn_id())).collect();
    for chunk in conns.chunks(50) {
        let r = c
            .heartbeat(pb::HeartbeatRequest {
                node_id: "n".into(),
                connections: chunk.to_vec(),
                ttl_seconds: 0,
            })
            .await?;
        assert_eq!(r.into_inner().restored.len(), chunk.len());
    }
    let gone = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "n".into(),
            connections: conns[100..].to_vec(),
        })
        .await?
        .into_inner();
    assert_eq!(gone.went_offline.len(), 50);

    // Asked in a shuffled order (reversed), answered in that order.
    let asked: Vec<&str> = users[..500].iter().rev().map(String::as_str).collect();
    let got = get(&mut c, &asked).await?;
    assert_eq!(got.len(), 500);
    for (p, want) in got.iter().zip(&asked) {
        assert_eq!(p.user_id, *want);
        let n: usize = want["user".len()..].parse()?;
        match n {
            0..100 => assert!(
                is_online(p) && p.version > 0 && p.last_seen_at.is_some(),
                "{p:?}"
            ),
            100..150 => assert!(
                is_offline(p) && p.version > 0 && p.last_seen_at.is_some(),
                "{p:?}"
            ),
            _ => assert!(
                is_offline(p) && p.version == 0 && p.last_seen_at.is_none(),
                "never seen: {p:?}"
            ),
        }
    }

    let all: Vec<&str> = users.iter().map(String::as_str).collect();
    let e = get(&mut c, &all).await.expect_err("501 users");
    let status = e.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn duplicates_are_answered_once_and_bad_ids_rejected() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let got = get(&mut c, &["nina", "omar", "nina", "omar", "pia"]).await?;
    let ids: Vec<&str> = got.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(ids, ["nina", "omar", "pia"]);

    for bad in [vec!["ok", "not ok"], vec![], vec!["é"]] {
        let e = get(&mut c, &bad).await.expect_err("must fail");
        let status = e.downcast_ref::<tonic::Status>().expect("a gRPC status");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status:?}");
    }
    Ok(())
}
