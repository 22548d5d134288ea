//! The gateway's send batching against a messaging that misbehaves, through an HTTP/2
//! proxy: one that predates `SendMessages` (a rolling deploy where the gateway is newer),
//! one that refuses whole batches (`send.max_batch` above `limits.max_send_items`), and a
//! slow one (the send deadline, the queue bound and the latency budget).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{body::Body, extract::Request, response::Response};
use parley_testkit::{Client, Stack, Ws};
use serde_json::json;
use tower::{Service as _, ServiceExt as _};

use crate::{T, assert_error, seqs};

/// What the proxy does with `SendMessages` calls (everything else is forwarded as is).
#[derive(Default)]
struct Proxy {
    /// Answer UNIMPLEMENTED, as a messaging without the RPC does.
    unimplemented: AtomicBool,
    /// Hold each call this long before forwarding it.
    delay_ms: AtomicU64,
    /// `SendMessages` calls seen.
    calls: AtomicUsize,
    /// `SendMessages` calls not finished yet (a call the gateway gave up on ends when
    /// its stream is reset).
    in_flight: AtomicUsize,
    /// When the last `SendMessages` call ended.
    last_end: std::sync::Mutex<Option<std::time::Instant>>,
}

/// Counts a call in flight until dropped.
struct InFlight(Arc<Proxy>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        *self.0.last_end.lock().expect("lock") = Some(std::time::Instant::now());
    }
}

