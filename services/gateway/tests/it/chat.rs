use parley_testkit::{Client, Stack, Ws};
use serde_json::json;

use crate::T;

#[tokio::test]
async fn two_websocket_clients_chat() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("general", &["bob"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    let mut b = Ws::connect(&stack.url(0), "bob").await?;
    assert_eq!(a.hello["user_id"], "alice");

    a.send(json!({"type": "send", "ref": 1, "channel_id": ch, "client_msg_id": "m1", "body": "hi bob"})).await?;
    // The sender gets `sent` and, like every member, its own `message` (either order).
    let (mut sent, mut own) = (None, None);
    while sent.is_none() || own.is_none() {
        let f = a.next_frame(T).await?.expect("frame");
        match f["type"].as_str() {
            Some("sent") => sent = Some(f),
            Some("message") => own = Some(f["message"].clone()),
            _ => {}
        }
    }
    let sent = sent.expect("sent");
    assert_eq!(sent["ref"], 1);
    assert_eq!(sent["message"]["seq"], 1);
    assert_eq!(own.expect("own")["seq"], 1);
    let got = b.messages(1, T).await?;
    assert_eq!(got[0]["body"], "hi bob");
    assert_eq!(got[0]["sender_id"], "alice");

    b.send(json!({"type": "send", "ref": "x", "channel_id": ch, "client_msg_id": "r1", "body": "hello alice"})).await?;
    let got = a.messages(1, T).await?;
    assert_eq!(got[0]["body"], "hello alice");
    assert_eq!(got[0]["seq"], 2);
    // The live deliveries were measured, and dependency health is exported.
    let (status, metrics, _) = alice.raw("GET", "/metrics", None, None).await?;
    assert_eq!(status, 200);
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("gateway_fanout_latency_seconds_count"),
        "{text}"
    );
    assert!(text.contains("gateway_ws_connections"), "{text}");
    assert!(text.contains("redis_up{service=\"gateway\"} 1"), "{text}");
    Ok(())
}

/// A frame much larger than the per-connection read buffer (`ws.read_buffer_bytes`, kept
/// small to save memory on idle connections) still arrives whole: the buffer grows.
#[tokio::test]
async fn frames_larger_than_the_read_buffer_arrive_whole() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__WS__READ_BUFFER_BYTES", "256")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("general", &["bob"]).await?;
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    let mut b = Ws::connect(&stack.url(0), "bob").await?;
    let body: String = (0..2000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    a.send(
        json!({"type": "send", "ref": 1, "channel_id": ch, "client_msg_id": "big", "body": body}),
    )
    .await?;
    let sent = a.expect("sent", T).await?;
    assert_eq!(sent["message"]["seq"], 1);
    let got = b.messages(1, T).await?;
    assert_eq!(got[0]["body"].as_str(), Some(body.as_str()));
    Ok(())
}
