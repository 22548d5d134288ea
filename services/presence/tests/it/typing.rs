//! Typing: one UserTyping event per (user, channel) per throttle window.

use std::time::{Duration, Instant};

use parley_proto::presence::v1 as pb;
use tonic::Code;

use crate::{Harness, T, eventually};

const THROTTLE_MS: u64 = 1000;

fn typing(user: &str, channel: &str) -> pb::TypingRequest {
    pb::TypingRequest {
        user_id: user.into(),
        channel_id: channel.into(),
    }
}

fn typist(e: &pb::PresenceEvent) -> (String, String) {
    match &e.payload {
        Some(pb::presence_event::Payload::UserTyping(t)) => {
            (t.channel_id.clone(), t.user_id.clone())
        }
        other => panic!("not a UserTyping event: {other:?}"),
    }
}

#[tokio::test]
async fn typing_is_throttled_per_user_and_channel() -> anyhow::Result<()> {
    let h = Harness::start(&[("PARLEY__TYPING__THROTTLE_MS", "1000")]).await?;
    let mut c = h.client();
    let (ch1, ch2) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    let mut events = h.subscribe(&parley_presence::channel_topic(&ch1)).await?;

    let first_sent = Instant::now();
    assert!(
        c.typing(typing("quinn", &ch1))
            .await?
            .into_inner()
            .broadcast
    );
    let second = c
        .typing(typing("quinn", &ch1))
        .await?
        .into_inner()
        .broadcast;
    // The second call ended inside the window opened by the first: it must be throttled.
    // (Checked only when the machine really was that quick, so the test never depends on speed.)
    if first_sent.elapsed() < Duration::from_millis(THROTTLE_MS) {
        assert!(
            !second,
            "a second typing inside the window is not broadcast"
        );
    }
    // Other users and other channels have windows of their own.
    assert!(c.typing(typing("rosa", &ch1)).await?.into_inner().broadcast);
    assert!(
        c.typing(typing("quinn", &ch2))
            .await?
            .into_inner()
            .broadcast
    );

    // After the window, quinn's typing is broadcast again.
    eventually(T, "quinn's typing broadcast again", || {
        let (mut c, req) = (c.clone(), typing("quinn", &ch1));
        async move { Ok(c.typing(req).await?.into_inner().broadcast.then_some(())) }
    })
    .await?;

    // ch1's topic saw exactly quinn, rosa, quinn: nothing for throttled calls or for ch2.
    let got: Vec<(String, String)> = events.collect(3).await?.iter().map(typist).collect();
    let want: Vec<(String, String)> = ["quinn", "rosa", "quinn"]
        .iter()
        .map(|u| (ch1.clone(), (*u).to_owned()))
        .collect();
    assert_eq!(got, want);
    Ok(())
}

#[tokio::test]
async fn typing_events_carry_trace_context_and_bad_input_is_rejected() -> anyhow::Result<()> {
    crate::telemetry();
    let h = Harness::start(&[]).await?;
    let mut c = h.client();
    let ch = uuid::Uuid::now_v7().to_string();
    let mut events = h.subscribe(&parley_presence::channel_topic(&ch)).await?;

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(typing("sam", &ch));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01").parse()?,
    );
    assert!(c.typing(req).await?.into_inner().broadcast);
    let e = events.expect().await?;
    assert_eq!(typist(&e), (ch.clone(), "sam".to_owned()));
    assert!(
        e.trace_context
            .get("traceparent")
            .is_some_and(|t| t.contains(trace_id)),
        "{:?}",
        e.trace_context
    );

    for req in [typing("bad user", &ch), typing("sam", "not-a-uuid")] {
        let e = c.typing(req).await.expect_err("must fail");
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let req = parley_kit::propagation::with_user(tonic::Request::new(typing("sam", &ch)), "tom")?;
    assert_eq!(
        c.typing(req).await.expect_err("identity mismatch").code(),
        Code::PermissionDenied
    );
    assert!(
        events.barrier().await?.is_empty(),
        "failed calls publish nothing"
    );
    Ok(())
}
