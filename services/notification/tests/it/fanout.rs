//! Who gets pushed: offline members only, never the sender, as their level says; retries,
//! dead letters, gone tokens and coalescing.

use std::collections::HashMap;

use hmac::{Hmac, Mac as _};
use parley_proto::notification::v1 as pb;
use sha2::Sha256;

use crate::{SECRET, as_user, pushed_messages, spawn};

#[tokio::test]
async fn offline_member_is_pushed_once_online_member_and_sender_never() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for u in ["alice", "carol"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }
    let registered = env
        .register("bob", pb::Platform::Webhook, &env.receiver.url("/hook/bob"))
        .await?;
    let device_secret = registered.webhook_secret;
    assert_eq!(device_secret.len(), 64, "32 bytes, hex");
    // Registering again gives the owner the same secret; another device gets its own.
    let again = env
        .register("bob", pb::Platform::Webhook, &env.receiver.url("/hook/bob"))
        .await?;
    assert_eq!(again.webhook_secret, device_secret);
    let other = env
        .register(
            "bob",
            pb::Platform::Webhook,
            &env.receiver.url("/hook/other"),
        )
        .await?;
    assert_ne!(other.webhook_secret, device_secret);
    env.unregister("bob", &other.device.expect("device").id)
        .await?;
    env.online("carol").await?;
    let msg = env.send("alice", &ch, "hello there").await?;
    env.wait_settled().await?;

    let bob = env.receiver.wait("/hook/bob", 1).await?;
    assert_eq!(bob.len(), 1, "exactly one push to bob");
    assert!(
        env.receiver.seen("/hook/carol").is_empty(),
        "carol is online"
    );
    assert!(
        env.receiver.seen("/hook/alice").is_empty(),
        "the sender is never pushed"
    );

    let push = &bob[0];
    let body = push.json();
    assert_eq!(body["user_id"], "bob");
    assert_eq!(body["channel_id"], ch.as_str());
    assert_eq!(body["message_id"], msg.as_str());
    assert_eq!(body["seq"], 1);
    assert_eq!(body["sender_id"], "alice");
    assert_eq!(body["preview"], "hello there");
    assert_eq!(body["count"], 1);
    assert_eq!(push.header("content-type"), "application/json");
    // The signature is the hex HMAC-SHA256 of the exact body bytes.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes())?;
    mac.update(&push.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(push.header("x-parley-signature"), want);
    // The device's own signature covers the timestamp and the body, so a receiver can
    // refuse a replay; the timestamp is the send time.
    let t = push.header("x-parley-timestamp");
    let sent_at: i64 = t.parse()?;
    assert!((chrono::Utc::now().timestamp() - sent_at).abs() < 60, "{t}");
    let mut mac = Hmac::<Sha256>::new_from_slice(device_secret.as_bytes())?;
    mac.update(format!("{t}.").as_bytes());
    mac.update(&push.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(push.header("x-parley-device-signature"), want);
    let delivery_id = push.header("x-parley-delivery-id");
    assert_eq!(
        env.count(&format!(
            "SELECT count(*) FROM notification.deliveries
             WHERE delivery_id = '{delivery_id}' AND status = 'sent' AND user_id = 'bob'"
        ))
        .await?,
        1
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries")
            .await?,
        1,
        "no delivery row for the sender or the online member"
    );
    Ok(())
}

#[tokio::test]
async fn levels_none_and_mentions_filter_pushes() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob", "carol", "dave"]).await?;
    for u in ["bob", "carol", "dave"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }
    let mut c = env.client().await?;
    for (u, level) in [
        ("bob", pb::NotificationLevel::None),
        ("carol", pb::NotificationLevel::Mentions),
    ] {
        let r = c
            .set_channel_preference(as_user(
                pb::SetChannelPreferenceRequest {
                    channel_id: ch.clone(),
                    level: level as i32,
                },
                u,
            ))
            .await?
            .into_inner();
        assert_eq!(r.preference.map(|p| p.level), Some(level as i32));
    }
    let got = c
        .get_channel_preference(as_user(
            pb::GetChannelPreferenceRequest {
                channel_id: ch.clone(),
            },
            "carol",
        ))
        .await?
        .into_inner()
        .preference
        .expect("preference");
    assert_eq!(got.level, pb::NotificationLevel::Mentions as i32);
    assert!(got.updated_at.is_some());
    let dave = c
        .get_channel_preference(as_user(
            pb::GetChannelPreferenceRequest {
                channel_id: ch.clone(),
            },
            "dave",
        ))
        .await?
        .into_inner()
        .preference
        .expect("preference");
    assert_eq!(dave.level, pb::NotificationLevel::All as i32);
    assert!(dave.updated_at.is_none(), "never set");
    // Non-members may neither read nor set a level.
    let denied = c
        .set_channel_preference(as_user(
            pb::SetChannelPreferenceRequest {
                channel_id: ch.clone(),
                level: pb::NotificationLevel::None as i32,
            },
            "eve",
        ))
        .await
        .expect_err("eve is not a member");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let all = env.send("alice", &ch, "hello all").await?;
    let mention = env.send("alice", &ch, "hi @carol, look").await?;
    let other = env.send("alice", &ch, "hi @carolyn").await?;
    env.wait_settled().await?;

    // Messages pending together for one device may share a push (coalescing).
    let dave = pushed_messages(&env.receiver.wait("/hook/dave", 1).await?);
    assert_eq!(dave, vec![all, mention.clone(), other]);
    let carol = pushed_messages(&env.receiver.seen("/hook/carol"));
    assert_eq!(carol, vec![mention], "only the message that mentions carol");
    assert!(
        env.receiver.seen("/hook/bob").is_empty(),
        "bob muted the channel"
    );
    Ok(())
}

