//! Serves a service's gRPC routes, gRPC health and `GET /metrics` on one listener
//! (HTTP/2 for gRPC, HTTP/1.1 for Prometheus), until the shutdown token is cancelled.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

/// Runs `routes` with health, metrics and the server layer. On shutdown: health goes
/// NOT_SERVING, `drain_delay` passes (so load balancers stop routing new calls), then the
/// server stops accepting and waits for in-flight calls.
pub async fn serve_grpc(
    service: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    health: HealthReporter,
    drain_delay: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Install the recorder before anything is recorded (it is process-wide and lazy).
    crate::metrics::handle();
    let router = routes
        .into_axum_router()
        .route("/metrics", axum::routing::get(crate::metrics::render))
        .layer(crate::propagation::GrpcServerLayer::new(service));
    // gRPC replies are small writes: without TCP_NODELAY, Nagle's algorithm and the peer's
    // delayed ACK hold each one back ~40 ms on a connection making one call at a time.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let stop = shutdown.clone();
    let graceful = async move {
        stop.cancelled().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        tracing::info!(service, "health NOT_SERVING; draining");
        tokio::time::sleep(drain_delay).await;
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(graceful)
        .await
}

/// A health reporter whose overall status ("") is SERVING, plus its service.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    (reporter, service)
}
