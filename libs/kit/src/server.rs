//! Serving and stopping, the same way in every service: gRPC routes, gRPC health and
//! `GET /metrics` on one listener (HTTP/2 for gRPC, HTTP/1.1 for Prometheus) until the
//! shutdown token is cancelled, then a bounded drain; background tasks that stop with the
//! server, however it ends.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::server::HealthReporter;

/// `[grpc]` of a gRPC service.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GrpcConfig {
    /// Address the gRPC server (and `/metrics`) listens on.
    pub addr: String,
    /// After SIGTERM, health is NOT_SERVING this long before the server stops accepting.
    pub drain_delay_ms: u64,
    /// Then in-flight calls get this long to finish; connections still open after it are
    /// closed (a stuck call or client cannot hold a rollout).
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
}

fn default_drain_timeout_ms() -> u64 {
    10_000
}

/// Runs `routes` with health, metrics and the server layer, `S` reported SERVING. On
/// shutdown: health goes NOT_SERVING, `drain_delay_ms` passes (so load balancers stop
/// routing new calls), the server stops accepting and waits for in-flight calls, at most
/// `drain_timeout_ms`.
pub async fn serve_grpc<S: tonic::server::NamedService>(
    service: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    health: HealthReporter,
    cfg: &GrpcConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // Install the recorder before anything is recorded (it is process-wide and lazy).
    crate::metrics::handle();
    health.set_serving::<S>().await;
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
    let drain_delay = Duration::from_millis(cfg.drain_delay_ms);
    let stop = shutdown.clone();
    let graceful = async move {
        stop.cancelled().await;
        health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health.set_not_serving::<S>().await;
        tracing::info!(service, "health NOT_SERVING; draining");
        tokio::time::sleep(drain_delay).await;
    };
    let deadline = drain_delay + Duration::from_millis(cfg.drain_timeout_ms);
    let server = axum::serve(listener, router).with_graceful_shutdown(graceful);
    within_deadline(server.into_future(), shutdown, deadline, service).await
}

/// Runs `server` until it ends, or until `deadline` after `shutdown` (then the connections
/// still open are left to be closed with the process).
async fn within_deadline(
    server: impl Future<Output = std::io::Result<()>>,
    shutdown: CancellationToken,
    deadline: Duration,
    service: &'static str,
) -> std::io::Result<()> {
    let expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        r = server => r,
        () = expired => {
            tracing::warn!(service, "drain timeout: in-flight calls did not finish in time");
            Ok(())
        }
    }
}

/// A health reporter whose overall status ("") is SERVING, plus its service.
pub fn health() -> (
    HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    (reporter, service)
}

/// A service's background tasks (consumers, sweepers, publishers, gauges): they watch
/// [`Background::token`], a child of the shutdown token, and [`Background::stop`] ends
/// them and waits — after the server is done, whether it stopped for a shutdown or failed,
/// so no task outlives its server and the caller's token is never cancelled by the service.
pub struct Background {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            token: shutdown.child_token(),
            tracker: TaskTracker::new(),
        }
    }

    /// Cancelled on shutdown or by [`Background::stop`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Cancels the token and waits for every task to end (again: returns at once).
    pub async fn stop(&self) {
        self.token.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// What a service runs on: its pool (when it owns a schema), its Redis, and its
/// background tasks — the health sampler (`db_up`, `redis_up`, pool gauges) among them.
pub struct Runtime {
    name: &'static str,
    /// The schema's pool, migrated.
    pub pool: Option<sqlx::PgPool>,
    /// For connections of their own (pub/sub, blocking stream reads).
    pub redis_client: redis::Client,
    /// A managed connection with the one policy (`crate::connect::redis`).
    pub redis: redis::aio::ConnectionManager,
    pub background: Background,
}

impl Runtime {
    /// Opens (and migrates) the schema, connects to Redis, starts the health sampler.
    pub async fn start(
        name: &'static str,
        schema: Option<(&crate::db::Schema, &crate::db::DatabaseConfig)>,
        redis_url: &str,
        redis_timeout: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Self> {
        // Install the metrics recorder before anything is recorded (process-wide, lazy).
        crate::metrics::handle();
        let pool = match schema {
            Some((schema, cfg)) => Some(schema.open(cfg).await?),
            None => None,
        };
        let redis_client = redis::Client::open(redis_url)?;
        let redis = crate::connect::redis(&redis_client, redis_timeout).await?;
        let background = Background::new(shutdown);
        background.spawn(crate::health::sample(
            name,
            pool.clone(),
            Some(redis.clone()),
            background.token(),
        ));
        Ok(Self {
            name,
            pool,
            redis_client,
            redis,
            background,
        })
    }

    /// The schema's pool (a service that owns none has none).
    pub fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        self.pool
            .clone()
            .ok_or_else(|| anyhow::anyhow!("{} owns no schema", self.name))
    }

    /// Serves `service` with gRPC health and `/metrics` on `listener` until `shutdown`,
    /// then drains ([`serve_grpc`]). Call [`Runtime::stop`] after it returns.
    pub async fn serve<S>(
        &self,
        listener: TcpListener,
        service: S,
        cfg: &GrpcConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<()>
    where
        S: tower::Service<http::Request<tonic::body::Body>, Error = std::convert::Infallible>
            + tonic::server::NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        let (health, health_svc) = health();
        let routes = tonic::service::Routes::new(health_svc).add_service(service);
        tracing::info!(service = self.name, addr = %listener.local_addr()?, "serving");
        serve_grpc::<S>(self.name, listener, routes, health, cfg, shutdown).await
    }

    /// After the server returned: stops the background tasks and closes the pool.
    pub async fn stop(self) {
        self.background.stop().await;
        if let Some(p) = &self.pool {
            p.close().await;
        }
        tracing::info!(service = self.name, "stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_drain_that_takes_too_long_is_cut_at_the_deadline() {
        let shutdown = CancellationToken::new();
        // A server whose in-flight call never finishes.
        let stuck = std::future::pending::<std::io::Result<()>>();
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        let deadline = Duration::from_millis(50);
        let r = within_deadline(stuck, shutdown, deadline, "test").await;
        assert!(r.is_ok());
        assert!(started.elapsed() >= deadline, "not before the deadline");
    }

    #[tokio::test]
    async fn a_server_that_ends_is_not_waited_for() {
        let r = within_deadline(
            async { Err(std::io::Error::other("listener failed")) },
            CancellationToken::new(),
            Duration::from_secs(3600),
            "test",
        )
        .await;
        assert!(r.is_err(), "the server's own error comes back");
    }

    #[tokio::test]
    async fn background_tasks_stop_with_their_server_not_with_the_callers_token() {
        let shutdown = CancellationToken::new();
        let bg = Background::new(&shutdown);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = bg.token();
        bg.spawn(async move {
            token.cancelled().await;
            let _ = tx.send(());
        });
        bg.stop().await;
        assert!(rx.await.is_ok(), "the task saw the stop and ended");
        assert!(!shutdown.is_cancelled());
    }
}
