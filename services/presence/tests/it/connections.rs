//! Registration, renewal and removal of connections, and the events they cause.

use parley_proto::presence::v1 as pb;
use tonic::Code;

use crate::{Harness, changed, conn_id, cref, get, is_offline, is_online, one, register};

#[tokio::test]
async fn online_on_register_with_an_online_event() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;

    let before = one(&mut c, "alice").await?;
    assert!(is_offline(&before), "{before:?}");
    assert_eq!(
        (before.version, before.last_seen_at),
        (0, None),
        "never seen: no version, no last_seen_at"
    );

    let (_, r) = register(&mut c, "alice", "node-a", 0).await?;
    assert!(r.came_online);
    let p = r.presence.expect("presence in the response");
    assert!(
        is_online(&p) && p.version > 0 && p.last_seen_at.is_some(),
        "{p:?}"
    );

    let now = one(&mut c, "alice").await?;
    assert!(is_online(&now), "{now:?}");
    assert_eq!(now.version, p.version);

    let e = events.expect().await?;
    let ev = changed(&e);
    assert_eq!(
        (ev.user_id.as_str(), is_online(&ev), ev.version),
        ("alice", true, p.version)
    );
    assert!(!e.event_id.is_empty() && e.occurred_at.is_some());
    Ok(())
}

#[tokio::test]
async fn second_connection_keeps_the_user_online_until_the_last_ends() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;

    let (c1, r1) = register(&mut c, "bob", "node-a", 0).await?;
    let (c2, r2) = register(&mut c, "bob", "node-b", 0).await?;
    assert!(
        r1.came_online && !r2.came_online,
        "only the first connection brings bob online"
    );
    let online_version = r1.presence.expect("presence").version;

    let gone = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "node-a".into(),
            connections: vec![cref("bob", &c1)],
        })
        .await?
        .into_inner();
    assert!(
        gone.went_offline.is_empty(),
        "a connection on node-b is still live"
    );
    assert!(is_online(&one(&mut c, "bob").await?));

    // Another node cannot end node-b's connection.
    let foreign = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "node-a".into(),
            connections: vec![cref("bob", &c2)],
        })
        .await?
        .into_inner();
    assert!(foreign.went_offline.is_empty());
    assert!(is_online(&one(&mut c, "bob").await?));

    let gone = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "node-b".into(),
            connections: vec![cref("bob", &c2)],
        })
        .await?
        .into_inner();
    assert_eq!(gone.went_offline.len(), 1);
    let off = &gone.went_offline[0];
    assert!(
        is_offline(off) && off.last_seen_at.is_some() && off.version > online_version,
        "{off:?}"
    );

    let now = one(&mut c, "bob").await?;
    assert!(is_offline(&now), "{now:?}");
    assert_eq!(
        (now.version, &now.last_seen_at),
        (off.version, &off.last_seen_at),
        "last_seen_at is kept"
    );

    let evs = events.collect(2).await?;
    let seen: Vec<(bool, u64)> = evs
        .iter()
        .map(|e| changed(e))
        .map(|p| (is_online(&p), p.version))
        .collect();
    assert_eq!(
        seen,
        vec![(true, online_version), (false, off.version)],
        "exactly one online and one offline event"
    );

    // Unregistering again changes nothing and publishes nothing.
    let again = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "node-b".into(),
            connections: vec![cref("bob", &c2)],
        })
        .await?
        .into_inner();
    assert!(again.went_offline.is_empty());
    assert!(events.barrier().await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn register_is_idempotent_and_versions_increase() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let id = conn_id();
    let req = pb::RegisterConnectionRequest {
        user_id: "carol".into(),
        connection_id: id.clone(),
        node_id: "n1".into(),
        ttl_seconds: 30,
    };
    let first = c.register_connection(req.clone()).await?.into_inner();
    let second = c.register_connection(req).await?.into_inner();
    assert!(first.came_online && !second.came_online);
    let v1 = first.presence.expect("presence").version;
    assert_eq!(second.presence.expect("presence").version, v1);

    let mut versions = vec![v1];
    for round in 0..3 {
        let gone = c
            .unregister_connections(pb::UnregisterConnectionsRequest {
                node_id: "n1".into(),
                connections: vec![cref("carol", &id)],
            })
            .await?
            .into_inner();
        versions.push(
            gone.went_offline
                .first()
                .map(|p| p.version)
                .unwrap_or_default(),
        );
        let back = c
            .register_connection(pb::RegisterConnectionRequest {
                user_id: "carol".into(),
                connection_id: id.clone(),
                node_id: "n1".into(),
                ttl_seconds: 30,
            })
            .await?
            .into_inner();
        assert!(back.came_online, "round {round}");
        versions.push(back.presence.expect("presence").version);
    }
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions strictly increase: {versions:?}"
    );
    Ok(())
}

