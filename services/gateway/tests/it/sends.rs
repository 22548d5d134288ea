//! The gateway's send batching against a messaging that predates `SendMessages` (a rolling
//! deploy where the gateway is newer): every send still goes through, one at a time, and
//! the missing RPC is asked for once, not once per batch.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{body::Body, extract::Request, response::Response};
use parley_testkit::{Client, Stack, Ws};
use serde_json::json;
use tower::{Service as _, ServiceExt as _};

use crate::{T, seqs};

/// An HTTP/2 proxy to messaging that answers UNIMPLEMENTED for `SendMessages`, as a
/// messaging without the RPC does. Returns its address and how often it refused.
async fn old_messaging(
    upstream: std::net::SocketAddr,
) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))?
        .connect()
        .await?;
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let (mut channel, refused) = (channel.clone(), counter.clone());
        async move {
            if req.uri().path().ends_with("/SendMessages") {
                refused.fetch_add(1, Ordering::SeqCst);
                return Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", "12")
                    .header("grpc-message", "unknown method SendMessages")
                    .body(Body::empty())
                    .expect("response");
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
    Ok((format!("http://{addr}"), refused))
}

#[tokio::test]
async fn sends_fall_back_to_send_message_when_messaging_lacks_send_messages() -> anyhow::Result<()>
{
    let mut stack = Stack::empty().await?;
    let messaging = stack.add_messaging(&[]).await?;
    let (url, refused) = old_messaging(messaging).await?;
    stack
        .add_gateway(&[("PARLEY__MESSAGING__URL", url.as_str())])
        .await?;
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
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    Ok(())
}
