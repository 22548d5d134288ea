//! Devices, notification levels and pushes through the gateway: real notification,
//! presence, messaging; a local HTTP receiver stands in for the push endpoint.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use parley_testkit::{Client, Stack, Ws};
use serde_json::{Value, json};

use crate::{T, wait_for};

pub type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// A webhook endpoint on loopback that records every push.
pub async fn receiver() -> anyhow::Result<(String, Seen)> {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(|State(s): State<Seen>, h: HeaderMap, b: Bytes| async move {
                let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
                s.lock().expect("lock").push((h, v));
                "ok"
            }),
        )
        .with_state(seen.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move { axum::serve(l, app).await });
    Ok((format!("http://{addr}/hook"), seen))
}

async fn stack() -> anyhow::Result<Stack> {
    stack_with(&[]).await
}

/// The same, with extra notification settings.
async fn stack_with(notification: &[(&str, &str)]) -> anyhow::Result<Stack> {
    let mut s = Stack::empty().await?;
    s.add_messaging(&[]).await?;
    s.add_presence(&[]).await?;
    s.add_notification(notification).await?;
    s.add_gateway(&[]).await?;
    Ok(s)
}

/// The pushes received so far.
fn pushes(seen: &Seen) -> Vec<Value> {
    seen.lock()
        .expect("lock")
        .iter()
        .map(|(_, b)| b.clone())
        .collect()
}

/// The pushes received, once there are `n` (errors when not within `within`).
async fn wait_pushes(seen: &Seen, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
    let got = || async { Ok(pushes(seen)) };
    wait_for(within, format_args!("{n} pushes"), got, |p| p.len() >= n).await
}

#[tokio::test]
async fn offline_member_with_a_device_is_pushed_once() -> anyhow::Result<()> {
    let stack = stack().await?;
    let (hook, seen) = receiver().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("team", &["bob", "carol"]).await?;

    let (s, d, _) = bob
        .req(
            "POST",
            "/v1/devices",
            Some(json!({"platform": "webhook", "token": hook})),
        )
        .await?;
    assert_eq!(s, 201, "{d}");
    assert_eq!(d["platform"], "webhook");
    let device = d["id"].as_str().expect("id").to_owned();
    let (s, again, _) = bob
        .req(
            "POST",
            "/v1/devices",
            Some(json!({"platform": "webhook", "token": hook})),
        )
        .await?;
    assert_eq!(
        (s, again["id"].clone()),
        (200, json!(device)),
        "registration is idempotent"
    );

    // Carol is online (and has the same hook registered): she must not be pushed.
    let carol = Client::new(&stack.url(0), "carol");
    carol
        .req(
            "POST",
            "/v1/devices",
            Some(json!({"platform": "webhook", "token": hook})),
        )
        .await?;
    let _carol_ws = Ws::connect(&stack.url(0), "carol").await?;

    let m = alice.send(&ch, "m1", "hello @bob").await?;
    let got = wait_pushes(&seen, 1, T).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["user_id"], "bob");
    assert_eq!(got[0]["message_id"], m["id"]);
    assert_eq!(got[0]["channel_id"], ch.as_str());
    assert_eq!(got[0]["sender_id"], "alice");
    assert!(
        seen.lock().expect("lock")[0]
            .0
            .get("x-parley-signature")
            .is_some()
    );
    // Exactly once, even once notification has settled everything published so far.
    stack.wait_pushes_settled().await?;
    assert_eq!(pushes(&seen).len(), 1);

    // Level none: nothing more for bob from this channel.
    let (s, _, _) = bob
        .req(
            "PUT",
            &format!("/v1/channels/{ch}/notifications"),
            Some(json!({"level": "none"})),
        )
        .await?;
    assert_eq!(s, 204);
    alice.send(&ch, "m2", "quiet please").await?;
    stack.wait_pushes_settled().await?;
    assert_eq!(pushes(&seen).len(), 1);

    // Back to all, then the device is removed: no push either.
    bob.req(
        "PUT",
        &format!("/v1/channels/{ch}/notifications"),
        Some(json!({"level": "all"})),
    )
    .await?;
    let (s, _, _) = bob
        .req("DELETE", &format!("/v1/devices/{device}"), None)
        .await?;
    assert_eq!(s, 204);
    let (s, _, _) = bob
        .req("DELETE", &format!("/v1/devices/{device}"), None)
        .await?;
    assert_eq!(s, 404);
    alice.send(&ch, "m3", "anyone?").await?;
    stack.wait_pushes_settled().await?;
    assert_eq!(pushes(&seen).len(), 1);
    Ok(())
}