#[tokio::test]
async fn failing_endpoint_is_retried_with_the_same_delivery_id() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    env.receiver.script("/hook/bob", &[500, 500, 503]);
    env.send("alice", &ch, "retry me").await?;
    env.wait_settled().await?;
    let seen = env.receiver.wait("/hook/bob", 4).await?;
    assert_eq!(
        seen.len(),
        4,
        "three failures, then one success, then nothing"
    );
    let id = seen[0].header("x-parley-delivery-id");
    assert!(seen.iter().all(|r| r.header("x-parley-delivery-id") == id));
    assert_eq!(
        env.count(
            "SELECT count(*) FROM notification.deliveries WHERE status = 'sent' AND attempts = 4"
        )
        .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn endless_failures_are_dead_lettered() -> anyhow::Result<()> {
    let env = spawn(&[("PARLEY__DELIVERY__MAX_ATTEMPTS", "3")]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    env.receiver.script("/hook/bob", &[500; 10]);
    env.send("alice", &ch, "never").await?;
    env.wait_settled().await?;
    assert_eq!(env.receiver.seen("/hook/bob").len(), 3);
    assert_eq!(
        env.count(
            "SELECT count(*) FROM notification.deliveries
             WHERE status = 'dead' AND attempts = 3 AND last_error LIKE '%500%'"
        )
        .await?,
        1
    );
    assert_eq!(
        env.devices("bob").await?.len(),
        1,
        "a failing device is kept"
    );
    Ok(())
}

#[tokio::test]
async fn gone_token_removes_the_device() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    env.receiver.script("/hook/bob", &[410]);
    env.send("alice", &ch, "anyone?").await?;
    env.wait_settled().await?;
    assert_eq!(env.receiver.seen("/hook/bob").len(), 1);
    assert!(
        env.devices("bob").await?.is_empty(),
        "410 removed the device"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries WHERE status = 'gone'")
            .await?,
        1
    );
    // Later messages find no device to push to.
    env.send("alice", &ch, "still there?").await?;
    env.wait_settled().await?;
    assert_eq!(env.receiver.seen("/hook/bob").len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_burst_is_coalesced_into_one_push() -> anyhow::Result<()> {
    let env = spawn(&[("PARLEY__DELIVERY__COALESCE_WINDOW_MS", "2000")]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    for i in 0..5 {
        env.send("alice", &ch, &format!("message {i}")).await?;
    }
    env.wait_settled().await?;
    let seen = env.receiver.wait("/hook/bob", 1).await?;
    assert_eq!(seen.len(), 1, "five messages, one push");
    let body = seen[0].json();
    assert_eq!(body["count"], 5);
    assert_eq!(body["text"], "5 new messages in #test");
    assert_eq!(body["seq"], 5, "the push carries the newest message");
    assert_eq!(body["message_ids"].as_array().map(Vec::len), Some(5));
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries WHERE status = 'sent'")
            .await?,
        5,
        "all coalesced rows are marked delivered together"
    );
    Ok(())
}

#[tokio::test]
async fn one_batch_of_several_channels_records_exactly_the_right_rows() -> anyhow::Result<()> {
    let mut env = crate::env().await?;
    // A: devices and levels only; its consumer never runs, so the events wait in the
    // stream and B reads them all in its first batch.
    let a = env
        .start(&[
            ("PARLEY__CONSUMER__ENABLED", "false"),
            ("PARLEY__DELIVERY__ENABLED", "false"),
        ])
        .await?;
    env.notification = Some(a);
    let ch1 = env
        .group("alice", &["bob", "carol", "dave", "frank"])
        .await?;
    let ch2 = env
        .group("bob", &["alice", "carol", "dave", "erin"])
        .await?;
    let ch3 = env.group("gina", &["bob"]).await?;
    let mut device = HashMap::new();
    for u in ["alice", "bob", "carol", "dave", "erin", "gina"] {
        device.insert(u, vec![env.webhook(u, &format!("/hook/{u}")).await?]);
    }
    let fcm = env.register("bob", pb::Platform::Fcm, "bob-phone").await?;
    device
        .get_mut("bob")
        .expect("bob")
        .push(fcm.device.expect("device").id);
    // frank has no device; carol is online; dave mutes ch1 (not ch2); erin only wants
    // mentions in ch2.
    env.online("carol").await?;
    let mut c = env.client().await?;
    for (u, ch, level) in [
        ("dave", &ch1, pb::NotificationLevel::None),
        ("erin", &ch2, pb::NotificationLevel::Mentions),
    ] {
        c.set_channel_preference(as_user(
            pb::SetChannelPreferenceRequest {
                channel_id: ch.clone(),
                level: level as i32,
            },
            u,
        ))
        .await?;
    }
    let m1 = env.send("alice", &ch1, "hello one").await?;
    let m2 = env.send("bob", &ch2, "hi @erin").await?;
    let m3 = env.send("carol", &ch2, "plain").await?;
    let m4 = env.send("dave", &ch1, "from dave").await?;
    // gina leaves ch3 before her message is fanned out: it is skipped, alone.
    let m5 = env.send("gina", &ch3, "bye").await?;
    env.remove_member("gina", &ch3, "gina").await?;
    env.notification.take().expect("A").stop().await?;

    let b = env.start(&[("PARLEY__DELIVERY__ENABLED", "false")]).await?;
    env.notification = Some(b);
    env.wait_consumed().await?;

    let want_users: [(&str, &str, &[&str]); 4] = [
        // bob (two devices); not carol (online), dave (muted), frank (no device)
        (&m1, "alice", &["bob"]),
        // alice, dave (ch1's level does not apply), erin (mentioned); not carol
        (&m2, "bob", &["alice", "dave", "erin"]),
        // alice, bob, dave; not erin (not mentioned)
        (&m3, "carol", &["alice", "bob", "dave"]),
        // alice, bob; not carol, frank, nor dave (the sender)
        (&m4, "dave", &["alice", "bob"]),
    ];
    let mut want: Vec<(String, String, String, String)> = Vec::new();
    for (msg, sender, users) in want_users {
        for u in users {
            for d in &device[u] {
                want.push((
                    msg.to_owned(),
                    (*u).to_owned(),
                    d.clone(),
                    sender.to_owned(),
                ));
            }
        }
    }
    want.sort();
    let pool = env.stack.db().await?;
    let got: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT message_id::text, user_id, device_id::text, sender_id
         FROM notification.deliveries ORDER BY 1, 2, 3",
    )
    .fetch_all(&pool)
    .await?;
    assert_eq!(got, want);
    assert!(!got.iter().any(|r| r.0 == m5), "the skipped message");
    pool.close().await;
    Ok(())
}

#[tokio::test]
async fn members_without_a_device_need_no_presence_lookup() -> anyhow::Result<()> {
    // Presence is unreachable: any presence lookup would fail the batch and leave it
    // pending. Nobody has a device, so none is needed.
    let env = spawn(&[
        ("PARLEY__PRESENCE__URL", "http://127.0.0.1:1"),
        ("PARLEY__PRESENCE__CONNECT_TIMEOUT_MS", "200"),
    ])
    .await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for i in 0..3 {
        env.send("alice", &ch, &format!("m{i}")).await?;
    }
    env.wait_consumed().await?;
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries")
            .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_slow_endpoint_delays_only_its_own_push() -> anyhow::Result<()> {
    // One worker, so both pushes come from one claim.
    let env = spawn(&[("PARLEY__DELIVERY__WORKERS", "1")]).await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    env.webhook("bob", "/hook/slow").await?;
    env.webhook("carol", "/hook/fast").await?;
    env.receiver
        .stall("/hook/slow", std::time::Duration::from_secs(3));
    env.send("alice", &ch, "hello both").await?;
    let sent = |user: &str| {
        format!(
            "SELECT count(*) FROM notification.deliveries WHERE user_id = '{user}' AND status = 'sent'"
        )
    };
    env.wait_count(&sent("carol"), 1).await?;
    // Carol's push is recorded while bob's endpoint is still answering.
    assert_eq!(
        env.receiver.seen("/hook/slow").len(),
        1,
        "bob's push is on its way"
    );
    assert_eq!(
        env.count(&sent("bob")).await?,
        0,
        "bob's endpoint has not answered yet"
    );
    env.wait_count(&sent("bob"), 1).await?;
    assert_eq!(env.receiver.seen("/hook/slow").len(), 1, "sent once");
    Ok(())
}
