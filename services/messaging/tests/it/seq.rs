//! The sequence invariant under concurrency, as a property: whatever mix of senders, keys
//! and retries runs at once, committed seqs are exactly 1..=n (n = distinct
//! (sender, client_msg_id) pairs), each pair is one message, and every retry of a pair
//! answers that message.

use std::collections::HashMap;

use futures::future::join_all;
use parley_testkit::Stack;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use crate::{all_messages, as_user, client, group, send};

const USERS: [&str; 4] = ["s0", "s1", "s2", "s3"];

async fn check(addr: std::net::SocketAddr, ops: Vec<(usize, u8)>) -> anyhow::Result<()> {
    let mut svc = client(addr).await?;
    let ch = group(&mut svc, USERS[0], &USERS[1..]).await?;
    let replies = join_all(ops.iter().enumerate().map(|(i, (u, k))| {
        let (mut svc, ch) = (svc.clone(), ch.clone());
        let (user, cid) = (USERS[*u], format!("k{k}"));
        async move {
            let r = send(&mut svc, user, &ch, &cid, &format!("{user}:{cid}:{i}")).await;
            (user, cid, r)
        }
    }))
    .await;

    // (sender, cid) → (id, seq, body, how many replies said created).
    let mut pairs: HashMap<(String, String), (String, u64, String, usize)> = HashMap::new();
    for (user, cid, r) in replies {
        let r = r.map_err(|s| anyhow::anyhow!("send failed: {s:?}"))?;
        let m = r.message.ok_or_else(|| anyhow::anyhow!("no message"))?;
        anyhow::ensure!(
            m.sender_id == user && m.client_msg_id == cid,
            "answered another message: {m:?}"
        );
        anyhow::ensure!(
            m.body.starts_with(&format!("{user}:{cid}:")),
            "body of another send: {m:?}"
        );
        let e = pairs
            .entry((user.to_owned(), cid))
            .or_insert_with(|| (m.id.clone(), m.seq, m.body.clone(), 0));
        anyhow::ensure!(
            e.0 == m.id && e.1 == m.seq && e.2 == m.body,
            "a retry answered a different message: {m:?} vs {e:?}"
        );
        e.3 += usize::from(r.created);
    }
    anyhow::ensure!(
        pairs.values().all(|p| p.3 == 1),
        "each pair is created exactly once: {pairs:?}"
    );
    let n = pairs.len() as u64;
    let mut seqs: Vec<u64> = pairs.values().map(|p| p.1).collect();
    seqs.sort_unstable();
    anyhow::ensure!(
        seqs == (1..=n).collect::<Vec<_>>(),
        "seqs are not 1..={n}: {seqs:?}"
    );

    // What is committed agrees.
    let history = all_messages(&mut svc, USERS[1], &ch).await?;
    anyhow::ensure!(
        history.iter().map(|m| m.seq).eq(1..=n),
        "history seqs: {:?}",
        history.iter().map(|m| m.seq).collect::<Vec<_>>()
    );
    for m in &history {
        let p = pairs
            .get(&(m.sender_id.clone(), m.client_msg_id.clone()))
            .ok_or_else(|| anyhow::anyhow!("unknown message {m:?}"))?;
        anyhow::ensure!(
            p.0 == m.id && p.1 == m.seq && p.2 == m.body,
            "history differs from the answers: {m:?}"
        );
    }
    let channel = svc
        .get_channel(as_user(
            USERS[2],
            parley_proto::messaging::v1::GetChannelRequest {
                channel_id: ch.clone(),
            },
        ))
        .await?
        .into_inner()
        .channel
        .ok_or_else(|| anyhow::anyhow!("no channel"))?;
    anyhow::ensure!(
        channel.last_seq == n,
        "last_seq {} != {n}",
        channel.last_seq
    );
    Ok(())
}

#[test]
fn concurrent_sends_and_retries_keep_seqs_gapless_and_unique() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stack, addr) = rt
        .block_on(async {
            let mut stack = Stack::empty().await?;
            let addr = stack.add_messaging(&[]).await?;
            anyhow::Ok((stack, addr))
        })
        .expect("stack");
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    // Up to 80 concurrent sends by 4 users over 10 keys each: many retries, some racing.
    let ops = prop::collection::vec((0..USERS.len(), 0..10u8), 1..80);
    let result = runner.run(&ops, |ops| {
        rt.block_on(check(addr, ops))
            .map_err(|e| TestCaseError::fail(format!("{e:#}")))
    });
    drop(stack);
    if let Err(e) = result {
        panic!("{e}");
    }
}
