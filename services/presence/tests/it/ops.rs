//! Operations: health, `/metrics`, graceful stop.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Harness, register, wait_for};

async fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(crate::T, s.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test]
async fn health_metrics_and_graceful_stop() -> anyhow::Result<()> {
    let mut h = Harness::start(&[]).await?;
    let mut c = h.client();
    let addr = h.replicas[0].addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "parley.presence.v1.PresenceService".into(),
        })
        .await?
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    register(&mut c, "uma", "n", 0).await?;
    // The gauge is set by the sweeper; wait for one sweep to have run.
    let metrics = wait_for(
        crate::T,
        "presence_online_users on /metrics",
        || http_get(addr, "/metrics"),
        |m| m.contains("presence_online_users"),
    )
    .await?;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "presence_events_published_total",
        "presence_connections_registered_total",
        "presence_online_users",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    let r = h.replicas.remove(0);
    r.running.stop().await?;
    Ok(())
}
