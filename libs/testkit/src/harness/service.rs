//! A service's `serve(config, listener, shutdown)` run by a test on an ephemeral loopback
//! port, and its settings.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::poll::{PATIENCE, eventually};

/// Settings for a service's `Config::load`: `base` (the test's), then `extra`
/// (`PARLEY__…` pairs of one test), which override them.
pub fn settings<K, V>(
    base: impl IntoIterator<Item = (K, V)>,
    extra: &[(&str, &str)],
) -> parley_kit::config::Sources
where
    K: Into<String>,
    V: Into<String>,
{
    parley_kit::config::Sources::from_vars(
        base.into_iter().map(|(k, v)| (k.into(), v.into())).chain(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        ),
    )
}

/// A running service task and the token that stops it. Dropping it cancels the token and
/// aborts the task.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The service's own runtime, when it has one: dropping it drops every task the service
    /// spawned, which is what a killed process looks like from outside.
    rt: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// Runs `serve` on the test's runtime, on a listener bound to an ephemeral loopback
    /// port, and waits until it answers gRPC health (see [`Running::ready`]).
    pub async fn grpc<F, Fut>(serve: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(listener, shutdown.clone()));
        let mut running = Self {
            addr,
            shutdown,
            task,
            rt: None,
        };
        running.ready().await?;
        Ok(running)
    }

    /// Runs `serve` on a runtime of its own (so that [`Running::kill`] is a faithful
    /// kill -9), on a listener bound to an ephemeral loopback port. Does not wait for it.
    pub fn isolated<F, Fut>(serve: F) -> anyhow::Result<Self>
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = rt.spawn(async move {
            // Registered with this runtime's reactor, not the test's.
            let listener = TcpListener::from_std(std_listener)?;
            serve(listener, token).await
        });
        Ok(Self {
            addr,
            shutdown,
            task,
            rt: Some(rt),
        })
    }

    /// Waits (at most [`PATIENCE`]) until the service answers a gRPC health check with
    /// SERVING, i.e. it has done what it does before serving (migrations, connections).
    /// Fails at once, with the service's own error, if it ends first.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        let (addr, task) = (self.addr, &self.task);
        let ready = eventually(
            PATIENCE,
            format_args!("the service at {addr} answering gRPC health"),
            || async move {
                anyhow::ensure!(!task.is_finished(), "it ended before it was ready");
                Ok(serving(addr).await.then_some(()))
            },
        )
        .await;
        match ready {
            Err(e) if self.task.is_finished() => match (&mut self.task).await {
                Ok(Err(end)) => Err(end.context(e)),
                Ok(Ok(())) => Err(e.context("it returned Ok before it was ready")),
                Err(join) => Err(anyhow::Error::new(join).context(e)),
            },
            other => other,
        }
    }

    /// SIGTERM-like stop: cancels and waits for the drain to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .context("stop timed out")??
    }

    /// kill -9-like stop: nothing drains. A service on its own runtime loses every task
    /// at once (connections, heartbeats, background loops); otherwise only its main task
    /// is aborted.
    pub fn kill(mut self) {
        match self.rt.take() {
            Some(rt) => rt.shutdown_background(),
            None => self.task.abort(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.task.abort();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether the gRPC server at `addr` answers the overall health check with SERVING.
async fn serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await?
            .into_inner()
            .status;
        anyhow::Ok(status == ServingStatus::Serving as i32)
    };
    // A server still starting accepts the connection but does not answer yet.
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(true))
    )
}