#[tokio::test]
async fn heartbeat_renews_restores_and_rejects() -> anyhow::Result<()> {
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let (mine, _) = register(&mut c, "dave", "node-a", 0).await?;
    let (theirs, _) = register(&mut c, "erin", "node-b", 0).await?;
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;
    let unknown = conn_id();

    let r = c
        .heartbeat(pb::HeartbeatRequest {
            node_id: "node-a".into(),
            connections: vec![
                cref("dave", &mine),
                cref("erin", &theirs),
                cref("frank", &unknown),
            ],
            ttl_seconds: 0,
        })
        .await?
        .into_inner();
    assert_eq!(
        r.rejected,
        vec![cref("erin", &theirs)],
        "erin's connection lives on node-b"
    );
    assert_eq!(
        r.restored,
        vec![cref("frank", &unknown)],
        "an unknown connection is registered again"
    );

    let all = get(&mut c, &["dave", "erin", "frank"]).await?;
    assert!(all.iter().all(is_online), "{all:?}");
    let e = changed(&events.expect().await?);
    assert_eq!(
        (e.user_id.as_str(), is_online(&e)),
        ("frank", true),
        "the restore brought frank online"
    );

    // node-b still owns erin's connection: node-a cannot end it either.
    let gone = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "node-a".into(),
            connections: vec![cref("erin", &theirs)],
        })
        .await?
        .into_inner();
    assert!(gone.went_offline.is_empty());
    assert!(is_online(&one(&mut c, "erin").await?));
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_rejected_and_change_nothing() -> anyhow::Result<()> {
    let h = Harness::start(&[("PARLEY__CONNECTIONS__MAX_BATCH", "3")]).await?;
    let mut c = h.client();
    let ok = |user: &str| pb::RegisterConnectionRequest {
        user_id: user.into(),
        connection_id: conn_id(),
        node_id: "n".into(),
        ttl_seconds: 10,
    };

    let cases = [
        pb::RegisterConnectionRequest {
            user_id: "bad user".into(),
            ..ok("x")
        },
        pb::RegisterConnectionRequest {
            user_id: String::new(),
            ..ok("x")
        },
        pb::RegisterConnectionRequest {
            connection_id: "not-a-uuid".into(),
            ..ok("gina")
        },
        pb::RegisterConnectionRequest {
            node_id: String::new(),
            ..ok("gina")
        },
        pb::RegisterConnectionRequest {
            node_id: "n".repeat(129),
            ..ok("gina")
        },
        pb::RegisterConnectionRequest {
            ttl_seconds: 3601,
            ..ok("gina")
        },
    ];
    for req in cases {
        let e = c
            .register_connection(req.clone())
            .await
            .expect_err("must fail");
        assert_eq!(e.code(), Code::InvalidArgument, "{req:?}: {e:?}");
        assert_eq!(
            parley_kit::ErrorCode::from_status(&e),
            parley_kit::ErrorCode::InvalidArgument
        );
    }

    // The gateway's identity metadata must name the registered user.
    let req = parley_kit::propagation::with_user(tonic::Request::new(ok("gina")), "mallory")?;
    let e = c
        .register_connection(req)
        .await
        .expect_err("identity mismatch");
    assert_eq!(e.code(), Code::PermissionDenied);
    let req = parley_kit::propagation::with_user(tonic::Request::new(ok("gina")), "gina")?;
    let gina = c.register_connection(req).await?.into_inner();
    assert!(gina.came_online);

    let four: Vec<_> = (0..4).map(|_| cref("gina", &conn_id())).collect();
    let e = c
        .heartbeat(pb::HeartbeatRequest {
            node_id: "n".into(),
            connections: four.clone(),
            ttl_seconds: 0,
        })
        .await
        .expect_err("batch over the limit");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .heartbeat(pb::HeartbeatRequest {
            node_id: "n".into(),
            connections: vec![],
            ttl_seconds: 0,
        })
        .await
        .expect_err("empty batch");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .unregister_connections(pb::UnregisterConnectionsRequest {
            node_id: "n".into(),
            connections: four,
        })
        .await
        .expect_err("batch over the limit");
    assert_eq!(e.code(), Code::InvalidArgument);

    // Only gina ever became known.
    let all = get(&mut c, &["x", "gina", "mallory"]).await?;
    assert_eq!(
        all.iter().map(is_online).collect::<Vec<_>>(),
        vec![false, true, false]
    );
    assert_eq!(all[0].version + all[2].version, 0);
    Ok(())
}

#[tokio::test]
async fn events_carry_the_trace_context_of_the_call() -> anyhow::Result<()> {
    crate::telemetry();
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let mut events = h.subscribe(parley_presence::EVENTS_TOPIC).await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(pb::RegisterConnectionRequest {
        user_id: "hank".into(),
        connection_id: conn_id(),
        node_id: "n".into(),
        ttl_seconds: 0,
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse()?,
    );
    c.register_connection(req).await?;
    let e = events.expect().await?;
    let tp = e
        .trace_context
        .get("traceparent")
        .cloned()
        .unwrap_or_default();
    assert!(
        tp.contains(trace_id),
        "event continues the caller's trace: {:?}",
        e.trace_context
    );
    Ok(())
}