/// An HTTP/2 proxy in front of messaging; returns its URL.
async fn proxy(upstream: std::net::SocketAddr, ctl: Arc<Proxy>) -> anyhow::Result<String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))?
        .connect()
        .await?;
    let app = axum::Router::new().fallback(move |req: Request| {
        let (mut channel, ctl) = (channel.clone(), ctl.clone());
        async move {
            let batch = req.uri().path().ends_with("/SendMessages");
            let _in_flight = batch.then(|| {
                ctl.in_flight.fetch_add(1, Ordering::SeqCst);
                InFlight(ctl.clone())
            });
            if batch {
                ctl.calls.fetch_add(1, Ordering::SeqCst);
                if ctl.unimplemented.load(Ordering::SeqCst) {
                    return Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "12")
                        .header("grpc-message", "unknown method SendMessages")
                        .body(Body::empty())
                        .expect("response");
                }
                let delay = ctl.delay_ms.load(Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let (parts, body) = req.into_parts();
            let req = http::Request::from_parts(parts, tonic::body::Body::new(body));
            let ready = match channel.ready().await {
                Ok(ready) => ready,
                Err(e) => {
                    return Response::builder()
                        .status(502)
                        .body(Body::from(e.to_string()))
                        .expect("response");
                }
            };
            match ready.call(req).await {
                Ok(resp) => resp.map(Body::new),
                Err(e) => Response::builder()
                    .status(502)
                    .body(Body::from(e.to_string()))
                    .expect("response"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

/// The value of an unlabelled counter in the gateway's /metrics (0 before its first count).
async fn counter(client: &Client, name: &str) -> anyhow::Result<f64> {
    Ok(crate::sample(&crate::metrics(client).await?, name).unwrap_or(0.0))
}

/// `POST`s a message whose client_msg_id and body are `cid`, in a task of its own.
fn spawn_post(
    client: &Client,
    channel: &str,
    cid: &'static str,
) -> tokio::task::JoinHandle<anyhow::Result<parley_testkit::Reply>> {
    let (c, ch) = (client.clone(), channel.to_owned());
    tokio::spawn(async move { c.post_message(&ch, cid, cid).await })
}

/// Messaging (with `messaging_env`) behind a proxy, and a gateway (with `gateway_env`)
/// calling messaging through it.
async fn behind_proxy(
    messaging_env: &[(&str, &str)],
    gateway_env: &[(&str, &str)],
    ctl: &Arc<Proxy>,
) -> anyhow::Result<Stack> {
    let mut stack = Stack::empty().await?;
    let messaging = stack.add_messaging(messaging_env).await?;
    let url = proxy(messaging, ctl.clone()).await?;
    let mut env = vec![("PARLEY__MESSAGING__URL", url.as_str())];
    env.extend_from_slice(gateway_env);
    stack.add_gateway(&env).await?;
    Ok(stack)
}

#[tokio::test]
async fn sends_fall_back_to_send_message_when_messaging_lacks_send_messages() -> anyhow::Result<()>
{
    let ctl = Arc::new(Proxy::default());
    ctl.unimplemented.store(true, Ordering::SeqCst);
    let stack = behind_proxy(&[], &[], &ctl).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("old", &["bob"]).await?;
    let mut bob = Ws::connect(&stack.url(0), "bob").await?;

    // REST and pipelined WebSocket sends, several batches' worth.
    let first = alice.send(&ch, "r1", "over REST").await?;
    assert_eq!(first["seq"], 1);
    let mut a = Ws::connect(&stack.url(0), "alice").await?;
    for i in 2..=11 {
        a.send(json!({"type": "send", "ref": i, "channel_id": ch, "client_msg_id": format!("w{i}"), "body": format!("ws {i}")}))
            .await?;
    }
    let mut acked = 0;
    while acked < 10 {
        let f = a.next_frame(T).await?.expect("frame");
        assert_ne!(f["type"], "error", "{f}");
        if f["type"] == "sent" {
            acked += 1;
        }
    }
    let got = bob.messages(11, T).await?;
    assert_eq!(seqs(&got), (1..=11).collect::<Vec<_>>());
    // Refused once; the following sends went one at a time without asking again.
    assert_eq!(ctl.calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_is_sent_item_by_item() -> anyhow::Result<()> {
    // Misconfigured on purpose: messaging takes one item per call, the gateway batches more.
    let ctl = Arc::new(Proxy::default());
    let stack = behind_proxy(
        &[("PARLEY__LIMITS__MAX_SEND_ITEMS", "1")],
        &[
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "60000"),
        ],
        &ctl,
    )
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("refused", &["bob"]).await?;

    // The first send's call is held, so the next five wait and go as one batch of five.
    ctl.delay_ms.store(1000, Ordering::SeqCst);
    let first = {
        let (a, ch) = (alice.clone(), ch.clone());
        tokio::spawn(async move { a.send(&ch, "c0", "first").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rest: Vec<_> = (1..=5)
        .map(|i| {
            let (a, ch) = (alice.clone(), ch.clone());
            tokio::spawn(async move { a.send(&ch, &format!("c{i}"), &format!("m{i}")).await })
        })
        .collect();
    let mut got = vec![first.await??["seq"].as_u64().expect("seq")];
    for r in rest {
        got.push(r.await??["seq"].as_u64().expect("seq"));
    }
    got.sort_unstable();
    assert_eq!(got, (1..=6).collect::<Vec<_>>());
    assert!(counter(&alice, "gateway_send_batches_refused_total").await? >= 1.0);
    let page = alice.history(&ch, "limit=50").await?;
    assert_eq!(page["messages"].as_array().expect("messages").len(), 6);
    Ok(())
}

#[tokio::test]
async fn a_send_no_call_takes_in_time_is_withdrawn_and_a_retry_sends_it_once() -> anyhow::Result<()>
{
    let ctl = Arc::new(Proxy::default());
    let stack = behind_proxy(
        &[],
        &[
            ("PARLEY__MESSAGING__TIMEOUT_MS", "1000"),
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__MAX_BATCH", "1"),
            // The deadline, not the latency budget, is what this test exercises.
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "60000"),
        ],
        &ctl,
    )
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("slow", &["bob"]).await?;

    // Messaging hangs. The one worker takes `a`, whose call runs out of time after 1 s;
    // `b` and `c` wait behind it. The worker takes `b` when `a`'s call ends (or `b` is
    // withdrawn first); `c` is still waiting when its second is up, and is withdrawn.
    ctl.delay_ms.store(5000, Ordering::SeqCst);
    let post = |cid: &'static str| spawn_post(&alice, &ch, cid);
    let a = post("a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b = post("b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = post("c");
    let a = a.await??;
    let b = b.await??;
    let b_answered = std::time::Instant::now();
    for reply in [a, b, c.await??] {
        assert_error(&reply, 503, "unavailable");
    }
    assert!(counter(&alice, "gateway_send_timeouts_total").await? >= 1.0);
    // A withdrawn send never reached messaging: at most `a` and `b` were called.
    let calls = ctl.calls.load(Ordering::SeqCst);
    assert!((1..=2).contains(&calls), "{calls} SendMessages calls");

    // Messaging recovers (and the calls cut off are gone): retries with the same
    // client_msg_id send each message once.
    crate::eventually(T, "no call in flight", || async {
        Ok((ctl.in_flight.load(Ordering::SeqCst) == 0).then_some(()))
    })
    .await?;
    // A taken send is answered when its call ends, not before (the connection's next send
    // to the channel must not overtake it): no call outlived `b`'s answer by much.
    let last_end = ctl.last_end.lock().expect("lock").expect("a call ended");
    assert!(
        last_end <= b_answered + Duration::from_millis(500),
        "a call ended {:?} after b was answered",
        last_end - b_answered
    );
    ctl.delay_ms.store(0, Ordering::SeqCst);
    for cid in ["a", "b", "c", "a"] {
        alice.send(&ch, cid, cid).await?;
    }
    let page = alice.history(&ch, "limit=50").await?;
    let mut bodies: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default())
        .collect();
    bodies.sort_unstable();
    assert_eq!(bodies, ["a", "b", "c"], "{page}");
    Ok(())
}

#[tokio::test]
async fn sends_beyond_the_queue_or_the_budget_are_refused_with_retry_after() -> anyhow::Result<()> {
    let ctl = Arc::new(Proxy::default());
    let stack = behind_proxy(
        &[],
        &[
            ("PARLEY__SEND__CONCURRENCY", "1"),
            ("PARLEY__SEND__MAX_BATCH", "1"),
            ("PARLEY__SEND__QUEUE", "1"),
            ("PARLEY__SEND__QUEUE_BUDGET_MS", "200"),
        ],
        &ctl,
    )
    .await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("busy", &["bob"]).await?;

    // Messaging is slow: the one worker holds `a` for a second, `b` fills the queue...
    ctl.delay_ms.store(1000, Ordering::SeqCst);
    let post = |cid: &'static str| spawn_post(&alice, &ch, cid);
    let a = post("a");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let b = post("b");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so `c` is refused at once, with Retry-After...
    let started = std::time::Instant::now();
    let c = alice.post_message(&ch, "c", "c").await?;
    assert!(started.elapsed() < Duration::from_millis(900), "c waited");
    assert_error(&c, 503, "unavailable");
    let retry_after: u64 =
        c.2.get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .expect("a numeric Retry-After header");
    assert!(retry_after >= 1);
    // ...and `b`, which waited past the 200 ms budget, is refused unsent when taken.
    assert_eq!(a.await??.0, 201);
    assert_error(&b.await??, 503, "unavailable");
    assert_eq!(
        ctl.calls.load(Ordering::SeqCst),
        1,
        "only `a` reached messaging"
    );
    let metrics = crate::metrics(&alice).await?;
    for reason in ["queue_full", "budget"] {
        let n = crate::sample(
            &metrics,
            &format!("gateway_send_refused_total{{reason=\"{reason}\"}}"),
        );
        assert_eq!(n, Some(1.0), "{reason}");
    }

    // Retried with the same client_msg_id once messaging keeps up: each sent once.
    ctl.delay_ms.store(0, Ordering::SeqCst);
    for cid in ["b", "c", "a"] {
        alice.send(&ch, cid, cid).await?;
    }
    let page = alice.history(&ch, "limit=50").await?;
    let bodies: Vec<&str> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(bodies, ["c", "b", "a"], "newest first: {page}");
    Ok(())
}

#[tokio::test]
async fn a_pipelined_send_that_waited_past_the_budget_is_refused_unsent() -> anyhow::Result<()> {
    let ctl = Arc::new(Proxy::default());
    let stack = behind_proxy(&[], &[("PARLEY__WS__PENDING_SEND_BUDGET_MS", "300")], &ctl).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("pipelined", &["bob"]).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;

    // Messaging takes a second per call: `p2` waits behind `p1` on this connection (the
    // connection's sends to a channel go one at a time) longer than the budget.
    ctl.delay_ms.store(1000, Ordering::SeqCst);
    for (r, cid) in [(1, "p1"), (2, "p2")] {
        ws.send(
            json!({"type": "send", "ref": r, "channel_id": ch, "client_msg_id": cid, "body": cid}),
        )
        .await?;
    }
    let sent = ws.expect("sent", T).await?;
    assert_eq!(sent["ref"], 1);
    let err = ws.expect("error", T).await?;
    assert_eq!(err["ref"], 2, "{err}");
    assert_eq!(err["code"], "unavailable", "{err}");
    assert!(err["retry_after"].as_u64().is_some_and(|s| s >= 1), "{err}");
    assert_eq!(
        ctl.calls.load(Ordering::SeqCst),
        1,
        "p2 never reached messaging"
    );
    assert_eq!(
        counter(&alice, "gateway_send_refused_total{reason=\"pending\"}").await?,
        1.0
    );

    // The retry goes through once messaging keeps up.
    ctl.delay_ms.store(0, Ordering::SeqCst);
    ws.send(
        json!({"type": "send", "ref": 3, "channel_id": ch, "client_msg_id": "p2", "body": "p2"}),
    )
    .await?;
    let sent = ws.expect("sent", T).await?;
    assert_eq!(
        (sent["ref"].clone(), sent["message"]["seq"].clone()),
        (json!(3), json!(2))
    );
    Ok(())
}

#[tokio::test]
async fn pipelined_sends_to_one_channel_go_as_one_ordered_group() -> anyhow::Result<()> {
    let ctl = Arc::new(Proxy::default());
    let stack = behind_proxy(&[], &[], &ctl).await?;
    let alice = Client::new(&stack.url(0), "alice");
    let ch = alice.group("grouped", &["bob"]).await?;
    let mut ws = Ws::connect(&stack.url(0), "alice").await?;

    // The first send's call is held; the nine sent behind it wait on the connection and
    // then go together, in one call, in frame order.
    ctl.delay_ms.store(300, Ordering::SeqCst);
    for i in 0..10 {
        ws.send(json!({"type": "send", "ref": i, "channel_id": ch, "client_msg_id": format!("g{i}"), "body": format!("{i}")}))
            .await?;
    }
    let mut seq_of = [0u64; 10];
    for _ in 0..10 {
        let f = ws.expect("sent", T).await?;
        let i = f["ref"].as_u64().expect("ref") as usize;
        seq_of[i] = f["message"]["seq"].as_u64().expect("seq");
    }
    assert_eq!(seq_of, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(
        ctl.calls.load(Ordering::SeqCst),
        2,
        "one call for g0, one for g1..g9"
    );
    Ok(())
}
