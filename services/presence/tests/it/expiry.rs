//! Connections of a gateway that stops heartbeating (kill -9) expire: their users go
//! OFFLINE within the TTL (plus a sweep) and exactly one OFFLINE event is published.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use parley_proto::presence::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::{Harness, T, changed, conn_id, cref, get, is_offline, is_online, register, wait_for};

/// TTL the simulated gateways use; they heartbeat every TTL/4.
const TTL: u32 = 2;

#[tokio::test]
async fn users_of_a_node_that_stops_heartbeating_go_offline_with_one_event() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;

    // node-a stays alive and keeps heartbeating its connection (ivan) all along.
    let (ivan, _) = register(&mut c, "ivan", "node-a", TTL).await?;
    let alive = CancellationToken::new();
    let heartbeats = tokio::spawn({
        let (mut c, alive) = (c.clone(), alive.clone());
        async move {
            let mut restored = 0;
            while !alive.is_cancelled() {
                let req = pb::HeartbeatRequest {
                    node_id: "node-a".into(),
                    connections: vec![cref("ivan", &ivan)],
                    ttl_seconds: TTL,
                };
                restored += c.heartbeat(req).await?.into_inner().restored.len();
                tokio::time::sleep(Duration::from_millis(u64::from(TTL) * 1000 / 4)).await;
            }
            anyhow::Ok(restored)
        }
    });

    // node-b registers three users (one with two connections) and is then "killed": it
    // never heartbeats or unregisters again.
    let started = Instant::now();
    let mut versions = HashMap::new();
    for user in ["judy", "ken", "lena", "lena"] {
        let (_, r) = register(&mut c, user, "node-b", TTL).await?;
        if r.came_online {
            versions.insert(user, r.presence.expect("presence").version);
        }
    }
    let killed_at = Instant::now();
    let doomed = ["judy", "ken", "lena"];

    wait_for(
        T,
        "node-b's users offline",
        || {
            let mut c = c.clone();
            async move { get(&mut c, &doomed).await }
        },
        |now| now.iter().all(is_offline),
    )
    .await?;
    let gone_at = Instant::now();
    let ttl = Duration::from_secs(u64::from(TTL));
    // Never before the TTL has run out since their last registration...
    assert!(
        gone_at.duration_since(started) + Duration::from_millis(100) >= ttl,
        "offline too early"
    );
    // ...and within the TTL plus one sweep after it (a generous slack for a loaded machine).
    let bound = ttl + Duration::from_millis(200) + Duration::from_secs(3);
    assert!(
        gone_at.duration_since(killed_at) <= bound,
        "offline only after {:?}",
        gone_at.duration_since(killed_at)
    );

    // Exactly one OFFLINE event per user, after its ONLINE one, with a greater version.
    let evs = events.collect_quiet(2 * doomed.len()).await?;
    let mut offline: HashMap<String, Vec<pb::UserPresence>> = HashMap::new();
    for e in &evs {
        let p = changed(e);
        if is_offline(&p) {
            assert!(
                e.trace_context.is_empty(),
                "sweeper events carry no trace context"
            );
            offline.entry(p.user_id.clone()).or_default().push(p);
        }
    }
    for user in doomed {
        let got = offline.get(user).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), 1, "{user}: {got:?}");
        assert!(
            got[0].version > versions[user] && got[0].last_seen_at.is_some(),
            "{got:?}"
        );
    }
    assert!(
        !offline.contains_key("ivan"),
        "the heartbeating node's user never went offline"
    );

    let now = get(&mut c, &["ivan", "judy"]).await?;
    assert!(is_online(&now[0]) && is_offline(&now[1]), "{now:?}");
    assert!(
        now[1].last_seen_at.is_some(),
        "last_seen_at is kept for offline users"
    );
    alive.cancel();
    assert_eq!(heartbeats.await??, 0, "ivan's connection never expired");
    Ok(())
}

#[tokio::test]
async fn two_replicas_sweeping_publish_exactly_one_offline_event_per_user() -> anyhow::Result<()> {
    // Small sweep batches make the two sweepers interleave many script calls.
    let settings = [
        ("PARLEY__SWEEPER__BATCH", "7"),
        ("PARLEY__SWEEPER__MIN_INTERVAL_MS", "1"),
    ];
    let mut h = Harness::start(&settings).await?;
    let second = h.add(&settings).await?;
    let c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;

    const USERS: usize = 120;
    let users: Vec<String> = (0..USERS).map(|i| format!("u{i}")).collect();
    // Registered through both replicas, in one heartbeat batch per node (restores register).
    let halves = [
        (c.clone(), "node-x", &users[..USERS / 2]),
        (second, "node-y", &users[USERS / 2..]),
    ];
    for (mut client, node, half) in halves {
        let connections = half.iter().map(|u| cref(u, &conn_id())).collect();
        let r = client
            .heartbeat(pb::HeartbeatRequest {
                node_id: node.into(),
                connections,
                ttl_seconds: 1,
            })
            .await?;
        assert_eq!(r.into_inner().restored.len(), USERS / 2);
    }
    // Nobody heartbeats: both replicas' sweepers race for the expiries.
    let refs: Vec<&str> = users.iter().map(String::as_str).collect();
    wait_for(
        T,
        "every user offline",
        || {
            let (mut c, refs) = (c.clone(), refs.as_slice());
            async move { get(&mut c, refs).await }
        },
        |now| now.iter().all(is_offline),
    )
    .await?;
    // Every user: exactly one ONLINE event (the restore) and exactly one OFFLINE event.
    let mut per_user: HashMap<(String, bool), usize> = HashMap::new();
    for e in &events.collect_quiet(2 * USERS).await? {
        let p = changed(e);
        *per_user
            .entry((p.user_id.clone(), is_online(&p)))
            .or_default() += 1;
    }
    assert_eq!(
        per_user.len(),
        2 * USERS,
        "every user got an ONLINE and an OFFLINE event"
    );
    let dup: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dup.is_empty(), "duplicate events: {dup:?}");

    // Nothing is left behind in the expiry index.
    let mut r = h.keys.redis().await?;
    let left: usize = redis::cmd("ZCARD")
        .arg(format!("{}presence:expiries", h.keys.prefix))
        .query_async(&mut r)
        .await?;
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test]
async fn a_heartbeat_after_expiry_restores_the_connection() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;
    let (id, _) = register(&mut c, "mona", "node-s", 1).await?;
    assert!(is_online(&changed(&events.expect().await?)));
    // The node stalls past its TTL: the sweeper turns mona OFFLINE.
    let off = changed(&events.expect().await?);
    assert!(is_offline(&off), "{off:?}");
    // It wakes up and heartbeats: the connection is restored and mona is ONLINE again.
    let r = c
        .heartbeat(pb::HeartbeatRequest {
            node_id: "node-s".into(),
            connections: vec![cref("mona", &id)],
            ttl_seconds: 60,
        })
        .await?
        .into_inner();
    assert_eq!(r.restored, vec![cref("mona", &id)]);
    let on = changed(&events.expect().await?);
    assert!(
        is_online(&on) && on.version > off.version,
        "{on:?} after {off:?}"
    );
    Ok(())
}
