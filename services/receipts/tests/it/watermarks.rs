//! Watermarks only move forward, are clamped to the channel's last_seq, and a projection
//! that lags is corrected by asking messaging.

use std::collections::BTreeMap;

use futures::future::join_all;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::{code, spawn};

#[tokio::test]
async fn concurrent_marks_end_at_the_maximum() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..40 {
        env.send("alice", &ch).await?;
    }
    env.wait_consumed().await?;

    let mut rng = StdRng::seed_from_u64(7);
    // (read?, seq): reads and deliveries interleaved, in random order, all at once.
    let marks: Vec<(bool, u64)> = (0..120)
        .map(|_| (rng.random_bool(0.5), rng.random_range(1..=40)))
        .collect();
    let results = join_all(marks.iter().map(|&(read, seq)| {
        let env = &env;
        let ch = ch.clone();
        async move {
            if read {
                env.mark_read("bob", &ch, seq).await.map(|r| r.receipt)
            } else {
                env.mark_delivered("bob", &ch, seq).await.map(|r| r.receipt)
            }
        }
    }))
    .await;
    for ((read, seq), r) in marks.iter().zip(results) {
        let r = r?.expect("receipt");
        // Whatever ran concurrently, a call's own mark is never undone.
        assert!(
            r.delivered_seq >= *seq,
            "delivered went below a mark: {r:?} after {seq}"
        );
        if *read {
            assert!(
                r.read_seq >= *seq,
                "read went below a mark: {r:?} after {seq}"
            );
        }
        assert!(r.read_seq <= r.delivered_seq);
    }
    let max_read = marks.iter().filter(|m| m.0).map(|m| m.1).max().unwrap_or(0);
    let max_any = marks.iter().map(|m| m.1).max().unwrap_or(0);
    let all = env.receipts_of("alice", &ch).await?;
    let bob = all.iter().find(|r| r.user_id == "bob").expect("bob listed");
    assert_eq!((bob.read_seq, bob.delivered_seq), (max_read, max_any));
    // Alice sent everything: her own messages count as read.
    let alice = all
        .iter()
        .find(|r| r.user_id == "alice")
        .expect("alice listed");
    assert_eq!((alice.read_seq, alice.delivered_seq), (40, 40));
    Ok(())
}

#[tokio::test]
async fn marks_are_clamped_to_last_seq_and_lower_ones_change_nothing() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..5 {
        env.send("alice", &ch).await?;
    }
    env.wait_consumed().await?;

    let r = env.mark_delivered("bob", &ch, 2).await?;
    assert!(r.changed);
    let rec = r.receipt.expect("receipt");
    assert_eq!((rec.delivered_seq, rec.read_seq), (2, 0));
    assert!(rec.updated_at.is_some());

    let r = env.mark_read("bob", &ch, 1_000).await?;
    assert!(r.changed);
    let rec = r.receipt.expect("receipt");
    assert_eq!(
        (rec.delivered_seq, rec.read_seq),
        (5, 5),
        "clamped to last_seq, read implies delivered"
    );

    for (read, seq) in [(true, 1_000), (true, 3), (true, 0), (false, 4)] {
        let (changed, rec) = if read {
            let r = env.mark_read("bob", &ch, seq).await?;
            (r.changed, r.receipt.expect("receipt"))
        } else {
            let r = env.mark_delivered("bob", &ch, seq).await?;
            (r.changed, r.receipt.expect("receipt"))
        };
        assert!(!changed, "mark {seq} changed something");
        assert_eq!((rec.delivered_seq, rec.read_seq), (5, 5));
    }
    assert_eq!(env.unread("bob").await?, BTreeMap::new());
    Ok(())
}

#[tokio::test]
async fn own_messages_are_never_unread() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.send("alice", &ch).await?; // 1
    env.send("alice", &ch).await?; // 2
    env.send("bob", &ch).await?; // 3
    env.send("bob", &ch).await?; // 4
    env.send("bob", &ch).await?; // 5
    env.wait_unread("alice", &BTreeMap::from([(ch.clone(), 3)]))
        .await?;
    env.wait_unread("bob", &BTreeMap::new()).await?;
    env.send("alice", &ch).await?; // 6: alice has now seen everything before it
    env.wait_unread("alice", &BTreeMap::new()).await?;
    env.wait_unread("bob", &BTreeMap::from([(ch.clone(), 1)]))
        .await?;
    Ok(())
}

/// With the consumer off the projection knows nothing: every call must be settled by
/// asking messaging, and nothing may be lost or let through.
#[tokio::test]
async fn a_lagging_projection_asks_messaging() -> anyhow::Result<()> {
    let env = spawn(&[("PARLEY__CONSUMER__ENABLED", "false")]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..3 {
        env.send("alice", &ch).await?;
    }
    let r = env.mark_read("bob", &ch, 2).await?;
    assert!(r.changed);
    assert_eq!(
        r.receipt.as_ref().map(|r| r.read_seq),
        Some(2),
        "seq 2 is above the projection's last_seq (unknown)"
    );
    let r = env.mark_read("bob", &ch, 99).await?;
    assert_eq!(
        r.receipt.as_ref().map(|r| r.read_seq),
        Some(3),
        "clamped to messaging's last_seq"
    );
    env.send("alice", &ch).await?;
    let r = env.mark_delivered("bob", &ch, 4).await?;
    assert_eq!(
        r.receipt.as_ref().map(|r| (r.delivered_seq, r.read_seq)),
        Some((4, 3))
    );
    assert_eq!(
        code(env.mark_read("carol", &ch, 1).await),
        tonic::Code::PermissionDenied
    );
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(
        code(env.mark_read("bob", &unknown, 1).await),
        tonic::Code::NotFound
    );
    // Alice was confirmed by messaging just now; her own messages are unknown to the
    // projection, so she is only listed with what she marked.
    let all = env.receipts_of("alice", &ch).await?;
    assert_eq!(
        all.iter().map(|r| r.user_id.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    Ok(())
}
