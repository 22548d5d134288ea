//! FCM, APNs (HTTP/2) and Web Push requests as the providers expect them.

use parley_proto::notification::v1 as pb;

use crate::{UA_AUTH, UA_P256DH, spawn};

#[tokio::test]
async fn fcm_apns_and_webpush_requests_have_the_provider_formats() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.register("bob", pb::Platform::Fcm, "fcm-device-token")
        .await?;
    env.register("bob", pb::Platform::Apns, "0a1b2c3d4e5f")
        .await?;
    let sub = serde_json::json!({
        "endpoint": env.receiver.url("/wp/sub-1"),
        "keys": {"p256dh": UA_P256DH, "auth": UA_AUTH}
    });
    env.register("bob", pb::Platform::Webpush, &sub.to_string())
        .await?;
    env.send("alice", &ch, "hello bob").await?;
    env.wait_settled().await?;

    let fcm = env
        .receiver
        .wait("/fcm/v1/projects/parley-test/messages:send", 1)
        .await?;
    assert_eq!(fcm.len(), 1);
    assert_eq!(fcm[0].header("authorization"), "Bearer fcm-access-token");
    let body = fcm[0].json();
    assert_eq!(body["message"]["token"], "fcm-device-token");
    assert_eq!(body["message"]["notification"]["body"], "hello bob");
    assert_eq!(body["message"]["notification"]["title"], "#test");
    assert_eq!(body["message"]["data"]["channel_id"], ch.as_str());
    assert_eq!(
        body["message"]["data"]["seq"], "1",
        "FCM data values are strings"
    );

    let apns = env.receiver.wait("/apns/3/device/0a1b2c3d4e5f", 1).await?;
    assert_eq!(apns.len(), 1);
    assert_eq!(apns[0].version, http::Version::HTTP_2);
    assert_eq!(apns[0].header("apns-topic"), "app.parley.test");
    assert_eq!(apns[0].header("apns-push-type"), "alert");
    assert_eq!(
        apns[0].header("authorization"),
        "bearer apns-provider-token"
    );
    let body = apns[0].json();
    assert_eq!(body["aps"]["alert"]["body"], "hello bob");
    assert_eq!(body["channel_id"], ch.as_str());

    let wp = env.receiver.wait("/wp/sub-1", 1).await?;
    assert_eq!(wp.len(), 1);
    assert_eq!(wp[0].header("content-encoding"), "aes128gcm");
    assert_eq!(wp[0].header("ttl"), "60");
    let auth = wp[0].header("authorization");
    assert!(
        auth.starts_with("vapid t=") && auth.contains(", k="),
        "VAPID authorization: {auth}"
    );
    assert!(!wp[0].body.is_empty());
    assert!(
        !String::from_utf8_lossy(&wp[0].body).contains("hello bob"),
        "the payload is encrypted"
    );
    assert_eq!(
        env.count("SELECT count(*) FROM notification.deliveries WHERE status = 'sent'")
            .await?,
        3
    );
    Ok(())
}