#[tokio::test]
async fn bad_devices_and_levels_are_refused() -> anyhow::Result<()> {
    // Production settings: webhooks cannot target internal addresses.
    let stack = stack_with(&[("PARLEY__WEBHOOK__ALLOW_INTERNAL", "false")]).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("x", &[]).await?;
    let bad = [
        json!({"platform": "webhook", "token": "http://169.254.169.254/latest"}),
        json!({"platform": "webhook", "token": "http://127.0.0.1:9/hook"}),
        json!({"platform": "webhook", "token": "http://localhost:9/hook"}),
        json!({"platform": "webhook", "token": "http://10.0.0.7/hook"}),
        json!({"platform": "webhook", "token": "http://example.invalid/hook"}),
        json!({"platform": "webhook", "token": "http://x/\u{0}"}),
        json!({"platform": "pager", "token": "x"}),
        json!({"platform": "fcm", "token": ""}),
    ];
    for b in bad {
        let (s, e, _) = alice.req("POST", "/v1/devices", Some(b.clone())).await?;
        assert_eq!(
            (s, e["error"]["code"].clone()),
            (400, json!("invalid_argument")),
            "{b} → {e}"
        );
    }
    let (s, _, _) = alice
        .req(
            "PUT",
            &format!("/v1/channels/{ch}/notifications"),
            Some(json!({"level": "loud"})),
        )
        .await?;
    assert_eq!(s, 400);
    let mallory = Client::new(&stack.url(0), "mallory");
    let (s, e, _) = mallory
        .req(
            "PUT",
            &format!("/v1/channels/{ch}/notifications"),
            Some(json!({"level": "none"})),
        )
        .await?;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (403, json!("permission_denied"))
    );
    let (s, _, _) = alice.req("DELETE", "/v1/devices/not-a-uuid", None).await?;
    assert_eq!(s, 400);
    Ok(())
}

#[tokio::test]
async fn push_continues_the_trace_of_the_message_that_caused_it() -> anyhow::Result<()> {
    // Real trace ids need the OpenTelemetry layer in this (test) process.
    let _telemetry = parley_kit::telemetry::init("parley-test").ok();
    let stack = stack().await?;
    let (hook, seen) = receiver().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let bob = Client::new(&stack.url(0), "bob");
    let ch = alice.group("traced", &["bob"]).await?;
    bob.req(
        "POST",
        "/v1/devices",
        Some(json!({"platform": "webhook", "token": hook})),
    )
    .await?;

    // The client starts the trace: gateway → messaging → event → notification → push.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/channels/{ch}/messages", stack.url(0)))
        .bearer_auth(&alice.token)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"client_msg_id": "t1", "body": "follow me"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()
            .get("x-trace-id")
            .and_then(|v| v.to_str().ok()),
        Some(trace_id)
    );

    let got = wait_pushes(&seen, 1, T).await?;
    assert_eq!(got.len(), 1, "{got:?}");
    let headers = seen.lock().expect("lock")[0].0.clone();
    let tp = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp:?}");
    assert_eq!(
        parts[1], trace_id,
        "the push is part of the message's trace"
    );
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the push has its own span under the trace"
    );
    Ok(())
}
