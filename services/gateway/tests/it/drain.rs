//! Draining: a stopping gateway tells its WebSocket clients to reconnect before it closes
//! them; they reconnect to another replica and resume without loss.

use parley_testkit::{Client, Stack, Ws};
use serde_json::json;

use crate::{LONG, T, message_seqs};

#[tokio::test]
async fn stopping_gateway_sends_reconnect_then_closes() -> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack.add_gateway(&[]).await?;
    stack.add_gateway(&[]).await?;
    let alice = Client::new(&stack.url(1), "alice");
    let ch = alice.group("drain", &["bob", "carol"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;
    let mut carol = Ws::connect(&stack.url(0), "carol").await?;
    alice.send(&ch, "m1", "before the drain").await?;
    assert_eq!(bob.messages(1, T).await?[0]["seq"], 1);
    assert_eq!(carol.messages(1, T).await?[0]["seq"], 1);

    let gw0 = stack.gateways.remove(0);
    let stopping = tokio::spawn(gw0.stop());

    for ws in [&mut bob, &mut carol] {
        let f = ws.next_frame(T).await?.expect("a frame before the close");
        assert_eq!(f["type"], "reconnect", "{f}");
        assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f}");
        // Then the server closes the socket.
        assert!(
            ws.closed_within(T).await,
            "socket still open after reconnect"
        );
    }
    tokio::time::timeout(LONG, stopping).await???;

    // Meanwhile traffic continues; bob reconnects to the other replica and resumes.
    alice.send(&ch, "m2", "during the move").await?;
    alice.send(&ch, "m3", "after the move").await?;
    let base1 = stack.url(0); // what was gateway 1
    let mut bob = Ws::connect(&base1, "bob").await?;
    bob.send(json!({"type": "resume", "positions": { &ch: 1 }}))
        .await?;
    let mut frames = bob.until(T, |f| f["type"] == "resumed").await?;
    let resumed = frames.pop().expect("resumed");
    assert_eq!(message_seqs(&frames, &ch), vec![2, 3]);
    assert_eq!(
        resumed["channels"][&ch],
        json!({"from": 2, "to": 3, "recovered": true})
    );
    Ok(())
}

#[tokio::test]
async fn readiness_fails_first_and_live_delivery_continues_during_the_drain_delay()
-> anyhow::Result<()> {
    let mut stack = Stack::empty().await?;
    stack.add_messaging(&[]).await?;
    stack
        .add_gateway(&[("PARLEY__HTTP__DRAIN_DELAY_MS", "8000")])
        .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("slow-drain", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;

    stack.gateways[0].shutdown.cancel();
    // Readiness turns 503 at once, so load balancers stop sending new clients...
    crate::wait_for(
        T,
        "/readyz answering 503",
        || async { Ok(alice.raw("GET", "/readyz", None, None).await?.0) },
        |s| *s == 503,
    )
    .await?;
    // ...while connected clients are still served normally until the delay is over.
    assert!(
        crate::ping(&mut bob, "p").await?.is_empty(),
        "reconnect came before the drain delay passed"
    );
    alice.send(&ch, "m1", "during the delay").await?;
    let mut frames = bob
        .until(T, |f| f["type"] == "message" || f["type"] == "reconnect")
        .await?;
    assert_eq!(
        frames.pop().expect("frame")["type"],
        "message",
        "live delivery stopped during the drain delay"
    );
    // Then the reconnect and the close.
    let f = bob.expect("reconnect", LONG).await?;
    assert_eq!(f["type"], "reconnect");
    assert!(
        bob.closed_within(T).await,
        "socket still open after reconnect"
    );
    let mut gw = stack.gateways.remove(0);
    tokio::time::timeout(LONG, &mut gw.task).await???;
    Ok(())
}
