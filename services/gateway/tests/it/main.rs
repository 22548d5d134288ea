//! Gateway integration tests: real messaging + gateway over real gRPC, real Postgres and
//! Redis, driven through the public HTTP and WebSocket API.

mod abuse;
mod attachments;
mod authz;
mod channels;
mod chat;
mod direct;
mod drain;
mod edit;
mod errors;
mod heartbeat;
mod history;
mod idempotency;
mod limits;
mod membership;
mod moderation;
mod notification;
mod ordering;
mod outbox;
mod presence;
mod receipts;
mod replicas;
mod restart;
mod resume;
mod rolling;
mod search;
mod sends;
mod tracing;

use std::time::Duration;

use parley_testkit::{Client, Reply, Ws};
pub use parley_testkit::{eventually, sample, wait_for};
use serde_json::Value;

/// Generous wait for anything that should happen (the suite shares 2 cores).
pub const T: Duration = Duration::from_secs(10);
/// Longer wait for bulk work (hundreds of messages).
pub const LONG: Duration = Duration::from_secs(60);
/// How long a socket is watched for a frame that must NOT arrive, where no marker is
/// certain to come after it (elsewhere: `Ws::barrier`, `Ws::joined_barrier`).
pub const QUIET: Duration = Duration::from_millis(1500);

/// The gateway's `/metrics` text.
pub async fn metrics(client: &Client) -> anyhow::Result<String> {
    let (status, body, _) = client.raw("GET", "/metrics", None, None).await?;
    anyhow::ensure!(status == 200, "GET /metrics: {status}");
    Ok(body.as_str().unwrap_or_default().to_owned())
}

/// Asserts `reply` is an API error: the status, and a body that is exactly
/// `{"error": {"code": code, "message": <non-empty string>}}`.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, code: &str) {
    let (s, b, _) = reply;
    assert_eq!(*s, status, "status of {b}");
    assert_error_body(b, code);
}

/// Asserts `b` is exactly `{"error": {"code": code, "message": <non-empty string>}}`.
#[track_caller]
pub fn assert_error_body(b: &Value, code: &str) {
    let outer = b
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {b}"));
    assert_eq!(outer.len(), 1, "error body has extra keys: {b}");
    let e = b["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no `error` object: {b}"));
    assert_eq!(
        e.len(),
        2,
        "`error` must hold exactly code and message: {b}"
    );
    assert_eq!(
        e.get("code").and_then(Value::as_str),
        Some(code),
        "code of {b}"
    );
    assert!(
        e.get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "message of {b}"
    );
}

/// Asserts `f` is a WebSocket `error` frame with `code`, a non-empty message and `ref`.
#[track_caller]
pub fn assert_error_frame(f: &Value, code: &str, r: Option<&Value>) {
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["code"], code, "{f}");
    assert!(f["message"].as_str().is_some_and(|m| !m.is_empty()), "{f}");
    match r {
        Some(r) => assert_eq!(&f["ref"], r, "{f}"),
        None => assert!(f.get("ref").is_none(), "unexpected ref in {f}"),
    }
}

/// Seqs of `message` frames for `channel` among `frames`.
pub fn message_seqs(frames: &[Value], channel: &str) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message" && f["message"]["channel_id"] == channel)
        .filter_map(|f| f["message"]["seq"].as_u64())
        .collect()
}

/// Seqs of a list of message objects.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages.iter().filter_map(|m| m["seq"].as_u64()).collect()
}

/// Sends a `ping` and waits for its `pong`, proving the socket still works; returns the
/// frames that came before the pong.
pub async fn ping(ws: &mut Ws, r: &str) -> anyhow::Result<Vec<Value>> {
    ws.send(serde_json::json!({"type": "ping", "ref": r}))
        .await?;
    ws.before(T, |f| f["type"] == "pong" && f["ref"] == r).await
}
