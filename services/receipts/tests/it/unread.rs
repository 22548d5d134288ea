//! Unread counts against a reference model over random sends, reads, joins and leaves.

use std::collections::BTreeMap;

use rand::{Rng as _, SeedableRng as _, rngs::StdRng, seq::IndexedRandom as _};

use crate::spawn;

const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];

/// What the spec says, written the obvious way: unread = last_seq − max(read, joined)
/// over current memberships; a sender has read their own message.
#[derive(Debug, Default)]
struct Model {
    channels: BTreeMap<String, Chan>,
}

#[derive(Debug, Default)]
struct Chan {
    last: u64,
    /// user → (member now?, last_seq at (last) join, read watermark)
    members: BTreeMap<String, (bool, u64, u64)>,
}

impl Model {
    fn unread(&self, user: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (id, c) in &self.channels {
            if let Some(&(true, joined, read)) = c.members.get(user) {
                let n = c.last - read.max(joined);
                if n > 0 {
                    out.insert(id.clone(), n);
                }
            }
        }
        out
    }

    fn active(&self, ch: &str) -> Vec<String> {
        self.channels[ch]
            .members
            .iter()
            .filter(|(_, m)| m.0)
            .map(|(u, _)| u.clone())
            .collect()
    }
}

#[tokio::test]
async fn unread_matches_a_reference_model() -> anyhow::Result<()> {
    for seed in [11_u64, 12] {
        run(seed, 150).await?;
    }
    Ok(())
}

async fn run(seed: u64, steps: usize) -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Model::default();
    for _ in 0..3 {
        let others: Vec<&str> = USERS[1..]
            .iter()
            .copied()
            .filter(|_| rng.random_bool(0.5))
            .collect();
        let id = env.group("u0", &others).await?;
        let mut c = Chan::default();
        for u in std::iter::once("u0").chain(others.iter().copied()) {
            c.members.insert(u.to_owned(), (true, 0, 0));
        }
        model.channels.insert(id, c);
    }
    let ids: Vec<String> = model.channels.keys().cloned().collect();
    for step in 0..steps {
        let ch = ids.choose(&mut rng).expect("channels").clone();
        let active = model.active(&ch);
        let roll = rng.random_range(0..100);
        if roll < 45 {
            let u = active.choose(&mut rng).expect("u0 never leaves").clone();
            let seq = env.send(&u, &ch).await?;
            let c = model.channels.get_mut(&ch).expect("channel");
            c.last += 1;
            assert_eq!(seq, c.last, "step {step}: messaging's seq");
            let m = c.members.get_mut(&u).expect("member");
            m.2 = m.2.max(seq);
        } else if roll < 75 {
            let u = active.choose(&mut rng).expect("member").clone();
            let c = model.channels.get_mut(&ch).expect("channel");
            let seq = rng.random_range(0..=c.last + 3);
            let r = env.mark_read(&u, &ch, seq).await?;
            let m = c.members.get_mut(&u).expect("member");
            m.2 = m.2.max(seq.min(c.last));
            // The reply may lag the sender's own watermark (applied from the stream), but
            // never the explicit mark.
            let got = r.receipt.expect("receipt").read_seq;
            assert!(
                got >= seq.min(c.last) && got <= c.last,
                "step {step}: read {got} after mark {seq}, last {}",
                c.last
            );
        } else if roll < 90 {
            let outside: Vec<&str> = USERS
                .iter()
                .copied()
                .filter(|u| !active.iter().any(|a| a == u))
                .collect();
            if let Some(u) = outside.choose(&mut rng) {
                env.add_member("u0", &ch, u).await?;
                let c = model.channels.get_mut(&ch).expect("channel");
                let last = c.last;
                let e = c.members.entry((*u).to_owned()).or_insert((true, last, 0));
                // A rejoin keeps the old read watermark (it is below the join anyway).
                *e = (true, last, e.2);
            }
        } else {
            let leavers: Vec<&String> = active.iter().filter(|u| *u != "u0").collect();
            if let Some(u) = leavers.choose(&mut rng) {
                env.remove_member(u, &ch, u).await?;
                let c = model.channels.get_mut(&ch).expect("channel");
                c.members.get_mut(u.as_str()).expect("member").0 = false;
            }
        }
    }
    env.wait_consumed().await?;
    for u in USERS {
        env.wait_unread(u, &model.unread(u))
            .await
            .map_err(|e| anyhow::anyhow!("seed {seed}: {e}"))?;
    }
    for (id, c) in &model.channels {
        let got = env.receipts_of("u0", id).await?;
        let got: BTreeMap<String, u64> = got.into_iter().map(|r| (r.user_id, r.read_seq)).collect();
        let want: BTreeMap<String, u64> = c
            .members
            .iter()
            .filter(|(_, m)| m.0)
            .map(|(u, m)| (u.clone(), m.2))
            .collect();
        assert_eq!(got, want, "seed {seed}: read watermarks of channel {id}");
    }
    Ok(())
}

#[tokio::test]
async fn deleted_messages_still_count() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..3 {
        env.send("alice", &ch).await?;
    }
    let req = parley_proto::messaging::v1::DeleteMessageRequest {
        channel_id: ch.clone(),
        seq: 2,
    };
    env.messaging()
        .delete_message(crate::as_user(req, "alice"))
        .await?;
    env.wait_consumed().await?;
    env.wait_unread("bob", &BTreeMap::from([(ch.clone(), 3)]))
        .await?;
    Ok(())
}

#[tokio::test]
async fn joining_late_counts_only_what_came_after() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    for _ in 0..4 {
        env.send("alice", &ch).await?;
    }
    env.add_member("alice", &ch, "carol").await?;
    env.send("bob", &ch).await?;
    env.wait_unread("carol", &BTreeMap::from([(ch.clone(), 1)]))
        .await?;
    env.wait_unread("alice", &BTreeMap::from([(ch.clone(), 1)]))
        .await?;
    env.wait_unread("bob", &BTreeMap::new()).await?;
    Ok(())
}
