//! The device API: validation, the webhook allow-list, idempotency and token ownership.

use parley_proto::notification::v1 as pb;

use crate::{UA_AUTH, UA_P256DH, as_user, spawn};

#[tokio::test]
async fn webhook_hosts_off_the_allow_list_are_refused() -> anyhow::Result<()> {
    // Production settings: the built-in block list applies.
    let env = spawn(&[("PARLEY__WEBHOOK__ALLOW_INTERNAL", "false")]).await?;
    for url in [
        "http://example.invalid/hook",
        "http://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://100.64.0.1/hook",
        "http://[fd00::1]/hook",
        "ftp://8.8.8.8/hook",
        "not a url",
    ] {
        let err = env
            .register("bob", pb::Platform::Webhook, url)
            .await
            .expect_err(url);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{url}");
    }
    let sub = serde_json::json!({
        "endpoint": "https://evil.example/push",
        "keys": {"p256dh": UA_P256DH, "auth": UA_AUTH}
    });
    let err = env
        .register("bob", pb::Platform::Webpush, &sub.to_string())
        .await
        .expect_err("endpoint not allowed");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = env
        .register("bob", pb::Platform::Unspecified, "x")
        .await
        .expect_err("platform required");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = env
        .register("bob", pb::Platform::Fcm, "")
        .await
        .expect_err("token required");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = env
        .client()
        .await?
        .list_devices(tonic::Request::new(pb::ListDevicesRequest {}))
        .await
        .expect_err("no caller");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(env.devices("bob").await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn registration_is_idempotent_and_push_tokens_change_hands() -> anyhow::Result<()> {
    let env = spawn(&[]).await?;
    let first = env.register("bob", pb::Platform::Fcm, "tok-1").await?;
    assert!(first.created);
    let again = env.register("bob", pb::Platform::Fcm, "tok-1").await?;
    assert!(!again.created);
    assert_eq!(again.device, first.device);
    // The same install, now signed in as carol: bob loses it.
    let carol = env.register("carol", pb::Platform::Fcm, "tok-1").await?;
    assert!(carol.created);
    assert_ne!(carol.device, first.device);
    assert!(env.devices("bob").await?.is_empty());
    // A webhook URL may serve several users.
    let url = env.receiver.url("/shared");
    let b = env.register("bob", pb::Platform::Webhook, &url).await?;
    let c = env.register("carol", pb::Platform::Webhook, &url).await?;
    assert!(b.created && c.created);
    assert_ne!(b.device, c.device);
    let carols = env.devices("carol").await?;
    assert_eq!(carols.len(), 2);
    assert_eq!(carols[0].platform, pb::Platform::Fcm as i32, "oldest first");
    // Only the owner may remove a device.
    let id = carols[0].id.clone();
    let mut client = env.client().await?;
    let err = client
        .unregister_device(as_user(
            pb::UnregisterDeviceRequest {
                device_id: id.clone(),
            },
            "bob",
        ))
        .await
        .expect_err("not bob's");
    assert_eq!(err.code(), tonic::Code::NotFound);
    client
        .unregister_device(as_user(
            pb::UnregisterDeviceRequest { device_id: id },
            "carol",
        ))
        .await?;
    assert_eq!(env.devices("carol").await?.len(), 1);
    Ok(())
}
